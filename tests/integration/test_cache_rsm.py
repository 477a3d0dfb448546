"""The pubsub cache syncing by RSM pages and serving RSM requests, against real servers.

A backend runs in the test process with the profiles ``alice`` (admin of the
pubsub component, she creates and fills the nodes) and ``bob`` (the reader
whose cache is tested). An analyser registered here syncs the nodes whose
name starts with ``cache-rsm-``.

- ejabberd 23.01 (SQL pubsub storage) pages items: a 250-item node is
  fetched in pages of 100.
- Prosody 0.12 ignores RSM on items and does not announce it: the cache
  lists the node's item ids with disco#items and fetches the items by id,
  100 per request.

ejabberd's RSM ``first``/``last`` values are creation timestamps while the
cache's are item ids, so the cache's results are compared with ejabberd's
by the item ids of each page and by the count, never by those values.
"""

from __future__ import annotations

import gc
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.words.xish import domish

from libervia.backend.core import constants as C
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.plugins.plugin_xep_0059 import RSMRequest
from libervia.backend.plugins.plugin_xep_0060 import NS_PUBSUB, TRIGGER_ITEMS_RECEIVED
from libervia.testing.session import BackendSession, backend_session

SERVERS = ["prosody", "ejabberd"]
NS_TEST = "urn:example:cache-rsm"
NODE_PREFIX = "cache-rsm-"
ITEM_COUNT = 250
SYNC_PAGE_SIZE = 100
IQ_TIMEOUT = 20.0
NODE_OPTIONS = {
    "pubsub#access_model": "open",
    "pubsub#max_items": "300",
    "pubsub#deliver_payloads": "1",
}


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


class Session(BackendSession):
    """An in-process backend with alice and bob connected, bob's cache syncing test nodes."""

    async def new_node(self, count: int) -> tuple[str, list[str]]:
        """Create a node and publish ``count`` items in it; return its name and the ids."""
        node = f"{NODE_PREFIX}{uuid.uuid4().hex[:10]}"
        alice = self.client("alice")
        await self.pubsub.create_node(alice, self.service, node, NODE_OPTIONS)
        ids = [f"item-{index:03d}" for index in range(count)]
        for item_id in ids:
            item = domish.Element((NS_PUBSUB, "item"))
            item["id"] = item_id
            item.addElement((NS_TEST, "entry"), content=f"text of {item_id}")
            await self.pubsub.publish(alice, self.service, node, [item])
        return node, ids

    async def synced_node(self, count: int) -> tuple[str, list[str], int]:
        """Create and fill a node, have bob's cache sync it; return name, ids and IQs of the sync."""
        node, ids = await self.new_node(count)
        bob = self.client("bob")
        sent_before = bob.stream_stats["iq_sent"]
        # This first read goes to the service, and the cache starts syncing.
        await self.pubsub.get_items(bob, self.service, node, max_items=1)
        await self.cache.wait_syncs()
        return node, ids, bob.stream_stats["iq_sent"] - sent_before - 1


@pytest_twisted.async_yield_fixture(scope="module")
async def session(server: Any) -> AsyncIterator[Session]:
    analyser = {"name": "cache-rsm-test", "type": "test", "node": NODE_PREFIX, "to_sync": True}
    async with backend_session(server, analysers=[analyser], iq_timeout=IQ_TIMEOUT) as base:
        # Pages of 100 make the 250-item node take several pages.
        base.cache.sync_page_size = SYNC_PAGE_SIZE
        yield Session(server, base.backend, IQ_TIMEOUT)


@pytest_twisted.async_yield_fixture(scope="module")
async def big_node(session: Session) -> AsyncIterator[tuple[str, list[str], int]]:
    """A node of ITEM_COUNT items synced by bob's cache: name, ids, IQs sent by the sync."""
    yield await session.synced_node(ITEM_COUNT)


async def cached_ids(session: Session, node: str) -> tuple[SyncState | None, list[str]]:
    """Return the stored sync state and item ids of a node, in the cache's order."""
    storage = session.backend.storage
    bob = session.client("bob")
    node_row = await storage.get_pubsub_node(bob.profile_id, session.service.full(), node)
    rows = await storage.get_pubsub_items(node_row.id)
    return node_row.sync_state, [row.name for row in rows]


