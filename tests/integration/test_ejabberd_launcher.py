"""Tests of libervia.testing.ejabberd against the real ejabberd server (Debian's 23.01)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_twisted
from OpenSSL.SSL import Error as SSLError
from twisted.internet import defer, reactor, ssl
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import client, jid, sasl, xmlstream
from twisted.words.xish import domish

import libervia.testing.ejabberd as ejabberd_module
from libervia.testing.ejabberd import EjabberdServer
from libervia.testing.prosody import generate_certificate

LOGIN_TIMEOUT = 10
IQ_TIMEOUT = 10
STREAM_OPEN = (
    "<?xml version='1.0'?>"
    "<stream:stream to='{domain}' xmlns='jabber:client'"
    " xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_RSM = "http://jabber.org/protocol/rsm"


def read_features(server: EjabberdServer) -> str:
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
    """Return whether a process with this PID runs (zombies excluded)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def processes_of_node(node: str) -> list[int]:
    """Return the PIDs of processes whose command line names the Erlang node."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if node.encode() in command_line.split(b"\0"):
            pids.append(int(entry.name))
    return pids


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


@asynccontextmanager
async def session(
    server: EjabberdServer, user: str, password: str, ca_file: Path | None = None
) -> AsyncIterator[xmlstream.XmlStream]:
    """Log in over STARTTLS with Twisted's client and yield the authenticated stream.

    The certificate is verified against ``ca_file`` (default: the server's
    own). Raises what Twisted reports when an initialisation step fails.
    Twisted's SASL client has no SCRAM, so it authenticates with PLAIN.
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

    authenticated: defer.Deferred[xmlstream.XmlStream] = defer.Deferred()
    stream_ended: defer.Deferred[None] = defer.Deferred()
    streams: list[xmlstream.XmlStream] = []

    def on_authenticated(stream: xmlstream.XmlStream) -> None:
        if not authenticated.called:
            authenticated.callback(stream)

    def on_failure(failure: Failure) -> None:
        if not authenticated.called:
            authenticated.errback(failure)

    def on_end(reason: Failure) -> None:
        if not stream_ended.called:
            stream_ended.callback(None)
        # The connection's loss reason carries TLS errors, such as a failed
        # certificate verification.
        if not authenticated.called:
            authenticated.errback(reason)

    factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, streams.append)
    factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, on_authenticated)
    factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, on_failure)
    factory.addBootstrap(xmlstream.STREAM_END_EVENT, on_end)
    authenticated.addTimeout(LOGIN_TIMEOUT, reactor)

    connector = reactor.connectTCP(server.host, server.port, factory)
    try:
        yield await authenticated
    finally:
        factory.stopTrying()
        if streams and streams[0].transport is not None:
            await close_stream(streams[0], stream_ended)
        else:
            connector.disconnect()


async def close_stream(
    stream: xmlstream.XmlStream, stream_ended: defer.Deferred[None]
) -> None:
    """Send the closing stream tag and wait until the server closes the connection."""
    # ejabberd 23.01 sends no TLS close_notify in reply to Twisted's, so
    # closing only the connection waits forever. The closing stream tag makes
    # ejabberd close its side.
    if stream_ended.called:
        return
    stream.sendFooter()
    stream_ended.addTimeout(LOGIN_TIMEOUT, reactor)
    try:
        await stream_ended
    except defer.TimeoutError:
        stream.transport.abortConnection()
        raise


async def login(
    server: EjabberdServer, user: str, password: str, ca_file: Path | None = None
) -> None:
    """Log in over STARTTLS, then close the stream."""
    async with session(server, user, password, ca_file):
        pass


async def send_iq(
    stream: xmlstream.XmlStream, iq_type: str, to: str, payload: domish.Element
) -> domish.Element:
    """Send an IQ with ``payload`` and return the result; an error response raises."""
    iq = xmlstream.IQ(stream, iq_type)
    iq.addChild(payload)
    iq.timeout = IQ_TIMEOUT
    return await iq.send(to)


