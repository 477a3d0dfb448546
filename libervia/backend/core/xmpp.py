"""One XMPP client connection per connected profile.

wokkel's ``XMPPClient`` cannot take TLS options, looks up SRV records even
when a host is given and retries forever without reporting a failure, so the
client here assembles Twisted's authenticator and factory with wokkel's
``StreamManager`` itself. Connecting either succeeds once the stream is
authenticated and bound, or fails with one exception naming the cause:
refused or unreachable server, failed certificate, rejected credentials,
missing TLS or timeout.

Authentication uses the strongest SASL mechanism of
:mod:`libervia.backend.core.sasl` that the server offers. TLS is STARTTLS,
or TLS from the first byte (XEP-0368 direct TLS) with the profile's
``direct_tls`` option. Both verify the certificate against the system's CAs
or the profile's ``ca_file``. Once a session was established, a lost
connection is retried with the delays of
:mod:`libervia.backend.core.reconnect` until it succeeds, the profile is
disconnected, or the server rejects the credentials.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import ISSLTransport
from twisted.python import failure
from twisted.words.protocols.jabber import client as jabber_client
from twisted.words.protocols.jabber import error as jabber_error
from twisted.words.protocols.jabber import jid as jabber_jid
from twisted.words.protocols.jabber import sasl, xmlstream
from twisted.words.xish import domish
from twisted.words.xish import xmlstream as xish_xmlstream
from wokkel import subprotocols

from libervia.backend.core import sasl as client_sasl
from libervia.backend.core.exceptions import AuthError, ConfigError, ConnectionError_
from libervia.backend.core.reconnect import BackoffPolicy, Reconnector

log = logging.getLogger(__name__)

DEFAULT_PORT = 5222
DEFAULT_CONNECT_TIMEOUT = 20.0
DEFAULT_IQ_TIMEOUT = 60.0
# Per-stanza limits of the streams' XML parser. Twisted 26.10 closes a stream
# on a stanza over 10 MiB or 100,000 elements (ExpatElementStream in
# twisted/words/xish/domish.py). A pubsub service without RSM (Prosody 0.12)
# lists a node's item ids in one disco#items result of one element per item.
# These defaults let a listing of 200,000 ids through. With ids and a service
# JID of about 40 characters each, it is about 20 MB (an estimate).
DEFAULT_MAX_STANZA_SIZE = 32 * 1024 * 1024
DEFAULT_MAX_STANZA_ELEMENTS = 250_000

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


def _parse_mechanisms(value: Any) -> tuple[str, ...]:
    """Read a list of SASL mechanism names, given as a list or a comma-separated string."""
    if isinstance(value, str):
        names = [name.strip() for name in value.replace(",", " ").split()]
    elif isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value):
        names = [name.strip() for name in value]
    else:
        raise ConfigError(
            f"invalid sasl_mechanisms {value!r}: use a list of "
            f"{', '.join(client_sasl.SUPPORTED_MECHANISMS)}"
        )
    names = [name.upper() for name in names if name]
    if not names:
        raise ConfigError(
            "sasl_mechanisms is empty: name at least one of "
            f"{', '.join(client_sasl.SUPPORTED_MECHANISMS)}"
        )
    for name in names:
        if name == "DIGEST-MD5":
            raise ConfigError(
                "sasl_mechanisms: DIGEST-MD5 is obsolete (RFC 6331) and not supported; "
                f"use {', '.join(client_sasl.SUPPORTED_MECHANISMS)}"
            )
        if name not in client_sasl.SUPPORTED_MECHANISMS:
            raise ConfigError(
                f"sasl_mechanisms: unknown mechanism {name!r}; use "
                f"{', '.join(client_sasl.SUPPORTED_MECHANISMS)}"
            )
    return tuple(dict.fromkeys(names))


def _parse_number(name: str, value: Any, minimum: float, inclusive: bool) -> float:
    """Read a number option that must be above ``minimum`` (or equal, with ``inclusive``)."""
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    valid = number >= minimum if inclusive else number > minimum
    if not valid or number == float("inf"):
        bound = f"at least {minimum:g}" if inclusive else f"above {minimum:g}"
        raise ConfigError(f"invalid {name} {value!r}: use a number {bound}")
    return number


def _parse_positive_int(name: str, value: Any) -> int:
    """Read an option that must be an integer of 1 or more."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ConfigError(f"invalid {name} {value!r}: use an integer of 1 or more")
    return number


