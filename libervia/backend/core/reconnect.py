"""Reconnection delays: exponential backoff with jitter.

After an established stream is lost, the client waits ``initial_delay``
seconds, then each further failed attempt multiplies the wait by ``factor``
up to ``max_delay``. Jitter removes a random part of each wait (up to
``jitter`` times the wait), so clients cut off by one server restart do not
all come back in the same second. Twisted's ``ReconnectingClientFactory``
is not used, because it resets its delay as soon as TCP connects, even when
the server then ends the stream at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackoffPolicy:
    """Delays between reconnection attempts, in seconds."""

    initial_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 120.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Return the wait before attempt number ``attempt`` (0 for the first one).

        The result lies in ``[base * (1 - jitter), base]`` where ``base`` is
        ``min(max_delay, initial_delay * factor ** attempt)``.
        """
        try:
            base = self.initial_delay * self.factor**attempt
        except OverflowError:
            base = self.max_delay
        base = min(self.max_delay, base)
        return base * (1.0 - self.jitter * rng.random())


class Reconnector:
    """Schedule reconnection attempts on a clock, following a BackoffPolicy.

    Args:
        policy: the delays.
        connect: called for each attempt; the caller reports the outcome by
            calling :meth:`schedule` again after a failure, or :meth:`reset`
            after a success.
        clock: an ``IReactorTime`` provider (the reactor, or a
            ``twisted.internet.task.Clock`` in tests).
        rng: random source of the jitter.
    """

    def __init__(
        self, policy: BackoffPolicy, connect: Callable[[], Any], clock: Any,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._connect = connect
        self._clock = clock
        self._rng = rng or random.Random()
        #: Attempts scheduled since the last reset.
        self.attempts = 0
        self._call: Any = None

    @property
    def pending(self) -> bool:
        """Whether an attempt is scheduled and has not run yet."""
        return self._call is not None and self._call.active()

    def schedule(self) -> float:
        """Schedule the next attempt and return its delay in seconds.

        An attempt already scheduled is replaced.
        """
        self.cancel()
        delay = self.policy.delay(self.attempts, self._rng)
        self.attempts += 1
        self._call = self._clock.callLater(delay, self._run)
        return delay

    def _run(self) -> None:
        self._call = None
        self._connect()

    def reset(self) -> None:
        """Start the delays from ``initial_delay`` again, after a successful attempt."""
        self.attempts = 0

    def cancel(self) -> None:
        """Cancel the scheduled attempt, if any."""
        if self.pending:
            self._call.cancel()
        self._call = None
