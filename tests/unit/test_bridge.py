"""Tests of the bridge: a real BridgeServer on a Unix socket and the real client.

The blocking client runs in a thread (deferToThread) while the reactor serves.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from libervia.backend.bridge.server import (
    BACKEND_ERROR,
    INTERNAL_ERROR,
    INTERNAL_ERROR_MESSAGE,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    BridgeServer,
)
from libervia.backend.core import paths
from libervia.backend.core.exceptions import BackendError, NotFound
from libervia.cli.bridge_client import (
    BridgeClient,
    BridgeError,
    BridgeTimeout,
    BridgeUnavailable,
    ensure_daemon,
)


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point XDG_RUNTIME_DIR at a short temporary folder (socket paths are limited)."""
    base = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    yield paths.runtime_dir()
    shutil.rmtree(base, ignore_errors=True)


class Methods:
    """Bridge methods of the tests, recording what they got."""

    def __init__(self) -> None:
        self.released: defer.Deferred[None] = defer.Deferred()
        self.never: defer.Deferred[None] = defer.Deferred()

    @staticmethod
    def echo(text: str, repeat: int = 1) -> str:
        return text * repeat

    @staticmethod
    async def add(a: int, b: int) -> int:
        return a + b

    @staticmethod
    async def now() -> dict[str, Any]:
        return {"when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)}

    @staticmethod
    async def not_found(node: str) -> None:
        raise NotFound(f"node {node!r} not found")

    @staticmethod
    async def crash() -> None:
        raise RuntimeError("something broke")

    @staticmethod
    async def inner_type_error() -> None:
        raise TypeError("a bug inside the method")

    @staticmethod
    async def not_serialisable() -> object:
        return object()

    async def wait(self) -> str:
        await self.released
        return "waited"

    def release(self) -> str:
        self.released.callback(None)
        return "released"

    async def hang(self) -> None:
        await self.never

    @staticmethod
    async def profile_create(name: str, jid: str, password: str, options: dict | None = None) -> dict:
        return {"name": name, "jid": jid}


@pytest.fixture
def methods() -> Iterator[Methods]:
    instance = Methods()
    yield instance
    if not instance.never.called:
        instance.never.callback(None)


@pytest_twisted.async_yield_fixture
async def server(runtime_dir: Path, methods: Methods) -> AsyncIterator[BridgeServer]:
    """Yield a started BridgeServer with the methods of Methods."""
    bridge = BridgeServer(max_line_length=4096)
    for name in (
        "echo", "add", "now", "not_found", "crash", "inner_type_error",
        "not_serialisable", "wait", "release", "hang", "profile_create",
    ):
        bridge.register_method(name, getattr(methods, name))
    await bridge.start()
    yield bridge
    await bridge.stop()


async def call(method: str, timeout: float = 10, **params: Any) -> Any:
    """Call a bridge method with a new client, in a thread."""

    def blocking_call() -> Any:
        with BridgeClient(timeout=timeout) as client:
            return client.call(method, **params)

    return await threads.deferToThread(blocking_call)


async def exchange_raw(lines: list[bytes], expected: int) -> list[dict[str, Any]]:
    """Send raw request lines on one connection and read ``expected`` responses."""

    def blocking_exchange() -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(paths.bridge_socket()))
            sock.sendall(b"".join(lines))
            received = b""
            while received.count(b"\n") < expected:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        return [json.loads(line) for line in received.splitlines()]

    return await threads.deferToThread(blocking_exchange)


def request_line(method: str, request_id: Any = 1, params: Any = None) -> bytes:
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        request["params"] = params
    return json.dumps(request).encode() + b"\n"


