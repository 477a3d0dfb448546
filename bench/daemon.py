"""A backend daemon run by the benchmark in a process of its own, reached over its bridge.

:class:`Daemon` runs ``python -m libervia.backend fg`` with private XDG
folders, as ``libervia-backend start`` would run it, and stops it by PID.
It reads the daemon's resident memory from ``/proc`` (Linux only): the
current RSS and the peak (``VmHWM``), which :meth:`Daemon.reset_peak_rss`
sets back to the current RSS through ``/proc/PID/clear_refs``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from libervia.cli.bridge_client import BridgeClient, BridgeError, BridgeUnavailable

from bench.harness import private_environment, write_config

log = logging.getLogger(__name__)

#: The checkout, from which ``python -m bench.lifted_daemon`` finds the bench package.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Seconds a daemon may take to respond to its first ping.
START_TIMEOUT = 120.0
#: Seconds a daemon may take to exit after SIGTERM, before SIGKILL.
STOP_TIMEOUT = 30.0
#: Seconds between two pings while waiting for the bridge.
PING_INTERVAL = 0.002


class DaemonFailed(RuntimeError):
    """The daemon exited or did not respond in time; the message quotes its log."""


def _status_kib(pid: int, field: str) -> int:
    """Return a memory field of /proc/PID/status in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"{field} not found in /proc/{pid}/status")


#: Daemons started and not stopped yet, stopped by stop_all() on an early exit.
_running: set[Daemon] = set()


def stop_all() -> None:
    """Stop every daemon still running, such as after an interrupted run."""
    for daemon in list(_running):
        daemon.stop()


class Daemon:
    """One backend daemon process with its own config, database and bridge socket."""

    def __init__(
        self, base: Path, config: str, db_url: str | None = None,
        module: str = "libervia.backend",
    ) -> None:
        self.base = base
        self.module = module
        self.environment = private_environment(base)
        write_config(self.environment, config)
        self.db_url = db_url
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        """Path of the daemon's bridge socket."""
        return Path(self.environment["XDG_RUNTIME_DIR"]) / "libervia" / "bridge.sock"

    @property
    def log_path(self) -> Path:
        """File receiving the daemon's standard output and error."""
        return self.base / "daemon.log"

    @property
    def pid(self) -> int:
        """PID of the running daemon."""
        if self.process is None:
            raise DaemonFailed("the daemon is not running")
        return self.process.pid

    def start(self) -> float:
        """Start the daemon; return the seconds from launch until the bridge responds to a ping.

        Raises DaemonFailed when the daemon exits or does not respond within
        START_TIMEOUT seconds.
        """
        environment = {**os.environ, **self.environment}
        environment.pop("LIBERVIA_DB_URL", None)
        if self.db_url is not None:
            environment["LIBERVIA_DB_URL"] = self.db_url
        self.base.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        start = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "fg", "--log-level", "WARNING"],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=environment, cwd=REPO_ROOT,
        )
        _running.add(self)
        deadline = start + START_TIMEOUT
        while not self._answers_ping():
            if self.process.poll() is not None:
                raise DaemonFailed(
                    f"the daemon exited with code {self.process.returncode} while "
                    f"starting; log {self.log_path}:\n{self.log_tail()}"
                )
            if time.perf_counter() > deadline:
                self.stop()
                raise DaemonFailed(
                    f"the daemon did not respond to ping within {START_TIMEOUT:g} s; log "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(PING_INTERVAL)
        elapsed = time.perf_counter() - start
        log.info("daemon started in %.3f s (PID %s)", elapsed, self.process.pid)
        return elapsed

    def _answers_ping(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            with BridgeClient(self.socket_path, timeout=5.0) as client:
                return client.call("ping") == "pong"
        except (BridgeUnavailable, BridgeError):
            return False

    def client(self, timeout: float | None = 900.0) -> BridgeClient:
        """Return a new bridge client connected to this daemon."""
        client = BridgeClient(self.socket_path, timeout=timeout)
        client.connect()
        return client

    def stop(self) -> None:
        """Stop the daemon with SIGTERM, then SIGKILL after STOP_TIMEOUT seconds."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log.warning("daemon PID %s ignored SIGTERM, sending SIGKILL", process.pid)
                    process.kill()
                    process.wait()
            self.process = None
        _running.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        shutil.rmtree(self.environment["XDG_RUNTIME_DIR"], ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the daemon's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Return the daemon's current resident set size in bytes."""
        return _status_kib(self.pid, "VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        """Return the daemon's peak resident set size in bytes since start or the last reset."""
        return _status_kib(self.pid, "VmHWM") * 1024

    def reset_peak_rss(self) -> None:
        """Set the peak RSS back to the current RSS (Linux 4.0 and later)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")


def reader_profile(server_name: str) -> str:
    """Return the name of the daemon's reading profile on a server."""
    return f"reader-{server_name}"


def add_reader_profiles(daemon: Daemon, servers: dict[str, Any]) -> None:
    """Create and connect the daemon's ``reader-SERVER`` profiles, one per server.

    They log in as the ``daemon-reader`` account, so that they cache nodes
    independently of the in-process backend's readers.
    """
    with daemon.client() as client:
        for server in servers.values():
            profile = reader_profile(server.name)
            client.call(
                "profile_create", name=profile, jid=server.jid("daemon-reader"),
                password=server.accounts["daemon-reader"],
                options=server.connection_options(),
            )
            client.call("profile_connect", name=profile)
