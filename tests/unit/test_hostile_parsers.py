"""Hostile and malformed input to each parser of remote data, outside the cache.

Parsers covered: JIDs, pubsub notifications (parse_event_message) and items
results, RSM ``<set/>`` elements (XEP-0059), Atom entries (XEP-0277), data
forms, and the request lines of the bridge. Table-driven cases name each
hostile input. Property-based tests check that a parser returns a value or
raises its documented error, whatever it is given: they use hypothesis with
``derandomize=True``, so every run draws the same examples. The cache's handling of
the same inputs, with real storage, is in test_hostile_notifications.py.
``LIBERVIA_HYPOTHESIS_EXAMPLES`` sets the number of examples (default 200).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer, threads
from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.xish import domish
from wokkel.generic import parseXml

from libervia.backend.bridge.server import PARSE_ERROR, BridgeServer, encode_message
from libervia.backend.core import paths
from libervia.backend.core.config import Config
from libervia.backend.core.exceptions import InvalidValue, PubsubError
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.plugins.plugin_xep_0059 import NS_RSM, RSMRequest, RSMResponse
from libervia.backend.plugins.plugin_xep_0060 import (
    EVENT_ITEMS,
    MAX_ITEM_DEPTH,
    NS_DISCO_INFO,
    NS_PUBSUB,
    NS_PUBSUB_EVENT,
    NS_PUBSUB_META_DATA,
    NS_PUBSUB_NODE_CONFIG,
    NS_PUBSUB_OWNER,
    NS_SHIM,
    XEP_0060,
    event_signal_args,
    form_to_dict,
    form_values,
    item_problem,
    make_jid,
    parse_event_message,
    parse_jid,
    read_form,
)
from libervia.backend.plugins.plugin_xep_0277 import NS_ATOM, XEP_0277, item_to_data
from libervia.testing.fake_stream import FakeClient

HYPOTHESIS_EXAMPLES = int(os.environ.get("LIBERVIA_HYPOTHESIS_EXAMPLES") or 200)
PROPERTY_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=HYPOTHESIS_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SERVICE = "pubsub.example.org"
NODE = "urn:xmpp:microblog:0"
NS_DATA_FORMS = "jabber:x:data"
NS_XHTML = "http://www.w3.org/1999/xhtml"
NS_THREADING = "http://purl.org/syndication/thread/1.0"
NS_GEOLOC = "http://jabber.org/protocol/geoloc"

#: Strings that break naive parsers: empty, blank, invalid JIDs, XML-forbidden
#: characters, huge or odd numbers, markup, URIs with dangerous schemes.
NASTY_TEXT = [
    "", " ", "\t\n", ".", "a..b", "@", "a@", "/", "a@b@c", "xmpp:", "xmpp:a..b",
    "xmpp:?;node=x", "xmpp:%00", "\x00", "\x07", "\ud800", "\ufffe", "\u200b", "é" * 3,
    "-1", "0", "1e400", "nan", "inf", "²", "١٢", "9" * 5000, "99999999999999999999",
    "<b>x</b>", "&amp;", "]]>", "javascript:alert(1)", "url(x)", "dGVzdA==", "%%s%s",
    "2024-02-30T25:61:61+99:99", "0000-00-00", "1970-01-01T00:00:00Z", "x" * 3000,
]
TEXT = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=20))


def element_tree(names: list[str], namespaces: list[str | None], attributes: list[str]) -> Any:
    """Return a strategy of (name, namespace, attributes, children) trees."""
    attribute_maps = st.dictionaries(st.sampled_from(attributes), TEXT, max_size=3)
    leaf = st.tuples(
        st.sampled_from(names), st.sampled_from(namespaces), attribute_maps,
        st.lists(TEXT, max_size=1),
    )
    return st.recursive(
        leaf,
        lambda children: st.tuples(
            st.sampled_from(names), st.sampled_from(namespaces), attribute_maps,
            st.lists(st.one_of(children, TEXT), max_size=4),
        ),
        max_leaves=25,
    )


def build(tree: Any, parent: domish.Element) -> domish.Element:
    """Add the element described by ``tree`` to ``parent`` and return it."""
    name, namespace, attributes, children = tree
    element = parent.addElement((namespace, name))
    for key, value in attributes.items():
        element[key] = value
    for child in children:
        if isinstance(child, str):
            element.addContent(child)
        else:
            build(child, element)
    return element


@pytest.fixture(autouse=True)
def debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="libervia")


# --- JIDs ------------------------------------------------------------------------------


class JidTests:
    @pytest.mark.parametrize(
        "value", ["", ".", "a..b", "a@.", "@", "\x00", "a b", "\u200b", "a@-b", "é.."],
    )
    def test_invalid(self, value: str) -> None:
        with pytest.raises(InvalidFormat):
            make_jid(value)

    @pytest.mark.parametrize("value", [None, 3, b"a@b"])
    def test_not_a_string(self, value: Any) -> None:
        with pytest.raises(InvalidFormat):
            make_jid(value)

    def test_valid(self) -> None:
        assert make_jid("alice@example.org/phone") == JID("alice@example.org/phone")

    @pytest.mark.parametrize("value", [".", "a..b", "\u200b"])
    def test_bridge_input(self, value: str) -> None:
        """Bridge methods report an invalid JID as InvalidValue, not as an internal error."""
        with pytest.raises(InvalidValue, match="invalid service JID"):
            parse_jid(value)

    @PROPERTY_SETTINGS
    @given(value=st.one_of(TEXT, st.text()))
    def test_any_text(self, value: str) -> None:
        try:
            jid = make_jid(value)
        except InvalidFormat:
            return
        assert isinstance(jid, JID)


# --- notifications ----------------------------------------------------------------------

EVENT_NAMES = ["items", "purge", "delete", "configuration", "subscription", "collection",
               "item", "retract", "redirect", "x", "field", "value", "bogus"]
EVENT_NAMESPACES = [NS_PUBSUB_EVENT, NS_PUBSUB_EVENT, NS_PUBSUB, NS_DATA_FORMS, NS_ATOM, None]
EVENT_ATTRIBUTES = ["node", "id", "jid", "subscription", "subid", "expiry", "uri", "var",
                    "type", "publisher"]


@st.composite
def notification_messages(draw: Any) -> domish.Element:
    """Draw a ``<message/>`` carrying a pubsub event of random, often invalid, shape."""
    message = domish.Element((None, "message"))
    for attribute in ("from", "to", "type"):
        if draw(st.booleans()):
            message[attribute] = draw(st.one_of(
                st.sampled_from([SERVICE, "alice@example.org/tests", "headline", "error"]),
                TEXT,
            ))
    event = message.addElement((NS_PUBSUB_EVENT, "event"))
    for tree in draw(st.lists(element_tree(EVENT_NAMES, EVENT_NAMESPACES, EVENT_ATTRIBUTES),
                              max_size=2)):
        build(tree, event)
    if draw(st.booleans()):
        headers = message.addElement((NS_SHIM, "headers"))
        for name, value in draw(st.lists(st.tuples(st.one_of(st.none(), TEXT), TEXT),
                                         max_size=3)):
            header = headers.addElement("header", content=value)
            if name is not None:
                header["name"] = name
    return message


class EventParserTests:
    @PROPERTY_SETTINGS
    @given(message=notification_messages())
    def test_any_message(self, message: domish.Element) -> None:
        """A notification is parsed or dropped, and a parsed one always makes a valid signal."""
        parsed = parse_event_message(message, JID("alice@example.org/tests"), "alice")

        if parsed is None:
            return
        kind, event = parsed
        assert event.nodeIdentifier
        if kind == EVENT_ITEMS:
            for element in event.items:
                assert element.uri == NS_PUBSUB_EVENT
                assert element.name in ("item", "retract")
                assert item_problem(element) is None
        client = FakeClient()
        signal = {"name": "ps_event", "args": event_signal_args(client, kind, event)}
        assert json.loads(encode_message(signal))["args"]["node"] == event.nodeIdentifier

    @pytest.mark.parametrize(
        "xml",
        [
            # An <event/> with no child, or only text.
            f"<message from='{SERVICE}'><event xmlns='{NS_PUBSUB_EVENT}'/></message>",
            f"<message from='{SERVICE}'><event xmlns='{NS_PUBSUB_EVENT}'>text</event></message>",
            # The event in another namespace.
            f"<message from='{SERVICE}'><event xmlns='{NS_PUBSUB}'><items node='n'/></event>"
            "</message>",
            # An error message carrying an event.
            f"<message from='{SERVICE}' type='error'><event xmlns='{NS_PUBSUB_EVENT}'>"
            "<purge node='n'/></event></message>",
        ],
        ids=["empty event", "text only", "wrong namespace", "error message"],
    )
    def test_dropped(self, xml: str) -> None:
        assert parse_event_message(parseXml(xml.encode())) is None

    def test_invalid_character_in_node(self, caplog: pytest.LogCaptureFixture) -> None:
        message = parseXml(
            f"<message from='{SERVICE}'><event xmlns='{NS_PUBSUB_EVENT}'>"
            "<purge node='n'/></event></message>".encode()
        )
        next(next(message.elements()).elements())["node"] = "n\x00"

        assert parse_event_message(message, profile="alice") is None
        records = [
            r for r in caplog.records if "character that XML does not allow" in r.getMessage()
        ]
        assert len(records) == 1
        assert SERVICE in records[0].getMessage()

    def test_invalid_character_in_header(self) -> None:
        message = parseXml(
            f"<message from='{SERVICE}'><event xmlns='{NS_PUBSUB_EVENT}'>"
            f"<purge node='n'/></event><headers xmlns='{NS_SHIM}'>"
            "<header name='SubID'>x</header></headers></message>".encode()
        )
        header = next(next(message.elements(NS_SHIM, "headers")).elements())
        header.children = ["\ud800"]

        assert parse_event_message(message, profile="alice") is None

    def test_deep_unknown_child(self, caplog: pytest.LogCaptureFixture) -> None:
        """Logging a dropped notification never serialises it (which would recurse)."""
        message = domish.Element((None, "message"))
        message["from"] = SERVICE
        element = message.addElement((NS_PUBSUB_EVENT, "event")).addElement("collection")
        for _ in range(50_000):
            element = element.addElement("node")

        assert parse_event_message(message, profile="alice") is None
        assert any("no supported child" in record.getMessage() for record in caplog.records)


# --- items results ----------------------------------------------------------------------


class MinimalHost:
    def __init__(self, tmp_path: Path | None = None) -> None:
        self.trigger = TriggerManager()
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}
        if tmp_path is not None:
            path = tmp_path / "libervia.conf"
            path.write_text("", encoding="utf-8")
            self.config = Config(path)
        self.plugins["XEP-0060"] = XEP_0060(self)


@pytest.fixture
def pubsub() -> XEP_0060:
    return MinimalHost().plugins["XEP-0060"]


async def answered(
    client: FakeClient, d: defer.Deferred[Any], payload: domish.Element | str | None,
) -> Any:
    """Respond to the request that ``d`` waits for with ``payload`` (an element or XML).

    Returns the result of ``d``.
    """
    request = await client.xmlstream.next_sent()
    if isinstance(payload, str):
        payload = parseXml(payload.encode())
    client.xmlstream.respond(request, payload)
    return await d


ITEM_NAMES = ["item", "entry", "title", "bogus", "set", "first", "last", "count"]
ITEM_NAMESPACES = [NS_PUBSUB, NS_PUBSUB, NS_ATOM, NS_RSM, NS_PUBSUB_EVENT, None]


class ItemsResultTests:
    @PROPERTY_SETTINGS
    @given(trees=st.lists(element_tree(ITEM_NAMES, ITEM_NAMESPACES, ["id", "publisher", "node"]),
                          max_size=5))
    @pytest_twisted.ensureDeferred
    async def test_any_children(self, pubsub: XEP_0060, trees: list[Any]) -> None:
        """Whatever an items result holds, the items returned are all usable."""
        client = FakeClient()
        result = domish.Element((NS_PUBSUB, "pubsub"))
        items = result.addElement("items")
        items["node"] = NODE
        for tree in trees:
            build(tree, items)

        returned, metadata = await answered(
            client, defer.ensureDeferred(pubsub.get_items(client, JID(SERVICE), NODE)), result,
        )

        for item in returned:
            assert (item.uri, item.name) == (NS_PUBSUB, "item")
            assert item_problem(item) is None
        assert metadata["complete"] is True

    @pytest_twisted.ensureDeferred
    async def test_no_pubsub_child(self, pubsub: XEP_0060) -> None:
        client = FakeClient()

        returned, _ = await answered(
            client, defer.ensureDeferred(pubsub.get_items(client, JID(SERVICE), NODE)), None,
        )

        assert returned == []


# --- RSM ------------------------------------------------------------------------------------


def rsm_set(**children: str) -> domish.Element:
    set_elt = domish.Element((NS_RSM, "set"))
    for name, value in children.items():
        set_elt.addElement(name, content=value)
    return set_elt


class RSMResponseTests:
    @pytest.mark.parametrize(
        "count", ["abc", "-1", "²", "١٢", "9" * 5000, "", "1.5", "0x10"],
        ids=["word", "negative", "superscript", "arabic digits", "5000 digits", "empty",
             "decimal", "hexadecimal"],
    )
    def test_invalid_count_keeps_keys(self, count: str) -> None:
        response, errors = RSMResponse.read_element(rsm_set(first="a", last="b", count=count))

        assert response.to_dict() == {"first": "a", "last": "b"}
        assert len(errors) == 1
        assert "count" in errors[0]

    @pytest.mark.parametrize(
        "count", ["abc", "²", "9" * 5000], ids=["word", "superscript", "5000 digits"]
    )
    def test_strict_parse_raises_invalid_value(self, count: str) -> None:
        with pytest.raises(InvalidValue):
            RSMResponse.from_element(rsm_set(count=count))

    def test_invalid_index(self) -> None:
        set_elt = rsm_set(last="b", count="3")
        first = set_elt.addElement("first", content="a")
        first["index"] = "-2"

        response, errors = RSMResponse.read_element(set_elt)

        assert response.to_dict() == {"first": "a", "last": "b", "count": 3}
        assert "first index" in errors[0]

    def test_large_count(self) -> None:
        response, errors = RSMResponse.read_element(rsm_set(count="9" * 30))

        assert response.count == int("9" * 30)
        assert errors == []

    @PROPERTY_SETTINGS
    @given(trees=st.lists(element_tree(["first", "last", "count", "index", "max", "set", "x"],
                                       [NS_RSM, NS_RSM, None, "urn:other"], ["index"]),
                          max_size=6))
    def test_any_set(self, trees: list[Any]) -> None:
        set_elt = domish.Element((NS_RSM, "set"))
        for tree in trees:
            build(tree, set_elt)

        response, errors = RSMResponse.read_element(set_elt)

        for value in (response.count, response.first_index):
            assert value is None or (isinstance(value, int) and value >= 0)
        assert all(isinstance(error, str) for error in errors)

    @pytest.mark.parametrize(
        "count", ["abc", "9" * 5000, "²"], ids=["word", "5000 digits", "superscript"]
    )
    @pytest_twisted.ensureDeferred
    async def test_items_result(
        self, pubsub: XEP_0060, caplog: pytest.LogCaptureFixture, count: str,
    ) -> None:
        """An invalid count is logged once and makes the page incomplete, not the request fail."""
        client = FakeClient(profile="alice")
        result = domish.Element((NS_PUBSUB, "pubsub"))
        result.addElement("items")["node"] = NODE
        result.addChild(rsm_set(first="a", last="b", count=count))
        request = pubsub.get_items(client, JID(SERVICE), NODE, rsm_request=RSMRequest(max=2))

        _, metadata = await answered(client, defer.ensureDeferred(request), result)

        assert metadata["rsm"] == {"first": "a", "last": "b"}
        assert metadata["complete"] is False
        records = [
            record for record in caplog.records
            if "invalid values dropped from the RSM response" in record.getMessage()
        ]
        assert len(records) == 1
        message = records[0].getMessage()
        assert "profile alice" in message
        assert SERVICE in message
        assert NODE in message


class RSMRequestTests:
    """RSM requests come from frontends through the bridge: errors are InvalidValue."""

    @pytest.mark.parametrize(
        "data",
        [
            {"max": "²"}, {"max": "9" * 5000}, {"index": "-1"}, {"max": True},
            {"max": 1.5}, {"after": 3}, {"after": ""}, {"after": "a", "before": "b"},
            {"bogus": 1}, {"max": None, "index": "x"},
        ],
    )
    def test_invalid(self, data: dict[str, Any]) -> None:
        with pytest.raises(InvalidValue):
            RSMRequest.from_dict(data)

    @PROPERTY_SETTINGS
    @given(data=st.dictionaries(
        st.sampled_from(["max", "after", "before", "index", "other"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT,
                  st.lists(st.integers(), max_size=2)),
        max_size=4,
    ))
    def test_any_dict(self, data: dict[str, Any]) -> None:
        try:
            request = RSMRequest.from_dict(data)
        except InvalidValue:
            return
        assert RSMRequest.from_element(request.to_element()) == request


# --- Atom entries -----------------------------------------------------------------------

ATOM_NAMES = ["title", "content", "summary", "rights", "link", "author", "contributor", "name",
              "uri", "email", "category", "published", "updated", "id", "generator", "source",
              "div", "p", "a", "img", "span", "script", "lat", "lon", "alt", "geoloc",
              "in-reply-to", "entry"]
ATOM_NAMESPACES = [NS_ATOM, NS_ATOM, NS_ATOM, NS_XHTML, NS_THREADING, NS_GEOLOC,
                   "http://purl.org/atom/ns#", "urn:example:other", None]
ATOM_ATTRIBUTES = ["type", "href", "rel", "term", "label", "length", "ref", "mode", "title",
                   "hreflang", "src", "style", "onclick", "uri", "version", "scheme", "id"]


def atom_item(item_id: str, children: list[Any], publisher: str | None = None) -> domish.Element:
    item = domish.Element((NS_PUBSUB, "item"))
    item["id"] = item_id
    if publisher is not None:
        item["publisher"] = publisher
    entry = item.addElement((NS_ATOM, "entry"))
    for child in children:
        build(child, entry)
    return item


#: Entries with one hostile part each; each must parse without an exception.
HOSTILE_ENTRIES = {
    "publisher with an empty domain label": ("a..b", []),
    "publisher of one dot": (".", []),
    "author URI with an empty domain label": (
        None, [("author", NS_ATOM, {}, [("uri", NS_ATOM, {}, ["xmpp:a..b"])])]),
    "author URI without JID": (None, [("author", NS_ATOM, {}, [("uri", NS_ATOM, {}, ["xmpp:"])])]),
    "comments link to an invalid service": (
        None, [("link", NS_ATOM, {"rel": "replies", "title": "comments",
                                 "href": "xmpp:a..b?;node=x"}, [])]),
    "link without href": (None, [("link", NS_ATOM, {"rel": "enclosure", "length": "x"}, [])]),
    "category without term": (None, [("category", NS_ATOM, {}, [])]),
    "impossible dates": (None, [("published", NS_ATOM, {}, ["2024-02-30T25:61:61+99:99"]),
                                ("updated", NS_ATOM, {}, ["1e400"])]),
    "geoloc out of range": (None, [("geoloc", NS_GEOLOC, {}, [("lat", NS_GEOLOC, {}, ["1e400"]),
                                                               ("lon", NS_GEOLOC, {}, ["nan"])])]),
    "invalid base64": (None, [("content", NS_ATOM, {"type": "image/png"}, ["not base64!"])]),
    "script in xhtml": (None, [("content", NS_ATOM, {"type": "xhtml"}, [
        ("div", NS_XHTML, {}, [("script", NS_XHTML, {}, ["alert(1)"]),
                               ("a", NS_XHTML, {"href": "javascript:x", "onclick": "x"}, ["a"])])
    ])]),
    "unknown elements": (None, [("bogus", "urn:example:other", {"x": "y"}, ["z"])]),
    "nested at the item depth limit": (None, [
        ("content", NS_ATOM, {"type": "xhtml"}, [
            ("div", NS_XHTML, {}, [("span", NS_XHTML, {}, ["x"])])])]),
}


def nested_content(depth: int) -> Any:
    """Return an XHTML content tree that puts the item at ``depth`` levels."""
    tree: Any = ("span", NS_XHTML, {}, ["deep"])
    for _ in range(depth - 4):
        tree = ("span", NS_XHTML, {}, [tree])
    return ("content", NS_ATOM, {"type": "xhtml"}, [tree])


HOSTILE_ENTRIES["nested at the item depth limit"] = (None, [nested_content(MAX_ITEM_DEPTH)])


class AtomTests:
    @pytest.mark.parametrize(
        "publisher, children", HOSTILE_ENTRIES.values(), ids=HOSTILE_ENTRIES.keys()
    )
    def test_hostile_entry(self, publisher: str | None, children: list[Any]) -> None:
        data = item_to_data(atom_item("1", children, publisher), SERVICE, NODE)

        assert data["id"] == "1"
        json.dumps(data, allow_nan=False)

    def test_invalid_publisher_not_verified(self) -> None:
        data = item_to_data(atom_item("1", [], "a..b"))

        assert data["author_jid_verified"] is False
        assert "author_jid" not in data

    @PROPERTY_SETTINGS
    @given(
        children=st.lists(element_tree(ATOM_NAMES, ATOM_NAMESPACES, ATOM_ATTRIBUTES), max_size=8),
        publisher=st.one_of(st.none(), TEXT),
    )
    def test_any_entry(self, children: list[Any], publisher: str | None) -> None:
        """An entry gives JSON data, or ValueError (the only error item_to_data documents)."""
        try:
            data = item_to_data(atom_item("1", children, publisher), SERVICE, NODE)
        except ValueError:
            return
        text = json.dumps(data, allow_nan=False)
        assert not any(isinstance(value, float) and math.isnan(value)
                       for value in json.loads(text).values())

    @pytest_twisted.ensureDeferred
    async def test_feed_with_hostile_posts(self, caplog: pytest.LogCaptureFixture) -> None:
        """One hostile post never hides the others of a blog."""
        host = MinimalHost()
        microblog = XEP_0277(host)
        client = FakeClient(profile="alice")
        result = domish.Element((NS_PUBSUB, "pubsub"))
        items = result.addElement("items")
        items["node"] = NODE
        for index, (publisher, children) in enumerate(HOSTILE_ENTRIES.values()):
            items.addChild(atom_item(f"post{index}", children, publisher))
        items.addChild(domish.Element((NS_PUBSUB, "item"), attribs={"id": "not-a-post"}))
        request = microblog.mb_get(client, JID(SERVICE), NODE)

        posts = await answered(client, defer.ensureDeferred(request), result)

        assert [post["id"] for post in posts["items"]] == [
            f"post{index}" for index in range(len(HOSTILE_ENTRIES))
        ]
        skipped = [r for r in caplog.records if "skipping item" in r.getMessage()]
        assert len(skipped) == 1
        assert "alice" in skipped[0].getMessage()
        assert SERVICE in skipped[0].getMessage()
        assert NODE in skipped[0].getMessage()


# --- data forms ---------------------------------------------------------------------------


def form_xml(fields: str, namespace: str = NS_PUBSUB_NODE_CONFIG) -> str:
    return (
        f"<x xmlns='{NS_DATA_FORMS}' type='result'><field var='FORM_TYPE' type='hidden'>"
        f"<value>{namespace}</value></field>{fields}</x>"
    )


#: Forms wokkel 18.0.0 rejects with data_form.Error.
INVALID_FORMS = {
    "duplicate field": "<field var='a'><value>1</value></field><field var='a'><value>2</value>"
                       "</field>",
    "option without value": "<field var='a' type='list-single'><option label='x'/></field>",
}
#: Forms wokkel reads; the values come out as sent.
ODD_FORMS = {
    "invalid JID": ("<field var='pubsub#contact' type='jid-multi'><value>a..b</value></field>",
                    {"pubsub#contact": ["a..b"]}),
    "invalid boolean": ("<field var='pubsub#deliver_payloads' type='boolean'><value>maybe"
                        "</value></field>", {"pubsub#deliver_payloads": "maybe"}),
    "unknown type": ("<field var='a' type='weird'><value>v</value></field>", {"a": "v"}),
    "field without var": ("<field type='text-single'><value>v</value></field>", {}),
    "markup in a value": ("<field var='a'><value><b>bold</b>text</value></field>", {"a": "text"}),
    "two values of a single field": ("<field var='a' type='text-single'><value>1</value>"
                                     "<value>2</value></field>", {"a": "1"}),
}


def parent_of(form: str) -> domish.Element:
    return parseXml(f"<parent>{form}</parent>".encode())


class DataFormTests:
    @pytest.mark.parametrize("fields", INVALID_FORMS.values(), ids=INVALID_FORMS.keys())
    def test_invalid(self, fields: str) -> None:
        with pytest.raises(InvalidValue, match="invalid .* data form"):
            read_form(parent_of(form_xml(fields)), NS_PUBSUB_NODE_CONFIG)

    @pytest.mark.parametrize(
        "fields, expected", ODD_FORMS.values(), ids=ODD_FORMS.keys()
    )
    def test_odd_values(self, fields: str, expected: dict[str, Any]) -> None:
        form = read_form(parent_of(form_xml(fields)), NS_PUBSUB_NODE_CONFIG)

        assert form_values(form) == expected
        json.dumps(form_to_dict(form))

    @pytest.mark.parametrize("fields", INVALID_FORMS.values(), ids=INVALID_FORMS.keys())
    @pytest_twisted.ensureDeferred
    async def test_configuration_result(self, pubsub: XEP_0060, fields: str) -> None:
        """An invalid form in a result is a PubsubError, which callers already handle."""
        client = FakeClient()
        result = f"<pubsub xmlns='{NS_PUBSUB_OWNER}'><configure node='{NODE}'>" \
                 f"{form_xml(fields)}</configure></pubsub>"
        request = pubsub.get_node_configuration(client, JID(SERVICE), NODE)

        with pytest.raises(PubsubError, match="getting node configuration on .* failed"):
            await answered(client, defer.ensureDeferred(request), result)

    @pytest.mark.parametrize("fields", INVALID_FORMS.values(), ids=INVALID_FORMS.keys())
    @pytest_twisted.ensureDeferred
    async def test_metadata_result(self, pubsub: XEP_0060, fields: str) -> None:
        client = FakeClient()
        result = f"<query xmlns='{NS_DISCO_INFO}' node='{NODE}'>" \
                 f"{form_xml(fields, NS_PUBSUB_META_DATA)}</query>"
        request = pubsub.get_node_metadata(client, JID(SERVICE), NODE)

        with pytest.raises(PubsubError, match="getting node metadata on .* failed"):
            await answered(client, defer.ensureDeferred(request), result)

    @PROPERTY_SETTINGS
    @given(trees=st.lists(element_tree(
        ["field", "value", "option", "desc", "required", "x", "title"],
        [NS_DATA_FORMS, NS_DATA_FORMS, None],
        ["var", "type", "label"],
    ), max_size=6), form_type=st.sampled_from(["result", "form", "submit", "cancel", "bogus"]))
    def test_any_form(self, trees: list[Any], form_type: str) -> None:
        parent = domish.Element((None, "parent"))
        form = parent.addElement((NS_DATA_FORMS, "x"))
        form["type"] = form_type
        type_field = form.addElement("field")
        type_field["var"] = "FORM_TYPE"
        type_field.addElement("value", content=NS_PUBSUB_NODE_CONFIG)
        for tree in trees:
            build(tree, form)

        try:
            found = read_form(parent, NS_PUBSUB_NODE_CONFIG)
        except InvalidValue:
            return
        if found is not None:
            json.dumps(form_values(found))
            json.dumps(form_to_dict(found))


# --- bridge request lines --------------------------------------------------------------------


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    yield paths.runtime_dir()
    shutil.rmtree(base, ignore_errors=True)


async def exchange(lines: list[bytes], expected: int) -> list[dict[str, Any]]:
    """Send raw lines on one connection to the bridge and read ``expected`` response lines."""

    def blocking() -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(paths.bridge_socket()))
            sock.sendall(b"".join(lines))
            received = b""
            while received.count(b"\n") < expected:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        return [json.loads(line) for line in received.splitlines()]

    return await threads.deferToThread(blocking)


PING = b'{"jsonrpc": "2.0", "id": 2, "method": "ping"}\n'


class BridgeLineTests:
    @pytest.mark.parametrize(
        "line",
        [b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe\n"[:-1], b"1e99999", b"\"\\ud800\""],
        ids=["nested arrays", "nested objects", "invalid UTF-8", "huge number",
             "lone surrogate"],
    )
    @pytest_twisted.ensureDeferred
    async def test_connection_survives(
        self, runtime_dir: Path, caplog: pytest.LogCaptureFixture, line: bytes,
    ) -> None:
        bridge = BridgeServer()
        bridge.register_method("ping", lambda: "pong")
        await bridge.start()
        try:
            responses = await exchange([line + b"\n", PING], 2)
        finally:
            await bridge.stop()

        assert responses[0]["id"] is None
        assert responses[0]["error"]["code"] in (PARSE_ERROR, -32600)
        assert responses[1] == {"jsonrpc": "2.0", "id": 2, "result": "pong"}
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
