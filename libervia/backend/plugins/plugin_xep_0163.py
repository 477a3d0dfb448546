"""XEP-0163 Personal Eventing Protocol: notifications from contacts' PEP nodes.

A PEP service sends the items published on a node to the contacts who share
presence with the owner and whose entity capabilities (XEP-0115) include the
feature ``NODE+notify``, without any explicit subscription. A plugin that
wants these notifications for a node calls :meth:`XEP_0163.add_interest` from
its constructor, which adds that feature to the caps.

The notifications are ordinary pubsub event messages from the contact's bare
JID: the XEP-0060 plugin parses them and runs the node callbacks registered
with ``add_node_callback``, as for notifications of explicit subscriptions.
Servers may deliver one publication more than once (Prosody 0.12 sends it to
the bare and to the full JID), so callbacks must be idempotent. The pubsub
cache stores items by id, so a repeated item replaces itself.
"""

from __future__ import annotations

import logging
from typing import Any

from libervia.backend.core.exceptions import InvalidValue

log = logging.getLogger(__name__)

PLUGIN_INFO = {
    "name": "Personal Eventing Protocol",
    "import_name": "XEP-0163",
    "type": "XEP",
    "dependencies": ["XEP-0060", "XEP-0115"],
    "recommendations": [],
    "main": "XEP_0163",
    "modes": ["client"],
    "description": "PEP (XEP-0163): +notify features for contacts' node notifications",
}

NS_PEP = "http://jabber.org/protocol/pubsub#pep"
NOTIFY_SUFFIX = "+notify"


class XEP_0163:
    """Registry of the PEP nodes whose notifications the client wants."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self._caps = host.plugins["XEP-0115"]
        self._interests: set[str] = set()

    @property
    def interests(self) -> list[str]:
        """Return the node names announced with ``+notify``, sorted."""
        return sorted(self._interests)

    def add_interest(self, node: str) -> None:
        """Ask contacts' PEP services for notifications of ``node``.

        Adds ``NODE+notify`` to the entity capabilities. Call it from a
        plugin constructor, before the profiles connect. Raises InvalidValue
        for an empty node name or one that already ends with ``+notify``.
        """
        if not node or not isinstance(node, str):
            raise InvalidValue(f"invalid PEP node {node!r}: use a non-empty node name")
        if node.endswith(NOTIFY_SUFFIX):
            raise InvalidValue(
                f"invalid PEP node {node!r}: give the node name without {NOTIFY_SUFFIX}"
            )
        self._interests.add(node)
        self._caps.add_feature(node + NOTIFY_SUFFIX)
        log.debug("PEP notifications requested for node %s", node)
