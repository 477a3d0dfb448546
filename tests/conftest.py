"""Fixtures shared by the whole test suite.

The ``prosody`` fixture starts one real Prosody server for the session. It
never skips: when Prosody is not installed, every test using it fails with a
message that names the install script, ``scripts/ensure-prosody.sh``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
