"""XEP-0060 Publish-Subscribe: the client side of pubsub requests and events.

Requests go through wokkel's ``PubSubRequest``, extended here with the parts
wokkel 18.0.0 lacks (``notify`` on retract, publish options). Every item
request runs the ``XEP-0060_get_items`` trigger point first, which is where the
pubsub cache serves items from storage. Notifications are parsed by wokkel and
handed to the callbacks registered for the node, in priority order.

Trigger points:

``XEP-0060_get_items`` (return point)
    ``(client, service, node, max_items, item_ids, sub_id, extra)``; a trigger
    returning ``(False, (items, metadata))`` answers the request.
``XEP-0060_items_received`` (point)
    ``(client, service, node, max_items, item_ids, extra, items, metadata)``,
    run after items came from the network; the pubsub cache analyses new
    nodes there, from the items already received.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer, reactor
from twisted.words.protocols.jabber import error as jabber_error
from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.xish import domish
from wokkel import data_form, pubsub
from wokkel.generic import parseXml

from libervia.backend.core import constants as C
from libervia.backend.core.exceptions import InvalidValue, PubsubError
from libervia.backend.tools.aio import maybe_await

log = logging.getLogger(__name__)

PLUGIN_INFO = {
    "name": "Publish-Subscribe",
    "import_name": "XEP-0060",
    "type": "XEP",
    "dependencies": [],
    "recommendations": [],
    "main": "XEP_0060",
    "modes": ["client", "component"],
    "description": "Pubsub client: items, publish, retract, nodes, subscriptions, events",
}

NS_PUBSUB = pubsub.NS_PUBSUB
NS_PUBSUB_EVENT = pubsub.NS_PUBSUB_EVENT
NS_PUBSUB_PUBLISH_OPTIONS = NS_PUBSUB + "#publish-options"
NS_PUBSUB_NODE_CONFIG = pubsub.NS_PUBSUB_NODE_CONFIG

TRIGGER_GET_ITEMS = "XEP-0060_get_items"
TRIGGER_ITEMS_RECEIVED = "XEP-0060_items_received"

EVENT_ITEMS = "items"
EVENT_DELETE = "delete"
EVENT_PURGE = "purge"


class PubSubRequest(pubsub.PubSubRequest):
    """wokkel's request with ``notify`` on retract and publish options on publish."""

    notify: bool = False
    publishOptions: dict[str, Any] | None = None

    _parameters = dict(pubsub.PubSubRequest._parameters)
    _parameters["retract"] = _parameters["retract"] + ["notify"]
    _parameters["publish"] = _parameters["publish"] + ["publishOptions"]

    def _render_notify(self, verb_elt: domish.Element) -> None:
        if self.notify:
            verb_elt["notify"] = "true"

    def _parse_notify(self, verb_elt: domish.Element) -> None:
        self.notify = verb_elt.getAttribute("notify") in ("true", "1")

    def _render_publishOptions(self, verb_elt: domish.Element) -> None:
        if not self.publishOptions:
            return
        form = data_form.Form(formType="submit", formNamespace=NS_PUBSUB_PUBLISH_OPTIONS)
        form.makeFields(self.publishOptions)
        verb_elt.parent.addElement("publish-options").addChild(form.toElement())

    def _parse_publishOptions(self, verb_elt: domish.Element) -> None:
        for elt in verb_elt.parent.elements(NS_PUBSUB, "publish-options"):
            form = data_form.findForm(elt, NS_PUBSUB_PUBLISH_OPTIONS)
            if form is not None:
                self.publishOptions = form.getValues()


@dataclass
class _NodeCallback:
    prefix: str
    event: str
    callback: Callable[..., Any]
    priority: int


class PubsubClientHandler(pubsub.PubSubClient):
    """Per-profile wokkel handler forwarding events to the plugin."""

    def __init__(self, plugin: "XEP_0060", client: Any) -> None:
        super().__init__()
        self.plugin = plugin
        self.client = client

    def itemsReceived(self, event: pubsub.ItemsEvent) -> None:
        self.plugin.dispatch_event(self.client, EVENT_ITEMS, event)

    def deleteReceived(self, event: pubsub.DeleteEvent) -> None:
        self.plugin.dispatch_event(self.client, EVENT_DELETE, event)

    def purgeReceived(self, event: pubsub.PurgeEvent) -> None:
        self.plugin.dispatch_event(self.client, EVENT_PURGE, event)



