"""Tests of the pubsub cache serving RSM pages and ordered reads from storage.

Each request goes through the cache's get items trigger on a COMPLETED node
stored in a real database (the ``storage`` fixture runs every test on SQLite
and on PostgreSQL). Expected pages are cut in the test from the list of item
ids in the node's order, following XEP-0059: ascending order, ``after`` and
``before`` take item ids, an empty ``before`` asks for the last page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core import constants as C
from libervia.backend.core.config import Config
from libervia.backend.core.exceptions import InvalidValue
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.plugins.plugin_pubsub_cache import PubsubCache
from libervia.backend.plugins.plugin_xep_0059 import RSMRequest
from libervia.backend.plugins.plugin_xep_0060 import NS_PUBSUB, XEP_0060
from libervia.testing.fake_stream import FakeClient

SERVICE = JID("pubsub.example.org")
NODE = "urn:xmpp:microblog:0"
NS_ATOM = "http://www.w3.org/2005/Atom"
ITEM_IDS = ["a", "b", "c", "d", "e", "f", "g"]
# Re-published after the first batch: their modification time is the latest.
EDITED_IDS = ["b", "e"]


class MinimalHost:
    """The parts of the backend host that the pubsub cache uses."""

    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        self.trigger = TriggerManager()
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}
        self.plugins["XEP-0060"] = XEP_0060(self)


def make_cache(tmp_path: Path, storage: Storage) -> PubsubCache:
    path = tmp_path / "libervia.conf"
    path.write_text("", encoding="utf-8")
    return PubsubCache(MinimalHost(Config(path), storage))


def item_xml(item_id: str, title: str) -> str:
    item = domish.Element((NS_PUBSUB, "item"))
    item["id"] = item_id
    item.addElement((NS_ATOM, "entry")).addElement("title", content=title)
    return item.toXml()


@pytest_twisted.async_fixture
async def client(storage: Storage) -> FakeClient:
    """Return a client whose profile exists in storage."""
    profile = await storage.create_profile("alice", "alice@example.org", "secret")
    return FakeClient(profile="alice", profile_id=profile.id, jid=JID("alice@example.org/tests"))


async def cache_node(
    storage: Storage, client: FakeClient, item_ids: list[str], edited: list[str] = (),
) -> int:
    """Store a COMPLETED node with ``item_ids`` oldest first, then re-store ``edited``."""
    node_row = await storage.set_pubsub_node(
        client.profile_id, SERVICE.full(), NODE, analyser="blog", type_="blog",
        sync_state=SyncState.COMPLETED,
    )
    await storage.cache_pubsub_items(
        node_row.id, [(item_id, item_xml(item_id, "v1"), None, None) for item_id in item_ids]
    )
    if edited:
        await storage.cache_pubsub_items(
            node_row.id, [(item_id, item_xml(item_id, "v2"), None, None) for item_id in edited]
        )
    return node_row.id


async def ask(
    cache: PubsubCache,
    client: FakeClient,
    rsm: RSMRequest | None = None,
    max_items: int | None = None,
    item_ids: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Call the cache's get items trigger as XEP-0060's return point does."""
    return await cache._get_items_trigger(
        client, SERVICE, NODE, max_items, item_ids, None, extra or {}, rsm
    )


def ids_of(items: list[domish.Element]) -> list[str]:
    return [item["id"] for item in items]


def modification_order(item_ids: list[str], edited: list[str]) -> list[str]:
    return [i for i in item_ids if i not in edited] + [i for i in edited if i in item_ids]


def reference_page(ids: list[str], request: RSMRequest) -> tuple[list[str], dict[str, Any]]:
    """Cut the page a XEP-0059 service returns from the ordered ids; return it and its RSM set."""
    size = request.max
    if request.before is not None:
        end = len(ids) if request.before == "" else ids.index(request.before)
        start = 0 if size is None else max(0, end - size)
        page = ids[start:end]
    else:
        if request.after is not None:
            start = ids.index(request.after) + 1
        else:
            start = request.index or 0
        page = ids[start:] if size is None else ids[start:start + size]
    if not page:
        return [], {"count": len(ids)}
    return page, {"first": page[0], "index": start, "last": page[-1], "count": len(ids)}


