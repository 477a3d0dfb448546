"""One XMPP client connection per connected profile.

wokkel's ``XMPPClient`` cannot take TLS options, looks up SRV records even
when a host is given and retries forever without reporting a failure, so the
client here assembles Twisted's authenticator and factory with wokkel's
``StreamManager`` itself. Connecting either succeeds once the stream is
authenticated and bound, or fails with one exception naming the cause:
refused or unreachable server, failed certificate, rejected credentials,
missing TLS or timeout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from OpenSSL import SSL
from twisted.internet import defer, reactor, ssl
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.python import failure
from twisted.words.protocols.jabber import client as jabber_client
from twisted.words.protocols.jabber import error as jabber_error
from twisted.words.protocols.jabber import jid as jabber_jid
from twisted.words.protocols.jabber import sasl, xmlstream
from twisted.words.xish import domish
from wokkel import subprotocols

from libervia.backend.core.exceptions import AuthError, ConfigError, ConnectionError_

log = logging.getLogger(__name__)

DEFAULT_PORT = 5222
DEFAULT_CONNECT_TIMEOUT = 20.0
DEFAULT_IQ_TIMEOUT = 60.0

# Trigger point run with (client, presence element) before the initial
# presence of a stream is sent.
TRIGGER_INITIAL_PRESENCE = "XMPP_initial_presence"


_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off", "")


def _parse_bool(name: str, value: Any) -> bool:
    """Read a boolean option given as a bool or a word; raise ConfigError otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ConfigError(f"invalid {name} {value!r}: use true or false")


@dataclass
class ConnectionOptions:
    """Connection settings of a profile; unset values come from the JID's domain."""

    host: str | None = None
    port: int = DEFAULT_PORT
    ca_file: str | None = None
    allow_plaintext: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    iq_timeout: float = DEFAULT_IQ_TIMEOUT

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "ConnectionOptions":
        """Build options from profile params or config values; raise ConfigError on bad ones."""
        options = cls()
        if values.get("host"):
            options.host = str(values["host"])
        if values.get("port") not in (None, ""):
            port = values["port"]
            try:
                if isinstance(port, bool) or (isinstance(port, float) and not port.is_integer()):
                    raise ValueError(port)
                options.port = int(port)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"invalid port {port!r}: use a number between 1 and 65535"
                ) from None
            if not 0 < options.port < 65536:
                raise ConfigError(
                    f"invalid port {options.port}: use a number between 1 and 65535"
                )
        if values.get("ca_file"):
            options.ca_file = str(values["ca_file"])
        if values.get("allow_plaintext") is not None:
            options.allow_plaintext = _parse_bool("allow_plaintext", values["allow_plaintext"])
        for key in ("connect_timeout", "iq_timeout"):
            if values.get(key) not in (None, ""):
                try:
                    seconds = float(values[key])
                except (TypeError, ValueError):
                    seconds = -1.0
                if not seconds > 0:
                    raise ConfigError(
                        f"invalid {key} {values[key]!r}: use a positive number of seconds"
                    )
                setattr(options, key, seconds)
        return options


class CountingXmlStream(xmlstream.XmlStream):
    """XML stream that counts the stanzas it sends and receives.

    The counters let tests and ``li debug stats`` prove that a cached request
    sent nothing to the server.
    """

    def __init__(self, authenticator: xmlstream.Authenticator) -> None:
        super().__init__(authenticator)
        self.stats: dict[str, int] | None = None

    def send(self, obj: domish.Element | str) -> None:
        if self.stats is not None and isinstance(obj, domish.Element):
            self.stats["stanzas_sent"] += 1
            if obj.name == "iq":
                self.stats["iq_sent"] += 1
        super().send(obj)

    def onElement(self, element: domish.Element) -> None:
        if self.stats is not None:
            self.stats["stanzas_received"] += 1
        super().onElement(element)


class _ClientFactory(xmlstream.XmlStreamFactory):
    """Stream factory that reports connection failures instead of retrying silently."""

    protocol = CountingXmlStream

    def __init__(self, authenticator: xmlstream.Authenticator, client: "XMPPClient") -> None:
        super().__init__(authenticator)
        self.client = client

    def clientConnectionFailed(self, connector: Any, reason: failure.Failure) -> None:
        if self.client._on_connection_failed(reason):
            super().clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: Any, reason: failure.Failure) -> None:
        if self.client._on_connection_lost(reason):
            super().clientConnectionLost(connector, reason)


def _describe_tls_failure(reason: failure.Failure) -> str | None:
    """Return a readable cause when ``reason`` is a TLS error, else None."""
    if not reason.check(SSL.Error):
        return None
    details = []
    for entry in reason.value.args[0] if reason.value.args else []:
        if isinstance(entry, tuple) and entry:
            details.append(str(entry[-1]))
    return ", ".join(details) or str(reason.value)


