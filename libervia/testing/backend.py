"""Run a real backend daemon and the ``li`` CLI in an isolated set of directories.

Tests, the demo and benchmarks use :class:`BackendRunner` to drive the backend
the way a user does (through ``li`` and ``libervia-backend``) without touching
the real user's config, database or daemon: every XDG directory points into
a private folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CommandFailed(AssertionError):
    """A ``li`` or ``libervia-backend`` command exited with an unexpected code."""


@dataclass
class Result:
    """Output of one command."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """Return stdout parsed as JSON."""
        return json.loads(self.stdout)


class BackendRunner:
    """A private environment for one backend daemon and its ``li`` commands."""

    def __init__(self, base: Path | None = None, extra_env: dict[str, str] | None = None) -> None:
        # Unix socket paths are limited to 107 bytes, so the runtime folder
        # gets a short path of its own even when ``base`` is deep.
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="libervia-"))
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="lbr-", dir="/tmp"))
        self.env = dict(os.environ)
        for key in ("LIBERVIA_PROFILE", "LIBERVIA_PASSWORD", "LIBERVIA_DB_URL"):
            self.env.pop(key, None)
        self.env.update(
            {
                "XDG_CONFIG_HOME": str(self.base / "config"),
                "XDG_DATA_HOME": str(self.base / "data"),
                "XDG_RUNTIME_DIR": str(self.runtime_dir),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(extra_env or {})

    @property
    def config_file(self) -> Path:
        """Return the path of the daemon's config file in this environment."""
        return self.base / "config" / "libervia" / "libervia.conf"

    @property
    def db_file(self) -> Path:
        """Return the path of the default SQLite database in this environment."""
        return self.base / "data" / "libervia" / "libervia.db"

    @property
    def log_file(self) -> Path:
        """Return the path of the daemon's log file in this environment."""
        return self.base / "data" / "libervia" / "backend.log"

    def write_config(self, text: str) -> None:
        """Write the daemon's INI config file."""
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(text)

    def run(
        self,
        module: str,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        expect: int | None = 0,
        timeout: float = 120,
    ) -> Result:
        """Run ``python -m MODULE ARGS``; raise CommandFailed unless it exits with ``expect``."""
        cmd = [sys.executable, "-m", module, *args]
        proc = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        result = Result(cmd, proc.returncode, proc.stdout, proc.stderr)
        if expect is not None and proc.returncode != expect:
            raise CommandFailed(
                f"{' '.join(args)} exited with {proc.returncode}, expected {expect}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n"
                f"daemon log tail:\n{self.log_tail()}"
            )
        return result

    def li(self, *args: str, **kwargs: Any) -> Result:
        """Run the ``li`` CLI with ``args``."""
        return self.run("libervia.cli", *args, **kwargs)

    def li_json(self, *args: str, **kwargs: Any) -> Any:
        """Run ``li ARGS -O json`` and return its parsed output."""
        return self.li(*args, "-O", "json", **kwargs).json()

    def backend(self, *args: str, **kwargs: Any) -> Result:
        """Run ``libervia-backend ARGS``."""
        return self.run("libervia.backend", *args, **kwargs)

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the daemon's log file, or "" when there is none."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.1,
        what: str = "condition",
    ) -> Any:
        """Call ``predicate`` until it returns a true value; raise AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {what}\n"
                    f"daemon log tail:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def stop(self) -> None:
        """Stop the daemon when it runs and remove the runtime folder."""
        self.backend("stop", expect=None)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def __enter__(self) -> "BackendRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
