"""Figure 5: search latency over 100,000 and 1,000,000 cached items, on SQLite and PostgreSQL.

:class:`SearchDatabases` makes an SQLite file and a PostgreSQL database
with the backend's schema (``Storage.initialise``), one profile and
NODE_COUNT microblog nodes. It fills both with the same synthetic posts
(:mod:`bench.items`) in batches of BATCH_SIZE items, through
``Storage.cache_pubsub_items``: the write path of a sync, full-text index
included. No XMPP server is involved, because publishing a million items
would take hours.

Each query of :func:`make_queries` runs through
``Storage.search_pubsub_items`` (the ``ps_cache_search`` bridge method
calls it the same way) with a limit of 20 and the default count limit
(``search.DEFAULT_COUNT_LIMIT``, 1,000): the count stops after that many
matches, and a larger total is reported as a lower bound. PostgreSQL gets an ``ANALYZE`` after each fill, as autovacuum would run
within a minute. The backend runs no ``ANALYZE`` on SQLite, so neither does
the benchmark.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads

from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.tools.aio import as_deferred
from libervia.testing.databases import create_database, drop_database

from bench.items import (
    FIRST_DATE,
    POST_INTERVAL,
    PostGenerator,
    check_parsed_data,
    post_parsed,
    post_xml,
)
from bench.plan import SEARCH_MIN_ROUNDS, SEARCH_QUERY_BUDGET, Plan
from bench.stats import summarise

log = logging.getLogger(__name__)

NODE_COUNT = 50
BATCH_SIZE = 2000
SEARCH_LIMIT = 20
SERVICE = "pubsub.search.localhost"
AUTHOR = "pub@search.localhost"
ENGINES = ("sqlite", "postgresql")
WARMUP = 1


@dataclass(frozen=True)
class Query:
    """A search of the figure: a name, a description for the report and the arguments."""

    name: str
    description: str
    arguments: dict[str, Any]


def make_queries(generator: PostGenerator, size: int) -> list[Query]:
    """Return the queries of the figure for a data set of ``size`` posts."""
    vocabulary = generator.vocabulary
    common, medium, rare = vocabulary.word(10), vocabulary.word(100), vocabulary.word(5000)
    # Two words that follow each other in the content of post 0.
    phrase = " ".join(generator.post(0).content.lower().rstrip(".").split()[1:3])
    middle = FIRST_DATE + (size // 2) * POST_INTERVAL
    day = [middle.timestamp(), (middle + 1439 * POST_INTERVAL).timestamp()]
    newest = [(["published"], "desc")]
    return [
        Query("fts_common", f"full text, a word in about 36 % of the posts ({common})",
              {"fts": common}),
        Query("fts_medium", f"full text, a word in about 4.5 % of the posts ({medium})",
              {"fts": medium}),
        Query("fts_rare", f"full text, a word in about 0.1 % of the posts ({rare})",
              {"fts": rare}),
        Query("fts_two_words", "full text, both words above (36 % and 4.5 %)",
              {"fts": f"{common} {medium}"}),
        Query("fts_phrase", f'full text, the phrase "{phrase}"',
              {"fts": phrase, "fts_mode": "phrase"}),
        Query("fts_prefix", f"full text, words starting with {medium[:3]!r}",
              {"fts": medium[:3], "fts_mode": "prefix"}),
        Query("fts_common_newest", "full text, the 36 % word, newest first instead of relevance",
              {"fts": common, "order_by": [("created", "desc")]}),
        Query("field_tag", "parsed field: tag 'xmpp' (about 45 % of the posts), newest first",
              {"filters": [(["tags"], "overlap", ["xmpp"])], "order_by": newest}),
        Query("field_day", "parsed field: published on a given day (1,440 posts), newest first",
              {"filters": [(["published"], "between", day)], "order_by": newest}),
        Query("fts_and_field", "full text (4.5 % word) and tag 'python'",
              {"fts": medium, "filters": [(["tags"], "overlap", ["python"])]}),
    ]


class SearchDatabases:
    """One SQLite file and one PostgreSQL database filled with the same posts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sqlite_path = folder / "search.db"
        self._pg_url: Any = None
        self.storages: dict[str, Storage] = {}
        self.urls: dict[str, str] = {}
        self.profile_ids: dict[str, int] = {}
        self.node_ids: dict[str, list[tuple[int, str]]] = {}
        self.generator = PostGenerator(AUTHOR, seed=5)
        self.size = 0
        #: Seconds spent filling, by target size.
        self.fill_seconds: dict[int, float] = {}

    async def __aenter__(self) -> SearchDatabases:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pg_url = await threads.deferToThread(create_database)
        self.urls = {
            "sqlite": f"sqlite+aiosqlite:///{self.sqlite_path}",
            "postgresql": self._pg_url.render_as_string(hide_password=False),
        }
        for engine in ENGINES:
            storage = Storage(self.urls[engine])
            await storage.initialise()
            self.storages[engine] = storage
            profile = await storage.create_profile("bench", "reader@search.localhost",
                                                   "bench-password", {})
            self.profile_ids[engine] = profile.id
            nodes = []
            for index in range(NODE_COUNT):
                name = f"urn:xmpp:microblog:0:search-{index:02d}"
                node = await storage.set_pubsub_node(
                    profile.id, SERVICE, name, analyser="XEP-0277", type_="blog",
                    sync_state=SyncState.COMPLETED,
                )
                nodes.append((node.id, name))
            self.node_ids[engine] = nodes
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close_storages()
        if self._pg_url is not None:
            await threads.deferToThread(drop_database, self._pg_url)
            self._pg_url = None

    async def close_storages(self) -> None:
        """Close the benchmark's connections to both databases (they are dropped at exit)."""
        for storage in self.storages.values():
            await storage.close()
        self.storages = {}

    async def postgresql_version(self) -> str:
        """Return the PostgreSQL server's version string."""
        async def read() -> str:
            async with self.storages["postgresql"].engine.connect() as connection:
                return (await connection.exec_driver_sql("SHOW server_version")).scalar()
        return await as_deferred(read())

    async def _analyze_postgresql(self) -> None:
        async def analyze() -> None:
            async with self.storages["postgresql"].engine.connect() as connection:
                await connection.exec_driver_sql("ANALYZE")
                await connection.commit()
        await as_deferred(analyze())

    async def fill_to(self, size: int) -> None:
        """Add posts to both databases until each contains ``size`` items.

        The two databases are written at the same time, batch by batch, so
        that the database servers' work overlaps with the benchmark's.
        """
        if size <= self.size:
            return
        start = time.perf_counter()
        check_parsed_data(
            self.generator.posts(3, start=self.size), SERVICE, self.node_ids["sqlite"][0][1]
        )
        while self.size < size:
            count = min(BATCH_SIZE, size - self.size)
            posts = self.generator.posts(count, start=self.size)
            batch_index = self.size // BATCH_SIZE
            writes = []
            for engine in ENGINES:
                node_id, node = self.node_ids[engine][batch_index % NODE_COUNT]
                rows = [
                    (post.item_id, post_xml(post), post_parsed(post, SERVICE, node), None)
                    for post in posts
                ]
                writes.append(self.storages[engine].cache_pubsub_items(node_id, rows))
            await defer.gatherResults(writes, consumeErrors=True)
            self.size += count
            if self.size % 100_000 == 0:
                log.info("search databases: %d items", self.size)
        await self._analyze_postgresql()
        self.fill_seconds[size] = time.perf_counter() - start
        log.info("search databases filled to %d items in %.0f s", size,
                 self.fill_seconds[size])


