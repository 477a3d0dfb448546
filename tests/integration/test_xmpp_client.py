"""The XMPP client against real Prosody and ejabberd servers.

SASL mechanisms, STARTTLS and direct TLS, the errors ``li profile connect``
prints, reconnection after a server restart, requests pending when a stream
ends, and the closing stream tag. Mechanisms offered, as seen on Debian's
packages: Prosody 0.12.3 with internal_hashed offers SCRAM-SHA-1 and PLAIN;
ejabberd 23.01 with stored SCRAM hashes offers PLAIN and the SCRAM variant of
its ``auth_scram_hash`` (SHA-1 by default), with and without -PLUS.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from wokkel import generic

from libervia.backend.core.exceptions import ConnectionError_
from libervia.testing.backend import BackendRunner
from libervia.testing.ejabberd import EjabberdServer
from libervia.testing.prosody import ProsodyServer

PASSWORD_ENV = "XMPP_CLIENT_TEST_PASSWORD"
#: Account of the servers this module starts itself.
OWN_USER = "dave"
OWN_PASSWORD = "dave-test-password"
#: Namespace of requests that no server or client responds to.
UNANSWERED_NS = "urn:example:libervia:unanswered"


# servers and daemons

@pytest.fixture(scope="module")
def own_prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """Yield a Prosody of this module, with direct TLS, that tests may stop and start.

    Its folder is not temporary, so a restart keeps its ports and accounts.
    """
    server = ProsodyServer(
        workdir=tmp_path_factory.mktemp("own-prosody"), direct_tls=True, debug_log=True
    )
    server.register(OWN_USER, OWN_PASSWORD)
    with server:
        yield server


@pytest.fixture(scope="module")
def ejabberd_sha256() -> Iterator[EjabberdServer]:
    """Yield an ejabberd storing SCRAM-SHA-256 hashes, that tests may stop and start."""
    # Under /tmp rather than pytest's folder, which the ejabberd user cannot enter.
    workdir = Path(tempfile.mkdtemp(prefix="libervia-ejabberd-sha256-"))
    try:
        server = EjabberdServer(
            workdir=workdir,
            pubsub_db_type="mnesia",
            extra_config={"auth_scram_hash": "sha256"},
        )
        server.register(OWN_USER, OWN_PASSWORD)
        server.start()
    except RuntimeError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Any:
    """Yield the server named by the test's ``server_name`` parameter."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendRunner]:
    runner = BackendRunner(tmp_path_factory.mktemp("xmpp-client"))
    try:
        yield runner
    finally:
        runner.stop()


def _account(server: Any) -> tuple[str, str]:
    """Return a (user, password) registered on ``server``."""
    user = OWN_USER if OWN_USER in server.accounts else "alice"
    return user, server.accounts[user]


_profile_numbers = iter(range(1, 1000))


def _create(
    backend: BackendRunner, server: Any, *options: str, password: str | None = None,
    port: int | None = None, ca_file: bool = True,
) -> str:
    """Create a profile for an account of ``server`` and return its name."""
    user, account_password = _account(server)
    name = f"client{next(_profile_numbers)}"
    args = [
        "profile", "create", name, "-j", f"{user}@{server.domain}",
        "--host", server.host, "--port", str(port or server.port),
        "--password-env", PASSWORD_ENV, *options,
    ]
    if ca_file:
        args += ["--ca-file", str(server.ca_file)]
    backend.li(*args, env={PASSWORD_ENV: password or account_password})
    return name


