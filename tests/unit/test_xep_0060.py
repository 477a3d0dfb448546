"""Tests of the XEP-0060 plugin without a server.

Requests are rendered on a FakeXmlStream and compared with the examples of
XEP-0060 1.30.0 kept in tests/data/xep (see the NOTICE there). Event dispatch
is driven with wokkel's event objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from wokkel import data_form, pubsub
from wokkel.generic import parseXml

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core import constants as C
from libervia.backend.core.exceptions import InvalidValue, PubsubError
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.plugins.plugin_xep_0060 import (
    EVENT_DELETE,
    EVENT_ITEMS,
    EVENT_PURGE,
    NS_PUBSUB,
    NS_PUBSUB_PUBLISH_OPTIONS,
    TRIGGER_GET_ITEMS,
    TRIGGER_ITEMS_RECEIVED,
    XEP_0060,
    PubSubRequest,
    item_from_xml,
    items_from_xml,
    parse_jid,
)
from libervia.backend.plugins.plugin_xep_0059 import RSMRequest
from libervia.testing.fake_stream import FakeClient, FakeXmlStream, element_from
from libervia.testing.xml_compare import xml_differences

EXAMPLES_FILE = Path(__file__).resolve().parent.parent / "data" / "xep" / "xep-0060-examples.jsonl"
NS_ATOM = "http://www.w3.org/2005/Atom"
NS_X_DATA = data_form.NS_X_DATA

# Example numbers in XEP-0060 1.30.0.
EXAMPLE_FIRST_PUBLISH = 1
EXAMPLE_PUBLISH_OPTIONS = 114
EXAMPLE_RETRACT = 115

SERVICE = JID("pubsub.shakespeare.lit")
NODE = "princely_musings"
ITEM_ID = "ae890ac52d0df67ed7cfdf51b644e901"
NODE_BLOG = "urn:xmpp:microblog:0"


# --- vectors and XML comparison -------------------------------------------------


def load_example(number: int) -> str:
    """Return the XML of a XEP-0060 example, failing when the vector file lacks it."""
    with EXAMPLES_FILE.open(encoding="utf-8") as lines:
        for line in lines:
            example = json.loads(line)
            if example["example"] == number:
                assert example["well_formed"], f"example {number} is not well-formed XML"
                return example["xml"]
    raise AssertionError(f"example {number} not found in {EXAMPLES_FILE}")


def parse_example(number: int) -> domish.Element:
    """Parse a XEP-0060 example holding a single stanza."""
    element = parseXml(load_example(number).encode("utf-8"))
    assert element is not None, f"example {number} did not parse"
    return element


def pubsub_child(iq: domish.Element) -> domish.Element:
    """Return the ``<pubsub/>`` child of an IQ."""
    child = next(iq.elements(NS_PUBSUB, "pubsub"), None)
    assert child is not None, f"no <pubsub/> in {iq.toXml()}"
    return child


def render(request: PubSubRequest) -> domish.Element:
    """Render ``request`` as the IQ it would send."""
    xs = FakeXmlStream()
    request.send(xs)
    return element_from(xs.sent[-1])


class XmlDifferencesTests:
    """The comparison helper reports each kind of difference."""

    def test_equal(self) -> None:
        xml = b"<a xmlns='urn:x' k='v'><b>text</b><c/></a>"

        assert xml_differences(parseXml(xml), parseXml(xml)) == []

    def test_inherited_namespace(self) -> None:
        built = domish.Element(("urn:x", "a"))
        built.addChild(domish.Element((None, "b")))

        assert xml_differences(parseXml(b"<a xmlns='urn:x'><b/></a>"), built) == []

    @pytest.mark.parametrize(
        "other",
        [
            b"<a xmlns='urn:y'><b>text</b></a>",
            b"<a xmlns='urn:x' k='v'><b>text</b></a>",
            b"<a xmlns='urn:x'><b>other</b></a>",
            b"<a xmlns='urn:x'><b>text</b><b/></a>",
            b"<a xmlns='urn:x'><c>text</c></a>",
        ],
    )
    def test_difference_found(self, other: bytes) -> None:
        expected = parseXml(b"<a xmlns='urn:x'><b>text</b></a>")

        assert xml_differences(expected, parseXml(other)) != []

    def test_form_value_difference(self) -> None:
        form = (
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            "<value>urn:f</value></field><field var='k'><value>{}</value></field></x>"
        )

        differences = xml_differences(
            parseXml(form.format("one").encode()), parseXml(form.format("two").encode())
        )

        assert differences != []


# --- requests against the XEP examples -------------------------------------------


class PublishOptionsTests:
    """Publishing with options (XEP-0060 example 114)."""

    def test_parse(self) -> None:
        request = PubSubRequest.fromElement(parse_example(EXAMPLE_PUBLISH_OPTIONS))

        assert request.verb == "publish"
        assert request.nodeIdentifier == NODE
        assert [item["id"] for item in request.items] == [ITEM_ID]
        assert request.publishOptions == {"pubsub#access_model": "presence"}
        assert request.sender == JID("hamlet@denmark.lit/blogbot")
        assert request.recipient == SERVICE

    def test_parse_payload(self) -> None:
        request = PubSubRequest.fromElement(parse_example(EXAMPLE_PUBLISH_OPTIONS))
        entry = next(request.items[0].elements())

        assert (entry.uri, entry.name) == (NS_ATOM, "entry")

    def test_render_matches_example(self) -> None:
        example = parse_example(EXAMPLE_PUBLISH_OPTIONS)
        # A second parse, so the example's own tree is not modified by rendering.
        source = PubSubRequest.fromElement(parse_example(EXAMPLE_PUBLISH_OPTIONS))
        request = PubSubRequest("publish")
        request.recipient = SERVICE
        request.nodeIdentifier = NODE
        request.items = source.items
        request.publishOptions = {"pubsub#access_model": "presence"}

        iq = render(request)

        assert iq["type"] == "set"
        assert iq["to"] == SERVICE.full()
        assert xml_differences(pubsub_child(example), pubsub_child(iq)) == []

    def test_rendered_form(self) -> None:
        request = PubSubRequest("publish")
        request.nodeIdentifier = NODE
        request.items = [pubsub.Item(ITEM_ID)]
        request.publishOptions = {"pubsub#access_model": "open"}

        options_elt = next(pubsub_child(render(request)).elements(NS_PUBSUB, "publish-options"))
        form = data_form.findForm(options_elt, NS_PUBSUB_PUBLISH_OPTIONS)

        assert form is not None
        assert form.formType == "submit"
        assert form.getValues() == {"pubsub#access_model": "open"}

    def test_without_options(self) -> None:
        example = parse_example(EXAMPLE_FIRST_PUBLISH)
        source = PubSubRequest.fromElement(parse_example(EXAMPLE_FIRST_PUBLISH))
        request = PubSubRequest("publish")
        request.nodeIdentifier = NODE
        request.items = source.items

        rendered = pubsub_child(render(request))

        assert source.publishOptions is None
        assert xml_differences(pubsub_child(example), rendered) == []

    def test_round_trip(self) -> None:
        request = PubSubRequest("publish")
        request.nodeIdentifier = "n"
        request.items = [pubsub.Item("i1")]
        request.publishOptions = {"pubsub#access_model": "whitelist", "pubsub#max_items": "10"}

        parsed = PubSubRequest.fromElement(render(request))

        assert parsed.publishOptions == request.publishOptions


class RetractNotifyTests:
    """Retract with and without ``notify`` (XEP-0060 example 115).

    No example of XEP-0060 1.30.0 sets ``notify``, which the XEP-0060 schema
    declares on ``<retract/>`` as an optional xs:boolean. The notify vector is
    example 115 with ``notify='true'`` added.
    """

    @staticmethod
    def example(notify: str | None) -> domish.Element:
        iq = parse_example(EXAMPLE_RETRACT)
        if notify is not None:
            next(pubsub_child(iq).elements(NS_PUBSUB, "retract"))["notify"] = notify
        return iq

    @staticmethod
    def request(notify: bool) -> PubSubRequest:
        request = PubSubRequest("retract")
        request.recipient = SERVICE
        request.nodeIdentifier = NODE
        request.itemIdentifiers = [ITEM_ID]
        request.notify = notify
        return request

    def test_parse_without_notify(self) -> None:
        request = PubSubRequest.fromElement(self.example(None))

        assert request.verb == "retract"
        assert request.nodeIdentifier == NODE
        assert request.itemIdentifiers == [ITEM_ID]
        assert request.notify is False

    @pytest.mark.parametrize(
        "value, expected", [("true", True), ("1", True), ("false", False), ("0", False)]
    )
    def test_parse_notify(self, value: str, expected: bool) -> None:
        assert PubSubRequest.fromElement(self.example(value)).notify is expected

    def test_render_without_notify(self) -> None:
        iq = render(self.request(notify=False))

        assert xml_differences(pubsub_child(self.example(None)), pubsub_child(iq)) == []

    def test_render_notify(self) -> None:
        iq = render(self.request(notify=True))

        assert xml_differences(pubsub_child(self.example("true")), pubsub_child(iq)) == []

    def test_render_addressing(self) -> None:
        iq = render(self.request(notify=True))

        assert iq["type"] == "set"
        assert iq["to"] == SERVICE.full()


# --- item XML ----------------------------------------------------------------------


def example_item(item_id: str) -> domish.Element:
    """Return an ``<item/>`` in the pubsub namespace carrying the Atom entry of example 1."""
    entry = next(pubsub_child(parse_example(EXAMPLE_FIRST_PUBLISH)).publish.item.elements())
    item = domish.Element((NS_PUBSUB, "item"))
    item["id"] = item_id
    item.addChild(entry)
    return item


class ItemXmlTests:
    """item_from_xml and items_from_xml."""

    def test_item_round_trip(self) -> None:
        xml = example_item("a").toXml()

        assert item_from_xml(xml).toXml() == xml

    def test_item_from_bytes(self) -> None:
        xml = example_item("a").toXml()

        assert item_from_xml(xml.encode("utf-8"))["id"] == "a"

    def test_items_round_trip(self) -> None:
        xmls = [example_item(item_id).toXml() for item_id in ("a", "b", "c")]

        items = items_from_xml(xmls)

        assert [item.toXml() for item in items] == xmls

    def test_items_detached(self) -> None:
        items = items_from_xml([example_item("a").toXml()])

        assert items[0].parent is None
        assert (items[0].uri, items[0].name) == (NS_PUBSUB, "item")

    def test_items_keep_payload_namespace(self) -> None:
        items = items_from_xml([example_item("a").toXml()])

        assert next(items[0].elements()).uri == NS_ATOM

    def test_items_empty(self) -> None:
        assert items_from_xml([]) == []

    def test_items_non_ascii(self) -> None:
        item = domish.Element((NS_PUBSUB, "item"))
        item["id"] = "é"
        item.addElement(("urn:test", "p"), content="ünïcode ✓")

        assert items_from_xml([item.toXml()])[0].toXml() == item.toXml()

    @pytest.mark.parametrize("xml", ["not xml", "<item/><item/>", "<item id='a'/>junk<"])
    def test_item_malformed(self, xml: str) -> None:
        with pytest.raises(InvalidValue, match="invalid item XML"):
            item_from_xml(xml)

    def test_item_wrong_element(self) -> None:
        with pytest.raises(InvalidValue, match=r"expected an <item/> element, got <entry/>"):
            item_from_xml(f"<entry xmlns='{NS_ATOM}'/>")

    @pytest.mark.parametrize("xml", ["", "<item", "<item id='a'>"])
    def test_item_incomplete(self, xml: str) -> None:
        with pytest.raises(InvalidValue):
            item_from_xml(xml)

    @pytest.mark.parametrize(
        "xmls",
        [
            ["<item id='a'"],
            ["<item id='a'/>", "</items><items>"],
            ["<item id='a'><unclosed></item>"],
        ],
    )
    def test_items_malformed(self, xmls: list[str]) -> None:
        with pytest.raises(InvalidValue, match="invalid stored item XML"):
            items_from_xml(xmls)

    def test_items_unclosed_comment(self) -> None:
        with pytest.raises(InvalidValue):
            items_from_xml(["<item id='a'/><!--"])


class ParseJidTests:
    """parse_jid turns strings into JIDs and rejects invalid ones."""

    @pytest.mark.parametrize("value", [None, ""])
    def test_unset(self, value: str | None) -> None:
        assert parse_jid(value) is None

    def test_jid_unchanged(self) -> None:
        jid = JID("pubsub.example.org")

        assert parse_jid(jid) is jid

    @pytest.mark.parametrize(
        "value", ["pubsub.example.org", "alice@example.org", "alice@example.org/res"]
    )
    def test_valid(self, value: str) -> None:
        assert parse_jid(value) == JID(value)

    @pytest.mark.parametrize("value", ["alice@", "a@b@c", "a b@example.org", "\x00@example.org"])
    def test_invalid(self, value: str) -> None:
        with pytest.raises(InvalidValue) as info:
            parse_jid(value)

        assert f"invalid service JID {value!r}" in str(info.value)

    def test_invalid_names_role(self) -> None:
        with pytest.raises(InvalidValue, match="invalid profile JID 'alice@'"):
            parse_jid("alice@", "profile")

    def test_non_string(self) -> None:
        with pytest.raises(InvalidValue):
            parse_jid(5)  # type: ignore[arg-type]


# --- plugin -----------------------------------------------------------------------


class MinimalHost:
    """The parts of the backend host that XEP_0060 uses without a connection."""

    def __init__(self) -> None:
        self.trigger = TriggerManager()
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}


@pytest.fixture
def host() -> MinimalHost:
    """Return a host with the XEP-0060 plugin loaded."""
    host = MinimalHost()
    host.plugins["XEP-0060"] = XEP_0060(host)
    return host


@pytest.fixture
def plugin(host: MinimalHost) -> XEP_0060:
    """Return the host's XEP-0060 plugin."""
    return host.plugins["XEP-0060"]


