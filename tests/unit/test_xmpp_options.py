"""Tests of ConnectionOptions.from_mapping: profile params and [xmpp] config values."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.words.protocols.jabber import xmlstream as jabber_xmlstream
from twisted.words.xish import domish

from libervia.backend.core.exceptions import ConfigError
from libervia.backend.core.xmpp import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IQ_TIMEOUT,
    DEFAULT_PORT,
    ConnectionOptions,
    CountingXmlStream,
)


class DefaultsTests:
    """Absent, None and empty values keep the defaults."""

    def test_empty_mapping(self) -> None:
        assert ConnectionOptions.from_mapping({}) == ConnectionOptions()

    def test_default_values(self) -> None:
        options = ConnectionOptions()

        assert options.host is None
        assert options.port == DEFAULT_PORT
        assert options.ca_file is None
        assert options.allow_plaintext is False
        assert options.connect_timeout == DEFAULT_CONNECT_TIMEOUT
        assert options.iq_timeout == DEFAULT_IQ_TIMEOUT

    @pytest.mark.parametrize("unset", [None, ""])
    def test_unset_values(self, unset: Any) -> None:
        # Config.get returns None for an absent option; an INI line "port =" gives "".
        values = {
            key: unset
            for key in ("host", "port", "ca_file", "connect_timeout", "iq_timeout")
        }

        assert ConnectionOptions.from_mapping(values) == ConnectionOptions()


class PortTests:
    """Ports from numbers or strings, within 1..65535."""

    @pytest.mark.parametrize(
        "value, expected", [(5223, 5223), ("5269", 5269), ("1", 1), (65535, 65535)]
    )
    def test_valid(self, value: Any, expected: int) -> None:
        assert ConnectionOptions.from_mapping({"port": value}).port == expected

    @pytest.mark.parametrize("value", [0, "0", 65536, "-1", 100000])
    def test_out_of_range(self, value: Any) -> None:
        with pytest.raises(ConfigError, match="between 1 and 65535"):
            ConnectionOptions.from_mapping({"port": value})

    @pytest.mark.parametrize("value", ["abc", "52 22", "5222.0", [5222], {}])
    def test_not_a_number(self, value: Any) -> None:
        with pytest.raises(ConfigError) as info:
            ConnectionOptions.from_mapping({"port": value})

        assert f"invalid port {value!r}" in str(info.value)

    def test_fractional_port_raises(self) -> None:
        with pytest.raises(ConfigError):
            ConnectionOptions.from_mapping({"port": 5222.5})


class BooleanTests:
    """allow_plaintext from booleans and from INI strings."""

    @pytest.mark.parametrize("value", [True, 1, "1", "true", "True", "yes", "on", " ON "])
    def test_true(self, value: Any) -> None:
        assert ConnectionOptions.from_mapping({"allow_plaintext": value}).allow_plaintext is True

    @pytest.mark.parametrize("value", [False, 0, "0", "false", "no", "off", ""])
    def test_false(self, value: Any) -> None:
        assert ConnectionOptions.from_mapping({"allow_plaintext": value}).allow_plaintext is False

    def test_none_keeps_default(self) -> None:
        assert ConnectionOptions.from_mapping({"allow_plaintext": None}).allow_plaintext is False

    def test_invalid_string_raises(self) -> None:
        with pytest.raises(ConfigError):
            ConnectionOptions.from_mapping({"allow_plaintext": "maybe"})


class TimeoutTests:
    """connect_timeout and iq_timeout in seconds."""

    @pytest.mark.parametrize("key", ["connect_timeout", "iq_timeout"])
    @pytest.mark.parametrize("value, expected", [("2.5", 2.5), (3, 3.0), ("10", 10.0)])
    def test_valid(self, key: str, value: Any, expected: float) -> None:
        options = ConnectionOptions.from_mapping({key: value})

        assert getattr(options, key) == expected

    @pytest.mark.parametrize("key", ["connect_timeout", "iq_timeout"])
    @pytest.mark.parametrize("value", ["soon", "1s", [1]])
    def test_invalid(self, key: str, value: Any) -> None:
        with pytest.raises(ConfigError) as info:
            ConnectionOptions.from_mapping({key: value})

        message = str(info.value)
        assert f"invalid {key} {value!r}" in message
        assert "number of seconds" in message

    def test_negative_raises(self) -> None:
        with pytest.raises(ConfigError):
            ConnectionOptions.from_mapping({"connect_timeout": "-1"})


class TextOptionsTests:
    """host and ca_file are kept as strings."""

    def test_host(self) -> None:
        assert ConnectionOptions.from_mapping({"host": "127.0.0.1"}).host == "127.0.0.1"

    def test_ca_file(self) -> None:
        options = ConnectionOptions.from_mapping({"ca_file": "/tmp/ca.pem"})

        assert options.ca_file == "/tmp/ca.pem"

    def test_unrelated_keys_ignored(self) -> None:
        assert ConnectionOptions.from_mapping({"password": "x"}) == ConnectionOptions()

    def test_all_together(self) -> None:
        options = ConnectionOptions.from_mapping(
            {
                "host": "localhost",
                "port": "5322",
                "ca_file": "ca.pem",
                "allow_plaintext": "false",
                "connect_timeout": "4",
                "iq_timeout": "8",
            }
        )

        assert options == ConnectionOptions(
            host="localhost",
            port=5322,
            ca_file="ca.pem",
            allow_plaintext=False,
            connect_timeout=4.0,
            iq_timeout=8.0,
        )


class DirectTlsTests:
    def test_default_off(self) -> None:
        assert ConnectionOptions().direct_tls is False

    @pytest.mark.parametrize("value", [True, "true", "yes", 1])
    def test_on(self, value: Any) -> None:
        assert ConnectionOptions.from_mapping({"direct_tls": value}).direct_tls is True

    def test_invalid(self) -> None:
        with pytest.raises(ConfigError, match="direct_tls"):
            ConnectionOptions.from_mapping({"direct_tls": "maybe"})


class SaslMechanismsTests:
    """sasl_mechanisms from a list (profile params) or a string (config file)."""

    def test_default_all_supported(self) -> None:
        assert ConnectionOptions().sasl_mechanisms == ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")

    def test_list(self) -> None:
        options = ConnectionOptions.from_mapping({"sasl_mechanisms": ["scram-sha-1", "PLAIN"]})

        assert options.sasl_mechanisms == ("SCRAM-SHA-1", "PLAIN")

    def test_comma_separated_string(self) -> None:
        options = ConnectionOptions.from_mapping({"sasl_mechanisms": "SCRAM-SHA-256, PLAIN"})

        assert options.sasl_mechanisms == ("SCRAM-SHA-256", "PLAIN")

    def test_duplicates_removed(self) -> None:
        options = ConnectionOptions.from_mapping({"sasl_mechanisms": ["PLAIN", "PLAIN"]})

        assert options.sasl_mechanisms == ("PLAIN",)

    def test_digest_md5_rejected(self) -> None:
        with pytest.raises(ConfigError, match="DIGEST-MD5 is obsolete"):
            ConnectionOptions.from_mapping({"sasl_mechanisms": ["DIGEST-MD5"]})

    def test_unknown_rejected(self) -> None:
        with pytest.raises(ConfigError, match="unknown mechanism 'X-OAUTH2'"):
            ConnectionOptions.from_mapping({"sasl_mechanisms": "X-OAUTH2"})

    @pytest.mark.parametrize("value", [[], " , ", [""]])
    def test_empty_rejected(self, value: Any) -> None:
        with pytest.raises(ConfigError, match="empty"):
            ConnectionOptions.from_mapping({"sasl_mechanisms": value})

    def test_wrong_type_rejected(self) -> None:
        with pytest.raises(ConfigError, match="invalid sasl_mechanisms"):
            ConnectionOptions.from_mapping({"sasl_mechanisms": 5})


class ReconnectOptionsTests:
    def test_defaults_build_policy(self) -> None:
        policy = ConnectionOptions().backoff_policy()

        assert policy.initial_delay == 1.0
        assert policy.factor == 2.0
        assert policy.max_delay == 120.0
        assert policy.jitter == 0.5

    def test_values_from_config_strings(self) -> None:
        options = ConnectionOptions.from_mapping(
            {
                "reconnect_initial_delay": "0.5",
                "reconnect_factor": "3",
                "reconnect_max_delay": "30",
                "reconnect_jitter": "0",
            }
        )
        policy = options.backoff_policy()

        assert (policy.initial_delay, policy.factor, policy.max_delay, policy.jitter) == (
            0.5, 3.0, 30.0, 0.0,
        )

    @pytest.mark.parametrize(
        "key, value",
        [
            ("reconnect_initial_delay", "0"),
            ("reconnect_initial_delay", "soon"),
            ("reconnect_factor", "0.5"),
            ("reconnect_max_delay", "-1"),
            ("reconnect_jitter", "-0.1"),
            ("reconnect_jitter", "1.5"),
            ("reconnect_max_delay", "inf"),
            ("reconnect_factor", True),
        ],
    )
    def test_invalid(self, key: str, value: Any) -> None:
        with pytest.raises(ConfigError, match=key):
            ConnectionOptions.from_mapping({key: value})

    def test_max_below_initial(self) -> None:
        with pytest.raises(ConfigError, match="reconnect_max_delay"):
            ConnectionOptions.from_mapping(
                {"reconnect_initial_delay": "10", "reconnect_max_delay": "5"}
            )


class StanzaLimitTests:
    """max_stanza_size and max_stanza_elements, applied to each stream's parser."""

    @pytest.mark.parametrize("key", ["max_stanza_size", "max_stanza_elements"])
    def test_valid(self, key: str) -> None:
        options = ConnectionOptions.from_mapping({key: "1000"})

        assert getattr(options, key) == 1000

    @pytest.mark.parametrize("key", ["max_stanza_size", "max_stanza_elements"])
    @pytest.mark.parametrize("value", ["0", "-5", "big", "1.5", True])
    def test_invalid(self, key: str, value: Any) -> None:
        with pytest.raises(ConfigError) as info:
            ConnectionOptions.from_mapping({key: value})

        assert f"invalid {key} {value!r}" in str(info.value)

    def test_defaults_above_twisted(self) -> None:
        options = ConnectionOptions()

        assert options.max_stanza_size > domish.ExpatElementStream.maxStanzaSize
        # A disco#items listing of 200,000 item ids, plus its iq and query.
        assert options.max_stanza_elements >= 200_002

    @staticmethod
    def _stream(max_elements: int) -> tuple[CountingXmlStream, StringTransport]:
        xs = CountingXmlStream(jabber_xmlstream.Authenticator())
        xs.max_stanza_elements = max_elements
        transport = StringTransport()
        xs.makeConnection(transport)
        xs.dataReceived(
            b"<stream:stream xmlns='jabber:client' "
            b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )
        return xs, transport

    @staticmethod
    def _listing(count: int) -> bytes:
        items = b"".join(b"<item jid='pubsub.example.org' name='%d'/>" % i for i in range(count))
        return (
            b"<iq type='result' id='1'><query xmlns='http://jabber.org/protocol/disco#items'>"
            + items + b"</query></iq>"
        )

    def test_limit_set_on_parser_only(self) -> None:
        xs, _ = self._stream(max_elements=150_000)

        assert xs.stream.maxElementCount == 150_000
        assert domish.ExpatElementStream.maxElementCount == 100_000

    def test_stanza_within_limit_received(self) -> None:
        xs, transport = self._stream(max_elements=150_000)
        received: list[domish.Element] = []
        xs.addObserver("/iq", received.append)

        xs.dataReceived(self._listing(120_000))

        assert len(received) == 1
        assert not transport.disconnecting

    def test_stanza_over_limit_closes_stream(self) -> None:
        xs, transport = self._stream(max_elements=50)

        xs.dataReceived(self._listing(60))

        assert transport.disconnecting
