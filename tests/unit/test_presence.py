"""Tests of the roster and presence plugin on a FakeXmlStream.

The handler runs under wokkel's StreamManager, as on a real connection. The
test plays the server: it responds to the roster request and sends roster
pushes and presence stanzas, then reads what the handler sent back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from wokkel.subprotocols import StreamManager

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core.config import Config
from libervia.backend.core.exceptions import ConfigError, InvalidValue
from libervia.backend.plugins.plugin_misc_presence import Presence, RosterPresenceHandler
from libervia.testing.fake_stream import FakeClient, FakeXmlStream, element_from

NS_ROSTER = "jabber:iq:roster"
OWN_JID = JID("alice@example.org/tests")
CONTACT = "bob@example.org"
STRANGER = "carol@example.org"


class MinimalHost:
    """The parts of the backend host that the presence plugin uses."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}


def make_plugin(tmp_path: Path, auto_accept: str | None) -> Presence:
    """Build the plugin with ``[presence] auto_accept`` set, or unset when None."""
    config_path = tmp_path / "libervia.conf"
    text = "" if auto_accept is None else f"[presence]\nauto_accept = {auto_accept}\n"
    config_path.write_text(text)
    return Presence(MinimalHost(Config(config_path)))


def connect(plugin: Presence) -> tuple[FakeClient, RosterPresenceHandler]:
    """Attach the plugin's handler to a fake stream and initialise the stream."""
    client = FakeClient(jid=OWN_JID)
    handler = plugin.get_handler(client)
    factory = xmlstream.XmlStreamFactory(xmlstream.Authenticator())
    manager = StreamManager(factory)
    handler.setHandlerParent(manager)
    factory.installBootstraps(client.xmlstream)
    client.xmlstream.dispatch(client.xmlstream, xmlstream.STREAM_CONNECTED_EVENT)
    client.xmlstream.dispatch(client.xmlstream, xmlstream.STREAM_AUTHD_EVENT)
    return client, handler


def roster_query(*items: tuple[str, str]) -> domish.Element:
    """Build a roster ``<query/>`` with (jid, subscription) items."""
    query = domish.Element((NS_ROSTER, "query"))
    for jid, subscription in items:
        item = query.addElement("item")
        item["jid"] = jid
        item["subscription"] = subscription
    return query


async def respond_roster(stream: FakeXmlStream, *items: tuple[str, str]) -> None:
    """Respond to the roster request sent at stream initialisation."""
    request = element_from(await stream.next_sent())
    assert request.name == "iq"
    assert request["type"] == "get"
    stream.respond(request, roster_query(*items))


def presence(sender: str, type_: str | None = None) -> domish.Element:
    """Build a presence stanza from ``sender`` to the profile."""
    element = domish.Element((None, "presence"))
    element["from"] = sender
    element["to"] = OWN_JID.full()
    if type_ is not None:
        element["type"] = type_
    return element


def sent_presences(stream: FakeXmlStream, type_: str) -> list[str]:
    """Return the recipients of the presences of ``type_`` sent so far."""
    return [
        obj["to"] for obj in stream.sent
        if isinstance(obj, domish.Element) and obj.name == "presence"
        and obj.getAttribute("type") == type_
    ]


class ConfigTests:
    def test_default_policy_is_roster(self, tmp_path: Path) -> None:
        assert make_plugin(tmp_path, None).auto_accept == "roster"

    def test_invalid_policy_rejected(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="auto_accept"):
            make_plugin(tmp_path, "sometimes")


