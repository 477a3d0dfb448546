"""``li daemon`` (start, status, stop) and ``li debug`` commands."""

from __future__ import annotations

import argparse
import time

from libervia.cli.bridge_client import BridgeClient, BridgeUnavailable, ensure_daemon
from libervia.cli.common import CliError, Context

#: Exit code of ``li daemon status`` when the daemon is not running (as LSB
#: init scripts and ``libervia-backend status`` do).
EXIT_NOT_RUNNING = 3

#: Seconds between two checks of the socket while waiting for the daemon to stop.
STOP_POLL_INTERVAL = 0.1


def add_commands(
    subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Register ``li daemon`` and ``li debug``."""
    daemon_parser = subparsers.add_parser(
        "daemon", help="start, check or stop the backend daemon", parents=[common]
    )
    commands = daemon_parser.add_subparsers(
        title="daemon commands", dest="daemon_command", required=True
    )
    commands.add_parser(
        "start", help="start the daemon unless it is running", parents=[common]
    ).set_defaults(handler=run_start)
    commands.add_parser(
        "status",
        help=f"tell whether the daemon is running (exit code {EXIT_NOT_RUNNING} "
        f"when not)",
        parents=[common],
    ).set_defaults(handler=run_status)
    commands.add_parser(
        "stop", help="stop the daemon and wait until it is gone", parents=[common]
    ).set_defaults(handler=run_stop)

    debug_parser = subparsers.add_parser(
        "debug", help="debugging tools", parents=[common]
    )
    debug_commands = debug_parser.add_subparsers(
        title="debug commands", dest="debug_command", required=True
    )
    debug_commands.add_parser(
        "stats", help="show the XMPP stream counters of a profile", parents=[common]
    ).set_defaults(handler=run_stats)


def run_start(ctx: Context, args: argparse.Namespace) -> int:
    """Start the daemon unless it is running."""
    client = ensure_daemon(timeout=ctx.timeout)
    try:
        version = client.call("version")
    finally:
        client.close()
    if ctx.output.is_json:
        ctx.output.json({"running": True, "version": version})
    else:
        ctx.output.line(f"daemon running (version {version})")
    return 0


def run_status(ctx: Context, args: argparse.Namespace) -> int:
    """Print whether the daemon responds to ping; never start it."""
    client = BridgeClient(timeout=ctx.timeout)
    try:
        client.connect()
        client.call("ping")
        version = client.call("version")
    except BridgeUnavailable:
        if ctx.output.is_json:
            ctx.output.json({"running": False, "socket": str(client.socket_path)})
        else:
            ctx.output.line("daemon not running")
        return EXIT_NOT_RUNNING
    finally:
        client.close()

    if ctx.output.is_json:
        ctx.output.json(
            {"running": True, "version": version, "socket": str(client.socket_path)}
        )
    else:
        ctx.output.line(f"daemon running (version {version}), bridge on {client.socket_path}")
    return 0


def run_stop(ctx: Context, args: argparse.Namespace) -> int:
    """Ask the daemon to stop, then wait until its socket is gone."""
    client = BridgeClient(timeout=ctx.timeout)
    try:
        client.connect()
    except BridgeUnavailable:
        _print_stopped(ctx, "daemon not running")
        return 0
    try:
        client.call("daemon_stop")
    except BridgeUnavailable:
        pass  # The daemon may close the connection before its response.
    finally:
        client.close()

    deadline = None if ctx.timeout is None else time.monotonic() + ctx.timeout
    while client.socket_path.exists():
        if deadline is not None and time.monotonic() > deadline:
            raise CliError(
                f"the daemon did not stop within {ctx.timeout:g} s (its socket "
                f"{client.socket_path} is still there)"
            )
        time.sleep(STOP_POLL_INTERVAL)
    _print_stopped(ctx, "daemon stopped")
    return 0


def _print_stopped(ctx: Context, message: str) -> None:
    if ctx.output.is_json:
        ctx.output.json({"running": False})
    else:
        ctx.output.line(message)


def run_stats(ctx: Context, args: argparse.Namespace) -> int:
    """Print the stream counters of a profile."""
    stats = ctx.call("stream_stats", profile=ctx.profile)
    if ctx.output.is_json:
        ctx.output.json(stats)
    else:
        ctx.output.fields([(name.replace("_", " "), value) for name, value in stats.items()])
    return 0
