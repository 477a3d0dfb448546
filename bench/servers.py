"""The XMPP servers of the benchmarks: two Prosody servers and one ejabberd, on 127.0.0.1.

Each server has its own domain, so that the cache, which learns the item
orders of each pubsub service by its JID, never mixes two servers up:

- ``prosody.localhost``: Prosody with ``network_settings = { nagle = false }``;
- ``prosody-nagle.localhost``: Prosody with its default, Nagle's algorithm on;
- ``ejabberd.localhost``: ejabberd with SQL (SQLite) pubsub storage, which
  pages items with RSM.

The launchers of :mod:`libervia.testing` cap a node at 10,000 items. The
subclasses here raise those caps, because the sync figure needs nodes of
100,000 items.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libervia.testing.ejabberd import EjabberdServer
from libervia.testing.prosody import ProsodyServer

log = logging.getLogger(__name__)

#: Maximum items of one pubsub node on the benchmark servers.
MAX_NODE_ITEMS = 200_000

#: Accounts of each server, user name to password. ``pub`` creates and fills
#: the nodes (it is an admin of Prosody's pubsub component). ``reader`` is
#: the in-process backend's reading profile and ``daemon-reader`` the one of
#: the daemon, so that both cache the same nodes independently.
ACCOUNTS = {
    "pub": "bench-pub-password",
    "reader": "bench-reader-password",
    "daemon-reader": "bench-daemon-reader-password",
}
PUBLISHER = "pub"

#: Prosody 0.12.3 options that the launcher writes and that cap a node's size.
PROSODY_LIMITS = ("storage_archive_item_limit", "pep_max_items", "pubsub_max_items")


class BenchProsodyServer(ProsodyServer):
    """ProsodyServer whose nodes may hold MAX_NODE_ITEMS items."""

    def _write_config(self) -> None:
        super()._write_config()
        # Prosody rejects a config that sets an option twice, so the
        # launcher's lines are replaced instead of adding new ones.
        lines = self.config_path.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            name = line.split("=", 1)[0].strip()
            if name in PROSODY_LIMITS:
                lines[index] = f"{name} = {MAX_NODE_ITEMS}"
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class BenchEjabberdServer(EjabberdServer):
    """EjabberdServer whose nodes may hold MAX_NODE_ITEMS items."""

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config["modules"]["mod_pubsub"]["max_items_node"] = MAX_NODE_ITEMS
        return config


@dataclass(frozen=True)
class Server:
    """One running benchmark server and what profiles need to connect to it."""

    #: Short name used in tables: "prosody", "prosody-nagle" or "ejabberd".
    name: str
    #: Text for tables and plots.
    label: str
    domain: str
    host: str
    port: int
    ca_file: Path
    accounts: dict[str, str]
    #: The launcher object (ProsodyServer or EjabberdServer).
    process: Any

    @property
    def pubsub_service(self) -> str:
        """JID of the server's pubsub component."""
        return f"pubsub.{self.domain}"

    @property
    def pages_with_rsm(self) -> bool:
        """Whether the server pages pubsub items with RSM (ejabberd 23.01 does, Prosody 0.12 not)."""
        return self.name == "ejabberd"

    def jid(self, user: str) -> str:
        """Return the bare JID of an account of this server."""
        return f"{user}@{self.domain}"

    def connection_options(self) -> dict[str, Any]:
        """Return the profile options that reach this server on 127.0.0.1 with its certificate."""
        return {"host": self.host, "port": self.port, "ca_file": str(self.ca_file)}


def _prosody(workdir: Path, name: str, label: str, nagle: bool) -> tuple[ProsodyServer, Server]:
    domain = f"{name}.localhost"
    process = BenchProsodyServer(
        domain=domain, workdir=workdir / name, nagle=nagle,
        admins=[f"{PUBLISHER}@{domain}"],
    )
    for user, password in ACCOUNTS.items():
        process.register(user, password)
    process.start()
    server = Server(
        name=name, label=label, domain=domain, host=process.host, port=process.port,
        ca_file=process.ca_file, accounts=dict(ACCOUNTS), process=process,
    )
    return process, server


def _ejabberd() -> tuple[EjabberdServer, Server]:
    domain = "ejabberd.localhost"
    # ejabberd runs as its own system user, which cannot enter the folders of
    # the benchmark: the launcher makes a temporary folder of its own.
    process = BenchEjabberdServer(domain=domain, admins=[f"{PUBLISHER}@{domain}"])
    for user, password in ACCOUNTS.items():
        process.register(user, password)
    process.start()
    server = Server(
        name="ejabberd", label="ejabberd 23.01 (RSM)", domain=domain, host=process.host,
        port=process.port, ca_file=process.ca_file, accounts=dict(ACCOUNTS), process=process,
    )
    return process, server


@contextmanager
def running_servers(workdir: Path) -> Iterator[dict[str, Server]]:
    """Start the three benchmark servers; yield them by name and stop them at the end."""
    with ExitStack() as stack:
        servers: dict[str, Server] = {}
        for name, label, nagle in (
            ("prosody", "Prosody 0.12, Nagle off", False),
            ("prosody-nagle", "Prosody 0.12, Nagle on (default)", True),
        ):
            process, server = _prosody(workdir, name, label, nagle)
            stack.callback(process.stop)
            servers[name] = server
        process, server = _ejabberd()
        stack.callback(process.stop)
        servers["ejabberd"] = server
        log.info("servers started: %s", ", ".join(servers))
        yield servers
