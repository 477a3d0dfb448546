"""Component profiles (XEP-0114) driven through ``li``, against Prosody and ejabberd.

Each server runs privately for this module with the component
``comp.localhost`` declared. A daemon runs the component profile ``comp``
and a client profile ``alice``. The component connects, fails with a
one-line error on a wrong secret and a refused port, publishes on and reads
from the server's pubsub service, and caches alice's microblog (a PEP node
with an open access model): its first read starts a sync, later reads are
served from storage without any IQ, and a post of alice reaches the cache
through the notification sent to the component's JID.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libervia.testing.backend import BackendRunner
from libervia.testing.ejabberd import EjabberdServer
from libervia.testing.prosody import ProsodyServer, pick_free_port

COMPONENT = "comp.localhost"
SECRET = "component-test-secret"
ALICE_PASSWORD = "alice-component-test"
PASSWORD_ENV = "COMPONENT_TEST_PASSWORD"
MICROBLOG = "urn:xmpp:microblog:0"
#: Short delays, so that the timeout and reconnection tests take seconds.
DAEMON_CONFIG = """[xmpp]
connect_timeout = 3
reconnect_initial_delay = 0.2
reconnect_max_delay = 1
"""


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Run a Prosody, then an ejabberd, accepting the component; alice may create nodes."""
    domain = "localhost"
    if request.param == "prosody":
        xmpp_server: Any = ProsodyServer(
            domain=domain, workdir=tmp_path_factory.mktemp("prosody-component"),
            admins=[f"alice@{domain}"], components={COMPONENT: SECRET},
        )
        workdir = None
    else:
        # ejabberd's user cannot enter pytest's folders, so the server gets a
        # folder of its own. The test passes it explicitly, so that a restart
        # keeps the ports and the accounts.
        workdir = Path(tempfile.mkdtemp(prefix="libervia-ejabberd-component-"))
        xmpp_server = EjabberdServer(
            domain=domain, workdir=workdir, admins=[f"alice@{domain}"],
            components={COMPONENT: SECRET},
        )
    xmpp_server.register("alice", ALICE_PASSWORD)
    try:
        xmpp_server.start()
    except RuntimeError as exc:
        xmpp_server.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield xmpp_server
    finally:
        xmpp_server.stop()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def create_component(
    runner: BackendRunner, name: str, server: Any, secret: str, port: int | None = None,
    expect: int = 0,
) -> Any:
    """Run ``li profile create NAME --component`` for comp.localhost on ``server``."""
    return runner.li(
        "profile", "create", name, "--component", "-j", COMPONENT,
        "--host", server.host, "--port", str(port or server.component_port),
        "--password-env", PASSWORD_ENV, env={PASSWORD_ENV: secret}, expect=expect,
    )


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, server: Any) -> Iterator[BackendRunner]:
    """Run a daemon with the connected profiles comp (component) and alice (client)."""
    runner = BackendRunner(tmp_path_factory.mktemp("component"))
    runner.write_config(DAEMON_CONFIG)
    try:
        create_component(runner, "comp", server, SECRET)
        runner.li(
            "profile", "create", "alice", "-j", server.jid("alice"),
            "--host", server.host, "--port", str(server.port),
            "--ca-file", str(server.ca_file), "--password-env", PASSWORD_ENV,
            env={PASSWORD_ENV: ALICE_PASSWORD},
        )
        runner.li("profile", "connect", "alice")
        yield runner
    finally:
        runner.stop()


def iq_sent(backend: BackendRunner, profile: str) -> int:
    """Return the IQs sent by ``profile``'s stream so far."""
    return backend.li_json("debug", "stats", "-p", profile)["iq_sent"]


def connected(backend: BackendRunner, profile: str) -> bool:
    """Return whether ``li profile list`` shows ``profile`` as connected."""
    return {p["name"]: p["connected"] for p in backend.li_json("profile", "list")}[profile]


def post(item_id: str, title: str) -> str:
    """Return the XML of an item holding an Atom entry."""
    return (
        f"<item id='{item_id}'><entry xmlns='http://www.w3.org/2005/Atom'>"
        f"<title>{title}</title><id>urn:uuid:{item_id}</id>"
        "<published>2024-05-06T07:08:09Z</published></entry></item>"
    )


def delivery_options(server: Any) -> list[str]:
    """Return the node options that let ``server`` notify the component.

    ejabberd's PEP nodes notify only subscribers that sent it presence
    (``pubsub#presence_based_delivery`` is on), and a component sends none.
    """
    if isinstance(server, EjabberdServer):
        return ["-o", "pubsub#presence_based_delivery=false"]
    return []


def blog_cache(backend: BackendRunner, alice: str) -> dict | None:
    """Return the component's cache of alice's blog, or None when it is not cached."""
    result = backend.li(
        "pubsub", "cache", "get", "-s", alice, "-n", MICROBLOG, "-p", "comp",
        "-O", "json", expect=None,
    )
    return result.json() if result.returncode == 0 else None


