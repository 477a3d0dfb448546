"""Client SASL for XMPP: SCRAM-SHA-256, SCRAM-SHA-1 and PLAIN.

Twisted's client SASL offers PLAIN, DIGEST-MD5 and ANONYMOUS only. This
module adds SCRAM (RFC 5802, RFC 7677) as Twisted SASL mechanisms, the
SASLprep profile of stringprep (RFC 4013) for passwords, and a SASL
initializer that picks the strongest mechanism the server offers. SCRAM
proves that the server knows the password too: a wrong server signature
fails the login. DIGEST-MD5 (obsoleted by RFC 6331) is never used, and PLAIN
is used only over TLS unless plain text is explicitly allowed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import stringprep
import unicodedata
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.words.protocols.jabber import sasl, sasl_mechanisms
from twisted.words.xish import domish
from zope.interface import implementer

log = logging.getLogger(__name__)

#: Mechanisms this client implements, strongest first.
SUPPORTED_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")

#: hashlib names of the SCRAM mechanisms.
SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}

#: Lowest iteration count accepted from a server. RFC 7677
#: recommends (SHOULD) at least 4096; a lower one makes a stolen client
#: proof cheaper to brute-force.
MIN_ITERATIONS = 4096

#: Highest iteration count accepted, so a hostile server cannot make the
#: client spend minutes deriving the key.
MAX_ITERATIONS = 10_000_000


class SaslprepError(ValueError):
    """A string contains characters that SASLprep (RFC 4013) prohibits."""


class ScramError(sasl.SASLError):
    """A SCRAM exchange failed: malformed server message or error reported by the server."""


class ServerSignatureError(ScramError):
    """The server signature of a SCRAM exchange is missing or wrong."""


class NoUsableMechanism(sasl.SASLNoAcceptableMechanism):
    """None of the mechanisms the server offers is allowed on this connection."""

    def __init__(self, offered: Sequence[str], allowed: Sequence[str], encrypted: bool) -> None:
        super().__init__()
        self.offered = list(offered)
        self.allowed = list(allowed)
        self.encrypted = encrypted

    def __str__(self) -> str:
        offered = ", ".join(self.offered) or "none"
        allowed = ", ".join(self.allowed)
        hint = ""
        if "PLAIN" in self.offered and "PLAIN" in self.allowed and not self.encrypted:
            hint = " (PLAIN needs TLS unless allow_plaintext is set)"
        return f"server offers SASL mechanisms {offered}; this client allows {allowed}{hint}"


# SASLprep, RFC 4013

def _is_prohibited(char: str) -> bool:
    """Return whether RFC 4013 section 2.3 prohibits ``char``."""
    return (
        stringprep.in_table_c12(char)
        or stringprep.in_table_c21_c22(char)
        or stringprep.in_table_c3(char)
        or stringprep.in_table_c4(char)
        or stringprep.in_table_c5(char)
        or stringprep.in_table_c6(char)
        or stringprep.in_table_c7(char)
        or stringprep.in_table_c8(char)
        or stringprep.in_table_c9(char)
    )


def saslprep(text: str, allow_unassigned: bool = True) -> str:
    """Prepare a user name or password with SASLprep (RFC 4013).

    Non-ASCII spaces become U+0020, characters "commonly mapped to nothing"
    are removed, the result is NFKC-normalised, then checked for prohibited
    characters and for the bidirectional rule of RFC 3454 section 6.
    ``allow_unassigned`` is True for queries (what a client sends, as SCRAM
    does) and False for stored strings.

    Raises:
        SaslprepError: a prohibited or unassigned character, or a bidirectional
            string that breaks RFC 3454 section 6. The message names the code
            point but never quotes the string, which may be a password.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char
        for char in text
        if not stringprep.in_table_b1(char)
    )
    prepared = unicodedata.normalize("NFKC", mapped)

    for char in prepared:
        if _is_prohibited(char):
            raise SaslprepError(f"prohibited character U+{ord(char):04X}")
        if not allow_unassigned and stringprep.in_table_a1(char):
            raise SaslprepError(f"unassigned code point U+{ord(char):04X}")

    right_to_left = [stringprep.in_table_d1(char) for char in prepared]
    if any(right_to_left):
        if any(stringprep.in_table_d2(char) for char in prepared):
            raise SaslprepError("mixes right-to-left and left-to-right characters")
        if not (right_to_left[0] and right_to_left[-1]):
            raise SaslprepError(
                "a right-to-left string must start and end with a right-to-left character"
            )
    return prepared


# SCRAM, RFC 5802 and RFC 7677

def _escape_username(name: str) -> str:
    """Escape ``=`` and ``,`` in a SCRAM user name (RFC 5802 section 5.1)."""
    return name.replace("=", "=3D").replace(",", "=2C")