def items_result(node: str, item_ids: list[str]) -> domish.Element:
    """Build the ``<pubsub/>`` payload of an items result with small Atom payloads."""
    pubsub_elt = domish.Element((NS_PUBSUB, "pubsub"))
    items_elt = pubsub_elt.addElement("items")
    items_elt["node"] = node
    for item_id in item_ids:
        item = items_elt.addElement("item")
        item["id"] = item_id
        item.addElement((NS_ATOM, "entry")).addElement("title", content=f"post {item_id}")
    return pubsub_elt


class GetItemsValidationTests:
    """Invalid arguments raise InvalidValue before any trigger or network use."""

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"node": ""}, "a node name is required"),
            ({"max_items": -1}, "invalid max_items -1"),
            ({"max_items": True}, "invalid max_items True"),
            ({"max_items": "5"}, "invalid max_items '5'"),
            ({"max_items": 2.0}, "invalid max_items 2.0"),
            ({"item_ids": "abc"}, "invalid item_ids 'abc'"),
            ({"item_ids": ("a",)}, r"invalid item_ids \('a',\)"),
            ({"item_ids": ["a", ""]}, "invalid item_ids"),
            ({"item_ids": ["a", 2]}, "invalid item_ids"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_invalid(
        self, host: MinimalHost, plugin: XEP_0060, kwargs: dict[str, Any], message: str
    ) -> None:
        client = FakeClient()
        triggered: list[tuple[Any, ...]] = []
        host.trigger.add(TRIGGER_GET_ITEMS, lambda *args: triggered.append(args))
        arguments = {"node": NODE, **kwargs}

        with pytest.raises(InvalidValue, match=message):
            await plugin.get_items(client, SERVICE, **arguments)

        assert triggered == []
        assert client.xmlstream.sent == []

    @pytest_twisted.ensureDeferred
    async def test_zero_max_items_means_all(self, host: MinimalHost, plugin: XEP_0060) -> None:
        client = FakeClient()
        seen: list[Any] = []

        def record_max_items(
            client: Any, service: Any, node: str, max_items: Any, *rest: Any
        ) -> tuple[bool, Any]:
            seen.append(max_items)
            return False, ([], {})

        host.trigger.add(TRIGGER_GET_ITEMS, record_max_items)

        await plugin.get_items(client, SERVICE, NODE, max_items=0)

        assert seen == [None]


class GetItemsTriggerTests:
    """The XEP-0060_get_items return point may supply the result in place of the network."""

    @pytest_twisted.ensureDeferred
    async def test_trigger_result_returned(self, host: MinimalHost, plugin: XEP_0060) -> None:
        client = FakeClient()
        supplied = ([domish.Element((NS_PUBSUB, "item"))], {C.META_FROM_CACHE: True})
        host.trigger.add(TRIGGER_GET_ITEMS, lambda *args: (False, supplied))

        result = await plugin.get_items(client, SERVICE, NODE)

        assert result is supplied
        assert client.xmlstream.sent == []

    @pytest_twisted.ensureDeferred
    async def test_trigger_arguments(self, host: MinimalHost, plugin: XEP_0060) -> None:
        client = FakeClient()
        calls: list[tuple[Any, ...]] = []

        async def record(*args: Any) -> tuple[bool, Any]:
            calls.append(args)
            return False, ([], {})

        host.trigger.add(TRIGGER_GET_ITEMS, record)

        rsm_request = RSMRequest(max=5)
        await plugin.get_items(
            client, SERVICE, NODE, max_items=3, item_ids=["x"], sub_id="s1", extra={"k": 1},
            rsm_request=rsm_request,
        )

        assert calls == [(client, SERVICE, NODE, 3, ["x"], "s1", {"k": 1}, rsm_request)]

    @pytest_twisted.ensureDeferred
    async def test_continue_goes_to_network(self, host: MinimalHost, plugin: XEP_0060) -> None:
        client = FakeClient()
        host.trigger.add(TRIGGER_GET_ITEMS, lambda *args: None)
        received: list[tuple[Any, ...]] = []
        host.trigger.add(TRIGGER_ITEMS_RECEIVED, lambda *args: received.append(args))

        d = defer.ensureDeferred(plugin.get_items(client, SERVICE, NODE, max_items=2))
        request = element_from(await client.xmlstream.next_sent())
        client.xmlstream.respond(request, items_result(NODE, ["a", "b"]))
        items, metadata = await d

        assert [item["id"] for item in items] == ["a", "b"]
        assert metadata == {
            C.META_SERVICE: SERVICE.full(),
            C.META_NODE: NODE,
            C.META_COMPLETE: False,
            C.META_FROM_CACHE: False,
        }
        assert len(received) == 1
        assert received[0][-2] == items


class GetItemsNetworkTests:
    """Requests sent on the stream and responses read from it."""

    @pytest_twisted.ensureDeferred
    async def test_request_rendered(self, plugin: XEP_0060) -> None:
        client = FakeClient()

        d = defer.ensureDeferred(plugin.get_items(client, SERVICE, NODE, max_items=2))
        request = element_from(await client.xmlstream.next_sent())
        client.xmlstream.respond(request, items_result(NODE, []))
        await d

        expected = parseXml(
            f"<pubsub xmlns='{NS_PUBSUB}'><items node='{NODE}' max_items='2'/></pubsub>".encode()
        )
        assert request["type"] == "get"
        assert request["to"] == SERVICE.full()
        assert xml_differences(expected, pubsub_child(request)) == []

    @pytest_twisted.ensureDeferred
    async def test_item_ids_rendered(self, plugin: XEP_0060) -> None:
        client = FakeClient()

        d = defer.ensureDeferred(plugin.get_items(client, SERVICE, NODE, item_ids=["a", "b"]))
        request = element_from(await client.xmlstream.next_sent())
        client.xmlstream.respond(request, items_result(NODE, ["a"]))
        items, metadata = await d

        expected = parseXml(
            f"<pubsub xmlns='{NS_PUBSUB}'><items node='{NODE}'>"
            "<item id='a'/><item id='b'/></items></pubsub>".encode()
        )
        assert xml_differences(expected, pubsub_child(request)) == []
        assert metadata[C.META_COMPLETE] is False

    @pytest_twisted.ensureDeferred
    async def test_own_service(self, plugin: XEP_0060) -> None:
        client = FakeClient()

        d = defer.ensureDeferred(plugin.get_items(client, None, NODE))
        request = element_from(await client.xmlstream.next_sent())
        client.xmlstream.respond(request, items_result(NODE, ["a"]))
        _, metadata = await d

        assert not request.hasAttribute("to")
        assert metadata[C.META_SERVICE] == client.jid.userhost()
        assert metadata[C.META_COMPLETE] is True

    @pytest_twisted.ensureDeferred
    async def test_error_raises(self, plugin: XEP_0060) -> None:
        client = FakeClient()

        d = defer.ensureDeferred(plugin.get_items(client, SERVICE, NODE))
        request = element_from(await client.xmlstream.next_sent())
        client.xmlstream.respond_error(request, "item-not-found")

        with pytest.raises(PubsubError) as info:
            await d

        message = str(info.value)
        assert "item-not-found" in message
        assert repr(NODE) in message
        assert SERVICE.full() in message

    @pytest_twisted.ensureDeferred
    async def test_not_connected(self, plugin: XEP_0060) -> None:
        client = FakeClient()
        client.stream_manager = None

        with pytest.raises(PubsubError, match="not connected"):
            await plugin.get_items(client, SERVICE, NODE)


class BridgeMethodsTests:
    """The plugin registers its bridge methods on creation."""

    def test_registered(self, host: MinimalHost) -> None:
        expected = {"ps_items_get", "ps_publish", "ps_retract", "ps_node_create",
                    "ps_subscribe", "ps_unsubscribe"}

        assert expected <= set(host.bridge.methods)


# --- event callbacks -------------------------------------------------------------


def items_event(node: str, item_ids: tuple[str, ...] = ("a",)) -> pubsub.ItemsEvent:
    """Build an items notification from SERVICE for ``node``."""
    items = []
    for item_id in item_ids:
        item = domish.Element((pubsub.NS_PUBSUB_EVENT, "item"))
        item["id"] = item_id
        items.append(item)
    return pubsub.ItemsEvent(SERVICE, JID("alice@example.org"), node, items, {})


class EventCallbackTests:
    """add_node_callback and dispatch_event."""

    @pytest_twisted.ensureDeferred
    async def test_priority_order(self, plugin: XEP_0060) -> None:
        calls: list[str] = []
        done: defer.Deferred[None] = defer.Deferred()
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: calls.append("low"), priority=-1)
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: calls.append("high"), priority=10)
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: calls.append("first-0"))
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: calls.append("second-0"))
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: done.callback(None), priority=-10)

        plugin.dispatch_event(FakeClient(), EVENT_ITEMS, items_event(NODE))
        await done

        assert calls == ["high", "first-0", "second-0", "low"]

    @pytest_twisted.ensureDeferred
    async def test_prefix_matching(self, plugin: XEP_0060) -> None:
        calls: list[str] = []
        done: defer.Deferred[None] = defer.Deferred()
        plugin.add_node_callback(NODE_BLOG, EVENT_ITEMS, lambda c, e: calls.append("blog"))
        plugin.add_node_callback("urn:xmpp:other", EVENT_ITEMS, lambda c, e: calls.append("other"))
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: calls.append("all"))
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: done.callback(None), priority=-10)

        event = items_event(NODE_BLOG + ":comments/x")
        plugin.dispatch_event(FakeClient(), EVENT_ITEMS, event)
        await done

        assert calls == ["blog", "all"]

    @pytest_twisted.ensureDeferred
    async def test_event_kind_filter(self, plugin: XEP_0060) -> None:
        calls: list[str] = []
        done: defer.Deferred[None] = defer.Deferred()
        plugin.add_node_callback("", EVENT_DELETE, lambda c, e: calls.append("delete"))
        plugin.add_node_callback("", EVENT_PURGE, lambda c, e: calls.append("purge"))
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: done.callback(None), priority=-10)

        plugin.dispatch_event(FakeClient(), EVENT_ITEMS, items_event(NODE))
        await done

        assert calls == []

    @pytest_twisted.ensureDeferred
    async def test_failing_callback_isolated(self, plugin: XEP_0060) -> None:
        calls: list[str] = []
        done: defer.Deferred[None] = defer.Deferred()

        def broken(client: Any, event: Any) -> None:
            raise RuntimeError("callback failed on purpose")

        async def broken_async(client: Any, event: Any) -> None:
            raise RuntimeError("async callback failed on purpose")

        plugin.add_node_callback("", EVENT_ITEMS, broken, priority=3)
        plugin.add_node_callback(
            "", EVENT_ITEMS, lambda c, e: calls.append("after sync"), priority=2
        )
        plugin.add_node_callback("", EVENT_ITEMS, broken_async, priority=1)
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: calls.append("after async"))
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: done.callback(None), priority=-10)

        plugin.dispatch_event(FakeClient(), EVENT_ITEMS, items_event(NODE))
        await done

        assert calls == ["after sync", "after async"]

    @pytest_twisted.ensureDeferred
    async def test_async_callbacks_sequential(self, plugin: XEP_0060) -> None:
        calls: list[str] = []
        gate: defer.Deferred[None] = defer.Deferred()
        done: defer.Deferred[None] = defer.Deferred()

        async def slow(client: Any, event: Any) -> None:
            calls.append("slow start")
            await gate
            calls.append("slow end")

        plugin.add_node_callback("", EVENT_ITEMS, slow, priority=1)
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: calls.append("next"))
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: done.callback(None), priority=-10)

        plugin.dispatch_event(FakeClient(), EVENT_ITEMS, items_event(NODE))
        calls.append("dispatch returned")
        gate.callback(None)
        await done

        assert calls == ["slow start", "dispatch returned", "slow end", "next"]

    @pytest_twisted.ensureDeferred
    async def test_callback_arguments(self, plugin: XEP_0060) -> None:
        done: defer.Deferred[tuple[Any, Any]] = defer.Deferred()
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: done.callback((c, e)))
        client = FakeClient()
        event = items_event(NODE, ("a", "b"))

        plugin.dispatch_event(client, EVENT_ITEMS, event)
        received = await done

        assert received == (client, event)

    def test_unknown_event_kind(self, plugin: XEP_0060) -> None:
        with pytest.raises(ValueError, match="unknown pubsub event kind 'publish'"):
            plugin.add_node_callback("", "publish", lambda c, e: None)

    @pytest_twisted.ensureDeferred
    async def test_remove(self, plugin: XEP_0060) -> None:
        calls: list[str] = []
        done: defer.Deferred[None] = defer.Deferred()

        def removed(client: Any, event: Any) -> None:
            calls.append("removed")

        plugin.add_node_callback("", EVENT_ITEMS, removed)
        plugin.add_node_callback("", EVENT_ITEMS, lambda c, e: done.callback(None), priority=-10)
        plugin.remove_node_callback("", EVENT_ITEMS, removed)

        plugin.dispatch_event(FakeClient(), EVENT_ITEMS, items_event(NODE))
        await done

        assert calls == []

    def test_remove_unknown(self, plugin: XEP_0060) -> None:
        with pytest.raises(KeyError, match="no items callback"):
            plugin.remove_node_callback("", EVENT_ITEMS, lambda c, e: None)
