"""The backend's INI configuration file.

The file is ``libervia.conf`` in the XDG config directory (see
:mod:`libervia.backend.core.paths`). Sections used by the core:

``[storage]``
    ``db_url``: SQLAlchemy URL of the database; ``LIBERVIA_DB_URL`` overrides it.
``[xmpp]``
    Connection defaults for every profile, overridden by the profile's own
    options: ``host``, ``port``, ``ca_file``, ``allow_plaintext``,
    ``direct_tls`` and ``sasl_mechanisms``; and, for every profile,
    ``connect_timeout`` and ``iq_timeout`` (seconds), the largest stanza
    accepted, ``max_stanza_size`` (bytes) and ``max_stanza_elements``, and the
    reconnection policy ``reconnect_initial_delay``, ``reconnect_factor``,
    ``reconnect_max_delay`` and ``reconnect_jitter``.
``[presence]``
    ``auto_accept``: which presence subscription requests are approved:
    ``roster`` (contacts in the roster, the default), ``all`` or ``none``.
``[pubsub_cache]``
    ``strategy``: ``cache`` (default) or ``no_cache`` to send every request to
    the network; ``sync_page_size`` (500), ``max_items_per_node`` (100000),
    ``sync_retry_delay`` (60 seconds) and ``max_parallel_syncs`` (4), described
    with the pubsub cache in doc/developer.rst.
``[logging]``
    ``level``: a :mod:`logging` level name.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path
from typing import Any

from libervia.backend.core import constants as C
from libervia.backend.core import paths
from libervia.backend.core.exceptions import ConfigError

_MISSING = object()


class Config:
    """Read-only access to the INI configuration, with typed getters."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else paths.config_file()
        self._parser = configparser.ConfigParser(interpolation=None)
        if self.path.exists():
            try:
                self._parser.read(self.path, encoding="utf-8")
            except configparser.Error as e:
                raise ConfigError(
                    f"invalid config file {self.path}: {e}; fix or remove the file"
                ) from e

    def get(self, section: str, option: str, default: Any = None) -> Any:
        """Return the string value of ``option`` in ``section``, or ``default``."""
        return self._parser.get(section, option, fallback=default)

    def getboolean(self, section: str, option: str, default: bool = False) -> bool:
        """Return a boolean option; raise ConfigError on a value that is not boolean."""
        try:
            return self._parser.getboolean(section, option, fallback=default)
        except ValueError as e:
            value = self._parser.get(section, option)
            raise ConfigError(
                f"invalid boolean {value!r} for [{section}] {option} in {self.path}: "
                "use true or false"
            ) from e

    def getint(self, section: str, option: str, default: int | None = None) -> int | None:
        """Return an integer option; raise ConfigError on a value that is not an integer."""
        try:
            return self._parser.getint(section, option, fallback=default)
        except ValueError as e:
            value = self._parser.get(section, option)
            raise ConfigError(
                f"invalid integer {value!r} for [{section}] {option} in {self.path}"
            ) from e

    def getfloat(self, section: str, option: str, default: float | None = None) -> float | None:
        """Return a float option; raise ConfigError on a value that is not a number."""
        try:
            return self._parser.getfloat(section, option, fallback=default)
        except ValueError as e:
            value = self._parser.get(section, option)
            raise ConfigError(
                f"invalid number {value!r} for [{section}] {option} in {self.path}"
            ) from e

    def db_url(self) -> str | None:
        """Return the database URL from the environment or the file, None for the default."""
        return os.environ.get(C.ENV_DB_URL) or self.get("storage", "db_url")
