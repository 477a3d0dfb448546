"""Tests of the pubsub cache plugin: analysers, node matching and serving from storage.

The plugin runs on a minimal host made of real parts: TriggerManager, Config
read from a file, a BridgeServer that is never started, the XEP-0060 plugin
and, for serving, a Storage on a new database: the tests that use it run
twice, on an SQLite file and on a PostgreSQL database (``db_url`` fixture).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core import constants as C
from libervia.backend.core.config import Config
from libervia.backend.core.exceptions import InvalidValue, NotFound
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.plugins.plugin_pubsub_cache import PubsubCache
from libervia.backend.plugins.plugin_xep_0060 import NS_PUBSUB, XEP_0060
from libervia.testing.fake_stream import FakeClient

SERVICE = JID("pubsub.example.org")
NODE = "urn:xmpp:microblog:0"
NS_ATOM = "http://www.w3.org/2005/Atom"
NS_TUNE = "http://jabber.org/protocol/tune"


class MinimalHost:
    """The parts of the backend host that the pubsub cache uses."""

    def __init__(self, config: Config, storage: Storage | None = None) -> None:
        self.config = config
        self.storage = storage
        self.trigger = TriggerManager()
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}
        self.plugins["XEP-0060"] = XEP_0060(self)


def make_cache(
    tmp_path: Path, config_text: str = "", storage: Storage | None = None
) -> PubsubCache:
    """Build the cache plugin on a host whose config file contains ``config_text``."""
    path = tmp_path / "libervia.conf"
    path.write_text(config_text, encoding="utf-8")
    host = MinimalHost(Config(path), storage)
    cache = PubsubCache(host)
    host.plugins["PUBSUB_CACHE"] = cache
    return cache


@pytest.fixture
def cache(tmp_path: Path) -> PubsubCache:
    """Return a cache plugin without storage, for the analyser tests."""
    return make_cache(tmp_path)


def item_with_payload(item_id: str, namespace: str | None) -> domish.Element:
    """Return an ``<item/>`` whose first payload element is in ``namespace``."""
    item = domish.Element((NS_PUBSUB, "item"))
    item["id"] = item_id
    if namespace is not None:
        item.addElement((namespace, "payload"))
    return item


# --- analysers ---------------------------------------------------------------------


class RegisterAnalyserTests:
    """register_analyser checks each key and keeps defaults for the optional ones."""

    @pytest.mark.parametrize(
        "analyser, message",
        [
            (["name", "blog"], "an analyser must be a dict, got list"),
            (
                {"name": "a", "type": "blog", "node": "n", "nodes": "x"},
                r"unknown analyser keys \['nodes'\]",
            ),
            ({"type": "blog", "node": "n"}, "needs a non-empty string 'name'"),
            ({"name": "", "type": "blog", "node": "n"}, "needs a non-empty string 'name'"),
            ({"name": 3, "type": "blog", "node": "n"}, "needs a non-empty string 'name'"),
            ({"name": "a", "node": "n"}, "analyser 'a' needs a non-empty string 'type'"),
            ({"name": "a", "type": "", "node": "n"}, "analyser 'a' needs a non-empty string"),
            ({"name": "a", "type": ["blog"], "node": "n"}, "analyser 'a' needs a non-empty"),
            ({"name": "a", "type": "blog"}, "analyser 'a' needs a 'node', a 'namespace' or both"),
            (
                {"name": "a", "type": "blog", "node": "", "namespace": ""},
                "needs a 'node', a 'namespace'",
            ),
            (
                {"name": "a", "type": "blog", "node": "n", "parser": "parse"},
                "analyser 'a': 'parser' must be callable",
            ),
            (
                {"name": "a", "type": "blog", "node": "n", "match_cb": 1},
                "analyser 'a': 'match_cb' must be callable",
            ),
        ],
    )
    def test_invalid(self, cache: PubsubCache, analyser: Any, message: str) -> None:
        with pytest.raises(InvalidValue, match=message):
            cache.register_analyser(analyser)

    def test_invalid_not_registered(self, cache: PubsubCache) -> None:
        with pytest.raises(InvalidValue):
            cache.register_analyser({"name": "a", "type": "blog"})

        assert "a" not in cache.analysers

    def test_unknown_key_lists_allowed(self, cache: PubsubCache) -> None:
        with pytest.raises(InvalidValue) as info:
            cache.register_analyser({"name": "a", "type": "t", "node": "n", "sync": True})

        assert "'to_sync'" in str(info.value)

    def test_duplicate_name(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "blog", "type": "blog", "node": NODE})

        with pytest.raises(InvalidValue, match="an analyser named 'blog' is already registered"):
            cache.register_analyser({"name": "blog", "type": "other", "namespace": NS_TUNE})

    def test_defaults(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "tune", "type": "tune", "namespace": NS_TUNE})

        assert cache.analysers["tune"] == {
            "name": "tune",
            "type": "tune",
            "subtype": None,
            "node": None,
            "namespace": NS_TUNE,
            "to_sync": False,
            "parser": None,
            "match_cb": None,
        }

    def test_given_values_kept(self, cache: PubsubCache) -> None:
        def parser(client: Any, item: domish.Element, service: Any, node: str) -> dict:
            return {}

        cache.register_analyser(
            {"name": "blog", "type": "blog", "subtype": "comments", "node": NODE,
             "to_sync": True, "parser": parser}
        )

        entry = cache.analysers["blog"]
        assert entry["subtype"] == "comments"
        assert entry["to_sync"] is True
        assert entry["parser"] is parser

    @pytest.mark.parametrize(
        "key, value",
        [
            pytest.param("node", 5, id="node-int"),
            pytest.param("namespace", ["urn:x"], id="namespace-list"),
            pytest.param("subtype", 2, id="subtype-int"),
            pytest.param("to_sync", "no", id="to_sync-string"),
        ],
    )
    def test_wrong_type(self, cache: PubsubCache, key: str, value: Any) -> None:
        analyser = {"name": "a", "type": "blog", "node": NODE, key: value}

        with pytest.raises(InvalidValue):
            cache.register_analyser(analyser)


class UnregisterAnalyserTests:
    """unregister_analyser."""

    def test_removed(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "blog", "type": "blog", "node": NODE})

        cache.unregister_analyser("blog")

        assert "blog" not in cache.analysers

    def test_name_reusable(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "blog", "type": "blog", "node": NODE})
        cache.unregister_analyser("blog")

        cache.register_analyser({"name": "blog", "type": "blog2", "node": NODE})

        assert cache.analysers["blog"]["type"] == "blog2"

    def test_unknown(self, cache: PubsubCache) -> None:
        with pytest.raises(NotFound, match="no analyser named 'ghost' is registered"):
            cache.unregister_analyser("ghost")


class AnalyseNodeTests:
    """analyse_node picks the first matching analyser in a fixed order."""

    @staticmethod
    async def analyse(
        cache: PubsubCache, node: str, namespace: str | None = None, with_items: bool = True
    ) -> str | None:
        """Return the name of the analyser matching ``node``, or None."""
        items = [item_with_payload("1", namespace)] if with_items else []
        analyser = await cache.analyse_node(FakeClient(), SERVICE, node, items)
        return analyser["name"] if analyser is not None else None

    @pytest_twisted.ensureDeferred
    async def test_exact_node_first(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "namespace", "type": "t", "namespace": NS_ATOM})
        cache.register_analyser({"name": "prefix", "type": "t", "node": "urn:xmpp:"})
        cache.register_analyser({"name": "exact", "type": "t", "node": NODE})

        assert await self.analyse(cache, NODE, NS_ATOM) == "exact"

    @pytest_twisted.ensureDeferred
    async def test_longest_prefix_first(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "short", "type": "t", "node": "urn:xmpp:"})
        cache.register_analyser({"name": "long", "type": "t", "node": NODE})
        cache.register_analyser({"name": "middle", "type": "t", "node": "urn:xmpp:micro"})

        assert await self.analyse(cache, NODE + ":comments/x", NS_ATOM) == "long"

    @pytest_twisted.ensureDeferred
    async def test_prefix_before_namespace(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "namespace", "type": "t", "namespace": NS_ATOM})
        cache.register_analyser({"name": "prefix", "type": "t", "node": "urn:"})

        assert await self.analyse(cache, NODE, NS_ATOM) == "prefix"

    @pytest_twisted.ensureDeferred
    async def test_namespace_only(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "tune", "type": "t", "namespace": NS_TUNE})
        cache.register_analyser({"name": "atom", "type": "t", "namespace": NS_ATOM})

        assert await self.analyse(cache, "any-node", NS_ATOM) == "atom"

    @pytest_twisted.ensureDeferred
    async def test_namespace_only_needs_items(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "atom", "type": "t", "namespace": NS_ATOM})

        assert await self.analyse(cache, "any-node", with_items=False) is None

    @pytest_twisted.ensureDeferred
    async def test_namespace_only_needs_payload(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "atom", "type": "t", "namespace": NS_ATOM})

        assert await self.analyse(cache, "any-node", namespace=None) is None

    @pytest_twisted.ensureDeferred
    async def test_node_namespace_mismatch(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "blog", "type": "t", "node": NODE, "namespace": NS_ATOM})
        cache.register_analyser({"name": "tune", "type": "t", "namespace": NS_TUNE})

        assert await self.analyse(cache, NODE, NS_TUNE) == "tune"

    @pytest_twisted.ensureDeferred
    async def test_node_namespace_unknown(self, cache: PubsubCache) -> None:
        # Without items the namespace cannot be checked, so the node name decides.
        cache.register_analyser({"name": "blog", "type": "t", "node": NODE, "namespace": NS_ATOM})

        assert await self.analyse(cache, NODE, with_items=False) == "blog"

    @pytest_twisted.ensureDeferred
    async def test_node_only_any_namespace(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "blog", "type": "t", "node": NODE})

        assert await self.analyse(cache, NODE, NS_TUNE) == "blog"

    @pytest_twisted.ensureDeferred
    async def test_unknown_namespace(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "atom", "type": "t", "namespace": NS_ATOM})
        cache.register_analyser({"name": "blog", "type": "t", "node": NODE})

        assert await self.analyse(cache, "other-node", "urn:unknown") is None

    @pytest_twisted.ensureDeferred
    async def test_prefix_not_matching(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "blog", "type": "t", "node": NODE + ":comments"})

        assert await self.analyse(cache, NODE, NS_ATOM) is None

    @pytest_twisted.ensureDeferred
    async def test_match_cb_veto(self, cache: PubsubCache) -> None:
        cache.register_analyser(
            {"name": "exact", "type": "t", "node": NODE, "match_cb": lambda client, analyse: False}
        )
        cache.register_analyser({"name": "prefix", "type": "t", "node": "urn:"})

        assert await self.analyse(cache, NODE, NS_ATOM) == "prefix"

    @pytest_twisted.ensureDeferred
    async def test_match_cb_arguments(self, cache: PubsubCache) -> None:
        calls: list[tuple[Any, dict[str, Any]]] = []

        def match_cb(client: Any, analyse: dict[str, Any]) -> bool:
            calls.append((client, analyse))
            return True

        cache.register_analyser({"name": "blog", "type": "t", "node": NODE, "match_cb": match_cb})
        client = FakeClient()

        await cache.analyse_node(client, SERVICE, NODE, [item_with_payload("1", NS_ATOM)])

        assert calls == [(client, {"service": SERVICE, "node": NODE, "namespace": NS_ATOM})]

    @pytest.mark.parametrize("accept", [True, False])
    @pytest_twisted.ensureDeferred
    async def test_async_match_cb(self, cache: PubsubCache, accept: bool) -> None:
        async def match_cb(client: Any, analyse: dict[str, Any]) -> bool:
            return accept

        cache.register_analyser({"name": "blog", "type": "t", "node": NODE, "match_cb": match_cb})

        expected = "blog" if accept else None
        assert await self.analyse(cache, NODE, NS_ATOM) == expected

    @pytest_twisted.ensureDeferred
    async def test_deferred_match_cb(self, cache: PubsubCache) -> None:
        cache.register_analyser(
            {"name": "blog", "type": "t", "node": NODE,
             "match_cb": lambda client, analyse: defer.succeed(False)}
        )

        assert await self.analyse(cache, NODE, NS_ATOM) is None

    @pytest_twisted.ensureDeferred
    async def test_unregistered_not_matched(self, cache: PubsubCache) -> None:
        cache.register_analyser({"name": "blog", "type": "t", "node": NODE})
        cache.unregister_analyser("blog")

        assert await self.analyse(cache, NODE, NS_ATOM) is None


class StrategyTests:
    """The [pubsub_cache] strategy option."""

    def test_default_cache(self, cache: PubsubCache) -> None:
        assert cache.strategy == "cache"

    def test_no_cache(self, tmp_path: Path) -> None:
        cache = make_cache(tmp_path, "[pubsub_cache]\nstrategy = no_cache\n")

        assert cache.strategy == "no_cache"

    def test_invalid(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidValue, match="invalid \\[pubsub_cache\\] strategy 'sometimes'"):
            make_cache(tmp_path, "[pubsub_cache]\nstrategy = sometimes\n")


# --- serving from storage ------------------------------------------------------------


@pytest_twisted.async_fixture
async def client(storage: Storage) -> FakeClient:
    """Return a client whose profile exists in storage."""
    profile = await storage.create_profile("alice", "alice@example.org", "secret")
    return FakeClient(profile="alice", profile_id=profile.id, jid=JID("alice@example.org/tests"))


async def cache_node(
    storage: Storage,
    client: FakeClient,
    item_ids: list[str],
    state: SyncState | None = SyncState.COMPLETED,
    service: str = SERVICE.full(),
    node: str = NODE,
) -> int:
    """Store a node in ``state`` with one item per id, oldest first; return the node id."""
    node_row = await storage.set_pubsub_node(
        client.profile_id, service, node, analyser="blog", type_="blog", sync_state=state
    )
    rows = [
        (item_id, item_with_payload(item_id, NS_ATOM).toXml(), {"title": item_id}, None)
        for item_id in item_ids
    ]
    await storage.cache_pubsub_items(node_row.id, rows)
    return node_row.id


async def ask(
    cache: PubsubCache,
    client: FakeClient,
    service: JID | None = SERVICE,
    node: str = NODE,
    max_items: int | None = None,
    item_ids: list[str] | None = None,
    sub_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Call the cache's get items trigger as XEP-0060's return point does."""
    return await cache._get_items_trigger(
        client, service, node, max_items, item_ids, sub_id, extra or {}
    )


