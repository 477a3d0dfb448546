"""Roster and presence of each profile (RFC 6121).

Each client gets one handler that fetches the roster when a stream is
established, applies the roster pushes of the server, tracks which contacts'
resources are available, and approves presence subscription requests or
keeps them pending.

The ``[presence] auto_accept`` config option chooses what happens to a
subscription request:

``roster`` (default)
    approve requests from JIDs already in the roster (for instance a contact
    this profile asked to subscribe to), keep the others pending;
``all``
    approve every request;
``none``
    keep every request pending.

A pending request reaches frontends as the ``presence_subscribe_request``
signal. The server delivers pending requests again at each login, so they are
kept in memory only. ``presence_subscribe`` sends a subscription request and,
unless ``auto_accept`` is ``none``, also approves a pending request of the
same contact, so that calling it on both sides gives a mutual subscription.
"""

from __future__ import annotations

import logging
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import defer
from twisted.words.protocols.jabber.jid import JID
from wokkel import xmppim

from libervia.backend.core.exceptions import BackendError, ConfigError, InvalidValue
from libervia.backend.plugins.plugin_xep_0060 import parse_jid

log = logging.getLogger(__name__)

PLUGIN_INFO = {
    "name": "Roster and presence",
    "import_name": "PRESENCE",
    "type": "MISC",
    "dependencies": [],
    "recommendations": [],
    "main": "Presence",
    "modes": ["client"],
    "description": "Roster, presence of contacts and presence subscriptions (RFC 6121)",
}

CONFIG_SECTION = "presence"
AUTO_ACCEPT_ROSTER = "roster"
AUTO_ACCEPT_ALL = "all"
AUTO_ACCEPT_NONE = "none"
AUTO_ACCEPT_CHOICES = (AUTO_ACCEPT_ROSTER, AUTO_ACCEPT_ALL, AUTO_ACCEPT_NONE)

_ROSTER_LOADING = "loading"
_ROSTER_LOADED = "loaded"
_ROSTER_FAILED = "failed"


def subscription_state(item: xmppim.RosterItem) -> str:
    """Return the RFC 6121 subscription attribute of a roster item."""
    if item.subscriptionTo and item.subscriptionFrom:
        return "both"
    if item.subscriptionTo:
        return "to"
    if item.subscriptionFrom:
        return "from"
    return "none"


