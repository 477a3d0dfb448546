"""Tests of the pubsub cache administration: storage filters, purge, statistics, dates.

Storage tests run twice through the ``storage`` fixture: on a new SQLite file
and on a new PostgreSQL database. The plugin runs on a minimal host made of
real parts (TriggerManager, Config, an unstarted BridgeServer, the XEP-0060
and cache plugins).
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from sqlalchemy import update
from twisted.internet import defer

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core.config import Config
from libervia.backend.core.exceptions import InvalidValue, ProfileNotFound
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import PubsubItem, PubsubNode, SyncState
from libervia.backend.plugins.plugin_pubsub_cache import PubsubCache
from libervia.backend.plugins.plugin_pubsub_cache_admin import PubsubCacheAdmin, parse_date
from libervia.backend.plugins.plugin_xep_0060 import XEP_0060
from libervia.backend.tools.aio import aio
from libervia.cli import cmd_pubsub

SERVICE = "pubsub.example.org"
OTHER_SERVICE = "other.example.org"
NOW = datetime.now(timezone.utc)
OLD = NOW - timedelta(days=30)


def item(item_id: str) -> tuple[str, str, dict | None, str | None]:
    """Return the storage tuple of a small item."""
    return item_id, f"<item xmlns='http://jabber.org/protocol/pubsub' id='{item_id}'/>", None, None


# SQLAlchemy's asyncio engine needs an asyncio task, which aio() provides.
@aio
async def set_times(
    storage: Storage, node_id: int, items: datetime | None = None, state: datetime | None = None,
) -> None:
    """Move a node's item times and sync state time, as if written at those moments."""
    async with storage.engine.begin() as connection:
        if items is not None:
            await connection.execute(
                update(PubsubItem).where(PubsubItem.node_id == node_id)
                .values(created=items, updated=items)
            )
        if state is not None:
            await connection.execute(
                update(PubsubNode).where(PubsubNode.id == node_id)
                .values(sync_state_updated=state)
            )


