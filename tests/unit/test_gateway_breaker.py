"""Circuit breaker: closed -> open -> half-open -> closed / re-open, on a fake clock."""

from __future__ import annotations

import pytest

from online.gateway.breaker import BreakerBoard, BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_full_cycle_closed_open_half_open_closed():
    clock = FakeClock()
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    b = CircuitBreaker(3, 5.0, 1, clock, key="http://m1", on_change=lambda *c: changes.append(c))

    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state is BreakerState.CLOSED
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert b.retry_after_s() == 5.0

    clock.t += 4.9
    assert not b.allow()
    clock.t += 0.1
    assert b.allow()  # the one probe
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # only half_open_max probes
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.allow()

    assert changes == [
        ("http://m1", BreakerState.CLOSED, BreakerState.OPEN),
        ("http://m1", BreakerState.OPEN, BreakerState.HALF_OPEN),
        ("http://m1", BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_a_failed_probe_reopens_and_restarts_the_timeout():
    clock = FakeClock()
    b = CircuitBreaker(1, 5.0, clock=clock)
    b.record_failure()
    clock.t += 5
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.t += 4
    assert not b.allow()
    clock.t += 1
    assert b.allow()


def test_a_success_resets_the_consecutive_failure_count():
    b = CircuitBreaker(3, clock=FakeClock())
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    assert b.failures == 2


def test_half_open_max_admits_that_many_probes():
    clock = FakeClock()
    b = CircuitBreaker(1, 1.0, half_open_max=3, clock=clock)
    b.record_failure()
    clock.t += 1
    assert [b.allow() for _ in range(4)] == [True, True, True, False]


def test_probes_that_never_report_do_not_wedge_the_breaker():
    clock = FakeClock()
    b = CircuitBreaker(1, 2.0, clock=clock)
    b.record_failure()
    clock.t += 2
    assert b.allow()  # probe lost (its task was cancelled)
    assert not b.allow()
    clock.t += 2
    assert b.allow()


def test_late_results_while_open_change_nothing():
    clock = FakeClock()
    b = CircuitBreaker(1, 5.0, clock=clock)
    b.record_failure()
    clock.t += 3
    b.record_success()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.t += 2
    assert b.allow()  # the timeout still runs from the first opening


def test_states_are_numeric_for_the_gauge_and_readable_in_logs():
    assert [int(s) for s in (BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN)] == [0, 1, 2]
    assert str(BreakerState.HALF_OPEN) == "half_open"


def test_a_failing_hook_does_not_break_the_breaker():
    def boom(*args: object) -> None:
        raise RuntimeError("gauge down")

    b = CircuitBreaker(1, clock=FakeClock(), on_change=boom)
    b.record_failure()
    assert b.state is BreakerState.OPEN


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(0)
    with pytest.raises(ValueError, match="half_open_max"):
        BreakerBoard(half_open_max=0)


def test_board_keeps_one_breaker_per_endpoint_and_reports_states():
    clock = FakeClock()
    seen: list[tuple[str, int]] = []
    board = BreakerBoard(failure_threshold=1, reset_timeout_s=1.0, clock=clock,
                         on_change=lambda key, old, new: seen.append((key, int(new))))
    assert board.get("http://a") is board.get("http://a")
    board.get("http://b").record_failure()
    assert board.states() == {"http://a": BreakerState.CLOSED, "http://b": BreakerState.OPEN}
    assert seen == [("http://b", 2)]
    clock.t += 1
    assert board.get("http://b").allow()
    assert board.states()["http://b"] == 1
