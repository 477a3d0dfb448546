"""Query plans of the pubsub cache's hot queries: each one must be served by an index.

The database contains two nodes of 2,000 items each and 2,000 more empty nodes,
and its statistics are up to date (ANALYZE), so a planner that does not use
an index would show a scan. The queries are built by Storage's own helpers
and compiled for the engine; the plans come from ``EXPLAIN QUERY PLAN``
(SQLite) or ``EXPLAIN`` (PostgreSQL). Every test runs on both engines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import re

import pytest
import pytest_twisted
from sqlalchemy import Select, insert, select

from libervia.backend.memory import search
from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import PubsubItem, PubsubNode
from libervia.backend.tools.aio import as_deferred

SERVICE = "pubsub.example.org"
NODE = "urn:xmpp:microblog:0"
OTHER_NODE = "other"
ITEMS_PER_NODE = 2000
BATCH_SIZE = 500
FILLER_NODES = 2000
PAGE_SIZE = 20
COMMON_TAG = "xmpp"
RARE_TAG = "rare"
# Items of OTHER_NODE with RARE_TAG: 4 of its 2,000.
RARE_TAG_INTERVAL = 500
# 2024-01-01T00:00:00Z, in seconds since the epoch.
FIRST_PUBLISHED = 1_704_067_200


@dataclass
class PlanDatabase:
    """Storage loaded with the test data set, and the ids of its main objects."""

    storage: Storage
    profile_id: int
    node_id: int

    @property
    def engine_name(self) -> str:
        """Name of the database engine: sqlite or postgresql."""
        return self.storage.engine.dialect.name

    async def explain(self, query: Select) -> list[str]:
        """Return the lines of the query plan of ``query``, as the engine prints them."""
        dialect = self.storage.engine.dialect
        # Literal values, as the plan of a query run with parameters is
        # chosen for its values too (PostgreSQL's custom plans).
        sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        prefix = "EXPLAIN QUERY PLAN " if dialect.name == "sqlite" else "EXPLAIN "
        async with self.storage.engine.connect() as connection:
            rows = (await connection.exec_driver_sql(prefix + sql)).all()
        # The plan line is SQLite's last column, and PostgreSQL's only one.
        return [str(row[-1]).strip() for row in rows]


def parsed_data(node_id: int, tagged_node_id: int, index: int) -> dict[str, Any]:
    """Return the parsed data of item ``index`` of a node.

    The items of ``tagged_node_id`` have a publication date and COMMON_TAG,
    and a few of them have RARE_TAG too.
    """
    if node_id != tagged_node_id:
        return {"index": index}
    tags = [COMMON_TAG]
    if index % RARE_TAG_INTERVAL == 0:
        tags.append(RARE_TAG)
    return {"index": index, "published": FIRST_PUBLISHED + index * 60, "tags": tags}


async def load_data_set(storage: Storage) -> PlanDatabase:
    """Fill ``storage`` with the data set of the module and refresh the planner statistics."""
    profile = await storage.create_profile("alice", "alice@example.org", "secret")
    node = await storage.set_pubsub_node(profile.id, SERVICE, NODE)
    other = await storage.set_pubsub_node(profile.id, SERVICE, OTHER_NODE)
    for node_id in (node.id, other.id):
        for start in range(0, ITEMS_PER_NODE, BATCH_SIZE):
            await storage.cache_pubsub_items(
                node_id,
                [
                    (f"item-{index}", f'<item id="item-{index}"/>', parsed_data(node_id, other.id, index), None)
                    for index in range(start, start + BATCH_SIZE)
                ],
            )

    async def add_filler_nodes_and_analyse() -> None:
        filler = [
            {"profile_id": profile.id, "service": SERVICE, "name": f"filler-{index}"}
            for index in range(FILLER_NODES)
        ]
        async with storage.engine.begin() as connection:
            await connection.execute(insert(PubsubNode), filler)
        if storage.engine.dialect.name == "sqlite":
            async with storage.engine.begin() as connection:
                await connection.exec_driver_sql("ANALYZE")
        else:
            # VACUUM runs outside a transaction, and it sets the visibility
            # map that lets PostgreSQL count from the index alone.
            async with storage.engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.exec_driver_sql("VACUUM ANALYZE")

    await as_deferred(add_filler_nodes_and_analyse())
    return PlanDatabase(storage, profile.id, node.id)


@pytest_twisted.async_yield_fixture(scope="module")
async def database(module_db_url: str) -> AsyncIterator[PlanDatabase]:
    """Yield the loaded database of the module, once per engine."""
    storage = Storage(module_db_url)
    await storage.initialise()
    try:
        yield await load_data_set(storage)
    finally:
        await storage.close()


def tag_search(tag: str) -> search.SearchRequest:
    """Return the search of the items tagged ``tag``, newest published first."""
    return search.check_request(
        filters=[(["tags"], "overlap", [tag])],
        order_by=[(["published"], "desc")],
        limit=PAGE_SIZE,
    )


def estimated_rows(plan: list[str]) -> int:
    """Return the row estimate of the top node of a PostgreSQL plan."""
    match = re.search(r" rows=(\d+) ", plan[0])
    assert match is not None, f"no row estimate in {plan[0]!r}"
    return int(match.group(1))


def scanned_tables(engine_name: str, plan: list[str]) -> list[str]:
    """Return the plan lines that read a whole table."""
    if engine_name == "sqlite":
        # "SCAN t" since SQLite 3.36, "SCAN TABLE t" before.
        return [line for line in plan if line.startswith("SCAN ")]
    return [line for line in plan if "Seq Scan" in line]


def sort_steps(engine_name: str, plan: list[str]) -> list[str]:
    """Return the plan lines that sort rows after reading them."""
    if engine_name == "sqlite":
        return [line for line in plan if "TEMP B-TREE" in line]
    return [line for line in plan if "Sort" in line]


def uses_index(engine_name: str, plan: list[str], index: str) -> bool:
    """Return True when a line of the plan reads the index called ``index``."""
    if engine_name == "sqlite":
        return any(f"INDEX {index} " in f"{line} " for line in plan)
    return any(f" {index} " in f" {line} " for line in plan)


def node_key_index(engine_name: str) -> str:
    """Return the name of the index of the unique (profile, service, name) constraint."""
    # SQLite names the indexes of UNIQUE constraints itself.
    if engine_name == "sqlite":
        return "sqlite_autoindex_pubsub_nodes_1"
    return "uq_pubsub_nodes_profile_id_service_name"


def item_key_index(engine_name: str) -> str:
    """Return the name of the index of the unique (node, item id) constraint."""
    if engine_name == "sqlite":
        return "sqlite_autoindex_pubsub_items_1"
    return "uq_pubsub_items_node_id_name"


class QueryPlanTests:
    """Plans of the queries the cache runs for each request."""

    @pytest_twisted.ensureDeferred
    async def test_node_lookup(self, database: PlanDatabase) -> None:
        query = select(PubsubNode).where(
            *Storage._node_key(database.profile_id, SERVICE, NODE)
        )

        plan = await as_deferred(database.explain(query))

        assert scanned_tables(database.engine_name, plan) == []
        assert uses_index(database.engine_name, plan, node_key_index(database.engine_name))

    @pytest.mark.parametrize("order_by", ["created", "updated"])
    @pytest_twisted.ensureDeferred
    async def test_newest_page(self, database: PlanDatabase, order_by: str) -> None:
        query = Storage._items_query(
            select(PubsubItem.data), database.node_id, PAGE_SIZE, None, order_by
        )

        plan = await as_deferred(database.explain(query))

        assert scanned_tables(database.engine_name, plan) == []
        assert sort_steps(database.engine_name, plan) == []
        assert uses_index(database.engine_name, plan, f"ix_pubsub_items_node_id_{order_by}_id")

    @pytest.mark.parametrize("order_by", ["created", "updated"])
    @pytest_twisted.ensureDeferred
    async def test_whole_node(self, database: PlanDatabase, order_by: str) -> None:
        query = Storage._items_query(
            select(PubsubItem.data), database.node_id, None, None, order_by
        )

        plan = await as_deferred(database.explain(query))

        assert scanned_tables(database.engine_name, plan) == []
        assert sort_steps(database.engine_name, plan) == []
        assert uses_index(database.engine_name, plan, f"ix_pubsub_items_node_id_{order_by}_id")

    @pytest_twisted.ensureDeferred
    async def test_items_by_id(self, database: PlanDatabase) -> None:
        query = Storage._items_query(
            select(PubsubItem.data), database.node_id, None, ["item-5", "item-1500"], "created"
        )

        plan = await as_deferred(database.explain(query))

        # The few rows found are sorted afterwards, which is cheap: no check on sorting.
        assert scanned_tables(database.engine_name, plan) == []
        assert uses_index(database.engine_name, plan, item_key_index(database.engine_name))

    @pytest_twisted.ensureDeferred
    async def test_count(self, database: PlanDatabase) -> None:
        plan = await as_deferred(database.explain(Storage._count_query(database.node_id)))
        index_lines = [line for line in plan if "INDEX" in line.upper()]

        assert scanned_tables(database.engine_name, plan) == []
        assert index_lines != []

    @pytest_twisted.ensureDeferred
    async def test_latest_times_read_from_index_end(self, database: PlanDatabase) -> None:
        # Each batch that a sync stores reads them: a walk of the node's
        # index entries would make a sync quadratic in the node's size.
        for query in Storage._latest_times_queries(database.node_id):
            plan = await as_deferred(database.explain(query))

            assert scanned_tables(database.engine_name, plan) == []
            if database.engine_name == "sqlite":
                assert any("COVERING INDEX" in line for line in plan), plan
            else:
                assert any("Backward" in line for line in plan), plan
                assert any("Limit" in line for line in plan), plan

    @pytest_twisted.ensureDeferred
    async def test_data_set_loaded(self, database: PlanDatabase) -> None:
        # Guards the other tests: on a small table, a scan would be a fair plan.
        assert await database.storage.count_pubsub_items(database.node_id) == ITEMS_PER_NODE
        assert len(await database.storage.get_pubsub_nodes(database.profile_id)) == 2 + FILLER_NODES


class SearchPlanTests:
    """Plans of the searches on parsed data (Storage.search_pubsub_items)."""

    @pytest_twisted.ensureDeferred
    async def test_frequent_tag_newest_page(self, database: PlanDatabase) -> None:
        # Half of the items match, so reading the published index backwards stops
        # after one page, while the other plans read and sort every match.
        query = search.build_page_query(database.engine_name, tag_search(COMMON_TAG))

        plan = await as_deferred(database.explain(query))

        assert uses_index(database.engine_name, plan, "ix_pubsub_items_parsed_published")
        assert sort_steps(database.engine_name, plan) == []

    # SQLite has no index on the elements of lists.
    @pytest.mark.parametrize("module_db_url", ["postgresql"], indirect=True)
    @pytest_twisted.ensureDeferred
    async def test_rare_tag_uses_gin_index(self, database: PlanDatabase) -> None:
        query = search.build_page_query(database.engine_name, tag_search(RARE_TAG))

        plan = await as_deferred(database.explain(query))

        assert not any("on pubsub_items" in line for line in scanned_tables(database.engine_name, plan))
        assert uses_index(database.engine_name, plan, "ix_pubsub_items_parsed")

    # SQLite's plans do not print row estimates.
    @pytest.mark.parametrize("module_db_url", ["postgresql"], indirect=True)
    @pytest_twisted.ensureDeferred
    async def test_frequent_tag_estimate(self, database: PlanDatabase) -> None:
        # The planner chooses between walking an ordered index and reading
        # every match from the GIN index by this estimate. A condition on
        # expressions without statistics divided it by hundreds.
        matches_query = (
            search.build_page_query(database.engine_name, tag_search(COMMON_TAG))
            .order_by(None)
            .limit(None)
            .offset(None)
        )

        plan = await as_deferred(database.explain(matches_query))

        # Every item of OTHER_NODE has the tag.
        assert estimated_rows(plan) >= ITEMS_PER_NODE // 2
