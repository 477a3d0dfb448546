"""An XML stream without a connection, for unit tests of protocol code.

:class:`FakeXmlStream` records every stanza sent on it, so a test can inspect
a request exactly as it would go out, then feed back the response a server
would send. :class:`FakeClient` wraps it with the attributes of a connected
:class:`~libervia.backend.core.xmpp.XMPPClient` that plugins read (profile,
JID, options, stream manager), so plugin code runs unchanged against it.

Typical use::

    client = FakeClient()
    d = defer.ensureDeferred(plugin.get_items(client, service, "node"))
    request = await client.xmlstream.next_sent()
    client.xmlstream.respond(request, result_child)
    items, metadata = await d
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer
from twisted.words.protocols.jabber import error as jabber_error
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from libervia.backend.core.xmpp import ConnectionOptions


class FakeXmlStream(xmlstream.XmlStream):
    """XML stream that stores what is sent and dispatches what a test feeds it.

    Nothing is serialised: ``sent`` contains the element objects passed to
    :meth:`send`, in order. Observers (IQ response tracking, wokkel handlers)
    work as on a real stream because incoming stanzas go through
    :meth:`dispatch`.
    """

    def __init__(self) -> None:
        super().__init__(xmlstream.Authenticator())
        self.sent: list[domish.Element | str] = []
        self._read = 0
        self._waiters: list[defer.Deferred[domish.Element | str]] = []

    def send(self, obj: domish.Element | str) -> None:
        """Record ``obj`` and hand it to a test waiting in :meth:`next_sent`."""
        self.sent.append(obj)
        if self._waiters:
            self._read += 1
            self._waiters.pop(0).callback(obj)

    def next_sent(self) -> defer.Deferred[domish.Element | str]:
        """Return a Deferred firing with the oldest stanza not yet returned here.

        It fires at once when such a stanza was already sent, else when the
        next one is sent.
        """
        if self._read < len(self.sent):
            self._read += 1
            return defer.succeed(self.sent[self._read - 1])
        waiter: defer.Deferred[domish.Element | str] = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def receive(self, stanza: domish.Element) -> None:
        """Deliver ``stanza`` to the stream's observers as if the server sent it."""
        self.dispatch(stanza)

    def respond(
        self, request: domish.Element, child: domish.Element | None = None
    ) -> domish.Element:
        """Deliver the ``result`` IQ responding to ``request``, with an optional payload child."""
        response = xmlstream.toResponse(request, "result")
        if child is not None:
            response.addChild(child)
        self.receive(response)
        return response

    def respond_error(
        self, request: domish.Element, condition: str, text: str | None = None
    ) -> domish.Element:
        """Deliver an ``error`` IQ responding to ``request`` with a stanza error condition."""
        response = jabber_error.StanzaError(condition, text=text).toResponse(request)
        self.receive(response)
        return response


@dataclass
class FakeStreamManager:
    """Stand-in for wokkel's StreamManager: only exposes the stream."""

    xmlstream: FakeXmlStream


@dataclass
class FakeClient:
    """Connected-client stand-in with the attributes plugins use.

    ``profile_id`` must match a profile row when the code under test reads
    storage.
    """

    profile: str = "test"
    profile_id: int = 1
    jid: JID = field(default_factory=lambda: JID("alice@example.org/tests"))
    options: ConnectionOptions = field(default_factory=ConnectionOptions)
    xmlstream: FakeXmlStream = field(default_factory=FakeXmlStream)

    def __post_init__(self) -> None:
        self.stream_manager = FakeStreamManager(self.xmlstream)
        self.stream_stats = {"iq_sent": 0, "stanzas_sent": 0, "stanzas_received": 0}

    def send(self, stanza: domish.Element | str) -> None:
        """Send ``stanza`` on the fake stream."""
        self.xmlstream.send(stanza)

    @property
    def iq_count(self) -> int:
        """Number of IQ stanzas sent so far."""
        return sum(
            1 for obj in self.xmlstream.sent
            if isinstance(obj, domish.Element) and obj.name == "iq"
        )


def element_from(value: Any) -> domish.Element:
    """Return ``value`` as an element; tests often get ``str | Element`` from ``sent``."""
    if not isinstance(value, domish.Element):
        raise TypeError(f"expected a domish.Element, got {type(value).__name__}: {value!r}")
    return value
