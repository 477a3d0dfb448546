"""Administration of the pubsub cache: start syncs, purge nodes, count what is cached.

Bridge methods:

- ``ps_cache_sync``: start, or restart, the sync of one node of a profile;
- ``ps_cache_purge`` and ``ps_cache_purge_all_profiles``: delete the cached
  nodes matching filters, with all their items;
- ``ps_cache_stats`` and ``ps_cache_stats_all_profiles``: count the cached
  nodes and items per sync state and type, with the database size and the
  cache's hits and misses.

The methods whose name ends with ``_all_profiles`` span every profile, or
the profiles of their ``profiles`` argument. The others act on one profile,
the default one when ``profile`` is None.

A purge deletes whole nodes, never some items of a node: a node missing items
would no longer equal what the service returns. The next request for a purged
node goes to the service and analyses the node again, as a first request does.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)
from libervia.backend.core.exceptions import InvalidValue, ProfileNotFound
from libervia.backend.memory.sqla_mapping import PubsubNode
from libervia.backend.plugins.plugin_xep_0060 import parse_jid

log = logging.getLogger(__name__)

PLUGIN_INFO = {
    "name": "Pubsub cache administration",
    "import_name": "PUBSUB_CACHE_ADMIN",
    "type": "PUBSUB",
    "dependencies": ["XEP-0060", "PUBSUB_CACHE"],
    "recommendations": [],
    "main": "PubsubCacheAdmin",
    "modes": ["client", "component"],
    "description": "Sync, purge and statistics of the pubsub cache",
}

# Key used in statistics for a node without sync state or type.
NONE_KEY = "none"


def parse_date(value: str | None, what: str) -> datetime | None:
    """Parse an ISO 8601 date and time with a UTC offset; None and "" stay None.

    Raises InvalidValue on another string or a time without offset, because
    the daemon cannot know the time zone of the caller.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidValue(f"invalid {what} {value!r}: expected an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidValue(
            f"invalid {what} {value!r}: expected ISO 8601, e.g. 2024-05-01T12:00:00+00:00"
        ) from None
    if moment.tzinfo is None:
        raise InvalidValue(
            f"invalid {what} {value!r}: add a UTC offset, e.g. {value}+00:00"
        )
    return moment


