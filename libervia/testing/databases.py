"""Create throwaway PostgreSQL databases for tests and benchmarks.

:func:`postgresql_database` creates a database with a unique name on a running
PostgreSQL server, yields its ``postgresql+asyncpg://`` URL and drops it on
exit. The server is named by the ``LIBERVIA_TEST_PG_URL`` environment variable
(an SQLAlchemy URL of a database the role may connect to, with a role allowed
to create databases), by default the local server on 127.0.0.1:5432 as user
``postgres``.

:func:`database_url` yields the URL of a new database of either engine: an
SQLite file or such a PostgreSQL database.

The helpers are synchronous and talk to the server from a thread of their own,
with its own asyncio loop, so they work from plain code, from pytest fixtures
and while the Twisted reactor is running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)

#: Environment variable naming the server on which databases are created.
PG_URL_ENV = "LIBERVIA_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

#: Seconds to wait for a connection to the server.
CONNECT_TIMEOUT = 10.0

#: Prefix of the databases created here, so leftovers are easy to spot.
DATABASE_PREFIX = "libervia_test_"

T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    """The PostgreSQL server of the tests cannot be reached or rejected a request."""


def server_url() -> URL:
    """Return the URL of the server's maintenance database, from the environment or the default."""
    return make_url(os.environ.get(PG_URL_ENV) or DEFAULT_PG_URL)


def _connect_kwargs(url: URL) -> dict[str, Any]:
    return {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "database": url.database,
        "timeout": CONNECT_TIMEOUT,
    }


def _run_in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    # asyncio.run() refuses to start where a loop is already running (the
    # reactor's loop, in tests), hence a thread with a loop of its own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


async def _execute(url: URL, statement: str) -> None:
    display = url.render_as_string(hide_password=True)
    try:
        connection = await asyncpg.connect(**_connect_kwargs(url))
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {display}: {exc!r}. Start the server "
            f"(.ci/run shows how) or set {PG_URL_ENV} to the URL of a reachable one"
        ) from exc
    try:
        await connection.execute(statement)
    except asyncpg.PostgresError as exc:
        raise DatabaseUnavailable(
            f"PostgreSQL at {display} rejected {statement!r}: {exc}. The role of "
            f"{PG_URL_ENV} needs the CREATEDB privilege"
        ) from exc
    finally:
        await connection.close()


def create_database(name: str | None = None) -> URL:
    """Create a new empty database on the test server and return its URL.

    Without ``name``, the database gets a unique name. Raises
    DatabaseUnavailable when the server cannot be reached or rejects the request.
    """
    server = server_url()
    name = name or f"{DATABASE_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:12]}"
    # The name is generated or given by test code, never by a user, and
    # CREATE DATABASE takes no parameters: quoting is enough.
    _run_in_thread(_execute(server, f'CREATE DATABASE "{name}"'))
    log.debug("Created PostgreSQL database %s", name)
    return server.set(drivername="postgresql+asyncpg", database=name)


def drop_database(url: URL) -> None:
    """Drop the database of ``url``, closing the connections still open on it."""
    name = url.database
    # FORCE (PostgreSQL 13 and later) ends the sessions a failed test left open.
    _run_in_thread(_execute(server_url(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    log.debug("Dropped PostgreSQL database %s", name)


@contextmanager
def postgresql_database() -> Iterator[str]:
    """Create a throwaway database, yield its URL (password included) and drop it at the end."""
    url = create_database()
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        drop_database(url)


@contextmanager
def database_url(engine: str, folder: Path) -> Iterator[str]:
    """Yield the URL of a new, empty database of ``engine`` ("sqlite" or "postgresql").

    An SQLite database is the file ``libervia.db`` in ``folder``, which is left
    in place. A PostgreSQL database is created by :func:`postgresql_database`
    and dropped at the end. Raises ValueError on another engine name.
    """
    if engine == "sqlite":
        yield URL.create("sqlite+aiosqlite", database=str(folder / "libervia.db")).render_as_string()
    elif engine == "postgresql":
        with postgresql_database() as url:
            yield url
    else:
        raise ValueError(f"unknown database engine {engine!r}: use sqlite or postgresql")