@dataclass
class ConnectionOptions:
    """Connection settings of a profile; unset values come from the JID's domain.

    Times are in seconds. The ``reconnect_*`` values set the delays between
    reconnection attempts after an established session was lost (see
    :class:`~libervia.backend.core.reconnect.BackoffPolicy`).
    """

    host: str | None = None
    port: int = DEFAULT_PORT
    ca_file: str | None = None
    allow_plaintext: bool = False
    #: Open TLS from the first byte (XEP-0368) instead of STARTTLS.
    direct_tls: bool = False
    #: SASL mechanisms allowed; the strongest one the server offers is used.
    sasl_mechanisms: tuple[str, ...] = client_sasl.SUPPORTED_MECHANISMS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    iq_timeout: float = DEFAULT_IQ_TIMEOUT
    reconnect_initial_delay: float = BackoffPolicy.initial_delay
    reconnect_factor: float = BackoffPolicy.factor
    reconnect_max_delay: float = BackoffPolicy.max_delay
    reconnect_jitter: float = BackoffPolicy.jitter
    #: Largest stanza received, in bytes, and in elements; a larger one
    #: closes the stream.
    max_stanza_size: int = DEFAULT_MAX_STANZA_SIZE
    max_stanza_elements: int = DEFAULT_MAX_STANZA_ELEMENTS

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
        for key in ("allow_plaintext", "direct_tls"):
            if values.get(key) is not None:
                setattr(options, key, _parse_bool(key, values[key]))
        if values.get("sasl_mechanisms") not in (None, ""):
            options.sasl_mechanisms = _parse_mechanisms(values["sasl_mechanisms"])
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
        for key in ("max_stanza_size", "max_stanza_elements"):
            if values.get(key) not in (None, ""):
                setattr(options, key, _parse_positive_int(key, values[key]))
        options._read_reconnect_values(values)
        return options

    def _read_reconnect_values(self, values: dict[str, Any]) -> None:
        """Set the reconnect_* options found in ``values``, checking that they fit together."""
        bounds = {
            # name: (minimum, minimum allowed)
            "reconnect_initial_delay": (0.0, False),
            "reconnect_factor": (1.0, True),
            "reconnect_max_delay": (0.0, False),
            "reconnect_jitter": (0.0, True),
        }
        for key, (minimum, inclusive) in bounds.items():
            if values.get(key) not in (None, ""):
                setattr(self, key, _parse_number(key, values[key], minimum, inclusive))
        if self.reconnect_jitter > 1:
            raise ConfigError(
                f"invalid reconnect_jitter {self.reconnect_jitter:g}: use a fraction "
                "between 0 and 1"
            )
        if self.reconnect_max_delay < self.reconnect_initial_delay:
            raise ConfigError(
                f"reconnect_max_delay ({self.reconnect_max_delay:g} s) is below "
                f"reconnect_initial_delay ({self.reconnect_initial_delay:g} s)"
            )

    def backoff_policy(self) -> BackoffPolicy:
        """Return the reconnection delays of these options."""
        return BackoffPolicy(
            initial_delay=self.reconnect_initial_delay,
            factor=self.reconnect_factor,
            max_delay=self.reconnect_max_delay,
            jitter=self.reconnect_jitter,
        )


class CountingXmlStream(xmlstream.XmlStream):
    """XML stream that counts the stanzas it sends and receives.

    The counters let tests and ``li debug stats`` prove that a cached request
    sent nothing to the server.
    """

    def __init__(self, authenticator: xmlstream.Authenticator) -> None:
        super().__init__(authenticator)
        self.stats: dict[str, int] | None = None
        #: SASL mechanism used on this stream, set by the SASL initializer.
        self.sasl_mechanism: str | None = None
        #: Per-stanza limits of this stream's parser, in bytes and elements;
        #: None keeps Twisted's.
        self.max_stanza_size: int | None = None
        self.max_stanza_elements: int | None = None

    def _initializeStream(self) -> None:
        # Twisted builds a new parser at the stream start and at each stream
        # restart (after STARTTLS and SASL), so the limits are set on each
        # parser instance, leaving the class defaults of other streams alone.
        super()._initializeStream()
        if self.max_stanza_size is not None:
            self.stream.maxStanzaSize = self.max_stanza_size
        if self.max_stanza_elements is not None:
            self.stream.maxElementCount = self.max_stanza_elements

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


