"""The pubsub client against real servers: Prosody 0.12 and ejabberd 23.01.

Every test runs once per server. A backend runs in the test process with two
connected profiles: ``alice``, admin of the server's pubsub component (she
creates the nodes), and ``bob``, a subscriber. Each test creates its own node.

Where the servers differ, the test states what each one does:

- ejabberd (SQL pubsub storage) pages items with RSM; Prosody ignores the
  ``<set/>`` and returns every item, which the client reports as
  ``rsm_ignored``.
- ejabberd does not send node deletion notifications unless
  ``pubsub#notify_delete`` is set, so nodes here are created with it.
- Neither server copies the ``<redirect/>`` of a deletion into the
  notification, and neither sent a configuration notification to a
  subscriber here (``pubsub#notify_config`` set), so those two notification
  shapes are covered by the XEP-0060 vectors only.
- Prosody 0.12 returns service-unavailable for the entity affiliations
  request and does not announce ``retrieve-affiliations``.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer, reactor
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from libervia.backend.core.exceptions import (
    PubsubConditionError,
    PubsubConflict,
    PubsubForbidden,
    PubsubItemNotFound,
)
from libervia.backend.plugins.plugin_xep_0059 import NS_RSM, RSMRequest
from libervia.backend.plugins.plugin_xep_0060 import (
    EVENT_DELETE,
    EVENT_ITEMS,
    EVENT_PURGE,
    NS_PUBSUB,
    XEP_0060,
    form_values,
)

SERVERS = ["prosody", "ejabberd"]
NS_TEST = "urn:example:interop"
EVENT_TIMEOUT = 10.0
IQ_TIMEOUT = 10.0

NODE_OPTIONS = {
    "pubsub#access_model": "open",
    "pubsub#max_items": "100",
    "pubsub#notify_delete": "1",
    "pubsub#notify_retract": "1",
    "pubsub#notify_config": "1",
    "pubsub#deliver_payloads": "1",
}


class Session:
    """An in-process backend with the profiles ``alice``, ``bob`` and ``carol`` connected."""

    def __init__(self, server: Any, backend: Any) -> None:
        self.server = server
        self.backend = backend
        self.service = JID(server.pubsub_service)

    @property
    def pubsub(self) -> XEP_0060:
        return self.backend.plugins["XEP-0060"]

    def client(self, profile: str) -> Any:
        return self.backend.get_client(profile)

    async def new_node(self, **options: str) -> str:
        """Create a node owned by alice on the pubsub component; return its name."""
        node = f"interop-{uuid.uuid4().hex[:10]}"
        await self.pubsub.create_node(
            self.client("alice"), self.service, node, {**NODE_OPTIONS, **options}
        )
        return node

    async def publish(self, node: str, *item_ids: str) -> list[str]:
        """Publish one item per request, as XEP-0060 requires; return the ids."""
        ids = []
        for item_id in item_ids:
            ids += await self.pubsub.publish(
                self.client("alice"), self.service, node, [make_item(item_id)]
            )
        return ids

    def events(self, node: str, kind: str) -> defer.DeferredQueue:
        """Return a queue receiving bob's events of ``kind`` for ``node``."""
        queue: defer.DeferredQueue = defer.DeferredQueue()

        def callback(client: Any, event: Any) -> None:
            if client.profile == "bob":
                queue.put(event)

        self.pubsub.add_node_callback(node, kind, callback, exact=True)
        return queue


def make_item(item_id: str) -> domish.Element:
    item = domish.Element((NS_PUBSUB, "item"))
    item["id"] = item_id
    item.addElement((NS_TEST, "entry"), content=f"text of {item_id}")
    return item


async def next_event(queue: defer.DeferredQueue, what: str) -> Any:
    d = queue.get()
    d.addTimeout(EVENT_TIMEOUT, reactor)
    try:
        return await d
    except defer.TimeoutError:
        raise AssertionError(f"no {what} notification within {EVENT_TIMEOUT:g} s") from None


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


@pytest_twisted.async_yield_fixture(scope="module")
async def session(server: Any) -> AsyncIterator[Session]:
    from libervia.backend.core.main import Backend

    base = tempfile.mkdtemp(prefix="lbi-", dir="/tmp")
    with pytest.MonkeyPatch.context() as patch:
        for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
            patch.setenv(var, f"{base}/{var.lower()}")
        patch.delenv("LIBERVIA_DB_URL", raising=False)
        backend = Backend()
        await backend.start()
        try:
            for profile in ("alice", "bob", "carol"):
                await backend._profile_create(
                    profile, f"{profile}@{server.domain}", server.accounts[profile],
                    {"host": server.host, "port": server.port,
                     "ca_file": str(server.ca_file)},
                )
                client = await backend.connect_profile(profile)
                # Fail a test on a missing response long before pytest-timeout does.
                client.options.iq_timeout = IQ_TIMEOUT
            yield Session(server, backend)
        finally:
            await backend.stop()


