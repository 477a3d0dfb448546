"""Tests of the XEP-0059 (RSM) models against every example of XEP-0059 1.0.

The examples are in tests/data/xep/xep-0059-examples.jsonl (see the NOTICE
there). Coverage, by example number:

=========================  ===================================================
Examples                   How they are exercised
=========================  ===================================================
1, 3, 5, 8, 11, 12, 15,    request ``<set/>`` sent by a client: rendered from
17, 19                     an RSMRequest and compared, then parsed back
4, 6, 7, 9, 13, 16, 18     response ``<set/>`` received: parsed into an
                           RSMResponse with the expected values
2                          a result without ``<set/>``: no RSM response
10, 14                     error answers to a paged items request: the
                           exception class and condition
20, 21                     disco#info request rendered by get_features, and
                           the RSM feature read from the answer
=========================  ===================================================

All 21 examples are covered. The examples page ``jabber:iq:search`` and
disco#items queries, which this client does not send; only their ``<set/>``
elements, which are the same for every paged protocol, are compared.
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
from wokkel.generic import parseXml

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core.exceptions import (
    InvalidValue,
    PubsubFeatureNotImplemented,
    PubsubItemNotFound,
)
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.plugins.plugin_xep_0059 import (
    NS_RSM,
    RSMRequest,
    RSMResponse,
    find_set,
)
from libervia.backend.plugins.plugin_xep_0060 import NS_DISCO_INFO, XEP_0060
from libervia.testing.fake_stream import FakeClient, element_from
from libervia.testing.xml_compare import xml_differences

EXAMPLES_FILE = Path(__file__).resolve().parent.parent / "data" / "xep" / "xep-0059-examples.jsonl"


def example_stanza(number: int) -> domish.Element:
    """Parse the single stanza of a XEP-0059 example."""
    with EXAMPLES_FILE.open(encoding="utf-8") as lines:
        for line in lines:
            example = json.loads(line)
            if example["example"] == number:
                element = parseXml(example["xml"].encode("utf-8"))
                assert element is not None, f"example {number} did not parse"
                return element
    raise AssertionError(f"example {number} not found in {EXAMPLES_FILE}")


def example_set(number: int) -> domish.Element:
    """Return the ``<set/>`` of an example's query."""
    query = next(example_stanza(number).elements(), None)
    set_elt = find_set(query)
    assert set_elt is not None, f"example {number} has no <set/>"
    return set_elt


#: Requests a client sends: example number and the request it renders.
REQUEST_EXAMPLES = {
    1: RSMRequest(max=10),
    3: RSMRequest(max=10),
    5: RSMRequest(max=10, after="peterpan@neverland.lit"),
    8: RSMRequest(max=10, before="peter@pixyland.org"),
    11: RSMRequest(max=10, before=""),
    12: RSMRequest(max=10, index=371),
    15: RSMRequest(max=0),
    17: RSMRequest(max=20),
    19: RSMRequest(max=20, after="4da91d4b330112f683dddaebf93180b1bd25e95f"),
}

#: Responses a client receives: example number and the values parsed.
RESPONSE_EXAMPLES = {
    4: RSMResponse("stpeter@jabber.org", 0, "peterpan@neverland.lit", 800),
    6: RSMResponse("peter@pixyland.org", 10, "peter@rabbit.lit", 800),
    7: RSMResponse(count=790),
    9: RSMResponse("stpeter@jabber.org", 0, "peterpan@neverland.lit", 800),
    13: RSMResponse("peter@pixyland.org", 371, "peter@rabbit.lit", 800),
    16: RSMResponse(count=800),
    18: RSMResponse(
        "acc3594e844c77696f7a7ba9367ae324b6b958ad", 0,
        "4da91d4b330112f683dddaebf93180b1bd25e95f", 150,
    ),
}


class RequestVectorTests:
    @pytest.mark.parametrize("number", sorted(REQUEST_EXAMPLES))
    def test_rendered(self, number: int) -> None:
        rendered = REQUEST_EXAMPLES[number].to_element()
        assert xml_differences(example_set(number), rendered) == []

    @pytest.mark.parametrize("number", sorted(REQUEST_EXAMPLES))
    def test_parsed(self, number: int) -> None:
        assert RSMRequest.from_element(example_set(number)) == REQUEST_EXAMPLES[number]

    def test_error_examples_requests(self) -> None:
        # The error examples echo the request they reject.
        assert RSMRequest.from_element(example_set(10)) == REQUEST_EXAMPLES[5]
        assert RSMRequest.from_element(example_set(14)) == REQUEST_EXAMPLES[12]