def parse_jid(value: str | JID | None, what: str = "service") -> JID | None:
    """Turn a JID string into a JID; None and "" stay None; raise InvalidValue otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, JID):
        return value
    if not isinstance(value, str):
        raise InvalidValue(f"invalid {what} JID {value!r}: a JID must be a string")
    try:
        return JID(value)
    except (InvalidFormat, TypeError) as e:
        raise InvalidValue(f"invalid {what} JID {value!r}: {e}") from e


def item_from_xml(xml: str) -> domish.Element:
    """Parse an ``<item/>`` from its serialised XML; raise InvalidValue when malformed."""
    try:
        elt = parseXml(xml.encode("utf-8") if isinstance(xml, str) else xml)
    except Exception as e:
        raise InvalidValue(f"invalid item XML {xml[:80]!r}: {e}") from e
    if elt is None:
        # wokkel's parseXml returns None for empty or unfinished documents.
        raise InvalidValue(f"invalid item XML {xml[:80]!r}: empty or incomplete document")
    if elt.name != "item":
        raise InvalidValue(f"expected an <item/> element, got <{elt.name}/>")
    return elt


def items_from_xml(xmls: list[str]) -> list[domish.Element]:
    """Parse several serialised ``<item/>`` elements with a single XML parser.

    Each string must be a whole ``<item/>`` declaring its namespace, as the
    pubsub cache stores them. Raises InvalidValue when the XML is malformed.
    """
    if not xmls:
        return []
    document = "<items>" + "".join(xmls) + "</items>"
    try:
        root = parseXml(document.encode("utf-8"))
    except Exception as e:
        raise InvalidValue(f"invalid stored item XML: {e}") from e
    if root is None:
        raise InvalidValue("invalid stored item XML: incomplete document")
    items = []
    for elt in root.elements():
        elt.parent = None
        items.append(elt)
    return items


class XEP_0060:
    """Pubsub client plugin: requests, trigger points and event callbacks."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self._callbacks: list[_NodeCallback] = []
        host.bridge.register_method("ps_items_get", self._bridge_items_get)
        host.bridge.register_method("ps_publish", self._bridge_publish)
        host.bridge.register_method("ps_retract", self._bridge_retract)
        host.bridge.register_method("ps_node_create", self._bridge_node_create)
        host.bridge.register_method("ps_subscribe", self._bridge_subscribe)
        host.bridge.register_method("ps_unsubscribe", self._bridge_unsubscribe)

    def get_handler(self, client: Any) -> PubsubClientHandler:
        handler = PubsubClientHandler(self, client)
        client.pubsub_handler = handler
        return handler

    # requests

    def _xmlstream(self, client: Any) -> Any:
        xs = client.stream_manager.xmlstream if client.stream_manager else None
        if xs is None:
            raise PubsubError(f"profile {client.profile} is not connected")
        return xs

    async def _send(
        self, client: Any, request: PubSubRequest, service: JID | None, node: str | None,
        action: str,
    ) -> domish.Element:
        """Send ``request`` with the client's IQ timeout; map failures to PubsubError."""
        request.recipient = service
        d = request.send(self._xmlstream(client))
        d.addTimeout(client.options.iq_timeout, reactor)
        target = service.full() if service else client.jid.userhost()
        try:
            return await d
        except jabber_error.StanzaError as e:
            raise self._stanza_error(e, target, node, action) from e
        except defer.TimeoutError as e:
            raise PubsubError(
                f"{action} on {target} node {node!r}: no response within "
                f"{client.options.iq_timeout:g} s"
            ) from e

    @staticmethod
    def _stanza_error(
        error: jabber_error.StanzaError, service: str, node: str | None, action: str,
    ) -> PubsubError:
        detail = error.condition
        app = getattr(error, "appCondition", None)
        if app is not None:
            detail += f" ({app.name}"
            feature = app.getAttribute("feature")
            detail += f" {feature})" if feature else ")"
        if error.text:
            detail += f": {error.text}"
        if action == "getting items" and error.condition in ("item-not-found", "forbidden"):
            detail += " (the node may not exist, or its access model does not allow this profile)"
        exc = PubsubError(f"{action} on {service} node {node!r} failed: {detail}")
        exc.condition = error.condition
        exc.app_condition = app.name if app is not None else None
        return exc

    async def get_items(
        self,
        client: Any,
        service: JID | None,
        node: str,
        max_items: int | None = None,
        item_ids: list[str] | None = None,
        sub_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[list[domish.Element], dict[str, Any]]:
        """Return the items of a node and a metadata mapping.

        ``max_items`` requests the newest items and ``item_ids`` given items.
        A ``XEP-0060_get_items`` trigger may supply the result instead of the
        network (the pubsub cache does). Raises InvalidValue for bad arguments and
        PubsubError when the service returns an error.
        """
        extra = dict(extra or {})
        if not node:
            raise InvalidValue("a node name is required to get items")
        if max_items is not None:
            if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0:
                raise InvalidValue(
                    f"invalid max_items {max_items!r}: use a positive integer"
                )
            if max_items == 0:
                max_items = None
        if item_ids is not None and (
            not isinstance(item_ids, list) or not all(isinstance(i, str) and i for i in item_ids)
        ):
            raise InvalidValue(f"invalid item_ids {item_ids!r}: use a list of item ids")

        go_on, result = await self.host.trigger.return_point(
            TRIGGER_GET_ITEMS, client, service, node, max_items, item_ids, sub_id, extra
        )
        if not go_on:
            return result

        request = PubSubRequest("items")
        request.nodeIdentifier = node
        if max_items:
            request.maxItems = str(max_items)
        request.itemIdentifiers = item_ids or None
        request.subscriptionIdentifier = sub_id
        iq = await self._send(client, request, service, node, "getting items")
        items = []
        items_elt = iq.pubsub.items if iq.pubsub is not None else None
        if items_elt is not None:
            items = [
                elt for elt in items_elt.elements()
                if elt.uri == NS_PUBSUB and elt.name == "item"
            ]
        metadata = {
            C.META_SERVICE: (service or client.jid.userhostJID()).full(),
            C.META_NODE: node,
            C.META_COMPLETE: max_items is None and not item_ids,
            C.META_FROM_CACHE: False,
        }
        await self.host.trigger.point(
            TRIGGER_ITEMS_RECEIVED, client, service, node, max_items, item_ids, extra,
            items, metadata,
        )
        return items, metadata

    async def publish(
        self,
        client: Any,
        service: JID | None,
        node: str,
        items: list[domish.Element],
        options: dict[str, Any] | None = None,
    ) -> list[str]:
        """Publish ``items`` with optional publish options; return the item ids.

        The ids come from the service's response when it assigned them, else
        from the items sent.
        """
        request = PubSubRequest("publish")
        request.nodeIdentifier = node
        request.items = items
        request.publishOptions = options or None
        iq = await self._send(client, request, service, node, "publishing")
        ids = []
        if iq.pubsub is not None and iq.pubsub.publish is not None:
            ids = [
                elt["id"] for elt in iq.pubsub.publish.elements(NS_PUBSUB, "item")
                if elt.hasAttribute("id")
            ]
        if not ids:
            ids = [item["id"] for item in items if item.hasAttribute("id")]
        return ids

    async def retract_items(
        self,
        client: Any,
        service: JID | None,
        node: str,
        item_ids: list[str],
        notify: bool = True,
    ) -> None:
        """Retract items; with ``notify`` the service notifies the subscribers."""
        if not item_ids:
            raise InvalidValue("no item id given to retract")
        request = PubSubRequest("retract")
        request.nodeIdentifier = node
        request.itemIdentifiers = item_ids
        request.notify = notify
        await self._send(client, request, service, node, "retracting items")

    async def create_node(
        self,
        client: Any,
        service: JID | None,
        node: str | None,
        options: dict[str, Any] | None = None,
    ) -> str:
        """Create a node with an optional configuration; return its name."""
        request = PubSubRequest("create")
        request.nodeIdentifier = node
        if options:
            form = data_form.Form(formType="submit", formNamespace=NS_PUBSUB_NODE_CONFIG)
            form.makeFields(options)
            request.options = form
        iq = await self._send(client, request, service, node, "creating node")
        if iq.pubsub is not None and iq.pubsub.create is not None:
            return iq.pubsub.create.getAttribute("node", node)
        return node or ""

    async def subscribe(
        self,
        client: Any,
        service: JID | None,
        node: str,
        subscriber: JID | None = None,
    ) -> dict[str, Any]:
        """Subscribe ``subscriber`` (default: the profile's bare JID) to a node."""
        request = PubSubRequest("subscribe")
        request.nodeIdentifier = node
        request.subscriber = subscriber or client.jid.userhostJID()
        iq = await self._send(client, request, service, node, "subscribing")
        sub_elt = iq.pubsub.subscription if iq.pubsub is not None else None
        if sub_elt is None:
            return {"subscription": "subscribed", "subid": None}
        return {
            "subscription": sub_elt.getAttribute("subscription", "subscribed"),
            "subid": sub_elt.getAttribute("subid"),
        }

    async def unsubscribe(
        self,
        client: Any,
        service: JID | None,
        node: str,
        subscriber: JID | None = None,
        sub_id: str | None = None,
    ) -> None:
        """Remove a subscription to a node."""
        request = PubSubRequest("unsubscribe")
        request.nodeIdentifier = node
        request.subscriber = subscriber or client.jid.userhostJID()
        request.subscriptionIdentifier = sub_id
        await self._send(client, request, service, node, "unsubscribing")

    # events

    def add_node_callback(
        self,
        prefix: str,
        event: str,
        callback: Callable[..., Any],
        priority: int = 0,
    ) -> None:
        """Call ``callback(client, event)`` for events of nodes starting with ``prefix``.

        ``event`` is one of ``items``, ``delete``, ``purge``. An empty prefix
        matches every node. Higher priorities run first; a failing callback is
        logged and the others still run.
        """
        if event not in (EVENT_ITEMS, EVENT_DELETE, EVENT_PURGE):
            raise ValueError(f"unknown pubsub event kind {event!r}")
        self._callbacks.append(_NodeCallback(prefix, event, callback, priority))
        self._callbacks.sort(key=lambda entry: -entry.priority)

    def remove_node_callback(self, prefix: str, event: str, callback: Callable[..., Any]) -> None:
        """Remove a callback added with :meth:`add_node_callback`."""
        for index, entry in enumerate(self._callbacks):
            if (entry.prefix, entry.event, entry.callback) == (prefix, event, callback):
                del self._callbacks[index]
                return
        raise KeyError(f"no {event} callback {callback!r} for prefix {prefix!r}")

    def dispatch_event(self, client: Any, kind: str, event: Any) -> None:
        """Run the callbacks matching an event, one after the other, in the background."""
        node = event.nodeIdentifier or ""
        callbacks = [
            entry.callback for entry in self._callbacks
            if entry.event == kind and node.startswith(entry.prefix)
        ]
        defer.ensureDeferred(self._run_callbacks(client, kind, event, callbacks))

    async def _run_callbacks(
        self, client: Any, kind: str, event: Any, callbacks: list[Callable[..., Any]],
    ) -> None:
        service = event.sender.full() if event.sender else ""
        for callback in callbacks:
            try:
                await maybe_await(callback(client, event))
            except Exception:
                log.exception(
                    "profile %s: %s callback %r failed for service %s node %s",
                    client.profile, kind, callback, service, event.nodeIdentifier,
                )
        args: dict[str, Any] = {
            "profile": client.profile,
            "service": service,
            "node": event.nodeIdentifier,
            "type": kind,
        }
        if kind == EVENT_ITEMS:
            args["items"] = [elt.toXml() for elt in event.items if elt.name == "item"]
            args["retracted"] = [
                elt.getAttribute("id") for elt in event.items if elt.name == "retract"
            ]
        self.host.bridge.send_signal("ps_event", **args)

    # bridge methods

    async def _bridge_items_get(
        self,
        service: str | None = None,
        node: str = "",
        max_items: int | None = None,
        item_ids: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        items, metadata = await self.get_items(
            client, parse_jid(service), node, max_items, item_ids or None, extra=extra
        )
        return {"items": [item.toXml() for item in items], "metadata": metadata}

    async def _bridge_publish(
        self,
        service: str | None = None,
        node: str = "",
        items: list[str] | None = None,
        options: dict[str, Any] | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        if not node:
            raise InvalidValue("a node name is required to publish")
        elements = [item_from_xml(xml) for xml in items or []]
        for elt in elements:
            elt.uri = elt.defaultUri = NS_PUBSUB
        ids = await self.publish(client, parse_jid(service), node, elements, options)
        return {"item_ids": ids}

    async def _bridge_retract(
        self,
        service: str | None = None,
        node: str = "",
        item_ids: list[str] | None = None,
        notify: bool = True,
        profile: str | None = None,
    ) -> None:
        client = self.host.get_client(profile)
        await self.retract_items(client, parse_jid(service), node, list(item_ids or []), notify)

    async def _bridge_node_create(
        self,
        service: str | None = None,
        node: str | None = None,
        options: dict[str, Any] | None = None,
        profile: str | None = None,
    ) -> dict[str, str]:
        client = self.host.get_client(profile)
        name = await self.create_node(client, parse_jid(service), node or None, options)
        return {"node": name}

    async def _bridge_subscribe(
        self, service: str | None = None, node: str = "", profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        return await self.subscribe(client, parse_jid(service), node)

    async def _bridge_unsubscribe(
        self, service: str | None = None, node: str = "", profile: str | None = None,
    ) -> None:
        client = self.host.get_client(profile)
        await self.unsubscribe(client, parse_jid(service), node)
