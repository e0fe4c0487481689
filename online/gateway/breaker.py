"""Circuit breakers, one per model-server endpoint.

    closed --(failure_threshold consecutive failures)--> open
    open --(reset_timeout_s passed, next allow())--> half_open (admits half_open_max probes)
    half_open --(a probe succeeds)--> closed
    half_open --(a probe fails)--> open (the timeout starts again)

Used from the event loop only (no awaits inside, so no lock is needed).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

__all__ = ["BreakerBoard", "BreakerState", "CircuitBreaker", "OnChange"]

logger = logging.getLogger(__name__)


class BreakerState(enum.IntEnum):
    """A breaker's state; the int value is what the `tandem_breaker_state` gauge shows."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    def __str__(self) -> str:
        return self.label


OnChange = Callable[[str, BreakerState, BreakerState], None]
"""Called as `on_change(key, old_state, new_state)` on every transition."""


class CircuitBreaker:
    """Stops calling an endpoint after `failure_threshold` consecutive failures, probes it later."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 5.0,
        half_open_max: int = 1,
        clock: Callable[[], float] = time.monotonic,
        *,
        key: str = "",
        on_change: OnChange | None = None,
    ):
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if reset_timeout_s <= 0:
            raise ValueError(f"reset_timeout_s must be > 0, got {reset_timeout_s}")
        if half_open_max < 1:
            raise ValueError(f"half_open_max must be >= 1 (probes let through when half-open), got {half_open_max}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_max = half_open_max
        self.key = key
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self._probes_since = 0.0

    @property
    def state(self) -> BreakerState:
        """The state as of the last call (an open breaker turns half-open on the next `allow()`)."""
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout_s - self._clock())

    def allow(self) -> bool:
        """May a call be made now? In half-open, each True is one of the `half_open_max` probes."""
        if self._state is BreakerState.CLOSED:
            return True
        now = self._clock()
        if self._state is BreakerState.OPEN:
            if now - self._opened_at < self.reset_timeout_s:
                return False
            self._set(BreakerState.HALF_OPEN)
            self._probes, self._probes_since = 0, now
        elif now - self._probes_since >= self.reset_timeout_s:
            # Probes that never reported back (their caller was cancelled) must not wedge the breaker.
            self._probes, self._probes_since = 0, now
        if self._probes < self.half_open_max:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._set(BreakerState.CLOSED)
        # A late success while open (the call began before the breaker opened) proves little: ignore.
        if self._state is BreakerState.CLOSED:
            self._failures = 0

    def record_failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._open()
        elif self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._probes = 0
        self._set(BreakerState.OPEN)

    def _set(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is not new and self._on_change is not None:
            try:
                self._on_change(self.key, old, new)
            except Exception:  # a metrics hook must not fail the model call it reports on
                logger.exception("breaker on_change hook failed for %r (%s -> %s)", self.key, old, new)


class BreakerBoard:
    """One `CircuitBreaker` per key (a model server's base URL), made on first use."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 5.0,
        half_open_max: int = 1,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_change: OnChange | None = None,
    ):
        self._settings = (failure_threshold, reset_timeout_s, half_open_max)
        CircuitBreaker(*self._settings)  # validate once, here, rather than on the first request
        self._clock = clock
        self._on_change = on_change
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, key: str) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(*self._settings, self._clock, key=key, on_change=self._on_change)
            self._breakers[key] = breaker
        return breaker

    def states(self) -> dict[str, BreakerState]:
        return {key: b.state for key, b in self._breakers.items()}
