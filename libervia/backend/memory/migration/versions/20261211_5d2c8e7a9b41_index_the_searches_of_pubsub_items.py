"""Index the searches of pubsub items

Revision ID: 5d2c8e7a9b41
Revises: afcbfd183f23
Create Date: 2026-12-11 10:00:00

Adds the indexes that the search of cached items
(``libervia.backend.memory.search``) reads:

- ``(created, id)`` and ``(updated, id)`` over every node, for searches
  ordered by time across the nodes of a profile;
- the value of ``published`` in the parsed data, as numbers then strings,
  for date filters and orders, written with the exact expressions that the
  search builds for ``search.INDEXED_PATHS``;
- on PostgreSQL, a GIN index on ``parsed`` (``jsonb_path_ops``) for the
  containment tests (``parsed @> ...``) that the search adds to equality and
  overlap filters on strings and booleans.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5d2c8e7a9b41"
down_revision: str | Sequence[str] | None = "afcbfd183f23"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PUBLISHED_INDEX = "ix_pubsub_items_parsed_published"
PARSED_INDEX = "ix_pubsub_items_parsed"

# The search's number and string views of parsed["published"]: an SQLite
# index serves only a query with the same expression tree.
SQLITE_PUBLISHED_INDEX = (
    f"CREATE INDEX {PUBLISHED_INDEX} ON pubsub_items ("
    "(CASE WHEN (json_type(parsed, '$.\"published\"') IN ('integer', 'real')) "
    "THEN (parsed ->> '$.\"published\"') END), "
    "(CASE WHEN (json_type(parsed, '$.\"published\"') = 'text') "
    "THEN (parsed ->> '$.\"published\"') END))"
)
# Descending with NULLs last, as the search orders dates newest first, so a
# forward scan returns the page. A backward scan serves ascending orders
# with NULLs first only. The row id breaks ties, as in the search's order.
PG_PUBLISHED_INDEX = (
    f"CREATE INDEX {PUBLISHED_INDEX} ON pubsub_items ("
    "(CASE WHEN (jsonb_typeof((parsed -> 'published')) = 'number') "
    "THEN CAST((parsed -> 'published') AS FLOAT) END) DESC NULLS LAST, "
    "(CASE WHEN (jsonb_typeof((parsed -> 'published')) = 'string') "
    "THEN ((parsed -> 'published') #>> '{}'::text[]) END COLLATE \"C\") DESC NULLS LAST, "
    "id DESC)"
)
PG_PARSED_INDEX = (
    f"CREATE INDEX {PARSED_INDEX} ON pubsub_items USING gin (parsed jsonb_path_ops)"
)


def upgrade() -> None:
    """Create the indexes of the search."""
    op.create_index("ix_pubsub_items_created_id", "pubsub_items", ["created", "id"])
    op.create_index("ix_pubsub_items_updated_id", "pubsub_items", ["updated", "id"])
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        op.execute(SQLITE_PUBLISHED_INDEX)
    elif dialect == "postgresql":
        op.execute(PG_PUBLISHED_INDEX)
        op.execute(PG_PARSED_INDEX)
        # The planner has no statistics on the indexed expressions until the
        # table is analysed, and autovacuum analyses only after many writes.
        op.execute("ANALYZE pubsub_items")
    else:
        raise NotImplementedError(
            f"search indexes not implemented for {dialect} databases: use SQLite or PostgreSQL"
        )


def downgrade() -> None:
    """Drop the indexes of the search."""
    op.execute(f"DROP INDEX IF EXISTS {PUBLISHED_INDEX}")
    op.execute(f"DROP INDEX IF EXISTS {PARSED_INDEX}")
    op.drop_index("ix_pubsub_items_updated_id", table_name="pubsub_items")
    op.drop_index("ix_pubsub_items_created_id", table_name="pubsub_items")