class ComponentTests:
    """In order: connection and its errors, pubsub requests, then the cache."""

    def test_connect(self, backend):
        result = backend.li("profile", "connect", "comp")
        assert result.stdout.strip() == f"connected as {COMPONENT} (component, no TLS)"

    def test_list_shows_kind(self, backend):
        kinds = {p["name"]: p["kind"] for p in backend.li_json("profile", "list")}
        assert kinds == {"comp": "component", "alice": "client"}

    def test_wrong_secret(self, backend, server):
        create_component(backend, "badsecret", server, "not-the-secret")
        result = backend.li("profile", "connect", "badsecret", expect=1)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "not-authorized" in lines[0]
        assert COMPONENT in lines[0]

    def test_refused(self, backend, server):
        create_component(backend, "refused", server, SECRET, port=pick_free_port(server.host))
        result = backend.li("profile", "connect", "refused", expect=1)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "connection refused" in lines[0]

    def test_timeout(self, backend, server):
        # A listener that accepts TCP connections and never sends a stream header.
        with socket.socket() as silent:
            silent.bind((server.host, 0))
            silent.listen()
            create_component(backend, "silent", server, SECRET, port=silent.getsockname()[1])
            result = backend.li("profile", "connect", "silent", expect=1)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "timed out after 3 s" in lines[0]

    def test_client_options_rejected(self, backend, server):
        result = backend.li(
            "profile", "create", "tlscomp", "--component", "-j", COMPONENT,
            "--direct-tls", "--password-env", PASSWORD_ENV, env={PASSWORD_ENV: SECRET},
            expect=1,
        )
        assert "do not apply to a component" in result.stderr

    def test_publish_and_read_on_pubsub_service(self, backend, server):
        node = f"component-{uuid.uuid4().hex[:8]}"
        service = server.pubsub_service
        backend.li(
            "pubsub", "node", "create", "-s", service, "-n", node, "-p", "alice",
            "-o", "pubsub#access_model=open", "-o", "pubsub#publish_model=open",
        )
        backend.li("pubsub", "set", "-s", service, "-n", node, "-p", "comp",
                   input=post("from-comp", "By the component"))
        read_by_alice = backend.li_json("pubsub", "get", "-s", service, "-n", node, "-p", "alice")
        assert "By the component" in str(read_by_alice["items"])
        read_by_comp = backend.li_json("pubsub", "get", "-s", service, "-n", node, "-p", "comp")
        assert read_by_comp["items"] == read_by_alice["items"]

    def test_first_get_syncs(self, backend, server):
        alice = server.jid("alice")
        backend.li(
            "pubsub", "node", "create", "-s", alice, "-n", MICROBLOG, "-p", "alice",
            "-o", "pubsub#access_model=open", "-o", "pubsub#max_items=100",
            *delivery_options(server),
        )
        for number in (1, 2):
            backend.li("pubsub", "set", "-s", alice, "-n", MICROBLOG, "-p", "alice",
                       input=post(f"post-{number}", f"Post {number}"))
        first = backend.li_json("pubsub", "get", "-s", alice, "-n", MICROBLOG, "-p", "comp")
        assert first["metadata"]["from_cache"] is False

        def synced() -> dict | None:
            state = blog_cache(backend, alice)
            if state is not None and state["node"]["sync_state"] == "COMPLETED":
                return state
            return None

        state = backend.wait_for(synced, what="alice's blog synchronised for comp")
        assert sorted(item["id"] for item in state["items"]) == ["post-1", "post-2"]

    def test_later_get_from_cache(self, backend, server):
        alice = server.jid("alice")
        before = iq_sent(backend, "comp")
        result = backend.li_json("pubsub", "get", "-s", alice, "-n", MICROBLOG, "-p", "comp")
        assert result["metadata"]["from_cache"] is True
        assert iq_sent(backend, "comp") == before
        assert len(result["items"]) == 2

    def test_notification_applied(self, backend, server):
        alice = server.jid("alice")
        backend.li("pubsub", "set", "-s", alice, "-n", MICROBLOG, "-p", "alice",
                   input=post("post-3", "Post 3"))

        def cached() -> bool:
            state = blog_cache(backend, alice)
            return state is not None and "post-3" in [item["id"] for item in state["items"]]

        backend.wait_for(cached, what="post-3 in the component's cache")
        before = iq_sent(backend, "comp")
        result = backend.li_json("pubsub", "get", "-s", alice, "-n", MICROBLOG, "-p", "comp")
        assert iq_sent(backend, "comp") == before
        assert "Post 3" in str(result["items"])

    def test_reconnects_after_restart(self, backend, server):
        server.stop()
        backend.wait_for(lambda: not connected(backend, "comp"), what="comp to lose its stream")
        server.start()
        backend.wait_for(lambda: connected(backend, "comp"), what="comp to reconnect")

        before = backend.li_json("debug", "stats", "-p", "comp")
        backend.li(
            "pubsub", "get", "-s", server.pubsub_service, "-n", "component-probe", "-C",
            "-p", "comp", expect=None,
        )
        after = backend.li_json("debug", "stats", "-p", "comp")
        assert after["iq_sent"] == before["iq_sent"] + 1
        assert after["stanzas_received"] > before["stanzas_received"]
