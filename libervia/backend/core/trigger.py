"""Named trigger points where plugins intercept the normal workflow.

A plugin adds a callback to a point with a priority; when the code reaches the
point, callbacks run from the highest priority to the lowest. Callbacks may be
plain functions, coroutines or return Deferreds.

- :meth:`TriggerManager.point`: a callback returning ``False`` stops the
  workflow (the caller skips its normal action). Any other value continues.
- :meth:`TriggerManager.return_point`: a callback returning ``(False, result)``
  stops the workflow and supplies ``result`` in place of the normal action.
  Returning ``None``, ``True`` or ``(True, None)`` continues.

Points in use are listed in doc/developer.rst.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from libervia.backend.tools.aio import maybe_await

log = logging.getLogger(__name__)


class TriggerManager:
    """Registry of trigger callbacks by point name."""

    def __init__(self) -> None:
        self._triggers: dict[str, list[tuple[int, Callable[..., Any]]]] = {}

    def add(self, point: str, callback: Callable[..., Any], priority: int = 0) -> None:
        """Add ``callback`` to ``point``; higher priorities run first.

        Raises ValueError when the callback is already registered on that point.
        """
        callbacks = self._triggers.setdefault(point, [])
        if any(cb == callback for _, cb in callbacks):
            raise ValueError(f"{callback!r} is already registered on trigger point {point!r}")
        callbacks.append((priority, callback))
        # Stable sort: callbacks of equal priority keep their registration order.
        callbacks.sort(key=lambda entry: -entry[0])

    def remove(self, point: str, callback: Callable[..., Any]) -> None:
        """Remove ``callback`` from ``point``; raise KeyError when it is not there."""
        callbacks = self._triggers.get(point, [])
        for index, (_, cb) in enumerate(callbacks):
            if cb == callback:
                del callbacks[index]
                return
        raise KeyError(f"{callback!r} is not registered on trigger point {point!r}")

    def has(self, point: str) -> bool:
        """Return True when at least one callback is registered on ``point``."""
        return bool(self._triggers.get(point))

    async def point(self, name: str, *args: Any, **kwargs: Any) -> bool:
        """Run the callbacks of ``name``; return False when one of them stopped the workflow."""
        for _, callback in list(self._triggers.get(name, [])):
            if await maybe_await(callback(*args, **kwargs)) is False:
                return False
        return True

    async def return_point(self, name: str, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Run the callbacks of ``name``; return ``(False, result)`` when one supplied a result.

        Returns ``(True, None)`` when every callback let the workflow continue.
        """
        for _, callback in list(self._triggers.get(name, [])):
            outcome = await maybe_await(callback(*args, **kwargs))
            if outcome is None or outcome is True:
                continue
            if not isinstance(outcome, tuple) or len(outcome) != 2:
                raise TypeError(
                    f"trigger {callback!r} on {name!r} returned {outcome!r}: expected "
                    "None, True or a (bool, result) tuple"
                )
            go_on, result = outcome
            if not go_on:
                return False, result
        return True, None
