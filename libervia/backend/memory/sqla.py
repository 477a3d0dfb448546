"""Persistent storage of the backend: profiles and the pubsub cache.

:class:`Storage` is the only place that opens database sessions. Each public
method runs in its own transaction, is decorated with
:func:`~libervia.backend.tools.aio.aio` (so it returns a Deferred), and returns
detached ORM objects whose columns are loaded. Relationships are never loaded
and raise when accessed.

The schema belongs to Alembic (``migration/``). :meth:`Storage.initialise`
creates a new database at the head revision or upgrades an older one, after a
backup copy when the database is an SQLite file.

SQLite connections run in WAL mode with foreign keys on and a busy timeout.
SQLAlchemy emits BEGIN itself (the driver's own transaction handling is off),
so DDL is transactional and write transactions start with ``BEGIN
IMMEDIATE``: a writer takes the write lock before reading, instead of failing
with "database is locked" when it upgrades a read lock held by a concurrent
writer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    Table,
    delete,
    event,
    func,
    inspect,
    select,
    create_engine,
    tuple_,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, NullPool
from sqlalchemy.sql.dml import Insert

from libervia.backend.core import constants as C
from libervia.backend.core import paths
from libervia.backend.core.exceptions import (
    BackendError,
    InvalidValue,
    NotFound,
    ProfileExists,
    ProfileNotFound,
    StorageError,
)
from libervia.backend.memory import fulltext, search, search_execution
from libervia.backend.memory.sqla_mapping import (
    Profile,
    PubsubItem,
    PubsubNode,
    SyncState,
    utc_now,
)
from libervia.backend.tools.aio import aio

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

T = TypeVar("T")

# Alembic finds the migration scripts as package data, so no alembic.ini is
# needed at runtime.
MIGRATION_LOCATION = "libervia.backend.memory:migration"
ALEMBIC_VERSION_TABLE = "alembic_version"
# The head revision of the migration scripts, which test_migrations checks
# against Alembic's. A database at this revision opens without loading the
# scripts: add the revision of each new migration here.
HEAD_REVISION = "5d2c8e7a9b41"

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
    "PRAGMA synchronous=NORMAL",
)

# Execution options read by the SQLite "begin" listener.
BEGIN_MODE_OPTION = "libervia_sqlite_begin"
MIGRATION_OPTION = "libervia_migration"

# Fields of a profile that update_profile() may change (the default profile is
# chosen with set_default_profile()).
PROFILE_UPDATABLE_FIELDS = frozenset({"name", "jid", "password", "params"})

ITEMS_ORDER_FIELDS = frozenset({"created", "updated"})

# Largest number of items that the event loop's thread reads itself from an
# SQLite database (Storage.read_items_xml_now). Larger reads, whose rows
# could hold the loop for milliseconds, go through the async engine.
INLINE_READ_MAX_ITEMS = 200
# Largest number of index entries an inline count walks (a fraction of a
# millisecond).
INLINE_COUNT_MAX_ITEMS = 10000

# Time added between consecutive items of one batch, so that their order
# survives even when the clock does not move between two of them.
ITEM_TIME_STEP = timedelta(microseconds=1)

# First key of the PostgreSQL advisory locks taken on nodes (the second one is
# the node id), so that they differ from locks of other programs sharing the
# database. The value is arbitrary ("LI" in ASCII).
NODE_LOCK_SPACE = 0x4C49
# First key of the session-level advisory locks that a daemon holds on a node
# while it synchronises it, so that two daemons sharing a PostgreSQL database
# never sync the same node at once ("LS" in ASCII).
NODE_SYNC_LOCK_SPACE = 0x4C53

# Rows read at a time by get_pubsub_item_states.
STATE_CHUNK_ROWS = 1000

# Tuple given to cache_pubsub_items(): item id, <item/> XML, parsed data, publisher.
ItemTuple = tuple[str, str, dict[str, Any] | None, str | None]


def default_db_url() -> str:
    """Return the URL of the default SQLite database, in the user's data directory."""
    path = paths.data_dir() / C.DB_FILE_NAME
    return URL.create("sqlite+aiosqlite", database=str(path)).render_as_string()


def alembic_config(connection: Connection | None = None) -> Config:
    """Build the Alembic configuration of the backend database in code.

    With ``connection``, migrations run on that (synchronous) connection and in
    its transaction: this is how :meth:`Storage.initialise` runs them through
    ``AsyncConnection.run_sync``. Without it, ``migration/env.py`` opens the
    database named by ``LIBERVIA_DB_URL`` or the default one.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", MIGRATION_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revisions() -> tuple[str, ...]:
    """Return the head revisions of the migration scripts."""
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def _on_sqlite_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    # Turn off the driver's transaction handling: _on_sqlite_begin emits BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()
    # SQLite's lower() folds ASCII letters only, so the case-insensitive
    # search operators call this function instead.
    dbapi_connection.create_function(
        search.SQLITE_LOWER_FUNCTION, 1, search.sqlite_lower, deterministic=True
    )


def _on_sqlite_begin(connection: Connection) -> None:
    options = connection.get_execution_options()
    if options.get(MIGRATION_OPTION):
        # Batch migrations recreate tables. With foreign keys on, dropping the
        # old copy of a parent table would cascade-delete the rows of its
        # children. The pragma has no effect inside a transaction, hence here,
        # and env.py runs "PRAGMA foreign_key_check" before the commit.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    mode = options.get(BEGIN_MODE_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def create_storage_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """Create an async engine, with the connection settings of the backend for SQLite.

    Parameters of statements are hidden from logs and errors. ``kwargs`` go to :func:`~sqlalchemy.ext.asyncio.create_async_engine`.
    """
    # Statement parameters would otherwise appear in logs and in error
    # messages, and they include profile passwords.
    kwargs.setdefault("hide_parameters", True)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
    return engine


def migration_engine(engine: AsyncEngine) -> AsyncEngine:
    """Return a view of ``engine`` whose connections are set up to run migrations.

    On SQLite their transactions take the write lock up front and run with
    foreign keys off. The pragma stays off on the connection after the
    transaction, so callers must invalidate that connection afterwards
    instead of returning it to the pool.
    """
    return engine.execution_options(**{MIGRATION_OPTION: True, BEGIN_MODE_OPTION: "IMMEDIATE"})


@dataclass(frozen=True)
class SchemaState:
    """Revisions and tables found in a database before migrating it."""

    revisions: tuple[str, ...]
    tables: frozenset[str]


def _read_schema_state(connection: Connection) -> SchemaState:
    # Alembic's own reader (MigrationContext) would import Alembic, which
    # takes about a fifth of a second: its table is read directly instead.
    tables = frozenset(inspect(connection).get_table_names())
    revisions: tuple[str, ...] = ()
    if ALEMBIC_VERSION_TABLE in tables:
        revisions = tuple(
            row[0] for row in connection.exec_driver_sql(
                f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}"
            )
        )
    return SchemaState(revisions, tables)


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


def _create_private_folder(folder: Path) -> None:
    """Create ``folder`` and its missing parents with mode 0700.

    ``Path.mkdir(parents=True)`` gives the parents the mode of the umask
    (0777 with umask 000), while the XDG Base Directory Specification
    recommends mode 0700 for a missing destination folder.
    """
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for created in reversed(missing):
        created.mkdir(mode=0o700, exist_ok=True)


def _prepare_sqlite_file(path: Path) -> bool:
    """Create the database file (mode 0600) and its folders (0700) or check the file.

    Returns True when the file already existed with content. Raises
    StorageError when the file exists but is not an SQLite database.
    """
    _create_private_folder(path.parent)

    try:
        # Created here, before SQLite opens it, because SQLite would use the
        # umask (often 0644) and the file contains the profiles' passwords.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        log.info("Created database file %s", path)
        return False

    with path.open("rb") as db_file:
        header = db_file.read(len(SQLITE_HEADER))
    if not header:
        return False
    if header != SQLITE_HEADER:
        raise StorageError(
            f"{path} is not an SQLite database: move it away or set another "
            f"database URL ({C.ENV_DB_URL}), then start again"
        )

    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning(
            "Database file %s has mode %o and is readable by other users, but it "
            "contains passwords: run 'chmod 600 %s'",
            path,
            mode,
            path,
        )
    return True


def _backup_sqlite_file(path: Path, revision: str) -> Path:
    """Copy the SQLite database ``path`` to ``<path>.bak-<revision>`` (mode 0600).

    The SQLite backup API is used instead of a file copy because committed
    data may still sit in the WAL file. The copy is written to
    ``<path>.bak-<revision>.partial`` and renamed once complete, so a crash
    during the copy leaves no incomplete file under a backup name (the next
    backup removes that leftover). An existing backup is never overwritten:
    a numeric suffix is added instead.
    """
    partial = path.with_name(f"{path.name}.bak-{revision}.partial")
    for leftover in (partial, partial.with_name(f"{partial.name}-journal")):
        leftover.unlink(missing_ok=True)
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        source = sqlite3.connect(path)
        try:
            destination = sqlite3.connect(partial)
            try:
                source.backup(destination)
            finally:
                destination.close()
        finally:
            source.close()

        target = path.with_name(f"{path.name}.bak-{revision}")
        counter = 1
        while True:
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                target = path.with_name(f"{path.name}.bak-{revision}.{counter}")
                counter += 1
            else:
                os.close(fd)
                break
        # NOTE: a crash between the reservation above and this rename leaves
        # an empty file under the backup name.
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def _items_request_selects(
    max_items: int | None, item_ids: Sequence[str] | None, order_by: str,
) -> bool:
    """Check the arguments of an items read; return False when they select nothing.

    Raises InvalidValue on a negative ``max_items`` or an unknown ``order_by``.
    """
    if order_by not in ITEMS_ORDER_FIELDS:
        raise InvalidValue(
            f"cannot order pubsub items by {order_by!r}: use one of "
            f"{', '.join(sorted(ITEMS_ORDER_FIELDS))}"
        )
    if max_items is not None and max_items < 0:
        raise InvalidValue(f"max_items must be 0 or more, not {max_items}")
    return max_items != 0 and (item_ids is None or bool(item_ids))


def item_digest(xml: str) -> bytes:
    """Return the 16-byte BLAKE2b digest of an item's XML, to compare items without keeping their XML."""
    return hashlib.blake2b(xml.encode("utf-8"), digest_size=16).digest()