class _ClientAuthenticator(jabber_client.XMPPAuthenticator):
    """Twisted's client authenticator with this project's SASL and TLS choices."""

    def __init__(
        self, jid: jabber_jid.JID, password: str, options: ConnectionOptions, tls_options: Any,
    ) -> None:
        super().__init__(jid, password, configurationForTLS=tls_options)
        self.options = options

    def associateWithStream(self, xs: CountingXmlStream) -> None:
        super().associateWithStream(xs)
        initializers = []
        for initializer in xs.initializers:
            if isinstance(initializer, xmlstream.TLSInitiatingInitializer):
                if self.options.direct_tls:
                    # The transport is TLS already, and servers offer no
                    # STARTTLS on a direct TLS port.
                    continue
                if self.options.allow_plaintext:
                    initializer.required = False
            elif isinstance(initializer, sasl.SASLInitiatingInitializer):
                initializer = client_sasl.SASLInitializer(
                    xs,
                    allowed=self.options.sasl_mechanisms,
                    allow_plaintext=self.options.allow_plaintext,
                )
            initializers.append(initializer)
        xs.initializers = initializers


class _ClientFactory(xish_xmlstream.XmlStreamFactoryMixin, protocol.ClientFactory):
    """Stream factory that hands connection failures and losses to its client.

    It never retries by itself: the client decides whether to reconnect.
    """

    protocol = CountingXmlStream

    def __init__(self, authenticator: xmlstream.Authenticator, client: "XMPPClient") -> None:
        super().__init__(authenticator)
        self.authenticator = authenticator
        self.client = client

    def buildProtocol(self, addr: Any) -> CountingXmlStream:
        xs = super().buildProtocol(addr)
        xs.max_stanza_size = self.client.options.max_stanza_size
        xs.max_stanza_elements = self.client.options.max_stanza_elements
        return xs

    def clientConnectionFailed(self, connector: Any, reason: failure.Failure) -> None:
        self.client._on_connection_failed(reason)

    def clientConnectionLost(self, connector: Any, reason: failure.Failure) -> None:
        self.client._on_connection_lost(reason)


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
    """A profile's XMPP connection, its stream manager and its protocol handlers.

    After :meth:`connect` succeeded, ``sasl_mechanism`` names the SASL
    mechanism of the current stream and ``tls`` is True when the stream is
    encrypted.
    """

    #: "client", or "component" for :class:`~libervia.backend.core.component.ComponentClient`;
    #: plugins whose PLUGIN_INFO "modes" lack it attach nothing to the connection.
    mode: ClassVar[str] = "client"

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
        self.sasl_mechanism: str | None = None
        self.tls = False
        self.connected = False
        self._connecting: defer.Deferred | None = None
        self._timeout_call: Any = None
        self._failure_reason: Exception | None = None
        self._stream_end_reason: failure.Failure | None = None
        self._stream: CountingXmlStream | None = None
        self._reconnector = Reconnector(
            self.options.backoff_policy(), self._reconnect, reactor
        )
        # True once no more attempt must be made: the profile is being
        # disconnected, the first connection failed, or the server rejected
        # the credentials on a reconnection.
        self._stopping = False

    @property
    def server_host(self) -> str:
        """Return the host name or address to connect to."""
        return self.options.host or self.jid.host

    @property
    def reconnecting(self) -> bool:
        """Whether the session was lost and a reconnection attempt is pending or running."""
        return (
            self.factory is not None
            and not self.connected
            and not self._stopping
            and self._connecting is None
        )

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
        credentials, no usable SASL mechanism, wrong SCRAM server signature).
        Handlers of every plugin are attached before connecting. A failed
        first connection is not retried.
        """
        tls_options = self._tls_options()
        authenticator = _ClientAuthenticator(self.jid, self.password, self.options, tls_options)
        self.factory = _ClientFactory(authenticator, self)
        self.factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, self._on_stream_connected)
        self.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, self._on_authenticated)
        self.factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, self._on_init_failed)
        self.factory.addBootstrap(xmlstream.STREAM_END_EVENT, self._on_stream_end)
        self.stream_manager = subprotocols.StreamManager(self.factory)
        # Requests sent with StreamManager.request fail after this delay.
        self.stream_manager.timeout = self.options.iq_timeout
        self.stream_manager.logTraffic = False

        for handler in self.host.get_plugin_handlers(self):
            handler.setHandlerParent(self.stream_manager)

        self._connecting = defer.Deferred()
        self._failure_reason = None
        log.info(
            "profile %s: connecting as %s to %s:%s (%s)",
            self.profile, self.jid.full(), self.server_host, self.options.port,
            "direct TLS" if self.options.direct_tls else "STARTTLS",
        )
        self._start_timer()
        if self.options.direct_tls:
            self.connector = reactor.connectSSL(
                self.server_host, self.options.port, self.factory, tls_options,
                timeout=self.options.connect_timeout,
            )
        else:
            self.connector = reactor.connectTCP(
                self.server_host, self.options.port, self.factory,
                timeout=self.options.connect_timeout,
            )
        try:
            await self._connecting
        finally:
            self._cancel_timer()

    def _start_timer(self) -> None:
        """Bound the time an attempt may take, from TCP connect to a bound session."""
        self._cancel_timer()
        self._timeout_call = reactor.callLater(self.options.connect_timeout, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None

    def _fail_connecting(self, exc: Exception) -> None:
        """Stop the first connection attempt and errback the pending connect() with ``exc``."""
        if self._connecting is not None:
            log.warning("profile %s: connection failed: %s", self.profile, exc)
        self._stopping = True
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
        # Twisted's IQ.send (used by wokkel's pubsub requests) falls back to
        # this timeout when the request sets none.
        xs.iqDefaultTimeout = self.options.iq_timeout
        # Before Twisted's and wokkel's own handlers, which fail pending
        # requests with a bare "connection lost".
        xs.addObserver(xmlstream.STREAM_END_EVENT, self._fail_pending_requests, priority=1)

    def _fail_pending_requests(self, reason: failure.Failure) -> None:
        """Fail every IQ still waiting for its response when the stream ends."""
        xs = self._stream
        pending: list[defer.Deferred] = []
        if xs is not None:
            pending += getattr(xs, "iqDeferreds", {}).values()
            xs.iqDeferreds = {}
        if self.stream_manager is not None:
            # wokkel keeps StreamManager.request's Deferreds in this private dict.
            pending += self.stream_manager._iqDeferreds.values()
            self.stream_manager._iqDeferreds = {}
        if not pending:
            return
        cause = reason.getErrorMessage() if isinstance(reason, failure.Failure) else "closed"
        log.warning(
            "profile %s: stream ended with %d request(s) waiting for a response",
            self.profile, len(pending),
        )
        message = (
            f"profile {self.profile}: the stream to {self.server_host} ended "
            f"before the response arrived ({cause}); retry once reconnected"
        )
        # Callers resume once every handler of the stream end has run, so
        # they see the client in its disconnected state.
        reactor.callLater(0, self._errback_all, pending, message)

    @staticmethod
    def _errback_all(deferreds: list[defer.Deferred], message: str) -> None:
        for deferred in deferreds:
            if not deferred.called:
                deferred.errback(ConnectionError_(message))

    def _on_authenticated(self, xs: CountingXmlStream) -> None:
        self.connected = True
        self.jid = xs.authenticator.jid
        self.sasl_mechanism = xs.sasl_mechanism
        self.tls = ISSLTransport.providedBy(xs.transport)
        self._cancel_timer()
        self._reconnector.reset()
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
        log.info(
            "profile %s: connected as %s (SASL %s, %s)",
            self.profile, self.jid.full(), self.sasl_mechanism,
            "TLS" if self.tls else "no TLS",
        )
        deferred, self._connecting = self._connecting, None
        if deferred is not None and not deferred.called:
            deferred.callback(None)
        else:
            self.host.on_stream_reestablished(self)

    def _on_init_failed(self, reason: failure.Failure) -> None:
        exc = self._describe_init_failure(reason)
        self._failure_reason = exc
        if self._connecting is not None:
            self._fail_connecting(exc)
            return
        if isinstance(exc, AuthError):
            # Retrying with credentials the server rejects only locks the account.
            log.error(
                "profile %s: reconnection stopped: %s; run li profile connect %s",
                self.profile, exc, self.profile,
            )
            self._stopping = True
        else:
            log.warning("profile %s: reconnection attempt failed: %s", self.profile, exc)
        if self.connector is not None:
            self.connector.disconnect()

    def _describe_init_failure(self, reason: failure.Failure) -> Exception:
        """Turn a stream initialisation failure into the error shown to the user."""
        mechanism = self._stream.sasl_mechanism if self._stream is not None else None
        if reason.check(sasl.SASLAuthError):
            return AuthError(
                f"authentication of {self.jid.userhost()} failed on {self.server_host}: "
                f"{reason.value.condition or 'rejected'}; check the JID and password"
            )
        if reason.check(client_sasl.NoUsableMechanism):
            return AuthError(f"cannot log in to {self.server_host}: {reason.value}")
        if reason.check(sasl.SASLNoAcceptableMechanism):
            return AuthError(
                f"{self.server_host} offers no SASL mechanism usable over this "
                "connection (PLAIN needs TLS unless allow_plaintext is set)"
            )
        if reason.check(client_sasl.ServerSignatureError):
            return AuthError(
                f"{mechanism} login to {self.server_host} failed: {reason.value}; "
                "the server may not be the one holding this account"
            )
        if reason.check(sasl.SASLError):
            return AuthError(
                f"{mechanism or 'SASL'} login to {self.server_host} failed: {reason.value}"
            )
        if reason.check(xmlstream.TLSRequired) or (
            reason.check(xmlstream.FeatureNotAdvertized) and self._failed_at_tls()
        ):
            return ConnectionError_(
                f"{self.server_host}:{self.options.port} does not offer TLS; set "
                "allow_plaintext only if the connection is trusted"
            )
        if reason.check(jabber_error.StreamError):
            return ConnectionError_(
                f"{self.server_host} closed the stream: {reason.value.condition}"
            )
        return ConnectionError_(
            f"stream initialisation with {self.server_host} failed: {reason.value}"
        )

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
        if self._connecting is not None:
            self._fail_connecting(exc)
            return
        log.warning("profile %s: reconnection attempt failed: %s", self.profile, exc)
        # The factory then reports a failed or lost connection, which
        # schedules the next attempt.
        if self.connector is not None:
            self.connector.disconnect()

    def _on_connection_failed(self, reason: failure.Failure) -> None:
        """Turn a TCP failure into the pending connect() error, or retry later."""
        if self._connecting is None:
            self._cancel_timer()
            if self._stopping:
                return
            delay = self._reconnector.schedule()
            log.warning(
                "profile %s: reconnecting to %s:%s failed (%s), next attempt in %.1f s",
                self.profile, self.server_host, self.options.port,
                reason.getErrorMessage(), delay,
            )
            return
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

    def _on_connection_lost(self, reason: failure.Failure) -> None:
        """Handle the end of a connection: fail connect(), stop, or schedule a reconnection."""
        was_connected = self.connected
        self.connected = False
        if self._connecting is not None:
            self._fail_connecting(self._login_failure(reason))
            return
        self._cancel_timer()
        if self._stopping:
            return
        delay = self._reconnector.schedule()
        if was_connected:
            log.warning(
                "profile %s: connection to %s:%s lost (%s), reconnecting in %.1f s",
                self.profile, self.server_host, self.options.port,
                reason.getErrorMessage(), delay,
            )
        else:
            cause = self._failure_reason or reason.getErrorMessage()
            log.warning(
                "profile %s: reconnection attempt failed (%s), next attempt in %.1f s",
                self.profile, cause, delay,
            )
        self._failure_reason = None

    def _login_failure(self, reason: failure.Failure) -> Exception:
        """Return the error of a first connection closed before the session was ready."""
        tls_cause = _describe_tls_failure(self._stream_end_reason or reason)
        if tls_cause is None and self._stream_end_reason is not None:
            tls_cause = _describe_tls_failure(reason)
        if tls_cause is not None:
            return ConnectionError_(
                f"TLS with {self.server_host}:{self.options.port} failed for domain "
                f"{self.jid.host}: {tls_cause}; check the server certificate or the "
                "profile's ca_file"
            )
        return self._failure_reason or ConnectionError_(
            f"connection to {self.server_host}:{self.options.port} closed during "
            f"login: {reason.getErrorMessage()}"
        )

    def _reconnect(self) -> None:
        """Run one reconnection attempt, bounded by connect_timeout."""
        if self._stopping or self.connector is None:
            return
        log.info(
            "profile %s: reconnecting to %s:%s (attempt %d)",
            self.profile, self.server_host, self.options.port, self._reconnector.attempts,
        )
        self._failure_reason = None
        self._start_timer()
        self.connector.connect()

    def send(self, element: domish.Element) -> None:
        """Send a stanza on the stream; raise ConnectionError_ when the client was never connected."""
        if self.stream_manager is None:
            raise ConnectionError_(f"profile {self.profile} is not connected")
        self.stream_manager.send(element)

    async def disconnect(self) -> None:
        """Close the stream with its closing tag and wait until the connection is closed.

        A pending reconnection is cancelled.
        """
        self._stopping = True
        self.connected = False
        self._reconnector.cancel()
        self._cancel_timer()
        xs = self.stream_manager.xmlstream if self.stream_manager else None
        if xs is None or xs.transport is None:
            if self.connector is not None:
                self.connector.disconnect()
            return
        closed: defer.Deferred = defer.Deferred()
        xs.addOnetimeObserver(
            xmlstream.STREAM_END_EVENT, lambda _: closed.called or closed.callback(None)
        )
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