def _string_list(value: Any, what: str) -> list[str]:
    """Check a filter given as a list of strings; None gives an empty list."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list):
        raise InvalidValue(f"{what} must be a list of strings, not {value!r}")
    if not all(isinstance(entry, str) and entry for entry in value):
        raise InvalidValue(f"{what} must contain non-empty strings, not {value!r}")
    return value


class PubsubCacheAdmin:
    """Bridge methods administering the pubsub cache of the PUBSUB_CACHE plugin."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self._p = host.plugins["XEP-0060"]
        self._cache = host.plugins["PUBSUB_CACHE"]
        bridge = host.bridge
        bridge.register_method("ps_cache_sync", self._bridge_sync)
        bridge.register_method("ps_cache_purge", self._bridge_purge)
        bridge.register_method("ps_cache_purge_all_profiles", self._bridge_purge_all_profiles)
        bridge.register_method("ps_cache_stats", self._bridge_stats)
        bridge.register_method("ps_cache_stats_all_profiles", self._bridge_stats_all_profiles)

    # filters

    async def _profile_ids(self, names: list[str] | None) -> dict[int, str]:
        """Map the ids of the profiles called ``names`` (every profile for None) to their names.

        Raises ProfileNotFound naming each unknown profile.
        """
        profiles = {row.name: row.id for row in await self.host.storage.list_profiles()}
        if names is None:
            return {profile_id: name for name, profile_id in profiles.items()}
        unknown = [name for name in names if name not in profiles]
        if unknown:
            raise ProfileNotFound(
                f"profile(s) not found: {', '.join(unknown)}; see li profile list"
            )
        return {profiles[name]: name for name in names}

    @staticmethod
    def _node_filters(
        services: Any,
        nodes: Any,
        types: Any,
        subtypes: Any,
        created_before: Any,
        updated_before: Any,
    ) -> dict[str, Any]:
        """Check the filters received from the bridge and build Storage's filter keywords."""
        service_jids = [
            parse_jid(service).full()  # type: ignore[union-attr]
            for service in _string_list(services, "services")
        ]
        return {
            "services": service_jids,
            "names": _string_list(nodes, "nodes"),
            "types": _string_list(types, "types"),
            "subtypes": _string_list(subtypes, "subtypes"),
            "created_before": parse_date(created_before, "created_before date"),
            "updated_before": parse_date(updated_before, "updated_before date"),
        }

    async def _one_profile(self, profile: str | None) -> dict[int, str]:
        name = self.host.resolve_profile(profile)
        return await self._profile_ids([name])

    async def _profiles(self, profiles: Any) -> dict[int, str]:
        if profiles is None or profiles == []:
            return await self._profile_ids(None)
        return await self._profile_ids(_string_list(profiles, "profiles"))

    # sync

    async def _bridge_sync(
        self, service: str | None = None, node: str = "", profile: str | None = None,
    ) -> dict[str, Any]:
        """Start the sync of a node, or restart it when it is synchronised already.

        A node not cached yet is analysed first, from one item requested from
        the service, as the first request for it does. A sync already running
        is left to finish instead of starting a second one. Returns the node
        and its analysis. The end of the sync is sent as the ``ps_cache_sync``
        signal. Raises InvalidValue when no analyser marks the node for sync.
        """
        if not node:
            raise InvalidValue("a node name is required to sync a node")
        client = self.host.get_client(profile)
        service_jid = parse_jid(service) or client.jid.userhostJID()
        storage = self.host.storage

        node_row = await storage.get_pubsub_node(client.profile_id, service_jid.full(), node)
        if node_row is None:
            # The cache's items-received trigger analyses the node from the
            # items returned, and starts its sync when its analyser sets to_sync.
            await self._p.get_items(client, service_jid, node, max_items=1)
            node_row = await storage.get_pubsub_node(client.profile_id, service_jid.full(), node)
            if node_row is None:
                raise InvalidValue(
                    f"node {node!r} of {service_jid.full()} has no item to analyse and no "
                    f"analyser matches its name, so the cache does not synchronise it"
                )

        analyser = self._cache.analysers.get(node_row.analyser or "")
        if analyser is None or not analyser["to_sync"]:
            what = f"analysed as {node_row.analyser}" if node_row.analyser else "matched by no analyser"
            raise InvalidValue(
                f"node {node!r} of {service_jid.full()} is {what}, which the cache does not "
                f"synchronise"
            )
        self._cache.start_sync(client, service_jid, node, node_row.id, analyser)
        log.info(
            "profile %s: sync of node %s of %s requested through the bridge",
            client.profile, node, service_jid.full(),
        )
        return {
            "profile": client.profile,
            "service": service_jid.full(),
            "node": node,
            "analyser": node_row.analyser,
            "type": node_row.type_,
            "subtype": node_row.subtype,
        }

    # purge

    async def purge(self, profile_names: dict[int, str], **filters: Any) -> dict[str, Any]:
        """Delete the cached nodes matching ``filters``, with their items.

        ``profile_names`` maps the ids of the profiles to purge to their names.
        Each node's lock is held during the deletion, so a running sync or
        notification of the node finishes first and writes nothing back
        afterwards. The node also leaves the cache's memo of COMPLETED nodes.
        Returns the purged nodes and the numbers of nodes and items deleted.
        """
        storage = self.host.storage
        rows: list[PubsubNode] = await storage.find_pubsub_nodes(
            profile_ids=list(profile_names), **filters
        )
        locks = []
        # No deadlock: the cache's syncs and event handlers hold one node lock
        # at a time, and concurrent purges take theirs in the same order.
        # A sync queued behind one of these locks finds its node gone and
        # drops itself (PubsubCache._sync checks the row first).
        for row in sorted(rows, key=lambda r: (profile_names[r.profile_id], r.service, r.name)):
            lock = self._cache.node_lock(profile_names[row.profile_id], row.service, row.name)
            await lock.acquire()
            locks.append(lock)
        try:
            for row in rows:
                self._cache.forget_node(row.profile_id, row.service, row.name)
            node_count, item_count = await storage.delete_pubsub_nodes([row.id for row in rows])
        finally:
            for lock in locks:
                lock.release()
        log.info(
            "pubsub cache purged: %d nodes and %d items of profile(s) %s",
            node_count, item_count, ", ".join(sorted(set(profile_names.values()))),
        )
        return {
            "nodes": [
                {"profile": profile_names[row.profile_id], "service": row.service,
                 "node": row.name}
                for row in rows
            ],
            "node_count": node_count,
            "item_count": item_count,
        }

    async def _bridge_purge(
        self,
        services: list[str] | None = None,
        nodes: list[str] | None = None,
        types: list[str] | None = None,
        subtypes: list[str] | None = None,
        created_before: str | None = None,
        updated_before: str | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        """Delete the nodes of one profile's cache matching the filters, with their items.

        Every filter is optional: a list of accepted values, or an ISO 8601
        date with a UTC offset. Without filters, the profile's whole cache is
        deleted.
        """
        profile_names = await self._one_profile(profile)
        filters = self._node_filters(
            services, nodes, types, subtypes, created_before, updated_before
        )
        return await self.purge(profile_names, **filters)

    async def _bridge_purge_all_profiles(
        self,
        profiles: list[str] | None = None,
        services: list[str] | None = None,
        nodes: list[str] | None = None,
        types: list[str] | None = None,
        subtypes: list[str] | None = None,
        created_before: str | None = None,
        updated_before: str | None = None,
    ) -> dict[str, Any]:
        """Delete the matching nodes of every profile's cache, or of the ``profiles`` listed."""
        profile_names = await self._profiles(profiles)
        filters = self._node_filters(
            services, nodes, types, subtypes, created_before, updated_before
        )
        return await self.purge(profile_names, **filters)

    # statistics

    async def stats(self, profile_names: dict[int, str], **filters: Any) -> dict[str, Any]:
        """Count the cached nodes and items matching ``filters``; add the database size and hits.

        ``hits`` and ``misses`` count the requests that the cache served or
        sent to the service since the daemon started, for every profile, so
        the filters do not apply to them.
        """
        storage = self.host.storage
        groups = await storage.count_pubsub_cache(profile_ids=list(profile_names), **filters)
        rows = []
        totals: dict[str, dict[str, Any]] = {
            "nodes": {"total": 0, "by_state": {}, "by_type": {}},
            "items": {"total": 0, "by_state": {}, "by_type": {}},
        }
        for group in groups:
            state = group["sync_state"].value if group["sync_state"] else NONE_KEY
            type_ = group["type"] or NONE_KEY
            rows.append(
                {"sync_state": state, "type": group["type"], "subtype": group["subtype"],
                 "nodes": group["nodes"], "items": group["items"]}
            )
            for key in ("nodes", "items"):
                total = totals[key]
                total["total"] += group[key]
                total["by_state"][state] = total["by_state"].get(state, 0) + group[key]
                total["by_type"][type_] = total["by_type"].get(type_, 0) + group[key]
        rows.sort(key=lambda row: (row["sync_state"], row["type"] or "", row["subtype"] or ""))
        return {
            "profiles": sorted(profile_names.values()),
            "groups": rows,
            **totals,
            "database": {
                "engine": storage.engine.dialect.name,
                "size": await storage.get_database_size(),
            },
            "hits": self._cache.hits,
            "misses": self._cache.misses,
        }

    async def _bridge_stats(
        self,
        services: list[str] | None = None,
        nodes: list[str] | None = None,
        types: list[str] | None = None,
        subtypes: list[str] | None = None,
        created_before: str | None = None,
        updated_before: str | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        """Count one profile's cached nodes and items matching the filters (see stats)."""
        profile_names = await self._one_profile(profile)
        filters = self._node_filters(
            services, nodes, types, subtypes, created_before, updated_before
        )
        return await self.stats(profile_names, **filters)

    async def _bridge_stats_all_profiles(
        self,
        profiles: list[str] | None = None,
        services: list[str] | None = None,
        nodes: list[str] | None = None,
        types: list[str] | None = None,
        subtypes: list[str] | None = None,
        created_before: str | None = None,
        updated_before: str | None = None,
    ) -> dict[str, Any]:
        """Count the cached nodes and items of every profile, or of the ``profiles`` listed."""
        profile_names = await self._profiles(profiles)
        filters = self._node_filters(
            services, nodes, types, subtypes, created_before, updated_before
        )
        return await self.stats(profile_names, **filters)