class RosterTests:
    @pytest_twisted.ensureDeferred
    async def test_roster_fetched_at_connection(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, None)
        client, _ = connect(plugin)
        await respond_roster(client.xmlstream, (CONTACT, "both"))
        items = await plugin.roster_get(client)
        assert [item["jid"] for item in items] == [CONTACT]
        assert items[0]["subscription"] == "both"

    @pytest_twisted.ensureDeferred
    async def test_roster_get_waits_for_roster(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, None)
        client, _ = connect(plugin)
        pending = defer.ensureDeferred(plugin.roster_get(client))
        assert not pending.called
        await respond_roster(client.xmlstream, (CONTACT, "to"))
        items = await pending
        assert items[0]["subscription"] == "to"

    @pytest_twisted.ensureDeferred
    async def test_push_applied(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, None)
        client, _ = connect(plugin)
        await respond_roster(client.xmlstream)
        push = domish.Element((None, "iq"))
        push["type"] = "set"
        push["id"] = "push1"
        query = push.addChild(roster_query((CONTACT, "none")))
        query.children[0]["ask"] = "subscribe"
        client.xmlstream.receive(push)
        items = await plugin.roster_get(client)
        assert items[0]["jid"] == CONTACT
        assert items[0]["ask"] is True
        response = element_from(client.xmlstream.sent[-1])
        assert response["type"] == "result"

    @pytest_twisted.ensureDeferred
    async def test_push_from_other_entity_ignored(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, None)
        client, handler = connect(plugin)
        await respond_roster(client.xmlstream)
        push = domish.Element((None, "iq"))
        push["type"] = "set"
        push["id"] = "push2"
        push["from"] = "mallory@evil.example/x"
        push.addChild(roster_query((CONTACT, "both")))
        client.xmlstream.receive(push)
        response = element_from(client.xmlstream.sent[-1])
        assert response["type"] == "error"
        assert CONTACT not in handler.items

    @pytest_twisted.ensureDeferred
    async def test_resources_tracked(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, None)
        client, _ = connect(plugin)
        await respond_roster(client.xmlstream, (CONTACT, "both"))
        client.xmlstream.receive(presence(f"{CONTACT}/phone"))
        items = await plugin.roster_get(client)
        assert items[0]["resources"] == [f"{CONTACT}/phone"]
        client.xmlstream.receive(presence(f"{CONTACT}/phone", "unavailable"))
        items = await plugin.roster_get(client)
        assert items[0]["resources"] == []


class SubscriptionTests:
    @pytest_twisted.ensureDeferred
    async def test_roster_contact_approved(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, "roster")
        client, handler = connect(plugin)
        await respond_roster(client.xmlstream, (CONTACT, "to"))
        client.xmlstream.receive(presence(CONTACT, "subscribe"))
        assert sent_presences(client.xmlstream, "subscribed") == [CONTACT]
        assert handler.pending_in == set()

    @pytest_twisted.ensureDeferred
    async def test_stranger_kept_pending(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, "roster")
        client, handler = connect(plugin)
        await respond_roster(client.xmlstream, (CONTACT, "to"))
        client.xmlstream.receive(presence(STRANGER, "subscribe"))
        assert sent_presences(client.xmlstream, "subscribed") == []
        assert handler.pending_in == {STRANGER}

    @pytest_twisted.ensureDeferred
    async def test_request_before_roster_waits(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, "roster")
        client, _ = connect(plugin)
        # Pending requests are redelivered at login, maybe before the roster.
        request = element_from(await client.xmlstream.next_sent())
        client.xmlstream.receive(presence(CONTACT, "subscribe"))
        assert sent_presences(client.xmlstream, "subscribed") == []
        client.xmlstream.respond(request, roster_query((CONTACT, "to")))
        assert sent_presences(client.xmlstream, "subscribed") == [CONTACT]

    @pytest_twisted.ensureDeferred
    async def test_policy_all_approves_stranger(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, "all")
        client, _ = connect(plugin)
        await respond_roster(client.xmlstream)
        client.xmlstream.receive(presence(STRANGER, "subscribe"))
        assert sent_presences(client.xmlstream, "subscribed") == [STRANGER]

    @pytest_twisted.ensureDeferred
    async def test_policy_none_keeps_contact_pending(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, "none")
        client, handler = connect(plugin)
        await respond_roster(client.xmlstream, (CONTACT, "to"))
        client.xmlstream.receive(presence(CONTACT, "subscribe"))
        assert sent_presences(client.xmlstream, "subscribed") == []
        result = await plugin.presence_subscribe(client, JID(CONTACT))
        assert result == {"jid": CONTACT, "approved": False}
        assert handler.pending_in == {CONTACT}

    @pytest_twisted.ensureDeferred
    async def test_subscribe_approves_pending_request(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, "roster")
        client, handler = connect(plugin)
        await respond_roster(client.xmlstream)
        client.xmlstream.receive(presence(STRANGER, "subscribe"))
        result = await plugin.presence_subscribe(client, JID(f"{STRANGER}/desktop"))
        assert result == {"jid": STRANGER, "approved": True}
        assert sent_presences(client.xmlstream, "subscribe") == [STRANGER]
        assert sent_presences(client.xmlstream, "subscribed") == [STRANGER]
        assert handler.pending_in == set()

    @pytest_twisted.ensureDeferred
    async def test_subscribe_to_own_jid_rejected(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, None)
        client, _ = connect(plugin)
        await respond_roster(client.xmlstream)
        with pytest.raises(InvalidValue, match="own JID"):
            await plugin.presence_subscribe(client, OWN_JID)
