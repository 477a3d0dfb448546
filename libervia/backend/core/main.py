"""The backend host: storage, plugins, triggers, bridge and the profiles' clients.

Import this module only after the asyncio reactor is installed (see
:mod:`libervia.backend.__main__`), because Twisted's default reactor would be
installed by the first ``twisted.internet.reactor`` import.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer

from libervia.backend import __version__
from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core import paths, plugin_manager
from libervia.backend.core.component import DEFAULT_COMPONENT_PORT, ComponentClient
from libervia.backend.core.config import Config
from libervia.backend.core.exceptions import (
    ConfigError,
    InvalidValue,
    ProfileExists,
    ProfileNotConnected,
    ProfileNotFound,
)
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.core.xmpp import ConnectionOptions, XMPPClient, _parse_bool
from libervia.backend.memory.sqla import Storage
from libervia.backend.plugins.plugin_xep_0060 import parse_jid
from libervia.backend.tools.aio import maybe_await

log = logging.getLogger(__name__)

PROFILE_OPTION_KEYS = (
    "host", "port", "ca_file", "allow_plaintext", "direct_tls", "sasl_mechanisms",
)
#: Connection options read from the [xmpp] section only, for every profile.
CONFIG_ONLY_OPTION_KEYS = (
    "connect_timeout", "iq_timeout", "reconnect_initial_delay", "reconnect_factor",
    "reconnect_max_delay", "reconnect_jitter", "max_stanza_size", "max_stanza_elements",
)
#: Profile param set to true for an XMPP component (XEP-0114) profile. Unlike
#: the keys above, the [xmpp] section cannot set it.
COMPONENT_KEY = "component"
#: Options that have no meaning on a component stream (no TLS, no SASL).
CLIENT_ONLY_OPTION_KEYS = ("ca_file", "allow_plaintext", "direct_tls", "sasl_mechanisms")


def is_component(params: dict[str, Any] | None) -> bool:
    """Return whether a profile's params make it a component profile."""
    value = (params or {}).get(COMPONENT_KEY)
    return value is not None and _parse_bool(COMPONENT_KEY, value)