async def _time_query(storage: Storage, profile_id: int, query: Query,
                      rounds: int) -> dict[str, Any]:
    """Run a query WARMUP times, then up to ``rounds`` timed times; return the summary in ms."""
    arguments = {**query.arguments, "profile_ids": [profile_id], "limit": SEARCH_LIMIT}
    for _ in range(WARMUP):
        result = await storage.search_pubsub_items(**arguments)
    samples = []
    started = time.perf_counter()
    for _ in range(rounds):
        start = time.perf_counter()
        result = await storage.search_pubsub_items(**arguments)
        samples.append((time.perf_counter() - start) * 1000)
        spent = time.perf_counter() - started
        if spent > SEARCH_QUERY_BUDGET and len(samples) >= SEARCH_MIN_ROUNDS:
            break
    return {
        **summarise(samples), "matches": result.total, "matches_exact": result.total_exact,
        "hits": len(result.hits),
    }


async def run(databases: SearchDatabases, plan: Plan) -> dict[str, Any]:
    """Measure figure 5 at each size of ``plan.search_sizes``; return the rows."""
    rows = []
    queries: dict[str, str] = {}
    for size in plan.search_sizes:
        await databases.fill_to(size)
        for query in make_queries(databases.generator, size):
            queries[query.name] = query.description
            for engine in ENGINES:
                summary = await _time_query(
                    databases.storages[engine], databases.profile_ids[engine], query,
                    plan.search_rounds,
                )
                rows.append({"engine": engine, "items": size, "query": query.name, **summary})
                log.info(
                    "%s, %d items, %s: median %.1f ms, p95 %.1f ms, %d matches",
                    engine, size, query.name, summary["median"], summary["p95"],
                    summary["matches"],
                )
    return {
        "limit": SEARCH_LIMIT,
        "nodes": NODE_COUNT,
        "queries": queries,
        "fill_seconds": {str(size): seconds for size, seconds in databases.fill_seconds.items()},
        "rows": rows,
    }
