"""Fixtures shared by the whole test suite.

The ``prosody`` and ``ejabberd`` fixtures start one real server each for the
session. They never skip: when a server is not installed, every test using it
fails with a message that names its install script,
``scripts/ensure-prosody.sh`` or ``scripts/ensure-ejabberd.sh``.

The ``db_url`` fixture (and ``storage``, an initialised Storage on it) runs a
test once per database engine: on a new SQLite
file, and on a new database of the local PostgreSQL server (see
:mod:`libervia.testing.databases`). It never skips either: a PostgreSQL
server that cannot be reached fails the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytest_twisted

from libervia.backend.memory.sqla import Storage
from libervia.testing.databases import DatabaseUnavailable, database_url
from libervia.testing.ejabberd import EjabberdServer
from libervia.testing.prosody import ProsodyServer

INTEGRATION_DIR = Path(__file__).parent / "integration"

#: Accounts created on the session server, user name to password. The first
#: one is an admin of the pubsub component, so it may create nodes there.
PROSODY_ACCOUNTS = {
    "alice": "alice-test-password",
    "bob": "bob-test-password",
    "carol": "carol-test-password",
}
PUBSUB_ADMIN = "alice"


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Mark every test under tests/integration with ``integration``."""
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """Yield a running Prosody server with the accounts of PROSODY_ACCOUNTS.

    Passwords are also in ``prosody.accounts``. The server is shared by the
    whole session: tests create their own nodes and must not rely on a node
    being empty unless they created it.
    """
    domain = "localhost"
    server = ProsodyServer(
        domain=domain,
        workdir=tmp_path_factory.mktemp("prosody"),
        admins=[f"{PUBSUB_ADMIN}@{domain}"],
    )
    for user, password in PROSODY_ACCOUNTS.items():
        server.register(user, password)
    with server:
        yield server


#: Database engines of the ``db_url`` fixture, also its test ids.
DATABASE_ENGINES = ["sqlite", "postgresql"]


@contextmanager
def database_or_fail(engine: str, folder: Path) -> Iterator[str]:
    """Yield the URL of a new database of ``engine``, failing the test when it cannot be made."""
    try:
        with database_url(engine, folder) as url:
            yield url
    except DatabaseUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(params=DATABASE_ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a new, empty database: an SQLite file, then a PostgreSQL database.

    The PostgreSQL database is dropped after the test.
    """
    with database_or_fail(request.param, tmp_path) as url:
        yield url


@pytest_twisted.async_yield_fixture
async def storage(db_url: str) -> AsyncIterator[Storage]:
    """Yield an initialised Storage on a new database of each engine, closed after the test."""
    storage = Storage(db_url)
    await storage.initialise()
    yield storage
    await storage.close()


@pytest.fixture(scope="module", params=DATABASE_ENGINES)
def module_db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Yield the URL of a new database shared by the tests of a module, once per engine.

    For tests that load a large data set once and only read it.
    """
    with database_or_fail(request.param, tmp_path_factory.mktemp("database")) as url:
        yield url


@pytest.fixture(scope="session")
def ejabberd() -> Iterator[EjabberdServer]:
    """Yield a running ejabberd server with the accounts of PROSODY_ACCOUNTS.

    Passwords are also in ``ejabberd.accounts``. Its pubsub service stores
    nodes in SQLite, so it advertises RSM. The server is shared by the whole
    session: tests create their own nodes. It never skips: a missing
    ejabberd fails the test with the name of scripts/ensure-ejabberd.sh.
    """
    domain = "localhost"
    try:
        # The ejabberd user cannot enter pytest's folders when running as
        # root, so the server gets its own temporary folder.
        server = EjabberdServer(
            domain=domain, admins=[f"{PUBSUB_ADMIN}@{domain}"], direct_tls=True
        )
        for user, password in PROSODY_ACCOUNTS.items():
            server.register(user, password)
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
