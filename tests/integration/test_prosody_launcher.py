"""Tests of libervia.testing.prosody against the real Prosody server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from OpenSSL.SSL import Error as SSLError
from twisted.internet import defer, reactor, ssl
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import client, jid, sasl, xmlstream

from libervia.testing.prosody import ProsodyServer

LOGIN_TIMEOUT = 10
STREAM_OPEN = (
    "<?xml version='1.0'?>"
    "<stream:stream to='{domain}' xmlns='jabber:client'"
    " xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)


def read_features(server: ProsodyServer) -> str:
    """Open a raw client stream and return what the server sends up to its features."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(STREAM_OPEN.format(domain=server.domain).encode())
        received = b""
        while b"</stream:features>" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received.decode()


def process_exists(pid: int) -> bool:
    """Return whether a process with this PID exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def decode_proc_address(address_hex: str) -> str:
    """Decode an address of /proc/net/tcp or tcp6: 32-bit words in host order."""
    raw = bytes.fromhex(address_hex)
    words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, b"".join(words))


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """Return the (address, port) pairs on which a process listens (Linux only)."""
    socket_inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            socket_inodes.add(target[len("socket:["):-1])

    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_address, state, inode = fields[1], fields[3], fields[9]
            # State 0A is TCP_LISTEN.
            if state != "0A" or inode not in socket_inodes:
                continue
            address_hex, port_hex = local_address.split(":")
            addresses.add((decode_proc_address(address_hex), int(port_hex, 16)))
    return addresses


async def login(
    server: ProsodyServer, user: str, password: str, ca_file: Path | None = None
) -> None:
    """Log in over STARTTLS with Twisted's client, then close the stream.

    The certificate is verified against ``ca_file`` (default: the server's
    own). Raises what Twisted reports when an initialisation step fails.
    """
    trust_root = ssl.Certificate.loadPEM((ca_file or server.ca_file).read_bytes())
    tls_options = ssl.optionsForClientTLS(server.domain, trustRoot=trust_root)
    factory = client.XMPPClientFactory(
        jid.JID(server.jid(user, "launcher-test")),
        password,
        configurationForTLS=tls_options,
    )
    # XmlStreamFactory reconnects by default: one attempt is what is tested.
    factory.maxRetries = 0

    result: defer.Deferred[None] = defer.Deferred()
    stream_ended: defer.Deferred[None] = defer.Deferred()
    streams: list[xmlstream.XmlStream] = []

    def on_authenticated(stream: xmlstream.XmlStream) -> None:
        if not result.called:
            result.callback(None)

    def on_failure(failure: Failure) -> None:
        if not result.called:
            result.errback(failure)

    def on_end(reason: Failure) -> None:
        if not stream_ended.called:
            stream_ended.callback(None)
        # The connection's loss reason carries TLS errors, such as a failed
        # certificate verification.
        if not result.called:
            result.errback(reason)

    factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, streams.append)
    factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, on_authenticated)
    factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, on_failure)
    factory.addBootstrap(xmlstream.STREAM_END_EVENT, on_end)
    result.addTimeout(LOGIN_TIMEOUT, reactor)

    connector = reactor.connectTCP(server.host, server.port, factory)
    try:
        await result
    finally:
        factory.stopTrying()
        if streams and streams[0].transport is not None:
            streams[0].transport.loseConnection()
            await stream_ended
        else:
            connector.disconnect()


class ProsodyServerLifecycleTests:
    def test_start_and_stop(self, tmp_path: Path) -> None:
        server = ProsodyServer(workdir=tmp_path)
        server.start()
        pid = server.pid
        assert server.running
        assert pid is not None
        assert process_exists(pid)

        server.stop()
        assert not server.running
        assert not process_exists(pid)

    def test_stop_is_idempotent(self, tmp_path: Path) -> None:
        server = ProsodyServer(workdir=tmp_path)
        server.stop()
        server.start()
        server.stop()
        server.stop()
        assert server.pid is None

    def test_context_manager_stops(self, tmp_path: Path) -> None:
        with ProsodyServer(workdir=tmp_path) as server:
            pid = server.pid
            assert pid is not None
            assert process_exists(pid)
        assert not process_exists(pid)

    def test_interpreter_exit_stops_server(self, tmp_path: Path) -> None:
        script = (
            "import sys\n"
            "from libervia.testing.prosody import ProsodyServer\n"
            "server = ProsodyServer(workdir=sys.argv[1])\n"
            "server.start()\n"
            "print(server.pid)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            capture_output=True, text=True, timeout=30, check=True,
        )
        pid = int(result.stdout)
        assert not process_exists(pid)

    def test_temporary_workdir_removed(self) -> None:
        server = ProsodyServer()
        workdir = server.workdir
        with server:
            assert workdir.is_dir()
        assert not workdir.exists()

    def test_two_servers_use_different_ports(self, tmp_path: Path) -> None:
        with (
            ProsodyServer(workdir=tmp_path / "first") as first,
            ProsodyServer(workdir=tmp_path / "second") as second,
        ):
            assert first.port != second.port
            assert "starttls" in read_features(first)
            assert "starttls" in read_features(second)

    def test_taken_port_replaced(self, tmp_path: Path) -> None:
        server = ProsodyServer(workdir=tmp_path)
        taken_port = server.port
        with socket.socket() as blocker:
            blocker.bind((server.host, taken_port))
            blocker.listen()
            with server:
                assert server.port != taken_port
                assert "starttls" in read_features(server)

    def test_stream_header(self, prosody: ProsodyServer) -> None:
        features = read_features(prosody)
        assert "<stream:stream" in features
        assert f"from='{prosody.domain}'" in features
        assert "urn:ietf:params:xml:ns:xmpp-tls" in features
        assert "<required/>" in features

    def test_plain_tcp_without_tls(self, tmp_path: Path) -> None:
        with ProsodyServer(workdir=tmp_path, tls=False) as server:
            features = read_features(server)
        assert "starttls" not in features
        assert "<mechanism>PLAIN</mechanism>" in features

    def test_listens_on_c2s_port_only(self, prosody: ProsodyServer) -> None:
        assert prosody.pid is not None
        addresses = listening_addresses(prosody.pid)
        assert addresses == {("127.0.0.1", prosody.port)}

    def test_startup_failure_quotes_log(self, tmp_path: Path) -> None:
        server = ProsodyServer(workdir=tmp_path)
        # A syntax error in the config makes Prosody exit at startup.
        config = server.config_path.read_text()
        server.config_path.write_text(config + '\nthis is not lua\n')
        started = time.monotonic()
        try:
            with pytest.raises(RuntimeError, match="Prosody exited") as excinfo:
                server.start()
            assert not server.running
        finally:
            server.stop()
        assert "syntax error" in str(excinfo.value)
        assert time.monotonic() - started < 10

    def test_extra_config_applies(self, tmp_path: Path) -> None:
        extra = 'disable_sasl_mechanisms = { "PLAIN" }'
        server = ProsodyServer(workdir=tmp_path, tls=False, extra_config=extra)
        with server:
            features = read_features(server)
        assert "<mechanism>PLAIN</mechanism>" not in features
        assert "<mechanism>SCRAM-SHA-1</mechanism>" in features

    def test_missing_binary_names_script(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(RuntimeError, match="scripts/ensure-prosody.sh"):
            ProsodyServer(workdir=tmp_path)


class ProsodyServerLoginTests:
    @pytest_twisted.ensureDeferred
    async def test_tls_login(self, prosody: ProsodyServer) -> None:
        await login(prosody, "alice", prosody.accounts["alice"])

    @pytest_twisted.ensureDeferred
    async def test_wrong_password_fails(self, prosody: ProsodyServer) -> None:
        with pytest.raises(sasl.SASLAuthError):
            await login(prosody, "alice", "not-the-password")

    @pytest_twisted.ensureDeferred
    async def test_unknown_user_fails(self, prosody: ProsodyServer) -> None:
        with pytest.raises(sasl.SASLAuthError):
            await login(prosody, "nobody", "any-password")

    @pytest_twisted.ensureDeferred
    async def test_register_while_running(self, prosody: ProsodyServer) -> None:
        prosody.register("late", "late-test-password")
        await login(prosody, "late", "late-test-password")

    @pytest_twisted.ensureDeferred
    async def test_other_certificate_rejected(
        self, prosody: ProsodyServer, tmp_path: Path
    ) -> None:
        # A certificate for the same domain, but not the one the server uses.
        other = ProsodyServer(workdir=tmp_path)
        with pytest.raises(SSLError) as excinfo:
            await login(
                prosody, "alice", prosody.accounts["alice"], ca_file=other.ca_file
            )
        assert "certificate verify failed" in str(excinfo.value)