class SyncTests:
    @pytest_twisted.ensureDeferred
    async def test_all_items_cached(
        self, session: Session, big_node: tuple[str, list[str], int]
    ) -> None:
        node, ids, _ = big_node

        state, stored = await cached_ids(session, node)

        assert state == SyncState.COMPLETED
        assert stored == ids

    @pytest_twisted.ensureDeferred
    async def test_requests_of_sync(
        self, session: Session, big_node: tuple[str, list[str], int]
    ) -> None:
        _, _, iq_sent = big_node

        # One subscription and the service's features (disco#info), then 3
        # pages of 100 on ejabberd. On Prosody, which does not announce RSM:
        # the disco#items listing of the ids, a max_items request that shows
        # the listing's order, and 3 requests of 100 item ids. Then the
        # configuration request, rejected because bob is not an owner, and
        # the metadata request, both reading max_items. Last, as this is the
        # first sync on the service, the max_items and item ids requests that
        # show the orders of those results.
        assert iq_sent == (9 if session.is_ejabberd else 11)

    @pytest_twisted.ensureDeferred
    async def test_served_from_cache(
        self, session: Session, big_node: tuple[str, list[str], int]
    ) -> None:
        node, ids, _ = big_node

        items, metadata = await session.pubsub.get_items(
            session.client("bob"), session.service, node, max_items=20
        )

        assert metadata[C.META_FROM_CACHE] is True
        # As each service does: ejabberd (SQL storage) sends the newest
        # items newest first, Prosody oldest first.
        expected = ids[-20:][::-1] if session.is_ejabberd else ids[-20:]
        assert [item["id"] for item in items] == expected


# Requests whose pages both servers' conventions allow to compare with the
# cache: forward pages and index positions. ejabberd answers an empty
# ``before`` with the items newest first, so the last page is compared as a set.
LIVE_REQUESTS = [
    {"max": 10},
    {"max": 100},
    {"max": 0},
    {"max": 10, "index": 0},
    {"max": 10, "index": 240},
    {"max": 30, "index": 245},
    {"max": 10, "before": ""},
]


class RsmAgainstLiveTests:
    """Pages served by the cache contain the items that the live service returns."""

    @pytest.mark.parametrize(
        "request_dict", LIVE_REQUESTS,
        ids=lambda r: ",".join(f"{key}={value!r}" for key, value in r.items()),
    )
    @pytest_twisted.ensureDeferred
    async def test_page(
        self, session: Session, big_node: tuple[str, list[str], int],
        request_dict: dict[str, Any],
    ) -> None:
        node, ids, _ = big_node
        bob = session.client("bob")

        cached_items, cached_meta = await session.pubsub.get_items(
            bob, session.service, node, rsm_request=RSMRequest(**request_dict)
        )
        live_items, live_meta = await session.pubsub.get_items(
            bob, session.service, node, rsm_request=RSMRequest(**request_dict),
            extra={"use_cache": False},
        )
        cached = [item["id"] for item in cached_items]
        live = [item["id"] for item in live_items]

        assert cached_meta[C.META_FROM_CACHE] is True
        assert cached_meta[C.META_RSM]["count"] == ITEM_COUNT
        if not session.is_ejabberd:
            # Prosody ignores RSM: the cache's page is cut from its full answer.
            assert live_meta["rsm_ignored"] is True
            assert live == ids
            return
        assert live_meta[C.META_RSM]["count"] == cached_meta[C.META_RSM]["count"]
        if "before" in request_dict:
            assert sorted(cached) == sorted(live)
        else:
            assert cached == live

    @pytest_twisted.ensureDeferred
    async def test_walk_after(
        self, session: Session, big_node: tuple[str, list[str], int]
    ) -> None:
        """Walk both by ``after``, each with its own ``last`` keys: the same pages come back."""
        node, ids, _ = big_node
        bob = session.client("bob")
        pages: dict[bool, list[list[str]]] = {}

        for use_cache in (True, False):
            pages[use_cache] = []
            request = RSMRequest(max=60)
            while True:
                items, metadata = await session.pubsub.get_items(
                    bob, session.service, node, rsm_request=request,
                    extra={} if use_cache else {"use_cache": False},
                )
                page = [item["id"] for item in items]
                if not page or (pages[use_cache] and page == pages[use_cache][-1]):
                    break
                pages[use_cache].append(page)
                last = (metadata.get(C.META_RSM) or {}).get("last")
                if last is None:
                    break
                request = RSMRequest(max=60, after=last)

        assert sum(pages[True], []) == ids
        if session.is_ejabberd:
            assert pages[True] == pages[False]
        else:
            assert pages[False] == [ids]