class Backend:
    """Everything one daemon runs: created, started with :meth:`start`, ended with :meth:`stop`."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config if config is not None else Config()
        self.storage = Storage(self.config.db_url())
        self.trigger = TriggerManager()
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}
        self.clients: dict[str, XMPPClient] = {}
        self.default_profile: str | None = None
        # Names of the stored profiles, so that get_client tells an unknown
        # profile from one that is not connected without a database query.
        self.profile_names: set[str] = set()
        self._connecting: dict[str, list[defer.Deferred]] = {}
        self.stopped: Any = None
        self._register_core_methods()

    async def start(self) -> None:
        """Open the database, load the plugins and serve the bridge."""
        await self.storage.initialise()
        default = await self.storage.get_default_profile()
        self.default_profile = default.name if default else None
        self.profile_names = {p.name for p in await self.storage.list_profiles()}
        plugin_manager.load_plugins(self)
        socket_path = paths.runtime_dir(create=True) / paths.bridge_socket().name
        await self.bridge.start(socket_path)
        log.info("backend %s started, bridge on %s", __version__, socket_path)

    async def stop(self) -> None:
        """Disconnect every profile, stop the bridge and close the database."""
        for name in list(self.clients):
            await self.disconnect_profile(name)
        cache = self.plugins.get("PUBSUB_CACHE")
        if cache is not None:
            await cache.stop()
        await self.bridge.stop()
        await self.storage.close()
        log.info("backend stopped")

    # profiles and clients

    def resolve_profile(self, profile: str | None) -> str:
        """Return ``profile``, or the default profile's name when it is None or empty."""
        if profile:
            return profile
        if self.default_profile is None:
            raise ProfileNotFound(
                "no profile exists yet: create one with li profile create NAME -j JID"
            )
        return self.default_profile

    def get_client(self, profile: str | None) -> XMPPClient:
        """Return the connected client of a profile; raise ProfileNotConnected otherwise."""
        name = self.resolve_profile(profile)
        client = self.clients.get(name)
        if name not in self.profile_names:
            raise ProfileNotFound(f"profile {name!r} not found: see li profile list")
        if client is None or not client.connected:
            raise ProfileNotConnected(
                f"profile {name} is not connected: run li profile connect {name}"
            )
        return client

    def plugins_for(self, client: XMPPClient) -> dict[str, Any]:
        """Return the plugins whose PLUGIN_INFO "modes" include the client's mode."""
        return {
            name: plugin for name, plugin in self.plugins.items()
            if client.mode in plugin_manager.plugin_modes(plugin)
        }

    def get_plugin_handlers(self, client: XMPPClient) -> list[Any]:
        """Collect the protocol handlers that plugins attach to a client's stream.

        Plugins that do not support the client's mode (a presence plugin on a
        component, for instance) attach nothing.
        """
        handlers = []
        for plugin in self.plugins_for(client).values():
            get_handler = getattr(plugin, "get_handler", None)
            if get_handler is None:
                continue
            handler = get_handler(client)
            if handler is not None:
                handlers.append(handler)
        return handlers

    def on_stream_reestablished(self, client: XMPPClient) -> None:
        """Tell plugins that a lost stream is back, as after a first connection."""
        from twisted.internet import defer

        defer.ensureDeferred(self._notify_connected(client))

    async def _notify_connected(self, client: XMPPClient) -> None:
        for name, plugin in self.plugins_for(client).items():
            hook = getattr(plugin, "profile_connected", None)
            if hook is None:
                continue
            try:
                await maybe_await(hook(client))
            except Exception:
                log.exception("profile %s: plugin %s failed on connection", client.profile, name)

    async def connect_profile(self, name: str | None, password: str | None = None) -> XMPPClient:
        """Connect a profile's XMPP client, or return it when already connected.

        Raises ProfileNotFound, ConnectionError_ or AuthError.
        """
        name = self.resolve_profile(name)
        client = self.clients.get(name)
        if client is not None and client.connected:
            return client
        if client is not None:
            # A stream lost and still retrying: replace it by a fresh attempt.
            await self.disconnect_profile(name)
        # Concurrent requests for one profile share a single connection attempt.
        waiters = self._connecting.get(name)
        if waiters is not None:
            waiter: defer.Deferred = defer.Deferred()
            waiters.append(waiter)
            return await waiter

        self._connecting[name] = []
        try:
            client = await self._connect_profile(name, password)
        except Exception as e:
            for waiter in self._connecting.pop(name):
                waiter.errback(e)
            raise
        for waiter in self._connecting.pop(name):
            waiter.callback(client)
        return client

    async def _connect_profile(self, name: str, password: str | None) -> XMPPClient:
        profile = await self.storage.get_profile(name)
        if profile is None:
            raise ProfileNotFound(f"profile {name!r} not found: see li profile list")
        params = {k: v for k, v in (profile.params or {}).items() if v is not None}
        component = is_component(params)
        params.pop(COMPONENT_KEY, None)
        # The [xmpp] host, port and TLS settings describe the client server:
        # a component takes only the timeouts and reconnection delays from it.
        config_keys = (
            CONFIG_ONLY_OPTION_KEYS if component else PROFILE_OPTION_KEYS + CONFIG_ONLY_OPTION_KEYS
        )
        values: dict[str, Any] = {key: self.config.get("xmpp", key) for key in config_keys}
        values.update(params)
        if component and values.get("port") in (None, ""):
            values["port"] = DEFAULT_COMPONENT_PORT
        options = ConnectionOptions.from_mapping(values)
        client_class = ComponentClient if component else XMPPClient
        client = client_class(
            host=self,
            profile=name,
            profile_id=profile.id,
            jid=parse_jid(profile.jid, "profile"),
            password=password if password is not None else profile.password,
            options=options,
        )
        await client.connect()
        self.clients[name] = client
        await self._notify_connected(client)
        return client

    async def disconnect_profile(self, name: str | None) -> None:
        """Disconnect a profile's client; do nothing when it is not connected."""
        name = self.resolve_profile(name)
        client = self.clients.pop(name, None)
        if client is not None:
            await client.disconnect()

    # core bridge methods

    def _register_core_methods(self) -> None:
        methods = {
            "ping": self._ping,
            "version": self._version,
            "daemon_stop": self._daemon_stop,
            "profile_create": self._profile_create,
            "profile_list": self._profile_list,
            "profile_delete": self._profile_delete,
            "profile_default_set": self._profile_default_set,
            "profile_connect": self._profile_connect,
            "profile_disconnect": self._profile_disconnect,
            "stream_stats": self._stream_stats,
        }
        for name, method in methods.items():
            self.bridge.register_method(name, method)

    async def _ping(self) -> str:
        return "pong"

    async def _version(self) -> str:
        return __version__

    async def _daemon_stop(self) -> None:
        from twisted.internet import reactor

        # Send the response first, then stop: the caller waits for the process to exit.
        reactor.callLater(0, self._request_stop)

    def _request_stop(self) -> None:
        if self.stopped is not None:
            self.stopped()

    async def _profile_create(
        self,
        name: str,
        jid: str,
        password: str,
        options: dict[str, Any] | None = None,
        default: bool = False,
    ) -> dict[str, Any]:
        if not name or not isinstance(name, str) or "/" in name:
            raise InvalidValue(f"invalid profile name {name!r}: use a non-empty name without '/'")
        jid_obj, options, component = _check_profile_values(name, jid, password, options)
        ConnectionOptions.from_mapping(options)  # validates
        if await self.storage.get_profile(name) is not None:
            raise ProfileExists(f"profile {name!r} already exists")
        profile = await self.storage.create_profile(name, jid_obj.full(), password, options)
        self.profile_names.add(name)
        if default or self.default_profile is None:
            await self.storage.set_default_profile(name)
            self.default_profile = name
        log.info(
            "profile %s created for %s%s", name, profile.jid, " (component)" if component else "",
        )
        return {"name": profile.name, "jid": profile.jid, "kind": _kind(component)}

    async def _profile_list(self) -> list[dict[str, Any]]:
        profiles = await self.storage.list_profiles()
        return [
            {
                "name": p.name,
                "jid": p.jid,
                "connected": p.name in self.clients and self.clients[p.name].connected,
                "default": p.name == self.default_profile,
                "kind": _kind(is_component(p.params)),
            }
            for p in profiles
        ]

    async def _profile_delete(self, name: str) -> None:
        if await self.storage.get_profile(name) is None:
            raise ProfileNotFound(f"profile {name!r} not found: see li profile list")
        await self.disconnect_profile(name)
        await self.storage.delete_profile(name)
        self.profile_names.discard(name)
        if self.default_profile == name:
            default = await self.storage.get_default_profile()
            self.default_profile = default.name if default else None
        log.info("profile %s deleted", name)

    async def _profile_default_set(self, name: str) -> None:
        if await self.storage.get_profile(name) is None:
            raise ProfileNotFound(f"profile {name!r} not found: see li profile list")
        await self.storage.set_default_profile(name)
        self.default_profile = name

    async def _profile_connect(
        self, name: str | None = None, password: str | None = None,
    ) -> dict[str, Any]:
        client = await self.connect_profile(name, password)
        return {
            "jid": client.jid.full(), "mechanism": client.sasl_mechanism, "tls": client.tls,
            "kind": client.mode,
        }

    async def _profile_disconnect(self, name: str | None = None) -> None:
        await self.disconnect_profile(name)

    async def _stream_stats(self, profile: str | None = None) -> dict[str, int]:
        name = self.resolve_profile(profile)
        client = self.clients.get(name)
        if client is None:
            raise ProfileNotConnected(f"profile {name} is not connected")
        return dict(client.stream_stats)


