"""An in-memory model of a pubsub node's items, for differential tests.

:class:`NodeModel` tracks the items of a node, in creation order and in
modification order, as a pubsub service applies publish, retract, purge and
``pubsub#max_items`` changes. :func:`expected_page` cuts the page that a
XEP-0059 (RSM) service returns from an ordered list of item ids.

Tests compare what a server or the pubsub cache returns with these models,
so the rules here are those seen on the servers under test, not guesses.
Prosody 0.12 and ejabberd 23.01 both evict the least recently modified items
when a new item takes a node over its ``max_items``. When ``max_items`` is
lowered, Prosody drops the extra items at once, but ejabberd keeps them
until the next publication of a new item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from libervia.backend.plugins.plugin_xep_0059 import RSMRequest, RSMResponse

ORDER_CREATION = "creation"
ORDER_MODIFICATION = "modification"


class NodeModel:
    """The item ids of one node, in creation and modification order, with its max_items.

    ``trim_on_configure`` selects when a lowered ``max_items`` evicts items:
    at once (True, as Prosody 0.12 does) or at the next publication of a new
    item (False, as ejabberd 23.01 does). An edit (a publication with an
    existing id) keeps the item's creation position, moves it last in
    modification order and never evicts anything.
    """

    def __init__(self, max_items: int, trim_on_configure: bool) -> None:
        self.max_items = max_items
        self.trim_on_configure = trim_on_configure
        self._created: list[str] = []
        self._modified: list[str] = []
        # Modification order as a subscriber can know it (see reconcile), and
        # the items whose relative order there is unknown: id -> group number.
        self._observed: list[str] = []
        self._unordered: dict[str, int] = {}
        self._groups = 0

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._created

    def __len__(self) -> int:
        return len(self._created)

    @property
    def creation_order(self) -> list[str]:
        """Item ids, oldest creation first."""
        return list(self._created)

    @property
    def modification_order(self) -> list[str]:
        """Item ids, least recently modified first."""
        return list(self._modified)

    @property
    def observed_modification_order(self) -> list[str]:
        """Item ids in the modification order a subscriber can know, least recent first."""
        return list(self._observed)

    def order(self, name: str) -> list[str]:
        """Return the ids in ORDER_CREATION or ORDER_MODIFICATION order."""
        if name == ORDER_CREATION:
            return self.creation_order
        if name == ORDER_MODIFICATION:
            return self.modification_order
        raise ValueError(f"unknown item order {name!r}: use {ORDER_CREATION!r} or "
                         f"{ORDER_MODIFICATION!r}")

    def publish(self, item_id: str) -> list[str]:
        """Publish a new item or edit an existing one, and return the ids evicted."""
        if item_id in self._created:
            self._modified.remove(item_id)
            self._modified.append(item_id)
            self._observed.remove(item_id)
            self._observed.append(item_id)
            self._unordered.pop(item_id, None)
            return []
        self._created.append(item_id)
        self._modified.append(item_id)
        self._observed.append(item_id)
        return self._trim()

    def retract(self, item_id: str) -> None:
        """Remove an item, or raise KeyError when the node does not contain it."""
        if item_id not in self._created:
            raise KeyError(f"item {item_id!r} not found in the node")
        self._created.remove(item_id)
        self._modified.remove(item_id)
        self._observed.remove(item_id)
        self._unordered.pop(item_id, None)

    def purge(self) -> None:
        """Remove every item."""
        self._created.clear()
        self._modified.clear()
        self._observed.clear()
        self._unordered.clear()

    def reconcile(self, changed: set[str], service_order: str) -> None:
        """Apply what a subscriber learns when it fetches the node after being offline.

        A service result has no modification times. The items published or
        edited while the subscriber was offline (``changed``) come after the
        other items, and when the service orders by modification (Prosody
        0.12, ``service_order`` ORDER_MODIFICATION) its result gives their
        true order. When it orders by creation (ejabberd 23.01), their
        relative order is unknown: any order of them matches
        :meth:`observed_order_matches` until they are edited again.
        """
        unchanged = [item_id for item_id in self._observed if item_id not in changed]
        changed_ids = [item_id for item_id in self.order(service_order) if item_id in changed]
        self._observed = unchanged + changed_ids
        if service_order != ORDER_MODIFICATION and len(changed_ids) > 1:
            self._groups += 1
            for item_id in changed_ids:
                self._unordered[item_id] = self._groups

    def observed_order_matches(self, ids: Sequence[str]) -> bool:
        """Tell whether ``ids`` is the observed modification order, up to unknown orders."""
        if sorted(ids) != sorted(self._observed):
            return False

        def segments(order: Sequence[str]) -> list[Any]:
            # Consecutive items of one group of unknown order form a set.
            result: list[Any] = []
            for item_id in order:
                group = self._unordered.get(item_id)
                if group is not None and result and result[-1][0] == group:
                    result[-1][1].add(item_id)
                else:
                    result.append((group, {item_id}))
            return [members for _, members in result]

        return segments(ids) == segments(self._observed)

    def configure(self, max_items: int) -> list[str]:
        """Set ``max_items``, and return the ids evicted at once (only with trim_on_configure)."""
        self.max_items = max_items
        return self._trim() if self.trim_on_configure else []

    def _trim(self) -> list[str]:
        evicted = []
        while len(self._modified) > self.max_items:
            item_id = self._modified.pop(0)
            self._created.remove(item_id)
            self._observed.remove(item_id)
            self._unordered.pop(item_id, None)
            evicted.append(item_id)
        return evicted


def expected_page(ids: Sequence[str], request: RSMRequest) -> tuple[list[str], RSMResponse]:
    """Return the ids of the page a XEP-0059 service returns for ``request``, and its metadata.

    ``ids`` is the whole result set in the service's order. ``first`` and
    ``last`` of the metadata are item ids, ``first_index`` the position of
    the page's first item. An empty page (``max`` 0, or a position past the
    end) reports only the count. Raises ValueError when ``after`` or
    ``before`` names an id that is not in ``ids``.
    """
    ids = list(ids)
    size = request.max
    if request.after is not None:
        start = ids.index(request.after) + 1
        page = ids[start:]
    elif request.before is not None:
        end = len(ids) if request.before == "" else ids.index(request.before)
        start = 0 if size is None else max(0, end - size)
        page = ids[start:end]
    else:
        start = request.index or 0
        page = ids[start:]
    if size is not None:
        page = page[:size]

    if not page:
        return [], RSMResponse(count=len(ids))
    return page, RSMResponse(
        first=page[0], first_index=start, last=page[-1], count=len(ids)
    )
