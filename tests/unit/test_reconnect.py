"""Tests of the reconnection delays: exponential backoff with jitter, on an injected clock."""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock

from libervia.backend.core.reconnect import BackoffPolicy, Reconnector


class _FixedRandom(random.Random):
    """Random source returning one value, so jitter is predictable."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


class BackoffPolicyTests:
    def test_grows_by_factor(self) -> None:
        policy = BackoffPolicy(initial_delay=1, factor=2, max_delay=100, jitter=0)
        delays = [policy.delay(attempt, random.Random()) for attempt in range(5)]
        assert delays == [1, 2, 4, 8, 16]

    def test_capped_at_max_delay(self) -> None:
        policy = BackoffPolicy(initial_delay=1, factor=3, max_delay=10, jitter=0)
        assert policy.delay(5, random.Random()) == 10

    def test_huge_attempt_number(self) -> None:
        policy = BackoffPolicy(initial_delay=1, factor=2, max_delay=60, jitter=0)
        assert policy.delay(10_000, random.Random()) == 60

    def test_jitter_removes_a_fraction(self) -> None:
        policy = BackoffPolicy(initial_delay=10, factor=2, max_delay=100, jitter=0.5)
        assert policy.delay(0, _FixedRandom(1.0)) == pytest.approx(5.0)
        assert policy.delay(0, _FixedRandom(0.0)) == pytest.approx(10.0)

    def test_jitter_bounds(self) -> None:
        policy = BackoffPolicy(initial_delay=4, factor=2, max_delay=30, jitter=0.25)
        rng = random.Random(1234)
        for attempt in range(8):
            base = min(30, 4 * 2**attempt)
            delay = policy.delay(attempt, rng)
            assert base * 0.75 <= delay <= base

    def test_jitter_spreads_delays(self) -> None:
        policy = BackoffPolicy(initial_delay=10, factor=2, max_delay=100, jitter=0.5)
        rng = random.Random(42)
        delays = {round(policy.delay(0, rng), 6) for _ in range(20)}
        assert len(delays) > 1


class ReconnectorTests:
    """Attempts run on an injected twisted.internet.task.Clock."""

    def _reconnector(self, **policy: float) -> tuple[Reconnector, Clock, list[float]]:
        clock = Clock()
        attempts: list[float] = []
        policy = {"initial_delay": 1.0, "factor": 2.0, "max_delay": 8.0, "jitter": 0.0, **policy}
        reconnector = Reconnector(
            BackoffPolicy(**policy), lambda: attempts.append(clock.seconds()), clock
        )
        return reconnector, clock, attempts

    def test_first_attempt_after_initial_delay(self) -> None:
        reconnector, clock, attempts = self._reconnector()
        reconnector.schedule()
        clock.advance(0.99)
        assert attempts == []
        clock.advance(0.01)
        assert attempts == [1.0]

    def test_failed_attempts_back_off(self) -> None:
        reconnector, clock, attempts = self._reconnector()
        waits = []
        for number in range(1, 7):
            scheduled_at = clock.seconds()
            reconnector.schedule()
            # Small steps, so the clock stops at the attempt's time.
            while len(attempts) < number:
                clock.advance(0.5)
            waits.append(attempts[-1] - scheduled_at)
        assert waits == [1, 2, 4, 8, 8, 8]

    def test_schedule_returns_delay(self) -> None:
        reconnector, _, _ = self._reconnector()
        assert [reconnector.schedule() for _ in range(5)] == [1, 2, 4, 8, 8]

    def test_reset_restarts_from_initial_delay(self) -> None:
        reconnector, clock, attempts = self._reconnector()
        for _ in range(3):
            reconnector.schedule()
            clock.advance(10)
        reconnector.reset()
        assert reconnector.schedule() == 1.0

    def test_schedule_replaces_pending_attempt(self) -> None:
        reconnector, clock, attempts = self._reconnector()
        reconnector.schedule()
        reconnector.schedule()
        clock.advance(100)
        assert len(attempts) == 1
        assert len(clock.getDelayedCalls()) == 0

    def test_cancel(self) -> None:
        reconnector, clock, attempts = self._reconnector()
        reconnector.schedule()
        assert reconnector.pending is True
        reconnector.cancel()
        clock.advance(100)
        assert attempts == []
        assert reconnector.pending is False

    def test_jittered_attempt_times(self) -> None:
        clock = Clock()
        attempts: list[float] = []
        reconnector = Reconnector(
            BackoffPolicy(initial_delay=2.0, factor=2.0, max_delay=60.0, jitter=0.5),
            lambda: attempts.append(clock.seconds()),
            clock,
            rng=_FixedRandom(0.5),
        )
        reconnector.schedule()
        clock.advance(1.5)
        assert attempts == [1.5]
