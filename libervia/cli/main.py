"""Entry point of ``li``, the command line frontend of the Libervia backend.

Exit codes: 0 on success, 1 on an error (one ``li: error: ...`` line on
stderr), 2 when the daemon cannot be reached or started, and 3 from
``li daemon status`` when the daemon is not running.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from libervia.backend import __version__
from libervia.cli import cmd_blog, cmd_daemon, cmd_profile, cmd_pubsub, cmd_roster
from libervia.cli.bridge_client import DEFAULT_TIMEOUT, BridgeError, BridgeUnavailable
from libervia.cli.common import CliError, Context, add_common_options
from libervia.cli.output import OUTPUT_DEFAULT, Output

PROG = "li"

#: Environment variable naming the profile used when -p is not given.
PROFILE_ENV = "LIBERVIA_PROFILE"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNAVAILABLE = 2
EXIT_INTERRUPTED = 130


def print_error(message: str) -> None:
    """Print one error line on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


class ArgumentParser(argparse.ArgumentParser):
    """Parser whose usage errors are one ``li: error:`` line and exit code 1.

    Abbreviated long options are off: ``--password`` must not silently mean
    ``--password-file``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print_error(f"{message} (see '{self.prog} --help')")
        sys.exit(EXIT_ERROR)


def build_parser() -> ArgumentParser:
    """Build the parser of every ``li`` command."""
    parser = ArgumentParser(
        prog=PROG,
        description="Command line frontend of the Libervia XMPP backend. The "
        "daemon is started when it is not running.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common_options(parser)

    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common)

    subparsers = parser.add_subparsers(title="commands", dest="command", required=True)
    # Subparsers are built with the class of their parent, so their errors
    # also follow the one-line format.
    for module in (cmd_profile, cmd_roster, cmd_pubsub, cmd_blog, cmd_daemon):
        module.add_commands(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``li`` with ``argv`` (default: sys.argv[1:]); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # --help, --version and usage errors exit from argparse.
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR

    ctx = Context(
        output=Output(getattr(args, "output", OUTPUT_DEFAULT)),
        profile=getattr(args, "profile", None) or os.environ.get(PROFILE_ENV) or None,
        timeout=getattr(args, "timeout", DEFAULT_TIMEOUT),
        autostart=getattr(args, "autostart", True),
    )
    try:
        return args.handler(ctx, args)
    except BridgeUnavailable as exc:
        print_error(str(exc))
        return EXIT_UNAVAILABLE
    except (BridgeError, CliError) as exc:
        print_error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (li ... | head): stop quietly, and
        # point stdout at /dev/null so that the interpreter's final flush
        # does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    finally:
        ctx.close()