class RosterPresenceHandler(xmppim.RosterClientProtocol, xmppim.PresenceProtocol):
    """A profile's roster, its contacts' available resources and pending requests."""

    # wokkel's own check of the push sender reads ``parent.jid``, which the
    # stream manager of this backend does not have: _check_push_sender does it.
    allowAnySender = True

    def __init__(self, plugin: "Presence", client: Any) -> None:
        super().__init__()
        self.plugin = plugin
        self.client = client
        #: Roster items by bare JID.
        self.items: dict[str, xmppim.RosterItem] = {}
        #: Available resources by contact's bare JID, then full JID: show, priority, status.
        self.resources: dict[str, dict[str, dict[str, Any]]] = {}
        #: Bare JIDs whose subscription request is pending.
        self.pending_in: set[str] = set()
        self._roster_state = _ROSTER_LOADING
        self._roster_error: Exception | None = None
        self._roster_waiters: list[defer.Deferred] = []

    # stream life cycle

    def connectionInitialized(self) -> None:
        xmppim.RosterClientProtocol.connectionInitialized(self)
        xmppim.PresenceProtocol.connectionInitialized(self)
        self._roster_state = _ROSTER_LOADING
        self._roster_error = None
        defer.ensureDeferred(self._load_roster())

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        # Contacts' presence is sent again after the next initial presence.
        self.resources.clear()

    async def _load_roster(self) -> None:
        try:
            roster = await self.getRoster()
        except Exception as e:
            log.warning("profile %s: getting the roster failed: %s", self.client.profile, e)
            self._set_roster_state(
                _ROSTER_FAILED,
                BackendError(f"getting the roster of profile {self.client.profile} failed: {e}"),
            )
            return
        # Without roster versioning, the result is always a full roster.
        self.items = {item.entity.userhost(): item for item in (roster or {}).values()}
        log.info(
            "profile %s: roster received, contacts: %d", self.client.profile, len(self.items)
        )
        self._set_roster_state(_ROSTER_LOADED)

    def _set_roster_state(self, state: str, error: Exception | None = None) -> None:
        self._roster_state = state
        self._roster_error = error
        waiters, self._roster_waiters = self._roster_waiters, []
        for waiter in waiters:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)

    async def wait_roster(self) -> None:
        """Return once the roster of the current stream is known; raise BackendError if it failed."""
        if self._roster_state == _ROSTER_LOADED:
            return
        if self._roster_state == _ROSTER_FAILED:
            assert self._roster_error is not None
            raise self._roster_error
        waiter: defer.Deferred = defer.Deferred()
        self._roster_waiters.append(waiter)
        await waiter

    # roster pushes

    def _check_push_sender(self, request: xmppim.RosterRequest) -> None:
        """Reject a roster push that does not come from the account's own server."""
        sender = request.sender
        if sender is not None and sender.userhost() != self.client.jid.userhost():
            log.warning(
                "profile %s: roster push from %s ignored", self.client.profile, sender.full()
            )
            raise xmppim.RosterPushIgnored()

    def setReceived(self, request: xmppim.RosterRequest) -> None:
        self._check_push_sender(request)
        item = request.item
        bare = item.entity.userhost()
        self.items[bare] = item
        log.debug(
            "profile %s: roster item %s is now %s",
            self.client.profile, bare, subscription_state(item),
        )
        self.plugin.host.bridge.send_signal(
            "roster_update", profile=self.client.profile, item=self.item_data(bare)
        )

    def removeReceived(self, request: xmppim.RosterRequest) -> None:
        self._check_push_sender(request)
        bare = request.item.entity.userhost()
        self.items.pop(bare, None)
        self.pending_in.discard(bare)
        log.debug("profile %s: roster item %s removed", self.client.profile, bare)
        self.plugin.host.bridge.send_signal(
            "roster_remove", profile=self.client.profile, jid=bare
        )

    def item_data(self, bare: str) -> dict[str, Any]:
        """Return a roster item as a JSON-serialisable dict."""
        item = self.items[bare]
        return {
            "jid": bare,
            "name": item.name or "",
            "groups": sorted(item.groups),
            "subscription": subscription_state(item),
            "ask": bool(item.pendingOut),
            "resources": sorted(self.resources.get(bare, {})),
        }

    # presence

    def availableReceived(self, presence: xmppim.AvailabilityPresence) -> None:
        sender = presence.sender
        if sender is None:
            return
        self.resources.setdefault(sender.userhost(), {})[sender.full()] = {
            "show": presence.show,
            "priority": presence.priority,
            "status": presence.status,
        }

    def unavailableReceived(self, presence: xmppim.AvailabilityPresence) -> None:
        sender = presence.sender
        if sender is None:
            return
        resources = self.resources.get(sender.userhost())
        if resources is None:
            return
        if sender.resource:
            resources.pop(sender.full(), None)
        else:
            resources.clear()
        if not resources:
            del self.resources[sender.userhost()]

    def subscribeReceived(self, presence: xmppim.SubscriptionPresence) -> None:
        if presence.sender is None:
            return
        defer.ensureDeferred(self._answer_subscribe(presence.sender.userhostJID()))

    async def _answer_subscribe(self, contact: JID) -> None:
        """Approve a subscription request, or keep it pending, following auto_accept."""
        bare = contact.userhost()
        try:
            # A request redelivered at login may arrive before the roster.
            await self.wait_roster()
        except BackendError:
            log.debug("profile %s: deciding on %s without the roster", self.client.profile, bare)
        if self.plugin.accepts(self, bare):
            self.subscribed(contact)
            self.pending_in.discard(bare)
            log.info(
                "profile %s: presence subscription of %s approved", self.client.profile, bare
            )
            return
        self.pending_in.add(bare)
        log.info(
            "profile %s: presence subscription request of %s kept pending",
            self.client.profile, bare,
        )
        self.plugin.host.bridge.send_signal(
            "presence_subscribe_request", profile=self.client.profile, jid=bare
        )

    def subscribedReceived(self, presence: xmppim.SubscriptionPresence) -> None:
        if presence.sender is not None:
            log.info(
                "profile %s: %s approved the presence subscription",
                self.client.profile, presence.sender.userhost(),
            )

    def unsubscribedReceived(self, presence: xmppim.SubscriptionPresence) -> None:
        if presence.sender is not None:
            log.info(
                "profile %s: %s denied or cancelled the presence subscription",
                self.client.profile, presence.sender.userhost(),
            )

    def unsubscribeReceived(self, presence: xmppim.SubscriptionPresence) -> None:
        if presence.sender is not None:
            self.pending_in.discard(presence.sender.userhost())


