"""Hostile and malformed pubsub notifications and items results reaching the cache.

Each stanza goes through a fake XML stream (:mod:`libervia.testing.fake_stream`)
into the XEP-0060 plugin, then into the pubsub cache, whose storage is real:
every test runs on an SQLite file and on a PostgreSQL database (``storage``
fixture). The XEP-0277 plugin parses the cached items, as in the daemon. A
scripted service responds to the requests that the cache sends back
(payload fetches, item id listings, syncs). Every case checks that:

- no handler fails: a failing notification handler is logged with its
  traceback, nothing of its notification is applied, and the node is not
  served until synchronised again;
- the offending input is logged once, at debug or warning level, with the
  profile, the service and the node;
- the valid rest of the notification is applied;
- the cached items equal what applying the valid parts in document order
  gives, byte for byte.

The property-based tests use hypothesis with ``derandomize=True``, so every
run draws the same examples. ``LIBERVIA_HYPOTHESIS_EXAMPLES`` sets how many
(default 30 per test and database engine) for longer runs.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import reactor
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core import constants as C
from libervia.backend.core.config import Config
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.plugins.plugin_pubsub_cache import PubsubCache
from libervia.backend.plugins.plugin_xep_0059 import NS_RSM, find_set
from libervia.backend.plugins.plugin_xep_0060 import (
    MAX_ITEM_DEPTH,
    MAX_ITEM_ID_BYTES,
    NS_DISCO_ITEMS,
    NS_PUBSUB,
    NS_PUBSUB_EVENT,
    NS_PUBSUB_NODE_CONFIG,
    NS_SHIM,
    XEP_0060,
)
from libervia.backend.plugins.plugin_xep_0277 import XEP_0277
from libervia.testing.databases import DatabaseUnavailable, database_url
from libervia.testing.fake_stream import FakeClient, FakeXmlStream

SERVICE = JID("pubsub.example.org")
NODE = "urn:xmpp:microblog:0"
PROFILE = "alice"
CLIENT_JID = JID("alice@example.org/tests")
NS_ATOM = "http://www.w3.org/2005/Atom"
NS_XHTML = "http://www.w3.org/1999/xhtml"
NS_DATA_FORMS = "jabber:x:data"

HYPOTHESIS_EXAMPLES = int(os.environ.get("LIBERVIA_HYPOTHESIS_EXAMPLES") or 30)
#: The storage fixture stays the same for all the examples of a test: each
#: example caches a node of its own.
PROPERTY_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=HYPOTHESIS_EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: About 10 MB of text made of distinct words, as a long post would be.
TEN_MB_TEXT = " ".join(f"word{index}" for index in range(1_150_000))


# --- stanzas -------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """An ``<item/>`` holding an Atom entry, nested ``depth`` levels deep when depth > 3."""

    item_id: str | None
    title: str = "post"
    depth: int = 0

    def element(self, uri: str = NS_PUBSUB_EVENT) -> domish.Element:
        item = domish.Element((uri, "item"))
        if self.item_id is not None:
            item["id"] = self.item_id
        entry = item.addElement((NS_ATOM, "entry"))
        entry.addElement("title", content=self.title)
        if self.depth > 3:
            # <item/> is level 1, <entry/> 2, <content/> 3, then one <span/> per level.
            element = entry.addElement("content")
            element["type"] = "xhtml"
            for _ in range(self.depth - 3):
                element = element.addElement((NS_XHTML, "span"))
            element.addContent("deep")
        return item

    def xml(self) -> str:
        """Return the XML that the cache stores for this item."""
        return self.element(NS_PUBSUB).toXml()


@dataclass(frozen=True)
class Retract:
    item_id: str | None

    def element(self, uri: str = NS_PUBSUB_EVENT) -> domish.Element:
        retract = domish.Element((uri, "retract"))
        if self.item_id is not None:
            retract["id"] = self.item_id
        return retract


@dataclass(frozen=True)
class Unknown:
    """An element that has no place in an ``<items/>`` element."""

    name: str = "bogus"
    uri: str = NS_PUBSUB_EVENT

    def element(self, uri: str = NS_PUBSUB_EVENT) -> domish.Element:
        return domish.Element((self.uri, self.name))


Part = Item | Retract | Unknown


def event_message(
    kind: str = "items",
    children: list[domish.Element] = (),
    node: str | None = NODE,
    sender: str | None = SERVICE.full(),
    headers: list[tuple[str | None, str]] = (),
) -> domish.Element:
    """Build a notification ``<message/>`` whose ``<event/>`` has one child of ``kind``."""
    message = domish.Element((None, "message"))
    if sender is not None:
        message["from"] = sender
    message["to"] = CLIENT_JID.full()
    action = message.addElement((NS_PUBSUB_EVENT, "event")).addElement(kind)
    if node is not None:
        action["node"] = node
    for child in children:
        action.addChild(child)
    if headers:
        headers_elt = message.addElement((NS_SHIM, "headers"))
        for name, value in headers:
            header = headers_elt.addElement("header", content=value)
            if name is not None:
                header["name"] = name
    return message


def items_message(*parts: Part, node: str | None = NODE) -> domish.Element:
    return event_message("items", [part.element() for part in parts], node=node)


def configuration_form(*fields: tuple[str, str]) -> domish.Element:
    """Build a node configuration form; a field name may repeat."""
    form = domish.Element((NS_DATA_FORMS, "x"))
    form["type"] = "result"
    type_field = form.addElement("field")
    type_field["var"] = "FORM_TYPE"
    type_field["type"] = "hidden"
    type_field.addElement("value", content=NS_PUBSUB_NODE_CONFIG)
    for var, value in fields:
        field_elt = form.addElement("field")
        field_elt["var"] = var
        field_elt.addElement("value", content=value)
    return form


def subscription_message(attributes: dict[str, str]) -> domish.Element:
    message = event_message("subscription")
    action = next(next(message.elements()).elements())
    for name, value in attributes.items():
        action[name] = value
    return message


# --- a scripted service ---------------------------------------------------------------


class ScriptedService:
    """Responds to the requests sent on a fake stream from an ordered list of parts per node.

    Items requests get every item (or the requested ids), in RSM pages of
    ``page_size`` when the request has a ``<set/>`` and ``page_size`` is set,
    with ``count`` as the ``<count/>`` text. Subscriptions succeed. disco#items
    lists the item ids. Configuration and metadata requests get forbidden, as
    a subscriber who does not own the node does. ``errors`` maps an item id to
    the error condition that a request for it gets.
    """

    def __init__(self, xmlstream: FakeXmlStream) -> None:
        self.xmlstream = xmlstream
        self.nodes: dict[str, list[Part]] = {}
        self.errors: dict[str, str] = {}
        self.page_size: int | None = None
        self.count: str | None = None
        original_send = xmlstream.send

        def send(obj: Any) -> None:
            original_send(obj)
            if isinstance(obj, domish.Element) and obj.name == "iq" and obj.getAttribute(
                "type"
            ) in ("get", "set"):
                reactor.callLater(0, self._respond, obj)

        xmlstream.send = send  # type: ignore[method-assign]

    def set_items(self, *parts: Part, node: str = NODE) -> None:
        self.nodes[node] = list(parts)

    def _ids(self, node: str) -> list[str]:
        return [
            part.item_id for part in self.nodes.get(node, [])
            if isinstance(part, Item) and part.item_id
        ]

    def _respond(self, request: domish.Element) -> None:
        pubsub = next(request.elements(NS_PUBSUB, "pubsub"), None)
        if pubsub is not None:
            items_elt = next(pubsub.elements(NS_PUBSUB, "items"), None)
            if items_elt is not None:
                self._respond_items(request, pubsub, items_elt)
                return
            subscribe = next(pubsub.elements(NS_PUBSUB, "subscribe"), None)
            result = None
            if subscribe is not None:
                result = domish.Element((NS_PUBSUB, "pubsub"))
                subscription = result.addElement("subscription")
                subscription["node"] = subscribe["node"]
                subscription["jid"] = subscribe["jid"]
                subscription["subscription"] = "subscribed"
            self.xmlstream.respond(request, result)
            return
        query = next(request.elements(NS_DISCO_ITEMS, "query"), None)
        if query is not None:
            result = domish.Element((NS_DISCO_ITEMS, "query"))
            result["node"] = query["node"]
            for item_id in self._ids(query["node"]):
                entry = result.addElement("item")
                entry["jid"] = SERVICE.full()
                entry["name"] = item_id
            self.xmlstream.respond(request, result)
            return
        self.xmlstream.respond_error(request, "forbidden")

    def _respond_items(
        self, request: domish.Element, pubsub: domish.Element, items_elt: domish.Element,
    ) -> None:
        requested = [elt["id"] for elt in items_elt.elements(NS_PUBSUB, "item")]
        for item_id in requested:
            if item_id in self.errors:
                self.xmlstream.respond_error(request, self.errors[item_id])
                return

        node = items_elt["node"]
        parts = self.nodes.get(node, [])
        max_items = items_elt.getAttribute("max_items")
        if max_items is not None:
            parts = parts[-int(max_items):]
        if requested:
            parts = [
                part for part in parts
                if isinstance(part, Item) and part.item_id in requested
            ]

        set_elt = find_set(pubsub)
        page_set = None
        if set_elt is not None and self.page_size is not None:
            after = next(set_elt.elements(NS_RSM, "after"), None)
            start = 0
            if after is not None:
                start = self._ids(node).index(str(after)) + 1
            parts = parts[start:start + self.page_size]
            page_set = domish.Element((NS_RSM, "set"))
            if parts:
                page_set.addElement("first", content=parts[0].item_id)
                page_set.addElement("last", content=parts[-1].item_id)
            page_set.addElement("count", content=self.count or str(len(self._ids(node))))

        result = domish.Element((NS_PUBSUB, "pubsub"))
        result_items = result.addElement("items")
        result_items["node"] = items_elt["node"]
        for part in parts:
            result_items.addChild(part.element(NS_PUBSUB))
        if page_set is not None:
            result.addChild(page_set)
        self.xmlstream.respond(request, result)


# --- harness ------------------------------------------------------------------------


class MinimalHost:
    """The parts of the backend host that the pubsub cache and its parser use."""

    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        self.trigger = TriggerManager()
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}
        self.plugins["XEP-0060"] = XEP_0060(self)
        self.plugins["PUBSUB_CACHE"] = PubsubCache(self)
        self.plugins["XEP-0277"] = XEP_0277(self)


@dataclass
class Harness:
    host: MinimalHost
    client: FakeClient
    service: ScriptedService
    node: str = NODE
    node_id: int = 0
    _nodes: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))

    @property
    def storage(self) -> Storage:
        return self.host.storage

    @property
    def cache(self) -> PubsubCache:
        return self.host.plugins["PUBSUB_CACHE"]

    @property
    def pubsub(self) -> XEP_0060:
        return self.host.plugins["XEP-0060"]

    async def cache_node(
        self, *items: Item, node: str = NODE, state: SyncState | None = SyncState.COMPLETED,
        item_order: str | None = "creation",
    ) -> int:
        """Store ``node`` with ``items`` in ``state``, and give the service the same items.

        ``item_order`` is the order of the service's items stored for the
        node, or None when the cache has not learned it.
        """
        extra = {"item_order": item_order} if item_order else None
        node_row = await self.storage.set_pubsub_node(
            self.client.profile_id, SERVICE.full(), node, analyser="XEP-0277",
            type_="blog", sync_state=state, extra=extra,
        )
        if items:
            await self.storage.cache_pubsub_items(
                node_row.id, [(item.item_id, item.xml(), None, None) for item in items]
            )
        self.node = node
        self.node_id = node_row.id
        self.service.set_items(*items, node=node)
        return node_row.id

    async def fresh_node(self) -> int:
        """Cache an empty COMPLETED node of a new name (for hypothesis examples)."""
        return await self.cache_node(node=f"{NODE}:{next(self._nodes)}")

    async def receive(self, *messages: domish.Element) -> None:
        """Deliver notifications and wait until the cache has applied them."""
        for message in messages:
            self.client.xmlstream.receive(message)
        await self.pubsub.wait_events(self.client)
        await self.cache.wait_syncs()

    async def stored(self) -> dict[str, str]:
        """Return the cached items of the current node: item id to XML, oldest first."""
        rows = await self.storage.get_pubsub_items(self.node_id)
        return {row.name: row.data for row in rows}

    async def state(self) -> SyncState | None:
        node_row = await self.storage.get_pubsub_node(
            self.client.profile_id, SERVICE.full(), self.node
        )
        return None if node_row is None else node_row.sync_state


async def make_harness(tmp_path: Path, storage: Storage) -> Harness:
    """Build the host, a connected client of the profile, and the scripted service."""
    config_path = tmp_path / "libervia.conf"
    config_path.write_text("", encoding="utf-8")
    host = MinimalHost(Config(config_path), storage)
    profile = await storage.create_profile(PROFILE, CLIENT_JID.userhost(), "secret")
    client = FakeClient(profile=PROFILE, profile_id=profile.id, jid=CLIENT_JID)
    handler = host.plugins["XEP-0060"].get_handler(client)
    handler.makeConnection(client.xmlstream)
    handler.connectionInitialized()
    return Harness(host, client, ScriptedService(client.xmlstream))


@pytest_twisted.async_fixture
async def harness(tmp_path: Path, storage: Storage) -> Harness:
    return await make_harness(tmp_path, storage)


@contextmanager
def engine_storage_url(engine: str, folder: Path) -> Iterator[str]:
    try:
        with database_url(engine, folder) as url:
            yield url
    except DatabaseUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


# pytest-twisted 1.14 wraps the examples of a hypothesis test each time the
# test function runs, so a parametrized hypothesis test fails from its second
# parameter on. The property tests get one fixture per engine instead.
@pytest_twisted.async_yield_fixture
async def sqlite_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    with engine_storage_url("sqlite", tmp_path) as url:
        storage = Storage(url)
        await storage.initialise()
        try:
            yield await make_harness(tmp_path, storage)
        finally:
            await storage.close()


@pytest_twisted.async_yield_fixture
async def postgresql_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    with engine_storage_url("postgresql", tmp_path) as url:
        storage = Storage(url)
        await storage.initialise()
        try:
            yield await make_harness(tmp_path, storage)
        finally:
            await storage.close()


def expected_items(*items: Item) -> dict[str, str]:
    return {item.item_id: item.xml() for item in items}


def records_with(caplog: pytest.LogCaptureFixture, fragment: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if fragment in record.getMessage()]


def assert_logged_once(
    caplog: pytest.LogCaptureFixture, fragment: str, service: str | None = SERVICE.full(),
    node: str = NODE,
) -> None:
    """Check that one record mentions ``fragment``, at debug or warning level, with its context."""
    records = records_with(caplog, fragment)
    assert len(records) == 1, [record.getMessage()[:300] for record in records]
    record = records[0]
    message = record.getMessage()
    assert record.levelno in (logging.DEBUG, logging.WARNING)
    assert f"profile {PROFILE}" in message
    if service is not None:
        assert service in message
    assert node in message


def assert_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """Check that nothing failed: no error record, and no record with a traceback."""
    failures = [
        record.getMessage() for record in caplog.records
        if record.levelno >= logging.ERROR or record.exc_info
    ]
    assert failures == []


@pytest.fixture(autouse=True)
def debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="libervia")


# --- items notifications: table -------------------------------------------------------


@dataclass(frozen=True)
class ItemsCase:
    """An items notification: what was cached, what is sent, what must be cached after."""

    sent: tuple[Part, ...]
    expected: tuple[Item, ...]
    #: Fragment of the one record about the offending input, None when nothing is dropped.
    logged: str | None
    cached: tuple[Item, ...] = ()


VALID = Item("valid", "the valid rest")
ITEMS_CASES = {
    "item without id": ItemsCase(
        (Item(None, "lost"), VALID), (VALID,), "1 items without id dropped"),
    "item with empty id": ItemsCase(
        (Item("", "lost"), VALID), (VALID,), "1 items without id dropped"),
    "retract without id": ItemsCase(
        (Retract(None), VALID), (Item("kept"), VALID), "retract without id dropped",
        cached=(Item("kept"),)),
    "retract with empty id": ItemsCase(
        (Retract(""), VALID), (Item("kept"), VALID), "retract without id dropped",
        cached=(Item("kept"),)),
    "unknown element": ItemsCase(
        (Unknown("bogus"), VALID), (VALID,), "unknown elements ['bogus'] ignored"),
    "item in another namespace": ItemsCase(
        (Unknown("item", NS_PUBSUB), VALID), (VALID,), "unknown elements ['item'] ignored"),
    "control character in text": ItemsCase(
        (Item("bad", "bell \x07 rings"), VALID), (VALID,),
        "its text contains a character that XML does not allow"),
    "NUL in item id": ItemsCase(
        (Item("bad\x00id"), VALID), (VALID,),
        "an attribute contains a character that XML does not allow"),
    "lone surrogate in item id": ItemsCase(
        (Item("bad\ud800id"), VALID), (VALID,),
        "an attribute contains a character that XML does not allow"),
    "NUL in retract id": ItemsCase(
        (Retract("kept\x00"), VALID), (Item("kept"), VALID),
        "an attribute contains a character that XML does not allow",
        cached=(Item("kept"),)),
    "id of 2000 characters": ItemsCase(
        (Item("i" * 2000), VALID), (Item("i" * 2000), VALID), None),
    "id of 2048 bytes in 2-byte characters": ItemsCase(
        (Item("é" * 1024), VALID), (Item("é" * 1024), VALID), None),
    "id of 5000 characters": ItemsCase(
        (Item("x" * 5000), VALID), (VALID,), f"its id is longer than {MAX_ITEM_ID_BYTES} bytes"),
    "id of 600 emoji (2400 bytes)": ItemsCase(
        (Item("\U0001f600" * 600), VALID), (VALID,),
        f"its id is longer than {MAX_ITEM_ID_BYTES} bytes"),
    "retract with an id of 5000 characters": ItemsCase(
        (Retract("x" * 5000), VALID), (VALID,),
        f"its id is longer than {MAX_ITEM_ID_BYTES} bytes"),
    "duplicate item ids": ItemsCase(
        (Item("dup", "first"), Item("dup", "second"), VALID),
        (Item("dup", "second"), VALID), "appear more than once"),
    "retract then publish the same id": ItemsCase(
        (Retract("again"), Item("again", "new"), VALID),
        (Item("again", "new"), VALID), "appear more than once",
        cached=(Item("again", "old"),)),
    "publish then retract the same id": ItemsCase(
        (Item("gone", "new"), Retract("gone"), VALID), (VALID,), "appear more than once",
        cached=(Item("gone", "old"),)),
    "nesting at the limit": ItemsCase(
        (Item("deep", depth=MAX_ITEM_DEPTH), VALID),
        (Item("deep", depth=MAX_ITEM_DEPTH), VALID), None),
    "nesting one level past the limit": ItemsCase(
        (Item("deep", depth=MAX_ITEM_DEPTH + 1), VALID), (VALID,),
        f"nested deeper than {MAX_ITEM_DEPTH} elements"),
    "nesting of 100000 levels": ItemsCase(
        (Item("deep", depth=100_000), VALID), (VALID,),
        f"nested deeper than {MAX_ITEM_DEPTH} elements"),
    "item of 10 MB": ItemsCase(
        (Item("big", TEN_MB_TEXT), VALID), (Item("big", TEN_MB_TEXT), VALID), None),
}


class ItemsNotificationTests:
    @pytest.mark.parametrize("case", ITEMS_CASES.values(), ids=ITEMS_CASES.keys())
    @pytest_twisted.ensureDeferred
    async def test_case(
        self, harness: Harness, caplog: pytest.LogCaptureFixture, case: ItemsCase,
    ) -> None:
        await harness.cache_node(*case.cached)

        await harness.receive(items_message(*case.sent))

        assert_no_error(caplog)
        if case.logged is not None:
            assert_logged_once(caplog, case.logged)
        assert await harness.stored() == expected_items(*case.expected)
        assert await harness.state() == SyncState.COMPLETED

    @pytest_twisted.ensureDeferred
    async def test_served_after_hostile(
        self, harness: Harness, caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A node that received hostile items is still served, and equals the service's items."""
        await harness.cache_node(Item("a"))
        deep = Item("deep", depth=MAX_ITEM_DEPTH)
        harness.service.set_items(Item("a"), deep, VALID)

        await harness.receive(items_message(
            Item("bad\x01"), deep, Item("x" * 5000), Unknown(), VALID,
        ))
        cached, metadata = await harness.pubsub.get_items(harness.client, SERVICE, NODE)
        live, _ = await harness.pubsub.get_items(
            harness.client, SERVICE, NODE, extra={"use_cache": False}
        )

        assert metadata[C.META_FROM_CACHE] is True
        assert [item.toXml() for item in cached] == [item.toXml() for item in live]
        assert [item["id"] for item in cached] == ["a", "deep", "valid"]

    @pytest_twisted.ensureDeferred
    async def test_burst(self, harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
        """500 small notifications received at once are applied in order."""
        await harness.cache_node()
        rng = random.Random(9_001)
        model: dict[str, Item] = {}
        messages = []
        for index in range(500):
            item_id = f"i{rng.randrange(40)}"
            roll = rng.random()
            if roll < 0.6:
                part: Part = Item(item_id, f"version {index}")
                model.pop(item_id, None)
                model[item_id] = part
            elif roll < 0.85:
                part = Retract(item_id)
                model.pop(item_id, None)
            else:
                # Hostile input in the middle of the burst changes nothing.
                part = rng.choice([Item(None), Retract(None), Unknown(), Item("x" * 3000)])
            messages.append(items_message(part))
        started = time.monotonic()

        await harness.receive(*messages)

        assert_no_error(caplog)
        assert await harness.stored() == {
            item_id: item.xml() for item_id, item in model.items()
        }
        assert await harness.state() == SyncState.COMPLETED
        # Generous: each notification is one or two short transactions.
        assert time.monotonic() - started < 120


# --- items notifications: properties ---------------------------------------------------

ITEM_IDS = st.sampled_from(["a", "b", "c", "d"])
TITLES = st.text(
    # Cn contains U+FFFE and U+FFFF, which XML does not allow either.
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cn")), max_size=12,
)
VALID_PARTS = st.one_of(
    st.builds(Item, ITEM_IDS, TITLES),
    st.builds(Retract, ITEM_IDS),
)
HOSTILE_PARTS = st.one_of(
    st.builds(Item, st.sampled_from([None, ""]), TITLES),
    st.builds(Retract, st.sampled_from([None, ""])),
    st.builds(Unknown, st.sampled_from(["bogus", "item", "retract"]),
              st.sampled_from([NS_PUBSUB_EVENT, NS_PUBSUB, "urn:example:other"])),
    st.builds(Item, st.sampled_from(["a\x00", "b\ud800", "c\x1f", "x" * (MAX_ITEM_ID_BYTES + 1)])),
    st.builds(Retract, st.sampled_from(["a\x00", "x" * (MAX_ITEM_ID_BYTES + 1)])),
    st.builds(Item, ITEM_IDS, st.sampled_from(["\x00", "bell\x07", "\ud800", "\ufffe"])),
    st.builds(Item, ITEM_IDS, st.just("deep"), st.integers(MAX_ITEM_DEPTH + 1, 3000)),
)
NOTIFICATIONS = st.lists(
    st.lists(st.one_of(VALID_PARTS, VALID_PARTS, HOSTILE_PARTS), max_size=8),
    min_size=1, max_size=5,
)


def is_valid(part: Part) -> bool:
    """Tell whether the cache must apply ``part`` (the model of the hostile strategies)."""
    if isinstance(part, Unknown) or not part.item_id:
        return False
    if any(character in part.item_id for character in ("\x00", "\ud800", "\x1f")):
        return False
    if len(part.item_id.encode("utf-8", "surrogatepass")) > MAX_ITEM_ID_BYTES:
        return False
    if isinstance(part, Item):
        if any(character in part.title for character in ("\x00", "\x07", "\ud800", "\ufffe")):
            return False
        if part.depth > MAX_ITEM_DEPTH:
            return False
    return True


def apply_parts(model: dict[str, Item], parts: list[Part]) -> None:
    """Apply the valid parts of one notification to the model, in document order."""
    for part in parts:
        if not is_valid(part):
            continue
        model.pop(part.item_id, None)
        if isinstance(part, Item):
            model[part.item_id] = part


async def check_against_model(
    harness: Harness, caplog: pytest.LogCaptureFixture, notifications: list[list[Part]],
) -> None:
    """Send the notifications to a new node, and compare the cached items with the model."""
    caplog.clear()
    model: dict[str, Item] = {}
    await harness.fresh_node()

    for parts in notifications:
        apply_parts(model, parts)
        await harness.receive(items_message(*parts, node=harness.node))
    stored = await harness.stored()

    assert_no_error(caplog)
    # Items keep the place of their first publication: compare as mappings.
    assert stored == {item_id: item.xml() for item_id, item in model.items()}
    assert await harness.state() == SyncState.COMPLETED


class ItemsNotificationPropertyTests:
    """Any mix of valid and hostile parts leaves exactly the valid parts applied."""

    @PROPERTY_SETTINGS
    @given(notifications=NOTIFICATIONS)
    @pytest_twisted.ensureDeferred
    async def test_sqlite(
        self, sqlite_harness: Harness, caplog: pytest.LogCaptureFixture,
        notifications: list[list[Part]],
    ) -> None:
        await check_against_model(sqlite_harness, caplog, notifications)

    @PROPERTY_SETTINGS
    @given(notifications=NOTIFICATIONS)
    @pytest_twisted.ensureDeferred
    async def test_postgresql(
        self, postgresql_harness: Harness, caplog: pytest.LogCaptureFixture,
        notifications: list[list[Part]],
    ) -> None:
        await check_against_model(postgresql_harness, caplog, notifications)


# --- other notifications ----------------------------------------------------------------


class NodeAttributeTests:
    @pytest.mark.parametrize("kind", ["items", "purge", "delete", "configuration"])
    @pytest.mark.parametrize("node", [None, ""], ids=["missing", "empty"])
    @pytest_twisted.ensureDeferred
    async def test_dropped(
        self, harness: Harness, caplog: pytest.LogCaptureFixture, kind: str, node: str | None,
    ) -> None:
        await harness.cache_node(Item("a"))
        children = [Item("b").element()] if kind == "items" else []

        await harness.receive(event_message(kind, children, node=node))

        assert_no_error(caplog)
        records = records_with(caplog, "missing or empty node attribute")
        assert len(records) == 1
        assert f"profile {PROFILE}" in records[0].getMessage()
        assert SERVICE.full() in records[0].getMessage()
        assert await harness.stored() == expected_items(Item("a"))
        assert await harness.state() == SyncState.COMPLETED


class SenderTests:
    @pytest.mark.parametrize(
        "sender", [None, "", "a..b", "@", "pubsub.example.org\x00"],
        ids=["missing", "empty", "empty label", "no domain", "NUL"],
    )
    @pytest_twisted.ensureDeferred
    async def test_invalid_sender(
        self, harness: Harness, caplog: pytest.LogCaptureFixture, sender: str | None,
    ) -> None:
        await harness.cache_node(Item("a"))

        await harness.receive(event_message("purge", sender=sender))

        assert_no_error(caplog)
        assert_logged_once(caplog, "invalid or missing sender or recipient JID", service=None)
        assert await harness.stored() == expected_items(Item("a"))

    @pytest_twisted.ensureDeferred
    async def test_unknown_event_child(
        self, harness: Harness, caplog: pytest.LogCaptureFixture,
    ) -> None:
        await harness.cache_node(Item("a"))
        message = event_message("collection", [Item("b", depth=5000).element()])

        await harness.receive(message)

        assert_no_error(caplog)
        records = records_with(caplog, "no supported child in <event/>")
        assert len(records) == 1
        assert f"profile {PROFILE}" in records[0].getMessage()
        assert await harness.stored() == expected_items(Item("a"))


class HeaderTests:
    @pytest_twisted.ensureDeferred
    async def test_nameless_header(
        self, harness: Harness, caplog: pytest.LogCaptureFixture,
    ) -> None:
        await harness.cache_node()
        message = event_message(
            "items", [VALID.element()], headers=[(None, "x"), ("SubID", "123")]
        )
        signals: list[dict[str, Any]] = []
        harness.host.bridge.send_signal = lambda name, **args: signals.append(args)

        await harness.receive(message)

        assert_no_error(caplog)
        assert_logged_once(caplog, "1 SHIM headers without name dropped")
        assert await harness.stored() == expected_items(VALID)
        assert [signal["headers"] for signal in signals] == [{"SubID": ["123"]}]


class PurgeDeleteTests:
    @pytest_twisted.ensureDeferred
    async def test_purge_of_other_node(
        self, harness: Harness, caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A purge naming a node this profile never cached changes nothing."""
        await harness.cache_node(Item("a"))

        await harness.receive(event_message("purge", node="x" * 5000))

        assert_no_error(caplog)
        assert await harness.stored() == expected_items(Item("a"))

    @pytest_twisted.ensureDeferred
    async def test_delete_with_unknown_children(
        self, harness: Harness, caplog: pytest.LogCaptureFixture,
    ) -> None:
        await harness.cache_node(Item("a"))
        redirect = domish.Element((NS_PUBSUB_EVENT, "redirect"))
        unknown = domish.Element(("urn:example:other", "bogus"))

        await harness.receive(event_message("delete", [unknown, redirect]))

        assert_no_error(caplog)
        assert await harness.state() is None


class ConfigurationTests:
    @pytest_twisted.ensureDeferred
    async def test_invalid_form(self, harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
        """A form wokkel cannot read counts as no form: the cache lists the items itself."""
        await harness.cache_node(Item("a"), Item("b"))
        # The service dropped "a" along with the configuration change.
        harness.service.set_items(Item("b"))
        form = configuration_form(("pubsub#max_items", "1"), ("pubsub#max_items", "2"))

        await harness.receive(event_message("configuration", [form]))

        assert_no_error(caplog)
        assert_logged_once(caplog, "Duplicate field")
        assert await harness.stored() == expected_items(Item("b"))
        assert await harness.state() == SyncState.COMPLETED

    @pytest.mark.parametrize(
        "value", ["abc", "-5", "1e3", "²", "9" * 5000, ""],
        ids=["word", "negative", "exponent", "superscript", "5000 digits", "empty"],
    )
    @pytest_twisted.ensureDeferred
    async def test_invalid_max_items(
        self, harness: Harness, caplog: pytest.LogCaptureFixture, value: str,
    ) -> None:
        await harness.cache_node(Item("a"), Item("b"))
        harness.service.set_items(Item("b"))
        form = configuration_form(("pubsub#max_items", value))

        await harness.receive(event_message("configuration", [form]))

        assert_no_error(caplog)
        assert_logged_once(caplog, "invalid pubsub#max_items")
        assert await harness.stored() == expected_items(Item("b"))
        node_row = await harness.storage.get_pubsub_node(
            harness.client.profile_id, SERVICE.full(), NODE
        )
        assert "max_items" not in node_row.extra


class SubscriptionTests:
    @pytest.mark.parametrize(
        "attributes, logged",
        [
            ({"jid": CLIENT_JID.userhost()}, "invalid or missing subscription state"),
            ({"jid": CLIENT_JID.userhost(), "subscription": ""},
             "invalid or missing subscription state"),
            ({"jid": CLIENT_JID.userhost(), "subscription": "maybe"},
             "invalid or missing subscription state"),
            ({"subscription": "none"}, "invalid or missing jid"),
            ({"jid": "", "subscription": "none"}, "invalid or missing jid"),
            ({"jid": "a..b", "subscription": "none"}, "invalid or missing jid"),
            ({"jid": "alice@example.org\x00", "subscription": "none"},
             "it contains a character that XML does not allow"),
        ],
        ids=["no state", "empty state", "unknown state", "no jid", "empty jid", "empty label",
             "NUL in jid"],
    )
    @pytest_twisted.ensureDeferred
    async def test_dropped(
        self, harness: Harness, caplog: pytest.LogCaptureFixture,
        attributes: dict[str, str], logged: str,
    ) -> None:
        """An invalid subscription notification never makes the cache drop a node."""
        await harness.cache_node(Item("a"))

        await harness.receive(subscription_message(attributes))

        assert_no_error(caplog)
        assert_logged_once(caplog, logged)
        assert await harness.stored() == expected_items(Item("a"))
        assert await harness.state() == SyncState.COMPLETED

    @pytest_twisted.ensureDeferred
    async def test_valid_unsubscription_applied(
        self, harness: Harness, caplog: pytest.LogCaptureFixture,
    ) -> None:
        await harness.cache_node(Item("a"))

        await harness.receive(
            subscription_message({"jid": CLIENT_JID.userhost(), "subscription": "none"})
        )

        assert_no_error(caplog)
        assert await harness.stored() == {}
        assert await harness.state() is None


class PayloadFetchTests:
    """Items notified without payload are fetched; a failed fetch does not lose the rest."""

    @staticmethod
    def bare(item_id: str) -> domish.Element:
        item = domish.Element((NS_PUBSUB_EVENT, "item"))
        item["id"] = item_id
        return item

    @pytest_twisted.ensureDeferred
    async def test_fetched(self, harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
        await harness.cache_node()
        harness.service.set_items(Item("a", "full"))

        await harness.receive(event_message("items", [self.bare("a"), VALID.element()]))

        assert_no_error(caplog)
        assert await harness.stored() == expected_items(Item("a", "full"), VALID)

    @pytest.mark.parametrize("condition", ["item-not-found", None], ids=["error", "empty"])
    @pytest_twisted.ensureDeferred
    async def test_gone(
        self, harness: Harness, caplog: pytest.LogCaptureFixture, condition: str | None,
    ) -> None:
        """An item the service no longer has is removed from the cache."""
        await harness.cache_node(Item("a", "old"))
        harness.service.set_items()
        if condition is not None:
            harness.service.errors["a"] = condition

        await harness.receive(event_message("items", [self.bare("a"), VALID.element()]))

        assert_no_error(caplog)
        assert await harness.stored() == expected_items(VALID)

    @pytest_twisted.ensureDeferred
    async def test_fetch_fails(self, harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
        """The node is synchronised again, so it ends equal to the service."""
        await harness.cache_node(Item("old"))
        harness.service.set_items(Item("old"), Item("a", "full"), VALID)
        harness.service.errors["a"] = "internal-server-error"

        await harness.receive(event_message("items", [self.bare("a"), VALID.element()]))
        del harness.service.errors["a"]
        await harness.cache.wait_syncs()

        assert_no_error(caplog)
        assert_logged_once(caplog, "could not be fetched")
        assert await harness.stored() == expected_items(Item("old"), Item("a", "full"), VALID)
        assert await harness.state() == SyncState.COMPLETED


# --- items results -----------------------------------------------------------------------


class ItemsResultTests:
    """Hostile items in the service's items results: the sync stores the valid ones only."""

    HOSTILE: tuple[tuple[Part, str], ...] = (
        (Item("bad\x01", "x"), "an attribute contains a character"),
        (Item("text", "bell\x07"), "its text contains a character"),
        (Item("y" * 5000), f"its id is longer than {MAX_ITEM_ID_BYTES} bytes"),
        (Item("deep", depth=MAX_ITEM_DEPTH + 1), f"nested deeper than {MAX_ITEM_DEPTH}"),
        (Unknown("bogus", NS_PUBSUB), "unknown elements ['bogus'] ignored in the items"),
    )

    async def synced(self, harness: Harness, *parts: Part) -> None:
        node_id = await harness.cache_node(state=None)
        harness.service.set_items(*parts)
        analyser = harness.cache.analysers["XEP-0277"]
        await harness.cache.start_sync(harness.client, SERVICE, NODE, node_id, analyser)

    @pytest_twisted.ensureDeferred
    async def test_sync(self, harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
        hostile = [part for part, _ in self.HOSTILE]
        await self.synced(harness, Item("a"), *hostile, Item(None), VALID)

        assert_no_error(caplog)
        for _, logged in self.HOSTILE:
            assert_logged_once(caplog, logged)
        assert await harness.stored() == expected_items(Item("a"), VALID)
        assert await harness.state() == SyncState.COMPLETED

    @pytest_twisted.ensureDeferred
    async def test_live_equals_cached(
        self, harness: Harness, caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The network path drops the same items, so the cache stays transparent."""
        hostile = [part for part, _ in self.HOSTILE]
        await self.synced(harness, Item("a"), *hostile, VALID)

        cached, metadata = await harness.pubsub.get_items(harness.client, SERVICE, NODE)
        live, _ = await harness.pubsub.get_items(
            harness.client, SERVICE, NODE, extra={"use_cache": False}
        )

        assert metadata[C.META_FROM_CACHE] is True
        assert [item.toXml() for item in cached] == [item.toXml() for item in live]

    @pytest.mark.parametrize(
        "count", ["abc", "²", "9" * 5000, "-1"],
        ids=["word", "superscript", "5000 digits", "negative"],
    )
    @pytest_twisted.ensureDeferred
    async def test_invalid_rsm_count(
        self, harness: Harness, caplog: pytest.LogCaptureFixture, count: str,
    ) -> None:
        """Pages go on by their ``last`` key when the count is invalid, so no item is missed."""
        harness.service.page_size = 3
        harness.service.count = count
        items = [Item(f"i{index}") for index in range(8)]

        await self.synced(harness, *items)

        assert_no_error(caplog)
        assert await harness.stored() == expected_items(*items)
        assert await harness.state() == SyncState.COMPLETED
        records = records_with(caplog, "invalid values dropped from the RSM response")
        # One record per page, each for its own response.
        assert len(records) == 4
        assert all(NODE in record.getMessage() for record in records)


# --- load -------------------------------------------------------------------------------


class ServiceOrderTests:
    """Found by the soak test: a node first served before its service's order was known."""

    @pytest_twisted.ensureDeferred
    async def test_order_learned_on_other_node(
        self, harness: Harness, caplog: pytest.LogCaptureFixture,
    ) -> None:
        first, second = f"{NODE}:first", f"{NODE}:second"
        await harness.cache_node(Item("x1"), Item("x2"), Item("x3"), node=first, item_order=None)
        await harness.cache_node(Item("y1"), Item("y2"), Item("y3"), node=second, item_order=None)
        _, metadata = await harness.pubsub.get_items(harness.client, SERVICE, second)
        # An edit on the first node shows that this service moves edited
        # items last, as Prosody 0.12 does.
        harness.service.set_items(Item("x2"), Item("x3"), Item("x1", "edited"), node=first)
        await harness.receive(items_message(Item("x1", "edited"), node=first))

        harness.service.set_items(Item("y2"), Item("y3"), Item("y1", "edited"), node=second)
        await harness.receive(items_message(Item("y1", "edited"), node=second))
        cached, cached_metadata = await harness.pubsub.get_items(harness.client, SERVICE, second)
        live, _ = await harness.pubsub.get_items(
            harness.client, SERVICE, second, extra={"use_cache": False}
        )

        assert_no_error(caplog)
        assert metadata[C.META_FROM_CACHE] is True
        assert cached_metadata[C.META_FROM_CACHE] is True
        assert [item["id"] for item in live] == ["y2", "y3", "y1"]
        assert [item.toXml() for item in cached] == [item.toXml() for item in live]


def test_examples_setting() -> None:
    """The hypothesis settings of this module replay the same examples on every run."""
    assert PROPERTY_SETTINGS.derandomize is True
    assert PROPERTY_SETTINGS.database is None