def _parse_attributes(message: bytes) -> dict[str, str]:
    """Split a SCRAM server message into its ``key=value`` attributes."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("server message is not valid UTF-8") from None
    attributes: dict[str, str] = {}
    for part in text.split(","):
        key, separator, value = part.partition("=")
        if not separator or len(key) != 1:
            raise ScramError(f"malformed server message attribute {part[:20]!r}")
        attributes.setdefault(key, value)
    return attributes


def new_client_nonce() -> str:
    """Return a random printable client nonce with 192 bits of entropy."""
    # Base64 never contains ",", which the SCRAM syntax forbids in a nonce.
    return base64.b64encode(secrets.token_bytes(24)).decode("ascii")


@implementer(sasl_mechanisms.ISASLMechanism)
class Scram:
    """Client side of SCRAM-SHA-1 or SCRAM-SHA-256 without channel binding.

    The exchange has three steps: :meth:`getInitialResponse` returns the
    client-first message, :meth:`getResponse` responds to the
    server-first message with the client proof, and :meth:`verify_server_final` checks
    the server signature. XMPP servers send the server-final message either
    with ``<success/>`` or as a last challenge, in which case
    :meth:`getResponse` verifies it and returns an empty response.

    Args:
        name: "SCRAM-SHA-256" or "SCRAM-SHA-1".
        username: user name (the JID's local part), SASLprep'd here.
        password: password, SASLprep'd here.
        client_nonce: fixed nonce for tests against known vectors; random
            when None.

    Raises:
        ValueError: unknown mechanism name.
        SaslprepError: the user name or password contains a prohibited character.
    """

    def __init__(
        self, name: str, username: str, password: str, client_nonce: str | None = None,
    ) -> None:
        if name not in SCRAM_HASHES:
            raise ValueError(f"unknown SCRAM mechanism {name!r}: use {', '.join(SCRAM_HASHES)}")
        self.name = name
        self._hash = SCRAM_HASHES[name]
        self._username = _escape_username(saslprep(username))
        self._password = saslprep(password).encode("utf-8")
        self._client_nonce = client_nonce or new_client_nonce()
        # "n": this client does not support channel binding.
        self._gs2_header = "n,,"
        self._client_first_bare = ""
        self._expected_server_signature: bytes | None = None
        #: True once the server signature was checked and found right.
        self.server_verified = False

    def __repr__(self) -> str:
        return f"<Scram {self.name}>"

    def getInitialResponse(self) -> bytes:
        """Return the client-first message."""
        self._client_first_bare = f"n={self._username},r={self._client_nonce}"
        return (self._gs2_header + self._client_first_bare).encode("utf-8")

    def getResponse(self, challenge: bytes) -> bytes:
        """Return the client-final message for the server-first message.

        A second challenge is the server-final message: it is verified and
        an empty response is returned.

        Raises:
            ScramError: malformed server message, wrong nonce, iteration
                count out of range, or an error sent by the server.
            ServerSignatureError: wrong server signature.
        """
        if self._expected_server_signature is not None:
            self.verify_server_final(challenge)
            return b""
        return self._client_final(challenge)

    def _client_final(self, server_first: bytes) -> bytes:
        """Compute the client proof and the expected server signature."""
        if not self._client_first_bare:
            raise ScramError("server sent a challenge before the client-first message")
        attributes = _parse_attributes(server_first)
        if "m" in attributes:
            raise ScramError("server requires an unsupported SCRAM extension (m=)")
        try:
            nonce = attributes["r"]
            salt = base64.b64decode(attributes["s"], validate=True)
            iterations = int(attributes["i"])
        except KeyError as e:
            raise ScramError(f"server-first message misses the {e.args[0]}= attribute") from None
        except ValueError:
            raise ScramError("server-first message has an invalid salt or iteration count") from None
        if not nonce.startswith(self._client_nonce) or nonce == self._client_nonce:
            raise ScramError("server nonce does not extend the client nonce")
        if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            raise ScramError(
                f"server asks for {iterations} iterations, outside "
                f"{MIN_ITERATIONS}..{MAX_ITERATIONS}"
            )

        salted = hashlib.pbkdf2_hmac(self._hash, self._password, salt, iterations)
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        server_key = self._hmac(salted, b"Server Key")

        channel_binding = base64.b64encode(self._gs2_header.encode("utf-8")).decode("ascii")
        final_without_proof = f"c={channel_binding},r={nonce}"
        auth_message = ",".join(
            (self._client_first_bare, server_first.decode("utf-8"), final_without_proof)
        ).encode("utf-8")
        client_signature = self._hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
        self._expected_server_signature = self._hmac(server_key, auth_message)

        encoded_proof = base64.b64encode(proof).decode("ascii")
        return f"{final_without_proof},p={encoded_proof}".encode("utf-8")

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server signature of the server-final message.

        Raises:
            ScramError: the server reported an error (e=) or the message is
                malformed.
            ServerSignatureError: the signature is missing or wrong, so the
                server does not know the password.
        """
        if self._expected_server_signature is None:
            raise ServerSignatureError(
                "server ended the SCRAM exchange before sending its signature"
            )
        if not server_final:
            raise ServerSignatureError("server accepted the login without sending its signature")
        attributes = _parse_attributes(server_final)
        if "e" in attributes:
            raise ScramError(f"server reported SCRAM error {attributes['e']!r}")
        if "v" not in attributes:
            raise ServerSignatureError("server-final message has no signature (v=)")
        try:
            signature = base64.b64decode(attributes["v"], validate=True)
        except ValueError:
            raise ServerSignatureError("server signature is not valid base64") from None
        if not hmac.compare_digest(signature, self._expected_server_signature):
            raise ServerSignatureError(
                "server signature is wrong: the server does not know the password"
            )
        self.server_verified = True

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self._hash).digest()


