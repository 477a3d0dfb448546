"""Tests of entity capabilities (XEP-0115) and PEP interests (XEP-0163) without a server.

The verification string is checked against the two worked examples of
XEP-0115 section 5, and the caps and disco#info answers against the stanza
examples of XEP-0115 and XEP-0163, all kept in tests/data/xep (see the NOTICE
there). Disco requests go through wokkel's handler on a FakeXmlStream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish
from wokkel.generic import parseXml
from wokkel.subprotocols import StreamManager

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core.exceptions import InvalidValue
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.core.xmpp import TRIGGER_INITIAL_PRESENCE
from libervia.backend.plugins.plugin_xep_0060 import EVENT_ITEMS, XEP_0060
from libervia.backend.plugins.plugin_xep_0115 import (
    CAPS_NODE,
    NS_CAPS,
    NS_DISCO_INFO,
    XEP_0115,
    Identity,
    parse_disco_info,
    verification_string,
    verification_text,
)
from libervia.backend.plugins.plugin_xep_0163 import XEP_0163
from libervia.testing.fake_stream import FakeClient, FakeXmlStream, element_from

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "xep"
GENERATION_FILE = DATA_DIR / "xep-0115-generation.jsonl"

# Example numbers in XEP-0115 1.6.0 and XEP-0163 1.2.2.
EXAMPLE_CAPS_PRESENCE = 1
EXAMPLE_CAPS_DISCO_REQUEST = 3
EXAMPLE_DISCO_REQUEST_NO_NODE = 6
EXAMPLE_PEP_DISCO_RESULT = 5
EXAMPLE_PEP_LAST_ITEM = 9

NS_TUNE = "http://jabber.org/protocol/tune"
NS_GEOLOC = "http://jabber.org/protocol/geoloc"


def load_generation_examples() -> list[dict[str, Any]]:
    """Return the worked examples of the verification string."""
    with GENERATION_FILE.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def load_example(xep: str, number: int) -> domish.Element:
    """Parse a stanza example of XEP ``xep`` (e.g. "0115")."""
    path = DATA_DIR / f"xep-{xep}-examples.jsonl"
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            example = json.loads(line)
            if example["example"] == number:
                element = parseXml(example["xml"].encode("utf-8"))
                assert element is not None, f"XEP-{xep} example {number} did not parse"
                return element
    raise AssertionError(f"example {number} not found in {path}")


def query_of(stanza: domish.Element) -> domish.Element:
    """Return the disco#info ``<query/>`` child of an IQ."""
    query = next(stanza.elements(NS_DISCO_INFO, "query"), None)
    assert query is not None, f"no disco#info query in {stanza.toXml()}"
    return query


class MinimalHost:
    """The parts of the backend host that the caps and PEP plugins use."""

    def __init__(self) -> None:
        self.trigger = TriggerManager()
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}
        self.clients: dict[str, Any] = {}


@pytest.fixture
def host() -> MinimalHost:
    """Return a host with the XEP-0060, XEP-0115 and XEP-0163 plugins loaded."""
    host = MinimalHost()
    host.plugins["XEP-0060"] = XEP_0060(host)
    host.plugins["XEP-0115"] = XEP_0115(host)
    host.plugins["XEP-0163"] = XEP_0163(host)
    return host


@pytest.fixture
def caps(host: MinimalHost) -> XEP_0115:
    """Return the host's XEP-0115 plugin."""
    return host.plugins["XEP-0115"]


def connect_handlers(stream: FakeXmlStream, *handlers: Any) -> StreamManager:
    """Attach handlers to a stream manager and run its stream events on ``stream``."""
    factory = xmlstream.XmlStreamFactory(xmlstream.Authenticator())
    manager = StreamManager(factory)
    for handler in handlers:
        handler.setHandlerParent(manager)
    factory.installBootstraps(stream)
    stream.dispatch(stream, xmlstream.STREAM_CONNECTED_EVENT)
    stream.dispatch(stream, xmlstream.STREAM_AUTHD_EVENT)
    return manager


