"""Synchronous client of the daemon's bridge (JSON-RPC 2.0 over a Unix socket).

Frontends that are short-lived commands, such as ``li``, use this module. It
imports only the standard library and the path helpers, so that a command
starts fast: no Twisted here.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from libervia.backend.core import paths

log = logging.getLogger(__name__)

#: Seconds to wait for the response of a call, by default.
DEFAULT_TIMEOUT = 60.0

#: Seconds given to ``libervia-backend start`` until the bridge responds.
START_TIMEOUT = 60.0

#: Max number of signals buffered for ``iter_signals``; the oldest are dropped.
MAX_BUFFERED_SIGNALS = 1000

RECV_SIZE = 65536

SignalHandler = Callable[[str, dict[str, Any]], None]


class BridgeUnavailable(Exception):
    """No daemon listens on the bridge socket, or the connection was lost."""


class BridgeError(Exception):
    """A bridge call failed; ``type`` is the backend's exception class name."""

    def __init__(self, type: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message or self.type


class BridgeTimeout(BridgeError):
    """The daemon did not respond in time."""

    def __init__(self, message: str) -> None:
        super().__init__("TimeoutError", message)


class BridgeClient:
    """Blocking connection to the bridge; one call at a time.

    Signals received while waiting for a response go to ``signal_handler``
    when one is given, else into a bounded buffer read by
    :meth:`iter_signals`.
    """

    def __init__(
        self,
        socket_path: Path | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        signal_handler: SignalHandler | None = None,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path else paths.bridge_socket()
        self.timeout = timeout
        self.signal_handler = signal_handler
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._next_id = 1
        self._signals: collections.deque[tuple[str, dict[str, Any]]] = (
            collections.deque(maxlen=MAX_BUFFERED_SIGNALS)
        )

    def __enter__(self) -> BridgeClient:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """Whether the socket is open (the daemon may still have gone since)."""
        return self._sock is not None

    def connect(self) -> None:
        """Connect to the bridge socket; raise BridgeUnavailable when no daemon listens."""
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise BridgeUnavailable(
                f"the daemon is not running (no bridge on {self.socket_path}): start it "
                "with libervia-backend start"
            ) from None
        except OSError as exc:
            sock.close()
            raise BridgeUnavailable(
                f"cannot connect to the bridge socket {self.socket_path}: {exc}"
            ) from exc
        self._sock = sock
        self._buffer.clear()

    def close(self) -> None:
        """Close the connection; the client may connect again afterwards."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, method: str, /, **params: Any) -> Any:
        """Call the bridge method ``method`` with named ``params``; return its result.

        Raises BridgeError when the call fails, BridgeTimeout when no response
        comes within ``self.timeout`` seconds, and BridgeUnavailable when the
        connection is lost.
        """
        return self.request(method, params, self.timeout)

    def request(
        self, method: str, params: dict[str, Any], timeout: float | None
    ) -> Any:
        """Call ``method`` with ``params`` and a timeout in seconds (None: wait forever)."""
        request_id = self._next_id
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        data = json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"
        self._send(data)

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                response = self._read_message(deadline)
            except BridgeTimeout:
                raise BridgeTimeout(
                    f"the daemon did not respond to the call to {method!r} within "
                    f"{timeout:g} s"
                ) from None
            if self._dispatch_signal(response):
                continue

            response_id = response.get("id")
            if response_id == request_id:
                return self._result(response)
            if response_id is None and "error" in response:
                # The daemon could not read the request at all (invalid JSON,
                # line too long), so it cannot know its id.
                return self._result(response)
            log.debug("ignoring bridge response to an earlier call: id=%r", response_id)

    def iter_signals(self, timeout: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(name, args)`` of each signal received, buffered ones first.

        Raises BridgeTimeout when no signal comes within ``timeout`` seconds
        of the previous one. Signals go here only when no ``signal_handler``
        is set.
        """
        while True:
            while self._signals:
                yield self._signals.popleft()

            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                message = self._read_message(deadline)
            except BridgeTimeout:
                raise BridgeTimeout(
                    f"no signal from the daemon within {timeout:g} s"
                ) from None
            if not self._dispatch_signal(message):
                log.debug("ignoring bridge response to an earlier call: %r", message.get("id"))

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except socket.timeout:
            raise BridgeTimeout("the daemon did not read the request in time") from None
        except OSError as exc:
            self.close()
            raise BridgeUnavailable(f"connection to the daemon lost: {exc}") from exc

    def _read_message(self, deadline: float | None) -> dict[str, Any]:
        """Read one JSON message; raise BridgeTimeout after ``deadline`` (monotonic)."""
        if self._sock is None:
            raise BridgeUnavailable("not connected to the daemon")
        scan_from = 0
        while True:
            end = self._buffer.find(b"\n", scan_from)
            if end != -1:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return self._decode(line)
            scan_from = len(self._buffer)

            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BridgeTimeout("timed out")
                self._sock.settimeout(remaining)
            else:
                self._sock.settimeout(None)
            try:
                chunk = self._sock.recv(RECV_SIZE)
            except socket.timeout:
                raise BridgeTimeout("timed out") from None
            except OSError as exc:
                self.close()
                raise BridgeUnavailable(f"connection to the daemon lost: {exc}") from exc
            if not chunk:
                self.close()
                raise BridgeUnavailable("the daemon closed the connection")
            self._buffer += chunk

    @staticmethod
    def _decode(line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise BridgeError(
                "ProtocolError", f"invalid JSON from the daemon: {exc}"
            ) from None
        if not isinstance(message, dict):
            raise BridgeError(
                "ProtocolError", "invalid message from the daemon: not a JSON object"
            )
        return message

    def _dispatch_signal(self, message: dict[str, Any]) -> bool:
        """Hand a signal notification over; return False for anything else."""
        if "id" in message or message.get("method") != "signal":
            return False
        params = message.get("params") or {}
        name = params.get("name")
        args = params.get("args") or {}
        if not isinstance(name, str) or not isinstance(args, dict):
            log.debug("ignoring malformed signal: %r", params)
            return True
        if self.signal_handler is not None:
            self.signal_handler(name, args)
        else:
            self._signals.append((name, args))
        return True

    @staticmethod
    def _result(response: dict[str, Any]) -> Any:
        error = response.get("error")
        if error is None:
            return response.get("result")
        if not isinstance(error, dict):
            raise BridgeError("ProtocolError", f"invalid error from the daemon: {error!r}")
        data = error.get("data")
        error_type = data.get("type") if isinstance(data, dict) else None
        code = error.get("code")
        type_name = error_type or _JSONRPC_ERROR_TYPES.get(code, "BridgeError")
        raise BridgeError(type_name, str(error.get("message", "")), code)


#: Error types of the standard JSON-RPC error codes (no ``data.type`` on them).
_JSONRPC_ERROR_TYPES = {
    -32700: "ParseError",
    -32600: "InvalidRequest",
    -32601: "MethodNotFound",
    -32602: "InvalidParams",
    -32603: "InternalError",
}


def default_start_command() -> list[str]:
    """Return the command that starts the daemon in the background."""
    return [sys.executable, "-m", "libervia.backend", "start"]


def ensure_daemon(
    socket_path: Path | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    start_command: Sequence[str] | None = None,
    start_timeout: float = START_TIMEOUT,
) -> BridgeClient:
    """Return a client connected to a responsive daemon, starting one if needed.

    The daemon is started with ``start_command`` (default: ``python -m
    libervia.backend start``), which must exit with 0 once the bridge responds.
    Raises BridgeUnavailable with the start command's message when it fails.
    """
    client = BridgeClient(socket_path, timeout)
    try:
        client.connect()
        client.call("ping")
        return client
    except BridgeUnavailable:
        client.close()
    except BridgeTimeout:
        client.close()
        raise BridgeUnavailable(
            f"the daemon listening on {client.socket_path} does not respond to ping: check "
            f"its log ({paths.log_file()})"
        ) from None

    command = list(start_command or default_start_command())
    log.debug("starting the daemon: %s", command)
    # Output goes to files rather than pipes, because a daemon that keeps an
    # inherited pipe open would make us wait for its exit.
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        try:
            process = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                timeout=start_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BridgeUnavailable(
                f"starting the daemon timed out after {start_timeout:g} s"
            ) from None
        except OSError as exc:
            raise BridgeUnavailable(f"cannot run {command[0]}: {exc}") from exc
        if process.returncode != 0:
            stderr.seek(0)
            stdout.seek(0)
            output = stderr.read().decode(errors="replace").strip()
            output = output or stdout.read().decode(errors="replace").strip()
            reason = output or f"exit code {process.returncode}"
            raise BridgeUnavailable(f"starting the daemon failed: {reason}")

    client.connect()
    client.call("ping")
    return client