class SyncRecorder:
    """Records what bob's cache does while it syncs one node.

    ``batches`` gets the size of each cache_pubsub_items call,
    ``signals`` its ``ps_cache_sync`` signals, and ``responses`` weak
    references to the items of each full items response (the sync's pages),
    so a test can tell whether the sync still holds them. The real storage
    and bridge still do the work.
    """

    def __init__(self, session: Session, node: str) -> None:
        self.session = session
        self.node = node
        self.batches: list[int] = []
        self.signals: list[dict[str, Any]] = []
        self.responses: list[list[weakref.ref]] = []
        #: For each IN_PROGRESS signal after a page: the number of items
        #: still alive in each response received so far.
        self.alive_at_signals: list[list[int]] = []
        #: Called after each stored batch, with the batch number from 1.
        self.after_batch: Callable[[int], None] | None = None

    def __enter__(self) -> SyncRecorder:
        backend = self.session.backend
        storage = backend.storage
        self._cache_items = storage.cache_pubsub_items
        self._send_signal = backend.bridge.send_signal
        storage.cache_pubsub_items = self._record_batch
        backend.bridge.send_signal = self._record_signal
        backend.trigger.add(TRIGGER_ITEMS_RECEIVED, self._record_response)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        backend = self.session.backend
        del backend.storage.cache_pubsub_items
        del backend.bridge.send_signal
        backend.trigger.remove(TRIGGER_ITEMS_RECEIVED, self._record_response)

    def _record_batch(self, node_id: int, items: Any) -> Any:
        # Only this node syncs during the test, until a reconnection
        # reconciles the other nodes of bob.
        d = self._cache_items(node_id, items)
        self.batches.append(len(items))
        if self.after_batch is not None:
            number = len(self.batches)

            def after(result: Any) -> Any:
                self.after_batch(number)
                return result

            d.addCallback(after)
        return d

    def _record_signal(self, name: str, **values: Any) -> None:
        if name == "ps_cache_sync" and values["node"] == self.node and values["profile"] == "bob":
            self.signals.append(values)
            if values["state"] in ("IN_PROGRESS", "COMPLETED") and values.get("items"):
                gc.collect()
                self.alive_at_signals.append(
                    [sum(ref() is not None for ref in refs) for refs in self.responses]
                )
        self._send_signal(name, **values)

    def _record_response(
        self, client: Any, service: Any, node: str, max_items: Any, item_ids: Any,
        extra: dict[str, Any], items: list[Any], metadata: dict[str, Any],
    ) -> None:
        # The sync's pages are the full or RSM requests (ejabberd) and the
        # item ids requests of more than 2 ids (Prosody): the requests that
        # learn a service's read orders ask for 2 items.
        if (
            node == self.node and client.profile == "bob" and max_items is None
            and len(item_ids or ()) != 2 and not extra.get("use_cache", True)
        ):
            self.responses.append([weakref.ref(item) for item in items])

    async def start(self) -> None:
        """Have bob read the node, which starts its sync."""
        bob = self.session.client("bob")
        await self.session.pubsub.get_items(bob, self.session.service, self.node, max_items=1)

    def states(self) -> list[str]:
        return [signal["state"] for signal in self.signals]