def attach_disco(caps: XEP_0115, stream: FakeXmlStream) -> None:
    """Attach the caps disco handler to a fake stream, as a client connection does."""
    connect_handlers(stream, caps.get_handler(FakeClient()))


def disco_request(node: str | None) -> domish.Element:
    """Build a disco#info request from example 3 of XEP-0115, for ``node``."""
    iq = load_example("0115", EXAMPLE_CAPS_DISCO_REQUEST)
    query = query_of(iq)
    if node is None:
        del query.attributes["node"]
    else:
        query["node"] = node
    return iq


class VerificationStringTests:
    """The ``ver`` algorithm of XEP-0115 section 5.1 on its worked examples."""

    @pytest.mark.parametrize(
        "example", load_generation_examples(), ids=lambda example: example["caption"]
    )
    def test_generation_example(self, example: dict[str, Any]) -> None:
        query = parseXml(example["xml"].encode("utf-8"))
        identities, features, forms = parse_disco_info(query)
        assert verification_text(identities, features, forms) == example["string"]
        assert verification_string(identities, features, forms) == example["ver"]

    def test_order_of_input_ignored(self) -> None:
        identities = [Identity("client", "pc", "en", "A"), Identity("client", "pc", "el", "B")]
        features = ["urn:b", "urn:a"]
        ver = verification_string(identities, features)
        assert ver == verification_string(list(reversed(identities)), sorted(features))

    def test_duplicate_feature_rejected(self) -> None:
        with pytest.raises(InvalidValue, match="duplicate"):
            verification_string([Identity("client", "pc")], ["urn:a", "urn:a"])

    def test_duplicate_identity_rejected(self) -> None:
        with pytest.raises(InvalidValue, match="duplicate"):
            verification_string([Identity("client", "pc")] * 2, ["urn:a"])

    def test_form_without_form_type_skipped(self) -> None:
        query = parseXml(
            b"<query xmlns='http://jabber.org/protocol/disco#info'>"
            b"<identity category='client' type='pc'/><feature var='urn:a'/>"
            b"<x xmlns='jabber:x:data' type='result'><field var='os'><value>Mac</value>"
            b"</field></x></query>"
        )
        identities, features, forms = parse_disco_info(query)
        assert forms == {}
        assert verification_string(identities, features, forms) == verification_string(
            [Identity("client", "pc")], ["urn:a"]
        )

    def test_same_form_type_twice_rejected(self) -> None:
        form = (
            b"<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>"
            b"<value>urn:form</value></field></x>"
        )
        query = parseXml(
            b"<query xmlns='http://jabber.org/protocol/disco#info'>" + form + form + b"</query>"
        )
        with pytest.raises(InvalidValue, match="urn:form"):
            parse_disco_info(query)


class CapsTests:
    """Features registry and the ``<c/>`` of the initial presence."""

    def test_features_include_caps_and_disco(self, caps: XEP_0115) -> None:
        assert NS_CAPS in caps.features
        assert NS_DISCO_INFO in caps.features

    def test_add_feature_changes_ver(self, caps: XEP_0115) -> None:
        before = caps.ver
        caps.add_feature(NS_TUNE)
        assert NS_TUNE in caps.features
        assert caps.ver != before
        assert caps.ver == verification_string(caps.identities, caps.features)

    def test_add_feature_twice_keeps_ver(self, caps: XEP_0115) -> None:
        caps.add_feature(NS_TUNE)
        ver = caps.ver
        caps.add_feature(NS_TUNE)
        assert caps.ver == ver
        assert caps.features.count(NS_TUNE) == 1

    @pytest.mark.parametrize("feature", ["", None, 3])
    def test_invalid_feature_rejected(self, caps: XEP_0115, feature: Any) -> None:
        with pytest.raises(InvalidValue):
            caps.add_feature(feature)

    @pytest_twisted.ensureDeferred
    async def test_initial_presence_carries_caps(
        self, host: MinimalHost, caps: XEP_0115
    ) -> None:
        presence = domish.Element((None, "presence"))
        await host.trigger.point(TRIGGER_INITIAL_PRESENCE, FakeClient(), presence)
        c_elt = next(presence.elements(NS_CAPS, "c"), None)
        assert c_elt is not None
        expected = next(load_example("0115", EXAMPLE_CAPS_PRESENCE).elements(NS_CAPS, "c"))
        assert set(c_elt.attributes) == set(expected.attributes)
        assert c_elt["hash"] == expected["hash"]
        assert c_elt["node"] == CAPS_NODE
        assert c_elt["ver"] == caps.ver


