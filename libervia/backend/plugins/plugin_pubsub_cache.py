"""Transparent, persistent cache of pubsub nodes and items.

Plugins register *analysers* describing the nodes they understand. When items
of a node never seen before come from the network, the analysers are matched
against the node name and the payload namespace of the items received (so
analysing costs no extra request), and the result is stored with the node. A
node whose analyser sets ``to_sync`` is synchronised in the background:
subscribe, fetch every item (by RSM pages when the service pages), store the
items with their parsed data, then mark the node COMPLETED. From then on the
``XEP-0060_get_items`` trigger serves requests for that node from storage,
notifications keep it exact, and each new connection of the profile
reconciles it with the service.

What the cache promises: a node is served from storage only in the COMPLETED
state, and then returns what the service would return for the same node
state, in the service's item order; requests arriving while a node is IN_PROGRESS, in ERROR
or not synced go to the network unchanged; ``extra={"use_cache": False}`` or
the config ``[pubsub_cache] strategy = no_cache`` always go to the network. A
COMPLETED node serves all items, the newest ``max_items``, item ids and RSM
pages (XEP-0059) in the service's order or by creation or modification time;
in its RSM results ``first`` and ``last`` are item ids. Other request shapes
go to the network. doc/developer.rst details the states and notifications.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
    PubsubError,
    PubsubFeatureNotImplemented,
    PubsubItemNotFound,
)
from libervia.backend.memory.sqla import ItemsPage, StoredItemState, item_digest
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.plugins.plugin_xep_0059 import NS_RSM, RSMRequest, RSMResponse
from libervia.backend.plugins.plugin_xep_0060 import (
    EVENT_CONFIGURATION,
    EVENT_DELETE,
    EVENT_ITEMS,
    EVENT_PURGE,
    EVENT_SUBSCRIPTION,
    NS_PUBSUB,
    TRIGGER_GET_ITEMS,
    TRIGGER_GET_ITEMS_XML,
    TRIGGER_ITEMS_RECEIVED,
    TRIGGER_NODE_CONFIGURED,
    TRIGGER_UNSUBSCRIBED,
    form_values,
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

# Keys of a cached node's ``extra`` mapping, besides ``publisher_in_items``.
# EXTRA_MAX_ITEMS is the node's pubsub#max_items: an integer, or "max" for no
# limit, absent when the profile cannot read it. EXTRA_ITEM_ORDER is the order
# of the service's items, ORDER_CREATION or ORDER_MODIFICATION, absent until
# an edit shows it.
EXTRA_MAX_ITEMS = "max_items"
EXTRA_ITEM_ORDER = "item_order"
# True when the service returns the items of a max_items request newest first
# (ejabberd 23.01 with SQL storage), False when oldest first (Prosody 0.12).
EXTRA_NEWEST_FIRST = "max_items_newest_first"
# True when the service returns the items of an item ids request in the order
# of the request (Prosody 0.12), False when in its item order (ejabberd 23.01).
EXTRA_IDS_IN_REQUEST_ORDER = "item_ids_in_request_order"
# Key of _service_read_orders, never stored: True when the service lists a
# node's item ids (disco#items) in the reverse order of its full items result
# (Prosody 0.12), False when in the same order.
LISTING_REVERSED = "item_ids_listing_reversed"
# Features a pubsub service announces when it pages items with RSM: XEP-0060
# names the pubsub#rsm feature, and ejabberd 23.01 with SQL storage announces
# the RSM namespace instead. Prosody 0.12 announces neither.
RSM_FEATURES = frozenset({f"{NS_PUBSUB}#rsm", NS_RSM})
MAX_ITEMS_UNLIMITED = "max"

# Number of the node's syncs in a row during which the profile's stream was
# lost, stored in the node's extra. A stream closes on a stanza over its
# per-stanza limits ([xmpp] max_stanza_size and max_stanza_elements), so a
# node whose items result or disco#items listing is larger loses the stream
# at every sync. From MAX_SYNC_STREAM_LOSSES on, the node is not synced again
# at each connection, which would loop forever.
EXTRA_STREAM_LOSSES = "sync_stream_losses"
MAX_SYNC_STREAM_LOSSES = 2

# Items per RSM page of a sync, and per storage batch. ejabberd 23.01 does
# not cap the page size (a request for 2,000 items gets 2,000), and each page
# costs it more on a larger node, so fewer pages are faster. Fetching 10,000
# items took 2.2 s in pages of 500, 3.5 s in pages of 100 and 2.9 s in pages
# of 1,000 (an estimate from one run each). Memory grows with the page size.
DEFAULT_SYNC_PAGE_SIZE = 500
DEFAULT_MAX_PARALLEL_SYNCS = 4
# A sync holds one page at a time, so its memory does not grow with the node
# (about 170 MB of peak RSS for 100,000 items): the limit guards the size of
# the database and the time of a sync. The item ids listing of a service
# without RSM must also fit in the streams' stanza limits ([xmpp]
# max_stanza_elements, 250,000 by default).
DEFAULT_MAX_ITEMS_PER_NODE = 100_000
# Delay before the first retry of a failed sync, doubled at each new failure
# up to the maximum (seconds).
DEFAULT_SYNC_RETRY_DELAY = 60
MAX_SYNC_RETRY_DELAY = 3600


@dataclass(frozen=True)
class ServedNode:
    """In-memory record of a COMPLETED node, with the orders the serving path needs."""

    node_id: int
    #: ORDER_CREATION or ORDER_MODIFICATION: the order of the service's items.
    item_order: str
    #: The service sends max_items results newest first.
    newest_first: bool
    #: The service sends item ids results in the order of the request.
    ids_in_request_order: bool


@dataclass
class FetchedItems:
    """Record of the items a sync fetched so far: no element, and XML only when needed."""

    #: Item ids, in the service's order.
    ids: list[str] = field(default_factory=list)
    #: XML of the items that storage does not contain equal (new or changed),
    #: by item id. Empty in a first sync, which stores each page at once.
    changed_xml: dict[str, str] = field(default_factory=dict)
    #: Some item carries a publisher attribute.
    publisher_in_items: bool = False
    #: Items stored while fetching (first sync).
    written: int = 0

    def add(self, item: domish.Element) -> None:
        """Record a fetched item, which has an id."""
        self.ids.append(item["id"])
        if not self.publisher_in_items and item.hasAttribute("publisher"):
            self.publisher_in_items = True


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


def parse_max_items(value: Any) -> int | str | None:
    """Read a pubsub#max_items value: an integer, MAX_ITEMS_UNLIMITED, or None when unusable."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == MAX_ITEMS_UNLIMITED:
        return MAX_ITEMS_UNLIMITED
    try:
        max_items = int(value)
    except (TypeError, ValueError):
        log.debug("pubsub#max_items value %r ignored: not an integer nor %r", value,
                  MAX_ITEMS_UNLIMITED)
        return None
    return max_items if max_items >= 0 else None


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
        # (profile id, service, node) -> (node id, order of the service's
        # items) of the COMPLETED nodes, so the serving path reads no node row.
        # Every change of a node's state or item order in this process goes
        # through _set_state or _forget_node, which keep it exact.
        # TODO: several daemons sharing one PostgreSQL database need a shared
        # invalidation (LISTEN/NOTIFY) before this memo can be trusted there.
        self._completed: dict[tuple[int, str, str], ServedNode] = {}
        # Sync state writes per node, counted at the start and at the end of
        # each: an odd count means a write is in flight (see _set_state).
        self._state_changes: dict[tuple[int, str, str], int] = {}
        # Ids of the profiles whose profile_connected is taking their COMPLETED
        # nodes back to IN_PROGRESS. Until it has, storage and the memo still
        # show those nodes COMPLETED without the changes made while the
        # profile was offline (or lost by a crash), so none of them is served.
        self._reconnecting_profiles: set[int] = set()
        # Nodes (profile id, service, node) whose notification could not be
        # applied: not served until a sync completes them, even when their
        # ERROR state could not be stored (on a full disk, for instance).
        self._unserved_nodes: set[tuple[int, str, str]] = set()
        # Order of the items of each service (see EXTRA_ITEM_ORDER) and the
        # orders of its max_items and item ids results, once known.
        self._service_orders: dict[str, str] = {}
        self._service_read_orders: dict[str, dict[str, bool]] = {}

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
        self._sync_slots = defer.DeferredSemaphore(
            self._positive_option("max_parallel_syncs", DEFAULT_MAX_PARALLEL_SYNCS)
        )
        # Retries of failed syncs: pending timer and failures in a row, per node.
        self._retry_calls: dict[tuple[str, str, str], Any] = {}
        self._failures: dict[tuple[str, str, str], int] = {}

        host.trigger.add(TRIGGER_GET_ITEMS, self._get_items_trigger, TRIGGER_PRIORITY)
        host.trigger.add(TRIGGER_GET_ITEMS_XML, self._get_items_xml_trigger, TRIGGER_PRIORITY)
        host.trigger.add(TRIGGER_ITEMS_RECEIVED, self._items_received_trigger, TRIGGER_PRIORITY)
        event_handlers = {
            EVENT_ITEMS: self._on_items_event,
            EVENT_PURGE: self._on_purge_event,
            EVENT_DELETE: self._on_delete_event,
            EVENT_CONFIGURATION: self._on_configuration_event,
            EVENT_SUBSCRIPTION: self._on_subscription_event,
        }
        for kind, handler in event_handlers.items():
            self._p.add_node_callback(
                "", kind, self._guard_event_handler(handler), TRIGGER_PRIORITY
            )
        host.trigger.add(TRIGGER_NODE_CONFIGURED, self._node_configured_trigger, TRIGGER_PRIORITY)
        host.trigger.add(TRIGGER_UNSUBSCRIBED, self._unsubscribed_trigger, TRIGGER_PRIORITY)
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
        served = await self._serve(
            client, service, node, max_items, item_ids, sub_id, extra, rsm_request
        )
        if served is None:
            self.misses += 1
            return None
        xmls, metadata = served
        return False, (items_from_xml(xmls), metadata)

    async def _get_items_xml_trigger(
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
        # A request this trigger declines goes on to the XEP-0060_get_items
        # trigger, which counts the miss.
        served = await self._serve(
            client, service, node, max_items, item_ids, sub_id, extra, rsm_request
        )
        return None if served is None else (False, served)

    async def _serve(
        self,
        client: Any,
        service: JID | None,
        node: str,
        max_items: int | None,
        item_ids: list[str] | None,
        sub_id: str | None,
        extra: dict[str, Any],
        rsm_request: RSMRequest | None,
    ) -> tuple[list[str], dict[str, Any]] | None:
        """Return the stored XML and the metadata of a get request, or None when not served."""
        if self.strategy == STRATEGY_NO_CACHE or not extra.get("use_cache", True):
            return None
        if sub_id is not None:
            # A subscription id filters what the service returns: not answerable here.
            return None
        if set(extra) - SERVED_EXTRA_KEYS:
            # MAM queries and any option the cache does not know change what
            # the service returns.
            return None
        order_by = extra.get("order_by")
        if order_by is not None and order_by not in ORDER_COLUMNS:
            return None
        if rsm_request is not None and (max_items or item_ids):
            # Services disagree on how max_items or item ids combine with a page.
            return None
        service = service or client.jid.userhostJID()
        service_str = service.full()
        completed = await self._completed_node(client, service_str, node)
        if completed is None:
            return None
        node_id = completed.node_id
        # Without an explicit order, items come in the order the service uses.
        order_by = order_by or completed.item_order

        metadata: dict[str, Any] = {
            C.META_SERVICE: service_str,
            C.META_NODE: node,
            C.META_FROM_CACHE: True,
        }
        if "order_by" in extra:
            metadata["order_by"] = order_by
        storage = self.host.storage
        if rsm_request is None:
            column = ORDER_COLUMNS[order_by]
            rows = storage.read_items_xml_now(
                node_id, max_items=max_items, item_ids=item_ids, order_by=column
            )
            if rows is None:
                rows = await storage.get_pubsub_items_xml(
                    node_id, max_items=max_items, item_ids=item_ids, order_by=column,
                )
            metadata[C.META_COMPLETE] = max_items is None and not item_ids
            if max_items is not None and "order_by" not in extra and completed.newest_first:
                rows.reverse()
            if item_ids and "order_by" not in extra and completed.ids_in_request_order:
                position = {item_id: index for index, item_id in reversed(list(enumerate(item_ids)))}
                rows.sort(key=lambda row: position.get(row[0], len(position)))
            xmls = [row[1] for row in rows]
        else:
            page = await storage.get_pubsub_items_page(
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
                return None
            xmls = page.xmls
            metadata[C.META_RSM] = _rsm_metadata(page)
            metadata["rsm_ignored"] = False
            metadata[C.META_COMPLETE] = len(page.xmls) == page.count
        self.hits += 1
        log.debug(
            "profile %s: %d items of %s node %s served from the cache",
            client.profile, len(xmls), service_str, node,
        )
        return xmls, metadata

    async def _completed_node(
        self, client: Any, service: str, node: str,
    ) -> ServedNode | None:
        """Return what serving a COMPLETED node needs, or None when it must not be served."""
        if client.profile_id in self._reconnecting_profiles:
            return None
        key = (client.profile_id, service, node)
        if key in self._unserved_nodes:
            return None
        completed = self._completed.get(key)
        if completed is not None:
            return completed
        changes = self._state_changes.get(key, 0)
        node_row = await self.host.storage.get_pubsub_node(client.profile_id, service, node)
        if node_row is None or node_row.sync_state != SyncState.COMPLETED:
            return None
        if self._state_changes.get(key, 0) != changes or changes % 2:
            # The state changed, or was being changed, during the read: the
            # row may be older than the new state.
            return None
        extra = node_row.extra or {}
        known = self._service_read_orders.get(node_row.service, {})

        def read_order(name: str) -> bool:
            value = extra.get(name)
            return bool(known.get(name, False) if value is None else value)

        completed = self._completed[key] = ServedNode(
            node_row.id, self._item_order(node_row), read_order(EXTRA_NEWEST_FIRST),
            read_order(EXTRA_IDS_IN_REQUEST_ORDER),
        )
        return completed

    def _item_order(self, node_row: Any) -> str:
        """Return the order in which a node's service returns items (creation when unknown)."""
        order = (node_row.extra or {}).get(EXTRA_ITEM_ORDER)
        return order or self._service_orders.get(node_row.service, ORDER_CREATION)

    async def _set_state(
        self, client: Any, service: str, node: str, node_id: int, state: SyncState | None,
    ) -> None:
        """Store a node's sync state and keep the memo of COMPLETED nodes exact."""
        # The memo is filled again from storage by the next request. A
        # request whose read of the node overlaps the update does not fill
        # it (see _completed_node): it may have read the old state.
        key = (client.profile_id, service, node)
        self._completed.pop(key, None)
        self._state_changes[key] = self._state_changes.get(key, 0) + 1
        try:
            await self.host.storage.update_pubsub_node_sync_state(node_id, state)
        finally:
            self._completed.pop(key, None)
            self._state_changes[key] += 1
        if state == SyncState.COMPLETED:
            self._unserved_nodes.discard((client.profile_id, service, node))

    def _forget_node(self, client: Any, service: str, node: str) -> None:
        self.forget_node(client.profile_id, service, node)

    def forget_node(self, profile_id: int, service: str, node: str) -> None:
        """Stop serving a node from the memo of COMPLETED nodes.

        Call it, holding :meth:`node_lock`, before deleting a node from storage
        outside this plugin.
        """
        key = (profile_id, service, node)
        self._completed.pop(key, None)
        # A read of the node in flight must not fill the memo again.
        self._state_changes[key] = self._state_changes.get(key, 0) + 2

    def node_lock(self, profile: str, service: str, node: str) -> defer.DeferredLock:
        """Return the lock that a node's sync and notification handlers hold while they write it.

        Hold it to change a cached node from outside this plugin: a sync
        queued behind it finds the node gone and drops itself. Take one node
        lock at a time, or several in a fixed order, to avoid deadlocks.
        """
        return self._lock((profile, service, node))

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
        # A profile connecting reconciles all its nodes: at most
        # max_parallel_syncs of them talk to services at once.
        await self._sync_slots.acquire()
        try:
            await self._sync_node(client, service, node, node_id, analyser)
        finally:
            self._sync_slots.release()

    async def _sync_node(
        self, client: Any, service: JID, node: str, node_id: int, analyser: dict[str, Any],
    ) -> None:
        """Synchronise a node: subscribe, fetch every item and make storage equal to it.

        A node synchronised before (at a reconnection, or after an edit that
        showed the service's item order) is reconciled: only the items that
        changed are written, the items gone are deleted.
        """
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
                self._send_sync_signal(client, service, node, "REMOVED")
                return
            if not await storage.try_lock_node_sync(node_id):
                log.info(
                    "profile %s: node %s of %s is being synchronised by another process "
                    "sharing the database: sync skipped", client.profile, node, service.full(),
                )
                self._send_sync_signal(
                    client, service, node, "LOCKED",
                    error="another process sharing the database synchronises this node",
                )
                return
            try:
                await self._set_state(
                    client, service.full(), node, node_id, SyncState.IN_PROGRESS
                )
                self._send_sync_signal(
                    client, service, node, SyncState.IN_PROGRESS.value, items=0, count=None,
                )
                log.info("profile %s: syncing node %s of %s", client.profile, node, service.full())
                await self._p.subscribe(client, service, node)
                fetched, stored = await self._fetch_items(client, service, node, current, analyser)
                max_items = await self._read_max_items(client, service, node)
                read_orders = await self._learn_read_orders(client, service, node, fetched.ids)
                extra_values: dict[str, Any] = {
                    EXTRA_MAX_ITEMS: max_items, EXTRA_STREAM_LOSSES: None, **read_orders,
                }
                if stored is None:
                    written, deleted = fetched.written, 0
                    known_order = self._service_orders.get(service.full())
                    if known_order is not None and not (current.extra or {}).get(
                        EXTRA_ITEM_ORDER
                    ):
                        extra_values[EXTRA_ITEM_ORDER] = known_order
                else:
                    written, deleted = await self._apply_items(
                        client, service, node, current, analyser, fetched, stored
                    )
                # Notifications may carry a publisher attribute that the service
                # omits from items results (Prosody 0.12 does). Remembering what
                # this service returns keeps items stored from notifications equal
                # to the items it would return.
                await storage.update_pubsub_node_extra(
                    node_id, publisher_in_items=fetched.publisher_in_items, **extra_values,
                )
                await self._set_state(client, service.full(), node, node_id, SyncState.COMPLETED)
            finally:
                await storage.unlock_node_sync(node_id)
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
            self._send_sync_signal(client, service, node, SyncState.ERROR.value, error=str(e))
            if not getattr(client, "connected", True):
                await self._count_stream_loss(client, service, node, node_id)
            elif not isinstance(e, NodeTooLarge):
                self._schedule_retry(client, service, node, node_id, analyser)
            return
        finally:
            self._lock(key).release()
        self._failures.pop(key, None)
        log.info(
            "profile %s: node %s of %s synchronised: %d items, %d written, %d deleted",
            client.profile, node, service.full(), len(fetched.ids), written, deleted,
        )
        self._send_sync_signal(
            client, service, node, SyncState.COMPLETED.value, items=len(fetched.ids)
        )

    async def _count_stream_loss(
        self, client: Any, service: JID, node: str, node_id: int,
    ) -> None:
        """Record that the profile's stream was lost during a node's sync (see EXTRA_STREAM_LOSSES)."""
        node_row = await self.host.storage.get_pubsub_node(
            client.profile_id, service.full(), node
        )
        if node_row is None or node_row.id != node_id:
            return
        losses = int((node_row.extra or {}).get(EXTRA_STREAM_LOSSES) or 0) + 1
        await self.host.storage.update_pubsub_node_extra(
            node_id, **{EXTRA_STREAM_LOSSES: losses}
        )
        if losses >= MAX_SYNC_STREAM_LOSSES:
            log.warning(
                "profile %s: the stream was lost during the last %d syncs of node %s of %s, "
                "maybe because its items result is too large for one stanza; it is no longer "
                "synced at each connection: run li pubsub cache sync to try again",
                client.profile, losses, node, service.full(),
            )

    def _send_sync_signal(
        self, client: Any, service: JID, node: str, state: str, **values: Any,
    ) -> None:
        """Send the ``ps_cache_sync`` signal: a sync's progress (IN_PROGRESS) or its end."""
        self.host.bridge.send_signal(
            "ps_cache_sync", profile=client.profile, service=service.full(), node=node,
            state=state, **values,
        )

    async def _learn_read_orders(
        self, client: Any, service: JID, node: str, ids: list[str],
    ) -> dict[str, bool | None]:
        """Learn in which orders the service returns max_items and item ids results.

        XEP-0060 leaves both orders open and the servers differ. Once per
        service and daemon run, the first sync of a node of 2 items or more
        requests the 2 newest items, then the newest and oldest items by id
        in reverse order. Returns the EXTRA_NEWEST_FIRST and
        EXTRA_IDS_IN_REQUEST_ORDER values, None when still unknown. ``ids``
        are the node's item ids in the service's order.
        """
        known = self._service_read_orders.setdefault(service.full(), {})
        if len(set(ids)) == len(ids) >= 2:
            extra = {"use_cache": False}
            if EXTRA_NEWEST_FIRST not in known:
                probe, _ = await self._p.get_items(
                    client, service, node, max_items=2, extra=extra
                )
                probe_ids = [item.getAttribute("id") for item in probe]
                # Any other result means the node changed between the requests.
                if probe_ids in (ids[-2:], ids[-2:][::-1]):
                    known[EXTRA_NEWEST_FIRST] = probe_ids != ids[-2:]
            if EXTRA_IDS_IN_REQUEST_ORDER not in known:
                requested = [ids[-1], ids[0]]
                probe, _ = await self._p.get_items(
                    client, service, node, item_ids=requested, extra=extra
                )
                probe_ids = [item.getAttribute("id") for item in probe]
                if probe_ids in (requested, requested[::-1]):
                    known[EXTRA_IDS_IN_REQUEST_ORDER] = probe_ids == requested
            if known:
                log.debug("service %s: read orders %s", service.full(), known)
        return {
            EXTRA_NEWEST_FIRST: known.get(EXTRA_NEWEST_FIRST),
            EXTRA_IDS_IN_REQUEST_ORDER: known.get(EXTRA_IDS_IN_REQUEST_ORDER),
        }

    async def _read_max_items(self, client: Any, service: JID, node: str) -> int | str | None:
        """Return a node's max_items from its configuration or metadata; None when unreadable.

        Only owners may read the configuration. The metadata form is open to
        subscribers, but Prosody 0.12 and ejabberd 23.01 leave max_items out
        of it, so other profiles mostly get None.
        """
        try:
            form = await self._p.get_node_configuration(client, service, node)
            value = form_values(form).get("pubsub#max_items")
        except PubsubError as e:
            log.debug(
                "profile %s: configuration of node %s of %s not readable (%s)",
                client.profile, node, service.full(), e,
            )
            try:
                value = (await self._p.get_node_metadata(client, service, node)).get(
                    "pubsub#max_items"
                )
            except PubsubError:
                value = None
        return parse_max_items(value)

    async def _apply_items(
        self, client: Any, service: JID, node: str, node_row: Any,
        analyser: dict[str, Any] | None, fetched: FetchedItems,
        stored: dict[str, StoredItemState],
    ) -> tuple[int, int]:
        """Make the stored items of a node equal to ``fetched``, the service's full result.

        ``stored`` is the state of the node's items before the fetch.
        Unchanged items are not written again. When the stored order differs
        from the service's, the items from the first difference on are
        written again in the service's order. Also stores the service's item
        order when the result shows it. Returns the numbers of items written
        and deleted.
        """
        storage = self.host.storage
        live_ids = fetched.ids
        live = set(live_ids)
        unchanged = [item_id for item_id in live_ids if item_id not in fetched.changed_xml]
        item_order = (node_row.extra or {}).get(EXTRA_ITEM_ORDER) or self._infer_order(
            service.full(), stored, unchanged
        )
        if item_order is not None and (node_row.extra or {}).get(EXTRA_ITEM_ORDER) != item_order:
            await storage.update_pubsub_node_extra(node_row.id, **{EXTRA_ITEM_ORDER: item_order})

        deleted = [item_id for item_id in stored if item_id not in live]
        changed = [item_id for item_id in live_ids if item_id in fetched.changed_xml]
        changed_set = set(changed)
        # The order storage will have after the writes: unchanged items keep
        # their place, and written items go last unless the service orders by
        # creation and already had them.
        column = ORDER_COLUMNS[item_order or ORDER_CREATION]
        kept = sorted(
            (row for item_id, row in stored.items() if item_id in live),
            key=lambda row: (getattr(row, column), row.id),
        )
        if item_order == ORDER_MODIFICATION:
            expected = [row.name for row in kept if row.name not in changed_set] + changed
        else:
            expected = [row.name for row in kept] + [i for i in changed if i not in stored]
        to_write = changed
        tail: list[str] = []
        if expected != live_ids:
            first_difference = next(
                (index for index, (a, b) in enumerate(zip(expected, live_ids)) if a != b),
                min(len(expected), len(live_ids)),
            )
            tail = live_ids[first_difference:]
            tail_set = set(tail)
            to_write = [item_id for item_id in changed if item_id not in tail_set] + tail
        if deleted:
            await storage.delete_pubsub_items(node_row.id, deleted)
        written = await self._write_items(
            client, service, node, node_row.id, analyser, to_write, fetched.changed_xml,
            set(tail),
        )
        return written, len(deleted)

    async def _write_items(
        self, client: Any, service: JID, node: str, node_id: int,
        analyser: dict[str, Any] | None, item_ids: list[str], changed_xml: dict[str, str],
        reinserted: set[str],
    ) -> int:
        """Write items in the order of ``item_ids``, in batches of ``sync_page_size``; return the count.

        The XML of an item comes from ``changed_xml``, or from storage for an
        unchanged item. The items of ``reinserted`` are deleted just before
        their batch is written, so that they get new creation times, later
        than those of every item written before them.
        """
        storage = self.host.storage
        written = 0
        for start in range(0, len(item_ids), self.sync_page_size):
            batch = item_ids[start:start + self.sync_page_size]
            xmls = {item_id: changed_xml[item_id] for item_id in batch if item_id in changed_xml}
            unchanged = [item_id for item_id in batch if item_id not in xmls]
            if unchanged:
                for row in await storage.get_pubsub_items(node_id, item_ids=unchanged):
                    xmls[row.name] = row.data
            missing = [item_id for item_id in batch if item_id not in xmls]
            if missing:
                # The node lock keeps other writers of this process away.
                raise NotFound(
                    f"items {missing[:5]} of node {node} of {service.full()} left storage "
                    f"during the sync"
                )
            removed = [item_id for item_id in batch if item_id in reinserted]
            if removed:
                await storage.delete_pubsub_items(node_id, removed)
            rows = []
            for item_id, element in zip(batch, items_from_xml([xmls[i] for i in batch])):
                row = await self._item_row(client, service, node, element, analyser, xmls[item_id])
                if row is not None:
                    rows.append(row)
            if rows:
                await storage.cache_pubsub_items(node_id, rows)
            written += len(rows)
        return written

    def _infer_order(
        self, service: str, stored: dict[str, StoredItemState], unchanged_live_ids: list[str],
    ) -> str | None:
        """Tell the service's item order from the unchanged items of a fresh result.

        Both orders list these items alike until an item was edited: then
        only one of them matches the service's result. Returns None when the
        result cannot tell, and the service's order when already known.
        """
        known = self._service_orders.get(service)
        if known is not None:
            return known
        rows = [stored[item_id] for item_id in unchanged_live_ids]
        by_creation = [row.name for row in sorted(rows, key=lambda row: (row.created, row.id))]
        by_modification = [
            row.name for row in sorted(rows, key=lambda row: (row.updated, row.id))
        ]
        if by_creation == by_modification:
            return None
        if unchanged_live_ids == by_modification:
            order = ORDER_MODIFICATION
        elif unchanged_live_ids == by_creation:
            order = ORDER_CREATION
        else:
            return None
        self._service_orders[service] = order
        log.info("service %s returns pubsub items in order of %s", service, order)
        return order

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

    async def _fetch_items(
        self, client: Any, service: JID, node: str, node_row: Any,
        analyser: dict[str, Any] | None,
    ) -> tuple[FetchedItems, dict[str, StoredItemState] | None]:
        """Fetch every item of a node, keeping no element once its page is handled.

        A node without stored items (a first sync) gets each page stored as
        it arrives, and the returned state is None. Otherwise the items are
        compared with the stored ones, whose state is returned with the
        fetched items, and only the XML of the new and changed items is kept
        for :meth:`_apply_items`. The node is IN_PROGRESS meanwhile, so its
        partly stored items are never served.
        """
        storage = self.host.storage
        stored: dict[str, StoredItemState] | None = await storage.get_pubsub_item_states(
            node_row.id
        )
        fetched = FetchedItems()

        async def store_page(items: list[domish.Element]) -> None:
            rows = []
            for item in items:
                xml = _item_xml(item)
                fetched.add(item)
                row = await self._item_row(client, service, node, item, analyser, xml)
                if row is not None:
                    rows.append(row)
            if rows:
                await storage.cache_pubsub_items(node_row.id, rows)
            fetched.written += len(rows)

        async def compare_page(items: list[domish.Element]) -> None:
            for item in items:
                xml = _item_xml(item)
                fetched.add(item)
                state = stored.get(item["id"]) if stored else None
                if state is None or state.digest != item_digest(xml):
                    fetched.changed_xml[item["id"]] = xml

        first_sync = started_empty = not stored
        try:
            complete = await self._fetch_node(
                client, service, node, store_page if first_sync else compare_page
            )
            if not complete:
                # Paging stopped before the service's count: every item comes
                # again in one request, compared with what the pages stored.
                items, _ = await self._p.get_items(
                    client, service, node, extra={"use_cache": False}
                )
                stored = await storage.get_pubsub_item_states(node_row.id)
                fetched = FetchedItems()
                first_sync = False
                await self._hand_over_all(client, service, node, items, compare_page)
        except NodeTooLarge:
            if started_empty:
                # The node is not cached: drop the pages stored so far.
                await storage.delete_pubsub_items(node_row.id)
            raise
        return fetched, None if first_sync else stored

    async def _fetch_node(
        self, client: Any, service: JID, node: str,
        handle_page: Callable[[list[domish.Element]], Awaitable[None]],
    ) -> bool:
        """Fetch every item of a node, oldest first, and hand each page to ``handle_page``.

        A service that does not announce RSM for pubsub (Prosody 0.12) is
        fetched by :meth:`_fetch_by_item_ids`. For the others, the first
        request is for an RSM page. A service that ignores RSM all the same
        sends every item back, handed over in batches of ``sync_page_size``,
        after one progress signal. Otherwise pages follow,
        each one after the ``last`` key of the previous one, until the reported count is
        reached, a page has no ``last``, or a page repeats item ids. The
        next page is requested before ``handle_page`` runs, so the network
        wait overlaps its work. Pages contain only items with an id, each id
        once. Sends a ``ps_cache_sync`` progress signal after each page.

        Returns False when paging stopped before the count that the service
        reported, True otherwise. Raises NodeTooLarge, before handing over
        the page that goes beyond it, when the node contains more than
        ``max_items_per_node`` items.
        """
        limit = self.max_items_per_node
        extra = {"use_cache": False}
        if not await self._service_pages_items(client, service):
            await self._fetch_by_item_ids(client, service, node, handle_page)
            return True
        try:
            items, metadata = await self._p.get_items(
                client, service, node, extra=extra,
                rsm_request=RSMRequest(max=self.sync_page_size),
            )
        except (PubsubBadRequest, PubsubFeatureNotImplemented) as e:
            log.debug(
                "profile %s: %s rejects RSM on node %s (%s): fetching every item",
                client.profile, service.full(), node, e,
            )
            items, metadata = await self._p.get_items(client, service, node, extra=extra)
            metadata["rsm_ignored"] = True
        if metadata.get("rsm_ignored", True):
            await self._hand_over_all(client, service, node, items, handle_page)
            return True

        # Ids of the items received, and a key of each item without id.
        received: set[str] = set()
        pages = 0
        while True:
            pages += 1
            rsm = metadata.get(C.META_RSM) or {}
            count = rsm.get("count")
            if count is not None and count > limit:
                raise NodeTooLarge(f"{count} items, more than the limit of {limit}")
            page, repeated = self._new_items(client, service, node, items, received)
            if len(received) > limit:
                raise NodeTooLarge(f"more than the limit of {limit} items")
            last = rsm.get("last")
            if repeated:
                log.debug(
                    "profile %s: page %d of %s node %s repeats items: paging stopped",
                    client.profile, pages, service.full(), node,
                )
            finished = (
                repeated or not items or not last
                or (count is not None and len(received) >= count)
            )
            next_page = None
            if not finished:
                next_page = defer.ensureDeferred(self._p.get_items(
                    client, service, node, extra=extra,
                    rsm_request=RSMRequest(max=self.sync_page_size, after=last),
                ))
            items = []
            try:
                await handle_page(page)
            except BaseException:
                if next_page is not None:
                    # The sync fails, so the page requested ahead is not needed,
                    # and its response or error must not be reported as unhandled.
                    next_page.addErrback(lambda failure: None)
                raise
            del page
            self._send_sync_signal(
                client, service, node, SyncState.IN_PROGRESS.value, items=len(received),
                count=count,
            )
            if next_page is None:
                break
            items, metadata = await next_page
        if count is not None and len(received) < count:
            # Paging stopped early (no last key, repeated items or an empty
            # page) although the service counts more items: a node stored
            # from these pages would be served incomplete.
            log.info(
                "profile %s: RSM paging of %s node %s stopped at %d of %d items: "
                "fetching every item in one request", client.profile, service.full(), node,
                len(received), count,
            )
            return False
        log.debug(
            "profile %s: %d items of %s node %s fetched in %d RSM pages",
            client.profile, len(received), service.full(), node, pages,
        )
        # NOTE: pages are assumed oldest first, as Prosody 0.12 and ejabberd
        # 23.01 return forward pages. A service returning them newest first
        # would get its items stored in the wrong order.
        return True

    async def _service_pages_items(self, client: Any, service: JID) -> bool:
        """Tell whether a service announces RSM (one of RSM_FEATURES).

        A service whose features cannot be read is assumed to announce it,
        so its sync starts with an RSM request.
        """
        try:
            return bool(RSM_FEATURES & await self._p.get_features(client, service))
        except PubsubError as e:
            log.debug(
                "profile %s: features of %s not readable (%s): assuming RSM",
                client.profile, service.full(), e,
            )
            return True

    async def _fetch_by_item_ids(
        self, client: Any, service: JID, node: str,
        handle_page: Callable[[list[domish.Element]], Awaitable[None]],
    ) -> None:
        """Fetch every item of a node from a service without RSM, in batches of ``sync_page_size``.

        A small node comes in one request. A larger one is listed with
        disco#items, then fetched by item ids, one batch at a time, so no
        response contains the whole node. The batches follow the order of the
        service's full items result, and each one is handed to
        ``handle_page`` as its own page. Raises NodeTooLarge, before
        fetching any item, when the listing has more than
        ``max_items_per_node`` ids.
        """
        size = self.sync_page_size
        extra = {"use_cache": False}
        read_orders = self._service_read_orders.setdefault(service.full(), {})
        newest_first = read_orders.get(EXTRA_NEWEST_FIRST)
        if newest_first is not None:
            # One more item than a batch shows whether the node fits in one.
            items, _ = await self._p.get_items(
                client, service, node, max_items=size + 1, extra=extra
            )
            if len(items) <= size:
                if newest_first:
                    items.reverse()
                await self._hand_over_all(client, service, node, items, handle_page)
                return
            del items

        listing = list(dict.fromkeys(await self._p.get_item_ids(client, service, node)))
        if len(listing) > self.max_items_per_node:
            raise NodeTooLarge(
                f"{len(listing)} items, more than the limit of {self.max_items_per_node}"
            )
        if len(listing) <= size:
            items, _ = await self._p.get_items(client, service, node, extra=extra)
            self._learn_listing_order(service, listing, items)
            await self._hand_over_all(client, service, node, items, handle_page)
            return

        ids = await self._ids_in_result_order(client, service, node, listing)
        if ids is None:
            log.warning(
                "profile %s: order of the items of %s node %s unknown: fetching every "
                "item in one request", client.profile, service.full(), node,
            )
            items, _ = await self._p.get_items(client, service, node, extra=extra)
            await self._hand_over_all(client, service, node, items, handle_page)
            return
        del listing
        await self._fetch_batches(client, service, node, ids, handle_page)

    def _learn_listing_order(
        self, service: JID, listing: list[str], items: list[domish.Element],
    ) -> None:
        """Learn whether a service lists item ids in the reverse order of its items result.

        ``listing`` and ``items`` are a node's disco#items listing and full
        items result, fetched one after the other. Nothing is learnt when they
        do not contain the same ids, or cannot tell the two orders apart.
        """
        read_orders = self._service_read_orders.setdefault(service.full(), {})
        result_ids = [item.getAttribute("id") for item in items]
        if len(set(listing)) < 2 or LISTING_REVERSED in read_orders:
            return
        if result_ids == listing:
            read_orders[LISTING_REVERSED] = False
        elif result_ids == listing[::-1]:
            read_orders[LISTING_REVERSED] = True

    async def _ids_in_result_order(
        self, client: Any, service: JID, node: str, listing: list[str],
    ) -> list[str] | None:
        """Put a node's disco#items listing in the order of the service's full items result.

        Prosody 0.12 lists the ids in the reverse order of its full items
        result: both come from one list, which its items handler reverses
        (``handlers.get_items`` in mod_pubsub/pubsub.lib.lua). A service
        whose relation is not known yet is probed: its 2 newest items, from
        a max_items request, are the last ones of the full result, so they
        are at one end of the listing. Returns None when the probe cannot
        tell (the node changed meanwhile, or the service uses a third order).
        """
        read_orders = self._service_read_orders.setdefault(service.full(), {})
        reversed_listing = read_orders.get(LISTING_REVERSED)
        if reversed_listing is None and len(listing) > 2:
            probe, _ = await self._p.get_items(
                client, service, node, max_items=2, extra={"use_cache": False}
            )
            newest = {item.getAttribute("id") for item in probe}
            if newest == set(listing[-2:]):
                reversed_listing = read_orders[LISTING_REVERSED] = False
            elif newest == set(listing[:2]):
                reversed_listing = read_orders[LISTING_REVERSED] = True
        if reversed_listing is None:
            return None
        return listing[::-1] if reversed_listing else listing

    async def _fetch_batches(
        self, client: Any, service: JID, node: str, ids: list[str],
        handle_page: Callable[[list[domish.Element]], Awaitable[None]],
    ) -> None:
        """Fetch items by id in batches of ``sync_page_size`` and hand each batch over in ``ids`` order.

        The next batch is requested before ``handle_page`` runs. Items that
        the service no longer has are skipped, and items published after the
        listing arrive as notifications once the sync releases the node.
        """
        size = self.sync_page_size
        extra = {"use_cache": False}
        log.debug(
            "profile %s: fetching %d items of %s node %s by item ids, %d per request",
            client.profile, len(ids), service.full(), node, size,
        )

        def request(start: int) -> defer.Deferred:
            return defer.ensureDeferred(self._p.get_items(
                client, service, node, item_ids=ids[start:start + size], extra=extra,
            ))

        handed_over = 0
        next_batch: defer.Deferred | None = request(0)
        for start in range(0, len(ids), size):
            items, _ = await next_batch
            next_batch = request(start + size) if start + size < len(ids) else None
            by_id = {item.getAttribute("id"): item for item in items}
            del items
            page = [by_id[item_id] for item_id in ids[start:start + size] if item_id in by_id]
            del by_id
            try:
                await handle_page(page)
            except BaseException:
                if next_batch is not None:
                    # The sync fails, so the batch requested ahead is not
                    # needed, and its error must not be reported as unhandled.
                    next_batch.addErrback(lambda failure: None)
                raise
            handed_over += len(page)
            del page
            self._send_sync_signal(
                client, service, node, SyncState.IN_PROGRESS.value, items=handed_over,
                count=len(ids),
            )

    def _new_items(
        self, client: Any, service: JID, node: str, items: list[domish.Element],
        received: set[str],
    ) -> tuple[list[domish.Element], bool]:
        """Return the items of a page not received before, and whether the page repeats some.

        Adds the page's item ids to ``received``, and a key for each item
        without id, which is dropped.
        """
        page = []
        repeated = False
        for item in items:
            item_id = item.getAttribute("id")
            if item_id in received:
                repeated = True
                continue
            if not item_id:
                log.debug(
                    "profile %s: item without id dropped from %s node %s",
                    client.profile, service.full(), node,
                )
                received.add(f"\0{len(received)}")
                continue
            received.add(item_id)
            page.append(item)
        return page, repeated

    async def _hand_over_all(
        self, client: Any, service: JID, node: str, items: list[domish.Element],
        handle_page: Callable[[list[domish.Element]], Awaitable[None]],
    ) -> None:
        """Hand a full items result to ``handle_page`` in batches of ``sync_page_size``.

        Items without id are dropped, and an id that appears twice keeps its
        last occurrence, at that position. Raises NodeTooLarge when more than
        ``max_items_per_node`` items remain.
        """
        limit = self.max_items_per_node
        unique: dict[str, domish.Element] = {}
        for item in items:
            item_id = item.getAttribute("id")
            if not item_id:
                log.debug(
                    "profile %s: item without id dropped from %s node %s",
                    client.profile, service.full(), node,
                )
                continue
            unique.pop(item_id, None)
            unique[item_id] = item
        if len(unique) > limit:
            raise NodeTooLarge(f"{len(unique)} items, more than the limit of {limit}")
        self._send_sync_signal(
            client, service, node, SyncState.IN_PROGRESS.value, items=len(unique), count=None,
        )
        batch: list[domish.Element] = []
        for item in unique.values():
            batch.append(item)
            if len(batch) == self.sync_page_size:
                await handle_page(batch)
                batch = []
        if batch:
            await handle_page(batch)

    async def _item_row(
        self, client: Any, service: JID, node: str, item: domish.Element,
        analyser: dict[str, Any] | None, xml: str | None = None,
    ) -> tuple[str, str, dict | None, str | None] | None:
        """Build the storage tuple of an item; return None for an item without id.

        ``xml`` is the item serialised by :func:`_item_xml`, when the caller
        already has it.
        """
        item_id = item.getAttribute("id")
        if not item_id:
            log.debug(
                "profile %s: item without id dropped from %s node %s",
                client.profile, service.full(), node,
            )
            return None
        parsed = None
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
        if xml is None:
            xml = _item_xml(item)
        return item_id, xml, parsed, item.getAttribute("publisher")

    async def profile_connected(self, client: Any) -> None:
        """Sync a profile's nodes again at each connection, daemon start included.

        Nodes left IN_PROGRESS or in ERROR are synchronised, and COMPLETED
        nodes are reconciled: the items published, edited or retracted while
        the profile was offline are applied. They are not served until then.
        """
        # Added before the first await. The host calls this hook in the
        # reactor turn where the client becomes usable (at a first connection
        # and at a stream re-establishment), so no request is served between.
        # NOTE: this is true while no other plugin's profile_connected hook,
        # called before this one, waits.
        self._reconnecting_profiles.add(client.profile_id)
        try:
            nodes = await self.host.storage.get_pubsub_nodes(profile_id=client.profile_id)
            for node_row in nodes:
                if node_row.sync_state not in (
                    SyncState.IN_PROGRESS, SyncState.ERROR, SyncState.COMPLETED
                ):
                    continue
                analyser = self.analysers.get(node_row.analyser or "")
                if analyser is None or not analyser["to_sync"]:
                    continue
                losses = (node_row.extra or {}).get(EXTRA_STREAM_LOSSES) or 0
                if node_row.sync_state == SyncState.ERROR and losses >= MAX_SYNC_STREAM_LOSSES:
                    continue
                if node_row.sync_state == SyncState.COMPLETED:
                    # Stop serving it now, not when the sync task gets the lock.
                    await self._set_state(
                        client, node_row.service, node_row.name, node_row.id,
                        SyncState.IN_PROGRESS,
                    )
                # NOTE: reconciling fetches every item again. An item id listing
                # (disco#items) is cheaper, but Prosody 0.12 and ejabberd 23.01
                # give no modification time with it, so it cannot reveal items
                # edited while the profile was offline.
                self.start_sync(
                    client, JID(node_row.service), node_row.name, node_row.id, analyser
                )
        finally:
            self._reconnecting_profiles.discard(client.profile_id)

    # events

    def _guard_event_handler(
        self, handler: Callable[[Any, Any], Any],
    ) -> Callable[[Any, Any], Any]:
        """Wrap a notification handler so that its failure stops serving the node."""

        async def handle(client: Any, event: Any) -> None:
            try:
                await handler(client, event)
            except Exception as e:
                await self._event_failed(client, event, e)

        return handle

    async def _event_failed(self, client: Any, event: Any, error: Exception) -> None:
        """Stop serving a node whose notification was not applied, and sync it again later.

        Its stored items may differ from the service's now. The node goes to
        the ERROR state, with the ``ps_cache_sync`` ERROR signal, and a sync
        is retried as after a failed sync.
        """
        service = event.sender.full() if event.sender else client.jid.userhost()
        node = event.nodeIdentifier
        self._unserved_nodes.add((client.profile_id, service, node))
        self._completed.pop((client.profile_id, service, node), None)
        log.warning(
            "profile %s: notification of node %s of %s not applied to the cache: %s. The "
            "node is not served from the cache until synchronised again",
            client.profile, node, service, error, exc_info=error,
        )
        key = _node_key(client, service, node)
        node_row = None
        await self._lock(key).acquire()
        try:
            node_row = await self._synced_node_row(client, service, node)
            if node_row is not None:
                await self._set_state(client, service, node, node_row.id, SyncState.ERROR)
        except Exception as e:
            log.warning(
                "profile %s: ERROR state of node %s of %s not stored: %s",
                client.profile, node, service, e,
            )
        finally:
            self._lock(key).release()
        if node_row is None:
            return
        self._send_sync_signal(client, JID(service), node, SyncState.ERROR.value, error=str(error))
        analyser = self.analysers.get(node_row.analyser or "")
        if analyser is not None and analyser["to_sync"]:
            self._schedule_retry(client, JID(service), node, node_row.id, analyser)

    async def _cached_node(self, client: Any, event: Any) -> Any:
        service = event.sender.full() if event.sender else client.jid.userhost()
        return await self._synced_node_row(client, service, event.nodeIdentifier)

    async def _synced_node_row(self, client: Any, service: str, node: str) -> Any:
        """Return the node row when the node is COMPLETED or IN_PROGRESS, else None."""
        storage = self.host.storage
        # Every notification of the profile looks its node up, and those of
        # one profile apply one after the other: an inline read keeps them
        # off the database threads, where readers would delay them.
        answered, node_row = storage.read_pubsub_node_now(client.profile_id, service, node)
        if not answered:
            node_row = await storage.get_pubsub_node(client.profile_id, service, node)
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
        storage = self.host.storage
        resync = False
        await self._lock(key).acquire()
        try:
            # A sync may have run while this event waited for the lock.
            node_row = await self._cached_node(client, event)
            if node_row is None:
                return
            extra = node_row.extra or {}
            published: list[tuple[str, str, dict | None, str | None]] = []
            changes = self._final_changes(client, node_row, event.items)
            retracted = [item_id for item_id, elt in changes.items() if elt is None]
            for item_id, elt in changes.items():
                if elt is None:
                    continue
                if not any(True for _ in elt.elements()):
                    # Notification without payload: fetch the item rather than
                    # replacing a full cached item with an empty one.
                    try:
                        fetched, _ = await self._p.get_items(
                            client, service, node, item_ids=[item_id],
                            extra={"use_cache": False},
                        )
                    except PubsubItemNotFound:
                        fetched = []
                    except PubsubError as e:
                        log.warning(
                            "profile %s: item %.80r of %s node %s, notified without payload, "
                            "could not be fetched (%s): syncing the node again",
                            client.profile, item_id, node_row.service, node, e,
                        )
                        resync = True
                        continue
                    elt = next(
                        (item for item in fetched if item.getAttribute("id") == item_id), None
                    )
                    if elt is None:
                        # Retracted since the notification was sent.
                        retracted.append(item_id)
                        continue
                publisher = elt.getAttribute("publisher")
                if publisher and not extra.get("publisher_in_items", True):
                    del elt.attributes["publisher"]
                row = await self._item_row(client, service, node, elt, analyser)
                if row is not None:
                    # The publisher column keeps it, whatever the XML shows.
                    published.append(row[:3] + (publisher or row[3],))
            evicted: list[str] = []
            if published:
                published_ids = [row[0] for row in published]
                stored_rows = storage.read_items_xml_now(node_row.id, item_ids=published_ids)
                if stored_rows is None:
                    stored_rows = await storage.get_pubsub_items_xml(
                        node_row.id, item_ids=published_ids
                    )
                stored = dict(stored_rows)
                # Services send the last item again on subscription or presence
                # (send_last_published_item): an unchanged item is not written,
                # so it keeps its modification time and place.
                published = [row for row in published if stored.get(row[0]) != row[1]]
                edited = [row[0] for row in published if row[0] in stored]
                added = len(published) - len(edited)
                order_known = bool(
                    extra.get(EXTRA_ITEM_ORDER) or node_row.service in self._service_orders
                )
                if edited and not order_known:
                    # Services order edited items either where they were
                    # created (ejabberd 23.01) or last (Prosody 0.12). Until
                    # a full result shows which, the node is not served.
                    resync = await self._edit_moves_order(node_row, edited)
                elif edited and not extra.get(EXTRA_ITEM_ORDER):
                    # The service's order was learned from another node, maybe
                    # after this one was first served in creation order:
                    # record it, and serve the node in that order from now on.
                    await storage.update_pubsub_node_extra(
                        node_row.id, **{EXTRA_ITEM_ORDER: self._service_orders[node_row.service]}
                    )
                    self._forget_node(client, node_row.service, node)
                if published:
                    await storage.cache_pubsub_items(node_row.id, published)
                max_items = extra.get(EXTRA_MAX_ITEMS)
                # Services evict when a new item makes the node exceed
                # max_items, not on edits (ejabberd 23.01 keeps extra items
                # until then).
                if added and isinstance(max_items, int) and (
                    await self._count_exceeds(node_row.id, max_items)
                ):
                    evicted = await self._evict(client, service, node_row, max_items)
            if retracted:
                await storage.delete_pubsub_items(node_row.id, retracted)
            if resync:
                await self._set_state(
                    client, node_row.service, node, node_row.id, SyncState.IN_PROGRESS
                )
        finally:
            self._lock(key).release()
        log.debug(
            "profile %s: %s node %s: %d items stored, %d retracted, %d evicted from notification",
            client.profile, node_row.service, node, len(published), len(retracted),
            len(evicted),
        )
        if resync and analyser is not None:
            self.start_sync(client, service, node, node_row.id, analyser)

    @staticmethod
    def _final_changes(
        client: Any, node_row: Any, elements: list[domish.Element],
    ) -> dict[str, domish.Element | None]:
        """Map each item id of an items notification to its last ``<item/>``, or None if retracted.

        Elements apply in document order, so a retract followed by a publish
        of the same id leaves the item. Items without id and repeated ids are
        logged.
        """
        changes: dict[str, domish.Element | None] = {}
        repeated: set[str] = set()
        without_id = 0
        for elt in elements:
            if elt.name not in ("item", "retract"):
                continue
            item_id = elt.getAttribute("id")
            if not item_id:
                # XEP-0060 drops retracts without id before the callbacks.
                without_id += 1
                continue
            if item_id in changes:
                repeated.add(item_id)
            # Moved to the end, so items are stored in the order of their last element.
            changes.pop(item_id, None)
            changes[item_id] = elt if elt.name == "item" else None
        if repeated:
            log.debug(
                "profile %s: %s node %s: item ids %.200s appear more than once in one "
                "notification, the last element of each applies",
                client.profile, node_row.service, node_row.name, sorted(repeated),
            )
        if without_id:
            log.debug(
                "profile %s: %d items without id dropped from a notification of %s node %s",
                client.profile, without_id, node_row.service, node_row.name,
            )
        return changes

    async def _count_exceeds(self, node_id: int, max_items: int) -> bool:
        """Tell whether a node contains more than ``max_items`` cached items."""
        storage = self.host.storage
        count = storage.count_pubsub_items_now(node_id, at_most=max_items + 1)
        if count is None:
            count = await storage.count_pubsub_items(node_id)
        return count > max_items

    async def _evict(
        self, client: Any, service: JID, node_row: Any, max_items: int,
    ) -> list[str]:
        """Delete the items that the service dropped to respect max_items; return their ids.

        Services drop the least recently modified items, but the cache may
        not know that order (items edited while the profile was offline), so
        it deletes the items the service no longer lists. A service that
        does not list item ids gets the cache's estimate instead.
        """
        storage = self.host.storage
        try:
            listed = set(await self._p.get_item_ids(client, service, node_row.name))
        except PubsubError as e:
            log.debug(
                "profile %s: %s does not list the items of node %s (%s): evicting the least "
                "recently updated items", client.profile, service.full(), node_row.name, e,
            )
            return await storage.evict_pubsub_items(node_row.id, max_items)
        gone = [row.name for row in await storage.get_pubsub_items(node_row.id)
                if row.name not in listed]
        await storage.delete_pubsub_items(node_row.id, gone)
        return gone

    async def _edit_moves_order(self, node_row: Any, edited: list[str]) -> bool:
        """Tell whether editing these items could order creation and modification differently."""
        newest = await self.host.storage.get_pubsub_items(node_row.id, max_items=1)
        if not newest:
            return True
        # Editing the newest item keeps it last in both orders.
        return edited != [newest[0].name]

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

    async def _on_configuration_event(self, client: Any, event: Any) -> None:
        node_row = await self._cached_node(client, event)
        if node_row is None:
            return
        if event.configuration is not None and "pubsub#max_items" in event.configuration:
            max_items = parse_max_items(event.configuration["pubsub#max_items"])
        else:
            max_items = await self._read_max_items(client, JID(node_row.service), node_row.name)
        await self._configuration_changed(client, node_row, max_items)

    async def _node_configured_trigger(
        self, client: Any, service: JID | None, node: str, options: dict[str, Any],
    ) -> None:
        """Apply a configuration change made by the profile itself.

        Not every service notifies subscribers of configuration changes
        (Prosody 0.12 does not), so the profile's own changes are applied here.
        """
        service_name = (service or client.jid.userhostJID()).full()
        try:
            node_row = await self._synced_node_row(client, service_name, node)
            if node_row is None:
                return
            if "pubsub#max_items" in options:
                max_items = parse_max_items(options["pubsub#max_items"])
            else:
                max_items = (node_row.extra or {}).get(EXTRA_MAX_ITEMS)
            await self._configuration_changed(client, node_row, max_items)
        except Exception:
            log.exception(
                "profile %s: applying the new configuration of node %s of %s to the cache "
                "failed", client.profile, node, service_name,
            )

    async def _configuration_changed(
        self, client: Any, node_row: Any, max_items: int | str | None,
    ) -> None:
        """Store a node's new max_items and drop the items the service dropped.

        Services apply a lower max_items differently (Prosody 0.12 at once,
        ejabberd 23.01 at the next publish), so the cache requests the list of
        item ids left instead of evicting by itself. When the service does not
        list them, the node is synchronised again.
        """
        service = JID(node_row.service)
        node = node_row.name
        key = _node_key(client, node_row.service, node)
        resync = False
        await self._lock(key).acquire()
        try:
            node_row = await self._synced_node_row(client, node_row.service, node)
            if node_row is None:
                return
            await self.host.storage.update_pubsub_node_extra(
                node_row.id, **{EXTRA_MAX_ITEMS: max_items}
            )
            try:
                listed = set(await self._p.get_item_ids(client, service, node))
            except PubsubError as e:
                log.info(
                    "profile %s: %s does not list the items of node %s (%s): syncing it again",
                    client.profile, service.full(), node, e,
                )
                resync = True
                await self._set_state(
                    client, node_row.service, node, node_row.id, SyncState.IN_PROGRESS
                )
            else:
                stored = await self.host.storage.get_pubsub_items(node_row.id)
                gone = [row.name for row in stored if row.name not in listed]
                if gone:
                    await self.host.storage.delete_pubsub_items(node_row.id, gone)
                log.info(
                    "profile %s: configuration of %s node %s changed: max_items %s, %d items "
                    "dropped", client.profile, service.full(), node, max_items, len(gone),
                )
        finally:
            self._lock(key).release()
        analyser = self.analysers.get(node_row.analyser or "")
        if resync and analyser is not None:
            self.start_sync(client, service, node, node_row.id, analyser)

    async def _on_subscription_event(self, client: Any, event: Any) -> None:
        subscriber = event.subscriber
        if subscriber is not None and subscriber.userhost() != client.jid.userhost():
            return
        service = event.sender.full() if event.sender else client.jid.userhost()
        node = event.nodeIdentifier
        if event.state == "subscribed":
            node_row = await self.host.storage.get_pubsub_node(client.profile_id, service, node)
            analyser = self.analysers.get((node_row.analyser if node_row else None) or "")
            if node_row is not None and node_row.sync_state is None and analyser is not None \
                    and analyser["to_sync"]:
                self.start_sync(client, JID(service), node, node_row.id, analyser)
        elif event.state == "none":
            await self._unsubscribed(client, service, node)

    async def _unsubscribed_trigger(
        self, client: Any, service: JID | None, node: str, subscriber: JID,
        sub_id: str | None,
    ) -> None:
        if subscriber.userhost() != client.jid.userhost():
            return
        service_name = (service or client.jid.userhostJID()).full()
        try:
            await self._unsubscribed(client, service_name, node)
        except Exception:
            log.exception(
                "profile %s: removing unsubscribed node %s of %s from the cache failed",
                client.profile, node, service_name,
            )

    async def _unsubscribed(self, client: Any, service: str, node: str) -> None:
        """Stop serving a node the profile is no longer subscribed to, and drop its items.

        Without a subscription no notification keeps the node exact. It stays
        analysed, and is synchronised again by ``li pubsub cache sync`` or
        when the service reports a new subscription.
        """
        key = _node_key(client, service, node)
        await self._lock(key).acquire()
        try:
            node_row = await self._synced_node_row(client, service, node)
            if node_row is None:
                return
            await self._set_state(client, service, node, node_row.id, None)
            await self.host.storage.delete_pubsub_items(node_row.id)
        finally:
            self._lock(key).release()
        log.info(
            "profile %s: no longer subscribed to node %s of %s: not served from the cache "
            "until synchronised again", client.profile, node, service,
        )

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
                "max_items": (node_row.extra or {}).get(EXTRA_MAX_ITEMS),
                "item_order": (node_row.extra or {}).get(EXTRA_ITEM_ORDER),
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
            self.forget_node(profile_row.id, node_row.service, node_row.name)
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
