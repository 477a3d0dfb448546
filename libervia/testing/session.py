"""An in-process backend with profiles connected to a test server, for tests and benchmarks.

:func:`backend_session` starts a :class:`~libervia.backend.core.main.Backend`
in the calling process, with its config, data and runtime folders in a new
temporary folder, creates one profile per account of the server and connects
them. Tests drive the plugins directly through the :class:`BackendSession`
it yields.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.words.protocols.jabber.jid import JID

#: Environment variables that locate the backend's files (see core.paths).
_PATH_VARIABLES = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR")


class BackendSession:
    """A running in-process backend, its test server and the plugins tests use."""

    def __init__(self, server: Any, backend: Any, iq_timeout: float) -> None:
        self.server = server
        self.backend = backend
        self.iq_timeout = iq_timeout
        self.server_name = "ejabberd" if type(server).__name__ == "EjabberdServer" else "prosody"
        self.service = JID(server.pubsub_service)
        self.pubsub = backend.plugins["XEP-0060"]
        self.cache = backend.plugins["PUBSUB_CACHE"]

    @property
    def is_ejabberd(self) -> bool:
        return self.server_name == "ejabberd"

    def client(self, profile: str) -> Any:
        """Return the profile's current client, which a reconnection replaces."""
        return self.backend.get_client(profile)

    async def connect(self, profile: str) -> Any:
        """Connect a profile and give its client the session's IQ timeout."""
        client = await self.backend.connect_profile(profile)
        client.options.iq_timeout = self.iq_timeout
        return client


@asynccontextmanager
async def backend_session(
    server: Any,
    profiles: Iterable[str] = ("alice", "bob"),
    analysers: Iterable[dict[str, Any]] = (),
    iq_timeout: float = 20.0,
) -> AsyncIterator[BackendSession]:
    """Run a backend in this process with ``profiles`` connected to ``server``.

    Each profile uses the server account of the same name. ``analysers`` are
    registered with the pubsub cache before any profile connects. The
    backend's files go to a new temporary folder, and the environment
    variables pointing there are restored when the session ends.
    """
    from libervia.backend.core.main import Backend

    base = tempfile.mkdtemp(prefix="lbs-", dir="/tmp")
    saved = {name: os.environ.get(name) for name in (*_PATH_VARIABLES, "LIBERVIA_DB_URL")}
    for name in _PATH_VARIABLES:
        os.environ[name] = os.path.join(base, name.lower())
    os.environ.pop("LIBERVIA_DB_URL", None)
    try:
        backend = Backend()
        await backend.start()
        try:
            for analyser in analysers:
                backend.plugins["PUBSUB_CACHE"].register_analyser(dict(analyser))
            session = BackendSession(server, backend, iq_timeout)
            for profile in profiles:
                await backend._profile_create(
                    profile, f"{profile}@{server.domain}", server.accounts[profile],
                    {"host": server.host, "port": server.port, "ca_file": str(server.ca_file)},
                )
                await session.connect(profile)
            yield session
        finally:
            await backend.stop()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
