"""The pubsub cache following node changes on real servers: Prosody 0.12 and ejabberd 23.01.

A backend runs in the test process with the profiles ``alice`` (admin of the
pubsub component, she creates the nodes and publishes) and ``bob``, whose
cache is tested. Each test creates its own node, whose name starts with the
prefix of the analyser registered here, so bob's first read syncs it.

What the servers do differently, and the tests check:

- ejabberd returns items in creation order: an edited item keeps its place.
  Prosody returns them in modification order: an edited item comes last.
- Both drop the least recently modified items beyond ``pubsub#max_items``.
  When max_items is lowered, Prosody drops the extra items at once, ejabberd
  at the next publish.
- ejabberd notifies subscribers of configuration changes with the new
  configuration form; Prosody sends no configuration notification.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import reactor, task
from twisted.words.xish import domish

from libervia.backend.core import constants as C
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.plugins.plugin_pubsub_cache import (
    EXTRA_ITEM_ORDER,
    EXTRA_MAX_ITEMS,
    ORDER_CREATION,
    ORDER_MODIFICATION,
)
from libervia.backend.plugins.plugin_xep_0060 import NS_PUBSUB
from libervia.testing.session import BackendSession, backend_session

SERVERS = ["prosody", "ejabberd"]
NS_TEST = "urn:example:cache-changes"
NODE_PREFIX = "cache-changes-"
IQ_TIMEOUT = 20.0
# Time given to a notification to reach bob's cache (seconds).
SETTLE_TIMEOUT = 10.0


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def make_item(item_id: str, text: str) -> domish.Element:
    item = domish.Element((NS_PUBSUB, "item"))
    item["id"] = item_id
    item.addElement((NS_TEST, "entry"), content=text)
    return item


class Session(BackendSession):
    """An in-process backend with alice and bob connected, bob's cache syncing test nodes."""

    def __init__(self, server: Any, backend: Any) -> None:
        super().__init__(server, backend, IQ_TIMEOUT)
        self.signals: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, item_id: str, text: str | None = None, node: str = "") -> None:
        await self.pubsub.publish(
            self.client("alice"), self.service, node, [make_item(item_id, text or item_id)]
        )

    async def synced_node(
        self, ids: list[str], max_items: int = 10, bob_owner: bool = False,
    ) -> str:
        """Create a node holding ``ids``, have bob's cache sync it, and return its name."""
        node = f"{NODE_PREFIX}{uuid.uuid4().hex[:10]}"
        alice = self.client("alice")
        await self.pubsub.create_node(alice, self.service, node, {
            "pubsub#access_model": "open",
            "pubsub#max_items": str(max_items),
            "pubsub#deliver_payloads": "1",
            "pubsub#notify_retract": "1",
            "pubsub#notify_config": "1",
        })
        if bob_owner:
            await self.pubsub.set_node_affiliations(
                alice, self.service, node, {self.client("bob").jid.userhostJID(): "owner"}
            )
        for item_id in ids:
            await self.publish(item_id, node=node)
        await self.pubsub.get_items(self.client("bob"), self.service, node, max_items=1)
        await self.cache.wait_syncs()
        assert (await self.node_row(node)).sync_state == SyncState.COMPLETED
        return node

    async def node_row(self, node: str) -> Any:
        return await self.backend.storage.get_pubsub_node(
            self.client("bob").profile_id, self.service.full(), node
        )

    async def read(self, node: str, use_cache: bool, **kwargs: Any) -> tuple[list[str], Any]:
        """Return the ids and XML of bob's read of a node, and its metadata."""
        extra = dict(kwargs.pop("extra", {}))
        if not use_cache:
            extra["use_cache"] = False
        items, metadata = await self.pubsub.get_items(
            self.client("bob"), self.service, node, extra=extra, **kwargs
        )
        return [(item["id"], item.firstChildElement().toXml()) for item in items], metadata

    async def settled(self, node: str) -> tuple[list[Any], list[Any]]:
        """Wait until bob's cache serves the node as the service returns it.

        Returns the last cached and live reads; the caller asserts on them.
        Notifications reach bob some time after alice's request returns.
        """
        deadline = SETTLE_TIMEOUT
        while True:
            await self.cache.wait_syncs()
            await self.pubsub.wait_events(self.client("bob"))
            cached, metadata = await self.read(node, use_cache=True)
            live, _ = await self.read(node, use_cache=False)
            if (cached == live and metadata[C.META_FROM_CACHE]) or deadline <= 0:
                return cached, live
            await task.deferLater(reactor, 0.1, lambda: None)
            deadline -= 0.1


