"""Create the profiles and pubsub cache tables

Revision ID: b1706904027b
Revises:
Create Date: 2026-12-04 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "b1706904027b"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Values of libervia.backend.memory.sqla_mapping.SyncState when this revision
# was written (a revision must not import the mapping, which changes later).
SYNC_STATES = ("IN_PROGRESS", "COMPLETED", "ERROR", "NO_SYNC")


def json_document() -> sa.types.TypeEngine:
    """Return the type of a JSON column: JSONB on PostgreSQL, JSON text elsewhere."""
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create the profiles, pubsub_nodes and pubsub_items tables."""
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("jid", sa.String(), nullable=False),
        sa.Column("password", sa.String(), nullable=False),
        sa.Column("params", json_document(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profiles")),
        sa.UniqueConstraint("name", name=op.f("uq_profiles_name")),
    )

    op.create_table(
        "pubsub_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("analyser", sa.String(), nullable=True),
        sa.Column("type", sa.String(), nullable=True),
        sa.Column("subtype", sa.String(), nullable=True),
        sa.Column(
            "sync_state",
            sa.Enum(
                *SYNC_STATES,
                name="sync_state",
                native_enum=False,
                create_constraint=False,
                length=20,
            ),
            nullable=True,
        ),
        sa.Column("sync_state_updated", sa.DateTime(timezone=True), nullable=True),
        sa.Column("extra", json_document(), nullable=True),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["profiles.id"],
            name=op.f("fk_pubsub_nodes_profile_id_profiles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pubsub_nodes")),
        sa.UniqueConstraint(
            "profile_id",
            "service",
            "name",
            name=op.f("uq_pubsub_nodes_profile_id_service_name"),
        ),
    )

    op.create_table(
        "pubsub_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("parsed", json_document(), nullable=True),
        sa.Column("publisher", sa.String(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["pubsub_nodes.id"],
            name=op.f("fk_pubsub_items_node_id_pubsub_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pubsub_items")),
        sa.UniqueConstraint("node_id", "name", name=op.f("uq_pubsub_items_node_id_name")),
    )
    op.create_index(
        "ix_pubsub_items_node_id_created_id",
        "pubsub_items",
        ["node_id", "created", "id"],
        unique=False,
    )
    op.create_index(
        "ix_pubsub_items_node_id_updated_id",
        "pubsub_items",
        ["node_id", "updated", "id"],
        unique=False,
    )


def downgrade() -> None:
    """Drop the tables created by upgrade(), children first."""
    op.drop_index("ix_pubsub_items_node_id_updated_id", table_name="pubsub_items")
    op.drop_index("ix_pubsub_items_node_id_created_id", table_name="pubsub_items")
    op.drop_table("pubsub_items")
    op.drop_table("pubsub_nodes")
    op.drop_table("profiles")
