"""Tests of TriggerManager: order, stopping, returned results and callback kinds."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from libervia.backend.core.trigger import TriggerManager


def recorder(calls: list[str], name: str, outcome: Any = None) -> Any:
    """Return a callback that appends ``name`` to ``calls`` and returns ``outcome``."""

    def callback(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return outcome

    callback.__name__ = f"callback_{name}"
    return callback


class OrderTests:
    """Callbacks run from the highest priority to the lowest."""

    @pytest_twisted.ensureDeferred
    async def test_priority_order(self) -> None:
        manager = TriggerManager()
        calls: list[str] = []
        manager.add("p", recorder(calls, "low"), priority=-5)
        manager.add("p", recorder(calls, "high"), priority=100)
        manager.add("p", recorder(calls, "default"))

        assert await manager.point("p") is True
        assert calls == ["high", "default", "low"]

    @pytest_twisted.ensureDeferred
    async def test_equal_priority_keeps_order(self) -> None:
        manager = TriggerManager()
        calls: list[str] = []
        for name in ("first", "second", "third"):
            manager.add("p", recorder(calls, name), priority=3)
        manager.add("p", recorder(calls, "before"), priority=4)

        await manager.point("p")

        assert calls == ["before", "first", "second", "third"]

    @pytest_twisted.ensureDeferred
    async def test_points_are_separate(self) -> None:
        manager = TriggerManager()
        calls: list[str] = []
        manager.add("a", recorder(calls, "a"))
        manager.add("b", recorder(calls, "b"))

        await manager.point("a")

        assert calls == ["a"]

    @pytest_twisted.ensureDeferred
    async def test_arguments_passed(self) -> None:
        manager = TriggerManager()
        received: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        manager.add("p", lambda *args, **kwargs: received.append((args, kwargs)))

        await manager.point("p", 1, "two", three=3)

        assert received == [((1, "two"), {"three": 3})]

    @pytest_twisted.ensureDeferred
    async def test_unknown_point_continues(self) -> None:
        manager = TriggerManager()

        assert await manager.point("nothing here") is True
        assert await manager.return_point("nothing here") == (True, None)


class PointTests:
    """``point``: False stops, any other value continues."""

    @pytest_twisted.ensureDeferred
    async def test_false_stops(self) -> None:
        manager = TriggerManager()
        calls: list[str] = []
        manager.add("p", recorder(calls, "first", True), priority=2)
        manager.add("p", recorder(calls, "stopper", False), priority=1)
        manager.add("p", recorder(calls, "never"), priority=0)

        assert await manager.point("p") is False
        assert calls == ["first", "stopper"]

    @pytest.mark.parametrize("outcome", [None, True, 0, "", [], "no"])
    @pytest_twisted.ensureDeferred
    async def test_other_values_continue(self, outcome: Any) -> None:
        manager = TriggerManager()
        calls: list[str] = []
        manager.add("p", recorder(calls, "first", outcome), priority=1)
        manager.add("p", recorder(calls, "second"))

        assert await manager.point("p") is True
        assert calls == ["first", "second"]


class ReturnPointTests:
    """``return_point``: ``(False, result)`` stops and supplies the result."""

    @pytest_twisted.ensureDeferred
    async def test_false_result_stops(self) -> None:
        manager = TriggerManager()
        calls: list[str] = []
        manager.add("p", recorder(calls, "answer", (False, {"items": 3})), priority=1)
        manager.add("p", recorder(calls, "never"))

        assert await manager.return_point("p") == (False, {"items": 3})
        assert calls == ["answer"]

    @pytest_twisted.ensureDeferred
    async def test_none_result_is_returned(self) -> None:
        manager = TriggerManager()
        manager.add("p", lambda: (False, None))

        assert await manager.return_point("p") == (False, None)

    @pytest.mark.parametrize("outcome", [None, True, (True, None), (True, "ignored")])
    @pytest_twisted.ensureDeferred
    async def test_continue_values(self, outcome: Any) -> None:
        manager = TriggerManager()
        calls: list[str] = []
        manager.add("p", recorder(calls, "first", outcome), priority=1)
        manager.add("p", recorder(calls, "second"))

        assert await manager.return_point("p") == (True, None)
        assert calls == ["first", "second"]

    @pytest.mark.parametrize("outcome", [False, 1, (False,), (False, 1, 2), object()])
    @pytest_twisted.ensureDeferred
    async def test_bad_value_raises(self, outcome: Any) -> None:
        manager = TriggerManager()
        manager.add("p", lambda: outcome)

        with pytest.raises(TypeError, match="expected None, True or a"):
            await manager.return_point("p")

    @pytest_twisted.ensureDeferred
    async def test_two_character_string_raises(self) -> None:
        manager = TriggerManager()
        manager.add("p", lambda: "no")

        with pytest.raises(TypeError):
            await manager.return_point("p")


class CallbackKindsTests:
    """Plain functions, coroutines and Deferreds are awaited alike."""

    @pytest_twisted.ensureDeferred
    async def test_coroutine_stops(self) -> None:
        manager = TriggerManager()

        async def stop() -> bool:
            return False

        manager.add("p", stop)

        assert await manager.point("p") is False

    @pytest_twisted.ensureDeferred
    async def test_coroutine_returns_result(self) -> None:
        manager = TriggerManager()

        async def answer(value: int) -> tuple[bool, int]:
            return False, value * 2

        manager.add("p", answer)

        assert await manager.return_point("p", 21) == (False, 42)

    @pytest_twisted.ensureDeferred
    async def test_deferred_waited(self) -> None:
        manager = TriggerManager()
        calls: list[str] = []

        def later() -> defer.Deferred[Any]:
            # Fires on a later reactor turn, so return_point must really wait.
            return task.deferLater(reactor, 0.01, lambda: (False, "late"))

        manager.add("p", later, priority=1)
        manager.add("p", recorder(calls, "never"))

        assert await manager.return_point("p") == (False, "late")
        assert calls == []

    @pytest_twisted.ensureDeferred
    async def test_deferred_false_stops(self) -> None:
        manager = TriggerManager()
        manager.add("p", lambda: defer.succeed(False))

        assert await manager.point("p") is False

    @pytest_twisted.ensureDeferred
    async def test_callback_error_propagates(self) -> None:
        manager = TriggerManager()

        async def broken() -> None:
            raise RuntimeError("trigger failed")

        manager.add("p", broken)

        with pytest.raises(RuntimeError, match="trigger failed"):
            await manager.point("p")


class RegistrationTests:
    """add, remove and has."""

    def test_add_twice_raises(self) -> None:
        manager = TriggerManager()
        callback = recorder([], "x")
        manager.add("p", callback)

        with pytest.raises(ValueError, match="already registered"):
            manager.add("p", callback, priority=5)

    def test_same_callback_two_points(self) -> None:
        manager = TriggerManager()
        callback = recorder([], "x")
        manager.add("a", callback)
        manager.add("b", callback)

        assert manager.has("a")
        assert manager.has("b")

    @pytest_twisted.ensureDeferred
    async def test_remove(self) -> None:
        manager = TriggerManager()
        calls: list[str] = []
        remaining = recorder(calls, "remaining")
        removed = recorder(calls, "removed")
        manager.add("p", remaining)
        manager.add("p", removed)

        manager.remove("p", removed)
        await manager.point("p")

        assert calls == ["remaining"]

    def test_remove_last_clears_point(self) -> None:
        manager = TriggerManager()
        callback = recorder([], "x")
        manager.add("p", callback)

        manager.remove("p", callback)

        assert not manager.has("p")

    def test_remove_unknown_raises(self) -> None:
        manager = TriggerManager()
        manager.add("p", recorder([], "x"))

        with pytest.raises(KeyError, match="not registered"):
            manager.remove("p", recorder([], "other"))

    def test_remove_unknown_point_raises(self) -> None:
        manager = TriggerManager()

        with pytest.raises(KeyError):
            manager.remove("missing", recorder([], "x"))

    def test_readd_after_remove(self) -> None:
        manager = TriggerManager()
        callback = recorder([], "x")
        manager.add("p", callback)
        manager.remove("p", callback)

        manager.add("p", callback)

        assert manager.has("p")

    def test_has_empty(self) -> None:
        assert not TriggerManager().has("p")