class Presence:
    """Roster and presence plugin: one handler per client and the bridge methods."""

    def __init__(self, host: Any) -> None:
        self.host = host
        policy = host.config.get(CONFIG_SECTION, "auto_accept", AUTO_ACCEPT_ROSTER)
        policy = (policy or AUTO_ACCEPT_ROSTER).strip().lower()
        if policy not in AUTO_ACCEPT_CHOICES:
            raise ConfigError(
                f"invalid [{CONFIG_SECTION}] auto_accept {policy!r}: use "
                f"{', '.join(AUTO_ACCEPT_CHOICES)}"
            )
        self.auto_accept = policy
        host.bridge.register_method("roster_get", self._bridge_roster_get)
        host.bridge.register_method("presence_subscribe", self._bridge_presence_subscribe)

    def get_handler(self, client: Any) -> RosterPresenceHandler:
        handler = RosterPresenceHandler(self, client)
        client.presence_handler = handler
        return handler

    def accepts(self, handler: RosterPresenceHandler, bare: str) -> bool:
        """Return True when auto_accept approves a subscription request from ``bare``."""
        if self.auto_accept == AUTO_ACCEPT_ALL:
            return True
        if self.auto_accept == AUTO_ACCEPT_NONE:
            return False
        return bare in handler.items

    async def roster_get(self, client: Any) -> list[dict[str, Any]]:
        """Return the roster items sorted by JID, once the roster is known."""
        handler: RosterPresenceHandler = client.presence_handler
        await handler.wait_roster()
        return [handler.item_data(bare) for bare in sorted(handler.items)]

    async def presence_subscribe(self, client: Any, contact: JID) -> dict[str, Any]:
        """Ask ``contact`` for a presence subscription and approve its pending request.

        Returns ``{"jid": bare JID, "approved": bool}``, ``approved`` telling
        whether a pending request of the contact was approved as well.
        """
        handler: RosterPresenceHandler = client.presence_handler
        bare_jid = contact.userhostJID()
        bare = bare_jid.full()
        if bare == client.jid.userhost():
            raise InvalidValue(f"cannot subscribe to the presence of the profile's own JID {bare}")
        handler.subscribe(bare_jid)
        approved = False
        if bare in handler.pending_in and self.auto_accept != AUTO_ACCEPT_NONE:
            handler.subscribed(bare_jid)
            handler.pending_in.discard(bare)
            approved = True
        log.info(
            "profile %s: presence subscription requested from %s (pending request approved: %s)",
            client.profile, bare, approved,
        )
        return {"jid": bare, "approved": approved}

    async def _bridge_roster_get(self, profile: str | None = None) -> list[dict[str, Any]]:
        return await self.roster_get(self.host.get_client(profile))

    async def _bridge_presence_subscribe(
        self, jid: str = "", profile: str | None = None
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        contact = parse_jid(jid, "contact")
        if contact is None:
            raise InvalidValue("a contact JID is required to subscribe to its presence")
        return await self.presence_subscribe(client, contact)
