"""Exceptions raised by the backend core and its plugins.

Every error that can reach a frontend derives from :class:`BackendError`. The
bridge sends the class name as the error type and ``str(error)`` as the message,
so messages must name the value involved and say what to do.
"""


class BackendError(Exception):
    """Base class of the errors that the bridge reports to frontends."""


class ConfigError(BackendError):
    """The configuration file or an option value is invalid."""


class NotFound(BackendError):
    """A requested object does not exist."""


class ProfileNotFound(NotFound):
    """No profile has the requested name."""


class ProfileExists(BackendError):
    """A profile with this name already exists."""


class ProfileNotConnected(BackendError):
    """The profile has no connected XMPP client."""


class InvalidValue(BackendError):
    """An argument has an invalid value."""


class ConnectionError_(BackendError):
    """Connecting to the XMPP server failed (refused, unreachable, timeout, TLS)."""


class AuthError(BackendError):
    """The XMPP server rejected the credentials."""


class PubsubError(BackendError):
    """A pubsub request failed; the message names service, node and condition."""


class StorageError(BackendError):
    """The database could not be opened, upgraded or written."""


class PluginError(BackendError):
    """A plugin could not be loaded (missing dependency, invalid PLUGIN_INFO)."""