class CallTests:
    @pytest_twisted.ensureDeferred
    async def test_plain_function(self, server: BridgeServer) -> None:
        assert await call("echo", text="ab", repeat=2) == "abab"

    @pytest_twisted.ensureDeferred
    async def test_coroutine(self, server: BridgeServer) -> None:
        assert await call("add", a=2, b=3) == 5

    @pytest_twisted.ensureDeferred
    async def test_datetime_iso(self, server: BridgeServer) -> None:
        assert await call("now") == {"when": "2024-05-01T12:30:00+00:00"}

    @pytest_twisted.ensureDeferred
    async def test_backend_error(self, server: BridgeServer) -> None:
        with pytest.raises(BridgeError) as info:
            await call("not_found", node="blog")
        assert info.value.type == "NotFound"
        assert info.value.message == "node 'blog' not found"
        assert info.value.code == BACKEND_ERROR

    @pytest_twisted.ensureDeferred
    async def test_unknown_method(self, server: BridgeServer) -> None:
        with pytest.raises(BridgeError) as info:
            await call("no_such_method")
        assert info.value.code == METHOD_NOT_FOUND
        assert "no_such_method" in info.value.message

    @pytest_twisted.ensureDeferred
    async def test_unexpected_param(self, server: BridgeServer) -> None:
        with pytest.raises(BridgeError) as info:
            await call("add", a=1, b=2, c=3)
        assert info.value.code == INVALID_PARAMS
        assert "'add'" in info.value.message
        assert "'c'" in info.value.message

    @pytest_twisted.ensureDeferred
    async def test_missing_param(self, server: BridgeServer) -> None:
        with pytest.raises(BridgeError) as info:
            await call("add", a=1)
        assert info.value.code == INVALID_PARAMS
        assert "'b'" in info.value.message

    @pytest_twisted.ensureDeferred
    async def test_list_params(self, server: BridgeServer) -> None:
        responses = await exchange_raw([request_line("add", 7, [1, 2])], 1)
        assert responses[0]["id"] == 7
        assert responses[0]["error"]["code"] == INVALID_PARAMS

    @pytest_twisted.ensureDeferred
    async def test_internal_error(
        self, server: BridgeServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        with pytest.raises(BridgeError) as info:
            await call("crash")
        assert info.value.code == INTERNAL_ERROR
        assert info.value.message == INTERNAL_ERROR_MESSAGE
        assert "RuntimeError: something broke" in caplog.text

    @pytest_twisted.ensureDeferred
    async def test_type_error_inside(self, server: BridgeServer) -> None:
        with pytest.raises(BridgeError) as info:
            await call("inner_type_error")
        assert info.value.code == INTERNAL_ERROR

    @pytest_twisted.ensureDeferred
    async def test_result_not_serialisable(self, server: BridgeServer) -> None:
        with pytest.raises(BridgeError) as info:
            await call("not_serialisable")
        assert info.value.code == INTERNAL_ERROR

    @pytest_twisted.ensureDeferred
    async def test_password_not_logged(
        self, server: BridgeServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="libervia.backend.bridge.server")
        await call("profile_create", name="alice", jid="alice@example.org", password="s3cret-pw")
        assert "profile_create" in caplog.text
        assert "s3cret-pw" not in caplog.text

    @pytest_twisted.ensureDeferred
    async def test_client_timeout(self, server: BridgeServer) -> None:
        with pytest.raises(BridgeTimeout):
            await call("hang", timeout=0.2)


class ProtocolTests:
    @pytest_twisted.ensureDeferred
    async def test_bad_json(self, server: BridgeServer) -> None:
        responses = await exchange_raw([b"{not json\n", request_line("echo", 2, {"text": "x"})], 2)
        assert responses[0]["id"] is None
        assert responses[0]["error"]["code"] == PARSE_ERROR
        assert responses[1] == {"jsonrpc": "2.0", "id": 2, "result": "x"}

    @pytest_twisted.ensureDeferred
    async def test_missing_method(self, server: BridgeServer) -> None:
        line = json.dumps({"jsonrpc": "2.0", "id": 3}).encode() + b"\n"
        responses = await exchange_raw([line], 1)
        assert responses[0]["id"] == 3
        assert responses[0]["error"]["code"] == INVALID_REQUEST

    @pytest_twisted.ensureDeferred
    async def test_wrong_version(self, server: BridgeServer) -> None:
        line = json.dumps({"jsonrpc": "1.0", "id": 4, "method": "echo"}).encode() + b"\n"
        responses = await exchange_raw([line], 1)
        assert responses[0]["error"]["code"] == INVALID_REQUEST

    @pytest_twisted.ensureDeferred
    async def test_batch_rejected(self, server: BridgeServer) -> None:
        responses = await exchange_raw([b"[]\n"], 1)
        assert responses[0]["error"]["code"] == INVALID_REQUEST

    @pytest_twisted.ensureDeferred
    async def test_line_too_long(self, server: BridgeServer) -> None:
        too_long = request_line("echo", 5, {"text": "x" * 5000})
        responses = await exchange_raw([too_long, request_line("echo", 6, {"text": "y"})], 2)
        assert responses[0]["error"]["code"] == INVALID_REQUEST
        assert "4096 bytes" in responses[0]["error"]["message"]
        assert responses[1]["result"] == "y"

    @pytest_twisted.ensureDeferred
    async def test_line_too_long_client(self, server: BridgeServer) -> None:
        with pytest.raises(BridgeError) as info:
            await call("echo", text="x" * 5000)
        assert info.value.code == INVALID_REQUEST

    @pytest_twisted.ensureDeferred
    async def test_concurrent_calls(self, server: BridgeServer) -> None:
        # "wait" only returns once "release" ran: served one after the
        # other, the first request would block the second forever.
        responses = await exchange_raw([request_line("wait", 1), request_line("release", 2)], 2)
        results = {response["id"]: response["result"] for response in responses}
        assert results == {1: "waited", 2: "released"}

    @pytest_twisted.ensureDeferred
    async def test_notification_no_response(self, server: BridgeServer) -> None:
        notification = json.dumps({"jsonrpc": "2.0", "method": "echo", "params": {"text": "n"}})
        responses = await exchange_raw(
            [notification.encode() + b"\n", request_line("echo", 9, {"text": "r"})], 1
        )
        assert responses == [{"jsonrpc": "2.0", "id": 9, "result": "r"}]


class SignalTests:
    @pytest_twisted.ensureDeferred
    async def test_signal_delivered(self, server: BridgeServer) -> None:
        client = BridgeClient(timeout=10)
        await threads.deferToThread(client.connect)
        try:
            # A completed call proves the server registered the connection.
            await threads.deferToThread(client.call, "echo", text="x")
            server.send_signal("sync_progress", node="blog", count=3)
            signal = await threads.deferToThread(lambda: next(client.iter_signals(timeout=10)))
        finally:
            client.close()
        assert signal == ("sync_progress", {"node": "blog", "count": 3})

    @pytest_twisted.ensureDeferred
    async def test_signal_during_call(self, server: BridgeServer) -> None:
        def echo_with_signal(text: str) -> str:
            server.send_signal("echoed", text=text)
            return text

        server.register_method("echo_with_signal", echo_with_signal)
        client = BridgeClient(timeout=10)
        await threads.deferToThread(client.connect)
        try:
            result = await threads.deferToThread(client.call, "echo_with_signal", text="hi")
            signal = await threads.deferToThread(lambda: next(client.iter_signals(timeout=10)))
        finally:
            client.close()
        assert result == "hi"
        assert signal == ("echoed", {"text": "hi"})

    @pytest_twisted.ensureDeferred
    async def test_signal_handler(self, server: BridgeServer) -> None:
        received: list[tuple[str, dict[str, Any]]] = []

        def echo_with_signal(text: str) -> str:
            server.send_signal("echoed", text=text)
            return text

        server.register_method("echo_with_signal", echo_with_signal)
        client = BridgeClient(timeout=10, signal_handler=lambda name, args: received.append((name, args)))
        await threads.deferToThread(client.connect)
        try:
            await threads.deferToThread(client.call, "echo_with_signal", text="hi")
        finally:
            client.close()
        assert received == [("echoed", {"text": "hi"})]

    @pytest_twisted.ensureDeferred
    async def test_no_signal_timeout(self, server: BridgeServer) -> None:
        client = BridgeClient(timeout=10)
        await threads.deferToThread(client.connect)
        try:
            with pytest.raises(BridgeTimeout):
                await threads.deferToThread(lambda: next(client.iter_signals(timeout=0.2)))
        finally:
            client.close()


class ServerTests:
    def test_duplicate_method(self) -> None:
        bridge = BridgeServer()
        bridge.register_method("ping", lambda: "pong")
        with pytest.raises(ValueError):
            bridge.register_method("ping", lambda: "pong")

    @pytest_twisted.ensureDeferred
    async def test_socket_mode(self, server: BridgeServer) -> None:
        mode = stat.S_IMODE(paths.bridge_socket().stat().st_mode)
        assert mode == 0o600

    @pytest_twisted.ensureDeferred
    async def test_folder_mode(self, server: BridgeServer) -> None:
        mode = stat.S_IMODE(paths.runtime_dir().stat().st_mode)
        assert mode == 0o700

    @pytest_twisted.ensureDeferred
    async def test_stale_socket_removed(self, runtime_dir: Path) -> None:
        path = paths.bridge_socket()
        runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A socket bound then closed without unlink: what a killed daemon leaves.
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()

        bridge = BridgeServer()
        bridge.register_method("echo", Methods.echo)
        await bridge.start()
        try:
            assert await call("echo", text="fresh") == "fresh"
        finally:
            await bridge.stop()

    @pytest_twisted.ensureDeferred
    async def test_running_daemon_kept(self, server: BridgeServer) -> None:
        second = BridgeServer()
        with pytest.raises(BackendError):
            await second.start()
        assert await call("echo", text="still here") == "still here"

    @pytest_twisted.ensureDeferred
    async def test_not_a_socket(self, runtime_dir: Path) -> None:
        runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths.bridge_socket().write_text("not a socket")
        with pytest.raises(BackendError):
            await BridgeServer().start()

    @pytest_twisted.ensureDeferred
    async def test_stop_removes_socket(self, runtime_dir: Path) -> None:
        bridge = BridgeServer()
        await bridge.start()
        await bridge.stop()
        assert not paths.bridge_socket().exists()

    @pytest_twisted.ensureDeferred
    async def test_stop_closes_clients(self, runtime_dir: Path) -> None:
        bridge = BridgeServer()
        bridge.register_method("echo", Methods.echo)
        await bridge.start()
        client = BridgeClient(timeout=10)
        try:
            await threads.deferToThread(client.call, "echo", text="x")
            await bridge.stop()
            with pytest.raises(BridgeUnavailable):
                await threads.deferToThread(client.call, "echo", text="y")
        finally:
            client.close()


class ClientTests:
    def test_no_daemon(self, runtime_dir: Path) -> None:
        with pytest.raises(BridgeUnavailable):
            BridgeClient().connect()

    def test_start_failure_message(self, runtime_dir: Path) -> None:
        command = [sys.executable, "-c", "import sys; sys.exit('config file is invalid')"]
        with pytest.raises(BridgeUnavailable) as info:
            ensure_daemon(start_command=command)
        assert "config file is invalid" in str(info.value)

    @pytest_twisted.ensureDeferred
    async def test_running_daemon_not_started(self, server: BridgeServer) -> None:
        server.register_method("ping", lambda: "pong")
        # A start command that would fail shows that it is not run.
        command = [sys.executable, "-c", "import sys; sys.exit('must not run')"]
        client = await threads.deferToThread(ensure_daemon, None, 10, command)
        try:
            assert await threads.deferToThread(client.call, "echo", text="ok") == "ok"
        finally:
            client.close()

    def test_import_without_twisted(self) -> None:
        code = "import sys, libervia.cli.main; print('twisted' in sys.modules)"
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        assert result.stdout.strip() == "False"
