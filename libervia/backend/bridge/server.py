"""Local bridge of the daemon: JSON-RPC 2.0 over a Unix socket.

Frontends send one JSON object per line (UTF-8, ``\\n`` terminated) and get one
line back per request, tagged with the request id. Requests of one connection
run concurrently, so responses may come back in another order than the
requests. Only named params are accepted. Signals are JSON-RPC notifications
(``{"method": "signal", "params": {"name": .., "args": {..}}}``) sent to every
connected frontend.

The socket lives in the per-user runtime folder (mode 0700) and has mode 0600,
because any process that connects to it controls every profile of the user.
"""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.jid import JID

from libervia.backend.core import paths
from libervia.backend.core.exceptions import BackendError
from libervia.backend.tools.aio import ensure_deferred, maybe_await

log = logging.getLogger(__name__)

#: Maximum size of one request line in bytes. Large enough for a pubsub
#: publication with inline media, small enough to bound the daemon's memory.
MAX_LINE_LENGTH = 64 * 1024 * 1024

#: Linux limit of a Unix socket path (``sun_path`` is 108 bytes, NUL included).
MAX_SOCKET_PATH_LENGTH = 107

#: Methods whose params carry a password and are never logged.
SECRET_PARAMS_METHODS = frozenset({"profile_create", "profile_connect"})

#: Seconds a client gets to read its last responses when the bridge stops.
CLOSE_GRACE_PERIOD = 2.0

#: Seconds to wait for a process holding the socket to accept a connection.
PROBE_TIMEOUT = 2

# JSON-RPC 2.0 error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
BACKEND_ERROR = -32000

INTERNAL_ERROR_MESSAGE = "internal error, see the daemon log"


class BridgeJSONEncoder(json.JSONEncoder):
    """JSON encoder that also writes datetimes (ISO 8601), JIDs and sets."""

    def default(self, o: Any) -> Any:
        if isinstance(o, (datetime.datetime, datetime.date, datetime.time)):
            return o.isoformat()
        if isinstance(o, JID):
            return o.full()
        if isinstance(o, (set, frozenset)):
            return list(o)
        return super().default(o)


def encode_message(message: dict[str, Any]) -> bytes:
    """Serialise a JSON-RPC message to one line of UTF-8 JSON, newline included."""
    text = json.dumps(message, cls=BridgeJSONEncoder, ensure_ascii=False)
    return text.encode("utf-8") + b"\n"


def error_message(
    request_id: Any, code: int, message: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build a JSON-RPC error response."""
    error_obj: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error_obj["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error_obj}


class _InvalidRequest(Exception):
    """Error raised for a request that cannot be dispatched, with its JSON-RPC code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _BridgeMethod:
    """A registered bridge method with the signature used to check params."""

    def __init__(self, name: str, func: Callable[..., Any]) -> None:
        self.name = name
        self.func = func
        try:
            self.signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):
            # Some C callables have no signature. Their own TypeError is then
            # reported as an internal error instead of invalid params.
            self.signature = None

    def check_params(self, params: dict[str, Any]) -> None:
        """Raise _InvalidRequest when ``params`` do not fit the method's signature."""
        if self.signature is None:
            return
        try:
            self.signature.bind(**params)
        except TypeError as exc:
            raise _InvalidRequest(
                INVALID_PARAMS, f"invalid params for method {self.name!r}: {exc}"
            ) from None


