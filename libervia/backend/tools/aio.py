"""Bridge between Twisted Deferreds and asyncio coroutines.

The backend runs Twisted on the asyncio reactor. Backend code is written as
``async def`` functions driven by Twisted (``Deferred.fromCoroutine``), so it
can ``await`` the Deferreds returned by Twisted and wokkel directly. SQLAlchemy's
async engine, however, needs its coroutines to run as asyncio tasks: such
coroutines cannot await a Deferred, and a Twisted-driven coroutine cannot await
an asyncio future. :func:`aio` and :func:`as_deferred` wrap an asyncio coroutine
into a Deferred, which is the only conversion the rest of the code needs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from twisted.internet import defer

P = ParamSpec("P")
T = TypeVar("T")


def as_deferred(awaitable: Awaitable[T]) -> defer.Deferred[T]:
    """Run an asyncio awaitable as a task and return a Deferred of its result.

    Must be called while the asyncio event loop used by the reactor is set.
    """
    return defer.Deferred.fromFuture(asyncio.ensure_future(awaitable))


def aio(func: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, defer.Deferred[T]]:
    """Decorate an asyncio coroutine function so that calling it returns a Deferred."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> defer.Deferred[T]:
        return as_deferred(func(*args, **kwargs))

    return wrapper


def ensure_deferred(value: Any) -> defer.Deferred:
    """Wrap a Twisted-driven coroutine, a Deferred or a plain value into a Deferred.

    Coroutines given here may await Deferreds (not asyncio futures).
    """
    if isinstance(value, defer.Deferred):
        return value
    if asyncio.iscoroutine(value):
        return defer.Deferred.fromCoroutine(value)
    return defer.succeed(value)


async def maybe_await(value: Any) -> Any:
    """Return ``value``, awaiting it first when it is a Deferred or a coroutine."""
    if isinstance(value, defer.Deferred) or asyncio.iscoroutine(value):
        return await ensure_deferred(value)
    return value
