"""Transparent, persistent cache of pubsub nodes and items.

Plugins register *analysers* describing the nodes they understand. When items
of a node never seen before come from the network, the analysers are matched
against the node name and the payload namespace of the items received (so
analysing costs no extra request), and the result is stored with the node. A
node whose analyser sets ``to_sync`` is synchronised in the background:
subscribe, fetch every item (by RSM pages when the service pages), store the
items with their parsed data, then mark the node COMPLETED. From then on the ``XEP-0060_get_items`` trigger answers
requests for that node from storage, and notifications keep it exact.

What the cache promises: a node is served from storage only in the COMPLETED
state; requests arriving while a node is IN_PROGRESS, in ERROR or not synced
go to the network unchanged; ``extra={"use_cache": False}`` or the config
``[pubsub_cache] strategy = no_cache`` always go to the network. A COMPLETED
node serves all items, the newest ``max_items``, item ids and RSM pages
(XEP-0059) in creation or modification order; in its RSM answers ``first``
and ``last`` are item ids. Other request shapes go to the network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from libervia.backend.core import constants as C
from libervia.backend.core.exceptions import (
    InvalidValue,
    NotFound,
    PubsubBadRequest,
    PubsubFeatureNotImplemented,
)
from libervia.backend.memory.sqla import ItemsPage
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.plugins.plugin_xep_0059 import RSMRequest, RSMResponse
from libervia.backend.plugins.plugin_xep_0060 import (
    EVENT_DELETE,
    EVENT_ITEMS,
    EVENT_PURGE,
    NS_PUBSUB,
    TRIGGER_GET_ITEMS,
    TRIGGER_ITEMS_RECEIVED,
    items_from_xml,
    parse_jid,
)
from libervia.backend.tools.aio import maybe_await

log = logging.getLogger(__name__)

PLUGIN_INFO = {
    "name": "Pubsub cache",
    "import_name": "PUBSUB_CACHE",
    "type": "PUBSUB",
    "dependencies": ["XEP-0060"],
    "recommendations": [],
    "main": "PubsubCache",
    "modes": ["client", "component"],
    "description": "Local, persistent and searchable cache of pubsub nodes and items",
}

ANALYSER_KEYS = {"name", "type", "subtype", "node", "namespace", "to_sync", "parser", "match_cb"}

# The cache's triggers run before any other trigger of the same points.
TRIGGER_PRIORITY = 1000

STRATEGY_CACHE = "cache"
STRATEGY_NO_CACHE = "no_cache"


# Keys of ``extra`` that the cache serves itself. Any other key sends the
# request to the service.
SERVED_EXTRA_KEYS = frozenset({"use_cache", "order_by"})

ORDER_CREATION = "creation"
ORDER_MODIFICATION = "modification"
# ``extra["order_by"]`` values -> PubsubItem column that orders the items.
ORDER_COLUMNS = {ORDER_CREATION: "created", ORDER_MODIFICATION: "updated"}

DEFAULT_SYNC_PAGE_SIZE = 100
DEFAULT_MAX_ITEMS_PER_NODE = 10000
# Delay before the first retry of a failed sync, doubled at each new failure
# up to the maximum (seconds).
DEFAULT_SYNC_RETRY_DELAY = 60
MAX_SYNC_RETRY_DELAY = 3600


class NodeTooLarge(Exception):
    """A node contains more items than ``[pubsub_cache] max_items_per_node``."""


def _node_key(client: Any, service: str, node: str) -> tuple[str, str, str]:
    return (client.profile, service, node)


def _rsm_metadata(page: ItemsPage) -> dict[str, Any]:
    """Build the RSM metadata of a page served from storage.

    ``first`` and ``last`` are item ids, the keys that ``after`` and
    ``before`` take back. An empty page reports only the count.
    """
    if not page.item_ids:
        return RSMResponse(count=page.count).to_dict()
    return RSMResponse(
        first=page.item_ids[0], first_index=page.first_index, last=page.item_ids[-1],
        count=page.count,
    ).to_dict()


def _payload_namespace(items: list[domish.Element]) -> str | None:
    """Return the namespace of the first payload element of the first item, if any."""
    for item in items:
        for child in item.elements():
            return child.uri
    return None


def _item_xml(item: domish.Element) -> str:
    """Serialise an item in the pubsub namespace, whether it came from an event or a result."""
    item.uri = item.defaultUri = NS_PUBSUB
    return item.toXml()


class PubsubCache:
    """The cache plugin: analysers, sync, serving from storage and event handling."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self._p = host.plugins["XEP-0060"]
        self.analysers: dict[str, dict[str, Any]] = {}
        self._locks: dict[tuple[str, str, str], defer.DeferredLock] = {}
        self._syncs: dict[tuple[str, str, str], defer.Deferred] = {}
        self.hits = 0
        self.misses = 0
        # (profile id, service, node) -> node id of the COMPLETED nodes, so the
        # serving path reads no node row. Every state change of this process
        # goes through _set_state or _forget_node, which keep it exact.
        # TODO: several daemons sharing one PostgreSQL database need a shared
        # invalidation (LISTEN/NOTIFY) before this memo can be trusted there.
        self._completed: dict[tuple[int, str, str], int] = {}

        strategy = host.config.get("pubsub_cache", "strategy", STRATEGY_CACHE)
        if strategy not in (STRATEGY_CACHE, STRATEGY_NO_CACHE):
            raise InvalidValue(
                f"invalid [pubsub_cache] strategy {strategy!r}: use "
                f"{STRATEGY_CACHE} or {STRATEGY_NO_CACHE}"
            )
        self.strategy = strategy
        self.sync_page_size = self._positive_option("sync_page_size", DEFAULT_SYNC_PAGE_SIZE)
        self.max_items_per_node = self._positive_option(
            "max_items_per_node", DEFAULT_MAX_ITEMS_PER_NODE
        )
        self.sync_retry_delay = self._positive_option(
            "sync_retry_delay", DEFAULT_SYNC_RETRY_DELAY
        )
        # Retries of failed syncs: pending timer and failures in a row, per node.
        self._retry_calls: dict[tuple[str, str, str], Any] = {}
        self._failures: dict[tuple[str, str, str], int] = {}

        host.trigger.add(TRIGGER_GET_ITEMS, self._get_items_trigger, TRIGGER_PRIORITY)
        host.trigger.add(TRIGGER_ITEMS_RECEIVED, self._items_received_trigger, TRIGGER_PRIORITY)
        self._p.add_node_callback("", EVENT_ITEMS, self._on_items_event, TRIGGER_PRIORITY)
        self._p.add_node_callback("", EVENT_PURGE, self._on_purge_event, TRIGGER_PRIORITY)
        self._p.add_node_callback("", EVENT_DELETE, self._on_delete_event, TRIGGER_PRIORITY)
        host.bridge.register_method("ps_cache_get", self._bridge_cache_get)
        host.bridge.register_method("ps_cache_reset", self._bridge_cache_reset)

    def _positive_option(self, option: str, default: int) -> int:
        value = self.host.config.getint("pubsub_cache", option, default)
        if value is None or value < 1:
            raise InvalidValue(
                f"invalid [pubsub_cache] {option} {value!r}: use an integer of 1 or more"
            )
        return value

    async def stop(self) -> None:
        """Cancel the pending sync retries and wait for the running syncs."""
        for call in self._retry_calls.values():
            if call.active():
                call.cancel()
        self._retry_calls.clear()
        await self.wait_syncs()

    # analysers

    def register_analyser(self, analyser: dict[str, Any]) -> None:
        """Register a description of a kind of node to recognise, and maybe cache.

        ``analyser`` keys:

        - ``name`` (required, unique): identifies the analyser in storage;
        - ``type`` (required) and ``subtype``: stored with each matching node;
        - ``node``: a node name, or a prefix the node name starts with;
        - ``namespace``: namespace of the items' payload (the first child of
          ``<item/>``); at least one of ``node`` and ``namespace`` is required;
        - ``to_sync`` (default False): synchronise matching nodes;
        - ``parser``: ``parser(client, item_elt, service, node)`` returning a
          JSON-serialisable dict stored as the item's parsed data, or None;
          it may be a plain function, a coroutine function or return a
          Deferred, and its exceptions are logged and leave the item unparsed;
        - ``match_cb``: ``match_cb(client, analyse)`` returning False to reject
          a node that the other keys matched.

        Matching order: an analyser whose ``node`` equals the node name, then
        those whose ``node`` is a prefix of it (longest prefix first), then
        those with only a ``namespace``. An analyser with a ``namespace`` only
        matches when the payload namespace is unknown (no item received) or
        equal. The first analyser left wins.

        Raises InvalidValue when a key is missing, unknown or of the wrong type,
        or when the name is already registered.
        """
        if not isinstance(analyser, dict):
            raise InvalidValue(f"an analyser must be a dict, got {type(analyser).__name__}")
        unknown = set(analyser) - ANALYSER_KEYS
        if unknown:
            raise InvalidValue(
                f"unknown analyser keys {sorted(unknown)}: allowed keys are "
                f"{sorted(ANALYSER_KEYS)}"
            )
        name = analyser.get("name")
        if not name or not isinstance(name, str):
            raise InvalidValue(f"analyser {analyser!r} needs a non-empty string 'name'")
        if name in self.analysers:
            raise InvalidValue(f"an analyser named {name!r} is already registered")
        if not analyser.get("type") or not isinstance(analyser["type"], str):
            raise InvalidValue(f"analyser {name!r} needs a non-empty string 'type'")
        if not analyser.get("node") and not analyser.get("namespace"):
            raise InvalidValue(f"analyser {name!r} needs a 'node', a 'namespace' or both")
        for key in ("subtype", "node", "namespace"):
            if analyser.get(key) is not None and not isinstance(analyser[key], str):
                raise InvalidValue(
                    f"analyser {name!r}: {key!r} must be a string, not {analyser[key]!r}"
                )
        if "to_sync" in analyser and not isinstance(analyser["to_sync"], bool):
            raise InvalidValue(
                f"analyser {name!r}: 'to_sync' must be True or False, not {analyser['to_sync']!r}"
            )
        for key in ("parser", "match_cb"):
            if analyser.get(key) is not None and not callable(analyser[key]):
                raise InvalidValue(f"analyser {name!r}: {key!r} must be callable")
        entry = {"subtype": None, "node": None, "namespace": None, "to_sync": False,
                 "parser": None, "match_cb": None}
        entry.update(analyser)
        entry["to_sync"] = bool(entry["to_sync"])
        self.analysers[name] = entry
        log.debug("analyser %s registered", name)

    def unregister_analyser(self, name: str) -> None:
        """Remove an analyser; raise NotFound when no analyser has this name."""
        if self.analysers.pop(name, None) is None:
            raise NotFound(f"no analyser named {name!r} is registered")

    def _candidates(self, node: str) -> list[dict[str, Any]]:
        exact = [a for a in self.analysers.values() if a["node"] == node]
        prefix = sorted(
            (a for a in self.analysers.values()
             if a["node"] and a["node"] != node and node.startswith(a["node"])),
            key=lambda a: -len(a["node"]),
        )
        namespace_only = [a for a in self.analysers.values() if not a["node"]]
        return exact + prefix + namespace_only

    async def analyse_node(
        self, client: Any, service: JID, node: str, items: list[domish.Element],
    ) -> dict[str, Any] | None:
        """Return the analyser matching a node, given some of its items, or None."""
        namespace = _payload_namespace(items)
        analyse = {"service": service, "node": node, "namespace": namespace}
        for analyser in self._candidates(node):
            if analyser["namespace"]:
                if namespace is None and not analyser["node"]:
                    continue
                if namespace is not None and analyser["namespace"] != namespace:
                    continue
            match_cb = analyser["match_cb"]
            if match_cb is not None and not await maybe_await(match_cb(client, analyse)):
                continue
            return analyser
        return None

    # serving

    async def _get_items_trigger(
        self,
        client: Any,
        service: JID | None,
        node: str,
        max_items: int | None,
        item_ids: list[str] | None,
        sub_id: str | None,
        extra: dict[str, Any],
        rsm_request: RSMRequest | None = None,
    ) -> tuple[bool, Any] | None:
        if self.strategy == STRATEGY_NO_CACHE or not extra.get("use_cache", True):
            return None
        if sub_id is not None:
            # A subscription id filters what the service returns: not answerable here.
            return None
        if set(extra) - SERVED_EXTRA_KEYS:
            # MAM queries and any option the cache does not know change what
            # the service returns.
            return None
        order_by = extra.get("order_by", ORDER_CREATION)
        if order_by not in ORDER_COLUMNS:
            return None
        if rsm_request is not None and (max_items or item_ids):
            # Services disagree on how max_items or item ids combine with a page.
            return None
        service = service or client.jid.userhostJID()
        node_id = await self._completed_node_id(client, service.full(), node)
        if node_id is None:
            self.misses += 1
            return None

        metadata: dict[str, Any] = {
            C.META_SERVICE: service.full(),
            C.META_NODE: node,
            C.META_FROM_CACHE: True,
        }
        if "order_by" in extra:
            metadata["order_by"] = order_by
        if rsm_request is None:
            xmls = await self.host.storage.get_pubsub_items_xml(
                node_id, max_items=max_items, item_ids=item_ids,
                order_by=ORDER_COLUMNS[order_by],
            )
            metadata[C.META_COMPLETE] = max_items is None and not item_ids
        else:
            page = await self.host.storage.get_pubsub_items_page(
                node_id,
                max_items=rsm_request.max,
                after=rsm_request.after,
                before=rsm_request.before,
                index=rsm_request.index,
                order_by=ORDER_COLUMNS[order_by],
            )
            if page is None:
                # The after/before key is no item id of this node: it may be
                # a key of the service (ejabberd pages by timestamps), which
                # only the service can interpret.
                self.misses += 1
                return None
            xmls = page.xmls
            metadata[C.META_RSM] = _rsm_metadata(page)
            metadata["rsm_ignored"] = False
            metadata[C.META_COMPLETE] = len(page.xmls) == page.count
        items = items_from_xml(xmls)
        self.hits += 1
        log.debug(
            "profile %s: %d items of %s node %s served from the cache",
            client.profile, len(items), service.full(), node,
        )
        return False, (items, metadata)

    async def _completed_node_id(self, client: Any, service: str, node: str) -> int | None:
        """Return the id of a COMPLETED node, or None when it must not be served."""
        key = (client.profile_id, service, node)
        node_id = self._completed.get(key)
        if node_id is not None:
            return node_id
        node_row = await self.host.storage.get_pubsub_node(client.profile_id, service, node)
        if node_row is None or node_row.sync_state != SyncState.COMPLETED:
            return None
        self._completed[key] = node_row.id
        return node_row.id

    async def _set_state(
        self, client: Any, service: str, node: str, node_id: int, state: SyncState,
    ) -> None:
        """Store a node's sync state and keep the memo of COMPLETED nodes exact."""
        key = (client.profile_id, service, node)
        if state != SyncState.COMPLETED:
            self._completed.pop(key, None)
        await self.host.storage.update_pubsub_node_sync_state(node_id, state)
        if state == SyncState.COMPLETED:
            self._completed[key] = node_id

    def _forget_node(self, client: Any, service: str, node: str) -> None:
        self._completed.pop((client.profile_id, service, node), None)

    async def _items_received_trigger(
        self,
        client: Any,
        service: JID | None,
        node: str,
        max_items: int | None,
        item_ids: list[str] | None,
        extra: dict[str, Any],
        items: list[domish.Element],
        metadata: dict[str, Any],
    ) -> None:
        """Analyse a node seen for the first time, from the items just received."""
        if self.strategy == STRATEGY_NO_CACHE or not extra.get("use_cache", True):
            return
        service = service or client.jid.userhostJID()
        storage = self.host.storage
        if await storage.get_pubsub_node(client.profile_id, service.full(), node) is not None:
            return
        analyser = await self.analyse_node(client, service, node, items)
        if analyser is None:
            if items:
                # The payload was seen and nothing matched: remember it, so the
                # node is not analysed again.
                await storage.set_pubsub_node(
                    client.profile_id, service.full(), node, sync_state=SyncState.NO_SYNC
                )
            return
        node_row = await storage.set_pubsub_node(
            client.profile_id,
            service.full(),
            node,
            analyser=analyser["name"],
            type_=analyser["type"],
            subtype=analyser["subtype"],
            sync_state=None if analyser["to_sync"] else SyncState.NO_SYNC,
        )
        log.info(
            "profile %s: node %s of %s analysed as %s (sync: %s)",
            client.profile, node, service.full(), analyser["name"], analyser["to_sync"],
        )
        if analyser["to_sync"]:
            self.start_sync(client, service, node, node_row.id, analyser)

    # sync

    def _lock(self, key: tuple[str, str, str]) -> defer.DeferredLock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()
        return lock

    def start_sync(
        self, client: Any, service: JID, node: str, node_id: int, analyser: dict[str, Any],
    ) -> defer.Deferred:
        """Start synchronising a node in the background, unless a sync is running.

        Returns the Deferred of the running sync. Sync errors are logged and
        stored as the ERROR state instead of failing that Deferred.
        """
        key = _node_key(client, service.full(), node)
        running = self._syncs.get(key)
        if running is not None:
            return running
        retry_call = self._retry_calls.pop(key, None)
        if retry_call is not None and retry_call.active():
            retry_call.cancel()
        d = defer.ensureDeferred(self._sync(client, service, node, node_id, analyser))
        self._syncs[key] = d

        def done(result: Any) -> Any:
            self._syncs.pop(key, None)
            return result

        d.addBoth(done)
        return d

    async def wait_syncs(self) -> None:
        """Wait until every running sync has finished (for shutdown and tests)."""
        while self._syncs:
            await defer.DeferredList(list(self._syncs.values()))

    async def _sync(
        self, client: Any, service: JID, node: str, node_id: int, analyser: dict[str, Any],
    ) -> None:
        storage = self.host.storage
        key = _node_key(client, service.full(), node)
        # Events of this node wait for the lock, so one that arrives while the
        # fetch is in flight is applied after the fetched items are stored.
        await self._lock(key).acquire()
        try:
            current = await storage.get_pubsub_node(client.profile_id, service.full(), node)
            if current is None or current.id != node_id:
                # A reset or purge removed the node while this sync waited for
                # the lock: the next get analyses it again.
                log.info(
                    "profile %s: sync of node %s of %s dropped, the node left the cache",
                    client.profile, node, service.full(),
                )
                self.host.bridge.send_signal(
                    "ps_cache_sync", profile=client.profile, service=service.full(),
                    node=node, state="REMOVED",
                )
                return
            await self._set_state(client, service.full(), node, node_id, SyncState.IN_PROGRESS)
            log.info("profile %s: syncing node %s of %s", client.profile, node, service.full())
            await self._p.subscribe(client, service, node)
            items = await self._fetch_node(client, service, node)
            rows = [await self._item_row(client, service, node, item, analyser) for item in items]
            # Notifications may carry a publisher attribute that the service
            # omits from items results (Prosody 0.12 does). Remembering what
            # this service returns keeps items stored from notifications equal
            # to the items it would return.
            publisher_in_items = any(item.hasAttribute("publisher") for item in items)
            await storage.set_pubsub_node(
                client.profile_id, service.full(), node,
                extra={"publisher_in_items": publisher_in_items},
            )
            await storage.delete_pubsub_items(node_id)
            await storage.cache_pubsub_items(node_id, [row for row in rows if row is not None])
            await self._set_state(client, service.full(), node, node_id, SyncState.COMPLETED)
        except Exception as e:
            if isinstance(e, NodeTooLarge):
                # Retrying soon would fetch the same items again: the node is
                # synced again at the next connection of the profile.
                log.warning(
                    "profile %s: node %s of %s not cached: %s; raise [pubsub_cache] "
                    "max_items_per_node to cache it", client.profile, node, service.full(), e,
                )
            else:
                log.warning(
                    "profile %s: sync of node %s of %s failed: %s",
                    client.profile, node, service.full(), e,
                )
            await self._set_state(client, service.full(), node, node_id, SyncState.ERROR)
            self.host.bridge.send_signal(
                "ps_cache_sync", profile=client.profile, service=service.full(), node=node,
                state=SyncState.ERROR.value, error=str(e),
            )
            if not isinstance(e, NodeTooLarge):
                self._schedule_retry(client, service, node, node_id, analyser)
            return
        finally:
            self._lock(key).release()
        self._failures.pop(key, None)
        log.info(
            "profile %s: node %s of %s synchronised, items stored: %d",
            client.profile, node, service.full(), len(items),
        )
        self.host.bridge.send_signal(
            "ps_cache_sync", profile=client.profile, service=service.full(), node=node,
            state=SyncState.COMPLETED.value, items=len(items),
        )

    def _schedule_retry(
        self, client: Any, service: JID, node: str, node_id: int, analyser: dict[str, Any],
    ) -> None:
        """Sync a failed node again later, waiting twice as long after each failure."""
        from twisted.internet import reactor

        key = _node_key(client, service.full(), node)
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self.sync_retry_delay * 2 ** (failures - 1), MAX_SYNC_RETRY_DELAY)

        def retry() -> None:
            self._retry_calls.pop(key, None)
            if not getattr(client, "connected", True):
                # profile_connected syncs the nodes in ERROR when the profile is back.
                return
            self.start_sync(client, service, node, node_id, analyser)

        previous = self._retry_calls.pop(key, None)
        if previous is not None and previous.active():
            previous.cancel()
        self._retry_calls[key] = reactor.callLater(delay, retry)
        log.info(
            "profile %s: sync of node %s of %s retried in %d s (failure %d)",
            client.profile, node, service.full(), delay, failures,
        )

    async def _fetch_node(self, client: Any, service: JID, node: str) -> list[domish.Element]:
        """Fetch every item of a node, oldest first, by RSM pages when the service pages.

        The first request is for an RSM page. A service that ignores RSM
        (Prosody 0.12) sends every item back, and that is the full fetch.
        Otherwise pages follow, each one after the ``last`` key of the
        previous one, until the reported count is reached, a page has no
        ``last``, or a page repeats item ids. Raises NodeTooLarge when the
        node holds more than ``max_items_per_node`` items.
        """
        limit = self.max_items_per_node
        extra = {"use_cache": False}
        request = RSMRequest(max=self.sync_page_size)
        try:
            items, metadata = await self._p.get_items(
                client, service, node, extra=extra, rsm_request=request
            )
        except (PubsubBadRequest, PubsubFeatureNotImplemented) as e:
            log.debug(
                "profile %s: %s rejects RSM on node %s (%s): fetching every item",
                client.profile, service.full(), node, e,
            )
            items, metadata = await self._p.get_items(client, service, node, extra=extra)
            metadata["rsm_ignored"] = True
        if metadata.get("rsm_ignored", True):
            if len(items) > limit:
                raise NodeTooLarge(f"{len(items)} items, more than the limit of {limit}")
            return items

        fetched: dict[str, domish.Element] = {}
        pages = 0
        while True:
            pages += 1
            rsm = metadata.get(C.META_RSM) or {}
            count = rsm.get("count")
            if count is not None and count > limit:
                raise NodeTooLarge(f"{count} items, more than the limit of {limit}")
            repeated = False
            for item in items:
                item_id = item.getAttribute("id")
                if item_id in fetched:
                    repeated = True
                    continue
                # Items without id are dropped later by _item_row.
                fetched[item_id or f"\0{len(fetched)}"] = item
            if len(fetched) > limit:
                raise NodeTooLarge(f"more than the limit of {limit} items")
            if repeated:
                log.debug(
                    "profile %s: page %d of %s node %s repeats items: paging stopped",
                    client.profile, pages, service.full(), node,
                )
                break
            if not items or (count is not None and len(fetched) >= count):
                break
            last = rsm.get("last")
            if not last:
                break
            items, metadata = await self._p.get_items(
                client, service, node, extra=extra,
                rsm_request=RSMRequest(max=self.sync_page_size, after=last),
            )
        log.debug(
            "profile %s: %d items of %s node %s fetched in %d RSM pages",
            client.profile, len(fetched), service.full(), node, pages,
        )
        # NOTE: pages are assumed oldest first, as Prosody 0.12 and ejabberd
        # 23.01 return forward pages. A service returning them newest first
        # would get its items stored in the wrong order.
        return list(fetched.values())

    async def _item_row(
        self, client: Any, service: JID, node: str, item: domish.Element,
        analyser: dict[str, Any] | None,
    ) -> tuple[str, str, dict | None, str | None] | None:
        """Build the storage tuple of an item; return None for an item without id."""
        item_id = item.getAttribute("id")
        if not item_id:
            log.debug(
                "profile %s: item without id dropped from %s node %s",
                client.profile, service.full(), node,
            )
            return None
        parsed = None
        parser: Callable[..., Any] | None = analyser["parser"] if analyser else None
        if parser is not None:
            try:
                parsed = await maybe_await(parser(client, item, service, node))
            except Exception as e:
                log.debug(
                    "profile %s: parser %s failed on item %s of %s node %s: %s",
                    client.profile, analyser["name"], item_id, service.full(), node, e,
                )
        return item_id, _item_xml(item), parsed, item.getAttribute("publisher")

    async def profile_connected(self, client: Any) -> None:
        """Restart the syncs left unfinished by a stop or a crash."""
        nodes = await self.host.storage.get_pubsub_nodes(profile_id=client.profile_id)
        for node_row in nodes:
            if node_row.sync_state not in (SyncState.IN_PROGRESS, SyncState.ERROR):
                continue
            analyser = self.analysers.get(node_row.analyser or "")
            if analyser is None or not analyser["to_sync"]:
                continue
            # TODO: COMPLETED nodes should be reconciled here (items published or
            # retracted while the profile was offline are not seen yet).
            self.start_sync(client, JID(node_row.service), node_row.name, node_row.id, analyser)

    # events

    async def _cached_node(self, client: Any, event: Any) -> Any:
        service = event.sender.full() if event.sender else client.jid.userhost()
        node_row = await self.host.storage.get_pubsub_node(
            client.profile_id, service, event.nodeIdentifier
        )
        if node_row is None or node_row.sync_state not in (
            SyncState.COMPLETED, SyncState.IN_PROGRESS
        ):
            return None
        return node_row

    async def _on_items_event(self, client: Any, event: Any) -> None:
        node_row = await self._cached_node(client, event)
        if node_row is None:
            return
        service = JID(node_row.service)
        node = node_row.name
        analyser = self.analysers.get(node_row.analyser or "")
        key = _node_key(client, node_row.service, node)
        await self._lock(key).acquire()
        try:
            # A sync may have run while this event waited for the lock.
            node_row = await self._cached_node(client, event)
            if node_row is None:
                return
            published: list[tuple[str, str, dict | None, str | None]] = []
            retracted: list[str] = []
            for elt in event.items:
                if elt.name == "retract":
                    if elt.getAttribute("id"):
                        retracted.append(elt["id"])
                    continue
                if elt.name != "item":
                    continue
                if not any(True for _ in elt.elements()) and elt.getAttribute("id"):
                    # Notification without payload: fetch the item rather than
                    # replacing a full cached item with an empty one.
                    fetched, _ = await self._p.get_items(
                        client, service, node, item_ids=[elt["id"]],
                        extra={"use_cache": False},
                    )
                    if not fetched:
                        continue
                    elt = fetched[0]
                publisher = elt.getAttribute("publisher")
                if publisher and not (node_row.extra or {}).get("publisher_in_items", True):
                    del elt.attributes["publisher"]
                row = await self._item_row(client, service, node, elt, analyser)
                if row is not None:
                    # The publisher column keeps it, whatever the XML shows.
                    published.append(row[:3] + (publisher or row[3],))
            if published:
                await self.host.storage.cache_pubsub_items(node_row.id, published)
            if retracted:
                await self.host.storage.delete_pubsub_items(node_row.id, retracted)
        finally:
            self._lock(key).release()
        log.debug(
            "profile %s: %s node %s: %d items stored, %d retracted from notification",
            client.profile, node_row.service, node, len(published), len(retracted),
        )

    async def _on_purge_event(self, client: Any, event: Any) -> None:
        node_row = await self._cached_node(client, event)
        if node_row is None:
            return
        await self.host.storage.delete_pubsub_items(node_row.id)
        log.info("profile %s: %s node %s purged", client.profile, node_row.service, node_row.name)

    async def _on_delete_event(self, client: Any, event: Any) -> None:
        node_row = await self._cached_node(client, event)
        if node_row is None:
            return
        self._forget_node(client, node_row.service, node_row.name)
        await self.host.storage.delete_pubsub_node(
            client.profile_id, node_row.service, node_row.name
        )
        log.info("profile %s: %s node %s deleted", client.profile, node_row.service, node_row.name)

    # bridge

    async def _find_cached_node(
        self, service: str | None, node: str, profile: str | None,
    ) -> tuple[Any, Any]:
        """Return the profile row and the cached node row; raise NotFound when not cached."""
        name = self.host.resolve_profile(profile)
        profile_row = await self.host.storage.get_profile(name)
        if profile_row is None:
            raise NotFound(f"profile {name!r} not found: see li profile list")
        service_jid = parse_jid(service)
        if service_jid is None:
            service_jid = JID(profile_row.jid).userhostJID()
        node_row = await self.host.storage.get_pubsub_node(
            profile_row.id, service_jid.full(), node
        )
        if node_row is None:
            raise NotFound(
                f"node {node!r} of {service_jid.full()} is not in the cache of profile "
                f"{name}; get its items once (li pubsub get) to have it analysed"
            )
        return profile_row, node_row

    async def _bridge_cache_get(
        self, service: str | None = None, node: str = "", profile: str | None = None,
    ) -> dict[str, Any]:
        """Return a cached node's state and every cached item with its parsed data."""
        _, node_row = await self._find_cached_node(service, node, profile)
        rows = await self.host.storage.get_pubsub_items(node_row.id)
        return {
            "node": {
                "service": node_row.service,
                "node": node_row.name,
                "analyser": node_row.analyser,
                "type": node_row.type_,
                "subtype": node_row.subtype,
                "sync_state": node_row.sync_state.value if node_row.sync_state else None,
                "sync_state_updated": node_row.sync_state_updated,
            },
            "items": [
                {
                    "id": row.name,
                    "xml": row.data,
                    "parsed": row.parsed,
                    "created": row.created,
                    "updated": row.updated,
                }
                for row in rows
            ],
        }

    async def _bridge_cache_reset(
        self, service: str | None = None, node: str = "", profile: str | None = None,
    ) -> dict[str, Any]:
        """Remove a node and its items from the cache; the next get analyses it again."""
        profile_row, node_row = await self._find_cached_node(service, node, profile)
        key = (profile_row.name, node_row.service, node_row.name)
        # Wait for a running sync or event of this node, so nothing writes it back.
        await self._lock(key).acquire()
        try:
            self._completed.pop((profile_row.id, node_row.service, node_row.name), None)
            await self.host.storage.delete_pubsub_node(
                profile_row.id, node_row.service, node_row.name
            )
        finally:
            self._lock(key).release()
        log.info(
            "profile %s: node %s of %s removed from the cache",
            profile_row.name, node_row.name, node_row.service,
        )
        return {"service": node_row.service, "node": node_row.name}