# Mechanism selection

def make_mechanism(name: str, username: str, password: str) -> Any:
    """Build the Twisted SASL mechanism object for ``name``.

    Raises:
        ValueError: ``name`` is not one of SUPPORTED_MECHANISMS.
    """
    if name in SCRAM_HASHES:
        return Scram(name, username, password)
    if name == "PLAIN":
        return sasl_mechanisms.Plain(None, username, password)
    raise ValueError(f"unsupported SASL mechanism {name!r}")


def choose_mechanism(
    offered: Sequence[str], allowed: Sequence[str], encrypted: bool, allow_plaintext: bool,
) -> str:
    """Return the strongest mechanism that is offered, allowed and safe here.

    ``allowed`` restricts SUPPORTED_MECHANISMS; its order does not matter,
    the preference is SCRAM-SHA-256, SCRAM-SHA-1, PLAIN. PLAIN is chosen
    only on an encrypted stream, or with ``allow_plaintext``.

    Raises:
        NoUsableMechanism: no mechanism qualifies.
    """
    for name in SUPPORTED_MECHANISMS:
        if name not in allowed or name not in offered:
            continue
        if name == "PLAIN" and not (encrypted or allow_plaintext):
            continue
        return name
    raise NoUsableMechanism(offered, [m for m in SUPPORTED_MECHANISMS if m in allowed], encrypted)


class SASLInitializer(sasl.SASLInitiatingInitializer):
    """SASL step of stream initialisation with SCRAM and a server signature check.

    Twisted's initializer ignores the data of ``<success/>``, where XMPP
    servers put the SCRAM server-final message ("additional data with
    success" in RFC 6120). It also lets an exception of the mechanism escape
    from its challenge handler. This one verifies the server signature before
    accepting the success, and fails the initialisation on any mechanism
    error.

    Args:
        xs: the XML stream.
        allowed: mechanisms the profile allows, a subset of SUPPORTED_MECHANISMS.
        allow_plaintext: accept PLAIN on an unencrypted stream.
    """

    def __init__(
        self, xs: Any, allowed: Sequence[str] = SUPPORTED_MECHANISMS,
        allow_plaintext: bool = False, required: bool = True,
    ) -> None:
        super().__init__(xs, required=required)
        self.allowed = tuple(allowed)
        self.allow_plaintext = allow_plaintext

    def setMechanism(self) -> None:
        """Pick the mechanism and record its name on the stream as ``sasl_mechanism``."""
        authenticator = self.xmlstream.authenticator
        offered = sasl.get_mechanisms(self.xmlstream)
        encrypted = ISSLTransport.providedBy(self.xmlstream.transport)
        name = choose_mechanism(offered, self.allowed, encrypted, self.allow_plaintext)
        try:
            self.mechanism = make_mechanism(name, authenticator.jid.user, authenticator.password)
        except SaslprepError as e:
            raise ScramError(f"the user name or password cannot be used: {e}") from None
        self.xmlstream.sasl_mechanism = name
        log.debug(
            "SASL: server %s offers %s, using %s",
            authenticator.otherHost, ", ".join(offered), name,
        )

    def onChallenge(self, element: domish.Element) -> None:
        try:
            challenge = sasl.fromBase64(str(element))
            response = self.mechanism.getResponse(challenge)
        except sasl.SASLError as e:
            self._fail(e)
            return
        self.sendResponse(response)

    def onSuccess(self, success: domish.Element) -> None:
        if isinstance(self.mechanism, Scram) and not self.mechanism.server_verified:
            try:
                data = str(success).strip()
                # An empty success is valid only when the server-final
                # message already came as a challenge.
                server_final = sasl.fromBase64(data) if data not in ("", "=") else b""
                self.mechanism.verify_server_final(server_final)
            except sasl.SASLError as e:
                self._fail(e)
                return
        super().onSuccess(success)

    def _fail(self, error: sasl.SASLError) -> None:
        """Stop listening to the exchange and fail the initialisation with ``error``."""
        self.xmlstream.removeObserver("/challenge", self.onChallenge)
        self.xmlstream.removeObserver("/success", self.onSuccess)
        self.xmlstream.removeObserver("/failure", self.onFailure)
        if self._deferred is not None and not self._deferred.called:
            self._deferred.errback(error)
