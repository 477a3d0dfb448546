"""Tests of the full-text index of cached pubsub items, on SQLite and PostgreSQL.

Storage tests run once per engine through the ``db_url`` fixture. On SQLite,
each change is followed by FTS5's integrity check, which compares the index
with the text of ``pubsub_items`` and fails on a stale or missing entry.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
import pytest_twisted
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, insert, inspect
from sqlalchemy.pool import NullPool

from libervia.backend.memory import fulltext
from libervia.backend.memory.fulltext import item_text
from libervia.backend.memory.sqla import (
    Storage,
    alembic_config,
    create_storage_engine,
    migration_engine,
)
from libervia.backend.memory.sqla_mapping import Profile, PubsubItem, PubsubNode
from libervia.backend.tools.aio import as_deferred

SERVICE = "pubsub.example.org"
NODE = "urn:xmpp:microblog:0"
ATOM = "http://www.w3.org/2005/Atom"
PREVIOUS_REVISION = "b1706904027b"

# Words typed by users that are query syntax or punctuation for FTS5 or
# PostgreSQL's tsquery.
HOSTILE_INPUTS = [
    "pubsub-cache",
    "v1.2",
    "it's",
    '"',
    '"unbalanced',
    "*",
    "word*",
    "NEAR",
    "NEAR(a b)",
    "AND",
    "OR",
    "NOT",
    "a AND",
    "(",
    ")",
    "text:word",
    "-",
    "^start",
    "a & b | !c",
    "'",
    ":*",
    "",
    "   ",
]


def entry_xml(item_id: str, text: str) -> str:
    """Return the XML of a pubsub <item/> holding an Atom entry whose title is ``text``."""
    return (
        f'<item id="{item_id}"><entry xmlns="{ATOM}">'
        f"<title>{text}</title></entry></item>"
    )


async def _sqlite_integrity_check(storage: Storage) -> None:
    async with storage.engine.connect() as connection:
        # Raises "database disk image is malformed" when the index does not
        # match the content table (rank 1 compares with the content).
        await connection.exec_driver_sql(
            f"INSERT INTO {fulltext.SQLITE_FTS_TABLE}({fulltext.SQLITE_FTS_TABLE}, rank) "
            f"VALUES ('integrity-check', 1)"
        )


async def _sqlite_index_size(storage: Storage) -> int:
    async with storage.engine.connect() as connection:
        result = await connection.exec_driver_sql(
            f"SELECT count(*) FROM {fulltext.SQLITE_FTS_TABLE}_docsize"
        )
        return result.scalar_one()


async def check_index(storage: Storage) -> None:
    """Fail when the SQLite index differs from the stored text (no-op on PostgreSQL)."""
    if storage.engine.dialect.name == "sqlite":
        await as_deferred(_sqlite_integrity_check(storage))


async def index_size(storage: Storage) -> int | None:
    """Return the number of documents in the SQLite index, None on PostgreSQL."""
    if storage.engine.dialect.name != "sqlite":
        return None
    return await as_deferred(_sqlite_index_size(storage))


@pytest_twisted.async_fixture
async def profile(storage: Storage) -> Profile:
    """Return a new profile called alice."""
    return await storage.create_profile("alice", "alice@example.org", "secret")


@pytest_twisted.async_fixture
async def node(storage: Storage, profile: Profile) -> PubsubNode:
    """Return a new cached node of alice."""
    return await storage.set_pubsub_node(profile.id, SERVICE, NODE)


async def store(storage: Storage, node: PubsubNode, item_id: str, text: str) -> None:
    """Store an item whose entry title is ``text``."""
    await storage.cache_pubsub_items(node.id, [(item_id, entry_xml(item_id, text), None, None)])


class ItemTextTests:
    """Text extraction from item XML."""

    def test_text_nodes(self) -> None:
        xml = (
            f'<item id="1"><entry xmlns="{ATOM}"><title>Hello</title>'
            f"<content>wide\n\t  world</content></entry></item>"
        )
        assert item_text(xml) == "Hello wide world"

    def test_no_tag_names(self) -> None:
        text = item_text('<item id="1"><secretTag><other>visible</other></secretTag></item>')
        assert text == "visible"

    def test_no_attribute_values(self) -> None:
        xml = f'<item id="one"><entry xmlns="{ATOM}"><link href="hidden"/>shown</entry></item>'
        text = item_text(xml)
        assert text == "shown"

    def test_elements_separate_words(self) -> None:
        assert item_text("<item><a>first</a><b>second</b></item>") == "first second"

    def test_xhtml_inline_joins(self) -> None:
        xml = (
            '<item><div xmlns="http://www.w3.org/1999/xhtml">'
            "<p>bold<b>er</b> text</p><p>next</p></div></item>"
        )
        assert item_text(xml) == "bolder text next"

    def test_atom_html_tags_removed(self) -> None:
        xml = (
            f'<item><entry xmlns="{ATOM}"><content type="html">'
            f"&lt;p class=&quot;hidden&quot;&gt;Hello &lt;em&gt;you&lt;/em&gt;&lt;/p&gt;"
            f"&lt;script&gt;ignored()&lt;/script&gt;</content></entry></item>"
        )
        assert item_text(xml) == "Hello you"

    def test_entities_and_cdata(self) -> None:
        assert item_text("<item><a>caf&#233; &amp; <![CDATA[<tea>]]></a></item>") == "café & <tea>"

    @pytest.mark.parametrize(
        "xml",
        ["", "not xml", "<item><a>unclosed</item>", "<item>", "\x00", "<a/><b/>"],
    )
    def test_malformed(self, xml: str) -> None:
        assert item_text(xml) == ""

    def test_doctype_rejected(self) -> None:
        xml = '<!DOCTYPE item [<!ENTITY word "expanded">]><item>&word;</item>'
        assert item_text(xml) == ""


class SearchWordsTests:
    """Folding of text into the words of the PostgreSQL index."""

    def test_diacritics_removed(self) -> None:
        assert fulltext.search_words("Café NAÏVE e\u0301te") == ["cafe", "naive", "ete"]

    def test_punctuation_splits(self) -> None:
        assert fulltext.search_words("pubsub-cache v1.2 it's a_b") == [
            "pubsub", "cache", "v1", "2", "it", "s", "a", "b",
        ]  # fmt: skip

    def test_long_text_cut(self) -> None:
        text = "word " * 100_000
        folded = fulltext.search_text(text)
        assert len(folded.encode()) <= fulltext.PG_MAX_SEARCH_TEXT_BYTES
        assert folded.endswith("word")

    def test_fts5_query_quotes(self) -> None:
        assert fulltext.fts5_query('say "hi" * NEAR') == '"say" """hi""" "NEAR"'

    def test_fts5_query_empty(self) -> None:
        assert fulltext.fts5_query('" * ( )') is None


class IndexUpdateTests:
    """The index follows inserts, edits and deletions of items."""

    @pytest_twisted.ensureDeferred
    async def test_new_item_found(self, storage: Storage, node: PubsubNode) -> None:
        await store(storage, node, "1", "Cooking with mushrooms")
        await check_index(storage)

        assert await storage.search_item_ids("mushrooms") == [(node.id, "1")]
        assert await storage.search_item_ids("COOKING Mushrooms") == [(node.id, "1")]

    @pytest_twisted.ensureDeferred
    async def test_all_words_required(self, storage: Storage, node: PubsubNode) -> None:
        await store(storage, node, "1", "red apple")
        await store(storage, node, "2", "green apple")

        assert await storage.search_item_ids("apple red") == [(node.id, "1")]
        assert await storage.search_item_ids("apple blue") == []

    @pytest_twisted.ensureDeferred
    async def test_markup_not_indexed(self, storage: Storage, node: PubsubNode) -> None:
        xml = (
            f'<item id="1"><entry xmlns="{ATOM}"><secretTag label="hiddenvalue">'
            f"visible</secretTag></entry></item>"
        )
        await storage.cache_pubsub_items(node.id, [("1", xml, None, None)])

        assert await storage.search_item_ids("visible") == [(node.id, "1")]
        assert await storage.search_item_ids("secretTag") == []
        assert await storage.search_item_ids("hiddenvalue") == []
        assert await storage.search_item_ids("entry") == []
        assert await storage.search_item_ids("item") == []

    @pytest_twisted.ensureDeferred
    async def test_edit_replaces_words(self, storage: Storage, node: PubsubNode) -> None:
        await store(storage, node, "1", "draft about turtles")
        await store(storage, node, "1", "final about dolphins")
        await check_index(storage)

        assert await storage.search_item_ids("turtles") == []
        assert await storage.search_item_ids("draft") == []
        assert await storage.search_item_ids("dolphins") == [(node.id, "1")]
        assert await storage.search_item_ids("about") == [(node.id, "1")]
        assert await index_size(storage) in (1, None)

    @pytest_twisted.ensureDeferred
    async def test_same_text_stored_again(self, storage: Storage, node: PubsubNode) -> None:
        await store(storage, node, "1", "unchanged words")
        await store(storage, node, "1", "unchanged words")
        await check_index(storage)

        assert await storage.search_item_ids("unchanged") == [(node.id, "1")]

    @pytest_twisted.ensureDeferred
    async def test_batch_with_edits(self, storage: Storage, node: PubsubNode) -> None:
        await store(storage, node, "1", "alpha")
        await storage.cache_pubsub_items(
            node.id,
            [
                ("1", entry_xml("1", "beta"), None, None),
                ("2", entry_xml("2", "beta gamma"), None, None),
                ("2", entry_xml("2", "beta delta"), None, None),
            ],
        )
        await check_index(storage)

        assert await storage.search_item_ids("alpha") == []
        assert await storage.search_item_ids("gamma") == []
        assert await storage.search_item_ids("beta") == [(node.id, "2"), (node.id, "1")]
        assert await storage.search_item_ids("delta") == [(node.id, "2")]

    @pytest_twisted.ensureDeferred
    async def test_delete_items(self, storage: Storage, node: PubsubNode) -> None:
        await store(storage, node, "1", "ephemeral note")
        await store(storage, node, "2", "lasting note")
        await storage.delete_pubsub_items(node.id, ["1"])
        await check_index(storage)

        assert await storage.search_item_ids("ephemeral") == []
        assert await storage.search_item_ids("note") == [(node.id, "2")]

    @pytest_twisted.ensureDeferred
    async def test_purge(self, storage: Storage, node: PubsubNode) -> None:
        await store(storage, node, "1", "purged note")
        await store(storage, node, "2", "purged too")
        await storage.delete_pubsub_items(node.id, None)
        await check_index(storage)

        assert await storage.search_item_ids("purged") == []
        assert await index_size(storage) in (0, None)

    @pytest_twisted.ensureDeferred
    async def test_node_deletion(self, storage: Storage, node: PubsubNode) -> None:
        await store(storage, node, "1", "cascaded away")
        await storage.delete_pubsub_node(node.profile_id, SERVICE, NODE)
        await check_index(storage)

        assert await storage.search_item_ids("cascaded") == []
        assert await index_size(storage) in (0, None)

    @pytest_twisted.ensureDeferred
    async def test_profile_deletion(self, storage: Storage, profile: Profile) -> None:
        node = await storage.set_pubsub_node(profile.id, SERVICE, NODE)
        await store(storage, node, "1", "cascaded twice")
        await storage.delete_profile(profile.name)
        await check_index(storage)

        assert await storage.search_item_ids("cascaded") == []
        assert await index_size(storage) in (0, None)

    @pytest_twisted.ensureDeferred
    async def test_malformed_item_stored(self, storage: Storage, node: PubsubNode) -> None:
        await storage.cache_pubsub_items(node.id, [("1", "<item><broken", None, None)])
        await check_index(storage)

        assert await storage.count_pubsub_items(node.id) == 1
        assert await storage.search_item_ids("broken") == []


class SearchTests:
    """Queries: diacritics, user input, filters."""

    @pytest_twisted.ensureDeferred
    async def test_diacritics_ignored_in_query(self, storage: Storage, node: PubsubNode) -> None:
        await store(storage, node, "1", "Un café à Noël")

        assert await storage.search_item_ids("cafe") == [(node.id, "1")]
        assert await storage.search_item_ids("noel a") == [(node.id, "1")]

    @pytest_twisted.ensureDeferred
    async def test_diacritics_ignored_in_text(self, storage: Storage, node: PubsubNode) -> None:
        await store(storage, node, "1", "cafe noel")

        assert await storage.search_item_ids("CAFÉ") == [(node.id, "1")]
        assert await storage.search_item_ids("Noël") == [(node.id, "1")]

    @pytest_twisted.ensureDeferred
    @pytest.mark.parametrize("words", HOSTILE_INPUTS)
    async def test_hostile_input(self, storage: Storage, node: PubsubNode, words: str) -> None:
        await store(storage, node, "1", "plain text")

        assert await storage.search_item_ids(words) == []

    @pytest_twisted.ensureDeferred
    @pytest.mark.parametrize(
        ("words", "expected"),
        [
            ("pubsub-cache", ["1"]),
            ("v1.2", ["2"]),
            ("it's", ["3"]),
            ("NEAR", ["4"]),
            ("AND near", ["4"]),
            ('"pubsub', ["1"]),
            ("cache*", ["1"]),
            ("(v1.2)", ["2"]),
            ("cache-pubsub", []),
            ("v2.1", []),
        ],
    )
    async def test_punctuated_words(
        self, storage: Storage, node: PubsubNode, words: str, expected: list[str]
    ) -> None:
        await store(storage, node, "1", "the pubsub-cache plugin")
        await store(storage, node, "2", "release v1.2 is out")
        await store(storage, node, "3", "it's here")
        await store(storage, node, "4", "near AND far")

        found = await storage.search_item_ids(words)

        assert [item_id for _, item_id in found] == expected

    @pytest_twisted.ensureDeferred
    async def test_node_filter(self, storage: Storage, node: PubsubNode) -> None:
        other = await storage.set_pubsub_node(node.profile_id, SERVICE, "other")
        await store(storage, node, "1", "shared word")
        await store(storage, other, "1", "shared word")

        assert await storage.search_item_ids("shared", node_id=other.id) == [(other.id, "1")]
        assert len(await storage.search_item_ids("shared")) == 2

    @pytest_twisted.ensureDeferred
    async def test_limit_newest_first(self, storage: Storage, node: PubsubNode) -> None:
        for item_id in ("1", "2", "3"):
            await store(storage, node, item_id, "common")

        assert await storage.search_item_ids("common", limit=2) == [
            (node.id, "3"),
            (node.id, "2"),
        ]
        assert await storage.search_item_ids("common", limit=0) == []


async def _search_plan(storage: Storage, words: str, node_id: int | None) -> list[str]:
    query = storage._search_query(words, node_id, 100)
    assert query is not None
    sql = str(query.compile(dialect=storage.engine.dialect, compile_kwargs={"literal_binds": True}))
    async with storage.engine.connect() as connection:
        if storage.engine.dialect.name == "sqlite":
            rows = await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
            return [row[3] for row in rows]
        # The tables of a test are tiny, so PostgreSQL would scan them
        # anyway: forbidding scans shows whether the index can serve the query.
        await connection.exec_driver_sql("SET enable_seqscan = off")
        rows = await connection.exec_driver_sql(f"EXPLAIN {sql}")
        return [row[0].strip() for row in rows]


class QueryPlanTests:
    """Searches read the full-text index, not every item."""

    @pytest_twisted.ensureDeferred
    @pytest.mark.parametrize("in_node", [False, True])
    async def test_index_used(self, storage: Storage, node: PubsubNode, in_node: bool) -> None:
        await store(storage, node, "1", "indexed words")

        plan = await as_deferred(
            _search_plan(storage, "indexed words", node.id if in_node else None)
        )

        if storage.engine.dialect.name == "sqlite":
            fts_search = f"SCAN {fulltext.SQLITE_FTS_TABLE} VIRTUAL TABLE INDEX 0:M"
            assert any(line.startswith(fts_search) for line in plan), plan
            assert "SCAN pubsub_items" not in plan
        else:
            assert not any("Seq Scan" in line for line in plan), plan
            # PostgreSQL may also walk the items by a time index and stop at
            # the first matches when it expects many of them, as on this table
            # without statistics. test_query_plans checks the choice on a
            # loaded table.
            assert any(
                fulltext.PG_VECTOR_INDEX in line or "Index Scan" in line for line in plan
            ), plan


# Migrations.


async def _run_alembic(url: str, operation: Callable[[Config], None]) -> None:
    engine = create_storage_engine(url, poolclass=NullPool)
    try:
        async with migration_engine(engine).connect() as connection:
            async with connection.begin():
                await connection.run_sync(lambda sync: operation(alembic_config(sync)))
            # Its SQLite foreign keys are off (see migration_engine()).
            await connection.invalidate()
    finally:
        await engine.dispose()


async def migrate(url: str, revision: str, downgrade: bool = False) -> None:
    """Upgrade or downgrade the database ``url`` to ``revision``."""

    def run(config: Config) -> None:
        if downgrade:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)

    await as_deferred(_run_alembic(url, run))


async def _insert_old_rows(url: str, texts: dict[str, str]) -> None:
    # Only columns of the previous revision are given: the mapping's text
    # columns have no default, so they are left out of the INSERT.
    now = datetime.now(timezone.utc)
    engine = create_storage_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            profile_id = (
                await connection.execute(
                    insert(Profile.__table__)
                    .values(name="alice", jid="alice@example.org", password="secret")
                    .returning(Profile.__table__.c.id)
                )
            ).scalar_one()
            node_id = (
                await connection.execute(
                    insert(PubsubNode.__table__)
                    .values(profile_id=profile_id, service=SERVICE, name=NODE)
                    .returning(PubsubNode.__table__.c.id)
                )
            ).scalar_one()
            for item_id, text in texts.items():
                await connection.execute(
                    insert(PubsubItem.__table__).values(
                        node_id=node_id,
                        name=item_id,
                        data=entry_xml(item_id, text),
                        created=now,
                        updated=now,
                    )
                )
    finally:
        await engine.dispose()


async def _column_names(url: str) -> set[str]:
    engine = create_storage_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda sync: inspect(sync).get_columns("pubsub_items")
            )
            return {column["name"] for column in columns}
    finally:
        await engine.dispose()


async def _table_names(url: str) -> set[str]:
    engine = create_storage_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


class MigrationTests:
    """The revision that adds the index, both ways."""

    @pytest_twisted.ensureDeferred
    async def test_backfill(self, db_url: str) -> None:
        storage = Storage(db_url)
        await storage.initialise()
        await storage.close()
        await migrate(db_url, PREVIOUS_REVISION, downgrade=True)
        await as_deferred(
            _insert_old_rows(db_url, {"1": "legacy crème brûlée", "2": "legacy soup"})
        )

        storage = Storage(db_url)
        await storage.initialise()
        try:
            await check_index(storage)
            brulee = await storage.search_item_ids("creme brulee")
            legacy = await storage.search_item_ids("legacy")
            nodes = await storage.get_pubsub_nodes()
            items = await storage.get_pubsub_items(nodes[0].id)
        finally:
            await storage.close()

        assert [item_id for _, item_id in brulee] == ["1"]
        assert sorted(item_id for _, item_id in legacy) == ["1", "2"]
        assert {item.name: item.text for item in items} == {
            "1": "legacy crème brûlée",
            "2": "legacy soup",
        }

    @pytest_twisted.ensureDeferred
    async def test_downgrade_removes_index(self, db_url: str) -> None:
        storage = Storage(db_url)
        await storage.initialise()
        await storage.close()

        await migrate(db_url, PREVIOUS_REVISION, downgrade=True)
        columns = await as_deferred(_column_names(db_url))
        tables = await as_deferred(_table_names(db_url))

        assert "text" not in columns
        assert "search_text" not in columns
        assert fulltext.PG_VECTOR_COLUMN not in columns
        assert not any(name.startswith(fulltext.SQLITE_FTS_TABLE) for name in tables)

    @pytest_twisted.ensureDeferred
    async def test_downgrade_then_upgrade(self, db_url: str) -> None:
        storage = Storage(db_url)
        await storage.initialise()
        profile = await storage.create_profile("alice", "alice@example.org", "secret")
        node = await storage.set_pubsub_node(profile.id, SERVICE, NODE)
        await store(storage, node, "1", "survivor")
        await storage.close()

        await migrate(db_url, PREVIOUS_REVISION, downgrade=True)
        await migrate(db_url, "head")

        storage = Storage(db_url)
        await storage.initialise()
        try:
            await check_index(storage)
            found = await storage.search_item_ids("survivor")
        finally:
            await storage.close()

        assert found == [(node.id, "1")]


async def _rebuild_items_table(url: str, recreate_triggers: bool) -> None:
    engine = create_storage_engine(url, poolclass=NullPool)
    try:
        # The connection the backend gives to migrations: foreign keys off
        # (dropping the old table would cascade deletes otherwise) and the
        # write lock taken at BEGIN.
        async with migration_engine(engine).connect() as connection:
            async with connection.begin():
                await connection.run_sync(_rebuild, recreate_triggers)
            await connection.invalidate()
    finally:
        await engine.dispose()


async def rebuild_items_table(url: str, recreate_triggers: bool) -> None:
    """Recreate ``pubsub_items`` as an SQLite batch migration does."""
    await as_deferred(_rebuild_items_table(url, recreate_triggers))


def _rebuild(connection: Connection, recreate_triggers: bool) -> None:
    operations = Operations(MigrationContext.configure(connection))
    with operations.batch_alter_table("pubsub_items", recreate="always") as batch_op:
        batch_op.alter_column("publisher", existing_type=sa.String(), nullable=True)
    if recreate_triggers:
        fulltext.create_sqlite_fts_triggers(operations)


def sqlite_triggers(path: Path) -> set[str]:
    """Return the names of the triggers of the SQLite file ``path``."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            ).all()
            return {row[0] for row in rows}
    finally:
        engine.dispose()


