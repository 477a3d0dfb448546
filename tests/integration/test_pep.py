"""PEP notifications through shared presence, against real Prosody and ejabberd.

A reader and a publisher subscribe to each other's presence with ``li roster
add``. The reader's caps announce ``urn:xmpp:microblog:0+notify``, so the
publisher's PEP service sends it the publisher's new posts without any pubsub
subscription. Notifications are read on the bridge as ``ps_event``
signals, the way a frontend receives them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from libervia.cli.bridge_client import BridgeClient, BridgeTimeout
from libervia.testing.backend import BackendRunner

NODE = "urn:xmpp:microblog:0"
PASSWORD_ENV = "PEP_TEST_PASSWORD"
PROFILES = ("pub", "reader", "stranger")
#: Seconds to wait for a notification.
EVENT_TIMEOUT = 20.0
#: Seconds to keep listening for notifications that must not come.
QUIET_PERIOD = 2.0


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def server(request: pytest.FixtureRequest) -> Any:
    """Return the session's Prosody, then its ejabberd."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, server: Any) -> Iterator[BackendRunner]:
    """Run a daemon with three connected profiles on new accounts of ``server``."""
    runner = BackendRunner(tmp_path_factory.mktemp("pep"))
    suffix = uuid.uuid4().hex[:6]
    runner.jids = {}
    try:
        for profile in PROFILES:
            user = f"{profile}{suffix}"
            password = f"pw-{profile}-{suffix}"
            server.register(user, password)
            runner.jids[profile] = server.jid(user)
            runner.li(
                "profile", "create", profile, "-j", runner.jids[profile],
                "--host", server.host, "--port", str(server.port),
                "--ca-file", str(server.ca_file), "--password-env", PASSWORD_ENV,
                env={PASSWORD_ENV: password},
            )
            runner.li("profile", "connect", profile)
        # The PEP default access model: only contacts sharing presence may read.
        runner.li(
            "pubsub", "node", "create", "-s", runner.jids["pub"], "-n", NODE, "-p", "pub",
            "-o", "pubsub#access_model=presence", "-o", "pubsub#max_items=100",
        )
        yield runner
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def contacts(backend: BackendRunner) -> BackendRunner:
    """Return the daemon once the reader and the publisher share presence."""
    share_presence(backend, "reader", "pub")
    return backend


@pytest.fixture
def signals(backend: BackendRunner) -> Iterator[BridgeClient]:
    """Return a bridge connection that receives the daemon's signals."""
    client = BridgeClient(backend.runtime_dir / "libervia" / "bridge.sock", timeout=30)
    client.connect()
    # The daemon sends signals to connections it has registered: a call
    # makes sure this one is.
    client.call("ping")
    try:
        yield client
    finally:
        client.close()


def roster_item(backend: BackendRunner, profile: str, contact: str) -> dict | None:
    """Return the roster item of ``contact`` in ``profile``'s roster, or None."""
    items = backend.li_json("roster", "get", "-p", profile)
    return next((item for item in items if item["jid"] == contact), None)


def share_presence(backend: BackendRunner, first: str, second: str) -> None:
    """Make two profiles subscribe to each other's presence, and wait for it."""
    backend.li("roster", "add", backend.jids[second], "-p", first)
    backend.li("roster", "add", backend.jids[first], "-p", second)
    for profile, contact in ((first, second), (second, first)):
        backend.wait_for(
            lambda: (roster_item(backend, profile, backend.jids[contact]) or {}).get(
                "subscription"
            ) == "both",
            what=f"a mutual presence subscription between {profile} and {contact}",
        )


def publish_post(backend: BackendRunner, title: str) -> str:
    """Publish an Atom post on the publisher's blog; return its item id."""
    item_id = f"post-{uuid.uuid4().hex[:8]}"
    item = (
        f"<item id='{item_id}'><entry xmlns='http://www.w3.org/2005/Atom'>"
        f"<title>{title}</title><id>urn:uuid:{item_id}</id>"
        "<published>2024-05-06T07:08:09Z</published></entry></item>"
    )
    # Published without publish options, which ejabberd 23.01 rejects for
    # pubsub#max_items: the node was created with its configuration.
    backend.li("pubsub", "set", "-s", backend.jids["pub"], "-n", NODE, "-p", "pub", input=item)
    return item_id


