"""Tests of the client SASL: SASLprep, SCRAM against the RFC vectors, mechanism choice.

The exchanges of RFC 5802 section 5 (SCRAM-SHA-1) and RFC 7677 section 3
(SCRAM-SHA-256) are replayed with their client nonces injected: the client
messages must match the RFC byte for byte, and the RFC's server signature
must be accepted. The SASL initializer is driven through a fake stream by a
small server-side SCRAM written here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from twisted.words.protocols.jabber import sasl as twisted_sasl
from twisted.words.protocols.jabber import sasl_mechanisms, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from libervia.backend.core import sasl
from libervia.testing.fake_stream import FakeXmlStream

# RFC 5802 section 5: user "user", password "pencil".
RFC5802 = {
    "name": "SCRAM-SHA-1",
    "client_nonce": "fyko+d2lbbFgONRv9qkxdawL",
    "client_first": b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    "server_first": b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    "client_final": (
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
        b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    ),
    "server_final": b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
}

# RFC 7677 section 3: user "user", password "pencil".
RFC7677 = {
    "name": "SCRAM-SHA-256",
    "client_nonce": "rOprNGfwEbeRWgbNEkqO",
    "client_first": b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    "server_first": (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    ),
    "client_final": (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    ),
    "server_final": b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
}

VECTORS = pytest.mark.parametrize("vector", [RFC5802, RFC7677], ids=["rfc5802", "rfc7677"])


def _rfc_mechanism(vector: dict) -> sasl.Scram:
    return sasl.Scram(vector["name"], "user", "pencil", client_nonce=vector["client_nonce"])


def _after_client_final(vector: dict) -> sasl.Scram:
    mechanism = _rfc_mechanism(vector)
    mechanism.getInitialResponse()
    mechanism.getResponse(vector["server_first"])
    return mechanism


class SaslprepTests:
    """The examples of RFC 4013 section 3, and the mappings of section 2."""

    @pytest.mark.parametrize(
        "text, expected",
        [
            ("I\u00adX", "IX"),  # soft hyphen mapped to nothing
            ("user", "user"),
            ("USER", "USER"),  # case is preserved
            ("\u00aa", "a"),  # NFKC
            ("\u2168", "IX"),  # NFKC
            ("a\u00a0b", "a b"),  # non-ASCII space mapped to SPACE
            ("a\u200bb", "ab"),  # zero width space mapped to nothing
        ],
    )
    def test_mapping(self, text: str, expected: str) -> None:
        assert sasl.saslprep(text) == expected

    def test_prohibited_control_character(self) -> None:
        with pytest.raises(sasl.SaslprepError, match="U\\+0007"):
            sasl.saslprep("\u0007")

    def test_bidirectional_check(self) -> None:
        with pytest.raises(sasl.SaslprepError, match="right-to-left"):
            sasl.saslprep("\u0627\u0031")

    def test_right_to_left_string_accepted(self) -> None:
        assert sasl.saslprep("\u0627\u0031\u0628") == "\u0627\u0031\u0628"

    def test_unassigned_allowed_in_queries(self) -> None:
        assert sasl.saslprep("a\u0221") == "a\u0221"

    def test_unassigned_rejected_in_stored_strings(self) -> None:
        with pytest.raises(sasl.SaslprepError, match="unassigned"):
            sasl.saslprep("a\u0221", allow_unassigned=False)

    def test_error_does_not_quote_the_text(self) -> None:
        with pytest.raises(sasl.SaslprepError) as info:
            sasl.saslprep("secret\u0007password")
        assert "secret" not in str(info.value)


class ScramVectorTests:
    """SCRAM exchanges of RFC 5802 and RFC 7677 with the RFC's client nonce."""

    @VECTORS
    def test_client_first(self, vector: dict) -> None:
        assert _rfc_mechanism(vector).getInitialResponse() == vector["client_first"]

    @VECTORS
    def test_client_final(self, vector: dict) -> None:
        mechanism = _rfc_mechanism(vector)
        mechanism.getInitialResponse()
        assert mechanism.getResponse(vector["server_first"]) == vector["client_final"]

    @VECTORS
    def test_server_signature_accepted(self, vector: dict) -> None:
        mechanism = _after_client_final(vector)
        mechanism.verify_server_final(vector["server_final"])
        assert mechanism.server_verified is True

    @VECTORS
    def test_server_final_as_challenge(self, vector: dict) -> None:
        mechanism = _after_client_final(vector)
        assert mechanism.getResponse(vector["server_final"]) == b""
        assert mechanism.server_verified is True

    @VECTORS
    def test_wrong_server_signature(self, vector: dict) -> None:
        mechanism = _after_client_final(vector)
        wrong = b"v=" + base64.b64encode(b"\x00" * hashlib.new(mechanism._hash).digest_size)
        with pytest.raises(sasl.ServerSignatureError, match="does not know the password"):
            mechanism.verify_server_final(wrong)
        assert mechanism.server_verified is False

    @VECTORS
    def test_empty_server_final(self, vector: dict) -> None:
        mechanism = _after_client_final(vector)
        with pytest.raises(sasl.ServerSignatureError, match="without sending its signature"):
            mechanism.verify_server_final(b"")

    def test_signature_before_server_first(self) -> None:
        mechanism = _rfc_mechanism(RFC5802)
        mechanism.getInitialResponse()
        with pytest.raises(sasl.ServerSignatureError, match="before sending its signature"):
            mechanism.verify_server_final(RFC5802["server_final"])

    def test_random_nonces_differ(self) -> None:
        first = sasl.Scram("SCRAM-SHA-256", "user", "pencil").getInitialResponse()
        second = sasl.Scram("SCRAM-SHA-256", "user", "pencil").getInitialResponse()
        assert first != second

    def test_username_escaped(self) -> None:
        mechanism = sasl.Scram("SCRAM-SHA-1", "a=b,c", "pencil", client_nonce="abc")
        assert mechanism.getInitialResponse() == b"n,,n=a=3Db=2Cc,r=abc"

    def test_password_saslprepped(self) -> None:
        # A soft hyphen maps to nothing, so the proof equals the RFC one.
        mechanism = sasl.Scram(
            "SCRAM-SHA-1", "user", "pen\u00adcil", client_nonce=RFC5802["client_nonce"]
        )
        mechanism.getInitialResponse()
        assert mechanism.getResponse(RFC5802["server_first"]) == RFC5802["client_final"]

    def test_unknown_mechanism_name(self) -> None:
        with pytest.raises(ValueError, match="SCRAM-SHA-512"):
            sasl.Scram("SCRAM-SHA-512", "user", "pencil")