class DiscoTests:
    """disco#info responses: a peer that checks the caps finds the same ``ver``."""

    def test_caps_node_answered(self, caps: XEP_0115) -> None:
        stream = FakeXmlStream()
        attach_disco(caps, stream)
        stream.receive(disco_request(caps.caps_disco_node))
        response = element_from(stream.sent[-1])
        assert response["type"] == "result"
        query = query_of(response)
        assert query["node"] == caps.caps_disco_node
        identities, features, forms = parse_disco_info(query)
        assert identities == caps.identities
        assert verification_string(identities, features, forms) == caps.ver

    def test_request_without_node_answered(self, caps: XEP_0115) -> None:
        stream = FakeXmlStream()
        attach_disco(caps, stream)
        stream.receive(load_example("0115", EXAMPLE_DISCO_REQUEST_NO_NODE))
        response = element_from(stream.sent[-1])
        assert response["type"] == "result"
        _, features, _ = parse_disco_info(query_of(response))
        assert sorted(features) == caps.features

    def test_old_ver_node_not_found(self, caps: XEP_0115) -> None:
        stream = FakeXmlStream()
        attach_disco(caps, stream)
        old_node = caps.caps_disco_node
        caps.add_feature(NS_TUNE)
        stream.receive(disco_request(old_node))
        response = element_from(stream.sent[-1])
        assert response["type"] == "error"
        assert response.error.firstChildElement().name == "item-not-found"


class PepInterestTests:
    """``+notify`` features and the notifications they bring."""

    def test_interest_adds_notify_feature(self, host: MinimalHost, caps: XEP_0115) -> None:
        pep = host.plugins["XEP-0163"]
        pep.add_interest(NS_TUNE)
        pep.add_interest(NS_GEOLOC)
        assert NS_TUNE + "+notify" in caps.features
        assert NS_GEOLOC + "+notify" in caps.features
        assert pep.interests == [NS_GEOLOC, NS_TUNE]

    def test_features_match_pep_example(self, host: MinimalHost, caps: XEP_0115) -> None:
        host.plugins["XEP-0163"].add_interest(NS_TUNE)
        _, example_features, _ = parse_disco_info(
            query_of(load_example("0163", EXAMPLE_PEP_DISCO_RESULT))
        )
        notify = [feature for feature in example_features if feature.endswith("+notify")]
        assert NS_TUNE + "+notify" in notify
        assert NS_TUNE + "+notify" in caps.features

    @pytest.mark.parametrize("node", ["", NS_TUNE + "+notify", None])
    def test_invalid_interest_rejected(self, host: MinimalHost, node: Any) -> None:
        with pytest.raises(InvalidValue):
            host.plugins["XEP-0163"].add_interest(node)

    @pytest_twisted.ensureDeferred
    async def test_pep_notification_reaches_node_callback(self, host: MinimalHost) -> None:
        pubsub = host.plugins["XEP-0060"]
        client = FakeClient()
        received: defer.Deferred = defer.Deferred()
        pubsub.add_node_callback(
            NS_TUNE, EVENT_ITEMS, lambda _client, event: received.callback(event)
        )
        connect_handlers(client.xmlstream, pubsub.get_handler(client))

        # The last published item, sent by the PEP service of a contact
        # whose presence the client shares, without any subscription.
        client.xmlstream.receive(load_example("0163", EXAMPLE_PEP_LAST_ITEM))
        event = await received
        assert event.sender.full() == "juliet@capulet.lit"
        assert event.nodeIdentifier == NS_TUNE
        tune = next(event.items[0].elements(NS_TUNE, "tune"))
        assert str(next(tune.elements(NS_TUNE, "artist"))) == "Gerald Finzi"
