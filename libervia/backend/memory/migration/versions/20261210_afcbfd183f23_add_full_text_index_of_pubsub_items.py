"""Add the full-text index of pubsub items

Revision ID: afcbfd183f23
Revises: b1706904027b
Create Date: 2026-12-10 10:00:00

Adds ``pubsub_items.text`` and ``pubsub_items.search_text``, fills them for
the items already cached, and indexes them: an FTS5 table kept by triggers on
SQLite, a generated ``tsvector`` column with a GIN index on PostgreSQL.
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

# The back-fill must extract text exactly as the backend does when it stores
# an item, hence this import. item_text() and search_text() keep their
# signatures for this revision's sake.
from libervia.backend.memory import fulltext

revision: str = "afcbfd183f23"
down_revision: str | Sequence[str] | None = "b1706904027b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger(__name__)

# Items read and updated per round trip during the back-fill.
BACKFILL_BATCH_SIZE = 1000


def backfill_text(connection: sa.Connection, with_search_text: bool) -> int:
    """Fill ``text`` (and ``search_text`` if asked) of every item and return the number of items.

    Items are read by increasing id in batches, so memory use does not grow
    with the size of the cache.
    """
    select_batch = sa.text(
        "SELECT id, data FROM pubsub_items WHERE id > :last_id ORDER BY id LIMIT :size"
    )
    update_item = sa.text(
        "UPDATE pubsub_items SET text = :text, search_text = :search_text WHERE id = :item_id"
    )
    last_id = 0
    count = 0
    while True:
        rows = connection.execute(
            select_batch, {"last_id": last_id, "size": BACKFILL_BATCH_SIZE}
        ).all()
        if not rows:
            return count
        values = []
        for item_id, data in rows:
            text = fulltext.item_text(data)
            values.append(
                {
                    "item_id": item_id,
                    "text": text,
                    "search_text": fulltext.search_text(text) if with_search_text else None,
                }
            )
        connection.execute(update_item, values)
        count += len(rows)
        last_id = rows[-1][0]


def backfill(with_search_text: bool) -> None:
    """Back-fill the new columns, unless the migration only prints its SQL."""
    if context.is_offline_mode():
        log.warning(
            "Offline migration: the text of items already cached is not filled, "
            "so they are missing from the full-text index"
        )
        return
    count = backfill_text(op.get_bind(), with_search_text)
    log.info("Extracted the text of %d cached pubsub items for the full-text index", count)


def upgrade() -> None:
    """Add the text columns, fill them and build the full-text index."""
    op.add_column("pubsub_items", sa.Column("text", sa.Text(), nullable=True))
    op.add_column("pubsub_items", sa.Column("search_text", sa.Text(), nullable=True))

    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        op.execute(fulltext.SQLITE_FTS_DDL)
        backfill(with_search_text=False)
        # One pass over the filled rows, cheaper than a trigger per update.
        op.execute(
            f"INSERT INTO {fulltext.SQLITE_FTS_TABLE}({fulltext.SQLITE_FTS_TABLE}) "
            f"VALUES ('rebuild')"
        )
        fulltext.create_sqlite_fts_triggers(op)
    elif dialect == "postgresql":
        backfill(with_search_text=True)
        # Added after the back-fill, so each vector is computed once, when
        # the column is added.
        op.add_column(
            "pubsub_items",
            sa.Column(
                fulltext.PG_VECTOR_COLUMN,
                postgresql.TSVECTOR(),
                sa.Computed(
                    f"to_tsvector('{fulltext.PG_TS_CONFIG}'::regconfig, "
                    f"coalesce(search_text, ''))",
                    persisted=True,
                ),
                nullable=True,
            ),
        )
        op.create_index(
            fulltext.PG_VECTOR_INDEX,
            "pubsub_items",
            [fulltext.PG_VECTOR_COLUMN],
            postgresql_using="gin",
        )
    else:
        raise NotImplementedError(
            f"full-text index not implemented for {dialect} databases: use SQLite or PostgreSQL"
        )


def downgrade() -> None:
    """Drop the full-text index and the text columns."""
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        fulltext.drop_sqlite_fts_triggers(op)
        op.execute(f"DROP TABLE IF EXISTS {fulltext.SQLITE_FTS_TABLE}")
    elif dialect == "postgresql":
        op.drop_index(fulltext.PG_VECTOR_INDEX, table_name="pubsub_items")
        op.drop_column("pubsub_items", fulltext.PG_VECTOR_COLUMN)

    with op.batch_alter_table("pubsub_items") as batch_op:
        batch_op.drop_column("search_text")
        batch_op.drop_column("text")