class BridgeProtocol(protocol.Protocol):
    """One frontend connection: splits lines and writes responses and signals.

    Lines are split here rather than with ``LineReceiver`` because its bytes
    buffer is copied on every chunk received, which makes a request of tens of
    megabytes quadratic to receive.
    """

    def __init__(self, server: BridgeServer, max_line_length: int) -> None:
        self.server = server
        self.max_line_length = max_line_length
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._buffer = bytearray()
        # Offset where the search for the next newline resumes, because the
        # data before it was already searched.
        self._scan_from = 0
        # True while dropping the rest of a line that exceeded the limit.
        self._discarding = False
        self._connected = False
        self._abort_call: Any = None

    def connectionMade(self) -> None:
        self._connected = True
        self.server._connections.add(self)
        log.debug("bridge client connected (%d connected)", len(self.server._connections))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._connected = False
        self.server._connections.discard(self)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        log.debug("bridge client disconnected: %s", reason.getErrorMessage())
        self.closed.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while self._connected:
            end = self._buffer.find(b"\n", self._scan_from)
            if end == -1:
                if len(self._buffer) > self.max_line_length:
                    # Drop the start of the oversized line now, so that memory
                    # stays bounded, and the rest of it when its end comes.
                    if not self._discarding:
                        self._report_line_too_long()
                    self._discarding = True
                    self._buffer.clear()
                self._scan_from = len(self._buffer)
                return

            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scan_from = 0
            if self._discarding:
                # The end of the oversized line: what follows is a new request.
                self._discarding = False
                continue
            if len(line) > self.max_line_length:
                self._report_line_too_long()
                continue
            if line.strip():
                self.server._handle_line(self, line)

    def _report_line_too_long(self) -> None:
        """Send an error for an oversized request; the connection stays usable."""
        log.warning("bridge request longer than %d bytes dropped", self.max_line_length)
        self.send(
            error_message(
                None,
                INVALID_REQUEST,
                f"invalid request: a request line may not exceed "
                f"{self.max_line_length} bytes",
            )
        )

    def send(self, message: dict[str, Any]) -> None:
        """Write one JSON-RPC message, or drop it when the connection is gone.

        Raises TypeError or ValueError when ``message`` is not JSON serialisable.
        """
        data = encode_message(message)
        if self._connected:
            self.transport.write(data)

    def send_raw(self, data: bytes) -> None:
        """Write an already encoded message, or drop it when the connection is gone."""
        if self._connected:
            self.transport.write(data)

    def close(self, grace_period: float) -> defer.Deferred[None]:
        """Close the connection after flushing, aborting it after ``grace_period`` s."""
        from twisted.internet import reactor

        if self._connected:
            self.transport.loseConnection()
            self._abort_call = reactor.callLater(  # type: ignore[attr-defined]
                grace_period, self.transport.abortConnection
            )
        return self.closed


class _BridgeFactory(protocol.Factory):
    noisy = False

    def __init__(self, server: BridgeServer, max_line_length: int) -> None:
        self.server = server
        self.max_line_length = max_line_length

    def buildProtocol(self, addr: Any) -> BridgeProtocol:
        return BridgeProtocol(self.server, self.max_line_length)


