"""A profile connected as an external component (XEP-0114) instead of a client.

A component connects to a port of the server reserved for components,
sends a hash of the secret it shares with the server (the profile's
password) in a handshake, and then owns a whole domain such as
``comp.localhost``.
It has no SASL, no TLS, no resource binding, no roster, no presence of its
own and no PEP service. It sends and receives stanzas like a client
otherwise, so the pubsub and cache plugins work unchanged.

:class:`ComponentClient` keeps the public surface of
:class:`~libervia.backend.core.xmpp.XMPPClient` (and inherits its timers,
reconnection policy, IQ failure on stream end and closing tag). Plugins
whose ``PLUGIN_INFO["modes"]`` lack ``"component"`` attach no handler to it
and get no ``profile_connected`` call.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer, reactor
from twisted.python import failure
from twisted.words.protocols.jabber import component as jabber_component
from twisted.words.protocols.jabber import jid as jabber_jid
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish
from wokkel import subprotocols

from libervia.backend.core.exceptions import AuthError, ConnectionError_
from libervia.backend.core.xmpp import CountingXmlStream, XMPPClient, _ClientFactory

log = logging.getLogger(__name__)

#: Usual port of the component listener (Prosody's default).
DEFAULT_COMPONENT_PORT = 5347

_STANZA_NAMES = ("iq", "message", "presence")


class ComponentXmlStream(CountingXmlStream):
    """Counting stream that puts the component's JID in the ``from`` of its stanzas.

    A server stamps a client's stanzas with the client's JID, but a
    component may send from any address of its domain, so its stanzas need
    an explicit ``from``. ejabberd 23.01 closes the stream with
    ``improper-addressing`` on a stanza without one (Prosody 0.12 fills it
    in). Stamping here covers every plugin, including wokkel requests that
    leave the sender unset.
    """

    #: JID written in the ``from`` of the stanzas that have none.
    component_jid: jabber_jid.JID | None = None

    def send(self, obj: domish.Element | str) -> None:
        if (
            self.component_jid is not None
            and isinstance(obj, domish.Element)
            and obj.name in _STANZA_NAMES
            and not obj.getAttribute("from")
        ):
            obj["from"] = self.component_jid.full()
        super().send(obj)


class _ComponentFactory(_ClientFactory):
    protocol = ComponentXmlStream


class ComponentClient(XMPPClient):
    """A component profile's connection, with the public surface of XMPPClient.

    ``jid`` is the component's domain (``comp.example.org``) and ``password``
    the secret shared with the server. ``sasl_mechanism`` stays None and
    ``tls`` False: XEP-0114 streams have neither. ``options.host`` should
    name the server, because a component's domain usually has no address of
    its own.
    """

    mode: ClassVar[str] = "component"

    async def connect(self) -> None:
        """Open the stream and perform the handshake; raise on any failure.

        Raises ConnectionError_ (refused, unreachable, timeout, unknown
        component domain, domain already connected) or AuthError (secret
        rejected). Handlers of the plugins that support components are
        attached before connecting. A failed first connection is not retried.
        """
        authenticator = jabber_component.ConnectComponentAuthenticator(
            self.jid.host, self.password
        )
        self.factory = _ComponentFactory(authenticator, self)
        self.factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, self._on_stream_connected)
        self.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, self._on_authenticated)
        self.factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, self._on_init_failed)
        self.factory.addBootstrap(xmlstream.STREAM_END_EVENT, self._on_stream_end)
        self.factory.addBootstrap(xmlstream.STREAM_ERROR_EVENT, self._on_stream_error)
        self.stream_manager = subprotocols.StreamManager(self.factory)
        self.stream_manager.timeout = self.options.iq_timeout
        self.stream_manager.logTraffic = False

        for handler in self.host.get_plugin_handlers(self):
            handler.setHandlerParent(self.stream_manager)

        self._connecting = defer.Deferred()
        self._failure_reason = None
        log.info(
            "profile %s: connecting component %s to %s:%s",
            self.profile, self.jid.full(), self.server_host, self.options.port,
        )
        self._start_timer()
        self.connector = reactor.connectTCP(
            self.server_host, self.options.port, self.factory,
            timeout=self.options.connect_timeout,
        )
        try:
            await self._connecting
        finally:
            self._cancel_timer()

    def _on_stream_connected(self, xs: ComponentXmlStream) -> None:
        super()._on_stream_connected(xs)
        xs.component_jid = jabber_jid.JID(self.jid.host)

    def _on_stream_error(self, reason: failure.Failure) -> None:
        """Turn the stream error a server sends before closing into the user's error."""
        condition = getattr(reason.value, "condition", None) or "undefined-condition"
        where = f"{self.server_host}:{self.options.port}"
        exc: Exception
        if condition == "not-authorized":
            exc = AuthError(
                f"{where} rejected the secret of component {self.jid.full()} "
                "(not-authorized); check the profile's password and the server's "
                "component secret"
            )
        elif condition == "host-unknown":
            exc = ConnectionError_(
                f"{where} has no component {self.jid.full()} (host-unknown); check "
                "the JID and the server's component configuration"
            )
        elif condition == "conflict":
            exc = ConnectionError_(
                f"component {self.jid.full()} is already connected to {where} (conflict)"
            )
        else:
            exc = ConnectionError_(
                f"{where} closed the stream of component {self.jid.full()}: {condition}"
            )
        self._failure_reason = exc
        if self._connecting is not None:
            self._fail_connecting(exc)
            return
        if isinstance(exc, AuthError):
            # Same rule as clients: retrying a rejected secret is pointless.
            log.error(
                "profile %s: reconnection stopped: %s; run li profile connect %s",
                self.profile, exc, self.profile,
            )
            self._stopping = True
        else:
            log.warning("profile %s: %s", self.profile, exc)

    def _on_authenticated(self, xs: ComponentXmlStream) -> None:
        self.connected = True
        self.sasl_mechanism = None
        self.tls = False
        self._cancel_timer()
        self._reconnector.reset()
        # No initial presence: a component is not a user's session, and
        # servers deliver stanzas to its domain without one.
        log.info("profile %s: connected as component %s", self.profile, self.jid.full())
        deferred, self._connecting = self._connecting, None
        if deferred is not None and not deferred.called:
            deferred.callback(None)
        else:
            self.host.on_stream_reestablished(self)

    def _describe_init_failure(self, reason: failure.Failure) -> Exception:
        return ConnectionError_(
            f"handshake of component {self.jid.full()} with {self.server_host} "
            f"failed: {reason.value}"
        )

    def _tls_options(self) -> Any:
        return None
