"""Tests of the pubsub cache's sync: RSM paging, its stop conditions, the item limit, retries.

The cache talks to a scripted pubsub service on a fake XML stream: each
items request is answered from a list of item ids, paged by the RSM
``<set/>`` of the request unless the script says otherwise. Storage is real
(SQLite and PostgreSQL, ``storage`` fixture).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core.config import Config
from libervia.backend.core.exceptions import InvalidValue
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.plugins.plugin_pubsub_cache import (
    EXTRA_STREAM_LOSSES,
    MAX_SYNC_STREAM_LOSSES,
    PubsubCache,
)
from libervia.backend.plugins.plugin_xep_0059 import RSMRequest, RSMResponse, find_set
from libervia.backend.plugins.plugin_xep_0060 import NS_PUBSUB, XEP_0060
from libervia.testing.fake_stream import FakeClient

SERVICE = JID("pubsub.example.org")
NODE = "urn:xmpp:microblog:0"
NS_ATOM = "http://www.w3.org/2005/Atom"
ANALYSER = {"name": "blog", "type": "blog", "node": NODE, "to_sync": True}


class MinimalHost:
    """The parts of the backend host that the pubsub cache uses."""

    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        self.trigger = TriggerManager()
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}
        self.plugins["XEP-0060"] = XEP_0060(self)


def make_cache(tmp_path: Path, storage: Storage | None, config_text: str = "") -> PubsubCache:
    path = tmp_path / "libervia.conf"
    path.write_text(config_text, encoding="utf-8")
    cache = PubsubCache(MinimalHost(Config(path), storage))
    cache.register_analyser(dict(ANALYSER))
    return cache


@pytest_twisted.async_fixture
async def client(storage: Storage) -> FakeClient:
    profile = await storage.create_profile("alice", "alice@example.org", "secret")
    return FakeClient(profile="alice", profile_id=profile.id, jid=JID("alice@example.org/tests"))


def make_item(item_id: str) -> domish.Element:
    item = domish.Element((NS_PUBSUB, "item"))
    item["id"] = item_id
    item.addElement((NS_ATOM, "entry"))
    return item


# A page answer: (item ids, RSM response or None for no <set/>), or a stanza
# error condition.
Answer = tuple[list[str], RSMResponse | None] | str


def paging_service(ids: list[str]) -> Callable[[RSMRequest | None], Answer]:
    """Return a service script paging ``ids`` correctly (after takes an item id)."""

    def answer(request: RSMRequest | None) -> Answer:
        if request is None:
            return ids, None
        start = 0 if request.after is None else ids.index(request.after) + 1
        page = ids[start:start + (request.max or len(ids))]
        if not page:
            return [], RSMResponse(count=len(ids))
        return page, RSMResponse(first=page[0], first_index=start, last=page[-1], count=len(ids))

    return answer


async def run_sync(
    cache: PubsubCache, client: FakeClient, script: Callable[[RSMRequest | None], Answer],
) -> list[RSMRequest | None]:
    """Sync the node against ``script``; return the RSM request of each items request."""
    node_row = await cache.host.storage.set_pubsub_node(
        client.profile_id, SERVICE.full(), NODE, analyser="blog", type_="blog"
    )
    sync = cache.start_sync(client, SERVICE, NODE, node_row.id, cache.analysers["blog"])
    requests: list[RSMRequest | None] = []
    while True:
        sent = client.xmlstream.next_sent()
        await defer.DeferredList([sent, sync], fireOnOneCallback=True)
        if sync.called:
            if not sent.called:
                # The next sync of the test must get its own stanzas.
                client.xmlstream._waiters.remove(sent)
            return requests
        stanza = sent.result
        pubsub = next(stanza.elements(NS_PUBSUB, "pubsub"), None)
        if pubsub is None:
            # The configuration (pubsub#owner) and metadata (disco#info)
            # requests that read max_items: this service lets read neither.
            client.xmlstream.respond_error(stanza, "forbidden")
            continue
        if next(pubsub.elements(NS_PUBSUB, "items"), None) is None:
            client.xmlstream.respond(stanza)
            continue
        set_elt = find_set(pubsub)
        request = None if set_elt is None else RSMRequest.from_element(set_elt)
        items_elt = next(pubsub.elements(NS_PUBSUB, "items"))
        max_items = items_elt.getAttribute("max_items")
        requested = [elt["id"] for elt in items_elt.elements(NS_PUBSUB, "item")]
        if max_items is not None or requested:
            # The requests telling the orders of max_items and item ids
            # results: this service sends the newest items oldest first, and
            # requested items in the order of the request.
            answer = script(None)
            if not isinstance(answer, str):
                if requested:
                    answer = ([i for i in requested if i in answer[0]], None)
                else:
                    answer = (answer[0][-int(max_items):], None)
        else:
            requests.append(request)
            answer = script(request)
        if isinstance(answer, str):
            client.xmlstream.respond_error(stanza, answer)
            continue
        page, response = answer
        result = domish.Element((NS_PUBSUB, "pubsub"))
        items = result.addElement("items")
        items["node"] = NODE
        for item_id in page:
            items.addChild(make_item(item_id))
        if response is not None:
            result.addChild(response.to_element())
        client.xmlstream.respond(stanza, result)


async def stored(cache: PubsubCache, client: FakeClient) -> tuple[SyncState | None, list[str]]:
    storage = cache.host.storage
    node_row = await storage.get_pubsub_node(client.profile_id, SERVICE.full(), NODE)
    rows = await storage.get_pubsub_items(node_row.id)
    return node_row.sync_state, [row.name for row in rows]


IDS = [f"i{index:02d}" for index in range(25)]


class PagedSyncTests:
    @pytest_twisted.ensureDeferred
    async def test_pages(self, tmp_path: Path, storage: Storage, client: FakeClient) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nsync_page_size = 10\n")

        requests = await run_sync(cache, client, paging_service(IDS))

        assert [r.to_dict() for r in requests] == [
            {"max": 10}, {"max": 10, "after": "i09"}, {"max": 10, "after": "i19"},
        ]
        assert await stored(cache, client) == (SyncState.COMPLETED, IDS)

    @pytest_twisted.ensureDeferred
    async def test_exact_multiple(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nsync_page_size = 5\n")

        requests = await run_sync(cache, client, paging_service(IDS))

        # The count is reached with the fifth page: no empty sixth page is asked.
        assert len(requests) == 5
        assert await stored(cache, client) == (SyncState.COMPLETED, IDS)

    @pytest_twisted.ensureDeferred
    async def test_rsm_ignored(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nsync_page_size = 10\n")

        requests = await run_sync(cache, client, lambda request: (IDS, None))

        assert len(requests) == 1
        assert await stored(cache, client) == (SyncState.COMPLETED, IDS)

    @pytest_twisted.ensureDeferred
    async def test_rsm_rejected(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nsync_page_size = 10\n")

        def script(request: RSMRequest | None) -> Answer:
            return "feature-not-implemented" if request is not None else (IDS, None)

        requests = await run_sync(cache, client, script)

        assert requests == [RSMRequest(max=10), None]
        assert await stored(cache, client) == (SyncState.COMPLETED, IDS)

    @pytest_twisted.ensureDeferred
    async def test_missing_last_stops(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nsync_page_size = 10\n")

        def script(request: RSMRequest | None) -> Answer:
            if request is None:
                return IDS, None
            return IDS[:10], RSMResponse(count=len(IDS))

        requests = await run_sync(cache, client, script)

        # Paging stops, and as the count shows items missing, one plain
        # request fetches them all.
        assert [request is None for request in requests] == [False, True]
        assert await stored(cache, client) == (SyncState.COMPLETED, IDS)

    @pytest_twisted.ensureDeferred
    async def test_repeated_page_stops(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nsync_page_size = 10\n")

        def script(request: RSMRequest | None) -> Answer:
            if request is None:
                return IDS, None
            # A service that ignores ``after`` and sends the first page again.
            return IDS[:10], RSMResponse(first="i00", first_index=0, last="i09", count=len(IDS))

        requests = await run_sync(cache, client, script)

        assert [request is None for request in requests] == [False, False, True]
        assert await stored(cache, client) == (SyncState.COMPLETED, IDS)


class ItemLimitTests:
    @pytest_twisted.ensureDeferred
    async def test_count_above_limit(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(
            tmp_path, storage, "[pubsub_cache]\nsync_page_size = 10\nmax_items_per_node = 20\n"
        )

        requests = await run_sync(cache, client, paging_service(IDS))

        assert len(requests) == 1
        assert await stored(cache, client) == (SyncState.ERROR, [])
        assert cache._retry_calls == {}

    @pytest_twisted.ensureDeferred
    async def test_full_fetch_above_limit(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nmax_items_per_node = 20\n")

        await run_sync(cache, client, lambda request: (IDS, None))

        assert await stored(cache, client) == (SyncState.ERROR, [])

    @pytest_twisted.ensureDeferred
    async def test_at_limit(self, tmp_path: Path, storage: Storage, client: FakeClient) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nmax_items_per_node = 25\n")

        await run_sync(cache, client, paging_service(IDS))

        assert await stored(cache, client) == (SyncState.COMPLETED, IDS)

    @pytest.mark.parametrize("option", ["sync_page_size", "max_items_per_node", "sync_retry_delay"])
    def test_invalid_option(self, tmp_path: Path, option: str) -> None:
        with pytest.raises(InvalidValue, match=f"invalid \\[pubsub_cache\\] {option} 0"):
            make_cache(tmp_path, None, f"[pubsub_cache]\n{option} = 0\n")


class RetryTests:
    @pytest_twisted.ensureDeferred
    async def test_backoff_doubles(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nsync_retry_delay = 30\n")
        key = (client.profile, SERVICE.full(), NODE)
        delays = []

        for _ in range(3):
            await run_sync(cache, client, lambda request: "internal-server-error")
            delays.append(round(cache._retry_calls[key].getTime() - reactor.seconds()))

        assert delays == [30, 60, 120]
        assert (await stored(cache, client))[0] == SyncState.ERROR
        await cache.stop()

    @pytest_twisted.ensureDeferred
    async def test_stop_cancels_retry(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await run_sync(cache, client, lambda request: "internal-server-error")
        call = cache._retry_calls[(client.profile, SERVICE.full(), NODE)]

        await cache.stop()

        assert call.cancelled
        assert cache._retry_calls == {}

    @pytest_twisted.ensureDeferred
    async def test_success_resets_backoff(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await run_sync(cache, client, lambda request: "internal-server-error")

        await run_sync(cache, client, paging_service(IDS))

        assert cache._retry_calls == {}
        assert cache._failures == {}


def record_signals(cache: PubsubCache) -> list[dict[str, Any]]:
    """Return the list that the ``ps_cache_sync`` signals of ``cache`` are appended to."""
    signals: list[dict[str, Any]] = []
    send_signal = cache.host.bridge.send_signal

    def record(name: str, **kwargs: Any) -> None:
        if name == "ps_cache_sync":
            signals.append(kwargs)
        send_signal(name, **kwargs)

    cache.host.bridge.send_signal = record
    return signals


class ProgressSignalTests:
    @pytest_twisted.ensureDeferred
    async def test_one_signal_per_page(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nsync_page_size = 10\n")
        signals = record_signals(cache)

        await run_sync(cache, client, paging_service(IDS))

        assert [(s["state"], s.get("items"), s.get("count")) for s in signals] == [
            ("IN_PROGRESS", 0, None),
            ("IN_PROGRESS", 10, 25),
            ("IN_PROGRESS", 20, 25),
            ("IN_PROGRESS", 25, 25),
            ("COMPLETED", 25, None),
        ]


class ReconcileTests:
    """A second sync of a node makes storage equal to the service, writing only what changed."""

    @pytest_twisted.ensureDeferred
    async def test_changes_applied(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await run_sync(cache, client, paging_service(IDS))
        node_row = await storage.get_pubsub_node(client.profile_id, SERVICE.full(), NODE)
        before = {row.name: row.updated for row in await storage.get_pubsub_items(node_row.id)}
        changed = [i for i in IDS if i not in ("i03", "i10")] + ["new1", "new2"]

        await run_sync(cache, client, paging_service(changed))
        after = {row.name: row.updated for row in await storage.get_pubsub_items(node_row.id)}

        assert await stored(cache, client) == (SyncState.COMPLETED, changed)
        assert all(after[item_id] == before[item_id] for item_id in IDS if item_id in after)

    @pytest_twisted.ensureDeferred
    async def test_order_fixed(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await run_sync(cache, client, paging_service(IDS))
        # The service now lists i05 last, as one ordering by modification does
        # after an edit that the cache did not see.
        moved = [i for i in IDS if i != "i05"] + ["i05"]

        await run_sync(cache, client, paging_service(moved))

        assert await stored(cache, client) == (SyncState.COMPLETED, moved)


class SharedDatabaseTests:
    @pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
    @pytest_twisted.ensureDeferred
    async def test_node_synced_elsewhere_skipped(
        self, tmp_path: Path, db_url: str, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        signals = record_signals(cache)
        node_row = await storage.set_pubsub_node(
            client.profile_id, SERVICE.full(), NODE, analyser="blog", type_="blog"
        )
        other_daemon = Storage(db_url)
        await other_daemon.initialise()
        try:
            assert await other_daemon.try_lock_node_sync(node_row.id)
            requests = await run_sync(cache, client, paging_service(IDS))
        finally:
            await other_daemon.close()

        assert requests == []
        assert [s["state"] for s in signals] == ["LOCKED"]
        assert await stored(cache, client) == (None, [])


class ParallelSyncTests:
    @pytest_twisted.ensureDeferred
    async def test_syncs_wait_for_a_slot(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage, "[pubsub_cache]\nmax_parallel_syncs = 1\n")
        # Another sync has taken the only slot.
        await cache._sync_slots.acquire()
        node_row = await storage.set_pubsub_node(
            client.profile_id, SERVICE.full(), NODE, analyser="blog", type_="blog"
        )

        cache.start_sync(client, SERVICE, NODE, node_row.id, cache.analysers["blog"])
        await deferLater(reactor, 0.2, lambda: None)
        sent_while_waiting = len(client.xmlstream.sent)
        cache._sync_slots.release()
        # run_sync gets the running sync and responds to its requests.
        requests = await run_sync(cache, client, paging_service(IDS))

        assert sent_while_waiting == 0
        assert requests
        assert await stored(cache, client) == (SyncState.COMPLETED, IDS)

    def test_invalid_option(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidValue, match="max_parallel_syncs"):
            make_cache(tmp_path, None, "[pubsub_cache]\nmax_parallel_syncs = 0\n")


def stream_lost(client: FakeClient) -> Callable[[RSMRequest | None], Answer]:
    """Return a service script that loses the stream and returns an error."""

    def answer(request: RSMRequest | None) -> Answer:
        client.connected = False
        return "internal-server-error"

    return answer


class StreamLossTests:
    """Syncs during which the stream is lost (a result too large for Twisted, for example)."""

    @pytest_twisted.ensureDeferred
    async def test_not_synced_at_each_connection(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)

        for _ in range(MAX_SYNC_STREAM_LOSSES):
            client.connected = True
            await run_sync(cache, client, stream_lost(client))
        node_row = await storage.get_pubsub_node(client.profile_id, SERVICE.full(), NODE)
        client.connected = True
        sent_before = len(client.xmlstream.sent)
        await cache.profile_connected(client)
        await cache.wait_syncs()

        assert node_row.sync_state == SyncState.ERROR
        assert node_row.extra[EXTRA_STREAM_LOSSES] == MAX_SYNC_STREAM_LOSSES
        # No timed retry and no sync at the connection: only li pubsub cache sync.
        assert cache._retry_calls == {}
        assert len(client.xmlstream.sent) == sent_before

    @pytest_twisted.ensureDeferred
    async def test_success_resets_count(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)

        client.connected = True
        await run_sync(cache, client, stream_lost(client))
        client.connected = True
        await run_sync(cache, client, paging_service(IDS))
        node_row = await storage.get_pubsub_node(client.profile_id, SERVICE.full(), NODE)

        assert node_row.sync_state == SyncState.COMPLETED
        assert EXTRA_STREAM_LOSSES not in node_row.extra