class ResponseVectorTests:
    @pytest.mark.parametrize("number", sorted(RESPONSE_EXAMPLES))
    def test_parsed(self, number: int) -> None:
        assert RSMResponse.from_element(example_set(number)) == RESPONSE_EXAMPLES[number]

    @pytest.mark.parametrize("number", sorted(RESPONSE_EXAMPLES))
    def test_rendered(self, number: int) -> None:
        rendered = RESPONSE_EXAMPLES[number].to_element()
        assert xml_differences(example_set(number), rendered) == []

    def test_result_without_set(self) -> None:
        query = next(example_stanza(2).elements())
        assert find_set(query) is None

    def test_dict(self) -> None:
        assert RESPONSE_EXAMPLES[13].to_dict() == {
            "first": "peter@pixyland.org", "index": 371, "last": "peter@rabbit.lit",
            "count": 800,
        }

    def test_dict_count_only(self) -> None:
        assert RESPONSE_EXAMPLES[16].to_dict() == {"count": 800}


class RequestValidationTests:
    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"max": -1}, "invalid RSM max -1"),
            ({"max": "ten"}, "invalid RSM max 'ten'"),
            ({"max": "-3"}, "invalid RSM max '-3'"),
            ({"max": 2.5}, "invalid RSM max 2.5"),
            ({"max": True}, "invalid RSM max True"),
            ({"index": -5}, "invalid RSM index -5"),
            ({"index": "x1"}, "invalid RSM index 'x1'"),
            ({"after": 3}, "invalid RSM after 3"),
            ({"after": ""}, "invalid RSM after ''"),
            ({"after": "a", "before": "b"}, "after and before exclude each other"),
            ({"before": "", "index": 2}, "before and index exclude each other"),
        ],
    )
    def test_invalid(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(InvalidValue, match=message):
            RSMRequest(**kwargs)

    def test_numeric_strings(self) -> None:
        request = RSMRequest(max="10", index="0")
        assert (request.max, request.index) == (10, 0)

    def test_from_dict(self) -> None:
        assert RSMRequest.from_dict({"max": 3, "after": "x"}) == RSMRequest(max=3, after="x")

    def test_from_dict_unknown_key(self) -> None:
        with pytest.raises(InvalidValue, match="unknown RSM request keys \\['page'\\]"):
            RSMRequest.from_dict({"page": 2})

    def test_to_dict_last_page(self) -> None:
        assert RSMRequest(max=5, before="").to_dict() == {"max": 5, "before": ""}

    def test_invalid_response_count(self) -> None:
        set_elt = domish.Element((NS_RSM, "set"))
        set_elt.addElement("count", content="many")
        with pytest.raises(InvalidValue, match="invalid RSM count 'many'"):
            RSMResponse.from_element(set_elt)


# --- the examples through the pubsub plugin ---------------------------------------


class MinimalHost:
    def __init__(self) -> None:
        self.trigger = TriggerManager()
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}


@pytest.fixture
def plugin() -> XEP_0060:
    return XEP_0060(MinimalHost())


SERVICE = JID("users.jabber.org")


class ErrorVectorTests:
    """Examples 10 and 14 answer a paged request: they become pubsub exceptions."""

    @pytest.mark.parametrize(
        "number, request_number, error_class, condition",
        [
            (10, 5, PubsubItemNotFound, "item-not-found"),
            (14, 12, PubsubFeatureNotImplemented, "feature-not-implemented"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_error(
        self, plugin: XEP_0060, number: int, request_number: int,
        error_class: type[Exception], condition: str,
    ) -> None:
        client = FakeClient()
        rsm_request = REQUEST_EXAMPLES[request_number]
        d = defer.ensureDeferred(
            plugin.get_items(client, SERVICE, "node", rsm_request=rsm_request)
        )
        request = element_from(await client.xmlstream.next_sent())
        answer = example_stanza(number)
        answer["id"] = request["id"]
        client.xmlstream.receive(answer)

        with pytest.raises(error_class) as info:
            await d

        assert info.value.condition == condition
        assert info.value.service == SERVICE.full()
        assert info.value.node == "node"


class DiscoVectorTests:
    @pytest_twisted.ensureDeferred
    async def test_features(self, plugin: XEP_0060) -> None:
        client = FakeClient()
        service = JID("conference.jabber.org")
        d = defer.ensureDeferred(plugin.get_features(client, service))
        request = element_from(await client.xmlstream.next_sent())
        answer = example_stanza(21)
        answer["id"] = request["id"]
        client.xmlstream.receive(answer)
        features = await d

        expected = example_stanza(20)
        assert request["type"] == expected["type"]
        assert request["to"] == expected["to"]
        assert xml_differences(
            next(expected.elements(NS_DISCO_INFO, "query")),
            next(request.elements(NS_DISCO_INFO, "query")),
        ) == []
        assert features == frozenset({NS_RSM})
