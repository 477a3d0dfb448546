"""XEP-0060 Publish-Subscribe: the client side of pubsub requests and events.

Requests go through wokkel's ``PubSubRequest``, extended here with what
wokkel 18.0.0 lacks: ``notify`` on retract, publish options, RSM (XEP-0059)
on items, a node on entity subscriptions and affiliations requests, owner
subscription and affiliation changes, the redirect of a node deletion and the
default subscription options. Every error answer becomes a
:class:`~libervia.backend.core.exceptions.PubsubConditionError` subclass
naming the service, the node and the condition.

Notifications are parsed here from ``<event/>`` messages (items, retracts,
purge, delete, configuration, subscription), keeping SHIM headers and the
delay stamp, and handed to the trigger point of their kind, then to the
callbacks registered for the node, then to frontends as the ``ps_event``
bridge signal.

Remote input is checked where it is parsed, in notifications and in items
results alike, so the cache stores what the network path returns. Invalid
parts are dropped and logged once at debug level with the profile, the
service and the node: items that :func:`item_problem` rejects, retracts
without id, unknown elements, nameless SHIM headers, invalid configuration
forms and ``pubsub#max_items`` values. A notification without a valid
sender or node, with an invalid subscription, or with a character that XML
does not allow outside its items, is dropped whole.

Trigger points (see doc/developer.rst for the whole list):

``XEP-0060_get_items`` (return point)
    ``(client, service, node, max_items, item_ids, sub_id, extra,
    rsm_request)``; a trigger returning ``(False, (items, metadata))``
    answers the request.
``XEP-0060_get_items_xml`` (return point)
    the same arguments, run first by :meth:`XEP_0060.get_items_xml`. A
    trigger returning ``(False, (xmls, metadata))`` supplies serialised
    items, which are then never parsed. When no trigger supplies a result,
    the request goes on to ``XEP-0060_get_items``.
``XEP-0060_items_received`` (point)
    ``(client, service, node, max_items, item_ids, extra, items, metadata)``,
    run after items came from the network; the pubsub cache analyses new
    nodes there, from the items already received.
``XEP-0060_event_items``, ``XEP-0060_event_delete``, ``XEP-0060_event_purge``,
``XEP-0060_event_configuration``, ``XEP-0060_event_subscription`` (points)
    ``(client, event)`` for each notification of that kind, before the node
    callbacks; a trigger returning False drops the notification.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.words.protocols.jabber import error as jabber_error
from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.protocols.jabber.xmlstream import IQ
from twisted.words.xish import domish
from wokkel import data_form, pubsub, shim
from wokkel.generic import parseXml

from libervia.backend.core import constants as C
from libervia.backend.core.exceptions import (
    InvalidValue,
    PubsubBadRequest,
    PubsubConditionError,
    PubsubConflict,
    PubsubError,
    PubsubFeatureNotImplemented,
    PubsubForbidden,
    PubsubItemNotFound,
    PubsubNotAcceptable,
    PubsubNotAllowed,
    PubsubNotAuthorized,
    PubsubPreconditionNotMet,
    PubsubTimeout,
)
from libervia.backend.plugins.plugin_xep_0059 import (
    RSMRequest,
    RSMResponse,
    find_set,
)
from libervia.backend.tools.aio import maybe_await

log = logging.getLogger(__name__)

PLUGIN_INFO = {
    "name": "Publish-Subscribe",
    "import_name": "XEP-0060",
    "type": "XEP",
    "dependencies": ["XEP-0059"],
    "recommendations": [],
    "main": "XEP_0060",
    "modes": ["client", "component"],
    "description": "Pubsub client: items, publish, retract, nodes, subscriptions, events",
}

NS_PUBSUB = pubsub.NS_PUBSUB
NS_PUBSUB_EVENT = pubsub.NS_PUBSUB_EVENT
NS_PUBSUB_OWNER = pubsub.NS_PUBSUB_OWNER
NS_PUBSUB_ERRORS = pubsub.NS_PUBSUB_ERRORS
NS_PUBSUB_PUBLISH_OPTIONS = NS_PUBSUB + "#publish-options"
NS_PUBSUB_NODE_CONFIG = pubsub.NS_PUBSUB_NODE_CONFIG
NS_PUBSUB_SUBSCRIBE_OPTIONS = pubsub.NS_PUBSUB_SUBSCRIBE_OPTIONS
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PUBSUB_META_DATA = "http://jabber.org/protocol/pubsub#meta-data"
NS_DELAY = "urn:xmpp:delay"

TRIGGER_GET_ITEMS = "XEP-0060_get_items"
TRIGGER_GET_ITEMS_XML = "XEP-0060_get_items_xml"
TRIGGER_ITEMS_RECEIVED = "XEP-0060_items_received"
#: Points run after the service accepted a request of the profile, with the
#: request's arguments: ``(client, service, node, options)`` and
#: ``(client, service, node, subscriber, sub_id)``.
TRIGGER_NODE_CONFIGURED = "XEP-0060_node_configured"
TRIGGER_UNSUBSCRIBED = "XEP-0060_unsubscribed"

EVENT_ITEMS = "items"
EVENT_DELETE = "delete"
EVENT_PURGE = "purge"
EVENT_CONFIGURATION = "configuration"
EVENT_SUBSCRIPTION = "subscription"
EVENT_KINDS = (EVENT_ITEMS, EVENT_DELETE, EVENT_PURGE, EVENT_CONFIGURATION, EVENT_SUBSCRIPTION)

#: Trigger point run for each notification kind, before the node callbacks.
EVENT_TRIGGERS = {kind: f"XEP-0060_event_{kind}" for kind in EVENT_KINDS}

SUBSCRIPTION_STATES = ("none", "pending", "subscribed", "unconfigured")
AFFILIATIONS = ("owner", "publisher", "publish-only", "member", "none", "outcast")

#: Exception class by XMPP stanza error condition; other conditions give
#: PubsubConditionError itself.
ERROR_CLASSES: dict[str, type[PubsubConditionError]] = {
    "item-not-found": PubsubItemNotFound,
    "forbidden": PubsubForbidden,
    "not-authorized": PubsubNotAuthorized,
    "feature-not-implemented": PubsubFeatureNotImplemented,
    "conflict": PubsubConflict,
    "not-acceptable": PubsubNotAcceptable,
    "bad-request": PubsubBadRequest,
    "not-allowed": PubsubNotAllowed,
}


NS_SHIM = shim.NS_SHIM
MAX_ITEMS_FIELD = "pubsub#max_items"

#: Maximum size of an item id in UTF-8 bytes: items with a longer id are
#: dropped when received. PostgreSQL rejects btree index entries over 2704
#: bytes (with its default 8 kB pages) and the pubsub cache indexes (node,
#: item id). No id in common use comes close: a UUID has 36 characters.
MAX_ITEM_ID_BYTES = 2048
#: Maximum nesting depth of a received item, ``<item/>`` being level 1:
#: deeper items are dropped. Serialising an element (domish's ``toXml``)
#: takes one Python stack frame per level, and the default recursion limit is
#: 1000 frames. The Atom entries of tests/data (feedparser's test vectors and
#: the XEP-0277 examples) are at most 9 levels deep, counted from the stanza.
MAX_ITEM_DEPTH = 256
# A character outside the Char production of XML 1.0. XML parsers reject
# them, so they only come in elements built in memory, and stored XML
# containing one could not be parsed again.
_INVALID_XML_CHARACTER = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class PubSubRequest(pubsub.PubSubRequest):
    """wokkel's request completed with the parameters a client needs.

    - ``notify`` on retract, ``publishOptions`` (a dict) on publish;
    - ``rsm`` (an :class:`RSMRequest`) on items, rendered as ``<set/>``;
    - a node on the entity ``subscriptions`` and ``affiliations`` requests;
    - ``subscriptions`` (list of ``(jid, state, subid)``) on the owner's
      ``subscriptionsSet`` and ``affiliations`` (dict JID to affiliation) on
      ``affiliationsSet``, rendered in the given order;
    - ``redirectURI`` on delete, ``nodeType`` on the owner's ``default``;
    - the ``subscriptionDefault`` verb: default subscription options.
    """

    notify: bool = False
    publishOptions: dict[str, Any] | None = None
    rsm: RSMRequest | None = None
    redirectURI: str | None = None

    _requestVerbMap = dict(pubsub.PubSubRequest._requestVerbMap)
    _requestVerbMap[("get", NS_PUBSUB, "default")] = "subscriptionDefault"
    _verbRequestMap = {verb: key for key, verb in _requestVerbMap.items()}

    _parameters = dict(pubsub.PubSubRequest._parameters)
    _parameters["retract"] = _parameters["retract"] + ["notify"]
    _parameters["publish"] = _parameters["publish"] + ["publishOptions"]
    _parameters["items"] = _parameters["items"] + ["rsm"]
    _parameters["subscriptions"] = ["nodeOrEmpty"]
    _parameters["affiliations"] = ["nodeOrEmpty"]
    _parameters["subscriptionsSet"] = ["nodeOrEmpty", "subscriptions"]
    _parameters["delete"] = ["node", "redirect"]
    _parameters["subscriptionDefault"] = ["nodeOrNone"]

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

    def _render_rsm(self, verb_elt: domish.Element) -> None:
        if self.rsm is not None:
            verb_elt.parent.addChild(self.rsm.to_element())

    def _parse_rsm(self, verb_elt: domish.Element) -> None:
        set_elt = find_set(verb_elt.parent)
        self.rsm = None if set_elt is None else RSMRequest.from_element(set_elt)

    def _render_subscriptions(self, verb_elt: domish.Element) -> None:
        for subscriber, state, sub_id in self.subscriptions or []:
            sub_elt = verb_elt.addElement("subscription")
            sub_elt["jid"] = subscriber.full()
            sub_elt["subscription"] = state
            if sub_id:
                sub_elt["subid"] = sub_id

    def _parse_subscriptions(self, verb_elt: domish.Element) -> None:
        self.subscriptions = [
            (JID(elt["jid"]), elt.getAttribute("subscription", "none"), elt.getAttribute("subid"))
            for elt in verb_elt.elements(NS_PUBSUB_OWNER, "subscription")
            if elt.hasAttribute("jid")
        ]

    def _render_affiliations(self, verb_elt: domish.Element) -> None:
        for entity, affiliation in (self.affiliations or {}).items():
            affiliation_elt = verb_elt.addElement("affiliation")
            affiliation_elt["jid"] = entity.full()
            affiliation_elt["affiliation"] = affiliation

    def _render_redirect(self, verb_elt: domish.Element) -> None:
        if self.redirectURI:
            verb_elt.addElement("redirect")["uri"] = self.redirectURI

    def _parse_redirect(self, verb_elt: domish.Element) -> None:
        redirect_elt = next(verb_elt.elements(NS_PUBSUB_OWNER, "redirect"), None)
        self.redirectURI = None if redirect_elt is None else redirect_elt.getAttribute("uri")

    def _render_configure(self, verb_elt: domish.Element) -> None:
        verb_elt.addChild(self.options.toElement())

    def _render_default(self, verb_elt: domish.Element) -> None:
        # The only other node type is the default, "leaf".
        if self.nodeType == "collection":
            verb_elt["type"] = "collection"


class ConfigurationEvent(pubsub.PubSubEvent):
    """A node's configuration changed; ``configuration`` contains the new values when sent.

    ``configuration`` is None when the service sent the notification without
    the configuration form (``pubsub#deliver_payloads`` false).
    """

    def __init__(
        self, sender: JID, recipient: JID, nodeIdentifier: str, headers: dict[str, list[str]],
        configuration: dict[str, Any] | None,
    ) -> None:
        super().__init__(sender, recipient, nodeIdentifier, headers)
        self.configuration = configuration


class SubscriptionEvent(pubsub.PubSubEvent):
    """The state of a subscription changed (approved, cancelled, lease ending)."""

    def __init__(
        self, sender: JID, recipient: JID, nodeIdentifier: str, headers: dict[str, list[str]],
        subscriber: JID | None, state: str, subscription_id: str | None, expiry: str | None,
    ) -> None:
        super().__init__(sender, recipient, nodeIdentifier, headers)
        self.subscriber = subscriber
        self.state = state
        self.subscriptionIdentifier = subscription_id
        self.expiry = expiry


def form_values(form: data_form.Form) -> dict[str, Any]:
    """Return a form's values as JSON-serialisable data (JIDs become strings)."""
    values: dict[str, Any] = {}
    for name, value in form.getValues().items():
        if name == "FORM_TYPE":
            continue
        if isinstance(value, JID):
            value = value.full()
        elif isinstance(value, list):
            value = [v.full() if isinstance(v, JID) else v for v in value]
        values[name] = value
    return values


def form_to_dict(form: data_form.Form) -> dict[str, Any]:
    """Describe a data form for frontends: its fields with type, label, values and options."""
    fields = []
    for field in form.fieldList:
        if field.var == "FORM_TYPE":
            continue
        fields.append({
            "var": field.var,
            "type": field.fieldType,
            "label": field.label,
            "values": [v.full() if isinstance(v, JID) else v for v in field.values],
            "options": [
                {"value": option.value, "label": option.label} for option in field.options
            ],
        })
    return {"type": form.formType, "namespace": form.formNamespace, "fields": fields,
            "values": form_values(form)}


def _delay_stamp(message: domish.Element) -> str | None:
    delay_elt = next(message.elements(NS_DELAY, "delay"), None)
    return None if delay_elt is None else delay_elt.getAttribute("stamp")


def make_jid(value: Any) -> JID:
    """Build a JID from a string; raise InvalidFormat for every invalid value.

    Twisted's JID constructor raises other exceptions for some invalid
    values: IndexError for an empty domain label (``"a..b"``) and
    RuntimeError for ``""`` (Twisted 26.10).
    """
    if not isinstance(value, str) or not value:
        raise InvalidFormat(f"invalid JID {value!r:.80}: expected a non-empty string")
    try:
        return _prepared_jid(value)
    except (IndexError, RuntimeError, UnicodeError) as e:
        raise InvalidFormat(f"invalid JID {value!r:.80}: {e}") from e


@functools.lru_cache(maxsize=4096)
def _prepared_jid(value: str) -> JID:
    # Stringprep takes about a fifth of a cached get through the bridge, and
    # frontends send the same few service JIDs again and again. Nothing in
    # the backend changes a JID after building it, so one copy is shared.
    return JID(value)


def item_problem(item: domish.Element) -> str | None:
    """Tell why a received ``<item/>`` or ``<retract/>`` cannot be used, or return None.

    An element is unusable when it is nested deeper than MAX_ITEM_DEPTH, when
    an attribute or a text contains a character that XML 1.0 does not allow,
    or when its id is longer than MAX_ITEM_ID_BYTES. The tree is walked
    without recursion, so any depth is safe to check.
    """
    stack = [(item, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > MAX_ITEM_DEPTH:
            return f"nested deeper than {MAX_ITEM_DEPTH} elements"
        for value in element.attributes.values():
            if _INVALID_XML_CHARACTER.search(value):
                return "an attribute contains a character that XML does not allow"
        for child in element.children:
            if isinstance(child, str):
                if _INVALID_XML_CHARACTER.search(child):
                    return "its text contains a character that XML does not allow"
            else:
                stack.append((child, depth + 1))
    item_id = item.getAttribute("id")
    if item_id and len(item_id.encode("utf-8")) > MAX_ITEM_ID_BYTES:
        return f"its id is longer than {MAX_ITEM_ID_BYTES} bytes"
    return None


def _envelope_has_invalid_character(message: domish.Element, action: domish.Element) -> bool:
    """Tell whether a notification contains a character that XML does not allow.

    Items and retracts are not searched: :func:`item_problem` checks each of
    them, so that one invalid item does not drop the others.
    """
    stack = [message]
    while stack:
        element = stack.pop()
        for value in element.attributes.values():
            if _INVALID_XML_CHARACTER.search(value):
                return True
        for child in element.children:
            if isinstance(child, str):
                if _INVALID_XML_CHARACTER.search(child):
                    return True
            elif not (element is action and child.name in ("item", "retract")):
                stack.append(child)
    return False


def read_form(parent: domish.Element, namespace: str) -> data_form.Form | None:
    """Return the data form of ``namespace`` among the children of ``parent``, or None.

    Raises InvalidValue when that form is invalid (a duplicate field, an
    option without value), which wokkel reports with its own exception.
    """
    try:
        return data_form.findForm(parent, namespace)
    except data_form.Error as e:
        raise InvalidValue(f"invalid {namespace} data form: {e}") from e


def _extract_headers(
    message: domish.Element, profile: str | None, service: str, node: str,
) -> dict[str, list[str]]:
    """Read the SHIM headers (XEP-0131) of a message: header name to list of values."""
    headers: dict[str, list[str]] = {}
    nameless = 0
    for headers_elt in message.elements(NS_SHIM, "headers"):
        for header_elt in headers_elt.elements(NS_SHIM, "header"):
            name = header_elt.getAttribute("name")
            if not name:
                nameless += 1
                continue
            headers.setdefault(name, []).append(str(header_elt))
    if nameless:
        log.debug(
            "profile %s: %d SHIM headers without name dropped from a notification of "
            "service %s node %.80r", profile, nameless, service, node,
        )
    return headers


def _parse_items_event(
    sender: JID, recipient: JID, action: domish.Element, headers: dict[str, list[str]],
    profile: str | None,
) -> pubsub.ItemsEvent:
    node = action["node"]
    items = []
    unknown = []
    for elt in action.elements():
        if elt.uri != NS_PUBSUB_EVENT or elt.name not in ("item", "retract"):
            unknown.append(elt.name)
            continue
        if elt.name == "retract" and not elt.getAttribute("id"):
            log.debug(
                "profile %s: retract without id dropped from a notification of service %s "
                "node %.80r", profile, sender.full(), node,
            )
            continue
        problem = item_problem(elt)
        if problem is not None:
            log.debug(
                "profile %s: %s %.80r dropped from a notification of service %s node %.80r: "
                "%s", profile, elt.name, elt.getAttribute("id"), sender.full(), node, problem,
            )
            continue
        items.append(elt)
    if unknown:
        log.debug(
            "profile %s: unknown elements %s ignored in a notification of service %s "
            "node %.80r", profile, sorted(set(unknown)), sender.full(), node,
        )
    return pubsub.ItemsEvent(sender, recipient, node, items, headers)


def _parse_delete_event(
    sender: JID, recipient: JID, action: domish.Element, headers: dict[str, list[str]],
    profile: str | None,
) -> pubsub.DeleteEvent:
    event = pubsub.DeleteEvent(sender, recipient, action["node"], headers)
    redirect_elt = next(action.elements(NS_PUBSUB_EVENT, "redirect"), None)
    if redirect_elt is not None:
        event.redirectURI = redirect_elt.getAttribute("uri")
    return event


def _parse_purge_event(
    sender: JID, recipient: JID, action: domish.Element, headers: dict[str, list[str]],
    profile: str | None,
) -> pubsub.PurgeEvent:
    return pubsub.PurgeEvent(sender, recipient, action["node"], headers)


def _parse_configuration_event(
    sender: JID, recipient: JID, action: domish.Element, headers: dict[str, list[str]],
    profile: str | None,
) -> ConfigurationEvent:
    node = action["node"]
    try:
        form = read_form(action, NS_PUBSUB_NODE_CONFIG)
    except InvalidValue as e:
        # The event still reports that the configuration changed: receivers
        # request it when they need it, as when the service sends no form.
        log.debug(
            "profile %s: configuration form of a notification of service %s node %.80r "
            "dropped: %s", profile, sender.full(), node, e,
        )
        form = None
    configuration = None if form is None else form_values(form)
    if configuration is not None and not _is_max_items(configuration.get(MAX_ITEMS_FIELD)):
        log.debug(
            "profile %s: invalid %s %.80r dropped from a configuration notification of "
            "service %s node %.80r", profile, MAX_ITEMS_FIELD,
            configuration[MAX_ITEMS_FIELD], sender.full(), node,
        )
        del configuration[MAX_ITEMS_FIELD]
    return ConfigurationEvent(sender, recipient, node, headers, configuration)


def _is_max_items(value: Any) -> bool:
    """Tell whether a pubsub#max_items value is absent, "max" or a number of 0 or more.

    Numbers of more than 20 digits (2**64 has 20) are rejected.
    """
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    text = value.strip()
    return (text.isascii() and text.isdigit() and len(text) <= 20) or text.lower() == "max"


def _parse_subscription_event(
    sender: JID, recipient: JID, action: domish.Element, headers: dict[str, list[str]],
    profile: str | None,
) -> SubscriptionEvent | None:
    node = action["node"]
    state = action.getAttribute("subscription")
    if state not in SUBSCRIPTION_STATES:
        log.debug(
            "profile %s: subscription notification of service %s node %.80r dropped: "
            "invalid or missing subscription state %.80r", profile, sender.full(), node,
            state,
        )
        return None
    try:
        subscriber = make_jid(action.getAttribute("jid"))
    except InvalidFormat:
        # XEP-0060 requires the jid: without it the subscription could be
        # anyone's.
        log.debug(
            "profile %s: subscription notification of service %s node %.80r dropped: "
            "invalid or missing jid %.80r", profile, sender.full(), node,
            action.getAttribute("jid"),
        )
        return None
    return SubscriptionEvent(
        sender, recipient, node, headers, subscriber, state, action.getAttribute("subid"),
        action.getAttribute("expiry"),
    )


#: Parser of each ``<event/>`` child, by element name and event kind. A
#: ``<collection/>`` child (XEP-0248) is not listed: it is dropped. A parser
#: returns None for a notification it drops, after logging why.
EVENT_PARSERS: dict[str, tuple[str, Callable[..., pubsub.PubSubEvent | None]]] = {
    "items": (EVENT_ITEMS, _parse_items_event),
    "delete": (EVENT_DELETE, _parse_delete_event),
    "purge": (EVENT_PURGE, _parse_purge_event),
    "configuration": (EVENT_CONFIGURATION, _parse_configuration_event),
    "subscription": (EVENT_SUBSCRIPTION, _parse_subscription_event),
}


def parse_event_message(
    message: domish.Element, default_recipient: JID | None = None,
    profile: str | None = None,
) -> tuple[str, pubsub.PubSubEvent] | None:
    """Parse a pubsub notification message into ``(kind, event)``.

    The event carries ``headers`` (SHIM header name to list of values) and
    ``delay`` (the ``urn:xmpp:delay`` stamp, or None). Returns None for an
    error message, a message without a known ``<event/>`` child (collection
    notifications included) or one whose node or sender is missing or
    invalid. Invalid parts are dropped and logged at debug level with
    ``profile``, the sender and the node: see :func:`item_problem` for items.
    """
    if message.getAttribute("type") == "error":
        return None
    event_elt = next(message.elements(NS_PUBSUB_EVENT, "event"), None)
    if event_elt is None:
        return None
    action = next(event_elt.elements(NS_PUBSUB_EVENT), None)
    if action is None or action.name not in EVENT_PARSERS:
        log.debug(
            "profile %s: pubsub notification from %.80r dropped: no supported child in "
            "<event/> (children: %.200s)", profile, message.getAttribute("from"),
            [child.name for child in event_elt.elements()],
        )
        return None
    try:
        sender = make_jid(message.getAttribute("from"))
        recipient = (
            make_jid(message["to"]) if message.hasAttribute("to") else default_recipient
        )
    except InvalidFormat:
        log.debug(
            "profile %s: pubsub %s notification for node %.80r dropped: invalid or missing "
            "sender or recipient JID (from %.80r, to %.80r)", profile, action.name,
            action.getAttribute("node"), message.getAttribute("from"),
            message.getAttribute("to"),
        )
        return None
    node = action.getAttribute("node")
    if not node:
        log.debug(
            "profile %s: pubsub %s notification of service %s dropped: missing or empty node "
            "attribute", profile, action.name, sender.full(),
        )
        return None
    if _envelope_has_invalid_character(message, action):
        log.debug(
            "profile %s: pubsub %s notification of service %s node %.80r dropped: it contains "
            "a character that XML does not allow", profile, action.name, sender.full(), node,
        )
        return None

    kind, parse = EVENT_PARSERS[action.name]
    headers = _extract_headers(message, profile, sender.full(), node)
    event = parse(sender, recipient, action, headers, profile)
    if event is None:
        return None
    event.delay = _delay_stamp(message)
    return kind, event


class PubsubClientHandler(pubsub.PubSubClient):
    """Per-profile wokkel handler: parses notifications and caches the service features."""

    def __init__(self, plugin: "XEP_0060", client: Any) -> None:
        super().__init__()
        self.plugin = plugin
        self.client = client
        #: disco#info features by service JID, kept for the stream's life.
        self.features: dict[str, frozenset[str]] = {}
        #: Callers waiting for a disco#info request in flight, by service JID.
        self.features_pending: dict[str, list[defer.Deferred[frozenset[str]]]] = {}

    def connectionInitialized(self) -> None:
        # A new stream may reach a service that changed since the last one.
        self.features.clear()
        super().connectionInitialized()

    def connectionLost(self, reason: Any) -> None:
        self.features.clear()
        super().connectionLost(reason)

    def _onEvent(self, message: domish.Element) -> None:
        parsed = parse_event_message(
            message, getattr(self.client, "jid", None), getattr(self.client, "profile", None)
        )
        if parsed is None:
            return
        kind, event = parsed
        message.handled = True
        self.plugin.dispatch_event(self.client, kind, event)


def event_signal_args(client: Any, kind: str, event: Any) -> dict[str, Any]:
    """Build the arguments of the ``ps_event`` bridge signal for a notification.

    Every signal has profile, service, node, type (the event kind), headers
    (SHIM header name to values) and delay (stamp or None). Items events add
    ``items`` (XML of each published item) and ``retracted`` (ids); delete
    events ``redirect``; configuration events ``configuration`` (values or
    None); subscription events ``jid``, ``subscription``, ``subid`` and
    ``expiry``.
    """
    args: dict[str, Any] = {
        "profile": client.profile,
        "service": event.sender.full() if event.sender else "",
        "node": event.nodeIdentifier,
        "type": kind,
        "headers": dict(getattr(event, "headers", None) or {}),
        "delay": getattr(event, "delay", None),
    }
    if kind == EVENT_ITEMS:
        args["items"] = [elt.toXml() for elt in event.items if elt.name == "item"]
        args["retracted"] = [
            elt.getAttribute("id") for elt in event.items if elt.name == "retract"
        ]
    elif kind == EVENT_DELETE:
        args["redirect"] = getattr(event, "redirectURI", None)
    elif kind == EVENT_CONFIGURATION:
        args["configuration"] = event.configuration
    elif kind == EVENT_SUBSCRIPTION:
        args["jid"] = event.subscriber.full() if event.subscriber else None
        args["subscription"] = event.state
        args["subid"] = event.subscriptionIdentifier
        args["expiry"] = event.expiry
    return args


def parse_jid(value: str | JID | None, what: str = "service") -> JID | None:
    """Turn a JID string into a JID; None and "" stay None; raise InvalidValue otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, JID):
        return value
    if not isinstance(value, str):
        raise InvalidValue(f"invalid {what} JID {value!r}: a JID must be a string")
    try:
        return make_jid(value)
    except InvalidFormat as e:
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


def _check_items_request(
    node: str, max_items: int | None, item_ids: list[str] | None,
    rsm_request: RSMRequest | None,
) -> int | None:
    """Check the arguments of an items request; return max_items, None for 0 (no limit)."""
    _check_node(node, "get items")
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
    if rsm_request is not None and not isinstance(rsm_request, RSMRequest):
        raise InvalidValue(f"invalid rsm_request {rsm_request!r}: use an RSMRequest")
    return max_items


def describe_target(service: str, node: str | None) -> str:
    """Name the service and, when there is one, the node of a request for messages."""
    return f"{service} node {node!r}" if node else service


def stanza_error_to_exception(
    error: jabber_error.StanzaError, service: str, node: str | None, action: str,
) -> PubsubConditionError:
    """Build the exception for an error response to a pubsub request.

    The class follows the pubsub condition first (``precondition-not-met``),
    then the stanza condition (ERROR_CLASSES). The message reads
    "ACTION on SERVICE node NODE failed: CONDITION (PUBSUB_CONDITION FEATURE): TEXT",
    without "node NODE" for a request on the whole service.
    """
    app = getattr(error, "appCondition", None)
    pubsub_condition = None
    feature = None
    if app is not None and app.uri == NS_PUBSUB_ERRORS:
        pubsub_condition = app.name
        feature = app.getAttribute("feature")

    detail = error.condition
    if pubsub_condition:
        detail += f" ({pubsub_condition} {feature})" if feature else f" ({pubsub_condition})"
    if error.text:
        detail += f": {error.text}"
    if action == "getting items" and error.condition in ("item-not-found", "forbidden"):
        detail += " (the node may not exist, or its access model does not allow this profile)"
    elif error.condition == "service-unavailable":
        # Prosody 0.12 returns this error for requests it does not implement,
        # such as the entity affiliations list, instead of feature-not-implemented.
        detail += " (the service does not support this request, or does not exist)"

    if pubsub_condition == "precondition-not-met":
        cls: type[PubsubConditionError] = PubsubPreconditionNotMet
    else:
        cls = ERROR_CLASSES.get(error.condition, PubsubConditionError)
    return cls(
        f"{action} on {describe_target(service, node)} failed: {detail}",
        service=service, node=node, condition=error.condition,
        pubsub_condition=pubsub_condition, feature=feature, text=error.text,
    )


def _subscription_dict(elt: domish.Element) -> dict[str, Any]:
    return {
        "node": elt.getAttribute("node"),
        "jid": elt.getAttribute("jid"),
        "subscription": elt.getAttribute("subscription", "none"),
        "subid": elt.getAttribute("subid"),
    }


def _check_node(node: str | None, action: str) -> str:
    if not node or not isinstance(node, str):
        raise InvalidValue(f"a node name is required to {action}")
    return node


@dataclass
class _NodeCallback:
    prefix: str
    event: str
    callback: Callable[..., Any]
    priority: int
    exact: bool = False

    def matches(self, kind: str, node: str) -> bool:
        if kind != self.event:
            return False
        return node == self.prefix if self.exact else node.startswith(self.prefix)


class XEP_0060:
    """Pubsub client plugin: requests, trigger points and event callbacks."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self._callbacks: list[_NodeCallback] = []
        #: Last notification run of each profile (see dispatch_event).
        self._event_runs: dict[str, defer.Deferred[None]] = {}
        methods = {
            "ps_items_get": self._bridge_items_get,
            "ps_publish": self._bridge_publish,
            "ps_retract": self._bridge_retract,
            "ps_subscribe": self._bridge_subscribe,
            "ps_unsubscribe": self._bridge_unsubscribe,
            "ps_subscriptions_get": self._bridge_subscriptions_get,
            "ps_affiliations_get": self._bridge_affiliations_get,
            "ps_node_create": self._bridge_node_create,
            "ps_node_delete": self._bridge_node_delete,
            "ps_node_purge": self._bridge_node_purge,
            "ps_node_configuration_get": self._bridge_node_configuration_get,
            "ps_node_configuration_set": self._bridge_node_configuration_set,
            "ps_node_subscriptions_get": self._bridge_node_subscriptions_get,
            "ps_node_subscriptions_set": self._bridge_node_subscriptions_set,
            "ps_node_affiliations_get": self._bridge_node_affiliations_get,
            "ps_node_affiliations_set": self._bridge_node_affiliations_set,
            "ps_features_get": self._bridge_features_get,
        }
        for name, method in methods.items():
            host.bridge.register_method(name, method)

    def get_handler(self, client: Any) -> PubsubClientHandler:
        handler = PubsubClientHandler(self, client)
        client.pubsub_handler = handler
        return handler

    # sending

    def _xmlstream(self, client: Any) -> Any:
        xs = client.stream_manager.xmlstream if client.stream_manager else None
        if xs is None:
            raise PubsubError(f"profile {client.profile} is not connected")
        return xs

    @staticmethod
    def _target(client: Any, service: JID | None) -> str:
        return service.full() if service else client.jid.userhost()

    async def _wait_response(
        self, client: Any, d: defer.Deferred, service: JID | None, node: str | None,
        action: str,
    ) -> domish.Element:
        """Wait for an IQ response with the client's IQ timeout; map failures to PubsubError."""
        d.addTimeout(client.options.iq_timeout, reactor)
        target = self._target(client, service)
        try:
            return await d
        except jabber_error.StanzaError as e:
            raise stanza_error_to_exception(e, target, node, action) from e
        except (ConnectionDone, ConnectionLost) as e:
            raise PubsubError(
                f"{action} on {describe_target(target, node)}: the stream closed before "
                "the response"
            ) from e
        except defer.TimeoutError as e:
            raise PubsubTimeout(
                f"{action} on {describe_target(target, node)}: no response within "
                f"{client.options.iq_timeout:g} s"
            ) from e

    async def _send(
        self, client: Any, request: PubSubRequest, service: JID | None, node: str | None,
        action: str,
    ) -> domish.Element:
        """Send ``request`` to ``service`` and return the result IQ."""
        request.recipient = service
        d = request.send(self._xmlstream(client))
        return await self._wait_response(client, d, service, node, action)

    # items

    async def get_items(
        self,
        client: Any,
        service: JID | None,
        node: str,
        max_items: int | None = None,
        item_ids: list[str] | None = None,
        sub_id: str | None = None,
        extra: dict[str, Any] | None = None,
        rsm_request: RSMRequest | None = None,
    ) -> tuple[list[domish.Element], dict[str, Any]]:
        """Return the items of a node and a metadata mapping.

        ``max_items`` requests the newest items, ``item_ids`` given items,
        ``sub_id`` names the subscription when the profile has several, and
        ``rsm_request`` a page (XEP-0059). A ``XEP-0060_get_items`` trigger
        may supply the result instead of the network (the pubsub cache does).

        Metadata keys: ``service``, ``node``, ``complete`` (every item of the
        node is in the result), ``from_cache``; with ``rsm_request`` also
        ``rsm_ignored`` (the service sent no ``<set/>`` back, so the result is
        not a page) and, unless ignored, ``rsm`` (the RSMResponse as a dict:
        first, index, last, count).

        Raises InvalidValue for bad arguments and a PubsubError subclass when
        the service returns an error.
        """
        extra = dict(extra or {})
        max_items = _check_items_request(node, max_items, item_ids, rsm_request)
        go_on, result = await self.host.trigger.return_point(
            TRIGGER_GET_ITEMS, client, service, node, max_items, item_ids, sub_id, extra,
            rsm_request,
        )
        if not go_on:
            return result

        request = PubSubRequest("items")
        request.nodeIdentifier = node
        if max_items:
            request.maxItems = str(max_items)
        request.itemIdentifiers = item_ids or None
        request.subscriptionIdentifier = sub_id
        request.rsm = rsm_request
        iq = await self._send(client, request, service, node, "getting items")

        pubsub_elt = iq.pubsub
        items_elt = pubsub_elt.items if pubsub_elt is not None else None
        items = self._received_items(client, service, node, items_elt)
        metadata: dict[str, Any] = {
            C.META_SERVICE: self._target(client, service),
            C.META_NODE: node,
            C.META_COMPLETE: max_items is None and not item_ids,
            C.META_FROM_CACHE: False,
        }
        if rsm_request is not None:
            self._read_rsm_response(client, pubsub_elt, node, metadata, len(items))
        await self.host.trigger.point(
            TRIGGER_ITEMS_RECEIVED, client, service, node, max_items, item_ids, extra,
            items, metadata,
        )
        return items, metadata

    async def get_items_xml(
        self,
        client: Any,
        service: JID | None,
        node: str,
        max_items: int | None = None,
        item_ids: list[str] | None = None,
        sub_id: str | None = None,
        extra: dict[str, Any] | None = None,
        rsm_request: RSMRequest | None = None,
    ) -> tuple[list[str], dict[str, Any]]:
        """Return the items of a node as serialised ``<item/>`` elements, and the metadata.

        Same arguments, metadata and errors as :meth:`get_items`. A
        ``XEP-0060_get_items_xml`` trigger may return stored XML, as the
        pubsub cache does, and the bridge sends it on without parsing it.
        Otherwise the result is that of :meth:`get_items`, items serialised.
        """
        extra = dict(extra or {})
        max_items = _check_items_request(node, max_items, item_ids, rsm_request)
        go_on, result = await self.host.trigger.return_point(
            TRIGGER_GET_ITEMS_XML, client, service, node, max_items, item_ids, sub_id, extra,
            rsm_request,
        )
        if not go_on:
            return result
        items, metadata = await self.get_items(
            client, service, node, max_items, item_ids, sub_id, extra, rsm_request
        )
        return [item.toXml() for item in items], metadata

    def _received_items(
        self, client: Any, service: JID | None, node: str, items_elt: domish.Element | None,
    ) -> list[domish.Element]:
        """Return the usable ``<item/>`` children of an items result; log the others once.

        Items that :func:`item_problem` rejects and elements other than
        ``<item/>`` are dropped.
        """
        if items_elt is None:
            return []
        items = []
        unknown = []
        for elt in items_elt.elements():
            if elt.uri != NS_PUBSUB or elt.name != "item":
                unknown.append(elt.name)
                continue
            problem = item_problem(elt)
            if problem is not None:
                log.debug(
                    "profile %s: item %.80r dropped from the items of service %s node %.80r: %s",
                    client.profile, elt.getAttribute("id"), self._target(client, service),
                    node, problem,
                )
                continue
            items.append(elt)
        if unknown:
            log.debug(
                "profile %s: unknown elements %s ignored in the items of service %s node %.80r",
                client.profile, sorted(set(unknown)), self._target(client, service), node,
            )
        return items

    def _result_form(
        self, client: Any, service: JID | None, node: str | None,
        parent: domish.Element | None, namespace: str, action: str,
    ) -> data_form.Form | None:
        """Return the form of ``namespace`` in ``parent`` (None when either is missing).

        Raises PubsubError when the service sent an invalid form.
        """
        if parent is None:
            return None
        try:
            return read_form(parent, namespace)
        except InvalidValue as e:
            raise PubsubError(
                f"{action} on {describe_target(self._target(client, service), node)} "
                f"failed: {e}"
            ) from e

    @staticmethod
    def _read_rsm_response(
        client: Any, pubsub_elt: domish.Element | None, node: str,
        metadata: dict[str, Any], item_count: int,
    ) -> None:
        """Fill the RSM keys of the metadata of a paged items request."""
        set_elt = find_set(pubsub_elt)
        if set_elt is None:
            # The service ignored the page request and sent what it would send
            # without it: every item, unless max_items cut the list.
            metadata["rsm_ignored"] = True
            return
        metadata["rsm_ignored"] = False
        response, errors = RSMResponse.read_element(set_elt)
        if errors:
            # The page keys stay usable: a sync can go on paging by "last".
            log.debug(
                "profile %s: invalid values dropped from the RSM response of service %s "
                "node %.80r: %s", client.profile, metadata[C.META_SERVICE], node,
                "; ".join(errors),
            )
        metadata[C.META_RSM] = response.to_dict()
        metadata[C.META_COMPLETE] = (
            metadata[C.META_COMPLETE]
            and not errors
            and response.count is not None
            and response.count == item_count
        )

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
        from the items sent. Publish options the node configuration does not
        match raise PubsubPreconditionNotMet.
        """
        _check_node(node, "publish")
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
        _check_node(node, "retract items")
        if not item_ids:
            raise InvalidValue("no item id given to retract")
        request = PubSubRequest("retract")
        request.nodeIdentifier = node
        request.itemIdentifiers = item_ids
        request.notify = notify
        await self._send(client, request, service, node, "retracting items")

    # subscriptions

    async def subscribe(
        self,
        client: Any,
        service: JID | None,
        node: str,
        subscriber: JID | None = None,
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Subscribe ``subscriber`` (default: the profile's bare JID) to a node.

        ``options`` are subscription options (``pubsub#deliver``...) sent with
        the request. Returns node, jid, subscription (subscribed, pending or
        unconfigured), subid and ``options_required`` (the service requires
        subscription options before it delivers anything).
        """
        _check_node(node, "subscribe")
        subscriber = subscriber or client.jid.userhostJID()
        request = PubSubRequest("subscribe")
        request.nodeIdentifier = node
        request.subscriber = subscriber
        if options:
            form = data_form.Form(formType="submit", formNamespace=NS_PUBSUB_SUBSCRIBE_OPTIONS)
            form.makeFields(options)
            request.options = form
        iq = await self._send(client, request, service, node, "subscribing")

        sub_elt = iq.pubsub.subscription if iq.pubsub is not None else None
        if sub_elt is None:
            # The result may be empty (RFC 6120 allows it): the request succeeded.
            return {"node": node, "jid": subscriber.full(), "subscription": "subscribed",
                    "subid": None, "options_required": False}
        result = _subscription_dict(sub_elt)
        result["node"] = result["node"] or node
        result["jid"] = result["jid"] or subscriber.full()
        options_elt = next(sub_elt.elements(NS_PUBSUB, "subscribe-options"), None)
        result["options_required"] = (
            options_elt is not None
            and next(options_elt.elements(NS_PUBSUB, "required"), None) is not None
        )
        return result

    async def unsubscribe(
        self,
        client: Any,
        service: JID | None,
        node: str,
        subscriber: JID | None = None,
        sub_id: str | None = None,
    ) -> None:
        """Remove a subscription to a node (``sub_id`` when there are several)."""
        _check_node(node, "unsubscribe")
        request = PubSubRequest("unsubscribe")
        request.nodeIdentifier = node
        request.subscriber = subscriber or client.jid.userhostJID()
        request.subscriptionIdentifier = sub_id
        await self._send(client, request, service, node, "unsubscribing")
        await self.host.trigger.point(
            TRIGGER_UNSUBSCRIBED, client, service, node, request.subscriber, sub_id
        )

    async def get_subscription_options(
        self,
        client: Any,
        service: JID | None,
        node: str,
        subscriber: JID | None = None,
        sub_id: str | None = None,
    ) -> data_form.Form:
        """Return the subscription options form of a subscription."""
        _check_node(node, "get subscription options")
        request = PubSubRequest("optionsGet")
        request.nodeIdentifier = node
        request.subscriber = subscriber or client.jid.userhostJID()
        request.subscriptionIdentifier = sub_id
        iq = await self._send(client, request, service, node, "getting subscription options")
        options_elt = iq.pubsub.options if iq.pubsub is not None else None
        form = self._result_form(
            client, service, node, options_elt, NS_PUBSUB_SUBSCRIBE_OPTIONS,
            "getting subscription options",
        )
        if form is None:
            raise PubsubError(
                f"getting subscription options on {self._target(client, service)} node "
                f"{node!r}: the answer has no subscription options form"
            )
        return form

    async def set_subscription_options(
        self,
        client: Any,
        service: JID | None,
        node: str,
        options: dict[str, Any],
        subscriber: JID | None = None,
        sub_id: str | None = None,
    ) -> None:
        """Submit subscription options (``pubsub#deliver``, ``pubsub#expire``...)."""
        _check_node(node, "set subscription options")
        request = PubSubRequest("optionsSet")
        request.nodeIdentifier = node
        request.subscriber = subscriber or client.jid.userhostJID()
        request.subscriptionIdentifier = sub_id
        form = data_form.Form(formType="submit", formNamespace=NS_PUBSUB_SUBSCRIBE_OPTIONS)
        form.makeFields(options)
        request.options = form
        await self._send(client, request, service, node, "setting subscription options")

    async def get_default_subscription_options(
        self, client: Any, service: JID | None, node: str | None = None,
    ) -> data_form.Form | None:
        """Return the default subscription options form of a service or node, if any."""
        request = PubSubRequest("subscriptionDefault")
        request.nodeIdentifier = node
        iq = await self._send(
            client, request, service, node, "getting default subscription options"
        )
        default_elt = iq.pubsub.default if iq.pubsub is not None else None
        return self._result_form(
            client, service, node, default_elt, NS_PUBSUB_SUBSCRIBE_OPTIONS,
            "getting default subscription options",
        )

    async def get_subscriptions(
        self, client: Any, service: JID | None, node: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the profile's subscriptions on a service, or on one node.

        Each entry has node, jid, subscription and subid (None when absent).
        """
        request = PubSubRequest("subscriptions")
        request.nodeIdentifier = node
        iq = await self._send(client, request, service, node, "getting subscriptions")
        subscriptions_elt = iq.pubsub.subscriptions if iq.pubsub is not None else None
        if subscriptions_elt is None:
            return []
        entries = []
        for elt in subscriptions_elt.elements(NS_PUBSUB, "subscription"):
            entry = _subscription_dict(elt)
            # ejabberd 23.01 leaves the node out when the request names it.
            entry["node"] = entry["node"] or subscriptions_elt.getAttribute("node") or node
            entries.append(entry)
        return entries

    async def get_affiliations(
        self, client: Any, service: JID | None, node: str | None = None,
    ) -> dict[str, str]:
        """Return the profile's affiliations on a service (or one node): node to affiliation."""
        request = PubSubRequest("affiliations")
        request.nodeIdentifier = node
        iq = await self._send(client, request, service, node, "getting affiliations")
        affiliations_elt = iq.pubsub.affiliations if iq.pubsub is not None else None
        if affiliations_elt is None:
            return {}
        return {
            elt["node"]: elt.getAttribute("affiliation", "none")
            for elt in affiliations_elt.elements(NS_PUBSUB, "affiliation")
            if elt.hasAttribute("node")
        }

    # owner

    async def create_node(
        self,
        client: Any,
        service: JID | None,
        node: str | None,
        options: dict[str, Any] | None = None,
    ) -> str:
        """Create a node with an optional configuration; return its name.

        A node of None requests an instant node, named by the service.
        """
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

    async def delete_node(
        self, client: Any, service: JID | None, node: str, redirect_uri: str | None = None,
    ) -> None:
        """Delete a node; ``redirect_uri`` (an XMPP URI) gives subscribers the node's new location."""
        _check_node(node, "delete a node")
        request = PubSubRequest("delete")
        request.nodeIdentifier = node
        request.redirectURI = redirect_uri
        await self._send(client, request, service, node, "deleting node")

    async def purge_node(self, client: Any, service: JID | None, node: str) -> None:
        """Remove every item of a node."""
        _check_node(node, "purge a node")
        request = PubSubRequest("purge")
        request.nodeIdentifier = node
        await self._send(client, request, service, node, "purging node")

    async def get_node_configuration(
        self, client: Any, service: JID | None, node: str,
    ) -> data_form.Form:
        """Return the configuration form of a node (owner only)."""
        _check_node(node, "get a node configuration")
        request = PubSubRequest("configureGet")
        request.nodeIdentifier = node
        iq = await self._send(client, request, service, node, "getting node configuration")
        configure_elt = iq.pubsub.configure if iq.pubsub is not None else None
        form = self._result_form(
            client, service, node, configure_elt, NS_PUBSUB_NODE_CONFIG,
            "getting node configuration",
        )
        if form is None:
            raise PubsubError(
                f"getting node configuration on {self._target(client, service)} node "
                f"{node!r}: the answer has no configuration form"
            )
        return form

    async def set_node_configuration(
        self, client: Any, service: JID | None, node: str, options: dict[str, Any] | None,
    ) -> None:
        """Submit new values for a node's configuration; None cancels the process."""
        _check_node(node, "configure a node")
        request = PubSubRequest("configureSet")
        request.nodeIdentifier = node
        if options is None:
            request.options = data_form.Form(formType="cancel")
        else:
            form = data_form.Form(formType="submit", formNamespace=NS_PUBSUB_NODE_CONFIG)
            form.makeFields(options)
            request.options = form
        await self._send(client, request, service, node, "configuring node")
        if options is not None:
            await self.host.trigger.point(
                TRIGGER_NODE_CONFIGURED, client, service, node, dict(options)
            )

    async def get_default_node_configuration(
        self, client: Any, service: JID | None, node_type: str = "leaf",
    ) -> data_form.Form | None:
        """Return the configuration a new node of ``node_type`` gets by default."""
        request = PubSubRequest("default")
        request.nodeType = node_type
        iq = await self._send(
            client, request, service, None, "getting default node configuration"
        )
        default_elt = iq.pubsub.default if iq.pubsub is not None else None
        return self._result_form(
            client, service, None, default_elt, NS_PUBSUB_NODE_CONFIG,
            "getting default node configuration",
        )

    async def get_node_subscriptions(
        self, client: Any, service: JID | None, node: str,
    ) -> list[dict[str, Any]]:
        """Return every subscription to a node (owner only): jid, subscription, subid."""
        _check_node(node, "list node subscriptions")
        request = PubSubRequest("subscriptionsGet")
        request.nodeIdentifier = node
        iq = await self._send(client, request, service, node, "getting node subscriptions")
        subscriptions_elt = iq.pubsub.subscriptions if iq.pubsub is not None else None
        if subscriptions_elt is None:
            return []
        entries = []
        for elt in subscriptions_elt.elements(NS_PUBSUB_OWNER, "subscription"):
            entry = _subscription_dict(elt)
            del entry["node"]
            entries.append(entry)
        return entries

    async def set_node_subscriptions(
        self,
        client: Any,
        service: JID | None,
        node: str,
        subscriptions: dict[JID, str] | list[tuple[JID, str, str | None]],
    ) -> None:
        """Set subscription states of a node (owner only).

        ``subscriptions`` maps a JID to a state (none, pending, subscribed,
        unconfigured), or is a list of ``(jid, state, subid)``.
        """
        _check_node(node, "set node subscriptions")
        if isinstance(subscriptions, dict):
            entries = [(entity, state, None) for entity, state in subscriptions.items()]
        else:
            entries = list(subscriptions)
        for _, state, _ in entries:
            if state not in SUBSCRIPTION_STATES:
                raise InvalidValue(
                    f"invalid subscription state {state!r}: use one of {SUBSCRIPTION_STATES}"
                )
        request = PubSubRequest("subscriptionsSet")
        request.nodeIdentifier = node
        request.subscriptions = entries
        await self._send(client, request, service, node, "setting node subscriptions")

    async def get_node_affiliations(
        self, client: Any, service: JID | None, node: str,
    ) -> dict[str, str]:
        """Return the affiliations of a node (owner only): JID to affiliation."""
        _check_node(node, "list node affiliations")
        request = PubSubRequest("affiliationsGet")
        request.nodeIdentifier = node
        iq = await self._send(client, request, service, node, "getting node affiliations")
        affiliations_elt = iq.pubsub.affiliations if iq.pubsub is not None else None
        if affiliations_elt is None:
            return {}
        return {
            elt["jid"]: elt.getAttribute("affiliation", "none")
            for elt in affiliations_elt.elements(NS_PUBSUB_OWNER, "affiliation")
            if elt.hasAttribute("jid")
        }

    async def set_node_affiliations(
        self, client: Any, service: JID | None, node: str, affiliations: dict[JID, str],
    ) -> None:
        """Set affiliations of a node (owner only); "none" removes one."""
        _check_node(node, "set node affiliations")
        for affiliation in affiliations.values():
            if affiliation not in AFFILIATIONS:
                raise InvalidValue(
                    f"invalid affiliation {affiliation!r}: use one of {AFFILIATIONS}"
                )
        request = PubSubRequest("affiliationsSet")
        request.nodeIdentifier = node
        request.affiliations = dict(affiliations)
        await self._send(client, request, service, node, "setting node affiliations")

    # service discovery

    async def get_features(self, client: Any, service: JID | None) -> frozenset[str]:
        """Return the features a service announces in disco#info.

        Results are kept per profile and service until the stream ends.
        Concurrent requests for one service share one IQ, and a failure is
        not kept: the next call sends a new request.
        """
        handler = getattr(client, "pubsub_handler", None)
        if handler is None:
            return await self._request_features(client, service)
        key = self._target(client, service)
        features = handler.features.get(key)
        if features is not None:
            return features
        waiters = handler.features_pending.get(key)
        if waiters is not None:
            waiter: defer.Deferred[frozenset[str]] = defer.Deferred()
            waiters.append(waiter)
            return await waiter

        waiters = handler.features_pending[key] = []
        try:
            features = await self._request_features(client, service)
        except Exception as e:
            del handler.features_pending[key]
            for waiter in waiters:
                waiter.errback(e)
            raise
        del handler.features_pending[key]
        handler.features[key] = features
        for waiter in waiters:
            waiter.callback(features)
        return features

    async def _request_features(self, client: Any, service: JID | None) -> frozenset[str]:
        iq = IQ(self._xmlstream(client), "get")
        iq.addElement((NS_DISCO_INFO, "query"))
        if service is not None:
            iq["to"] = service.full()
        result = await self._wait_response(
            client, iq.send(), service, None, "getting service features"
        )
        query = next(result.elements(NS_DISCO_INFO, "query"), None)
        if query is None:
            return frozenset()
        return frozenset(
            elt["var"] for elt in query.elements(NS_DISCO_INFO, "feature")
            if elt.hasAttribute("var")
        )

    async def get_item_ids(self, client: Any, service: JID | None, node: str) -> list[str]:
        """List the ids of a node's items by disco#items (XEP-0060 §5.5), in the service's order.

        Services list the ids without the payloads, so this costs far less
        than getting the items. Raises a PubsubError subclass when the
        service refuses the request.
        """
        _check_node(node, "list item ids")
        iq = IQ(self._xmlstream(client), "get")
        query = iq.addElement((NS_DISCO_ITEMS, "query"))
        query["node"] = node
        if service is not None:
            iq["to"] = service.full()
        result = await self._wait_response(client, iq.send(), service, node, "listing item ids")
        query = next(result.elements(NS_DISCO_ITEMS, "query"), None)
        if query is None:
            return []
        return [
            elt["name"] for elt in query.elements(NS_DISCO_ITEMS, "item")
            if elt.getAttribute("name")
        ]

    async def get_node_metadata(
        self, client: Any, service: JID | None, node: str,
    ) -> dict[str, Any]:
        """Return the meta-data form values of a node's disco#info (XEP-0060 §5.4).

        Any subscriber may read it, unlike the configuration. Returns an empty
        dict when the service sends no meta-data form.
        """
        _check_node(node, "get node metadata")
        iq = IQ(self._xmlstream(client), "get")
        query = iq.addElement((NS_DISCO_INFO, "query"))
        query["node"] = node
        if service is not None:
            iq["to"] = service.full()
        result = await self._wait_response(
            client, iq.send(), service, node, "getting node metadata"
        )
        query = next(result.elements(NS_DISCO_INFO, "query"), None)
        form = self._result_form(
            client, service, node, query, NS_PUBSUB_META_DATA, "getting node metadata"
        )
        return {} if form is None else form_values(form)

    async def has_feature(self, client: Any, service: JID | None, feature: str) -> bool:
        """Tell whether a service announces ``feature`` (cached as in get_features)."""
        return feature in await self.get_features(client, service)

    # events

    def add_node_callback(
        self,
        prefix: str,
        event: str,
        callback: Callable[..., Any],
        priority: int = 0,
        exact: bool = False,
    ) -> None:
        """Call ``callback(client, event)`` for events of nodes starting with ``prefix``.

        ``event`` is one of EVENT_KINDS: ``items`` (items and retracts),
        ``delete``, ``purge``, ``configuration``, ``subscription``. An empty
        prefix matches every node; with ``exact`` only the node named
        ``prefix`` matches. Higher priorities run first; a failing callback
        is logged and the others still run.
        """
        if event not in EVENT_KINDS:
            raise ValueError(f"unknown pubsub event kind {event!r}: use one of {EVENT_KINDS}")
        self._callbacks.append(_NodeCallback(prefix, event, callback, priority, exact))
        self._callbacks.sort(key=lambda entry: -entry.priority)

    def remove_node_callback(self, prefix: str, event: str, callback: Callable[..., Any]) -> None:
        """Remove a callback added with :meth:`add_node_callback`."""
        for index, entry in enumerate(self._callbacks):
            if (entry.prefix, entry.event, entry.callback) == (prefix, event, callback):
                del self._callbacks[index]
                return
        raise KeyError(f"no {event} callback {callback!r} for prefix {prefix!r}")

    def dispatch_event(self, client: Any, kind: str, event: Any) -> defer.Deferred[None]:
        """Run the trigger and callbacks of an event one after the other, in the background.

        Returns the Deferred of that run. It does not fail: errors of the
        trigger, of each callback and of the signal are logged instead.
        """
        node = event.nodeIdentifier or ""
        callbacks = [entry.callback for entry in self._callbacks if entry.matches(kind, node)]
        # Callbacks wait for storage, so two notifications handled at once
        # could be applied out of order (a publish after the retract that
        # followed it). Each run of a client starts when the previous one ended.
        previous = self._event_runs.get(client.profile)

        async def run() -> None:
            if previous is not None:
                await previous
            await self._run_callbacks(client, kind, event, callbacks)

        d = defer.ensureDeferred(run())
        self._event_runs[client.profile] = d

        def forget(result: Any) -> Any:
            if self._event_runs.get(client.profile) is d:
                del self._event_runs[client.profile]
            return result

        d.addBoth(forget)
        return d

    async def wait_events(self, client: Any) -> None:
        """Wait until every notification received so far by a client has been handled."""
        while (run := self._event_runs.get(client.profile)) is not None:
            await run

    async def _run_callbacks(
        self, client: Any, kind: str, event: Any, callbacks: list[Callable[..., Any]],
    ) -> None:
        service = event.sender.full() if event.sender else ""
        try:
            go_on = await self.host.trigger.point(EVENT_TRIGGERS[kind], client, event)
        except Exception:
            log.exception(
                "profile %s: %s trigger failed for service %s node %s",
                client.profile, kind, service, event.nodeIdentifier,
            )
            go_on = True
        if not go_on:
            log.debug(
                "profile %s: %s notification of service %s node %s stopped by a trigger",
                client.profile, kind, service, event.nodeIdentifier,
            )
            return
        for callback in callbacks:
            try:
                await maybe_await(callback(client, event))
            except Exception:
                log.exception(
                    "profile %s: %s callback %r failed for service %s node %s",
                    client.profile, kind, callback, service, event.nodeIdentifier,
                )
        try:
            self.host.bridge.send_signal("ps_event", **event_signal_args(client, kind, event))
        except Exception:
            log.exception(
                "profile %s: ps_event signal failed for service %s node %s",
                client.profile, service, event.nodeIdentifier,
            )

    # bridge methods

    async def _bridge_items_get(
        self,
        service: str | None = None,
        node: str = "",
        max_items: int | None = None,
        item_ids: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        rsm: dict[str, Any] | None = None,
        sub_id: str | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        rsm_request = RSMRequest.from_dict(rsm) if rsm else None
        xmls, metadata = await self.get_items_xml(
            client, parse_jid(service), node, max_items, item_ids or None, sub_id=sub_id,
            extra=extra, rsm_request=rsm_request,
        )
        return {"items": xmls, "metadata": metadata}

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
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        service_jid = parse_jid(service)
        ids = list(item_ids or [])
        await self.retract_items(client, service_jid, node, ids, notify)
        return {
            "service": self._target(client, service_jid), "node": node, "item_ids": ids,
            "notify": notify,
        }

    async def _bridge_subscribe(
        self,
        service: str | None = None,
        node: str = "",
        options: dict[str, Any] | None = None,
        subscriber: str | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        return await self.subscribe(
            client, parse_jid(service), node, parse_jid(subscriber, "subscriber"), options
        )

    async def _bridge_unsubscribe(
        self,
        service: str | None = None,
        node: str = "",
        sub_id: str | None = None,
        subscriber: str | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        service_jid = parse_jid(service)
        subscriber_jid = parse_jid(subscriber, "subscriber")
        await self.unsubscribe(client, service_jid, node, subscriber_jid, sub_id)
        return {
            "service": self._target(client, service_jid), "node": node,
            "jid": (subscriber_jid or client.jid).userhost(), "subid": sub_id,
        }

    async def _bridge_subscriptions_get(
        self, service: str | None = None, node: str | None = None, profile: str | None = None,
    ) -> list[dict[str, Any]]:
        client = self.host.get_client(profile)
        return await self.get_subscriptions(client, parse_jid(service), node or None)

    async def _bridge_affiliations_get(
        self, service: str | None = None, node: str | None = None, profile: str | None = None,
    ) -> dict[str, str]:
        client = self.host.get_client(profile)
        return await self.get_affiliations(client, parse_jid(service), node or None)

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

    async def _bridge_node_delete(
        self,
        service: str | None = None,
        node: str = "",
        redirect: str | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        service_jid = parse_jid(service)
        await self.delete_node(client, service_jid, node, redirect or None)
        return {
            "service": self._target(client, service_jid), "node": node,
            "redirect": redirect or None,
        }

    async def _bridge_node_purge(
        self, service: str | None = None, node: str = "", profile: str | None = None,
    ) -> dict[str, str]:
        client = self.host.get_client(profile)
        service_jid = parse_jid(service)
        await self.purge_node(client, service_jid, node)
        return {"service": self._target(client, service_jid), "node": node}

    async def _bridge_node_configuration_get(
        self, service: str | None = None, node: str = "", profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        form = await self.get_node_configuration(client, parse_jid(service), node)
        return form_to_dict(form)

    async def _bridge_node_configuration_set(
        self,
        service: str | None = None,
        node: str = "",
        options: dict[str, Any] | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        if not options:
            raise InvalidValue("no configuration option given: use KEY=VALUE pairs")
        service_jid = parse_jid(service)
        await self.set_node_configuration(client, service_jid, node, options)
        return {"service": self._target(client, service_jid), "node": node, "options": options}

    async def _bridge_node_subscriptions_get(
        self, service: str | None = None, node: str = "", profile: str | None = None,
    ) -> list[dict[str, Any]]:
        client = self.host.get_client(profile)
        return await self.get_node_subscriptions(client, parse_jid(service), node)

    async def _bridge_node_subscriptions_set(
        self,
        service: str | None = None,
        node: str = "",
        subscriptions: dict[str, str] | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        if not subscriptions:
            raise InvalidValue("no subscription given: use JID=STATE pairs")
        states = {parse_jid(jid, "subscriber"): state for jid, state in subscriptions.items()}
        service_jid = parse_jid(service)
        await self.set_node_subscriptions(client, service_jid, node, states)
        return {
            "service": self._target(client, service_jid), "node": node,
            "subscriptions": subscriptions,
        }

    async def _bridge_node_affiliations_get(
        self, service: str | None = None, node: str = "", profile: str | None = None,
    ) -> dict[str, str]:
        client = self.host.get_client(profile)
        return await self.get_node_affiliations(client, parse_jid(service), node)

    async def _bridge_node_affiliations_set(
        self,
        service: str | None = None,
        node: str = "",
        affiliations: dict[str, str] | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        if not affiliations:
            raise InvalidValue("no affiliation given: use JID=AFFILIATION pairs")
        values = {parse_jid(jid, "entity"): value for jid, value in affiliations.items()}
        service_jid = parse_jid(service)
        await self.set_node_affiliations(client, service_jid, node, values)
        return {
            "service": self._target(client, service_jid), "node": node,
            "affiliations": affiliations,
        }

    async def _bridge_features_get(
        self, service: str | None = None, profile: str | None = None,
    ) -> list[str]:
        client = self.host.get_client(profile)
        return sorted(await self.get_features(client, parse_jid(service)))