# Every position with several page sizes, including the edges of the set.
RSM_REQUESTS = [
    RSMRequest(),
    RSMRequest(max=3),
    RSMRequest(max=7),
    RSMRequest(max=20),
    RSMRequest(max=0),
    RSMRequest(max=3, after="a"),
    RSMRequest(max=3, after="c"),
    RSMRequest(max=3, after="f"),
    RSMRequest(max=3, after="g"),
    RSMRequest(after="c"),
    RSMRequest(max=3, before=""),
    RSMRequest(max=20, before=""),
    RSMRequest(before=""),
    RSMRequest(max=3, before="e"),
    RSMRequest(max=3, before="b"),
    RSMRequest(max=3, before="a"),
    RSMRequest(before="d"),
    RSMRequest(max=3, index=0),
    RSMRequest(max=3, index=5),
    RSMRequest(max=3, index=7),
    RSMRequest(max=3, index=50),
    RSMRequest(index=2),
    RSMRequest(max=0, after="c"),
    RSMRequest(max=0, before=""),
]


def request_id(request: RSMRequest) -> str:
    return ",".join(f"{key}={value!r}" for key, value in request.to_dict().items()) or "none"


class RsmServingTests:
    """RSM pages from storage equal the pages cut from the node's ordered ids."""

    @pytest.mark.parametrize("request_", RSM_REQUESTS, ids=request_id)
    @pytest_twisted.ensureDeferred
    async def test_creation_order(
        self, tmp_path: Path, storage: Storage, client: FakeClient, request_: RSMRequest
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, ITEM_IDS, EDITED_IDS)
        expected_ids, expected_rsm = reference_page(ITEM_IDS, request_)

        go_on, (items, metadata) = await ask(cache, client, request_)

        assert go_on is False
        assert ids_of(items) == expected_ids
        assert metadata[C.META_RSM] == expected_rsm
        assert metadata[C.META_COMPLETE] is (len(expected_ids) == len(ITEM_IDS))
        assert metadata["rsm_ignored"] is False
        assert metadata[C.META_FROM_CACHE] is True

    @pytest.mark.parametrize("request_", RSM_REQUESTS, ids=request_id)
    @pytest_twisted.ensureDeferred
    async def test_modification_order(
        self, tmp_path: Path, storage: Storage, client: FakeClient, request_: RSMRequest
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, ITEM_IDS, EDITED_IDS)
        ordered = modification_order(ITEM_IDS, EDITED_IDS)
        expected_ids, expected_rsm = reference_page(ordered, request_)

        go_on, (items, metadata) = await ask(
            cache, client, request_, extra={"order_by": "modification"}
        )

        assert ids_of(items) == expected_ids
        assert metadata[C.META_RSM] == expected_rsm
        assert metadata["order_by"] == "modification"

    @pytest.mark.parametrize(
        "request_",
        [RSMRequest(), RSMRequest(max=3), RSMRequest(max=0), RSMRequest(max=3, before=""),
         RSMRequest(max=3, index=2)],
        ids=request_id,
    )
    @pytest_twisted.ensureDeferred
    async def test_empty_node(
        self, tmp_path: Path, storage: Storage, client: FakeClient, request_: RSMRequest
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, [])

        go_on, (items, metadata) = await ask(cache, client, request_)

        assert items == []
        assert metadata[C.META_RSM] == {"count": 0}
        assert metadata[C.META_COMPLETE] is True

    @pytest_twisted.ensureDeferred
    async def test_pages_walk_whole_node(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, ITEM_IDS)
        seen: list[str] = []
        request = RSMRequest(max=2)

        while True:
            _, (items, metadata) = await ask(cache, client, request)
            if not items:
                break
            seen.extend(ids_of(items))
            request = RSMRequest(max=2, after=metadata[C.META_RSM]["last"])

        assert seen == ITEM_IDS

    @pytest_twisted.ensureDeferred
    async def test_pages_walk_backward(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, ITEM_IDS)
        seen: list[str] = []
        request = RSMRequest(max=3, before="")

        while True:
            _, (items, metadata) = await ask(cache, client, request)
            if not items:
                break
            seen[:0] = ids_of(items)
            request = RSMRequest(max=3, before=metadata[C.META_RSM]["first"])

        assert seen == ITEM_IDS

    @pytest.mark.parametrize(
        "request_", [RSMRequest(max=3, after="zz"), RSMRequest(max=3, before="zz")],
        ids=request_id,
    )
    @pytest_twisted.ensureDeferred
    async def test_unknown_key_uses_network(
        self, tmp_path: Path, storage: Storage, client: FakeClient, request_: RSMRequest
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, ITEM_IDS)

        assert await ask(cache, client, request_) is None


