"""Tests of the database schema: creation, upgrades, backups and rejected files.

Every test works on a real SQLite file in ``tmp_path``.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
import pytest_twisted
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine

from libervia.backend.core.exceptions import StorageError
from libervia.backend.memory.sqla import Storage, alembic_config, default_db_url, head_revisions
from libervia.backend.memory.sqla_mapping import Base
from libervia.backend.tools.aio import as_deferred

SCHEMA_TABLES = {"alembic_version", "profiles", "pubsub_nodes", "pubsub_items"}


def storage_url(path: Path) -> str:
    """Return the aiosqlite URL of the database file ``path``."""
    return f"sqlite+aiosqlite:///{path}"


def sync_engine(path: Path) -> Engine:
    """Return a synchronous engine on ``path``, to inspect or migrate it outside Storage."""
    return create_engine(f"sqlite:///{path}")


def current_revisions(path: Path) -> set[str]:
    """Return the Alembic revisions recorded in the database file ``path``."""
    engine = sync_engine(path)
    try:
        with engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


def table_names(path: Path) -> set[str]:
    """Return the names of the tables of the database file ``path``."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    connection.close()
    return {row[0] for row in rows}


def migrate(path: Path, revision: str, downgrade: bool = False) -> None:
    """Upgrade or downgrade the database file ``path`` to ``revision`` with Alembic."""
    engine = sync_engine(path)
    try:
        with engine.begin() as connection:
            config = alembic_config(connection)
            if downgrade:
                command.downgrade(config, revision)
            else:
                command.upgrade(config, revision)
    finally:
        engine.dispose()


async def create_database(path: Path) -> None:
    """Create the database file ``path`` at head, with one profile, and close it."""
    storage = Storage(storage_url(path))
    await storage.initialise()
    await storage.create_profile("alice", "alice@example.org", "secret")
    await storage.close()


