"""Tests of Storage: profiles, cached pubsub nodes and items.

Every test runs twice through the ``db_url`` fixture: on a new SQLite file and
on a new database of the local PostgreSQL server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import pytest_twisted
from sqlalchemy import event
from sqlalchemy.engine import make_url
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from libervia.backend.core.exceptions import (
    InvalidValue,
    NotFound,
    ProfileExists,
    ProfileNotFound,
    StorageError,
)
from libervia.backend.memory.sqla import (
    INLINE_COUNT_MAX_ITEMS, INLINE_READ_MAX_ITEMS, NODE_LOCK_SPACE, Storage,
)
from libervia.backend.memory.sqla_mapping import Profile, PubsubNode, SyncState
from libervia.backend.tools.aio import as_deferred

SERVICE = "pubsub.example.org"
NODE = "urn:xmpp:microblog:0"


def item_xml(item_id: str, text: str = "hello") -> str:
    """Return the XML of a pubsub <item/> with a small payload."""
    return f'<item id="{item_id}"><entry xmlns="urn:example">{text}</entry></item>'


def item_ids_of(items: list) -> list[str]:
    """Return the item ids of a list of PubsubItem, in order."""
    return [item.name for item in items]


def is_increasing(values: list[Any]) -> bool:
    """Return True when every value is greater than the one before it."""
    return all(earlier < later for earlier, later in zip(values, values[1:]))


@contextmanager
def recorded_statements(storage: Storage) -> Iterator[list[tuple[str, int]]]:
    """Record the statements sent to the driver, with their number of parameter sets.

    An ``executemany`` call counts as one statement, with one parameter set per row.
    """
    statements: list[tuple[str, int]] = []

    def record(
        connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        statements.append((statement, len(parameters) if executemany else 1))

    engines = storage.statement_engines()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


@pytest_twisted.async_fixture
async def profile(storage: Storage) -> Profile:
    """Return a new profile called alice."""
    return await storage.create_profile("alice", "alice@example.org", "secret")


@pytest_twisted.async_fixture
async def node(storage: Storage, profile: Profile) -> PubsubNode:
    """Return a new cached node of alice."""
    return await storage.set_pubsub_node(profile.id, SERVICE, NODE)


class ProfileTests:
    """Creation, lookup, update and deletion of profiles."""

    @pytest_twisted.ensureDeferred
    async def test_create_and_get(self, storage: Storage) -> None:
        created = await storage.create_profile(
            "alice", "alice@example.org", "secret", {"host": "127.0.0.1"}
        )
        loaded = await storage.get_profile("alice")

        assert loaded is not None
        assert loaded.id == created.id
        assert loaded.jid == "alice@example.org"
        assert loaded.password == "secret"
        assert loaded.params == {"host": "127.0.0.1"}
        assert loaded.created.tzinfo is not None
        assert loaded.created == created.created

    @pytest_twisted.ensureDeferred
    async def test_get_unknown(self, storage: Storage) -> None:
        assert await storage.get_profile("nobody") is None

    @pytest_twisted.ensureDeferred
    async def test_duplicate_name(self, storage: Storage, profile: Profile) -> None:
        with pytest.raises(ProfileExists):
            await storage.create_profile("alice", "other@example.org", "secret")

    @pytest_twisted.ensureDeferred
    async def test_empty_name(self, storage: Storage) -> None:
        with pytest.raises(InvalidValue):
            await storage.create_profile("", "alice@example.org", "secret")

    @pytest_twisted.ensureDeferred
    async def test_first_is_default(self, storage: Storage) -> None:
        assert await storage.get_default_profile() is None

        first = await storage.create_profile("alice", "alice@example.org", "secret")
        second = await storage.create_profile("bob", "bob@example.org", "secret")
        default = await storage.get_default_profile()

        assert first.is_default
        assert not second.is_default
        assert default is not None
        assert default.name == "alice"

    @pytest_twisted.ensureDeferred
    async def test_set_default(self, storage: Storage) -> None:
        await storage.create_profile("alice", "alice@example.org", "secret")
        await storage.create_profile("bob", "bob@example.org", "secret")

        await storage.set_default_profile("bob")
        profiles = {profile.name: profile for profile in await storage.list_profiles()}

        assert profiles["bob"].is_default
        assert not profiles["alice"].is_default

    @pytest_twisted.ensureDeferred
    async def test_set_default_unknown(self, storage: Storage, profile: Profile) -> None:
        with pytest.raises(ProfileNotFound):
            await storage.set_default_profile("nobody")

        default = await storage.get_default_profile()
        assert default is not None
        assert default.name == "alice"

    @pytest_twisted.ensureDeferred
    async def test_list_sorted(self, storage: Storage) -> None:
        for name in ("carol", "alice", "bob"):
            await storage.create_profile(name, f"{name}@example.org", "secret")

        names = [profile.name for profile in await storage.list_profiles()]

        assert names == ["alice", "bob", "carol"]

    @pytest_twisted.ensureDeferred
    async def test_delete(self, storage: Storage, profile: Profile) -> None:
        assert await storage.delete_profile("alice") is True
        assert await storage.get_profile("alice") is None
        assert await storage.delete_profile("alice") is False

    @pytest_twisted.ensureDeferred
    async def test_delete_default_promotes(self, storage: Storage) -> None:
        await storage.create_profile("alice", "alice@example.org", "secret")
        await storage.create_profile("bob", "bob@example.org", "secret")
        await storage.create_profile("carol", "carol@example.org", "secret")

        await storage.delete_profile("alice")
        default = await storage.get_default_profile()

        assert default is not None
        assert default.name == "bob"

    @pytest_twisted.ensureDeferred
    async def test_update(self, storage: Storage, profile: Profile) -> None:
        updated = await storage.update_profile(
            "alice", jid="alice@example.net", password="new", params={"port": 5222}
        )
        loaded = await storage.get_profile("alice")

        assert updated.jid == "alice@example.net"
        assert loaded is not None
        assert loaded.jid == "alice@example.net"
        assert loaded.password == "new"
        assert loaded.params == {"port": 5222}

    @pytest_twisted.ensureDeferred
    async def test_rename(self, storage: Storage, profile: Profile) -> None:
        await storage.update_profile("alice", name="alicia")

        assert await storage.get_profile("alice") is None
        assert await storage.get_profile("alicia") is not None

    @pytest_twisted.ensureDeferred
    async def test_rename_to_used_name(self, storage: Storage, profile: Profile) -> None:
        await storage.create_profile("bob", "bob@example.org", "secret")

        with pytest.raises(ProfileExists):
            await storage.update_profile("alice", name="bob")

    @pytest_twisted.ensureDeferred
    async def test_update_unknown(self, storage: Storage) -> None:
        with pytest.raises(ProfileNotFound):
            await storage.update_profile("nobody", jid="nobody@example.org")

    @pytest_twisted.ensureDeferred
    async def test_update_invalid_field(self, storage: Storage, profile: Profile) -> None:
        with pytest.raises(InvalidValue):
            await storage.update_profile("alice", is_default=True)


class PubsubNodeTests:
    """Cached pubsub nodes."""

    @pytest_twisted.ensureDeferred
    async def test_create(self, storage: Storage, profile: Profile) -> None:
        created = await storage.set_pubsub_node(
            profile.id,
            SERVICE,
            NODE,
            analyser="microblog",
            type_="blog",
            subtype="personal",
            extra={"max_items": 10},
        )
        loaded = await storage.get_pubsub_node(profile.id, SERVICE, NODE)

        assert loaded is not None
        assert loaded.id == created.id
        assert loaded.analyser == "microblog"
        assert loaded.type_ == "blog"
        assert loaded.subtype == "personal"
        assert loaded.extra == {"max_items": 10}
        assert loaded.sync_state is None

    @pytest_twisted.ensureDeferred
    async def test_get_unknown(self, storage: Storage, profile: Profile) -> None:
        assert await storage.get_pubsub_node(profile.id, SERVICE, "unknown") is None

    @pytest_twisted.ensureDeferred
    async def test_update_keeps_other_fields(self, storage: Storage, profile: Profile) -> None:
        first = await storage.set_pubsub_node(
            profile.id, SERVICE, NODE, analyser="microblog", type_="blog"
        )
        second = await storage.set_pubsub_node(
            profile.id, SERVICE, NODE, sync_state=SyncState.COMPLETED
        )

        assert second.id == first.id
        assert second.analyser == "microblog"
        assert second.type_ == "blog"
        assert second.sync_state is SyncState.COMPLETED
        assert second.sync_state_updated is not None

    @pytest_twisted.ensureDeferred
    async def test_set_without_fields(self, storage: Storage, node: PubsubNode) -> None:
        again = await storage.set_pubsub_node(node.profile_id, SERVICE, NODE)

        assert again.id == node.id

    @pytest_twisted.ensureDeferred
    async def test_unique_per_key(self, storage: Storage, profile: Profile) -> None:
        other_profile = await storage.create_profile("bob", "bob@example.org", "secret")

        nodes = [
            await storage.set_pubsub_node(profile.id, SERVICE, NODE),
            await storage.set_pubsub_node(profile.id, SERVICE, "other"),
            await storage.set_pubsub_node(profile.id, "alice@example.org", NODE),
            await storage.set_pubsub_node(other_profile.id, SERVICE, NODE),
            await storage.set_pubsub_node(profile.id, SERVICE, NODE),
        ]

        assert len({node.id for node in nodes}) == 4
        assert nodes[4].id == nodes[0].id

    @pytest_twisted.ensureDeferred
    async def test_concurrent_set(self, storage: Storage, profile: Profile) -> None:
        calls = [
            storage.set_pubsub_node(profile.id, SERVICE, NODE, type_=f"type{index}")
            for index in range(10)
        ]
        nodes = await defer.gatherResults(calls)

        assert len({node.id for node in nodes}) == 1
        assert len(await storage.get_pubsub_nodes(profile.id)) == 1

    @pytest_twisted.ensureDeferred
    async def test_unknown_profile(self, storage: Storage) -> None:
        with pytest.raises(NotFound):
            await storage.set_pubsub_node(12345, SERVICE, NODE)

    @pytest_twisted.ensureDeferred
    async def test_sync_state(self, storage: Storage, node: PubsubNode) -> None:
        await storage.update_pubsub_node_sync_state(node.id, SyncState.IN_PROGRESS)
        in_progress = await storage.get_pubsub_node(node.profile_id, SERVICE, NODE)
        await storage.update_pubsub_node_sync_state(node.id, SyncState.COMPLETED)
        completed = await storage.get_pubsub_node(node.profile_id, SERVICE, NODE)

        assert in_progress is not None
        assert in_progress.sync_state is SyncState.IN_PROGRESS
        assert in_progress.sync_state_updated is not None
        assert completed is not None
        assert completed.sync_state is SyncState.COMPLETED
        assert completed.sync_state_updated is not None
        assert completed.sync_state_updated > in_progress.sync_state_updated

    @pytest_twisted.ensureDeferred
    async def test_sync_state_unknown_node(self, storage: Storage) -> None:
        with pytest.raises(NotFound):
            await storage.update_pubsub_node_sync_state(12345, SyncState.ERROR)

    @pytest_twisted.ensureDeferred
    async def test_list_filters(self, storage: Storage, profile: Profile) -> None:
        other_profile = await storage.create_profile("bob", "bob@example.org", "secret")
        synced = await storage.set_pubsub_node(
            profile.id, SERVICE, "synced", sync_state=SyncState.COMPLETED
        )
        await storage.set_pubsub_node(profile.id, SERVICE, "not-synced")
        others = await storage.set_pubsub_node(
            other_profile.id, SERVICE, "synced", sync_state=SyncState.COMPLETED
        )

        all_nodes = await storage.get_pubsub_nodes()
        alice_nodes = await storage.get_pubsub_nodes(profile.id)
        completed = await storage.get_pubsub_nodes(sync_state=SyncState.COMPLETED)
        alice_completed = await storage.get_pubsub_nodes(profile.id, SyncState.COMPLETED)

        assert len(all_nodes) == 3
        assert {node.name for node in alice_nodes} == {"synced", "not-synced"}
        assert {node.id for node in completed} == {synced.id, others.id}
        assert [node.id for node in alice_completed] == [synced.id]

    @pytest_twisted.ensureDeferred
    async def test_delete(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(node.id, [("1", item_xml("1"), None, None)])

        assert await storage.delete_pubsub_node(node.profile_id, SERVICE, NODE) is True
        assert await storage.get_pubsub_node(node.profile_id, SERVICE, NODE) is None
        assert await storage.count_pubsub_items(node.id) == 0
        assert await storage.delete_pubsub_node(node.profile_id, SERVICE, NODE) is False


class PubsubItemTests:
    """Cached pubsub items: upserts, order, filters and deletions."""

    @pytest_twisted.ensureDeferred
    async def test_cache_and_get(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id,
            [
                ("1", item_xml("1"), {"title": "first"}, "alice@example.org"),
                ("2", item_xml("2"), None, None),
            ],
        )
        items = await storage.get_pubsub_items(node.id)

        assert item_ids_of(items) == ["1", "2"]
        assert items[0].data == item_xml("1")
        assert items[0].parsed == {"title": "first"}
        assert items[0].publisher == "alice@example.org"
        assert items[1].parsed is None
        assert items[1].publisher is None
        assert items[0].created.tzinfo is not None

    @pytest_twisted.ensureDeferred
    async def test_batch_order_kept(self, storage: Storage, node: PubsubNode) -> None:
        # Ids in an order that no sort on the id would give.
        item_ids = [f"item-{(index * 37) % 101}" for index in range(100)]

        await storage.cache_pubsub_items(
            node.id, [(item_id, item_xml(item_id), None, None) for item_id in item_ids]
        )
        items = await storage.get_pubsub_items(node.id)
        created = [item.created for item in items]

        assert item_ids_of(items) == item_ids
        assert all(earlier < later for earlier, later in zip(created, created[1:]))

    @pytest_twisted.ensureDeferred
    async def test_new_batch_after_old(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(node.id, [("b", item_xml("b"), None, None)])
        await storage.cache_pubsub_items(node.id, [("a", item_xml("a"), None, None)])

        assert item_ids_of(await storage.get_pubsub_items(node.id)) == ["b", "a"]

    @pytest_twisted.ensureDeferred
    async def test_upsert_keeps_created(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id,
            [("1", item_xml("1", "old"), {"v": 1}, None), ("2", item_xml("2"), None, None)],
        )
        before = {item.name: item for item in await storage.get_pubsub_items(node.id)}

        await storage.cache_pubsub_items(
            node.id, [("1", item_xml("1", "new"), {"v": 2}, "bob@example.org")]
        )
        after = {item.name: item for item in await storage.get_pubsub_items(node.id)}

        assert after["1"].created == before["1"].created
        assert after["1"].updated > before["1"].updated
        assert after["1"].updated > before["2"].updated
        assert after["1"].data == item_xml("1", "new")
        assert after["1"].parsed == {"v": 2}
        assert after["1"].publisher == "bob@example.org"
        assert after["2"].updated == before["2"].updated
        assert await storage.count_pubsub_items(node.id) == 2

    @pytest_twisted.ensureDeferred
    async def test_order_by_updated(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(item_id, item_xml(item_id), None, None) for item_id in "abc"]
        )
        await storage.cache_pubsub_items(node.id, [("a", item_xml("a", "edited"), None, None)])

        by_created = await storage.get_pubsub_items(node.id)
        by_updated = await storage.get_pubsub_items(node.id, order_by="updated")

        assert item_ids_of(by_created) == ["a", "b", "c"]
        assert item_ids_of(by_updated) == ["b", "c", "a"]

    @pytest_twisted.ensureDeferred
    async def test_invalid_order_by(self, storage: Storage, node: PubsubNode) -> None:
        with pytest.raises(InvalidValue):
            await storage.get_pubsub_items(node.id, order_by="name")

    @pytest_twisted.ensureDeferred
    async def test_duplicate_id_in_batch(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id,
            [
                ("1", item_xml("1", "first"), None, None),
                ("2", item_xml("2"), None, None),
                ("1", item_xml("1", "second"), None, None),
            ],
        )
        items = await storage.get_pubsub_items(node.id)

        assert item_ids_of(items) == ["2", "1"]
        assert items[1].data == item_xml("1", "second")

    @pytest_twisted.ensureDeferred
    async def test_max_items_newest(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(str(index), item_xml(str(index)), None, None) for index in range(10)]
        )

        newest = await storage.get_pubsub_items(node.id, max_items=3)
        more_than_cached = await storage.get_pubsub_items(node.id, max_items=50)
        none = await storage.get_pubsub_items(node.id, max_items=0)

        assert item_ids_of(newest) == ["7", "8", "9"]
        assert len(more_than_cached) == 10
        assert none == []

    @pytest_twisted.ensureDeferred
    async def test_negative_max_items(self, storage: Storage, node: PubsubNode) -> None:
        with pytest.raises(InvalidValue):
            await storage.get_pubsub_items(node.id, max_items=-1)

    @pytest_twisted.ensureDeferred
    async def test_item_ids_filter(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(item_id, item_xml(item_id), None, None) for item_id in "abcd"]
        )

        items = await storage.get_pubsub_items(node.id, item_ids=["d", "unknown", "b"])
        newest = await storage.get_pubsub_items(node.id, max_items=1, item_ids=["a", "c"])

        assert item_ids_of(items) == ["b", "d"]
        assert item_ids_of(newest) == ["c"]
        assert await storage.get_pubsub_items(node.id, item_ids=[]) == []

    @pytest_twisted.ensureDeferred
    async def test_items_per_node(self, storage: Storage, node: PubsubNode) -> None:
        other = await storage.set_pubsub_node(node.profile_id, SERVICE, "other")
        await storage.cache_pubsub_items(node.id, [("1", item_xml("1"), None, None)])
        await storage.cache_pubsub_items(other.id, [("1", item_xml("1", "other"), None, None)])

        items = await storage.get_pubsub_items(node.id)

        assert len(items) == 1
        assert items[0].data == item_xml("1")

    @pytest_twisted.ensureDeferred
    async def test_cache_unknown_node(self, storage: Storage) -> None:
        with pytest.raises(NotFound):
            await storage.cache_pubsub_items(12345, [("1", item_xml("1"), None, None)])

    @pytest_twisted.ensureDeferred
    async def test_delete_items(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(item_id, item_xml(item_id), None, None) for item_id in "abc"]
        )

        deleted = await storage.delete_pubsub_items(node.id, ["a", "c", "unknown"])

        assert deleted == 2
        assert item_ids_of(await storage.get_pubsub_items(node.id)) == ["b"]

    @pytest_twisted.ensureDeferred
    async def test_purge(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(item_id, item_xml(item_id), None, None) for item_id in "abc"]
        )

        deleted = await storage.delete_pubsub_items(node.id)

        assert deleted == 3
        assert await storage.count_pubsub_items(node.id) == 0
        assert await storage.get_pubsub_node(node.profile_id, SERVICE, NODE) is not None

    @pytest_twisted.ensureDeferred
    async def test_profile_delete_cascades(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(item_id, item_xml(item_id), None, None) for item_id in "abc"]
        )

        await storage.delete_profile("alice")

        assert await storage.get_pubsub_nodes() == []
        assert await storage.count_pubsub_items(node.id) == 0


class UpsertTests:
    """Statements and times of cache_pubsub_items()."""

    @pytest_twisted.ensureDeferred
    async def test_batch_is_one_insert(self, storage: Storage, node: PubsubNode) -> None:
        batch = [(str(index), item_xml(str(index)), {"n": index}, None) for index in range(500)]

        with recorded_statements(storage) as statements:
            await storage.cache_pubsub_items(node.id, batch)
        inserts = [
            rows for statement, rows in statements
            if re.match(r"\s*INSERT INTO pubsub_items\b", statement)
        ]

        assert inserts == [500]
        assert await storage.count_pubsub_items(node.id) == 500

    @pytest_twisted.ensureDeferred
    async def test_microsecond_steps(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(str(index), item_xml(str(index)), None, None) for index in range(50)]
        )
        created = [item.created for item in await storage.get_pubsub_items(node.id)]
        steps = {later - earlier for earlier, later in zip(created, created[1:])}

        # The clock does not move during the batch as the storage sees it: each
        # item is one microsecond after the one before, and the database keeps it.
        assert steps == {timedelta(microseconds=1)}

    @pytest_twisted.ensureDeferred
    async def test_mixed_batch_times(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(item_id, item_xml(item_id), None, None) for item_id in "abcd"]
        )
        before = {item.name: item for item in await storage.get_pubsub_items(node.id)}

        # Existing items c and a around new items e and f, in that order.
        await storage.cache_pubsub_items(
            node.id,
            [(item_id, item_xml(item_id, "v2"), None, None) for item_id in ["c", "e", "a", "f"]],
        )
        by_updated = await storage.get_pubsub_items(node.id, order_by="updated")
        by_created = await storage.get_pubsub_items(node.id)
        after = {item.name: item for item in by_created}

        assert item_ids_of(by_updated) == ["b", "d", "c", "e", "a", "f"]
        assert is_increasing([item.updated for item in by_updated])
        assert item_ids_of(by_created) == ["a", "b", "c", "d", "e", "f"]
        assert is_increasing([item.created for item in by_created])
        assert after["a"].created == before["a"].created
        assert after["c"].created == before["c"].created
        assert after["e"].created > before["d"].updated

    @pytest_twisted.ensureDeferred
    async def test_json_round_trip(self, storage: Storage, node: PubsubNode) -> None:
        parsed = {
            "title": "caf\u00e9 \u2615",
            "tags": ["a", "b"],
            "nested": {"dotted.key": 1.5, "none": None, "flag": True},
        }

        await storage.cache_pubsub_items(node.id, [("1", item_xml("1"), parsed, None)])
        items = await storage.get_pubsub_items(node.id)

        assert items[0].parsed == parsed


class ConcurrencyTests:
    """Two Storage instances writing to the same database at the same time."""

    @pytest_twisted.ensureDeferred
    async def test_concurrent_writers(self, db_url: str) -> None:
        first = Storage(db_url)
        await first.initialise()
        second = Storage(db_url)
        await second.initialise()
        try:
            profile = await first.create_profile("alice", "alice@example.org", "secret")
            node = await first.set_pubsub_node(profile.id, SERVICE, NODE)
            writes = [
                writer.cache_pubsub_items(
                    node.id,
                    [(f"{index}-{rank}", item_xml(str(rank)), None, None) for rank in range(20)],
                )
                for index, writer in enumerate([first, second] * 10)
            ]
            await defer.gatherResults(writes)
            count = await second.count_pubsub_items(node.id)
        finally:
            await first.close()
            await second.close()

        assert count == 400

    @pytest_twisted.ensureDeferred
    async def test_concurrent_batches_ordered(self, db_url: str) -> None:
        # Each Storage has its own connection pool, so the batches really run
        # in concurrent transactions (on PostgreSQL, without the node lock,
        # their times would interleave).
        writers = [Storage(db_url) for _ in range(4)]
        for writer in writers:
            await writer.initialise()
        try:
            profile = await writers[0].create_profile("alice", "alice@example.org", "secret")
            node = await writers[0].set_pubsub_node(profile.id, SERVICE, NODE)
            writes = [
                writers[batch % len(writers)].cache_pubsub_items(
                    node.id,
                    [(f"{batch}-{rank}", item_xml(str(rank)), None, None) for rank in range(50)],
                )
                for batch in range(40)
            ]
            await defer.gatherResults(writes)
            items = await writers[0].get_pubsub_items(node.id)
        finally:
            for writer in writers:
                await writer.close()

        batches = [item.name.split("-")[0] for item in items]
        # A batch's items are contiguous: the batch changes 39 times in 2,000 items.
        changes = sum(1 for earlier, later in zip(batches, batches[1:]) if earlier != later)
        ranks = [int(item.name.split("-")[1]) for item in items]

        assert len(items) == 2000
        assert is_increasing([item.created for item in items])
        assert changes == 39
        assert ranks == list(range(50)) * 40


class InlineReadTests:
    """read_items_xml_now: the cached get's synchronous read, SQLite files only."""

    @pytest_twisted.ensureDeferred
    async def test_same_rows_as_async_read(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(item_id, item_xml(item_id), None, None) for item_id in "abcdef"]
        )
        await storage.cache_pubsub_items(node.id, [("b", item_xml("b", "edited"), None, None)])
        shapes = [
            {"max_items": 3},
            {"max_items": 3, "order_by": "updated"},
            {"item_ids": ["e", "unknown", "a", "b"]},
            {"item_ids": ["e", "a", "b"], "max_items": 2, "order_by": "updated"},
            {"max_items": 0},
            {"item_ids": []},
        ]
        for shape in shapes:
            expected = await storage.get_pubsub_items_xml(node.id, **shape)
            rows = storage.read_items_xml_now(node.id, **shape)
            if storage.sqlite_path is None and expected:
                # PostgreSQL has no inline reader: the caller reads asynchronously.
                assert rows is None, shape
            else:
                assert rows == expected, shape
        assert [name for name, _ in await storage.get_pubsub_items_xml(node.id, max_items=3)] \
            == ["d", "e", "f"]
        assert dict(await storage.get_pubsub_items_xml(node.id, item_ids=["b"])) == {
            "b": item_xml("b", "edited")
        }

    @pytest_twisted.ensureDeferred
    async def test_large_reads_left_to_the_async_path(
        self, storage: Storage, node: PubsubNode,
    ) -> None:
        await storage.cache_pubsub_items(node.id, [("a", item_xml("a"), None, None)])

        assert storage.read_items_xml_now(node.id) is None
        assert storage.read_items_xml_now(node.id, max_items=INLINE_READ_MAX_ITEMS + 1) is None
        many_ids = [f"id-{index}" for index in range(INLINE_READ_MAX_ITEMS + 1)]
        assert storage.read_items_xml_now(node.id, item_ids=many_ids) is None
        with pytest.raises(InvalidValue, match="cannot order pubsub items by 'name'"):
            storage.read_items_xml_now(node.id, max_items=1, order_by="name")

    @pytest_twisted.ensureDeferred
    async def test_sees_committed_writes_at_once(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(node.id, [("a", item_xml("a"), None, None)])
        if storage.sqlite_path is None:
            # PostgreSQL has no inline reader: the caller reads asynchronously.
            assert storage.read_items_xml_now(node.id, max_items=5) is None
            return
        assert storage.read_items_xml_now(node.id, max_items=5) == [("a", item_xml("a"))]
        await storage.cache_pubsub_items(node.id, [("b", item_xml("b"), None, None)])
        assert storage.read_items_xml_now(node.id, max_items=5) == [
            ("a", item_xml("a")), ("b", item_xml("b")),
        ]
        await storage.delete_pubsub_items(node.id, ["a", "b"])
        assert storage.read_items_xml_now(node.id, max_items=5) == []


    @pytest_twisted.ensureDeferred
    async def test_node_row_as_async_read(self, storage: Storage, profile: Profile) -> None:
        await storage.set_pubsub_node(
            profile.id, SERVICE, NODE, analyser="blog", type_="microblog", subtype="x",
            sync_state=SyncState.COMPLETED, extra={"max_items": 10, "item_order": "creation"},
        )
        await storage.set_pubsub_node(profile.id, SERVICE, "plain")
        for name in (NODE, "plain", "unknown"):
            expected = await storage.get_pubsub_node(profile.id, SERVICE, name)
            answered, node_row = storage.read_pubsub_node_now(profile.id, SERVICE, name)
            if storage.sqlite_path is None:
                assert (answered, node_row) == (False, None)
                continue
            assert answered
            if expected is None:
                assert node_row is None
                continue
            columns = list(PubsubNode.__mapper__.columns.keys())
            assert {key: getattr(node_row, key) for key in columns} == {
                key: getattr(expected, key) for key in columns
            }
        if storage.sqlite_path is not None:
            _, node_row = storage.read_pubsub_node_now(profile.id, SERVICE, NODE)
            assert node_row.sync_state is SyncState.COMPLETED
            assert node_row.extra == {"max_items": 10, "item_order": "creation"}
            assert node_row.sync_state_updated.tzinfo is not None

    @pytest_twisted.ensureDeferred
    async def test_bounded_count(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(item_id, item_xml(item_id), None, None) for item_id in "abcde"]
        )
        if storage.sqlite_path is None:
            assert storage.count_pubsub_items_now(node.id, at_most=3) is None
            return
        assert storage.count_pubsub_items_now(node.id, at_most=3) == 3
        assert storage.count_pubsub_items_now(node.id, at_most=6) == 5
        assert storage.count_pubsub_items_now(node.id, at_most=INLINE_COUNT_MAX_ITEMS + 1) is None


