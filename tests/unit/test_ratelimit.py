"""The per-snippet re-render token bucket (``--rerender-rate``, ``--rerender-burst``)."""

from __future__ import annotations

import pytest

from jaas.operator.ratelimit import RateLimiter, parse_rate


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("60/min", 1.0), ("5/s", 5.0), ("3600/hour", 1.0), ("0/s", 0.0), ("120 / minutes", 2.0)],
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["60", "60/day", "-1/s", "x/min", ""])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="N/period"):
        parse_rate(text)


def test_a_burst_then_one_token_per_period_and_keys_are_independent() -> None:
    now = [0.0]
    limiter = RateLimiter(1.0, 3, clock=lambda: now[0])
    assert [limiter.reserve("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.reserve("a") == pytest.approx(1.0)
    assert limiter.reserve("b") == 0.0
    now[0] = 0.5
    assert limiter.reserve("a") == pytest.approx(0.5)  # a denial consumes nothing
    now[0] = 1.0
    assert limiter.reserve("a") == 0.0
    limiter.forget("a")
    assert limiter.reserve("a") == 0.0


def test_rate_zero_is_unlimited() -> None:
    limiter = RateLimiter(0, 1)
    assert all(limiter.reserve("k") == 0.0 for _ in range(1000))