@pytest_twisted.async_yield_fixture(scope="module")
async def session(server: Any) -> AsyncIterator[Session]:
    analyser = {"name": "cache-changes-test", "type": "test", "node": NODE_PREFIX,
                "to_sync": True}
    async with backend_session(server, analysers=[analyser], iq_timeout=IQ_TIMEOUT) as base:
        session = Session(server, base.backend)
        send_signal = base.backend.bridge.send_signal

        def record_signal(name: str, **kwargs: Any) -> Any:
            session.signals.append((name, kwargs))
            return send_signal(name, **kwargs)

        base.backend.bridge.send_signal = record_signal
        yield session


class ReconciliationTests:
    @pytest_twisted.ensureDeferred
    async def test_changes_while_offline(self, session: Session) -> None:
        node = await session.synced_node(["a", "b", "c", "d"])
        # An edit shows the service's item order to the cache: then
        # reconciling needs not write unchanged items again to fix the order.
        await session.publish("a", "a edited", node=node)
        await session.settled(node)
        storage = session.backend.storage
        node_id = (await session.node_row(node)).id
        times_before = {row.name: row.updated for row in await storage.get_pubsub_items(node_id)}

        await session.backend.disconnect_profile("bob")
        await session.publish("e", node=node)
        await session.publish("b", "b edited", node=node)
        await session.pubsub.retract_items(
            session.client("alice"), session.service, node, ["c"], notify=True
        )
        await session.connect("bob")
        cached, live = await session.settled(node)

        assert cached == live
        assert {item_id for item_id, _ in cached} == {"a", "b", "d", "e"}
        assert ("b", f"<entry xmlns='{NS_TEST}'>b edited</entry>") in cached
        times_after = {row.name: row.updated for row in await storage.get_pubsub_items(node_id)}
        # Reconciling wrote the new and edited items only.
        assert times_after["a"] == times_before["a"]
        assert times_after["d"] == times_before["d"]
        assert times_after["b"] > times_before["b"]

    @pytest_twisted.ensureDeferred
    async def test_not_served_while_reconciling(self, session: Session) -> None:
        node = await session.synced_node(["a"])

        await session.backend.disconnect_profile("bob")
        bob = await session.connect("bob")
        # profile_connected marked the node before any reconciling request.
        state = (await session.node_row(node)).sync_state
        _, metadata = await session.read(node, use_cache=True)
        await session.cache.wait_syncs()
        subscriptions = await session.pubsub.get_subscriptions(bob, session.service, node)

        assert state == SyncState.IN_PROGRESS
        assert metadata[C.META_FROM_CACHE] is False
        assert (await session.node_row(node)).sync_state == SyncState.COMPLETED
        # Subscribing again at each reconciliation adds no second subscription.
        assert [entry["subscription"] for entry in subscriptions] == ["subscribed"]


class ItemOrderTests:
    @pytest_twisted.ensureDeferred
    async def test_edit_keeps_service_order(self, session: Session) -> None:
        node = await session.synced_node(["a", "b", "c"])

        await session.publish("a", "a edited", node=node)
        cached, live = await session.settled(node)
        node_row = await session.node_row(node)

        assert cached == live
        if session.is_ejabberd:
            assert [item_id for item_id, _ in live] == ["a", "b", "c"]
            assert node_row.extra[EXTRA_ITEM_ORDER] == ORDER_CREATION
        else:
            assert [item_id for item_id, _ in live] == ["b", "c", "a"]
            assert node_row.extra[EXTRA_ITEM_ORDER] == ORDER_MODIFICATION

    @pytest_twisted.ensureDeferred
    async def test_order_by_modification(self, session: Session) -> None:
        node = await session.synced_node(["a", "b", "c"])

        await session.publish("b", "b edited", node=node)
        await session.settled(node)
        cached, metadata = await session.read(
            node, use_cache=True, extra={"order_by": "modification"}
        )

        assert metadata[C.META_FROM_CACHE] is True
        assert [item_id for item_id, _ in cached] == ["a", "c", "b"]


    @pytest_twisted.ensureDeferred
    async def test_max_items_read_order(self, session: Session) -> None:
        node = await session.synced_node(["a", "b", "c", "d"])

        cached, metadata = await session.read(node, use_cache=True, max_items=3)
        live, _ = await session.read(node, use_cache=False, max_items=3)

        assert metadata[C.META_FROM_CACHE] is True
        assert cached == live
        expected = ["d", "c", "b"] if session.is_ejabberd else ["b", "c", "d"]
        assert [item_id for item_id, _ in cached] == expected