class NodeLockTests:
    """The node lock of cache_pubsub_items() on PostgreSQL (SQLite has its write lock instead)."""

    @pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
    @pytest_twisted.ensureDeferred
    async def test_batch_waits_for_lock(self, db_url: str, storage: Storage) -> None:
        profile = await storage.create_profile("alice", "alice@example.org", "secret")
        node = await storage.set_pubsub_node(profile.id, SERVICE, NODE)
        dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)

        async def lock_node() -> asyncpg.Connection:
            connection = await asyncpg.connect(dsn)
            await connection.execute("BEGIN")
            await connection.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", NODE_LOCK_SPACE, node.id
            )
            return connection

        async def release(connection: asyncpg.Connection) -> None:
            await connection.execute("COMMIT")
            await connection.close()

        locker = await as_deferred(lock_node())
        try:
            write = storage.cache_pubsub_items(node.id, [("1", item_xml("1"), None, None)])
            await deferLater(reactor, 0.5)
            waited = not write.called
        finally:
            await as_deferred(release(locker))
        await write

        assert waited
        assert await storage.count_pubsub_items(node.id) == 1


class NodeSyncLockTests:
    """The lock that keeps two daemons sharing a database from syncing one node at once."""

    @pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
    @pytest_twisted.ensureDeferred
    async def test_second_daemon_excluded(self, db_url: str, storage: Storage) -> None:
        other = Storage(db_url)
        await other.initialise()
        try:
            profile = await storage.create_profile("alice", "alice@example.org", "secret")
            node = await storage.set_pubsub_node(profile.id, SERVICE, NODE)
            other_node = await storage.set_pubsub_node(profile.id, SERVICE, "other")

            first = await storage.try_lock_node_sync(node.id)
            second = await other.try_lock_node_sync(node.id)
            again_same_process = await storage.try_lock_node_sync(node.id)
            other_free_node = await other.try_lock_node_sync(other_node.id)
            await storage.unlock_node_sync(node.id)
            after_release = await other.try_lock_node_sync(node.id)
        finally:
            await other.close()
        # Closing the holder's Storage released its locks.
        after_close = await storage.try_lock_node_sync(node.id)
        await storage.unlock_node_sync(node.id)

        assert (first, second, again_same_process) == (True, False, False)
        assert other_free_node is True
        assert after_release is True
        assert after_close is True

    @pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
    @pytest_twisted.ensureDeferred
    async def test_sqlite_always_free(self, storage: Storage) -> None:
        assert await storage.try_lock_node_sync(1) is True
        assert await storage.try_lock_node_sync(1) is True
        await storage.unlock_node_sync(1)