@dataclass
class XMPPClient:
    """A profile's XMPP connection, its stream manager and its protocol handlers."""

    host: Any
    profile: str
    profile_id: int
    jid: jabber_jid.JID
    password: str = field(repr=False)
    options: ConnectionOptions = field(default_factory=ConnectionOptions)

    def __post_init__(self) -> None:
        self.stream_stats = {"iq_sent": 0, "stanzas_sent": 0, "stanzas_received": 0}
        self.factory: _ClientFactory | None = None
        self.stream_manager: subprotocols.StreamManager | None = None
        self.connector: Any = None
        self._connecting: defer.Deferred | None = None
        self._timeout_call: Any = None
        self._failure_reason: Exception | None = None
        self._stream_end_reason: failure.Failure | None = None
        self._stream: CountingXmlStream | None = None
        self._stopping = False
        self.connected = False

    @property
    def server_host(self) -> str:
        """Return the host name or address to connect to."""
        return self.options.host or self.jid.host

    def _tls_options(self) -> Any:
        """Build client TLS options verifying the certificate for the JID's domain."""
        domain = self.jid.host
        if self.options.ca_file:
            path = Path(self.options.ca_file)
            try:
                pem = path.read_bytes()
                trust_root = ssl.Certificate.loadPEM(pem)
            except OSError as e:
                raise ConfigError(
                    f"cannot read CA file {path}: {e.strerror}; check the profile's ca_file"
                ) from e
            except SSL.Error as e:
                raise ConfigError(
                    f"CA file {path} contains no valid PEM certificate: {e}"
                ) from e
            return ssl.optionsForClientTLS(domain, trustRoot=trust_root)
        return ssl.optionsForClientTLS(domain)

    async def connect(self) -> None:
        """Open the stream, authenticate and bind; raise on any failure.

        Raises ConnectionError_ (refused, unreachable, TLS failure, timeout,
        no TLS offered while plain text is not allowed) or AuthError (rejected
        credentials). Handlers of every plugin are attached before connecting.
        """
        authenticator = jabber_client.XMPPAuthenticator(
            self.jid, self.password, configurationForTLS=self._tls_options()
        )
        self.factory = _ClientFactory(authenticator, self)
        self.factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, self._on_stream_connected)
        self.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, self._on_authenticated)
        self.factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, self._on_init_failed)
        self.factory.addBootstrap(xmlstream.STREAM_END_EVENT, self._on_stream_end)
        self.stream_manager = subprotocols.StreamManager(self.factory)
        self.stream_manager.timeout = self.options.iq_timeout
        self.stream_manager.logTraffic = False

        for handler in self.host.get_plugin_handlers(self):
            handler.setHandlerParent(self.stream_manager)

        self._connecting = defer.Deferred()
        self._failure_reason = None
        log.info(
            "profile %s: connecting as %s to %s:%s",
            self.profile, self.jid.full(), self.server_host, self.options.port,
        )
        self._timeout_call = reactor.callLater(self.options.connect_timeout, self._on_timeout)
        self.connector = reactor.connectTCP(
            self.server_host, self.options.port, self.factory,
            timeout=self.options.connect_timeout,
        )
        try:
            await self._connecting
        finally:
            if self._timeout_call is not None and self._timeout_call.active():
                self._timeout_call.cancel()
            self._timeout_call = None

    def _fail_connecting(self, exc: Exception) -> None:
        """Stop the attempt and errback the pending connect() with ``exc``."""
        if self._connecting is not None:
            log.warning("profile %s: connection failed: %s", self.profile, exc)
        if self.factory is not None:
            self.factory.stopTrying()
        deferred, self._connecting = self._connecting, None
        if self.connector is not None:
            self.connector.disconnect()
        if deferred is not None and not deferred.called:
            deferred.errback(exc)

    def _on_stream_end(self, reason: failure.Failure) -> None:
        # After STARTTLS, a TLS failure reaches the stream with its cause while
        # the factory only hears that the TCP connection closed.
        self._stream_end_reason = reason

    def _on_stream_connected(self, xs: CountingXmlStream) -> None:
        self._stream = xs
        self._stream_end_reason = None
        xs.stats = self.stream_stats
        if self.options.allow_plaintext:
            for initializer in xs.initializers:
                if isinstance(initializer, xmlstream.TLSInitiatingInitializer):
                    initializer.required = False

    def _on_authenticated(self, xs: CountingXmlStream) -> None:
        self.connected = True
        self.jid = xs.authenticator.jid
        defer.ensureDeferred(self._announce(xs))

    async def _announce(self, xs: CountingXmlStream) -> None:
        """Send the initial presence, then report the stream as ready."""
        # The server delivers pubsub notifications sent to the bare JID only
        # to available resources. Plugins add to this presence (entity
        # capabilities, for instance) through the trigger point.
        presence = domish.Element((None, "presence"))
        try:
            await self.host.trigger.point(TRIGGER_INITIAL_PRESENCE, self, presence)
        except Exception:
            log.exception("profile %s: a trigger of the initial presence failed", self.profile)
        xs.send(presence)
        log.info("profile %s: connected as %s", self.profile, self.jid.full())
        deferred, self._connecting = self._connecting, None
        if deferred is not None and not deferred.called:
            deferred.callback(None)
        else:
            self.host.on_stream_reestablished(self)

    def _on_init_failed(self, reason: failure.Failure) -> None:
        if reason.check(sasl.SASLAuthError):
            exc: Exception = AuthError(
                f"authentication of {self.jid.userhost()} failed on {self.server_host}: "
                f"{reason.value.condition or 'rejected'}; check the JID and password"
            )
        elif reason.check(sasl.SASLNoAcceptableMechanism):
            exc = AuthError(
                f"{self.server_host} offers no SASL mechanism usable over this "
                "connection (PLAIN needs TLS unless allow_plaintext is set)"
            )
        elif reason.check(xmlstream.TLSRequired) or (
            reason.check(xmlstream.FeatureNotAdvertized) and self._failed_at_tls()
        ):
            exc = ConnectionError_(
                f"{self.server_host}:{self.options.port} does not offer TLS; set "
                "allow_plaintext only if the connection is trusted"
            )
        elif reason.check(jabber_error.StreamError):
            exc = ConnectionError_(
                f"{self.server_host} closed the stream: {reason.value.condition}"
            )
        else:
            exc = ConnectionError_(
                f"stream initialisation with {self.server_host} failed: {reason.value}"
            )
        self._failure_reason = exc
        self._fail_connecting(exc)

    def _failed_at_tls(self) -> bool:
        """Return True when stream initialisation stopped at the STARTTLS step."""
        # Twisted's authenticator removes each initializer once it succeeded,
        # so the first one left is the one that failed.
        initializers = getattr(self._stream, "initializers", None) or []
        return bool(initializers) and isinstance(
            initializers[0], xmlstream.TLSInitiatingInitializer
        )

    def _on_timeout(self) -> None:
        self._timeout_call = None
        exc = ConnectionError_(
            f"connection to {self.server_host}:{self.options.port} timed out after "
            f"{self.options.connect_timeout:g} s"
        )
        self._failure_reason = exc
        self._fail_connecting(exc)

    def _on_connection_failed(self, reason: failure.Failure) -> bool:
        """Turn a TCP failure into the pending connect() error; return True to retry."""
        if self._connecting is None:
            # Reconnection attempt after an established session: keep trying.
            log.warning(
                "profile %s: reconnecting to %s:%s failed: %s",
                self.profile, self.server_host, self.options.port, reason.getErrorMessage(),
            )
            return not self._stopping
        if reason.check(ConnectionRefusedError):
            cause = "connection refused"
        elif reason.check(DNSLookupError):
            cause = "host name not found"
        elif reason.check(ConnectError):
            cause = reason.getErrorMessage()
        else:
            cause = str(reason.value)
        exc = self._failure_reason or ConnectionError_(
            f"cannot connect to {self.server_host}:{self.options.port}: {cause}"
        )
        self._fail_connecting(exc)
        return False

    def _on_connection_lost(self, reason: failure.Failure) -> bool:
        """Handle the end of a stream; return True to let the factory reconnect."""
        was_connected = self.connected
        self.connected = False
        if self._connecting is not None:
            tls_cause = _describe_tls_failure(self._stream_end_reason or reason)
            if tls_cause is not None:
                exc: Exception = ConnectionError_(
                    f"TLS with {self.server_host}:{self.options.port} failed for domain "
                    f"{self.jid.host}: {tls_cause}; check the server certificate or the "
                    "profile's ca_file"
                )
            else:
                exc = self._failure_reason or ConnectionError_(
                    f"connection to {self.server_host}:{self.options.port} closed during "
                    f"login: {reason.getErrorMessage()}"
                )
            self._fail_connecting(exc)
            return False
        if self._stopping:
            return False
        if was_connected:
            # TODO: reconnection uses Twisted's ReconnectingClientFactory backoff;
            # plugins are notified through on_stream_reestablished once it succeeds.
            log.warning(
                "profile %s: connection lost (%s), reconnecting",
                self.profile, reason.getErrorMessage(),
            )
        return True

    def send(self, element: domish.Element) -> None:
        """Send a stanza on the stream; raise ProfileNotConnected-like errors when down."""
        if self.stream_manager is None:
            raise ConnectionError_(f"profile {self.profile} is not connected")
        self.stream_manager.send(element)

    async def disconnect(self) -> None:
        """Close the stream with its closing tag and wait until the connection is closed."""
        self._stopping = True
        self.connected = False
        if self.factory is not None:
            self.factory.stopTrying()
        xs = self.stream_manager.xmlstream if self.stream_manager else None
        if xs is None or xs.transport is None:
            if self.connector is not None:
                self.connector.disconnect()
            return
        closed: defer.Deferred = defer.Deferred()
        xs.addOnetimeObserver(xmlstream.STREAM_END_EVENT, lambda _: closed.callback(None))
        try:
            xs.sendFooter()
        except Exception:  # the transport may already be closing
            log.debug("profile %s: could not send the closing tag", self.profile)
        xs.transport.loseConnection()
        timeout = reactor.callLater(5, lambda: closed.called or closed.callback(None))
        await closed
        if timeout.active():
            timeout.cancel()
        log.info("profile %s: disconnected", self.profile)
