"""Tests of Config on real INI files: typed getters, errors and the database URL."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from libervia.backend.core import constants as C
from libervia.backend.core.config import Config
from libervia.backend.core.exceptions import ConfigError


def write_config(tmp_path: Path, text: str) -> Path:
    """Write an INI file into ``tmp_path`` and return its path."""
    path = tmp_path / "libervia.conf"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """Return a Config read from a file with values of every type."""
    path = write_config(
        tmp_path,
        """
        [xmpp]
        host = xmpp.example.org
        port = 5223
        allow_plaintext = yes
        connect_timeout = 2.5
        percent = 100%

        [pubsub_cache]
        strategy = no_cache

        [broken]
        flag = maybe
        count = twelve
        ratio = fast
        """,
    )
    return Config(path)


class GetTests:
    """String values and defaults."""

    def test_value(self, config: Config) -> None:
        assert config.get("xmpp", "host") == "xmpp.example.org"

    def test_missing_option_default(self, config: Config) -> None:
        assert config.get("xmpp", "ca_file", "/etc/ca.pem") == "/etc/ca.pem"

    def test_missing_section_default(self, config: Config) -> None:
        assert config.get("nothing", "host") is None

    def test_no_interpolation(self, config: Config) -> None:
        # "%" is kept as typed: interpolation would reject or rewrite it.
        assert config.get("xmpp", "percent") == "100%"

    def test_missing_file_empty(self, tmp_path: Path) -> None:
        config = Config(tmp_path / "absent.conf")

        assert config.get("pubsub_cache", "strategy", "cache") == "cache"


class TypedGetterTests:
    """getboolean, getint and getfloat."""

    def test_boolean(self, config: Config) -> None:
        assert config.getboolean("xmpp", "allow_plaintext") is True

    def test_boolean_default(self, config: Config) -> None:
        assert config.getboolean("xmpp", "absent", default=True) is True

    def test_boolean_default_false(self, config: Config) -> None:
        assert config.getboolean("nothing", "absent") is False

    def test_int(self, config: Config) -> None:
        assert config.getint("xmpp", "port") == 5223

    def test_int_default(self, config: Config) -> None:
        assert config.getint("xmpp", "absent", 42) == 42

    def test_int_default_none(self, config: Config) -> None:
        assert config.getint("xmpp", "absent") is None

    def test_float(self, config: Config) -> None:
        assert config.getfloat("xmpp", "connect_timeout") == 2.5

    def test_float_from_int_text(self, config: Config) -> None:
        assert config.getfloat("xmpp", "port") == 5223.0

    def test_float_default(self, config: Config) -> None:
        assert config.getfloat("xmpp", "absent", 1.5) == 1.5


class InvalidValueTests:
    """Invalid typed values raise ConfigError naming value, option, section and file."""

    @pytest.mark.parametrize(
        "getter, option, value, kind",
        [
            ("getboolean", "flag", "maybe", "boolean"),
            ("getint", "count", "twelve", "integer"),
            ("getfloat", "ratio", "fast", "number"),
        ],
    )
    def test_message(self, config: Config, getter: str, option: str, value: str, kind: str) -> None:
        with pytest.raises(ConfigError) as info:
            getattr(config, getter)("broken", option)

        message = str(info.value)
        assert f"invalid {kind}" in message
        assert repr(value) in message
        assert f"[broken] {option}" in message
        assert str(config.path) in message

    def test_float_text_not_int(self, config: Config) -> None:
        with pytest.raises(ConfigError, match="invalid integer '2.5'"):
            config.getint("xmpp", "connect_timeout")

    def test_boolean_hint(self, config: Config) -> None:
        with pytest.raises(ConfigError, match="use true or false"):
            config.getboolean("broken", "flag")


class FileErrorTests:
    """A file that is not valid INI raises ConfigError naming the file."""

    def test_no_section_header(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "db_url = sqlite:///x.db\n")

        with pytest.raises(ConfigError) as info:
            Config(path)

        assert str(path) in str(info.value)

    def test_duplicate_option(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[xmpp]\nport = 1\nport = 2\n")

        with pytest.raises(ConfigError, match="fix or remove the file"):
            Config(path)


class DbUrlTests:
    """LIBERVIA_DB_URL overrides [storage] db_url."""

    def test_from_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(C.ENV_DB_URL, raising=False)
        path = write_config(tmp_path, "[storage]\ndb_url = sqlite+aiosqlite:///file.db\n")

        assert Config(path).db_url() == "sqlite+aiosqlite:///file.db"

    def test_env_overrides_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(C.ENV_DB_URL, "sqlite+aiosqlite:///env.db")
        path = write_config(tmp_path, "[storage]\ndb_url = sqlite+aiosqlite:///file.db\n")

        assert Config(path).db_url() == "sqlite+aiosqlite:///env.db"

    def test_env_without_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(C.ENV_DB_URL, "sqlite+aiosqlite:///env.db")

        assert Config(tmp_path / "absent.conf").db_url() == "sqlite+aiosqlite:///env.db"

    def test_empty_env_ignored(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(C.ENV_DB_URL, "")
        path = write_config(tmp_path, "[storage]\ndb_url = sqlite+aiosqlite:///file.db\n")

        assert Config(path).db_url() == "sqlite+aiosqlite:///file.db"

    def test_none_by_default(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(C.ENV_DB_URL, raising=False)

        assert Config(tmp_path / "absent.conf").db_url() is None