class OrderedReadTests:
    """Reads without RSM: newest items by max_items and item ids, in either order."""

    @pytest.mark.parametrize("order_by", ["creation", "modification"])
    @pytest.mark.parametrize("max_items", [None, 1, 3, 7, 30])
    @pytest_twisted.ensureDeferred
    async def test_max_items(
        self, tmp_path: Path, storage: Storage, client: FakeClient,
        order_by: str, max_items: int | None,
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, ITEM_IDS, EDITED_IDS)
        ordered = ITEM_IDS if order_by == "creation" else modification_order(ITEM_IDS, EDITED_IDS)
        expected = ordered if max_items is None else ordered[-max_items:]

        _, (items, metadata) = await ask(
            cache, client, max_items=max_items, extra={"order_by": order_by}
        )

        assert ids_of(items) == expected
        assert metadata["order_by"] == order_by
        assert metadata[C.META_COMPLETE] is (max_items is None)

    @pytest_twisted.ensureDeferred
    async def test_item_ids_with_unknown(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, ITEM_IDS, EDITED_IDS)

        _, (items, metadata) = await ask(cache, client, item_ids=["f", "zz", "b"])

        assert ids_of(items) == ["b", "f"]
        assert metadata[C.META_COMPLETE] is False

    @pytest_twisted.ensureDeferred
    async def test_edited_payload_served(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, ITEM_IDS, EDITED_IDS)

        _, (items, _) = await ask(cache, client, item_ids=["b"])

        assert "v2" in items[0].toXml()

    @pytest_twisted.ensureDeferred
    async def test_order_not_in_metadata_by_default(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, ITEM_IDS)

        _, (_, metadata) = await ask(cache, client)

        assert "order_by" not in metadata


class NetworkShapesTests:
    """Request shapes the cache cannot answer exactly return None: the service answers."""

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"extra": {"mam": {"start": "2020-01-01T00:00:00Z"}}},
            {"extra": {"order_by": "title"}},
            {"rsm": RSMRequest(max=2), "max_items": 3},
            {"rsm": RSMRequest(max=2), "item_ids": ["a"]},
        ],
        ids=["mam", "unknown-order", "rsm-and-max-items", "rsm-and-item-ids"],
    )
    @pytest_twisted.ensureDeferred
    async def test_not_served(
        self, tmp_path: Path, storage: Storage, client: FakeClient, kwargs: dict[str, Any]
    ) -> None:
        cache = make_cache(tmp_path, storage)
        await cache_node(storage, client, ITEM_IDS)

        assert await ask(cache, client, **kwargs) is None

    @pytest_twisted.ensureDeferred
    async def test_rsm_not_served_in_progress(
        self, tmp_path: Path, storage: Storage, client: FakeClient
    ) -> None:
        cache = make_cache(tmp_path, storage)
        node_id = await cache_node(storage, client, ITEM_IDS)
        await storage.update_pubsub_node_sync_state(node_id, SyncState.IN_PROGRESS)

        assert await ask(cache, client, RSMRequest(max=2)) is None


class ItemsPageStorageTests:
    """Storage.get_pubsub_items_page checks its arguments."""

    @pytest.mark.parametrize(
        "kwargs",
        [{"after": "a", "before": ""}, {"after": "a", "index": 1}, {"index": -1},
         {"max_items": -1}, {"order_by": "title"}],
    )
    @pytest_twisted.ensureDeferred
    async def test_invalid(
        self, storage: Storage, client: FakeClient, kwargs: dict[str, Any]
    ) -> None:
        node_id = await cache_node(storage, client, ITEM_IDS)

        with pytest.raises(InvalidValue, match="must be 0 or more|exclude each other|cannot order"):
            await storage.get_pubsub_items_page(node_id, **kwargs)
