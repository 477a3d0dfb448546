"""Alembic environment of the backend database.

Three ways to run it:

- from the backend (:meth:`libervia.backend.memory.sqla.Storage.initialise`):
  the caller passes a synchronous connection, already in a transaction,
  through ``config.attributes["connection"]``;
- online from the ``alembic`` command (see ``alembic.ini`` in this folder):
  the database is ``LIBERVIA_DB_URL``, else ``sqlalchemy.url``, else the
  default database of the backend;
- offline (``alembic upgrade --sql``): the SQL is printed for that same URL.

SQLite cannot alter most table properties, so operations run in batch mode
there (the table is copied into a new one).
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from libervia.backend.core import constants as C
from libervia.backend.memory import fulltext, sqla
from libervia.backend.memory.sqla_mapping import Base, UTCDateTime


config = context.config
target_metadata = Base.metadata

# Only the alembic command has an ini file. The backend configures its own
# logging, which must stay as it is.
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name)


def database_url() -> str:
    """Return the URL of the database for the alembic command."""
    return (
        os.environ.get(C.ENV_DB_URL)
        or config.get_main_option("sqlalchemy.url")
        or sqla.default_db_url()
    )


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render the mapping's custom types as plain SQLAlchemy types in new revisions.

    Revisions must not import the mapping, which changes after they are written.
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def configure_options(dialect_name: str) -> dict[str, Any]:
    """Return the context options shared by the offline and online runs."""
    return {
        "target_metadata": target_metadata,
        "render_as_batch": dialect_name == "sqlite",
        "render_item": render_item,
        "compare_type": True,
        # The full-text index has parts that are not in the mapping.
        "include_name": fulltext.include_name,
        "include_object": fulltext.include_object,
    }


def run_migrations_offline() -> None:
    """Print the SQL of the migrations instead of running them."""
    url = make_url(database_url())
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **configure_options(url.get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations(connection: Connection) -> None:
    """Run the migrations on ``connection``, then check the foreign keys on SQLite.

    The backend turns SQLite foreign keys off for migrations (so that batch
    mode does not cascade deletes when it drops a parent table), so the
    check runs here, before the transaction is committed.
    """
    context.configure(connection=connection, **configure_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()

        if connection.dialect.name == "sqlite":
            violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if violations:
                raise RuntimeError(
                    f"the migration left {len(violations)} row(s) referencing missing "
                    f"rows, first one: {tuple(violations[0])}"
                )


async def run_migrations_async() -> None:
    """Open the database named by database_url() and run the migrations on it."""
    engine = sqla.create_storage_engine(database_url(), poolclass=NullPool)
    try:
        async with sqla.migration_engine(engine).begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
elif (given_connection := config.attributes.get("connection")) is not None:
    run_migrations(given_connection)
else:
    asyncio.run(run_migrations_async())