@dataclass(frozen=True)
class StoredItemState:
    """A stored item's identity, times and XML digest: what a reconciliation compares."""

    #: Primary key of the row, which breaks ties between equal times.
    id: int
    #: Item id.
    name: str
    created: datetime
    updated: datetime
    #: item_digest() of the stored XML.
    digest: bytes


@dataclass
class ItemsPage:
    """One page of cached items and its place in the node (see get_pubsub_items_page)."""

    xmls: list[str]
    item_ids: list[str]
    #: Position of the page's first item in the whole ordered set.
    first_index: int
    #: Number of items of the node.
    count: int


class Storage:
    """Database of the backend: profiles and the pubsub cache.

    ``db_url`` is an SQLAlchemy URL with an async driver
    (``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...``); None
    selects :func:`default_db_url`. Call :meth:`initialise` before anything
    else and :meth:`close` at the end.
    """

    def __init__(self, db_url: str | None = None) -> None:
        self.db_url: URL = make_url(db_url or default_db_url())
        self._engine: AsyncEngine | None = None
        # Connections holding a node's sync lock (PostgreSQL), by node id.
        self._sync_lock_connections: dict[int, AsyncConnection] = {}
        self._read_sessions: async_sessionmaker[AsyncSession] | None = None
        self._write_sessions: async_sessionmaker[AsyncSession] | None = None
        # Read-only connection of the event loop's thread (SQLite files only),
        # opened on first use by read_items_xml_now.
        self._inline_reader: sqlite3.Connection | None = None
        self._inline_reader_failed = False
        # Synchronous engine of the SQLite file for writes run in one worker
        # thread call (see _write), created on first use.
        self._thread_engine: Engine | None = None
        self._thread_write_options: Engine | None = None
        # (attribute, column, result processor) of pubsub_nodes, for inline reads.
        self._inline_node_columns: list[tuple[str, str, Any]] | None = None

    @property
    def sqlite_path(self) -> Path | None:
        """Path of the SQLite database file, None for other databases and in-memory SQLite."""
        if self.db_url.get_backend_name() != "sqlite":
            return None
        database = self.db_url.database
        if not database or database == ":memory:" or self.db_url.query.get("uri"):
            return None
        return Path(database)

    @property
    def display_name(self) -> str:
        """Name of the database for messages: file path or URL without password."""
        path = self.sqlite_path
        if path is not None:
            return str(path)
        return self.db_url.render_as_string(hide_password=True)

    @property
    def engine(self) -> AsyncEngine:
        """Engine of the database, available between initialise() and close()."""
        if self._engine is None:
            raise self._not_open_error()
        return self._engine

    def _not_open_error(self) -> StorageError:
        return StorageError(f"storage of {self.display_name} is not open: call initialise() first")

    # Opening and closing.

    @aio
    async def initialise(self) -> None:
        """Open the database, creating or upgrading its schema to the head revision.

        Raises StorageError, without changing the database, when it is not a
        database, contains tables but no Alembic revision, or is at a revision
        unknown to this version. Raises StorageError naming the backup copy
        when an upgrade fails.
        """
        if self._engine is not None:
            return

        path = self.sqlite_path
        existing_file = False
        if path is not None:
            try:
                existing_file = _prepare_sqlite_file(path)
            except OSError as exc:
                raise StorageError(
                    f"cannot create or read database file {path}: {exc.strerror}. Make "
                    f"it a readable and writable file of this user, or set another "
                    f"database URL ({C.ENV_DB_URL})"
                ) from exc

        state = await self._inspect_schema()
        if state.revisions == (HEAD_REVISION,):
            # Up to date: the migration scripts, and Alembic, are not loaded.
            heads: Sequence[str] = state.revisions
        else:
            heads = head_revisions()
            self._check_schema_state(state, heads)

        engine = create_storage_engine(self.db_url)
        try:
            if set(state.revisions) != set(heads):
                await self._migrate(engine, state, heads, path if existing_file else None)
        except BaseException:
            await engine.dispose()
            raise

        self._engine = engine
        self._read_sessions = async_sessionmaker(engine, expire_on_commit=False)
        write_engine = engine.execution_options(**{BEGIN_MODE_OPTION: "IMMEDIATE"})
        self._write_sessions = async_sessionmaker(write_engine, expire_on_commit=False)
        log.info("Opened database %s at revision %s", self.display_name, ", ".join(heads))

    async def _inspect_schema(self) -> SchemaState:
        # A plain engine, without the connection pragmas: switching to WAL
        # writes to the file, which must stay untouched if it is rejected.
        engine = create_async_engine(self.db_url, poolclass=NullPool, hide_parameters=True)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(_read_schema_state)
        except DBAPIError as exc:
            if self.sqlite_path is not None:
                hint = (
                    f"If it is not a Libervia database, move it away or set another "
                    f"database URL ({C.ENV_DB_URL})"
                )
            else:
                hint = (
                    f"Check that the server is running, that the database and role "
                    f"exist, and the database URL ({C.ENV_DB_URL} or [storage] db_url)"
                )
            raise StorageError(
                f"cannot read database {self.display_name}: {exc.orig}. {hint}"
            ) from exc
        except (OSError, asyncio.TimeoutError) as exc:
            # asyncpg raises these, unwrapped, when the server is unreachable.
            raise StorageError(
                f"cannot connect to database {self.display_name}: {exc}. Check that "
                f"the server is running and the database URL ({C.ENV_DB_URL} or "
                f"[storage] db_url)"
            ) from exc
        finally:
            await engine.dispose()

    def _check_schema_state(self, state: SchemaState, heads: Sequence[str]) -> None:
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(alembic_config())
        known = {revision.revision for revision in script.walk_revisions()}
        unknown = [revision for revision in state.revisions if revision not in known]
        if unknown:
            raise StorageError(
                f"database {self.display_name} is at revision {', '.join(unknown)}, "
                f"unknown to this version of Libervia (whose latest revision is "
                f"{', '.join(heads)}): it was probably written by a newer version. "
                f"Install that version again, or restore a backup of the database"
            )

        foreign_tables = state.tables - {"alembic_version"}
        if not state.revisions and foreign_tables:
            raise StorageError(
                f"database {self.display_name} has tables "
                f"({', '.join(sorted(foreign_tables))}) but no Alembic revision, so it "
                f"is not a Libervia database: move it away or set another database "
                f"URL ({C.ENV_DB_URL})"
            )

    async def _migrate(
        self,
        engine: AsyncEngine,
        state: SchemaState,
        heads: Sequence[str],
        existing_file: Path | None,
    ) -> None:
        current = ", ".join(state.revisions) or "base"
        backup: Path | None = None
        if existing_file is not None and state.tables:
            try:
                # A thread, because copying a large database takes a while.
                backup = await asyncio.to_thread(
                    _backup_sqlite_file, existing_file, "-".join(state.revisions) or "base"
                )
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(
                    f"cannot back up database {existing_file} before upgrading it: "
                    f"{exc}. Free some disk space or check the folder's permissions"
                ) from exc
            log.info(
                "Upgrading database %s from revision %s to %s (backup copy: %s)",
                existing_file,
                current,
                ", ".join(heads),
                backup,
            )
        elif state.tables:
            log.info(
                "Upgrading database %s from revision %s to %s",
                self.display_name,
                current,
                ", ".join(heads),
            )
        else:
            log.info(
                "Creating the schema of database %s at revision %s",
                self.display_name,
                ", ".join(heads),
            )

        try:
            async with migration_engine(engine).connect() as connection:
                try:
                    async with connection.begin():
                        await connection.run_sync(_upgrade_to_head)
                finally:
                    # Its foreign keys are off (see migration_engine()).
                    await connection.invalidate()
        except Exception as exc:
            message = f"upgrading database {self.display_name} from revision {current} failed: {exc}"
            if backup is not None:
                message += f". The copy made before the upgrade is {backup}"
            raise StorageError(message) from exc

    @aio
    async def close(self) -> None:
        """Close every connection of the database."""
        if self._engine is None:
            return
        engine = self._engine
        for connection in self._sync_lock_connections.values():
            # Closing the connection ends its session, which releases the lock.
            await connection.close()
        self._sync_lock_connections.clear()
        if self._inline_reader is not None:
            self._inline_reader.close()
            self._inline_reader = None
        if self._thread_engine is not None:
            self._thread_engine.dispose()
            self._thread_engine = self._thread_write_options = None
        self._engine = None
        self._read_sessions = None
        self._write_sessions = None
        await engine.dispose()

    # Sessions.

    @asynccontextmanager
    async def _session(
        self, write: bool = False, integrity_error: BackendError | None = None
    ) -> AsyncIterator[AsyncSession]:
        """Open a session in a transaction, committed at the end of the block.

        ``write`` takes the SQLite write lock when the transaction starts.
        Database errors become StorageError, or ``integrity_error`` when given
        and a constraint was violated.
        """
        sessions = self._write_sessions if write else self._read_sessions
        if sessions is None:
            raise self._not_open_error()

        try:
            async with sessions() as session, session.begin():
                yield session
        except DBAPIError as exc:
            raise self._database_error(exc, integrity_error) from exc

    def _database_error(
        self, exc: DBAPIError, integrity_error: BackendError | None = None,
    ) -> BackendError:
        """Return the error to raise for a database error (see _session)."""
        if isinstance(exc, IntegrityError):
            if integrity_error is not None:
                return integrity_error
            return StorageError(f"database {self.display_name} rejected the change: {exc.orig}")
        return StorageError(f"database {self.display_name} operation failed: {exc.orig}")

    async def _write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a write transaction, committed when it returns; return its result.

        ``work`` takes a synchronous Session. On an SQLite file the whole
        transaction runs in one call to a worker thread, through a
        synchronous engine of the same file. Through aiosqlite, each
        statement, the BEGIN and the COMMIT would each be a round trip
        between threads, and each return waits for its turn on the event
        loop, behind the requests of busy frontends. Other databases run
        ``work`` on the async engine (``AsyncSession.run_sync``). Database
        errors become StorageError.
        """
        engine = self._thread_write_engine()
        if engine is None:
            async with self._session(write=True) as session:
                return await session.run_sync(work)

        def run() -> T:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                return work(session)

        try:
            return await asyncio.get_running_loop().run_in_executor(None, run)
        except DBAPIError as exc:
            raise self._database_error(exc) from exc

    def statement_engines(self) -> list[Engine]:
        """Return the synchronous engines that run this storage's statements.

        For instrumentation (statement events in tests and profiles): the
        async engine's ``sync_engine``, and on an SQLite file the engine of
        the writes run in a worker thread.
        """
        engines = [self.engine.sync_engine]
        if self._thread_write_engine() is not None:
            engines.append(self._thread_engine)
        return engines

    def _thread_write_engine(self) -> Engine | None:
        """Return the synchronous engine of _write, None when the database is not an SQLite file."""
        if self._engine is None:
            raise self._not_open_error()
        path = self.sqlite_path
        if path is None:
            return None
        if self._thread_write_options is None:
            engine = create_engine(URL.create("sqlite", database=str(path)), hide_parameters=True)
            event.listen(engine, "connect", _on_sqlite_connect)
            event.listen(engine, "begin", _on_sqlite_begin)
            self._thread_engine = engine
            self._thread_write_options = engine.execution_options(
                **{BEGIN_MODE_OPTION: "IMMEDIATE"}
            )
        return self._thread_write_options

    def _insert(self, table: Table) -> Insert:
        """Return an INSERT of the engine's dialect, which supports ON CONFLICT."""
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            raise StorageError(
                f"database {self.display_name} uses {dialect}, which is not supported: "
                f"use SQLite or PostgreSQL"
            )
        return insert(table)

    # Profiles.

    @aio
    async def create_profile(
        self, name: str, jid: str, password: str, params: dict[str, Any] | None = None
    ) -> Profile:
        """Create a profile; the first profile created becomes the default one.

        Raises ProfileExists when a profile already has this name.
        """
        if not name:
            raise InvalidValue("a profile name must not be empty")
        exists = ProfileExists(f"profile {name!r} already exists: choose another name")

        async with self._session(write=True, integrity_error=exists) as session:
            if await session.scalar(select(Profile.id).where(Profile.name == name)) is not None:
                raise exists
            default_id = await session.scalar(
                select(Profile.id).where(Profile.is_default.is_(True)).limit(1)
            )
            profile = Profile(
                name=name,
                jid=jid,
                password=password,
                params=dict(params or {}),
                is_default=default_id is None,
            )
            session.add(profile)
        return profile

    @aio
    async def get_profile(self, name: str) -> Profile | None:
        """Return the profile called ``name``, or None."""
        async with self._session() as session:
            return await session.scalar(select(Profile).where(Profile.name == name))

    @aio
    async def get_default_profile(self) -> Profile | None:
        """Return the default profile, or None when there is no profile."""
        async with self._session() as session:
            return await session.scalar(
                select(Profile).where(Profile.is_default.is_(True)).order_by(Profile.id).limit(1)
            )

    @aio
    async def set_default_profile(self, name: str) -> None:
        """Make ``name`` the default profile. Raises ProfileNotFound."""
        async with self._session(write=True) as session:
            if await session.scalar(select(Profile.id).where(Profile.name == name)) is None:
                raise ProfileNotFound(f"profile {name!r} not found")
            await session.execute(update(Profile).values(is_default=Profile.name == name))

    @aio
    async def list_profiles(self) -> list[Profile]:
        """Return every profile, sorted by name."""
        async with self._session() as session:
            return list(await session.scalars(select(Profile).order_by(Profile.name)))

    @aio
    async def delete_profile(self, name: str) -> bool:
        """Delete a profile with its cached nodes and items.

        When it was the default profile, the oldest remaining profile becomes
        the default. Returns False when no profile has this name.
        """
        async with self._session(write=True) as session:
            profile = await session.scalar(select(Profile).where(Profile.name == name))
            if profile is None:
                return False
            await session.execute(delete(Profile).where(Profile.id == profile.id))

            if profile.is_default:
                next_id = await session.scalar(select(Profile.id).order_by(Profile.id).limit(1))
                if next_id is not None:
                    await session.execute(
                        update(Profile).where(Profile.id == next_id).values(is_default=True)
                    )
        log.info("Deleted profile %s", name)
        return True

    @aio
    async def update_profile(self, name: str, /, **fields: Any) -> Profile:
        """Change fields of a profile (name, jid, password, params) and return it.

        Passing ``name`` renames the profile.

        Raises ProfileNotFound, ProfileExists when renaming to a used name, and
        InvalidValue for any other field.
        """
        invalid = set(fields) - PROFILE_UPDATABLE_FIELDS
        if invalid:
            raise InvalidValue(
                f"cannot update profile field(s) {', '.join(sorted(invalid))}: valid "
                f"fields are {', '.join(sorted(PROFILE_UPDATABLE_FIELDS))}"
            )
        new_name = fields.get("name", name)
        exists = ProfileExists(f"profile {new_name!r} already exists: choose another name")

        async with self._session(write=True, integrity_error=exists) as session:
            profile = await session.scalar(select(Profile).where(Profile.name == name))
            if profile is None:
                raise ProfileNotFound(f"profile {name!r} not found")
            if new_name != name:
                if not new_name:
                    raise InvalidValue("a profile name must not be empty")
                used = await session.scalar(select(Profile.id).where(Profile.name == new_name))
                if used is not None:
                    raise exists
            for field, value in fields.items():
                setattr(profile, field, dict(value) if field == "params" else value)
        return profile

    # Pubsub nodes.

    @staticmethod
    def _node_key(profile_id: int, service: str, name: str) -> tuple[ColumnElement[bool], ...]:
        """Return the conditions selecting one node, served by its unique index."""
        return (
            PubsubNode.profile_id == profile_id,
            PubsubNode.service == service,
            PubsubNode.name == name,
        )

    @aio
    async def get_pubsub_node(self, profile_id: int, service: str, name: str) -> PubsubNode | None:
        """Return the cached node ``name`` of ``service`` for a profile, or None."""
        async with self._session() as session:
            return await session.scalar(
                select(PubsubNode).where(*self._node_key(profile_id, service, name))
            )

    @aio
    async def set_pubsub_node(
        self,
        profile_id: int,
        service: str,
        name: str,
        *,
        analyser: str | None = None,
        type_: str | None = None,
        subtype: str | None = None,
        sync_state: SyncState | None = None,
        extra: dict[str, Any] | None = None,
    ) -> PubsubNode:
        """Create a cached node, or update the given (non-None) fields of an existing one.

        Setting ``sync_state`` also sets ``sync_state_updated``. Concurrent
        calls for the same node are safe: the row is written with a single
        INSERT ... ON CONFLICT statement. Raises NotFound when the profile
        does not exist.
        """
        changes: dict[str, Any] = {
            "analyser": analyser,
            "type": type_,
            "subtype": subtype,
            "extra": extra,
        }
        if sync_state is not None:
            changes["sync_state"] = sync_state
            changes["sync_state_updated"] = utc_now()
        changes = {column: value for column, value in changes.items() if value is not None}

        statement = self._insert(PubsubNode.__table__).values(
            profile_id=profile_id, service=service, name=name, **changes
        )
        key = ["profile_id", "service", "name"]
        if changes:
            statement = statement.on_conflict_do_update(
                index_elements=key,
                set_={column: statement.excluded[column] for column in changes},
            )
        else:
            statement = statement.on_conflict_do_nothing(index_elements=key)

        missing = NotFound(f"profile {profile_id} not found: cannot cache node {name!r}")
        async with self._session(write=True, integrity_error=missing) as session:
            await session.execute(statement)
            node = await session.scalar(
                select(PubsubNode).where(*self._node_key(profile_id, service, name))
            )
        assert node is not None, "the node was written in the same transaction"
        return node

    @aio
    async def update_pubsub_node_sync_state(self, node_id: int, state: SyncState | None) -> None:
        """Set the sync state of a node and its ``sync_state_updated`` time.

        Raises NotFound when the node does not exist.
        """
        async with self._session(write=True) as session:
            result = await session.execute(
                update(PubsubNode)
                .where(PubsubNode.id == node_id)
                .values(sync_state=state, sync_state_updated=utc_now())
            )
            if result.rowcount == 0:
                raise NotFound(f"pubsub node {node_id} not found in the cache")

    @aio
    async def delete_pubsub_node(self, profile_id: int, service: str, name: str) -> bool:
        """Delete a cached node and its items; return False when it was not cached."""
        async with self._session(write=True) as session:
            result = await session.execute(
                delete(PubsubNode).where(*self._node_key(profile_id, service, name))
            )
            return result.rowcount > 0

    @aio
    async def get_pubsub_nodes(
        self, profile_id: int | None = None, sync_state: SyncState | None = None
    ) -> list[PubsubNode]:
        """Return the cached nodes, optionally only of a profile and/or in a sync state."""
        query = select(PubsubNode).order_by(PubsubNode.id)
        if profile_id is not None:
            query = query.where(PubsubNode.profile_id == profile_id)
        if sync_state is not None:
            query = query.where(PubsubNode.sync_state == sync_state)
        async with self._session() as session:
            return list(await session.scalars(query))

    @aio
    async def try_lock_node_sync(self, node_id: int) -> bool:
        """Take the lock that a process keeps while it syncs a node; return False if taken.

        On PostgreSQL this is a session-level advisory lock, kept by a
        dedicated connection until :meth:`unlock_node_sync`, so daemons
        sharing the database exclude each other. It returns False when
        another session has the lock. A SQLite file is used by one daemon, so it always
        returns True there.
        """
        if self.engine.dialect.name != "postgresql":
            return True
        if node_id in self._sync_lock_connections:
            return False
        connection = await self.engine.connect()
        try:
            locked = await connection.scalar(
                select(func.pg_try_advisory_lock(NODE_SYNC_LOCK_SPACE, node_id))
            )
            # End the implicit transaction of the lock query: the lock is
            # held by the session, not by a transaction.
            await connection.commit()
        except BaseException:
            await connection.close()
            raise
        if not locked:
            await connection.close()
            return False
        self._sync_lock_connections[node_id] = connection
        return True

    @aio
    async def unlock_node_sync(self, node_id: int) -> None:
        """Release a lock taken by :meth:`try_lock_node_sync` (nothing when not held)."""
        connection = self._sync_lock_connections.pop(node_id, None)
        if connection is None:
            return
        try:
            await connection.scalar(
                select(func.pg_advisory_unlock(NODE_SYNC_LOCK_SPACE, node_id))
            )
            await connection.commit()
        finally:
            await connection.close()

    @aio
    async def update_pubsub_node_extra(self, node_id: int, **values: Any) -> dict[str, Any]:
        """Set keys of a node's ``extra`` mapping, keeping the others; return the new mapping.

        A None value removes its key. Raises NotFound when the node does not exist.
        """
        async with self._session(write=True) as session:
            node = await session.get(PubsubNode, node_id, with_for_update=True)
            if node is None:
                raise NotFound(f"pubsub node {node_id} not found in the cache")
            extra = dict(node.extra or {})
            for key, value in values.items():
                if value is None:
                    extra.pop(key, None)
                else:
                    extra[key] = value
            node.extra = extra
        return extra

    # Pubsub items.

    @aio
    async def cache_pubsub_items(self, node_id: int, items: Sequence[ItemTuple]) -> None:
        """Insert or update items of a node, keeping the order given.

        ``items`` contains ``(item_id, xml, parsed, publisher)`` tuples in the order
        of the service. New items get a ``created`` time later than every item
        of the node; updated items keep their ``created`` and get a new
        ``updated``. Times grow by one microsecond per item, so the order of the
        batch is kept even when the clock does not move. When an item id appears
        twice, its last occurrence wins, at the last position. Raises NotFound
        when the node does not exist.
        """
        # Dropping earlier duplicates avoids updating one row twice in a
        # statement, which PostgreSQL rejects.
        unique_items: dict[str, ItemTuple] = {}
        for item in items:
            unique_items.pop(item[0], None)
            unique_items[item[0]] = item
        if not unique_items:
            return

        table = PubsubItem.__table__
        statement = self._insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=["node_id", "name"],
            set_={
                "data": statement.excluded.data,
                "parsed": statement.excluded.parsed,
                "publisher": statement.excluded.publisher,
                "updated": statement.excluded.updated,
                "text": statement.excluded.text,
                "search_text": statement.excluded.search_text,
            },
        )

        # Text for the full-text index, extracted before the write lock is
        # taken. Only the PostgreSQL index reads search_text (see fulltext).
        with_search_text = self.engine.dialect.name == "postgresql"
        texts: list[tuple[str, str | None]] = []
        for _, xml, _, _ in unique_items.values():
            text = fulltext.item_text(xml)
            texts.append((text, fulltext.search_text(text) if with_search_text else None))

        def write(session: Session) -> None:
            if session.scalar(select(PubsubNode.id).where(PubsubNode.id == node_id)) is None:
                raise NotFound(f"pubsub node {node_id} not found in the cache")

            # No other writer may insert a later time between this read and the
            # insert below: SQLite holds its write lock from BEGIN IMMEDIATE,
            # PostgreSQL takes a lock of the node until the commit.
            if self.engine.dialect.name == "postgresql":
                session.execute(select(func.pg_advisory_xact_lock(NODE_LOCK_SPACE, node_id)))
            latest_created, latest_updated = (
                session.scalar(query) for query in self._latest_times_queries(node_id)
            )
            start = utc_now()
            for latest in (latest_created, latest_updated):
                if latest is not None and latest >= start:
                    start = latest + ITEM_TIME_STEP

            rows = []
            for index, (item_id, xml, parsed, publisher) in enumerate(unique_items.values()):
                timestamp = start + index * ITEM_TIME_STEP
                text, search_text = texts[index]
                rows.append(
                    {
                        "node_id": node_id,
                        "name": item_id,
                        "data": xml,
                        "parsed": parsed,
                        "publisher": publisher,
                        "created": timestamp,
                        "updated": timestamp,
                        "text": text,
                        "search_text": search_text,
                    }
                )
            # One statement executed for all the rows ("executemany").
            session.execute(statement, rows)

        await self._write(write)

    @staticmethod
    def _latest_times_queries(node_id: int) -> tuple[Select, Select]:
        """Return the queries of a node's latest creation and modification times.

        One aggregate per query: SQLite and PostgreSQL then read each from
        the end of its (node_id, time, id) index, where a query of both
        would read every index entry of the node, at each batch of a sync.
        """
        return tuple(  # type: ignore[return-value]
            select(func.max(column)).where(PubsubItem.node_id == node_id)
            for column in (PubsubItem.created, PubsubItem.updated)
        )

    @aio
    async def delete_pubsub_items(self, node_id: int, item_ids: Sequence[str] | None = None) -> int:
        """Delete items of a node (all of them when ``item_ids`` is None: a purge).

        Returns the number of items deleted; unknown ids are ignored.
        """
        query = delete(PubsubItem).where(PubsubItem.node_id == node_id)
        if item_ids is not None:
            if not item_ids:
                return 0
            query = query.where(PubsubItem.name.in_(item_ids))
        return await self._write(lambda session: session.execute(query).rowcount)

    @aio
    async def evict_pubsub_items(self, node_id: int, keep: int) -> list[str]:
        """Delete the least recently updated items beyond the ``keep`` newest; return their ids.

        This is what pubsub services do when a node contains more than its
        ``max_items``: ejabberd 23.01 and Prosody 0.12 both drop the items
        published or edited longest ago.
        """
        if keep < 0:
            raise InvalidValue(f"keep must be 0 or more, not {keep}")
        async with self._session(write=True) as session:
            rows = (
                await session.execute(
                    select(PubsubItem.id, PubsubItem.name)
                    .where(PubsubItem.node_id == node_id)
                    .order_by(PubsubItem.updated.desc(), PubsubItem.id.desc())
                    .offset(keep)
                )
            ).all()
            if rows:
                await session.execute(
                    delete(PubsubItem).where(PubsubItem.id.in_([row.id for row in rows]))
                )
        return [row.name for row in rows]

    @aio
    async def get_pubsub_items(
        self,
        node_id: int,
        max_items: int | None = None,
        item_ids: Sequence[str] | None = None,
        order_by: str = "created",
    ) -> list[PubsubItem]:
        """Return items of a node in ascending order of ``order_by`` (created or updated).

        With ``max_items``, only the last ``max_items`` items in that order
        (the newest), still in ascending order. With ``item_ids``, only those
        items (unknown ids are absent from the result). Raises InvalidValue on
        a negative ``max_items`` or an unknown ``order_by``.
        """
        if not _items_request_selects(max_items, item_ids, order_by):
            return []

        query = self._items_query(select(PubsubItem), node_id, max_items, item_ids, order_by)
        async with self._session() as session:
            rows = list(await session.scalars(query))
        if max_items is not None:
            rows.reverse()
        return rows

    @aio
    async def get_pubsub_item_states(self, node_id: int) -> dict[str, StoredItemState]:
        """Return the state of every item of a node, by item id, in ascending creation order.

        The XML is read in chunks of STATE_CHUNK_ROWS rows and only its digest
        is kept, so the memory used grows by a few hundred bytes per item (an
        estimate), not by the size of the items.
        """
        query = (
            select(
                PubsubItem.id, PubsubItem.name, PubsubItem.created, PubsubItem.updated,
                PubsubItem.data,
            )
            .where(PubsubItem.node_id == node_id)
            .order_by(PubsubItem.created, PubsubItem.id)
            .execution_options(yield_per=STATE_CHUNK_ROWS)
        )
        states: dict[str, StoredItemState] = {}
        async with self._session() as session:
            result = await session.stream(query)
            async for chunk in result.partitions():
                for row_id, name, created, updated, data in chunk:
                    states[name] = StoredItemState(
                        row_id, name, created, updated, item_digest(data)
                    )
        return states

    @aio
    async def get_pubsub_items_xml(
        self,
        node_id: int,
        max_items: int | None = None,
        item_ids: Sequence[str] | None = None,
        order_by: str = "created",
    ) -> list[tuple[str, str]]:
        """Return (item id, serialised ``<item/>``) pairs, as :meth:`get_pubsub_items` selects items.

        This is the pubsub cache's serving path: it reads two columns without
        building ORM objects.
        """
        if not _items_request_selects(max_items, item_ids, order_by):
            return []
        query = self._items_query(select(PubsubItem.name, PubsubItem.data), node_id, max_items, item_ids, order_by)
        try:
            async with self.engine.connect() as connection:
                data = [(row[0], row[1]) for row in await connection.execute(query)]
        except DBAPIError as exc:
            raise StorageError(
                f"database {self.display_name} operation failed: {exc.orig}"
            ) from exc
        if max_items is not None:
            data.reverse()
        return data

    def read_items_xml_now(
        self,
        node_id: int,
        max_items: int | None = None,
        item_ids: Sequence[str] | None = None,
        order_by: str = "created",
    ) -> list[tuple[str, str]] | None:
        """Read what :meth:`get_pubsub_items_xml` returns, at once, from the calling thread.

        This is the cached get's fast path. An SQLite file in WAL mode lets a
        reader proceed while another connection writes, so a few indexed
        rows cost tens of microseconds here, against several thread hops
        through aiosqlite. Returns None, and the caller uses the async
        method, when the database is not an SQLite file, the read may return
        more than INLINE_READ_MAX_ITEMS rows, or SQLite cannot answer at once
        (a busy database, for example). Raises InvalidValue as the async
        method does.
        """
        if not _items_request_selects(max_items, item_ids, order_by):
            return []
        bounded = (max_items is not None and max_items <= INLINE_READ_MAX_ITEMS) or (
            item_ids is not None and len(item_ids) <= INLINE_READ_MAX_ITEMS
        )
        if not bounded or self._engine is None:
            return None
        reader = self._inline_reader or self._open_inline_reader()
        if reader is None:
            return None
        column = PubsubItem.__table__.c[order_by].name
        sql = "SELECT name, data FROM pubsub_items WHERE node_id = ?"
        parameters: list[Any] = [node_id]
        if item_ids is not None:
            sql += f" AND name IN ({', '.join('?' * len(item_ids))})"
            parameters.extend(item_ids)
        if max_items is None:
            sql += f" ORDER BY {column}, id"
        else:
            sql += f" ORDER BY {column} DESC, id DESC LIMIT ?"
            parameters.append(max_items)
        try:
            data = reader.execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            log.debug("inline read of node %d deferred to the async engine: %s", node_id, exc)
            return None
        if max_items is not None:
            data.reverse()
        return data

    def count_pubsub_items_now(self, node_id: int, at_most: int) -> int | None:
        """Count a node's cached items, up to ``at_most``, from the calling thread.

        Returns ``min(count, at_most)``, or None when the caller must use
        :meth:`count_pubsub_items` (see :meth:`read_items_xml_now`; the
        count is inline up to INLINE_COUNT_MAX_ITEMS).
        """
        if at_most > INLINE_COUNT_MAX_ITEMS or self._engine is None:
            return None
        reader = self._inline_reader or self._open_inline_reader()
        if reader is None:
            return None
        try:
            row = reader.execute(
                "SELECT count(*) FROM (SELECT 1 FROM pubsub_items WHERE node_id = ? LIMIT ?)",
                (node_id, max(at_most, 0)),
            ).fetchone()
        except sqlite3.Error as exc:
            log.debug("inline count of node %d deferred to the async engine: %s", node_id, exc)
            return None
        return row[0]

    def read_pubsub_node_now(
        self, profile_id: int, service: str, name: str,
    ) -> tuple[bool, PubsubNode | None]:
        """Read what :meth:`get_pubsub_node` returns, from the calling thread.

        Returns ``(True, node or None)``, or ``(False, None)`` when the
        caller must use :meth:`get_pubsub_node` (see :meth:`read_items_xml_now`).
        The node is a detached object, as the async method returns.
        """
        if self._engine is None:
            return False, None
        reader = self._inline_reader or self._open_inline_reader()
        if reader is None:
            return False, None
        if self._inline_node_columns is None:
            dialect = self._engine.dialect
            self._inline_node_columns = [
                (key, column.name, column.type.dialect_impl(dialect).result_processor(dialect, None))
                for key, column in PubsubNode.__mapper__.columns.items()
            ]
        columns = self._inline_node_columns
        sql = (
            f"SELECT {', '.join(column for _, column, _ in columns)} FROM pubsub_nodes "
            f"WHERE profile_id = ? AND service = ? AND name = ?"
        )
        try:
            row = reader.execute(sql, (profile_id, service, name)).fetchone()
        except sqlite3.Error as exc:
            log.debug("inline read of node %r deferred to the async engine: %s", name, exc)
            return False, None
        if row is None:
            return True, None
        return True, PubsubNode(**{
            key: value if processor is None else processor(value)
            for (key, _, processor), value in zip(columns, row)
        })

    def _open_inline_reader(self) -> sqlite3.Connection | None:
        """Open the connection of read_items_xml_now; None when the database has none."""
        path = self.sqlite_path
        if path is None or self._inline_reader_failed:
            return None
        try:
            reader = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, cached_statements=32
            )
            # busy_timeout 0: a busy database makes the read fail at once
            # instead of holding the event loop; the async path then waits.
            reader.execute("PRAGMA busy_timeout=0")
            reader.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            log.warning(
                "database %s: no inline reader (%s); cached gets use the async engine",
                self.display_name, exc,
            )
            self._inline_reader_failed = True
            return None
        self._inline_reader = reader
        return reader

    @staticmethod
    def _items_query(
        query: Select, node_id: int, max_items: int | None, item_ids: Sequence[str] | None,
        order_by: str,
    ) -> Select:
        """Filter and order an items query; with ``max_items`` it selects the newest first."""
        order_column = getattr(PubsubItem, order_by)
        query = query.where(PubsubItem.node_id == node_id)
        if item_ids is not None:
            query = query.where(PubsubItem.name.in_(item_ids))
        if max_items is None:
            return query.order_by(order_column, PubsubItem.id)
        return query.order_by(order_column.desc(), PubsubItem.id.desc()).limit(max_items)

    @aio
    async def get_pubsub_items_page(
        self,
        node_id: int,
        max_items: int | None = None,
        after: str | None = None,
        before: str | None = None,
        index: int | None = None,
        order_by: str = "created",
    ) -> ItemsPage | None:
        """Return one page of a node's items, as a XEP-0059 (RSM) service would.

        The whole set is the node's items in ascending order of ``order_by``
        (created or updated), ties broken by row id. ``after`` and ``before``
        are item ids: the page contains the items following or preceding that
        item. ``before=""`` asks for the last page, ``index`` for the page
        starting at that position (an index beyond the set gives an empty
        page). Without a position the page starts at the first item. With
        ``max_items`` the page holds at most that many items (0: none, only
        the count). Items come in ascending order.

        Returns None when ``after`` or ``before`` names an item that is not
        in the node. Raises InvalidValue on a negative ``max_items`` or
        ``index``, several positions, or an unknown ``order_by``.
        """
        _items_request_selects(max_items, None, order_by)
        positions = [value for value in (after, before, index) if value is not None]
        if len(positions) > 1:
            raise InvalidValue("after, before and index exclude each other: give only one")
        if index is not None and index < 0:
            raise InvalidValue(f"index must be 0 or more, not {index}")
        order_column = getattr(PubsubItem, order_by)
        # Keyset pagination: the page boundary is the (order column, id) pair
        # of the cursor item, which the (node_id, created|updated, id) indexes
        # serve without an offset scan.
        key = tuple_(order_column, PubsubItem.id)
        query = select(PubsubItem.data, PubsubItem.name).where(PubsubItem.node_id == node_id)
        try:
            async with self.engine.connect() as connection:
                count = (await connection.execute(self._count_query(node_id))).scalar() or 0
                cursor_row = None
                cursor = after if after is not None else before or None
                if cursor is not None:
                    cursor_row = (
                        await connection.execute(
                            select(order_column, PubsubItem.id).where(
                                PubsubItem.node_id == node_id, PubsubItem.name == cursor
                            )
                        )
                    ).one_or_none()
                    if cursor_row is None:
                        return None
                    cursor_key = tuple_(*cursor_row)

                backward = before is not None
                if after is not None:
                    query = query.where(key > cursor_key)
                elif cursor_row is not None:
                    query = query.where(key < cursor_key)
                if backward:
                    query = query.order_by(order_column.desc(), PubsubItem.id.desc())
                else:
                    query = query.order_by(order_column, PubsubItem.id)
                if index:
                    query = query.offset(index)
                if max_items is not None:
                    query = query.limit(max_items)
                rows = [] if max_items == 0 else list(await connection.execute(query))

                if backward:
                    rows.reverse()
                    # Items strictly before the cursor (all items for the
                    # last page), minus the page itself.
                    preceding = count
                    if cursor_row is not None:
                        preceding = (
                            await connection.execute(
                                self._count_query(node_id).where(key < cursor_key)
                            )
                        ).scalar() or 0
                    first_index = preceding - len(rows)
                elif after is not None:
                    first_index = (
                        await connection.execute(
                            self._count_query(node_id).where(key <= cursor_key)
                        )
                    ).scalar() or 0
                else:
                    first_index = index or 0
        except DBAPIError as exc:
            raise StorageError(
                f"database {self.display_name} operation failed: {exc.orig}"
            ) from exc
        return ItemsPage(
            xmls=[row.data for row in rows],
            item_ids=[row.name for row in rows],
            first_index=first_index,
            count=count,
        )

    @aio
    async def count_pubsub_items(self, node_id: int) -> int:
        """Return the number of cached items of a node."""
        async with self._session() as session:
            count = await session.scalar(self._count_query(node_id))
        return count or 0

    @staticmethod
    def _count_query(node_id: int) -> Select:
        """Return the query counting the items of a node."""
        return select(func.count()).select_from(PubsubItem).where(PubsubItem.node_id == node_id)

    # Full-text search.

    @aio
    async def search_item_ids(
        self, words: str, node_id: int | None = None, limit: int = 100
    ) -> list[tuple[int, str]]:
        """Search cached items whose text contains every word of ``words``.

        ``words`` is user text: it is split on spaces, and each word is
        searched as text, so punctuation and query operators (``"``, ``*``,
        ``AND``, ``NEAR``, ``(``...) never cause a syntax error. Case and
        diacritics are ignored ("cafe" finds "Café"). A word made of several
        tokens ("pubsub-cache", "v1.2") matches them in that order. Words
        without letters or digits are ignored, and text without any other
        word finds nothing.

        Returns up to ``limit`` ``(node id, item id)`` pairs, the most
        recently updated items first, optionally only in the node
        ``node_id``. Raises InvalidValue on a negative ``limit``.
        """
        if limit < 0:
            raise InvalidValue(f"limit must be 0 or more, not {limit}")
        if limit == 0:
            return []
        query = self._search_query(words, node_id, limit)
        if query is None:
            return []
        async with self._session() as session:
            result = await session.execute(query)
            return [(item_node_id, item_id) for item_node_id, item_id in result]

    def _search_query(self, words: str, node_id: int | None, limit: int) -> Select | None:
        """Build the query of :meth:`search_item_ids`, None when ``words`` has no word."""
        match = search.full_text_condition(self.engine.dialect.name, words, "words")
        if match is None:
            return None
        query = select(PubsubItem.node_id, PubsubItem.name).where(match)
        if node_id is not None:
            query = query.where(PubsubItem.node_id == node_id)
        return query.order_by(PubsubItem.updated.desc(), PubsubItem.id.desc()).limit(limit)

    @aio
    async def search_pubsub_items(
        self,
        fts: str | None = None,
        fts_mode: str = "words",
        *,
        profile_ids: Sequence[int] | None = None,
        services: Sequence[str] | None = None,
        nodes: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        subtypes: Sequence[str] | None = None,
        item_ids: Sequence[str] | None = None,
        filters: Sequence[Sequence[Any]] = (),
        order_by: Sequence[Sequence[Any]] = (),
        offset: int = 0,
        limit: int = search.DEFAULT_LIMIT,
        with_payload: bool = False,
        count_limit: int | None = search.DEFAULT_COUNT_LIMIT,
    ) -> search.SearchResult:
        """Search cached items by full text, node and item filters, and parsed data.

        ``fts`` is user text searched in the items' text (see
        :meth:`search_item_ids` for how words are split): with ``fts_mode``
        "words" every word must appear, "phrase" needs the words next to each
        other in that order, and "prefix" takes each word as the beginning
        of a word. None or blank text applies no full-text condition, text
        with only punctuation matches nothing.

        ``profile_ids``, ``services``, ``nodes`` (node names), ``types``,
        ``subtypes`` (of the nodes) and ``item_ids`` keep the items whose
        value is in the list. None selects everything, and an empty list
        selects nothing.

        ``filters`` are ``(path, operator, value)`` conditions on the parsed
        data. ``path`` is a list of keys (str) and list indexes (int), and
        the operator is one of :data:`search.OPERATORS` (see doc/cache_search.rst).

        ``order_by`` is a list of ``(key, direction)`` pairs: ``key`` is
        "created", "updated", "item_id", "relevance" (needs ``fts``) or a
        path of parsed data, ``direction`` "asc", "desc" or None (relevance
        best first, other keys ascending). The row id breaks ties. The
        default order is by relevance with ``fts``, else newest created
        first. A search matching more than :data:`search.RELEVANCE_MAX_MATCHES`
        items replaces relevance by the row id (the storage order).

        ``count_limit`` bounds the count of matches: the total is exact up
        to it, else a lower bound. None counts every match, at a cost that
        grows with their number, and 0 skips the count.

        Returns the page of at most ``limit`` hits (up to
        :data:`search.MAX_LIMIT`) after ``offset``, each with its payload
        when ``with_payload`` is set, and the count (see
        :class:`search.SearchResult`). Raises InvalidValue naming an
        invalid argument.
        """
        request = search.check_request(
            fts=fts, fts_mode=fts_mode, profile_ids=profile_ids, services=services,
            nodes=nodes, types=types, subtypes=subtypes, item_ids=item_ids, filters=filters,
            order_by=order_by, offset=offset, limit=limit, with_payload=with_payload,
            count_limit=count_limit,
        )
        async with self._session() as session:
            return await search_execution.run_search(session, self.engine.dialect.name, request)

    # Administration of the pubsub cache.

    @staticmethod
    def _cache_admin_conditions(**filters: Any) -> list[ColumnElement[bool]]:
        """Build the conditions selecting the cached nodes that match every filter given.

        Filters (a None or empty filter matches every node):

        - ``profile_ids``, ``services``, ``names``, ``types``, ``subtypes``:
          sequences of accepted values of the node columns;
        - ``created_before``: aware datetime; the node's oldest cached item
          was stored before it, or, for a node without items, its sync state
          last changed before it;
        - ``updated_before``: aware datetime; nothing of the node changed
          since: its sync state and every cached item were last written
          before it.

        Raises InvalidValue on an unknown filter or a naive datetime.
        """
        columns = {
            "profile_ids": PubsubNode.profile_id,
            "services": PubsubNode.service,
            "names": PubsubNode.name,
            "types": PubsubNode.type_,
            "subtypes": PubsubNode.subtype,
        }
        unknown = set(filters) - set(columns) - {"created_before", "updated_before"}
        if unknown:
            raise InvalidValue(
                f"unknown pubsub cache filter(s) {', '.join(sorted(unknown))}: use "
                f"{', '.join(sorted(columns))}, created_before or updated_before"
            )
        conditions: list[ColumnElement[bool]] = []
        for key, column_ in columns.items():
            values = filters.get(key)
            if values:
                conditions.append(column_.in_(list(values)))

        for key in ("created_before", "updated_before"):
            moment = filters.get(key)
            if moment is not None and (not isinstance(moment, datetime) or moment.tzinfo is None):
                raise InvalidValue(f"{key} must be an aware datetime, not {moment!r}")

        def items_of_node(*conditions_: ColumnElement[bool]) -> ColumnElement[bool]:
            return (
                select(PubsubItem.id)
                .where(PubsubItem.node_id == PubsubNode.id, *conditions_)
                .exists()
            )

        created_before = filters.get("created_before")
        if created_before is not None:
            conditions.append(
                items_of_node(PubsubItem.created < created_before)
                | (~items_of_node() & (PubsubNode.sync_state_updated < created_before))
            )
        updated_before = filters.get("updated_before")
        if updated_before is not None:
            conditions.append(
                (
                    PubsubNode.sync_state_updated.is_(None)
                    | (PubsubNode.sync_state_updated < updated_before)
                )
                & ~items_of_node(PubsubItem.updated >= updated_before)
            )
        return conditions

    @aio
    async def find_pubsub_nodes(self, **filters: Any) -> list[PubsubNode]:
        """Return the cached nodes of every profile matching ``filters``, by id.

        See :meth:`_cache_admin_conditions` for the filters.
        """
        conditions = self._cache_admin_conditions(**filters)
        query = select(PubsubNode).where(*conditions).order_by(PubsubNode.id)
        async with self._session() as session:
            return list(await session.scalars(query))

    @aio
    async def delete_pubsub_nodes(self, node_ids: Sequence[int]) -> tuple[int, int]:
        """Delete cached nodes with their items; return the numbers of nodes and items deleted.

        Unknown ids are ignored.
        """
        if not node_ids:
            return 0, 0
        ids = list(node_ids)
        async with self._session(write=True) as session:
            items = await session.scalar(
                select(func.count()).select_from(PubsubItem).where(PubsubItem.node_id.in_(ids))
            )
            # The items go with their node (ON DELETE CASCADE).
            result = await session.execute(delete(PubsubNode).where(PubsubNode.id.in_(ids)))
        return result.rowcount, items or 0

    @aio
    async def count_pubsub_cache(self, **filters: Any) -> list[dict[str, Any]]:
        """Count the cached nodes and items matching ``filters`` per sync state, type and subtype.

        Returns one dict per group with the keys ``sync_state`` (a SyncState
        or None), ``type``, ``subtype``, ``nodes`` and ``items``. See
        :meth:`_cache_admin_conditions` for the filters.
        """
        conditions = self._cache_admin_conditions(**filters)
        query = (
            select(
                PubsubNode.sync_state,
                PubsubNode.type_,
                PubsubNode.subtype,
                func.count(PubsubNode.id.distinct()),
                func.count(PubsubItem.id),
            )
            .select_from(PubsubNode)
            .outerjoin(PubsubItem, PubsubItem.node_id == PubsubNode.id)
            .where(*conditions)
            .group_by(PubsubNode.sync_state, PubsubNode.type_, PubsubNode.subtype)
        )
        async with self._session() as session:
            rows = (await session.execute(query)).all()
        return [
            {"sync_state": state, "type": type_, "subtype": subtype, "nodes": nodes,
             "items": items}
            for state, type_, subtype, nodes, items in rows
        ]

    @aio
    async def get_database_size(self) -> int | None:
        """Return the size of the database in bytes, None for an in-memory SQLite database.

        For an SQLite file, it is the size of the file and of its write-ahead
        log (``-wal`` file), which contains committed data not yet copied into
        the file. For PostgreSQL, it is ``pg_database_size`` of the current
        database.
        """
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            async with self._session() as session:
                return await session.scalar(
                    select(func.pg_database_size(func.current_database()))
                )
        path = self.sqlite_path
        if path is None:
            return None
        size = 0
        for file_path in (path, path.with_name(f"{path.name}-wal")):
            try:
                size += file_path.stat().st_size
            except FileNotFoundError:
                # SQLite removes the WAL file when the last connection closes.
                pass
        return size