class ItemsTests:
    @pytest_twisted.ensureDeferred
    async def test_publish_then_get(self, session: Session) -> None:
        node = await session.new_node()
        ids = await session.publish(node, "one", "two", "three")

        items, metadata = await session.pubsub.get_items(
            session.client("bob"), session.service, node
        )

        assert ids == ["one", "two", "three"]
        assert sorted(item["id"] for item in items) == ["one", "three", "two"]
        assert metadata["complete"] is True
        assert "rsm_ignored" not in metadata

    @pytest_twisted.ensureDeferred
    async def test_max_items(self, session: Session) -> None:
        node = await session.new_node()
        await session.publish(node, "one", "two", "three")

        items, metadata = await session.pubsub.get_items(
            session.client("bob"), session.service, node, max_items=2
        )

        # The newest two; the order differs between servers.
        assert sorted(item["id"] for item in items) == ["three", "two"]
        assert metadata["complete"] is False

    @pytest_twisted.ensureDeferred
    async def test_item_ids(self, session: Session) -> None:
        node = await session.new_node()
        await session.publish(node, "one", "two", "three")

        items, _ = await session.pubsub.get_items(
            session.client("bob"), session.service, node, item_ids=["two"]
        )

        assert [item["id"] for item in items] == ["two"]
        assert next(items[0].elements(NS_TEST, "entry")) is not None

    @pytest_twisted.ensureDeferred
    async def test_rsm(self, session: Session, server: Any) -> None:
        node = await session.new_node()
        published = [f"item-{index}" for index in range(5)]
        await session.publish(node, *published)
        bob = session.client("bob")

        items, metadata = await session.pubsub.get_items(
            bob, session.service, node, rsm_request=RSMRequest(max=2)
        )

        if type(server).__name__ == "ProsodyServer":
            # Prosody 0.12 ignores RSM on pubsub items and sends everything.
            assert metadata["rsm_ignored"] is True
            assert "rsm" not in metadata
            assert sorted(item["id"] for item in items) == published
            assert metadata["complete"] is True
            return

        assert metadata["rsm_ignored"] is False
        assert len(items) == 2
        assert metadata["rsm"]["count"] == 5
        assert metadata["complete"] is False
        seen = [item["id"] for item in items]
        while len(seen) < 5:
            page, page_metadata = await session.pubsub.get_items(
                bob, session.service, node,
                rsm_request=RSMRequest(max=2, after=metadata["rsm"]["last"]),
            )
            assert page, f"empty page after {seen}"
            seen += [item["id"] for item in page]
            metadata = page_metadata
        assert sorted(seen) == published

    @pytest_twisted.ensureDeferred
    async def test_missing_node(self, session: Session) -> None:
        with pytest.raises(PubsubItemNotFound) as info:
            await session.pubsub.get_items(
                session.client("bob"), session.service, f"missing-{uuid.uuid4().hex}"
            )
        assert info.value.service == session.service.full()


class NotificationTests:
    @pytest_twisted.ensureDeferred
    async def test_publish_and_retract(self, session: Session) -> None:
        node = await session.new_node()
        items_queue = session.events(node, EVENT_ITEMS)
        subscription = await session.pubsub.subscribe(
            session.client("bob"), session.service, node
        )
        assert subscription["subscription"] == "subscribed"

        await session.publish(node, "news")
        published = await next_event(items_queue, "publish")
        await session.pubsub.retract_items(
            session.client("alice"), session.service, node, ["news"], notify=True
        )
        retracted = await next_event(items_queue, "retract")

        assert [elt["id"] for elt in published.items if elt.name == "item"] == ["news"]
        assert [elt["id"] for elt in retracted.items if elt.name == "retract"] == ["news"]

    @pytest_twisted.ensureDeferred
    async def test_purge(self, session: Session) -> None:
        node = await session.new_node()
        purge_queue = session.events(node, EVENT_PURGE)
        await session.pubsub.subscribe(session.client("bob"), session.service, node)
        await session.publish(node, "a", "b")

        await session.pubsub.purge_node(session.client("alice"), session.service, node)
        event = await next_event(purge_queue, "purge")
        items, _ = await session.pubsub.get_items(session.client("bob"), session.service, node)

        assert event.nodeIdentifier == node
        assert items == []

    @pytest_twisted.ensureDeferred
    async def test_delete_with_redirect(self, session: Session) -> None:
        node = await session.new_node()
        delete_queue = session.events(node, EVENT_DELETE)
        await session.pubsub.subscribe(session.client("bob"), session.service, node)
        redirect = f"xmpp:{session.service.full()}?;node=elsewhere"

        await session.pubsub.delete_node(
            session.client("alice"), session.service, node, redirect
        )
        event = await next_event(delete_queue, "delete")

        assert event.nodeIdentifier == node
        # Both servers accept the redirect but leave it out of the notification.
        assert event.redirectURI is None
        with pytest.raises(PubsubItemNotFound):
            await session.pubsub.get_items(session.client("bob"), session.service, node)

    @pytest_twisted.ensureDeferred
    async def test_configuration(self, session: Session) -> None:
        node = await session.new_node()

        await session.pubsub.set_node_configuration(
            session.client("alice"), session.service, node, {"pubsub#title": "New title"}
        )
        form = await session.pubsub.get_node_configuration(
            session.client("alice"), session.service, node
        )

        assert form_values(form)["pubsub#title"] == "New title"


