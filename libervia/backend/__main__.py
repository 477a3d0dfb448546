"""``libervia-backend``: start, stop and query the per-user backend daemon.

``fg`` runs the daemon in the foreground; ``start`` runs ``fg`` in a new
session in the background, with its output in the log file, and returns once
the bridge responds; ``stop`` asks the daemon to stop and waits until its
process has exited; ``status`` exits with 0 when a daemon responds and 3
otherwise. The PID file and the bridge socket live in the per-user runtime
directory, so each OS user runs a daemon of their own.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from libervia.backend import __version__
from libervia.backend.core import paths

EXIT_NOT_RUNNING = 3
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

log = logging.getLogger("libervia.backend")


def bridge_ping(timeout: float = 2.0) -> bool:
    """Return True when a daemon responds to ``ping`` on the bridge socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(paths.bridge_socket()))
        request = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}
        sock.sendall(json.dumps(request).encode() + b"\n")
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                message = json.loads(line)
                if message.get("id") == 1:
                    return message.get("result") == "pong"
    except (OSError, ValueError):
        return False
    finally:
        sock.close()


def read_pid() -> int | None:
    """Return the PID in the PID file when that process exists, else None."""
    try:
        pid = int(paths.pid_file().read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError as e:
        if e.errno == errno.EPERM:
            return pid
        return None
    return pid


def _write_pid_file() -> Path:
    path = paths.pid_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    return path


def _setup_logging(level_name: str | None) -> None:
    level = getattr(logging, (level_name or "INFO").upper(), None)
    if not isinstance(level, int):
        print(f"libervia-backend: invalid log level {level_name!r}, using INFO", file=sys.stderr)
        level = logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic reports each plugin and migration step at INFO; the storage
    # layer logs what a user needs (creation, upgrade, backup).
    logging.getLogger("alembic").setLevel(logging.WARNING)


def run_foreground(log_level: str | None = None) -> int:
    """Run the daemon until SIGTERM, SIGINT or the ``daemon_stop`` bridge method."""
    from twisted.internet import asyncioreactor

    asyncioreactor.install()

    from twisted.internet import defer, reactor
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    from libervia.backend.core.config import Config
    from libervia.backend.core.exceptions import BackendError

    try:
        config = Config()
    except BackendError as e:
        print(f"libervia-backend: {e}", file=sys.stderr)
        return 1
    _setup_logging(log_level or config.get("logging", "level"))
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)

    if bridge_ping():
        print("libervia-backend: a daemon is already running for this user", file=sys.stderr)
        return 1

    from libervia.backend.core.main import Backend

    exit_code = 0
    backend = Backend(config)
    stopping = False

    def request_stop() -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        d = defer.ensureDeferred(backend.stop())
        d.addErrback(lambda f: log.error("error while stopping: %s", f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    backend.stopped = request_stop

    async def start() -> None:
        nonlocal exit_code
        try:
            await backend.start()
        except BackendError as e:
            log.error("cannot start: %s", e)
            exit_code = 1
            reactor.stop()
            return
        except Exception:
            log.exception("cannot start")
            exit_code = 1
            reactor.stop()
            return
        _write_pid_file()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: reactor.callFromThread(request_stop))
    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))
    reactor.run(installSignalHandlers=False)

    pid_path = paths.pid_file()
    if read_pid() == os.getpid():
        pid_path.unlink(missing_ok=True)
    return exit_code


def start_background() -> int:
    """Start ``fg`` detached from the terminal; return once the bridge responds."""
    if bridge_ping():
        print("libervia-backend is already running")
        return 0
    log_path = paths.log_file()
    paths.data_dir(create=True)
    paths.runtime_dir(create=True)

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    offset = os.lseek(fd, 0, os.SEEK_END)
    with os.fdopen(fd, "ab") as log_out:
        process = subprocess.Popen(
            [sys.executable, "-m", "libervia.backend", "fg"],
            stdin=subprocess.DEVNULL,
            stdout=log_out,
            stderr=log_out,
            start_new_session=True,
        )

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if bridge_ping(timeout=1.0):
            print(f"libervia-backend started (pid {process.pid})")
            return 0
        time.sleep(0.05)
    else:
        process.terminate()
        print(
            f"libervia-backend did not respond within {START_TIMEOUT:g} s; see {log_path}",
            file=sys.stderr,
        )
        return 1

    with open(log_path, "rb") as f:
        f.seek(offset)
        tail = f.read().decode("utf-8", "replace").strip().splitlines()[-10:]
    print(
        f"libervia-backend exited with code {process.returncode} while starting; "
        f"last lines of {log_path}:",
        file=sys.stderr,
    )
    for line in tail:
        print(f"  {line}", file=sys.stderr)
    return 1


def stop() -> int:
    """Stop the running daemon and wait until its process exits."""
    pid = read_pid()
    if pid is None and not bridge_ping():
        print("libervia-backend is not running")
        return 0
    if pid is None:
        print("libervia-backend responds but its PID file is missing", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("libervia-backend stopped")
            return 0
        time.sleep(0.05)
    print(f"libervia-backend (pid {pid}) did not stop within {STOP_TIMEOUT:g} s", file=sys.stderr)
    return 1


def status() -> int:
    """Print whether the daemon runs; return 0 when it responds, 3 otherwise."""
    pid = read_pid()
    if bridge_ping():
        print(f"libervia-backend is running (pid {pid})")
        return 0
    print("libervia-backend is not running")
    return EXIT_NOT_RUNNING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="libervia-backend", description="Run the Libervia backend daemon."
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    fg = sub.add_parser("fg", help="run in the foreground, logging to stderr")
    fg.add_argument("--log-level", help="logging level name (default: config or INFO)")
    sub.add_parser("start", help="start in the background and wait until it responds")
    sub.add_parser("stop", help="stop the running daemon and wait until it exits")
    sub.add_parser("status", help="exit 0 when the daemon runs, 3 when it does not")
    args = parser.parse_args(argv)

    if args.command == "fg":
        return run_foreground(args.log_level)
    if args.command == "start":
        return start_background()
    if args.command == "stop":
        return stop()
    return status()


if __name__ == "__main__":
    sys.exit(main())