async def disco_features(stream: xmlstream.XmlStream, to: str) -> set[str]:
    """Return the features of ``to`` listed by a disco#info request."""
    response = await send_iq(stream, "get", to, domish.Element((NS_DISCO_INFO, "query")))
    query = next(response.elements(NS_DISCO_INFO, "query"))
    return {feature["var"] for feature in query.elements(NS_DISCO_INFO, "feature")}


def pubsub_request(child: str, node: str) -> tuple[domish.Element, domish.Element]:
    """Return a <pubsub/> payload and its child element ``child`` for ``node``."""
    pubsub = domish.Element((NS_PUBSUB, "pubsub"))
    element = pubsub.addElement(child)
    element["node"] = node
    return pubsub, element


class EjabberdServerLifecycleTests:
    def test_start_and_stop(self) -> None:
        server = EjabberdServer()
        server.start()
        pid = server.pid
        assert server.running
        assert pid is not None
        assert process_exists(pid)

        server.stop()
        assert not server.running
        assert server.pid is None
        assert not process_exists(pid)

    def test_stop_leaves_no_process(self) -> None:
        server = EjabberdServer()
        server.start()
        launcher = server._process
        assert launcher is not None
        started = [child.pid for child in server._children]
        node_processes = processes_of_node(server.node)
        assert server.pid in node_processes

        server.stop()
        assert launcher.returncode is not None
        assert [pid for pid in started if process_exists(pid)] == []
        assert processes_of_node(server.node) == []

    def test_stop_is_idempotent(self) -> None:
        server = EjabberdServer()
        server.stop()
        server.start()
        server.stop()
        server.stop()
        assert server.pid is None

    def test_hung_server_killed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(ejabberd_module, "STOP_TIMEOUT", 0.5)
        server = EjabberdServer()
        server.start()
        pid = server.pid
        assert pid is not None
        # A stopped process ignores SIGTERM until it is continued.
        os.kill(pid, signal.SIGSTOP)
        server.stop()
        assert not process_exists(pid)
        assert processes_of_node(server.node) == []

    def test_context_manager_stops(self) -> None:
        with EjabberdServer() as server:
            pid = server.pid
            assert pid is not None
            assert process_exists(pid)
        assert not process_exists(pid)

    def test_interpreter_exit_stops_server(self) -> None:
        script = (
            "from libervia.testing.ejabberd import EjabberdServer\n"
            "server = EjabberdServer()\n"
            "server.start()\n"
            "print(server.pid, server.node)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True, text=True, timeout=60, check=True,
        )
        pid, node = result.stdout.split()
        assert not process_exists(int(pid))
        assert processes_of_node(node) == []

    def test_temporary_workdir_removed(self) -> None:
        server = EjabberdServer()
        workdir = server.workdir
        with server:
            assert workdir.is_dir()
        assert not workdir.exists()

    def test_workdir_owned_by_ejabberd(self, ejabberd: EjabberdServer) -> None:
        owner = pwd.getpwnam("ejabberd").pw_uid
        assert ejabberd.workdir.stat().st_uid == owner
        assert ejabberd.certfile.stat().st_uid == owner

    @pytest.mark.skipif(
        os.geteuid() != 0, reason="only root runs ejabberd as another user"
    )
    def test_private_workdir_rejected(self, tmp_path: Path) -> None:
        # pytest's base folder for root (/tmp/pytest-of-root) is mode 0700.
        with pytest.raises(RuntimeError, match="cannot enter a folder above"):
            EjabberdServer(workdir=tmp_path / "ejabberd")

    def test_given_workdir_kept(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="ejabberd-test-"))
        try:
            with EjabberdServer(workdir=workdir) as server:
                log_path = server.log_path
            assert log_path.exists()
            assert server.node in log_path.read_text()
        finally:
            shutil.rmtree(workdir)

    def test_two_servers_use_different_ports(self) -> None:
        with EjabberdServer() as first, EjabberdServer() as second:
            assert first.port != second.port
            assert first.dist_port != second.dist_port
            assert first.node != second.node
            assert "starttls" in read_features(first)
            assert "starttls" in read_features(second)

    def test_taken_port_replaced(self) -> None:
        server = EjabberdServer()
        taken_port = server.port
        with socket.socket() as blocker:
            blocker.bind((server.host, taken_port))
            blocker.listen()
            with server:
                assert server.port != taken_port
                assert "starttls" in read_features(server)

    def test_taken_dist_port_replaced(self) -> None:
        server = EjabberdServer()
        taken_port = server.dist_port
        with socket.socket() as blocker:
            blocker.bind((server.host, taken_port))
            blocker.listen()
            with server:
                assert server.dist_port != taken_port
                assert server.ctl("status").returncode == 0

    def test_stream_header(self, ejabberd: EjabberdServer) -> None:
        features = read_features(ejabberd)
        assert "<stream:stream" in features
        assert f"from='{ejabberd.domain}'" in features
        assert "urn:ietf:params:xml:ns:xmpp-tls" in features
        assert "<required/>" in features

    def test_plain_tcp_without_tls(self) -> None:
        with EjabberdServer(tls=False) as server:
            features = read_features(server)
        assert "starttls" not in features
        assert "<mechanism>PLAIN</mechanism>" in features
        assert "<mechanism>SCRAM-SHA-1</mechanism>" in features

    def test_listens_on_loopback_only(self, ejabberd: EjabberdServer) -> None:
        assert ejabberd.pid is not None
        addresses = listening_addresses(ejabberd.pid)
        expected = {
            ("127.0.0.1", ejabberd.port),
            ("127.0.0.1", ejabberd.dist_port),
            # The session fixture also opens a direct TLS listener.
            ("127.0.0.1", ejabberd.direct_tls_port),
        }
        assert addresses == expected

    def test_status_started(self, ejabberd: EjabberdServer) -> None:
        result = ejabberd.ctl("status")
        assert "started" in result.stdout

    def test_startup_failure_quotes_log(self) -> None:
        server = EjabberdServer()
        config = server.config_path.read_text()
        server.config_path.write_text(config.replace('"hosts"', '"no_such_option"', 1))
        started = time.monotonic()
        try:
            with pytest.raises(RuntimeError, match="ejabberd exited") as excinfo:
                server.start()
            assert not server.running
        finally:
            server.stop()
        assert "Missing required option: hosts" in str(excinfo.value)
        assert time.monotonic() - started < 15

    def test_extra_config_applies(self) -> None:
        extra = {"disable_sasl_mechanisms": ["PLAIN"]}
        with EjabberdServer(tls=False, extra_config=extra) as server:
            features = read_features(server)
        assert "<mechanism>PLAIN</mechanism>" not in features
        assert "<mechanism>SCRAM-SHA-1</mechanism>" in features

    def test_invalid_pubsub_db_type_rejected(self) -> None:
        with pytest.raises(ValueError, match="pubsub_db_type"):
            EjabberdServer(pubsub_db_type="odbc")  # type: ignore[arg-type]

    def test_missing_binary_names_script(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("PATH", str(tmp_path))
        monkeypatch.setattr(ejabberd_module, "SBIN_DIRS", ())
        with pytest.raises(RuntimeError, match="scripts/ensure-ejabberd.sh"):
            EjabberdServer()


class EjabberdServerLoginTests:
    @pytest_twisted.ensureDeferred
    async def test_tls_login(self, ejabberd: EjabberdServer) -> None:
        await login(ejabberd, "alice", ejabberd.accounts["alice"])

    @pytest_twisted.ensureDeferred
    async def test_wrong_password_fails(self, ejabberd: EjabberdServer) -> None:
        with pytest.raises(sasl.SASLAuthError):
            await login(ejabberd, "alice", "not-the-password")

    @pytest_twisted.ensureDeferred
    async def test_unknown_user_fails(self, ejabberd: EjabberdServer) -> None:
        with pytest.raises(sasl.SASLAuthError):
            await login(ejabberd, "nobody", "any-password")

    @pytest_twisted.ensureDeferred
    async def test_register_while_running(self, ejabberd: EjabberdServer) -> None:
        ejabberd.register("late", "late-test-password")
        await login(ejabberd, "late", "late-test-password")

    @pytest_twisted.ensureDeferred
    async def test_register_replaces_password(self, ejabberd: EjabberdServer) -> None:
        ejabberd.register("changing", "first-test-password")
        ejabberd.register("changing", "second-test-password")
        await login(ejabberd, "changing", "second-test-password")
        with pytest.raises(sasl.SASLAuthError):
            await login(ejabberd, "changing", "first-test-password")

    @pytest_twisted.ensureDeferred
    async def test_other_certificate_rejected(
        self, ejabberd: EjabberdServer, tmp_path: Path
    ) -> None:
        # A certificate for the same domain, but not the one the server uses.
        other_ca = tmp_path / "other.crt"
        generate_certificate(ejabberd.domain, other_ca, tmp_path / "other.key")
        with pytest.raises(SSLError) as excinfo:
            await login(ejabberd, "alice", ejabberd.accounts["alice"], ca_file=other_ca)
        assert "certificate verify failed" in str(excinfo.value)


class EjabberdServerPubsubTests:
    @pytest_twisted.ensureDeferred
    async def test_retrieve_items_advertised(self, ejabberd: EjabberdServer) -> None:
        async with session(ejabberd, "bob", ejabberd.accounts["bob"]) as stream:
            features = await disco_features(stream, ejabberd.pubsub_service)
        assert f"{NS_PUBSUB}#retrieve-items" in features

    @pytest_twisted.ensureDeferred
    async def test_rsm_advertised(self, ejabberd: EjabberdServer) -> None:
        async with session(ejabberd, "bob", ejabberd.accounts["bob"]) as stream:
            features = await disco_features(stream, ejabberd.pubsub_service)
        assert NS_RSM in features or f"{NS_PUBSUB}#rsm" in features

    @pytest_twisted.ensureDeferred
    async def test_admin_publishes_and_pages(self, ejabberd: EjabberdServer) -> None:
        node = "launcher-test-paging"
        service = ejabberd.pubsub_service
        async with session(ejabberd, "alice", ejabberd.accounts["alice"]) as stream:
            create, _ = pubsub_request("create", node)
            await send_iq(stream, "set", service, create)
            for index in range(3):
                publish, publish_element = pubsub_request("publish", node)
                item = publish_element.addElement("item")
                item["id"] = f"item-{index}"
                item.addElement(("urn:example:launcher-test", "entry"), content=str(index))
                await send_iq(stream, "set", service, publish)

            request, _ = pubsub_request("items", node)
            rsm = request.addElement((NS_RSM, "set"))
            rsm.addElement("max", content="2")
            response = await send_iq(stream, "get", service, request)

        pubsub = next(response.elements(NS_PUBSUB, "pubsub"))
        items = next(pubsub.elements(NS_PUBSUB, "items"))
        rsm_response = next(pubsub.elements(NS_RSM, "set"))
        assert len(list(items.elements(NS_PUBSUB, "item"))) == 2
        assert str(next(rsm_response.elements(NS_RSM, "count"))) == "3"
        assert ejabberd.sql_database.exists()

    @pytest_twisted.ensureDeferred
    async def test_mnesia_backend_serves_pubsub(self) -> None:
        with EjabberdServer(pubsub_db_type="mnesia") as server:
            server.register("dora", "dora-test-password")
            async with session(server, "dora", "dora-test-password") as stream:
                features = await disco_features(stream, server.pubsub_service)
            sql_database_exists = server.sql_database.exists()
        assert f"{NS_PUBSUB}#retrieve-items" in features
        # ejabberd 23.01 advertises RSM with its SQL backend only.
        assert NS_RSM not in features
        assert not sql_database_exists