class SubscriptionTests:
    @pytest_twisted.ensureDeferred
    async def test_subscribe_list_unsubscribe(self, session: Session) -> None:
        node = await session.new_node()
        # carol is never subscribed to a node that gets deleted: Prosody 0.12.3
        # fails on the listing of all subscriptions of such a subscriber
        # (a traceback in flatten_subscriptions, and no response).
        carol = session.client("carol")

        await session.pubsub.subscribe(carol, session.service, node)
        listed = await session.pubsub.get_subscriptions(carol, session.service, node)
        all_listed = await session.pubsub.get_subscriptions(carol, session.service)
        await session.pubsub.unsubscribe(carol, session.service, node)
        after = await session.pubsub.get_subscriptions(carol, session.service, node)

        assert [(s["node"], s["subscription"]) for s in listed] == [(node, "subscribed")]
        assert node in {s["node"] for s in all_listed}
        assert after == []

    @pytest_twisted.ensureDeferred
    async def test_owner_subscriptions(self, session: Session) -> None:
        node = await session.new_node()
        await session.pubsub.subscribe(session.client("bob"), session.service, node)
        bob_jid = session.client("bob").jid.userhost()

        subscriptions = await session.pubsub.get_node_subscriptions(
            session.client("alice"), session.service, node
        )
        await session.pubsub.set_node_subscriptions(
            session.client("alice"), session.service, node, {JID(bob_jid): "none"}
        )
        after = await session.pubsub.get_subscriptions(
            session.client("bob"), session.service, node
        )

        assert (bob_jid, "subscribed") in {(s["jid"], s["subscription"]) for s in subscriptions}
        assert after == []


class AffiliationTests:
    @pytest_twisted.ensureDeferred
    async def test_entity_affiliations(self, session: Session) -> None:
        node = await session.new_node()
        alice = session.client("alice")
        features = await session.pubsub.get_features(alice, session.service)
        if NS_PUBSUB + "#retrieve-affiliations" not in features:
            with pytest.raises(PubsubConditionError) as info:
                await session.pubsub.get_affiliations(alice, session.service)
            assert info.value.condition == "service-unavailable"
            return

        affiliations = await session.pubsub.get_affiliations(alice, session.service)

        assert affiliations[node] == "owner"

    @pytest_twisted.ensureDeferred
    async def test_owner_affiliations(self, session: Session) -> None:
        node = await session.new_node()
        alice = session.client("alice")
        bob_jid = session.client("bob").jid.userhostJID()

        await session.pubsub.set_node_affiliations(
            alice, session.service, node, {bob_jid: "publisher"}
        )
        affiliations = await session.pubsub.get_node_affiliations(alice, session.service, node)
        ids = await session.pubsub.publish(
            session.client("bob"), session.service, node, [make_item("by-bob")]
        )

        assert affiliations[alice.jid.userhost()] == "owner"
        assert affiliations[bob_jid.full()] == "publisher"
        assert ids == ["by-bob"]


class OwnerTests:
    @pytest_twisted.ensureDeferred
    async def test_create_existing_node(self, session: Session) -> None:
        node = await session.new_node()
        with pytest.raises(PubsubConflict) as info:
            await session.pubsub.create_node(session.client("alice"), session.service, node)
        assert info.value.node == node

    @pytest_twisted.ensureDeferred
    async def test_configure_by_non_owner(self, session: Session) -> None:
        node = await session.new_node()
        with pytest.raises(PubsubForbidden):
            await session.pubsub.get_node_configuration(
                session.client("bob"), session.service, node
            )

    @pytest_twisted.ensureDeferred
    async def test_configuration_form(self, session: Session) -> None:
        node = await session.new_node()

        form = await session.pubsub.get_node_configuration(
            session.client("alice"), session.service, node
        )

        assert form.formType == "form"
        assert str(form_values(form)["pubsub#max_items"]) == "100"

    @pytest_twisted.ensureDeferred
    async def test_features(self, session: Session, server: Any) -> None:
        alice = session.client("alice")

        features = await session.pubsub.get_features(alice, session.service)
        again = await session.pubsub.get_features(alice, session.service)

        assert NS_PUBSUB + "#publish" in features
        assert again is features
        # ejabberd announces RSM with SQL storage; Prosody 0.12 does not.
        assert (NS_RSM in features) is (type(server).__name__ == "EjabberdServer")
