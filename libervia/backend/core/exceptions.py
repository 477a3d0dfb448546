"""Exceptions raised by the backend core and its plugins.

Every error that can reach a frontend derives from :class:`BackendError`. The
bridge sends the class name as the error type and ``str(error)`` as the message,
so messages must name the value involved and what to do next.
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


class PubsubConditionError(PubsubError):
    """A pubsub service returned an error condition for a request.

    The message names the request, the service, the node and the condition.
    ``condition`` is the XMPP stanza error condition, ``pubsub_condition`` the
    pubsub-specific one (``invalid-jid``, ``unsupported``...) and ``feature``
    the pubsub feature named by ``unsupported``; each may be None.
    """

    def __init__(
        self,
        message: str,
        service: str = "",
        node: str | None = None,
        condition: str = "",
        pubsub_condition: str | None = None,
        feature: str | None = None,
        text: str | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.node = node
        self.condition = condition
        self.pubsub_condition = pubsub_condition
        self.feature = feature
        self.text = text

    @property
    def app_condition(self) -> str | None:
        """Return the pubsub-specific condition (name kept for older callers)."""
        return self.pubsub_condition


class PubsubItemNotFound(PubsubConditionError):
    """The node, the item or the requested page does not exist (item-not-found)."""


class PubsubForbidden(PubsubConditionError):
    """The profile may not do this on the node (forbidden)."""


class PubsubNotAuthorized(PubsubConditionError):
    """The node's access model rejects the profile (not-authorized)."""


class PubsubFeatureNotImplemented(PubsubConditionError):
    """The service or node lacks the feature; ``feature`` names it (feature-not-implemented)."""


class PubsubConflict(PubsubConditionError):
    """The node already exists, or is full (conflict)."""


class PubsubNotAcceptable(PubsubConditionError):
    """The service does not accept the values sent (not-acceptable)."""


class PubsubPreconditionNotMet(PubsubConditionError):
    """Publish options do not match the node configuration (precondition-not-met)."""


class PubsubBadRequest(PubsubConditionError):
    """The service found the request malformed (bad-request)."""


class PubsubNotAllowed(PubsubConditionError):
    """The node does not allow this, e.g. a whitelist node (not-allowed)."""


class PubsubTimeout(PubsubError):
    """The pubsub service did not respond within the IQ timeout."""