class NewDatabaseTests:
    """Creation of a database file that does not exist yet."""

    @pytest_twisted.ensureDeferred
    async def test_created_at_head(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        storage = Storage(storage_url(path))
        await storage.initialise()
        await storage.close()

        assert current_revisions(path) == set(head_revisions())
        assert table_names(path) == SCHEMA_TABLES

    @pytest_twisted.ensureDeferred
    async def test_file_modes(self, tmp_path: Path) -> None:
        path = tmp_path / "data" / "libervia.db"
        storage = Storage(storage_url(path))
        await storage.initialise()
        await storage.close()

        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    @pytest_twisted.ensureDeferred
    async def test_connection_pragmas(self, tmp_path: Path) -> None:
        storage = Storage(storage_url(tmp_path / "libervia.db"))
        await storage.initialise()

        async def read_pragmas() -> dict[str, object]:
            # SQLAlchemy's asyncio API must run in an asyncio task, not in
            # this Twisted-driven coroutine.
            async with storage.engine.connect() as connection:
                return {
                    name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                    for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
                }

        try:
            pragmas = await as_deferred(read_pragmas())
        finally:
            await storage.close()

        assert pragmas["journal_mode"] == "wal"
        assert pragmas["foreign_keys"] == 1
        assert pragmas["busy_timeout"] == 5000
        # 1 is NORMAL.
        assert pragmas["synchronous"] == 1

    def test_default_url_in_data_dir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

        assert default_db_url() == f"sqlite+aiosqlite:///{tmp_path}/libervia/libervia.db"


class ExistingDatabaseTests:
    """Opening and upgrading a database file written before."""

    @pytest_twisted.ensureDeferred
    async def test_reopen_keeps_data(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        await create_database(path)

        storage = Storage(storage_url(path))
        await storage.initialise()
        profile = await storage.get_profile("alice")
        await storage.close()

        assert profile is not None
        assert profile.jid == "alice@example.org"
        assert list(tmp_path.glob("*.bak-*")) == []

    @pytest_twisted.ensureDeferred
    async def test_upgrade_from_base(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        await create_database(path)
        migrate(path, "base", downgrade=True)
        assert current_revisions(path) == set()

        storage = Storage(storage_url(path))
        await storage.initialise()
        profiles = await storage.list_profiles()
        await storage.close()

        assert current_revisions(path) == set(head_revisions())
        assert table_names(path) == SCHEMA_TABLES
        assert profiles == []

    @pytest_twisted.ensureDeferred
    async def test_upgrade_makes_backup(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        await create_database(path)
        migrate(path, "base", downgrade=True)

        storage = Storage(storage_url(path))
        await storage.initialise()
        await storage.close()

        backup = tmp_path / "libervia.db.bak-base"
        assert backup.is_file()
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        assert current_revisions(backup) == set()
        assert table_names(backup) == {"alembic_version"}

    @pytest_twisted.ensureDeferred
    async def test_failed_upgrade_names_backup(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        await create_database(path)
        migrate(path, "base", downgrade=True)

        # Another connection holds the write lock past the busy timeout (5 s),
        # so the upgrade fails.
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        storage = Storage(storage_url(path))
        try:
            with pytest.raises(StorageError) as error:
                await storage.initialise()
        finally:
            locker.execute("ROLLBACK")
            locker.close()

        assert str(path) in str(error.value)
        assert f"{path}.bak-base" in str(error.value)
        assert current_revisions(path) == set()
        assert table_names(path) == {"alembic_version"}

    @pytest_twisted.ensureDeferred
    async def test_existing_backup_kept(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        await create_database(path)
        migrate(path, "base", downgrade=True)
        old_backup = tmp_path / "libervia.db.bak-base"
        old_backup.write_bytes(b"older backup")

        storage = Storage(storage_url(path))
        await storage.initialise()
        await storage.close()

        assert old_backup.read_bytes() == b"older backup"
        assert (tmp_path / "libervia.db.bak-base.1").is_file()


class RejectedDatabaseTests:
    """Files that initialise() must reject without changing them."""

    @pytest_twisted.ensureDeferred
    async def test_not_a_database(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        content = b"this is a text file, not a database\n" * 20
        path.write_bytes(content)

        storage = Storage(storage_url(path))
        with pytest.raises(StorageError) as error:
            await storage.initialise()

        assert str(path) in str(error.value)
        assert path.read_bytes() == content
        assert list(tmp_path.iterdir()) == [path]

    @pytest_twisted.ensureDeferred
    async def test_unknown_revision(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        await create_database(path)
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        connection.close()
        content = path.read_bytes()

        storage = Storage(storage_url(path))
        with pytest.raises(StorageError) as error:
            await storage.initialise()

        assert str(path) in str(error.value)
        assert "ffffffffffff" in str(error.value)
        assert path.read_bytes() == content
        assert list(tmp_path.glob("*.bak-*")) == []

    @pytest_twisted.ensureDeferred
    async def test_foreign_tables(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        connection.close()
        content = path.read_bytes()

        storage = Storage(storage_url(path))
        with pytest.raises(StorageError) as error:
            await storage.initialise()

        assert "notes" in str(error.value)
        assert path.read_bytes() == content


class SchemaTests:
    """Agreement between the migration scripts and the ORM mapping."""

    @pytest_twisted.ensureDeferred
    async def test_head_matches_mapping(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        storage = Storage(storage_url(path))
        await storage.initialise()
        await storage.close()

        engine = sync_engine(path)
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(connection, opts={"compare_type": True})
                differences = compare_metadata(context, Base.metadata)
        finally:
            engine.dispose()

        assert differences == []

    @pytest_twisted.ensureDeferred
    async def test_upgrade_downgrade_cycle(self, tmp_path: Path) -> None:
        path = tmp_path / "libervia.db"
        storage = Storage(storage_url(path))
        await storage.initialise()
        await storage.close()

        migrate(path, "base", downgrade=True)
        assert table_names(path) == {"alembic_version"}

        migrate(path, "head")
        assert current_revisions(path) == set(head_revisions())
        assert table_names(path) == SCHEMA_TABLES
