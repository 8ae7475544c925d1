from collections import Counter

import pytest

from jaas.shards.assignment import (
    MASK64,
    HashRing,
    RingAssignment,
    fnv1a_64,
    local_shard_names,
    namespace_hash,
)


def test_fnv1a_64_matches_published_test_vectors() -> None:
    # Vectors from the FNV reference (isthe.com/chongo/tech/comp/fnv).
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"foobar") == 0x85944171F73967E8


def test_every_namespace_has_exactly_one_owner_among_the_members() -> None:
    members = local_shard_names(3)
    assignments = [RingAssignment(m, members) for m in members]
    for i in range(500):
        ns = f"tenant-{i}"
        owners = [a.shard for a in assignments if a.owns(ns)]
        assert owners == [assignments[0].owner(ns)]


def test_sequentially_named_namespaces_spread_over_shards() -> None:
    ring = HashRing(local_shard_names(2))
    counts = Counter(ring.owner(f"load-{i}") for i in range(20))
    assert set(counts) == {"shard-0", "shard-1"}
    big = Counter(ring.owner(f"ns-{i}") for i in range(10_000))
    assert min(big.values()) > 4000


def test_ranges_partition_the_ring_and_agree_with_owner() -> None:
    ring = HashRing(local_shard_names(3), vnodes=16)
    covered = sum(e - s + 1 for m in ring.members for s, e in ring.ranges(m))
    assert covered == MASK64 + 1
    for i in range(200):
        ns = f"x{i}"
        h = namespace_hash(ns)
        holders = [m for m in ring.members if any(s <= h <= e for s, e in ring.ranges(m))]
        assert holders == [ring.owner(ns)]


def test_adding_a_shard_moves_only_namespaces_to_the_new_shard() -> None:
    before = HashRing(local_shard_names(3))
    after = HashRing(local_shard_names(4))
    moved = [f"n{i}" for i in range(2000) if before.owner(f"n{i}") != after.owner(f"n{i}")]
    assert moved
    assert all(after.owner(ns) == "shard-3" for ns in moved)


def test_invalid_memberships_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one"):
        HashRing([])
    with pytest.raises(ValueError, match="duplicate"):
        HashRing(["a", "a"])
    with pytest.raises(ValueError, match="not one of the members"):
        RingAssignment("shard-9", local_shard_names(2))