class StreamedSyncTests:
    """A first sync stores each page as it arrives and keeps no item element."""

    @pytest_twisted.ensureDeferred
    async def test_page_stored_as_it_arrives(self, session: Session) -> None:
        node, ids = await session.new_node(ITEM_COUNT)

        with SyncRecorder(session, node) as recorder:
            await recorder.start()
            await session.cache.wait_syncs()

        # ejabberd sends RSM pages of 100, Prosody the items of 100 ids per
        # request.
        assert recorder.batches == [100, 100, 50]
        progress = [s["items"] for s in recorder.signals if s["state"] == "IN_PROGRESS"]
        assert progress == [0, 100, 200, 250]
        assert recorder.states()[-1] == "COMPLETED"
        assert await cached_ids(session, node) == (SyncState.COMPLETED, ids)

    @pytest_twisted.ensureDeferred
    async def test_no_element_kept(self, session: Session) -> None:
        node, _ = await session.new_node(ITEM_COUNT)

        with SyncRecorder(session, node) as recorder:
            await recorder.start()
            await session.cache.wait_syncs()

        pages = 3
        assert len(recorder.responses) == pages
        # After each page, the items of that page and of the pages before it
        # are gone; only the next page, requested ahead, may be alive.
        for handled, alive in enumerate(recorder.alive_at_signals[:pages], start=1):
            assert alive[:handled] == [0] * handled
        assert recorder.alive_at_signals[-1] == [0] * pages

    @pytest_twisted.ensureDeferred
    async def test_stream_lost_then_reconciled(self, session: Session) -> None:
        """The stream drops after the first stored batch; the reconnection completes the node.

        The fetch of the next pages (ejabberd) or item ids batches (Prosody)
        fails, and the reconnection reconciles the node.
        """
        node, ids = await session.new_node(ITEM_COUNT)
        bob = session.client("bob")

        def drop_stream(batch: int) -> None:
            if batch == 1:
                bob.stream_manager.xmlstream.transport.abortConnection()

        with SyncRecorder(session, node) as recorder:
            recorder.after_batch = drop_stream
            await recorder.start()
            # The client reconnects by itself (after about 1 s), which
            # reconciles the node.
            for _ in range(600):
                states = recorder.states()
                # The sync ended (ERROR or COMPLETED), then the reconciliation
                # that follows the reconnection completed.
                if states[-1:] == ["COMPLETED"] and (
                    states.count("COMPLETED") + states.count("ERROR") >= 2
                ):
                    break
                await deferLater(reactor, 0.1, lambda: None)
            await session.cache.wait_syncs()

        states = recorder.states()
        assert states[-1] == "COMPLETED"
        assert states.count("COMPLETED") + states.count("ERROR") >= 2, states
        assert "ERROR" in states
        # The first sync stopped after its first page, and the
        # reconciliation wrote only the other items.
        assert recorder.batches[0] == SYNC_PAGE_SIZE
        assert sum(recorder.batches) == ITEM_COUNT
        assert await cached_ids(session, node) == (SyncState.COMPLETED, ids)


async def live_ids(session: Session, node: str) -> list[str]:
    """Return the item ids of the service's full items result, as bob gets it."""
    items, _ = await session.pubsub.get_items(
        session.client("bob"), session.service, node, extra={"use_cache": False}
    )
    return [item["id"] for item in items]


async def edit(session: Session, node: str, item_ids: list[str], text: str) -> None:
    """Publish new versions of items as alice."""
    for item_id in item_ids:
        item = domish.Element((NS_PUBSUB, "item"))
        item["id"] = item_id
        item.addElement((NS_TEST, "entry"), content=text)
        await session.pubsub.publish(session.client("alice"), session.service, node, [item])


class ServiceOrderTests:
    """Nodes larger than a page are stored exactly in the order of the service's full result.

    Prosody 0.12 orders items by their last modification, so edits before
    the sync move items, and the cache fetches them by item ids in batches.
    """

    @pytest_twisted.ensureDeferred
    async def test_first_sync_after_edits(self, session: Session) -> None:
        node, ids = await session.new_node(ITEM_COUNT)
        await edit(session, node, [ids[3], ids[150], ids[0]], "edited before the sync")

        with SyncRecorder(session, node) as recorder:
            await recorder.start()
            await session.cache.wait_syncs()
        state, stored = await cached_ids(session, node)

        assert state == SyncState.COMPLETED
        assert recorder.batches == [100, 100, 50]
        assert stored == await live_ids(session, node)

    @pytest_twisted.ensureDeferred
    async def test_reconciliation_after_offline_edits(self, session: Session) -> None:
        node, ids, _ = await session.synced_node(ITEM_COUNT)
        alice = session.client("alice")

        await session.backend.disconnect_profile("bob")
        await edit(session, node, [ids[10], ids[200]], "edited offline")
        # Both servers take one item per retract request.
        for item_id in (ids[5], ids[120]):
            await session.pubsub.retract_items(alice, session.service, node, [item_id])
        await edit(session, node, ["item-new-1", "item-new-2"], "published offline")
        await session.connect("bob")
        await session.cache.wait_syncs()
        state, stored = await cached_ids(session, node)
        live = await live_ids(session, node)

        assert state == SyncState.COMPLETED
        assert len(live) == ITEM_COUNT
        assert stored == live
