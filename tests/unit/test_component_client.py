"""Component profiles without a server: plugin selection, stanza addressing, profile checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.testing import StringTransport
from twisted.words.protocols.jabber import component as jabber_component
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from libervia.backend.core import plugin_manager
from libervia.backend.core.component import ComponentClient, ComponentXmlStream
from libervia.backend.core.config import Config
from libervia.backend.core.exceptions import InvalidValue
from libervia.backend.core.main import Backend
from libervia.backend.core.xmpp import XMPPClient


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    """Return a backend with every plugin loaded and an SQLite file, not started."""
    config_file = tmp_path / "libervia.conf"
    config_file.write_text(f"[database]\nurl = sqlite:///{tmp_path / 'test.db'}\n")
    host = Backend(Config(config_file))
    plugin_manager.load_plugins(host)
    return host


def handler_plugins(host: Backend, client: XMPPClient) -> set[str]:
    """Return the import names of the plugins that attach a handler to ``client``."""
    names = set()
    for name, plugin in host.plugins_for(client).items():
        get_handler = getattr(plugin, "get_handler", None)
        if get_handler is not None and get_handler(client) is not None:
            names.add(name)
    return names


class PluginSelectionTests:
    def test_component_skips_client_plugins(self, backend: Backend) -> None:
        client = ComponentClient(
            host=backend, profile="comp", profile_id=1, jid=JID("comp.example.org"),
            password="secret",
        )
        names = handler_plugins(backend, client)
        assert "XEP-0060" in names
        assert names.isdisjoint({"PRESENCE", "XEP-0115", "XEP-0163"})

    def test_client_keeps_every_plugin(self, backend: Backend) -> None:
        client = XMPPClient(
            host=backend, profile="alice", profile_id=1, jid=JID("alice@example.org"),
            password="secret",
        )
        names = handler_plugins(backend, client)
        assert {"XEP-0060", "PRESENCE", "XEP-0115"} <= names

    def test_handlers_follow_modes(self, backend: Backend) -> None:
        client = ComponentClient(
            host=backend, profile="comp", profile_id=1, jid=JID("comp.example.org"),
            password="secret",
        )
        handlers = backend.get_plugin_handlers(client)
        assert len(handlers) == len(handler_plugins(backend, client))


def component_stream() -> tuple[ComponentXmlStream, StringTransport]:
    """Return a component stream on a string transport, its component JID set."""
    authenticator = jabber_component.ConnectComponentAuthenticator("comp.example.org", "s")
    xs = ComponentXmlStream(authenticator)
    transport = StringTransport()
    xs.transport = transport
    xs.component_jid = JID("comp.example.org")
    return xs, transport


class StanzaAddressingTests:
    def test_from_added(self) -> None:
        xs, transport = component_stream()
        iq = domish.Element((None, "iq"))
        iq["to"] = "pubsub.example.org"
        xs.send(iq)
        assert iq["from"] == "comp.example.org"

    def test_from_kept(self) -> None:
        xs, _ = component_stream()
        message = domish.Element((None, "message"))
        message["from"] = "bot@comp.example.org"
        xs.send(message)
        assert message["from"] == "bot@comp.example.org"

    def test_handshake_untouched(self) -> None:
        xs, _ = component_stream()
        handshake = domish.Element((None, "handshake"))
        xs.send(handshake)
        assert not handshake.hasAttribute("from")

    def test_counted(self) -> None:
        xs, _ = component_stream()
        xs.stats = {"iq_sent": 0, "stanzas_sent": 0, "stanzas_received": 0}
        xs.send(domish.Element((None, "iq")))
        assert xs.stats["iq_sent"] == 1


class ProfileCreateTests:
    @pytest_twisted.ensureDeferred
    async def test_component_jid_with_user_rejected(self, backend: Backend) -> None:
        with pytest.raises(InvalidValue, match="invalid component JID"):
            await backend._profile_create(
                "comp", "bot@comp.example.org", "secret", {"component": True}
            )

    @pytest_twisted.ensureDeferred
    async def test_tls_option_rejected(self, backend: Backend) -> None:
        with pytest.raises(InvalidValue, match="ca_file"):
            await backend._profile_create(
                "comp", "comp.example.org", "secret",
                {"component": True, "ca_file": "/tmp/ca.pem"},
            )

    @pytest_twisted.ensureDeferred
    async def test_invalid_component_value(self, backend: Backend) -> None:
        with pytest.raises(InvalidValue, match="invalid component"):
            await backend._profile_create(
                "comp", "comp.example.org", "secret", {"component": "maybe"}
            )