class BatchRebuildTests:
    """An SQLite batch migration that recreates pubsub_items keeps the index working."""

    async def _rebuilt_storage(
        self, tmp_path: Path, recreate_triggers: bool
    ) -> tuple[Storage, int]:
        path = tmp_path / "libervia.db"
        storage = Storage(f"sqlite+aiosqlite:///{path}")
        await storage.initialise()
        profile = await storage.create_profile("alice", "alice@example.org", "secret")
        node = await storage.set_pubsub_node(profile.id, SERVICE, NODE)
        await store(storage, node, "old", "before rebuild")
        await store(storage, node, "edited", "original wording")
        await store(storage, node, "gone", "doomed words")
        await storage.close()

        await rebuild_items_table(f"sqlite+aiosqlite:///{path}", recreate_triggers)

        storage = Storage(f"sqlite+aiosqlite:///{path}")
        await storage.initialise()
        return storage, node.id

    @pytest_twisted.ensureDeferred
    async def test_triggers_recreated(self, tmp_path: Path) -> None:
        storage, _ = await self._rebuilt_storage(tmp_path, recreate_triggers=True)
        await storage.close()

        assert sqlite_triggers(tmp_path / "libervia.db") == set(fulltext.SQLITE_FTS_TRIGGERS)

    @pytest_twisted.ensureDeferred
    async def test_index_updates_after_rebuild(self, tmp_path: Path) -> None:
        storage, node_id = await self._rebuilt_storage(tmp_path, recreate_triggers=True)
        try:
            nodes = await storage.get_pubsub_nodes()
            await store(storage, nodes[0], "new", "after rebuild")
            await store(storage, nodes[0], "edited", "revised wording")
            await storage.delete_pubsub_items(node_id, ["gone"])
            await check_index(storage)
            before = await storage.search_item_ids("before")
            after = await storage.search_item_ids("after")
            original = await storage.search_item_ids("original")
            revised = await storage.search_item_ids("revised")
            doomed = await storage.search_item_ids("doomed")
        finally:
            await storage.close()

        assert before == [(node_id, "old")]
        assert after == [(node_id, "new")]
        assert original == []
        assert revised == [(node_id, "edited")]
        assert doomed == []

    @pytest_twisted.ensureDeferred
    async def test_rebuild_drops_triggers(self, tmp_path: Path) -> None:
        # Without create_sqlite_fts_triggers(), the index stops following
        # the table: the reason a batch migration must call it.
        storage, _ = await self._rebuilt_storage(tmp_path, recreate_triggers=False)
        try:
            nodes = await storage.get_pubsub_nodes()
            await store(storage, nodes[0], "new", "unindexed")
            unindexed = await storage.search_item_ids("unindexed")
        finally:
            await storage.close()

        assert sqlite_triggers(tmp_path / "libervia.db") == set()
        assert unindexed == []


class SchemaFilterTests:
    """The Alembic filters skip the parts of the index that are not mapped."""

    @pytest.mark.parametrize(
        ("name", "type_", "table_name"),
        [
            ("pubsub_items_fts", "table", None),
            ("pubsub_items_fts_data", "table", None),
            ("pubsub_items_fts_config", "table", None),
            (fulltext.PG_VECTOR_COLUMN, "column", "pubsub_items"),
            (fulltext.PG_VECTOR_INDEX, "index", "pubsub_items"),
        ],
    )
    def test_skipped(self, name: str, type_: str, table_name: str | None) -> None:
        assert not fulltext.include_name(name, type_, {"table_name": table_name})

    @pytest.mark.parametrize(
        ("name", "type_", "table_name"),
        [
            ("pubsub_items", "table", None),
            ("text", "column", "pubsub_items"),
            ("search_text", "column", "pubsub_items"),
            ("ix_pubsub_items_node_id_created_id", "index", "pubsub_items"),
        ],
    )
    def test_kept(self, name: str, type_: str, table_name: str | None) -> None:
        assert fulltext.include_name(name, type_, {"table_name": table_name})