def _connect_error(backend: BackendRunner, name: str) -> str:
    """Run ``li profile connect NAME``, expect a failure, and return its one error line."""
    result = backend.li("profile", "connect", name, expect=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("li: error: ")
    return lines[0]


# SASL

MECHANISMS_OFFERED = [
    ("prosody", "SCRAM-SHA-1"),
    ("prosody", "PLAIN"),
    ("ejabberd", "SCRAM-SHA-1"),
    ("ejabberd", "PLAIN"),
    ("ejabberd_sha256", "SCRAM-SHA-256"),
    ("ejabberd_sha256", "PLAIN"),
]


class MechanismTests:
    @pytest.mark.parametrize(
        "server, mechanism", MECHANISMS_OFFERED, indirect=["server"],
        ids=[f"{s}-{m}" for s, m in MECHANISMS_OFFERED],
    )
    def test_forced_mechanism(self, backend, server, mechanism):
        name = _create(backend, server, "--sasl-mechanisms", mechanism)
        out = backend.li_json("profile", "connect", name)
        assert out["mechanism"] == mechanism
        assert out["tls"] is True
        assert out["jid"].startswith(f"{_account(server)[0]}@{server.domain}/")

    @pytest.mark.parametrize(
        "server, mechanism",
        [("prosody", "SCRAM-SHA-1"), ("ejabberd", "SCRAM-SHA-1"),
         ("ejabberd_sha256", "SCRAM-SHA-256")],
        indirect=["server"], ids=["prosody", "ejabberd", "ejabberd_sha256"],
    )
    def test_strongest_by_default(self, backend, server, mechanism):
        name = _create(backend, server)
        out = backend.li_json("profile", "connect", name)
        assert out["mechanism"] == mechanism

    def test_text_output_names_mechanism(self, backend, prosody):
        name = _create(backend, prosody)
        result = backend.li("profile", "connect", name)
        assert "(SASL SCRAM-SHA-1, TLS)" in result.stdout

    @pytest.mark.parametrize("server", ["prosody", "ejabberd"], indirect=True)
    def test_unoffered_mechanism(self, backend, server):
        name = _create(backend, server, "--sasl-mechanisms", "SCRAM-SHA-256")
        line = _connect_error(backend, name)
        assert "offers SASL mechanisms" in line
        assert "SCRAM-SHA-1" in line
        assert "allows SCRAM-SHA-256" in line

    @pytest.mark.parametrize(
        "server, mechanism",
        [("prosody", "SCRAM-SHA-1"), ("prosody", "PLAIN"), ("ejabberd", "SCRAM-SHA-1"),
         ("ejabberd_sha256", "SCRAM-SHA-256")],
        indirect=["server"], ids=["prosody-scram", "prosody-plain", "ejabberd", "ejabberd_sha256"],
    )
    def test_wrong_password(self, backend, server, mechanism):
        name = _create(
            backend, server, "--sasl-mechanisms", mechanism, password="wrong-password"
        )
        line = _connect_error(backend, name)
        assert f"authentication of {_account(server)[0]}@{server.domain} failed" in line
        assert "not-authorized" in line
        assert "wrong-password" not in line

    def test_digest_md5_rejected(self, backend, prosody):
        user, password = _account(prosody)
        result = backend.li(
            "profile", "create", "md5", "-j", f"{user}@{prosody.domain}",
            "--sasl-mechanisms", "DIGEST-MD5", "--password-env", PASSWORD_ENV,
            env={PASSWORD_ENV: password}, expect=1,
        )
        assert "DIGEST-MD5 is obsolete" in result.stderr


@pytest.fixture(scope="module")
def plain_prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """Yield a Prosody without TLS, accepting PLAIN over plain TCP."""
    server = ProsodyServer(workdir=tmp_path_factory.mktemp("plain-prosody"), tls=False)
    server.register(OWN_USER, OWN_PASSWORD)
    with server:
        yield server


class PlaintextTests:
    def test_scram_over_plain_tcp(self, backend, plain_prosody):
        name = _create(backend, plain_prosody, "--allow-plaintext", ca_file=False)
        out = backend.li_json("profile", "connect", name)
        assert out["mechanism"] == "SCRAM-SHA-1"
        assert out["tls"] is False

    def test_plain_over_plain_tcp_needs_allow_plaintext(self, backend, plain_prosody):
        name = _create(
            backend, plain_prosody, "--allow-plaintext", "--sasl-mechanisms", "PLAIN",
            ca_file=False,
        )
        out = backend.li_json("profile", "connect", name)
        assert out["mechanism"] == "PLAIN"
        assert out["tls"] is False


# TLS

class TlsTests:
    @pytest.mark.parametrize("server", ["prosody", "ejabberd"], indirect=True)
    def test_starttls_untrusted_certificate(self, backend, server):
        name = _create(backend, server, ca_file=False)
        line = _connect_error(backend, name)
        assert f"TLS with {server.host}:{server.port} failed" in line
        assert "certificate verify failed" in line

    def test_direct_tls(self, backend, own_prosody):
        name = _create(backend, own_prosody, "--direct-tls", port=own_prosody.direct_tls_port)
        out = backend.li_json("profile", "connect", name)
        assert out["tls"] is True
        assert out["mechanism"] == "SCRAM-SHA-1"

    def test_direct_tls_ejabberd(self, backend, ejabberd):
        name = _create(backend, ejabberd, "--direct-tls", port=ejabberd.direct_tls_port)
        out = backend.li_json("profile", "connect", name)
        assert out["tls"] is True
        assert out["mechanism"].startswith("SCRAM-SHA-")

    def test_direct_tls_untrusted_certificate_ejabberd(self, backend, ejabberd):
        port = ejabberd.direct_tls_port
        name = _create(backend, ejabberd, "--direct-tls", port=port, ca_file=False)
        line = _connect_error(backend, name)
        assert f"TLS with {ejabberd.host}:{port} failed" in line
        assert "certificate verify failed" in line

    def test_direct_tls_untrusted_certificate(self, backend, own_prosody):
        port = own_prosody.direct_tls_port
        name = _create(backend, own_prosody, "--direct-tls", port=port, ca_file=False)
        line = _connect_error(backend, name)
        assert f"TLS with {own_prosody.host}:{port} failed" in line
        assert "certificate verify failed" in line

    def test_direct_tls_wrong_domain(self, backend, own_prosody, tmp_path):
        # A certificate for another domain, trusted as CA: the name check fails.
        other = ProsodyServer(domain="example.net", workdir=tmp_path / "other")
        port = own_prosody.direct_tls_port
        name = f"wrongdomain{next(_profile_numbers)}"
        backend.li(
            "profile", "create", name, "-j", f"{OWN_USER}@{own_prosody.domain}",
            "--host", own_prosody.host, "--port", str(port), "--direct-tls",
            "--ca-file", str(other.ca_file), "--password-env", PASSWORD_ENV,
            env={PASSWORD_ENV: OWN_PASSWORD},
        )
        line = _connect_error(backend, name)
        assert f"TLS with {own_prosody.host}:{port} failed for domain localhost" in line

    def test_direct_tls_to_starttls_port(self, backend, own_prosody):
        name = _create(backend, own_prosody, "--direct-tls")
        line = _connect_error(backend, name)
        assert f"{own_prosody.host}:{own_prosody.port}" in line


# Errors as li shows them

class ErrorLineTests:
    """One readable line for each cause: refused, certificate, credentials, timeout."""

    def test_refused(self, backend, prosody):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        name = _create(backend, prosody, port=closed_port)
        line = _connect_error(backend, name)
        assert f"cannot connect to 127.0.0.1:{closed_port}: connection refused" in line

    def test_certificate(self, backend, prosody):
        name = _create(backend, prosody, ca_file=False)
        line = _connect_error(backend, name)
        assert "failed for domain localhost" in line
        assert "certificate" in line

    def test_credentials(self, backend, prosody):
        name = _create(backend, prosody, password="wrong-password")
        line = _connect_error(backend, name)
        assert "check the JID and password" in line

    def test_timeout(self, prosody, tmp_path_factory):
        # The kernel completes the TCP handshake for a listening socket, but
        # nothing ever reads from it or responds.
        with socket.socket() as silent, BackendRunner(
            tmp_path_factory.mktemp("timeout")
        ) as backend:
            silent.bind(("127.0.0.1", 0))
            silent.listen(1)
            port = silent.getsockname()[1]
            backend.write_config("[xmpp]\nconnect_timeout = 1\n")
            name = _create(backend, prosody, port=port)
            line = _connect_error(backend, name)
        assert f"connection to 127.0.0.1:{port} timed out after 1 s" in line


# In-process backend: reconnection, pending requests, closing tag

class _HookRecorder:
    """Plugin stand-in recording each profile_connected call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def profile_connected(self, client: Any) -> None:
        self.calls.append(client.jid.full())


@pytest.fixture
def host_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable]:
    """Yield an async factory of started Backends with short reconnection delays."""
    from libervia.backend.core.main import Backend

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    runtime = tempfile.mkdtemp(prefix="lbx-", dir="/tmp")
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    config = tmp_path / "config" / "libervia" / "libervia.conf"
    config.parent.mkdir(parents=True)
    config.write_text(
        "[xmpp]\n"
        "reconnect_initial_delay = 0.2\n"
        "reconnect_max_delay = 1\n"
        "reconnect_jitter = 0.2\n"
        "iq_timeout = 2\n"
    )
    hosts: list[Backend] = []

    async def make() -> Backend:
        host = Backend()
        await host.start()
        host.plugins["TEST_HOOK"] = _HookRecorder()
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        pytest_twisted.blockon(_as_deferred(host.stop()))
    shutil.rmtree(runtime, ignore_errors=True)


def _as_deferred(coroutine: Any) -> Any:
    from twisted.internet import defer

    return defer.ensureDeferred(coroutine)


async def _wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Let the reactor run until ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


async def _connect(host: Any, server: Any, name: str = "main") -> Any:
    await host._profile_create(
        name, f"{OWN_USER}@{server.domain}", OWN_PASSWORD,
        {"host": server.host, "port": server.port, "ca_file": str(server.ca_file)},
    )
    return await host.connect_profile(name)


async def _ping(client: Any) -> Any:
    iq = xmlstream.IQ(client.stream_manager.xmlstream, "get")
    iq.addElement(("urn:xmpp:ping", "ping"))
    return await iq.send(client.jid.host)


class ReconnectionTests:
    @pytest.mark.parametrize("server", ["own_prosody", "ejabberd_sha256"], indirect=True)
    @pytest_twisted.ensureDeferred
    async def test_reconnects_after_restart(self, host_factory, server):
        host = await host_factory()
        client = await _connect(host, server)
        hook = host.plugins["TEST_HOOK"]
        calls_after_connect = len(hook.calls)
        port = server.port

        server.stop()
        try:
            await _wait_until(lambda: not client.connected, 10, "the connection loss")
            # Let a few attempts fail against the stopped server.
            await _wait_until(
                lambda: client._reconnector.attempts >= 2, 10, "failed attempts"
            )
        finally:
            server.start()
        assert server.port == port
        await _wait_until(lambda: client.connected, 20, "the reconnection")
        await _wait_until(
            lambda: len(hook.calls) > calls_after_connect, 10, "profile_connected"
        )

        assert host.clients["main"] is client
        assert client.tls is True
        assert (await _ping(client))["type"] == "result"
        assert client._reconnector.attempts == 0

    @pytest_twisted.ensureDeferred
    async def test_rejected_credentials_stop_reconnection(self, host_factory, own_prosody):
        host = await host_factory()
        own_prosody.register("erin", "erin-first-password")
        await host._profile_create(
            "erin", f"erin@{own_prosody.domain}", "erin-first-password",
            {"host": own_prosody.host, "port": own_prosody.port,
             "ca_file": str(own_prosody.ca_file)},
        )
        client = await host.connect_profile("erin")

        own_prosody.stop()
        try:
            own_prosody.register("erin", "erin-second-password")
        finally:
            own_prosody.start()
        await _wait_until(lambda: not client.connected, 10, "the connection loss")
        await _wait_until(lambda: not client.reconnecting, 20, "the end of reconnection")
        attempts = client._reconnector.attempts
        await task.deferLater(reactor, 1.5, lambda: None)

        assert client.connected is False
        assert client._reconnector.pending is False
        assert client._reconnector.attempts == attempts

    @pytest_twisted.ensureDeferred
    async def test_disconnect_cancels_reconnection(self, host_factory, own_prosody):
        host = await host_factory()
        client = await _connect(host, own_prosody)
        own_prosody.stop()
        try:
            await _wait_until(lambda: client._reconnector.pending, 10, "a scheduled attempt")
            await host.disconnect_profile("main")
        finally:
            own_prosody.start()
        assert client._reconnector.pending is False
        assert client.reconnecting is False


class RequestLifetimeTests:
    @pytest_twisted.ensureDeferred
    async def test_iq_timeouts_set(self, host_factory, own_prosody):
        host = await host_factory()
        client = await _connect(host, own_prosody)
        assert client.stream_manager.timeout == 2
        assert client.stream_manager.xmlstream.iqDefaultTimeout == 2

    @pytest_twisted.ensureDeferred
    async def test_unanswered_iq_times_out(self, host_factory, own_prosody):
        host = await host_factory()
        client = await _connect(host, own_prosody)
        # Our own client receives this request and never responds to it.
        iq = xmlstream.IQ(client.stream_manager.xmlstream, "get")
        iq.addElement((UNANSWERED_NS, "query"))
        started = reactor.seconds()
        with pytest.raises(xmlstream.TimeoutError):
            await iq.send(client.jid.full())
        assert reactor.seconds() - started >= 2

    @pytest_twisted.ensureDeferred
    async def test_pending_requests_fail_when_server_stops(self, host_factory, own_prosody):
        host = await host_factory()
        client = await _connect(host, own_prosody)
        xs = client.stream_manager.xmlstream
        iq = xmlstream.IQ(xs, "get")
        iq.addElement((UNANSWERED_NS, "query"))
        twisted_request = iq.send(client.jid.full())
        wokkel_deferred = client.stream_manager.request(_UnansweredRequest(client.jid))
        await task.deferLater(reactor, 0.2, lambda: None)

        own_prosody.stop()
        try:
            with pytest.raises(ConnectionError_) as twisted_error:
                await twisted_request
            with pytest.raises(ConnectionError_) as wokkel_error:
                await wokkel_deferred
        finally:
            own_prosody.start()
        assert "ended before the response arrived" in str(twisted_error.value)
        assert "ended before the response arrived" in str(wokkel_error.value)
        assert own_prosody.host in str(twisted_error.value)

    @pytest_twisted.ensureDeferred
    async def test_disconnect_sends_closing_tag(self, host_factory, own_prosody):
        host = await host_factory()
        client = await _connect(host, own_prosody)
        resource = client.jid.resource
        log_size = own_prosody.log_path.stat().st_size

        await host.disconnect_profile("main")
        await _wait_until(
            lambda: "Client disconnected" in _log_since(own_prosody, log_size), 5,
            "the server to log the disconnection",
        )

        # Prosody's debug log names the session in the third field of each
        # line, and the session's resource when unbinding it.
        lines = [line.split("\t") for line in _log_since(own_prosody, log_size).splitlines()]
        sessions = {
            fields[0].split()[-1] for fields in lines
            if len(fields) == 3 and fields[2].startswith("Unbinding resource")
            and fields[2].endswith(f"/{resource} ({OWN_USER}@{own_prosody.domain})")
        }
        assert len(sessions) == 1
        received = [
            fields[2] for fields in lines
            if len(fields) == 3 and fields[0].split()[-1] in sessions
        ]
        assert "Received </stream:stream>" in received


class _UnansweredRequest(generic.Request):
    """IQ get sent to the client's own JID, which never responds to it."""

    def __init__(self, jid: JID) -> None:
        super().__init__(recipient=jid, stanzaType="get")

    def toElement(self) -> Any:
        element = super().toElement()
        element.addElement((UNANSWERED_NS, "query"))
        return element


def _log_since(server: ProsodyServer, offset: int) -> str:
    with server.log_path.open("rb") as log_file:
        log_file.seek(offset)
        return log_file.read().decode("utf-8", errors="replace")