def ids_of(items: list[domish.Element]) -> list[str]:
    """Return the ``id`` attributes of items, in order."""
    return [item["id"] for item in items]


class ServeFromCacheTests:
    """Requests for a COMPLETED node are served from storage."""

    @pytest_twisted.ensureDeferred
    async def test_all_items(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a", "b", "c"])

        go_on, (items, metadata) = await ask(cache, client)

        assert go_on is False
        assert ids_of(items) == ["a", "b", "c"]
        assert metadata == {
            C.META_SERVICE: SERVICE.full(),
            C.META_NODE: NODE,
            C.META_COMPLETE: True,
            C.META_FROM_CACHE: True,
        }

    @pytest_twisted.ensureDeferred
    async def test_items_parsed(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a"])

        _, (items, _) = await ask(cache, client)

        assert items[0].toXml() == item_with_payload("a", NS_ATOM).toXml()
        assert items[0].parent is None

    @pytest_twisted.ensureDeferred
    async def test_max_items_newest(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a", "b", "c", "d"])

        go_on, (items, metadata) = await ask(cache, client, max_items=2)

        assert go_on is False
        assert ids_of(items) == ["c", "d"]
        assert metadata[C.META_COMPLETE] is False

    @pytest_twisted.ensureDeferred
    async def test_max_items_above_count(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a", "b"])

        _, (items, _) = await ask(cache, client, max_items=10)

        assert ids_of(items) == ["a", "b"]

    @pytest_twisted.ensureDeferred
    async def test_item_ids(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a", "b", "c"])

        go_on, (items, metadata) = await ask(cache, client, item_ids=["c", "unknown", "a"])

        assert go_on is False
        assert sorted(ids_of(items)) == ["a", "c"]
        assert metadata[C.META_COMPLETE] is False

    @pytest_twisted.ensureDeferred
    async def test_empty_node(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, [])

        assert await ask(cache, client) == (
            False,
            ([], {C.META_SERVICE: SERVICE.full(), C.META_NODE: NODE,
                  C.META_COMPLETE: True, C.META_FROM_CACHE: True}),
        )

    @pytest_twisted.ensureDeferred
    async def test_own_service(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a"], service="alice@example.org")

        go_on, (items, metadata) = await ask(cache, client, service=None)

        assert go_on is False
        assert ids_of(items) == ["a"]
        assert metadata[C.META_SERVICE] == "alice@example.org"

    @pytest_twisted.ensureDeferred
    async def test_hit_counted(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a"])

        await ask(cache, client)
        await ask(cache, client)

        assert (cache.hits, cache.misses) == (2, 0)

    @pytest_twisted.ensureDeferred
    async def test_get_items_sends_nothing(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a", "b"])

        items, metadata = await cache._p.get_items(client, SERVICE, NODE, max_items=1)

        assert ids_of(items) == ["b"]
        assert metadata[C.META_FROM_CACHE] is True
        assert client.xmlstream.sent == []


class GoToNetworkTests:
    """Requests the cache must not serve return None, so XEP-0060 asks the service."""

    @pytest.mark.parametrize(
        "state", [SyncState.IN_PROGRESS, SyncState.ERROR, SyncState.NO_SYNC, None]
    )
    @pytest_twisted.ensureDeferred
    async def test_node_not_completed(
        self, tmp_path: Path, storage: Storage, client: FakeClient, state: SyncState | None
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a"], state=state)

        assert await ask(cache, client) is None
        assert cache.misses == 1

    @pytest_twisted.ensureDeferred
    async def test_node_unknown(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a"])

        assert await ask(cache, client, node="other") is None

    @pytest_twisted.ensureDeferred
    async def test_other_service(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a"])

        assert await ask(cache, client, service=JID("other.example.org")) is None

    @pytest_twisted.ensureDeferred
    async def test_other_profile(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a"])
        bob = await storage.create_profile("bob", "bob@example.org", "secret")
        bob_client = FakeClient(profile="bob", profile_id=bob.id, jid=JID("bob@example.org/tests"))

        assert await ask(cache, bob_client) is None

    @pytest_twisted.ensureDeferred
    async def test_use_cache_false(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a"])

        assert await ask(cache, client, extra={"use_cache": False}) is None

    @pytest_twisted.ensureDeferred
    async def test_sub_id(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a"])

        assert await ask(cache, client, sub_id="sub-1") is None

    @pytest_twisted.ensureDeferred
    async def test_no_cache_strategy(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, "[pubsub_cache]\nstrategy = no_cache\n", storage)
        await cache_node(storage, client, ["a"])

        assert await ask(cache, client) is None

    @pytest_twisted.ensureDeferred
    async def test_state_change_seen(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        node_id = await cache_node(storage, client, ["a"])
        await ask(cache, client)

        await cache._set_state(client, SERVICE.full(), NODE, node_id, SyncState.IN_PROGRESS)

        assert await ask(cache, client) is None

    @pytest_twisted.ensureDeferred
    async def test_read_overlapping_a_state_change_not_memoised(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        # A get reads the node row, still COMPLETED, while the sync state is
        # being set to IN_PROGRESS, and gets the row only after the change:
        # it must not remember the node as COMPLETED.
        cache = make_cache(tmp_path, storage=storage)
        node_id = await cache_node(storage, client, ["a"])
        read_node = storage.get_pubsub_node
        row_read = defer.Deferred()
        release_row = defer.Deferred()

        async def slow_read(*args: Any) -> Any:
            row = await read_node(*args)
            row_read.callback(None)
            await release_row
            return row

        storage.get_pubsub_node = slow_read
        get = defer.ensureDeferred(ask(cache, client))
        await row_read
        storage.get_pubsub_node = read_node
        await cache._set_state(client, SERVICE.full(), NODE, node_id, SyncState.IN_PROGRESS)
        release_row.callback(None)

        assert await get is None
        assert await ask(cache, client) is None

    @pytest_twisted.ensureDeferred
    async def test_get_items_uses_network(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage=storage)
        await cache_node(storage, client, ["a"], state=SyncState.IN_PROGRESS)

        d = defer.ensureDeferred(cache._p.get_items(client, SERVICE, NODE))
        request = await client.xmlstream.next_sent()
        result = domish.Element((NS_PUBSUB, "pubsub"))
        result.addElement("items")["node"] = NODE
        client.xmlstream.respond(request, result)
        items, metadata = await d

        assert request.name == "iq"
        assert items == []
        assert metadata[C.META_FROM_CACHE] is False
