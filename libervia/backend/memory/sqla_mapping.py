"""ORM mapping of the backend database: profiles and the pubsub cache.

Alembic owns the schema: any change here needs a new revision in
``migration/versions`` (``alembic revision --autogenerate`` drafts it, see
``migration/alembic.ini``).
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from libervia.backend.core import constants as C

# Explicit constraint names let Alembic batch migrations on SQLite find the
# constraints of a table it recreates, and keep names equal on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamp stored in UTC and always read back as an aware UTC datetime.

    SQLite keeps no time zone, so values are converted to UTC before storage
    and tagged as UTC when loaded. Naive values are rejected rather than
    guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to UTC, raise ValueError on a naive one."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Tag a loaded datetime as UTC (SQLite returns naive values)."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# JSON documents are JSONB on PostgreSQL: stored parsed, so they can be indexed
# and queried by path without parsing each row again. SQLite keeps JSON text.
JSON_DOCUMENT = JSON().with_variant(JSONB(), "postgresql")
# The same, for columns where Python None means SQL NULL rather than JSON null.
NULLABLE_JSON_DOCUMENT = JSON(none_as_null=True).with_variant(
    JSONB(none_as_null=True), "postgresql"
)


class Base(DeclarativeBase):
    """Declarative base of every mapped class of the backend."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SyncState(enum.Enum):
    """Synchronisation state of a cached pubsub node."""

    IN_PROGRESS = C.SYNC_IN_PROGRESS
    COMPLETED = C.SYNC_COMPLETED
    ERROR = C.SYNC_ERROR
    NO_SYNC = C.SYNC_NO_SYNC


# Stored as plain strings (the enum values), not as a native PostgreSQL type,
# so adding a state only widens the accepted values and needs no type change.
SYNC_STATE_TYPE = Enum(
    SyncState,
    name="sync_state",
    native_enum=False,
    create_constraint=False,
    length=20,
    values_callable=lambda states: [state.value for state in states],
)


class Profile(Base):
    """XMPP account of the user, with its connection parameters."""

    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    jid: Mapped[str] = mapped_column(String)
    # TODO: the password is stored in clear. The database file is created with
    # mode 0600, which protects it from other users only, not from backups or
    # other programs of the same user.
    password: Mapped[str] = mapped_column(String)
    params: Mapped[dict[str, Any]] = mapped_column(JSON_DOCUMENT, default=dict)
    is_default: Mapped[bool] = mapped_column(default=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)

    nodes: Mapped[list[PubsubNode]] = relationship(
        back_populates="profile", passive_deletes=True, lazy="raise"
    )

    def __repr__(self) -> str:
        return f"Profile(id={self.id!r}, name={self.name!r}, jid={self.jid!r})"


class PubsubNode(Base):
    """Pubsub node cached for one profile.

    ``service`` is the JID of the pubsub service as a string (bare or full),
    ``type_`` and ``subtype`` come from the analyser that recognised the node.
    """

    __tablename__ = "pubsub_nodes"
    __table_args__ = (UniqueConstraint("profile_id", "service", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id", ondelete="CASCADE"))
    service: Mapped[str] = mapped_column(String)
    name: Mapped[str] = mapped_column(String)
    analyser: Mapped[str | None] = mapped_column(String)
    type_: Mapped[str | None] = mapped_column("type", String)
    subtype: Mapped[str | None] = mapped_column(String)
    sync_state: Mapped[SyncState | None] = mapped_column(SYNC_STATE_TYPE)
    sync_state_updated: Mapped[datetime | None] = mapped_column(UTCDateTime)
    extra: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON_DOCUMENT)

    profile: Mapped[Profile] = relationship(back_populates="nodes", lazy="raise")
    items: Mapped[list[PubsubItem]] = relationship(
        back_populates="node", passive_deletes=True, lazy="raise"
    )

    def __repr__(self) -> str:
        return (
            f"PubsubNode(id={self.id!r}, profile_id={self.profile_id!r}, "
            f"service={self.service!r}, name={self.name!r})"
        )


class PubsubItem(Base):
    """Cached pubsub item.

    ``data`` is the serialised ``<item/>`` element exactly as received and
    ``parsed`` the optional JSON built from it by the node's parser. ``created``
    and ``updated`` are local times of the cache (first stored, last changed)
    with microseconds, and they order the items. Publication dates live in
    ``parsed``.
    """

    __tablename__ = "pubsub_items"
    __table_args__ = (
        UniqueConstraint("node_id", "name"),
        # Pages of a node, newest first, read in index order. The id breaks
        # ties as in Storage._items_query(), so PostgreSQL needs no sort step.
        Index("ix_pubsub_items_node_id_created_id", "node_id", "created", "id"),
        Index("ix_pubsub_items_node_id_updated_id", "node_id", "updated", "id"),
        # Searches ordered by time across the nodes of a profile.
        Index("ix_pubsub_items_created_id", "created", "id"),
        Index("ix_pubsub_items_updated_id", "updated", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("pubsub_nodes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String)
    data: Mapped[str] = mapped_column(Text)
    parsed: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON_DOCUMENT)
    publisher: Mapped[str | None] = mapped_column(String)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    updated: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    # Full-text index input (see libervia.backend.memory.fulltext): the text
    # of the payload without markup, indexed by FTS5 on SQLite, and on
    # PostgreSQL its folded words, from which the database generates the
    # indexed tsvector column (not mapped). search_text stays NULL on SQLite.
    text: Mapped[str | None] = mapped_column(Text)
    search_text: Mapped[str | None] = mapped_column(Text)

    node: Mapped[PubsubNode] = relationship(back_populates="items", lazy="raise")

    def __repr__(self) -> str:
        return f"PubsubItem(id={self.id!r}, node_id={self.node_id!r}, name={self.name!r})"