class ScramServerMessageTests:
    """Malformed or hostile server messages fail the exchange with ScramError."""

    def _respond(self, server_first: bytes) -> bytes:
        mechanism = sasl.Scram("SCRAM-SHA-1", "user", "pencil", client_nonce="abc")
        mechanism.getInitialResponse()
        return mechanism.getResponse(server_first)

    def test_nonce_not_extending_client_nonce(self) -> None:
        with pytest.raises(sasl.ScramError, match="nonce"):
            self._respond(b"r=xyz123,s=QSXCR+Q6sek8bf92,i=4096")

    def test_nonce_equal_to_client_nonce(self) -> None:
        with pytest.raises(sasl.ScramError, match="nonce"):
            self._respond(b"r=abc,s=QSXCR+Q6sek8bf92,i=4096")

    def test_low_iteration_count(self) -> None:
        with pytest.raises(sasl.ScramError, match="1000 iterations"):
            self._respond(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=1000")

    def test_huge_iteration_count(self) -> None:
        with pytest.raises(sasl.ScramError, match="iterations"):
            self._respond(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=999999999")

    def test_missing_salt(self) -> None:
        with pytest.raises(sasl.ScramError, match="s= attribute"):
            self._respond(b"r=abcdef,i=4096")

    def test_invalid_salt(self) -> None:
        with pytest.raises(sasl.ScramError, match="invalid salt"):
            self._respond(b"r=abcdef,s=!!!,i=4096")

    def test_mandatory_extension(self) -> None:
        with pytest.raises(sasl.ScramError, match="m="):
            self._respond(b"m=ext,r=abcdef,s=QSXCR+Q6sek8bf92,i=4096")

    def test_malformed_attribute(self) -> None:
        with pytest.raises(sasl.ScramError, match="malformed"):
            self._respond(b"garbage")

    def test_server_error_attribute(self) -> None:
        mechanism = _after_client_final(RFC5802)
        with pytest.raises(sasl.ScramError, match="invalid-proof"):
            mechanism.verify_server_final(b"e=invalid-proof")


class ChooseMechanismTests:
    """Preference SCRAM-SHA-256 > SCRAM-SHA-1 > PLAIN, PLAIN only over TLS by default."""

    ALL = sasl.SUPPORTED_MECHANISMS

    @pytest.mark.parametrize(
        "offered, expected",
        [
            (["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"], "SCRAM-SHA-256"),
            (["PLAIN", "SCRAM-SHA-1"], "SCRAM-SHA-1"),
            (["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "PLAIN"], "SCRAM-SHA-1"),
            (["DIGEST-MD5", "PLAIN"], "PLAIN"),
        ],
    )
    def test_preference(self, offered: list[str], expected: str) -> None:
        assert sasl.choose_mechanism(offered, self.ALL, True, False) == expected

    def test_allowed_list_restricts(self) -> None:
        offered = ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"]
        assert sasl.choose_mechanism(offered, ["PLAIN"], True, False) == "PLAIN"

    def test_plain_refused_without_tls(self) -> None:
        with pytest.raises(sasl.NoUsableMechanism, match="PLAIN needs TLS"):
            sasl.choose_mechanism(["PLAIN"], self.ALL, False, False)

    def test_plain_with_allow_plaintext(self) -> None:
        assert sasl.choose_mechanism(["PLAIN"], self.ALL, False, True) == "PLAIN"

    def test_scram_without_tls(self) -> None:
        offered = ["PLAIN", "SCRAM-SHA-1"]
        assert sasl.choose_mechanism(offered, self.ALL, False, False) == "SCRAM-SHA-1"

    def test_digest_md5_never_chosen(self) -> None:
        with pytest.raises(sasl.NoUsableMechanism) as info:
            sasl.choose_mechanism(["DIGEST-MD5"], self.ALL, True, False)
        assert "offers SASL mechanisms DIGEST-MD5" in str(info.value)

    def test_error_names_offered_and_allowed(self) -> None:
        with pytest.raises(sasl.NoUsableMechanism) as info:
            sasl.choose_mechanism(["PLAIN", "SCRAM-SHA-1"], ["SCRAM-SHA-256"], True, False)
        message = str(info.value)
        assert "PLAIN, SCRAM-SHA-1" in message
        assert "allows SCRAM-SHA-256" in message

    def test_make_plain(self) -> None:
        mechanism = sasl.make_mechanism("PLAIN", "user", "pencil")
        assert isinstance(mechanism, sasl_mechanisms.Plain)
        assert mechanism.getInitialResponse() == b"\x00user\x00pencil"


class _ScramServer:
    """Server side of SCRAM-SHA-1 for one exchange, as RFC 5802 section 3 describes it."""

    def __init__(self, password: str, salt: bytes = b"0123456789ab", iterations: int = 4096):
        self.salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)
        self.salt = salt
        self.iterations = iterations

    def server_first(self, client_first: bytes) -> bytes:
        self.client_first_bare = client_first.split(b",", 2)[2]
        client_nonce = dict(
            part.split(b"=", 1) for part in self.client_first_bare.split(b",")
        )[b"r"]
        self.nonce = client_nonce + b"server-part"
        self.first = b"r=%s,s=%s,i=%d" % (
            self.nonce, base64.b64encode(self.salt), self.iterations
        )
        return self.first

    def server_final(self, client_final: bytes) -> bytes:
        without_proof = client_final.rsplit(b",p=", 1)[0]
        auth_message = b",".join((self.client_first_bare, self.first, without_proof))
        server_key = hmac.new(self.salted, b"Server Key", "sha1").digest()
        signature = hmac.new(server_key, auth_message, "sha1").digest()
        return b"v=" + base64.b64encode(signature)


def _sasl_element(name: str, data: bytes | None = None) -> domish.Element:
    element = domish.Element((twisted_sasl.NS_XMPP_SASL, name))
    if data is not None:
        element.addContent(base64.b64encode(data).decode("ascii"))
    return element


class InitializerTests:
    """SASLInitializer on a fake stream: mechanism choice and the server signature check."""

    def _stream(self, mechanisms: list[str]) -> FakeXmlStream:
        xs = FakeXmlStream()
        xs.authenticator.jid = JID("user@example.org")
        xs.authenticator.password = "pencil"
        xs.authenticator.otherHost = "example.org"
        features = domish.Element((twisted_sasl.NS_XMPP_SASL, "mechanisms"))
        for name in mechanisms:
            features.addElement("mechanism", content=name)
        xs.features = {(twisted_sasl.NS_XMPP_SASL, "mechanisms"): features}
        return xs

    def _start(self, xs: FakeXmlStream, **kwargs) -> tuple:
        initializer = sasl.SASLInitializer(xs, **kwargs)
        results: list = []
        initializer.start().addBoth(results.append)
        return initializer, results

    def _auth_data(self, xs: FakeXmlStream) -> bytes:
        auth = xs.sent[0]
        return base64.b64decode(str(auth))

    def test_records_mechanism(self) -> None:
        xs = self._stream(["PLAIN", "SCRAM-SHA-1"])
        self._start(xs)
        assert xs.sasl_mechanism == "SCRAM-SHA-1"
        assert xs.sent[0]["mechanism"] == "SCRAM-SHA-1"

    def test_plain_refused_on_plain_stream(self) -> None:
        xs = self._stream(["PLAIN"])
        with pytest.raises(sasl.NoUsableMechanism):
            self._start(xs)

    def test_plain_with_allow_plaintext(self) -> None:
        xs = self._stream(["PLAIN"])
        self._start(xs, allow_plaintext=True)
        assert self._auth_data(xs) == b"\x00user\x00pencil"

    def test_success_with_right_signature(self) -> None:
        xs = self._stream(["SCRAM-SHA-1"])
        server = _ScramServer("pencil")
        _, results = self._start(xs)
        xs.receive(_sasl_element("challenge", server.server_first(self._auth_data(xs))))
        client_final = base64.b64decode(str(xs.sent[1]))
        xs.receive(_sasl_element("success", server.server_final(client_final)))
        assert results == [xmlstream.Reset]

    def test_success_with_wrong_signature(self) -> None:
        xs = self._stream(["SCRAM-SHA-1"])
        server = _ScramServer("not-pencil")
        _, results = self._start(xs)
        xs.receive(_sasl_element("challenge", server.server_first(self._auth_data(xs))))
        client_final = base64.b64decode(str(xs.sent[1]))
        xs.receive(_sasl_element("success", server.server_final(client_final)))
        assert len(results) == 1
        assert results[0].check(sasl.ServerSignatureError)

    def test_success_without_signature(self) -> None:
        xs = self._stream(["SCRAM-SHA-1"])
        server = _ScramServer("pencil")
        _, results = self._start(xs)
        xs.receive(_sasl_element("challenge", server.server_first(self._auth_data(xs))))
        xs.receive(_sasl_element("success"))
        assert len(results) == 1
        assert results[0].check(sasl.ServerSignatureError)

    def test_early_success(self) -> None:
        xs = self._stream(["SCRAM-SHA-1"])
        _, results = self._start(xs)
        xs.receive(_sasl_element("success"))
        assert len(results) == 1
        assert results[0].check(sasl.ServerSignatureError)

    def test_signature_as_last_challenge(self) -> None:
        xs = self._stream(["SCRAM-SHA-1"])
        server = _ScramServer("pencil")
        _, results = self._start(xs)
        xs.receive(_sasl_element("challenge", server.server_first(self._auth_data(xs))))
        client_final = base64.b64decode(str(xs.sent[1]))
        xs.receive(_sasl_element("challenge", server.server_final(client_final)))
        assert str(xs.sent[2]) == ""  # empty response
        xs.receive(_sasl_element("success"))
        assert results == [xmlstream.Reset]

    def test_malformed_challenge_fails(self) -> None:
        xs = self._stream(["SCRAM-SHA-1"])
        _, results = self._start(xs)
        xs.receive(_sasl_element("challenge", b"garbage"))
        assert len(results) == 1
        assert results[0].check(sasl.ScramError)

    def test_failure_condition(self) -> None:
        xs = self._stream(["SCRAM-SHA-1"])
        _, results = self._start(xs)
        failure_elt = domish.Element((twisted_sasl.NS_XMPP_SASL, "failure"))
        failure_elt.addElement("not-authorized")
        xs.receive(failure_elt)
        assert results[0].check(twisted_sasl.SASLAuthError)
        assert results[0].value.condition == "not-authorized"