def _kind(component: bool) -> str:
    """Return the profile kind shown by profile_list: "component" or "client"."""
    return "component" if component else "client"

def _check_profile_values(
    name: str, jid: str, password: str, options: dict[str, Any] | None,
) -> tuple[Any, dict[str, Any], bool]:
    """Validate a new profile's JID, password and options; raise InvalidValue on a bad one.

    Returns the parsed JID, the options to store (``component`` set to True
    for a component, absent otherwise) and whether it is a component.
    """
    options = dict(options or {})
    unknown = set(options) - set(PROFILE_OPTION_KEYS) - {COMPONENT_KEY}
    if unknown:
        raise InvalidValue(
            f"unknown profile options {sorted(unknown)}: use "
            f"{', '.join(PROFILE_OPTION_KEYS + (COMPONENT_KEY,))}"
        )
    try:
        component = is_component(options)
    except ConfigError as e:
        raise InvalidValue(str(e)) from None

    jid_obj = parse_jid(jid, "profile")
    if component:
        if jid_obj is None or jid_obj.user or jid_obj.resource:
            raise InvalidValue(
                f"invalid component JID {jid!r}: use a domain such as comp.example.org"
            )
        misplaced = sorted(set(options) & set(CLIENT_ONLY_OPTION_KEYS))
        if misplaced:
            raise InvalidValue(
                f"options {', '.join(misplaced)} do not apply to a component, "
                "which has neither TLS nor SASL"
            )
        options[COMPONENT_KEY] = True
    else:
        options.pop(COMPONENT_KEY, None)
        if jid_obj is None or not jid_obj.user:
            raise InvalidValue(f"invalid profile JID {jid!r}: use user@domain")

    if not password:
        what = "shared secret (password)" if component else "password"
        raise InvalidValue(f"profile {name}: the {what} is empty")
    return jid_obj, options, component