def is_post_event(name: str, args: dict, backend: BackendRunner, item_id: str) -> bool:
    """Return True for a ps_event signal carrying ``item_id`` from the publisher's blog."""
    return (
        name == "ps_event"
        and args.get("service") == backend.jids["pub"]
        and args.get("node") == NODE
        and any(f"id='{item_id}'" in xml or f'id="{item_id}"' in xml
                for xml in args.get("items") or [])
    )


def collect_events(
    signals: BridgeClient, backend: BackendRunner, item_id: str, until_profile: str,
) -> list[str]:
    """Return the profiles of the post events received, waiting for one to ``until_profile``.

    Listening goes on for QUIET_PERIOD seconds after that event, so that
    repeated deliveries and deliveries to other profiles are counted too.
    """
    profiles: list[str] = []
    deadline = time.monotonic() + EVENT_TIMEOUT
    quiet_end: float | None = None
    while True:
        end = quiet_end if quiet_end is not None else deadline
        remaining = end - time.monotonic()
        if remaining <= 0:
            break
        try:
            name, args = next(signals.iter_signals(timeout=remaining))
        except BridgeTimeout:
            break
        if not is_post_event(name, args, backend, item_id):
            continue
        profiles.append(args["profile"])
        if args["profile"] == until_profile and quiet_end is None:
            quiet_end = time.monotonic() + QUIET_PERIOD
    return profiles


@pytest.mark.usefixtures("contacts")
class PepNotificationTests:
    """Presence-based notifications of a contact's microblog node."""

    def test_roster_add_gives_mutual_subscription(self, backend):
        item = roster_item(backend, "reader", backend.jids["pub"])
        assert item is not None
        assert item["subscription"] == "both"
        assert item["ask"] is False

    def test_contact_resource_listed_online(self, backend):
        item = backend.wait_for(
            lambda: (roster_item(backend, "reader", backend.jids["pub"]) or {}).get("resources"),
            what="the publisher's resource in the reader's roster",
        )
        assert item[0].startswith(backend.jids["pub"] + "/")

    def test_post_notified_without_subscription(self, backend, signals):
        item_id = publish_post(backend, "Seen through presence")
        profiles = collect_events(signals, backend, item_id, until_profile="reader")
        assert "reader" in profiles
        # No explicit subscription: the reader's cache never saw the node.
        result = backend.li(
            "pubsub", "cache", "get", "-s", backend.jids["pub"], "-n", NODE, "-p", "reader",
            expect=1,
        )
        assert "is not in the cache" in result.stderr

    def test_no_notification_without_shared_presence(self, backend, signals):
        item_id = publish_post(backend, "Not for strangers")
        profiles = collect_events(signals, backend, item_id, until_profile="reader")
        assert "reader" in profiles
        assert "stranger" not in profiles

    def test_repeated_notifications_stored_once(self, backend, signals):
        service = backend.jids["pub"]
        backend.li_json("blog", "get", "-s", service, "-p", "reader")

        def synced() -> bool:
            result = backend.li(
                "pubsub", "cache", "get", "-s", service, "-n", NODE, "-p", "reader",
                "-O", "json", expect=None,
            )
            return result.returncode == 0 and result.json()["node"]["sync_state"] == "COMPLETED"

        backend.wait_for(synced, what="the publisher's blog to be synchronised")
        item_id = publish_post(backend, "Delivered twice")
        profiles = collect_events(signals, backend, item_id, until_profile="reader")
        # Prosody 0.12 and ejabberd 23.01 both deliver the post twice here
        # (subscription and presence, or bare and full JID).
        assert profiles.count("reader") >= 2

        def cached_copies() -> list[dict]:
            items = backend.li_json(
                "pubsub", "cache", "get", "-s", service, "-n", NODE, "-p", "reader"
            )["items"]
            return [item for item in items if item["id"] == item_id]

        copies = backend.wait_for(cached_copies, what="the notified post in the cache")
        assert len(copies) == 1
        assert copies[0]["parsed"]["title"] == "Delivered twice"
        posts = backend.li_json("blog", "get", "-s", service, "-p", "reader")
        assert posts["metadata"]["from_cache"] is True
        assert [post["id"] for post in posts["items"]].count(item_id) == 1
