"""The one exponential backoff every retry loop of jaas-py uses.

``Backoff`` is a policy (first delay, cap, growth factor, jitter);
``Backoff.delay(n)`` is the wait before retry ``n`` (0-based), and
``Backoff.retries()`` a stateful sequence for loops that reset after a
success. Jitter spreads retries of many callers apart, as client-go's
``wait.Backoff`` and the workqueue's item exponential limiter do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``initial * factor**n`` seconds, at most ``maximum``, times a random ``1 ± jitter``.

    Args:
        initial: delay before the first retry, seconds (> 0).
        maximum: the cap, seconds (before jitter).
        factor: growth per retry (>= 1).
        jitter: relative spread, 0 (none) to 1.
    """

    initial: float
    maximum: float
    factor: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.factor < 1:
            raise ValueError(f"invalid backoff {self!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be within [0, 1], got {self.jitter}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 is the first retry)."""
        exponent = min(max(retry, 0), 64)
        base = min(self.initial * self.factor**exponent, self.maximum)
        if self.jitter:
            base *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return base

    def retries(self) -> Retries:
        """A fresh sequence of delays following this policy."""
        return Retries(self)


class Retries:
    """The delays of one retry loop: ``next()`` grows, ``reset()`` starts over."""

    def __init__(self, policy: Backoff) -> None:
        self.policy = policy
        self.count = 0

    def next(self) -> float:
        """The delay before the next retry (and count it)."""
        delay = self.policy.delay(self.count)
        self.count += 1
        return delay

    def reset(self) -> None:
        """Start over from the first delay (after a success)."""
        self.count = 0