class BridgeServer:
    """JSON-RPC 2.0 server of the daemon on a Unix socket."""

    def __init__(self, max_line_length: int = MAX_LINE_LENGTH) -> None:
        self.max_line_length = max_line_length
        self.socket_path: Path | None = None
        self._methods: dict[str, _BridgeMethod] = {}
        self._connections: set[BridgeProtocol] = set()
        self._port: Any = None
        # Inode of the socket we bound, so that stop() never removes a socket
        # that another daemon created at the same path in the meantime.
        self._socket_inode: int | None = None
        self._pending: set[defer.Deferred[Any]] = set()

    @property
    def methods(self) -> list[str]:
        """Names of the registered methods, sorted."""
        return sorted(self._methods)

    def register_method(self, name: str, func: Callable[..., Any]) -> None:
        """Expose ``func`` to frontends as the bridge method ``name``.

        ``func`` takes keyword params and is a coroutine function, a function
        returning a Deferred, or a plain function. Raises ValueError when
        ``name`` is already registered.
        """
        if not name or not isinstance(name, str):
            raise ValueError(f"invalid bridge method name: {name!r}")
        if not callable(func):
            raise ValueError(f"bridge method {name!r} is not callable: {func!r}")
        if name in self._methods:
            raise ValueError(f"bridge method {name!r} is already registered")
        self._methods[name] = _BridgeMethod(name, func)

    async def start(self, socket_path: Path | None = None) -> None:
        """Listen on ``socket_path`` (default: ``paths.bridge_socket()``).

        Creates the runtime folder with mode 0700 and the socket with mode
        0600, and removes a socket file left by a dead daemon. Raises
        BackendError when another process listens on the socket, or when the
        socket cannot be created.
        """
        if self._port is not None:
            raise BackendError(f"the bridge is already listening on {self.socket_path}")
        path = Path(socket_path) if socket_path is not None else paths.bridge_socket()

        if len(os.fsencode(path)) > MAX_SOCKET_PATH_LENGTH:
            raise BackendError(
                f"bridge socket path {path} is longer than {MAX_SOCKET_PATH_LENGTH} "
                f"bytes, the limit of Unix sockets: set XDG_RUNTIME_DIR to a "
                f"shorter folder"
            )
        self._create_folder(path.parent)
        await self._remove_stale_socket(path)

        from twisted.internet import reactor

        factory = _BridgeFactory(self, self.max_line_length)
        try:
            port = reactor.listenUNIX(  # type: ignore[attr-defined]
                str(path), factory, backlog=50, mode=0o600
            )
        except error.CannotListenError as exc:
            raise BackendError(f"cannot listen on {path}: {exc.socketError}") from exc

        info = path.stat()
        if stat.S_IMODE(info.st_mode) != 0o600:
            await port.stopListening()
            raise BackendError(
                f"bridge socket {path} has mode {stat.S_IMODE(info.st_mode):o} "
                f"instead of 600: the bridge refuses to run"
            )

        self._port = port
        self._socket_inode = info.st_ino
        self.socket_path = path
        log.info("bridge listening on %s", path)

    @staticmethod
    def _create_folder(folder: Path) -> None:
        """Create the socket's folder with mode 0700."""
        if folder == paths.runtime_dir():
            paths.runtime_dir(create=True)
        else:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def _remove_stale_socket(self, path: Path) -> None:
        """Remove a stale socket file; raise BackendError when a process listens on it."""
        try:
            info = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise BackendError(f"{path} exists and is not a socket: remove it")

        from twisted.internet import reactor

        endpoint = UNIXClientEndpoint(reactor, str(path), timeout=PROBE_TIMEOUT)
        try:
            probe = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
        except error.ConnectionRefusedError:
            log.info("removing stale bridge socket %s left by a dead daemon", path)
            path.unlink(missing_ok=True)
            return
        except error.ConnectError as exc:
            if not path.exists():
                return  # Removed by its daemon while we were probing it.
            raise BackendError(
                f"cannot check whether another daemon listens on {path}: {exc}"
            ) from exc
        probe.transport.loseConnection()
        raise BackendError(
            f"another daemon is already listening on {path}: stop it first"
        )

    async def stop(self) -> None:
        """Stop listening, close every connection and remove the socket file.

        Calls still running go on, but their responses are dropped.
        """
        port, self._port = self._port, None
        if port is not None:
            # Twisted removes the socket file when the port closes.
            await port.stopListening()

        closing = [conn.close(CLOSE_GRACE_PERIOD) for conn in list(self._connections)]
        if closing:
            await defer.gatherResults(closing)

        path = self.socket_path
        if path is not None and self._socket_inode is not None:
            try:
                if path.lstat().st_ino == self._socket_inode:
                    path.unlink()
            except FileNotFoundError:
                pass
        self._socket_inode = None
        if self._pending:
            log.info(
                "bridge stopped with %d call(s) still running", len(self._pending)
            )
        log.info("bridge stopped")

    def send_signal(self, name: str, **args: Any) -> None:
        """Send the signal ``name`` with ``args`` to every connected frontend.

        A signal whose args are not JSON serialisable is logged and dropped,
        so that the caller (often a notification handler) goes on.
        """
        message = {
            "jsonrpc": "2.0",
            "method": "signal",
            "params": {"name": name, "args": args},
        }
        try:
            data = encode_message(message)
        except (TypeError, ValueError):
            log.exception("signal %s dropped: its args are not JSON serialisable", name)
            return
        for conn in list(self._connections):
            conn.send_raw(data)

    def _handle_line(self, conn: BridgeProtocol, line: bytes) -> None:
        """Parse one request line and dispatch it; send request errors at once."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as exc:
            # The json module recurses once per nesting level of arrays and
            # objects, so "[[[[..." raises RecursionError.
            log.debug("bridge request is not valid JSON: %s", exc)
            conn.send(error_message(None, PARSE_ERROR, f"parse error: {exc}"))
            return

        request_id = request.get("id") if isinstance(request, dict) else None
        try:
            method, params = self._parse_request(request)
        except _InvalidRequest as exc:
            log.debug("invalid bridge request: %s", exc.message)
            if isinstance(request, dict) and "id" not in request:
                return  # A notification never gets a response, even an error.
            conn.send(error_message(request_id, exc.code, exc.message))
            return

        if log.isEnabledFor(logging.DEBUG):
            logged = "<hidden>" if method.name in SECRET_PARAMS_METHODS else params
            log.debug("bridge call %s id=%r params=%s", method.name, request_id, logged)

        call = ensure_deferred(self._invoke(method, params))
        self._pending.add(call)
        call.addBoth(self._forget_pending, call)
        if "id" in request:
            call.addCallbacks(
                self._send_result,
                self._send_failure,
                callbackArgs=(conn, request_id),
                errbackArgs=(conn, request_id, method.name),
            )
        else:
            call.addErrback(self._log_notification_failure, method.name)
        call.addErrback(self._log_send_failure, method.name)

    def _parse_request(self, request: Any) -> tuple[_BridgeMethod, dict[str, Any]]:
        """Validate a decoded request; return its method and params."""
        if not isinstance(request, dict):
            raise _InvalidRequest(
                INVALID_REQUEST,
                "invalid request: expected a JSON object (batch requests are not "
                "supported)",
            )
        if request.get("jsonrpc") != "2.0":
            raise _InvalidRequest(
                INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"'
            )
        request_id = request.get("id")
        if request_id is not None and (
            isinstance(request_id, bool) or not isinstance(request_id, (str, int))
        ):
            raise _InvalidRequest(
                INVALID_REQUEST, 'invalid request: "id" must be a string or an integer'
            )
        name = request.get("method")
        if not isinstance(name, str):
            raise _InvalidRequest(
                INVALID_REQUEST, 'invalid request: missing "method" string'
            )

        method = self._methods.get(name)
        if method is None:
            raise _InvalidRequest(METHOD_NOT_FOUND, f"method not found: {name!r}")

        params = request.get("params", {})
        if isinstance(params, list):
            raise _InvalidRequest(
                INVALID_PARAMS,
                f"invalid params for method {name!r}: params must be named (a JSON "
                f"object), not a list",
            )
        if not isinstance(params, dict):
            raise _InvalidRequest(
                INVALID_PARAMS,
                f'invalid params for method {name!r}: "params" must be a JSON object',
            )
        method.check_params(params)
        return method, params

    @staticmethod
    async def _invoke(method: _BridgeMethod, params: dict[str, Any]) -> Any:
        return await maybe_await(method.func(**params))

    def _forget_pending(self, result: Any, call: defer.Deferred[Any]) -> Any:
        self._pending.discard(call)
        return result

    @staticmethod
    def _send_result(result: Any, conn: BridgeProtocol, request_id: Any) -> None:
        try:
            conn.send({"jsonrpc": "2.0", "id": request_id, "result": result})
        except (TypeError, ValueError):
            log.exception(
                "result of bridge call id=%r is not JSON serialisable", request_id
            )
            conn.send(error_message(request_id, INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE))

    @staticmethod
    def _send_failure(
        failure: Failure, conn: BridgeProtocol, request_id: Any, name: str
    ) -> None:
        exc = failure.value
        if isinstance(exc, BackendError):
            log.debug("bridge call %s failed: %s: %s", name, type(exc).__name__, exc)
            conn.send(
                error_message(
                    request_id,
                    BACKEND_ERROR,
                    str(exc),
                    {"type": type(exc).__name__},
                )
            )
            return
        log.error("bridge call %s failed unexpectedly:\n%s", name, failure.getTraceback())
        conn.send(error_message(request_id, INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE))

    @staticmethod
    def _log_notification_failure(failure: Failure, name: str) -> None:
        log.error(
            "bridge notification %s failed:\n%s", name, failure.getTraceback()
        )

    @staticmethod
    def _log_send_failure(failure: Failure, name: str) -> None:
        log.error(
            "sending the response of bridge call %s failed:\n%s",
            name,
            failure.getTraceback(),
        )
