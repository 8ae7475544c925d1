"""The one backoff policy every retry loop uses."""

from __future__ import annotations

import pytest

from jaas.backoff import Backoff


def test_delays_grow_by_the_factor_up_to_the_cap() -> None:
    policy = Backoff(0.5, 4.0)
    assert [policy.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert Backoff(0.1, 5.0, factor=4.0).delay(2) == pytest.approx(1.6)
    assert policy.delay(10_000) == 4.0  # no overflow for long failure runs


def test_jitter_stays_within_its_fraction_and_varies() -> None:
    policy = Backoff(10.0, 10.0, jitter=0.1)
    delays = [policy.delay(0) for _ in range(500)]
    assert all(9.0 <= d <= 11.0 for d in delays)
    assert len(set(delays)) > 1


def test_a_retry_sequence_grows_and_resets() -> None:
    retries = Backoff(1.0, 8.0).retries()
    assert [retries.next() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    retries.reset()
    assert retries.next() == 1.0


@pytest.mark.parametrize(
    "args", [(0.0, 1.0, 2.0, 0.0), (2.0, 1.0, 2.0, 0.0), (1.0, 2.0, 0.5, 0.0), (1.0, 2.0, 2.0, 2.0)]
)
def test_nonsense_policies_are_refused(args: tuple[float, float, float, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(*args)
