"""The benchmark's in-process backend: publishers that fill nodes, readers whose cache is timed.

:class:`Harness` runs a :class:`~libervia.backend.core.main.Backend` in the
benchmark process, as the integration tests do, with two profiles per
server: ``pub-SERVER`` creates and fills nodes, and ``reader-SERVER`` reads
them, so its cache syncs them. The in-process figures time the reader's
``get_items`` calls directly, without the bridge.

Nodes live on each server's pubsub component and are named
``urn:xmpp:microblog:0:bench-...``: the XEP-0277 plugin's analyser matches
that prefix, so the node is synchronised with the real microblog parser, in
this backend and in the daemon alike.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer
from twisted.words.protocols.jabber.jid import JID

from bench.items import Post, post_element
from bench.servers import PUBLISHER, Server

log = logging.getLogger(__name__)

NS_MICROBLOG = "urn:xmpp:microblog:0"
NODE_PREFIX = f"{NS_MICROBLOG}:bench-"

#: Publish requests in flight at once while filling a node. Prosody and
#: ejabberd handle the requests of one stream in order, so items keep their order.
PUBLISH_WINDOW = 32

#: Seconds an IQ may take: a full fetch of 100,000 items from Prosody is one
#: response of about 60 MB.
IQ_TIMEOUT = 600.0

#: Config of the in-process backend and of the daemon. The default
#: max_items_per_node (10,000) would leave the 100,000-item nodes uncached.
BACKEND_CONFIG = """\
[pubsub_cache]
max_items_per_node = 1000000
[xmpp]
iq_timeout = 600
"""


def new_node_name(label: str) -> str:
    """Return a unique node name that the XEP-0277 analyser syncs."""
    return f"{NODE_PREFIX}{label}-{uuid.uuid4().hex[:8]}"


def node_options(max_items: int) -> dict[str, str]:
    """Return the configuration of a benchmark node that keeps ``max_items`` items."""
    return {
        "pubsub#access_model": "open",
        "pubsub#max_items": str(max_items),
        "pubsub#deliver_payloads": "1",
        "pubsub#notify_retract": "1",
    }


def private_environment(base: Path) -> dict[str, str]:
    """Return XDG variables that give a backend its own config, data and runtime folders.

    The runtime folder gets a short path under /tmp, because a Unix socket
    path is limited to 107 bytes.
    """
    runtime = Path(f"/tmp/lbb-{uuid.uuid4().hex[:8]}")
    runtime.mkdir(mode=0o700)
    return {
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_DATA_HOME": str(base / "data"),
        "XDG_RUNTIME_DIR": str(runtime),
    }


def write_config(environment: dict[str, str], text: str) -> Path:
    """Write the backend config file of an environment made by :func:`private_environment`."""
    path = Path(environment["XDG_CONFIG_HOME"]) / "libervia" / "libervia.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class Harness:
    """An in-process backend with a publisher and a reader profile on each server."""

    def __init__(self, servers: dict[str, Server], base: Path) -> None:
        self.servers = servers
        self.base = base
        self.backend: Any = None
        self.environment = private_environment(base)
        # Values of this process's environment replaced by start(), put
        # back by stop() (None: the variable was not set).
        self._saved_environment: dict[str, str | None] = {}

    @property
    def pubsub(self) -> Any:
        """The XEP-0060 plugin of the backend."""
        return self.backend.plugins["XEP-0060"]

    @property
    def cache(self) -> Any:
        """The pubsub cache plugin of the backend."""
        return self.backend.plugins["PUBSUB_CACHE"]

    @property
    def db_path(self) -> Path:
        """The backend's SQLite database file."""
        return Path(self.environment["XDG_DATA_HOME"]) / "libervia" / "libervia.db"

    def client(self, role: str, server: Server) -> Any:
        """Return the connected client of ``role`` ("pub" or "reader") on ``server``."""
        return self.backend.get_client(f"{role}-{server.name}")

    async def start(self) -> None:
        """Start the backend and connect every profile.

        The XDG variables are set in this process, where the backend reads
        them, and the Backend class is imported only here, after the
        asyncio reactor was installed.
        """
        for name in (*self.environment, "LIBERVIA_DB_URL"):
            self._saved_environment[name] = os.environ.get(name)
        os.environ.update(self.environment)
        os.environ.pop("LIBERVIA_DB_URL", None)
        write_config(self.environment, BACKEND_CONFIG)
        from libervia.backend.core.main import Backend

        self.backend = Backend()
        await self.backend.start()
        for server in self.servers.values():
            for role in (PUBLISHER, "reader"):
                profile = f"{role}-{server.name}"
                await self.backend._profile_create(
                    profile, server.jid(role), server.accounts[role],
                    server.connection_options(),
                )
                await self.backend.connect_profile(profile)
        log.info("in-process backend started, database %s", self.db_path)

    async def stop(self) -> None:
        """Stop the backend: profiles disconnected, bridge closed, database closed."""
        if self.backend is not None:
            await self.backend.stop()
            self.backend = None
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environment = {}
        shutil.rmtree(self.environment["XDG_RUNTIME_DIR"], ignore_errors=True)

    async def create_node(self, server: Server, label: str, max_items: int) -> str:
        """Create a node on the server's pubsub component; return its name."""
        node = new_node_name(label)
        await self.pubsub.create_node(
            self.client(PUBLISHER, server), JID(server.pubsub_service), node,
            node_options(max_items),
        )
        return node

    async def publish(self, server: Server, node: str, posts: Sequence[Post]) -> float:
        """Publish ``posts`` in order, PUBLISH_WINDOW requests at a time; return the seconds taken."""
        client = self.client(PUBLISHER, server)
        service = JID(server.pubsub_service)
        window = defer.DeferredSemaphore(PUBLISH_WINDOW)

        async def publish_one(post: Post) -> None:
            await self.pubsub.publish(client, service, node, [post_element(post)])

        start = time.perf_counter()
        pending = [
            window.run(lambda post=post: defer.ensureDeferred(publish_one(post)))
            for post in posts
        ]
        await defer.gatherResults(pending, consumeErrors=True)
        return time.perf_counter() - start

    async def sync_as_reader(self, server: Server, node: str) -> None:
        """Have the reader's cache analyse and sync a node, and wait until it is done."""
        client = self.client("reader", server)
        await self.pubsub.get_items(client, JID(server.pubsub_service), node, max_items=1)
        await self.cache.wait_syncs()
        node_row = await self.backend.storage.get_pubsub_node(
            client.profile_id, server.pubsub_service, node
        )
        state = node_row.sync_state.value if node_row and node_row.sync_state else None
        if state != "COMPLETED":
            raise RuntimeError(
                f"the in-process reader did not sync node {node} of {server.pubsub_service}: "
                f"sync state {state}"
            )
