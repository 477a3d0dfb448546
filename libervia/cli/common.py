"""Shared pieces of the ``li`` commands: the run context, option parsing, errors."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from libervia.cli.bridge_client import (
    DEFAULT_TIMEOUT,
    BridgeClient,
    ensure_daemon,
)
from libervia.cli.output import OUTPUT_DEFAULT, OUTPUT_MODES, Output


class CliError(Exception):
    """A command cannot run because of its arguments or input."""


@dataclass
class Context:
    """Run context of a command: output, profile and a lazy bridge connection."""

    output: Output
    profile: str | None = None
    timeout: float | None = DEFAULT_TIMEOUT
    autostart: bool = True
    _bridge: BridgeClient | None = field(default=None, repr=False)

    @property
    def bridge(self) -> BridgeClient:
        """Client connected to the daemon, started first unless autostart is off."""
        if self._bridge is None:
            if self.autostart:
                self._bridge = ensure_daemon(timeout=self.timeout)
            else:
                client = BridgeClient(timeout=self.timeout)
                client.connect()
                self._bridge = client
        return self._bridge

    def call(self, method: str, /, **params: Any) -> Any:
        """Call a bridge method; see BridgeClient.call for the errors raised."""
        return self.bridge.call(method, **params)

    def close(self) -> None:
        """Close the bridge connection if one was opened."""
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add the options accepted both before and after the command name.

    Defaults are SUPPRESS so that an option given before the command is not
    reset by the subcommand's parser; ``main`` fills in the real defaults.
    """
    parser.add_argument(
        "-O",
        "--output",
        choices=OUTPUT_MODES,
        default=argparse.SUPPRESS,
        help=f"output format: {OUTPUT_DEFAULT} (readable text, the default) or json",
    )
    parser.add_argument(
        "-p",
        "--profile",
        default=argparse.SUPPRESS,
        help="profile to use (default: $LIBERVIA_PROFILE, else the backend's "
        "default profile)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"seconds to wait for the daemon's response (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--no-autostart",
        dest="autostart",
        action="store_false",
        default=argparse.SUPPRESS,
        help="fail instead of starting the daemon when it is not running",
    )


def positive_int(text: str) -> int:
    """Parse an integer of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    """Parse a number greater than 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


def parse_key_values(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into a dict; a repeated key gives a list of values."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"invalid option {pair!r}: expected KEY=VALUE")
        if key in options:
            previous = options[key]
            options[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            options[key] = value
    return options


def read_stdin(what: str) -> str:
    """Read all of stdin; raise CliError naming ``what`` when it is empty."""
    if sys.stdin.isatty():
        print(f"reading {what} from stdin, end with Ctrl-D", file=sys.stderr)
    text = sys.stdin.read()
    if not text.strip():
        raise CliError(f"no {what} on stdin")
    return text