class MaxItemsTests:
    @pytest_twisted.ensureDeferred
    async def test_publish_beyond_max_items(self, session: Session) -> None:
        node = await session.synced_node(["a", "b", "c"], max_items=3, bob_owner=True)

        await session.publish("a", "a edited", node=node)
        await session.publish("d", node=node)
        cached, live = await session.settled(node)

        assert (await session.node_row(node)).extra[EXTRA_MAX_ITEMS] == 3
        # b was the least recently modified item: both servers drop it.
        assert sorted(item_id for item_id, _ in live) == ["a", "c", "d"]
        assert cached == live

    @pytest_twisted.ensureDeferred
    async def test_own_lower_max_items(self, session: Session) -> None:
        node = await session.synced_node(["a", "b", "c", "d"], max_items=5, bob_owner=True)

        await session.pubsub.set_node_configuration(
            session.client("bob"), session.service, node, {"pubsub#max_items": "2"}
        )
        cached, live = await session.settled(node)

        assert (await session.node_row(node)).extra[EXTRA_MAX_ITEMS] == 2
        assert cached == live
        if session.is_ejabberd:
            assert len(live) == 4
            await session.publish("e", node=node)
            cached, live = await session.settled(node)
            assert cached == live
            assert sorted(item_id for item_id, _ in live) == ["d", "e"]
        else:
            assert [item_id for item_id, _ in live] == ["c", "d"]

    @pytest_twisted.ensureDeferred
    async def test_configuration_notification(self, session: Session) -> None:
        node = await session.synced_node(["a", "b"], max_items=5)
        assert EXTRA_MAX_ITEMS not in (await session.node_row(node)).extra

        await session.pubsub.set_node_configuration(
            session.client("alice"), session.service, node, {"pubsub#max_items": "4"}
        )
        await session.settled(node)
        extra = (await session.node_row(node)).extra

        if session.is_ejabberd:
            # The notification's form gave max_items to bob, who may not read the configuration.
            assert extra[EXTRA_MAX_ITEMS] == 4
        else:
            assert EXTRA_MAX_ITEMS not in extra


class SubscriptionTests:
    @pytest_twisted.ensureDeferred
    async def test_unsubscribe_stops_serving(self, session: Session) -> None:
        node = await session.synced_node(["a", "b"])
        bob = session.client("bob")
        admin = session.backend.plugins["PUBSUB_CACHE_ADMIN"]

        await session.pubsub.unsubscribe(bob, session.service, node)
        node_row = await session.node_row(node)
        _, metadata = await session.read(node, use_cache=True)

        assert node_row.sync_state is None
        assert await session.backend.storage.get_pubsub_items(node_row.id) == []
        assert metadata[C.META_FROM_CACHE] is False

        await admin._bridge_sync(session.service.full(), node, "bob")
        cached, live = await session.settled(node)
        assert (await session.node_row(node)).sync_state == SyncState.COMPLETED
        assert cached == live


class ProgressTests:
    @pytest_twisted.ensureDeferred
    async def test_progress_signals(self, session: Session) -> None:
        session.signals.clear()
        node = await session.synced_node([f"i{index}" for index in range(5)])

        states = [
            (kwargs["state"], kwargs.get("items"), kwargs.get("count"))
            for name, kwargs in session.signals
            if name == "ps_cache_sync" and kwargs["node"] == node
        ]

        assert states[0] == ("IN_PROGRESS", 0, None)
        assert states[-1] == ("COMPLETED", 5, None)
        # One signal per page: ejabberd returns one RSM page with its
        # count, Prosody with every item and no count.
        assert states[1:-1] == [("IN_PROGRESS", 5, 5 if session.is_ejabberd else None)]
