"""Per-snippet re-render rate limit: a token bucket per snippet.

metio/jaas ``internal/operator/ratelimiter.go`` and ``--rerender-rate`` /
``--rerender-burst``: each snippet may start ``rate`` renders per second on
average with bursts of ``burst``; a denied reconcile is deferred by the time
until its next token (the token is not consumed) and never touches Ready.
A rate of 0 disables the limit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Hashable

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([A-Za-z]+)\s*$")
_PERIODS = {
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
}


def parse_rate(text: str) -> float:
    """Parse ``N/period`` (``60/min``, ``5/s``, ``100/hour``) into renders per second.

    Raises:
        ValueError: not of that form, or negative.
    """
    m = _RATE.match(text)
    if not m or m.group(2).lower() not in _PERIODS:
        raise ValueError(
            f"invalid rate {text!r}: want N/period with period s, min or hour (e.g. 60/min)"
        )
    return float(m.group(1)) / _PERIODS[m.group(2).lower()]


class RateLimiter:
    """Token buckets keyed by snippet.

    Args:
        rate: tokens per second (0: unlimited).
        burst: bucket size (>= 1).
        clock: monotonic seconds (tests inject their own).
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if burst < 1:
            raise ValueError("the re-render burst must be at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def reserve(self, key: Hashable) -> float:
        """Take a token for ``key``; return 0, or the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def forget(self, key: Hashable) -> None:
        """Drop the bucket of a deleted snippet."""
        self._buckets.pop(key, None)