class Cache:
    """A cache of two profiles: alice (blog, comments, tune nodes) and bob (one blog)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.ids: dict[str, int] = {}

    async def fill(self) -> None:
        storage = self.storage
        self.alice = await storage.create_profile("alice", "alice@example.org", "pw")
        self.bob = await storage.create_profile("bob", "bob@example.org", "pw")
        specs = [
            ("blog", self.alice.id, SERVICE, "blog", None, SyncState.COMPLETED, 3),
            ("comments", self.alice.id, SERVICE, "comments", "blog", SyncState.IN_PROGRESS, 2),
            ("tune", self.alice.id, OTHER_SERVICE, "tune", None, SyncState.NO_SYNC, 0),
            ("bob_blog", self.bob.id, SERVICE, "blog", None, SyncState.COMPLETED, 1),
        ]
        for name, profile_id, service, type_, subtype, state, count in specs:
            node = await storage.set_pubsub_node(
                profile_id, service, name, type_=type_, subtype=subtype, sync_state=state,
                analyser=type_,
            )
            await storage.cache_pubsub_items(node.id, [item(f"{name}-{i}") for i in range(count)])
            self.ids[name] = node.id

    async def names(self, **filters: Any) -> list[str]:
        return [node.name for node in await self.storage.find_pubsub_nodes(**filters)]


@pytest_twisted.async_fixture
async def cache(storage: Storage) -> Cache:
    filled = Cache(storage)
    await filled.fill()
    return filled


class FindNodesTests:
    """find_pubsub_nodes applies every filter given, and nothing else."""

    @pytest_twisted.ensureDeferred
    async def test_no_filter(self, cache: Cache) -> None:
        assert await cache.names() == ["blog", "comments", "tune", "bob_blog"]

    @pytest_twisted.ensureDeferred
    async def test_empty_filter_ignored(self, cache: Cache) -> None:
        assert await cache.names(types=[], services=None) == [
            "blog", "comments", "tune", "bob_blog"
        ]

    @pytest_twisted.ensureDeferred
    async def test_profile(self, cache: Cache) -> None:
        assert await cache.names(profile_ids=[cache.bob.id]) == ["bob_blog"]

    @pytest_twisted.ensureDeferred
    async def test_service(self, cache: Cache) -> None:
        assert await cache.names(services=[OTHER_SERVICE]) == ["tune"]

    @pytest_twisted.ensureDeferred
    async def test_names(self, cache: Cache) -> None:
        assert await cache.names(names=["tune", "comments"]) == ["comments", "tune"]

    @pytest_twisted.ensureDeferred
    async def test_type_and_profile(self, cache: Cache) -> None:
        names = await cache.names(types=["blog"], profile_ids=[cache.alice.id])
        assert names == ["blog"]

    @pytest_twisted.ensureDeferred
    async def test_subtype(self, cache: Cache) -> None:
        assert await cache.names(subtypes=["blog"]) == ["comments"]

    @pytest_twisted.ensureDeferred
    async def test_created_before(self, cache: Cache) -> None:
        await set_times(cache.storage, cache.ids["blog"], items=OLD)
        assert await cache.names(created_before=NOW - timedelta(days=1)) == ["blog"]

    @pytest_twisted.ensureDeferred
    async def test_created_before_empty_node(self, cache: Cache) -> None:
        # A node without items is dated by its sync state.
        await set_times(cache.storage, cache.ids["tune"], state=OLD)
        assert await cache.names(created_before=NOW - timedelta(days=1)) == ["tune"]

    @pytest_twisted.ensureDeferred
    async def test_updated_before(self, cache: Cache) -> None:
        await set_times(cache.storage, cache.ids["blog"], items=OLD, state=OLD)
        await set_times(cache.storage, cache.ids["comments"], items=OLD)
        # comments changed state recently, so only blog is unchanged since yesterday.
        assert await cache.names(updated_before=NOW - timedelta(days=1)) == ["blog"]

    @pytest_twisted.ensureDeferred
    async def test_updated_before_recent_item(self, cache: Cache) -> None:
        await set_times(cache.storage, cache.ids["blog"], items=OLD, state=OLD)
        await cache.storage.cache_pubsub_items(cache.ids["blog"], [item("fresh")])
        assert await cache.names(updated_before=NOW - timedelta(days=1)) == []

    @pytest_twisted.ensureDeferred
    async def test_unknown_filter(self, cache: Cache) -> None:
        with pytest.raises(InvalidValue, match="unknown pubsub cache filter"):
            await cache.storage.find_pubsub_nodes(colour=["red"])

    @pytest_twisted.ensureDeferred
    async def test_naive_date(self, cache: Cache) -> None:
        with pytest.raises(InvalidValue, match="aware datetime"):
            await cache.storage.find_pubsub_nodes(created_before=datetime(2024, 1, 1))


class DeleteNodesTests:
    @pytest_twisted.ensureDeferred
    async def test_counts(self, cache: Cache) -> None:
        counts = await cache.storage.delete_pubsub_nodes([cache.ids["blog"], cache.ids["tune"]])
        assert counts == (2, 3)

    @pytest_twisted.ensureDeferred
    async def test_items_gone(self, cache: Cache) -> None:
        await cache.storage.delete_pubsub_nodes([cache.ids["blog"]])
        assert await cache.storage.count_pubsub_items(cache.ids["blog"]) == 0

    @pytest_twisted.ensureDeferred
    async def test_others_kept(self, cache: Cache) -> None:
        await cache.storage.delete_pubsub_nodes([cache.ids["blog"]])
        assert await cache.names() == ["comments", "tune", "bob_blog"]

    @pytest_twisted.ensureDeferred
    async def test_unknown_and_empty(self, cache: Cache) -> None:
        assert await cache.storage.delete_pubsub_nodes([]) == (0, 0)
        assert await cache.storage.delete_pubsub_nodes([999999]) == (0, 0)


class CountTests:
    @pytest_twisted.ensureDeferred
    async def test_groups(self, cache: Cache) -> None:
        groups = await cache.storage.count_pubsub_cache()
        found = {(g["sync_state"], g["type"], g["subtype"]): (g["nodes"], g["items"])
                 for g in groups}
        assert found == {
            (SyncState.COMPLETED, "blog", None): (2, 4),
            (SyncState.IN_PROGRESS, "comments", "blog"): (1, 2),
            (SyncState.NO_SYNC, "tune", None): (1, 0),
        }

    @pytest_twisted.ensureDeferred
    async def test_filtered(self, cache: Cache) -> None:
        groups = await cache.storage.count_pubsub_cache(profile_ids=[cache.bob.id])
        assert [(g["nodes"], g["items"]) for g in groups] == [(1, 1)]

    @pytest_twisted.ensureDeferred
    async def test_database_size(self, cache: Cache) -> None:
        size = await cache.storage.get_database_size()
        assert size > 0


# --- plugin ------------------------------------------------------------------------


class MinimalHost:
    """The parts of the backend host that the cache plugins use."""

    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        self.trigger = TriggerManager()
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {"XEP-0060": None}
        self.plugins["XEP-0060"] = XEP_0060(self)
        self.plugins["PUBSUB_CACHE"] = PubsubCache(self)
        self.default_profile = "alice"

    def resolve_profile(self, profile: str | None) -> str:
        return profile or self.default_profile


@pytest.fixture
def admin(tmp_path: Path, cache: Cache) -> PubsubCacheAdmin:
    path = tmp_path / "libervia.conf"
    path.write_text("", encoding="utf-8")
    return PubsubCacheAdmin(MinimalHost(Config(path), cache.storage))


class PurgeTests:
    @pytest_twisted.ensureDeferred
    async def test_by_type(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        result = await admin._bridge_purge(types=["comments", "tune"])
        assert [node["node"] for node in result["nodes"]] == ["comments", "tune"]
        assert (result["node_count"], result["item_count"]) == (2, 2)
        assert await cache.names() == ["blog", "bob_blog"]

    @pytest_twisted.ensureDeferred
    async def test_forgets_completed(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        completed = admin._cache._completed
        key = (cache.alice.id, SERVICE, "blog")
        completed[key] = cache.ids["blog"]
        await admin._bridge_purge(nodes=["blog"], services=[SERVICE])
        assert key not in completed

    @pytest_twisted.ensureDeferred
    async def test_waits_for_node_lock(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        lock = admin._cache._lock(("alice", SERVICE, "blog"))
        await lock.acquire()
        purge = defer.ensureDeferred(admin._bridge_purge(nodes=["blog"]))
        assert not purge.called
        assert await cache.names(names=["blog"]) == ["blog"]
        lock.release()
        result = await purge
        assert result["node_count"] == 1

    @pytest_twisted.ensureDeferred
    async def test_all_profiles(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        result = await admin._bridge_purge_all_profiles(nodes=["blog", "bob_blog"])
        assert [node["profile"] for node in result["nodes"]] == ["alice", "bob"]

    @pytest_twisted.ensureDeferred
    async def test_one_profile_only(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        result = await admin._bridge_purge(profile="bob")
        assert result["node_count"] == 1
        assert await cache.names() == ["blog", "comments", "tune"]

    @pytest_twisted.ensureDeferred
    async def test_unknown_profile(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        with pytest.raises(ProfileNotFound, match="nobody"):
            await admin._bridge_purge_all_profiles(profiles=["alice", "nobody"])

    @pytest_twisted.ensureDeferred
    async def test_older_than(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        await set_times(cache.storage, cache.ids["bob_blog"], items=OLD)
        before = (NOW - timedelta(days=1)).isoformat()
        result = await admin._bridge_purge_all_profiles(created_before=before)
        assert [node["node"] for node in result["nodes"]] == ["bob_blog"]

    @pytest_twisted.ensureDeferred
    async def test_filter_not_list(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        with pytest.raises(InvalidValue, match="types must be a list of strings"):
            await admin._bridge_purge(types="blog")


class StatsTests:
    @pytest_twisted.ensureDeferred
    async def test_totals(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        stats = await admin._bridge_stats_all_profiles()
        assert stats["nodes"]["total"] == 4
        assert stats["items"]["total"] == 6
        assert stats["nodes"]["by_state"] == {"COMPLETED": 2, "IN_PROGRESS": 1, "NO_SYNC": 1}
        assert stats["items"]["by_type"] == {"blog": 4, "comments": 2, "tune": 0}

    @pytest_twisted.ensureDeferred
    async def test_one_profile(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        stats = await admin._bridge_stats()
        assert stats["profiles"] == ["alice"]
        assert stats["nodes"]["total"] == 3

    @pytest_twisted.ensureDeferred
    async def test_hits_and_size(self, admin: PubsubCacheAdmin, cache: Cache) -> None:
        admin._cache.hits = 5
        admin._cache.misses = 2
        stats = await admin._bridge_stats(types=["tune"])
        assert (stats["hits"], stats["misses"]) == (5, 2)
        assert stats["database"]["size"] > 0


# --- dates -------------------------------------------------------------------------


class ParseDateTests:
    """The daemon takes ISO 8601 with an offset; li also takes relative and local times."""

    def test_backend_iso(self) -> None:
        moment = parse_date("2024-05-01T12:00:00+02:00", "date")
        assert moment == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)

    def test_backend_naive(self) -> None:
        with pytest.raises(InvalidValue, match="add a UTC offset"):
            parse_date("2024-05-01T12:00:00", "date")

    def test_backend_invalid(self) -> None:
        with pytest.raises(InvalidValue, match="expected ISO 8601"):
            parse_date("last week", "date")

    def test_cli_relative(self) -> None:
        moment = datetime.fromisoformat(cmd_pubsub.parse_date("-7 days"))
        expected = datetime.now(timezone.utc) - timedelta(days=7)
        assert abs(moment - expected) < timedelta(seconds=5)

    @pytest.mark.parametrize(
        "text, delta",
        [("-2h", -7200), ("3 weeks ago", -3 * 604800), ("+1 day", 86400), ("-30 min", -1800)],
    )
    def test_cli_units(self, text: str, delta: int) -> None:
        moment = datetime.fromisoformat(cmd_pubsub.parse_date(text))
        offset = (moment - datetime.now(timezone.utc)).total_seconds()
        assert abs(offset - delta) < 5

    def test_cli_iso_offset(self) -> None:
        text = cmd_pubsub.parse_date("2024-05-01T12:00:00+02:00")
        assert text == "2024-05-01T10:00:00+00:00"

    def test_cli_local_time(self) -> None:
        text = cmd_pubsub.parse_date("2024-05-01T12:00:00")
        expected = datetime(2024, 5, 1, 12).astimezone().astimezone(timezone.utc)
        assert datetime.fromisoformat(text) == expected

    @pytest.mark.parametrize(
        "text, message",
        [("-3 fortnights", "unknown unit 'fortnights'"), ("7 days", "use ISO 8601"),
         ("yesterday", "use ISO 8601")],
    )
    def test_cli_invalid(self, text: str, message: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            cmd_pubsub.parse_date(text)
