"""The leader's verdict on a shard's heartbeat: live, or wedged and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaas import defaults
from jaas.options import OperatorOptions
from jaas.shards.leader import Leader

GiB = 1 << 30


@pytest.fixture
def leader(tmp_path: Path) -> Leader:
    options = OperatorOptions(
        storage_path=str(tmp_path / "store"),
        storage_base_url="http://storage",
        shards=1,
        shard_heartbeat_timeout=30.0,
        shard_memory_limit=1 * GiB,
        leader_memory_limit=1 * GiB,
    )
    made = Leader(options, tmp_path)
    made.ready_shards.add("shard-0")
    return made


def beat(leader: Leader, at: float, **progress: object) -> None:
    leader.heartbeats["shard-0"] = (at, {"watching": True, "oldest_in_flight": 0, **progress})


def test_a_shard_that_beats_and_progresses_is_live(leader: Leader) -> None:
    beat(leader, 100.0, rss_bytes=100 << 20, oldest_in_flight=12.5)
    assert leader.wedged_because("shard-0", 129.0) is None


def test_silence_a_stopped_watch_memory_and_a_stuck_reconcile_each_wedge_a_shard(
    leader: Leader,
) -> None:
    beat(leader, 100.0)
    assert leader.wedged_because("shard-0", 131.0) == ("no heartbeat from its event loop for 31s")
    beat(leader, 100.0, watching=False)
    assert leader.wedged_because("shard-0", 101.0) == "a watch of its informers stopped"
    beat(leader, 100.0, rss_bytes=3 * GiB)
    assert leader.wedged_because("shard-0", 101.0) == (
        "resident memory 3072 MiB is over --shard-memory-limit (1024 MiB)"
    )
    beat(leader, 100.0, oldest_in_flight=defaults.SHARD_STUCK_RECONCILE + 1)
    assert str(leader.wedged_because("shard-0", 101.0)).startswith("a reconcile has been running")


def test_a_shard_that_is_not_ready_yet_is_not_judged(leader: Leader) -> None:
    leader.ready_shards.discard("shard-0")
    beat(leader, 0.0)
    assert leader.wedged_because("shard-0", 1000.0) is None
    assert leader.wedged_because("shard-9", 1000.0) is None


def test_the_leader_stops_itself_only_over_its_own_memory_limit(leader: Leader) -> None:
    assert leader.over_memory_limit(GiB) is None
    assert leader.over_memory_limit(GiB + (5 << 20)) == (
        "leader resident memory 1029 MiB is over --leader-memory-limit (1024 MiB)"
    )
    leader.options.leader_memory_limit = 0
    assert leader.over_memory_limit(100 * GiB) is None