class NodeExtraAndEvictionTests:
    @pytest_twisted.ensureDeferred
    async def test_extra_merge(self, storage: Storage, node: PubsubNode) -> None:
        await storage.update_pubsub_node_extra(node.id, max_items=5, item_order="creation")

        extra = await storage.update_pubsub_node_extra(node.id, max_items=None, publisher=True)
        row = await storage.get_pubsub_node(node.profile_id, SERVICE, NODE)

        assert extra == {"item_order": "creation", "publisher": True}
        assert row.extra == extra

    @pytest_twisted.ensureDeferred
    async def test_extra_missing_node(self, storage: Storage) -> None:
        with pytest.raises(NotFound):
            await storage.update_pubsub_node_extra(12345, max_items=1)

    @pytest_twisted.ensureDeferred
    async def test_evict_least_recently_updated(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(
            node.id, [(name, item_xml(name), None, None) for name in "abcd"]
        )
        # Editing a makes b the least recently updated item.
        await storage.cache_pubsub_items(node.id, [("a", item_xml("a", "edited"), None, None)])

        evicted = await storage.evict_pubsub_items(node.id, 2)
        left = item_ids_of(await storage.get_pubsub_items(node.id))

        assert sorted(evicted) == ["b", "c"]
        assert left == ["a", "d"]
        assert await storage.evict_pubsub_items(node.id, 2) == []


class StorageStateTests:
    """Use of a Storage before initialise() or after close()."""

    @pytest_twisted.ensureDeferred
    async def test_not_initialised(self, db_url: str) -> None:
        storage = Storage(db_url)

        with pytest.raises(StorageError):
            await storage.list_profiles()

    @pytest_twisted.ensureDeferred
    async def test_closed(self, storage: Storage) -> None:
        await storage.close()

        with pytest.raises(StorageError):
            await storage.list_profiles()
