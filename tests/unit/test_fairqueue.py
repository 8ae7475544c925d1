"""FairQueue: round-robin between flows, FIFO within a flow."""

from __future__ import annotations

import pytest

from jaas.fairqueue import FairQueue


def drain(queue: FairQueue[str, str]) -> list[str]:
    return [queue.pop() for _ in range(len(queue))]


def test_flows_are_served_round_robin() -> None:
    queue: FairQueue[str, str] = FairQueue()
    for item in ("a1", "a2", "a3", "a4"):
        queue.push("a", item)
    for item in ("b1", "b2"):
        queue.push("b", item)
    queue.push("c", "c1")
    assert len(queue) == 7
    assert drain(queue) == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]
    assert not queue


def test_a_single_flow_is_fifo() -> None:
    queue: FairQueue[str, int] = FairQueue()
    for n in range(50):
        queue.push("only", n)
    assert [queue.pop() for _ in range(50)] == list(range(50))


def test_a_flow_that_becomes_non_empty_joins_the_end_of_the_rotation() -> None:
    queue: FairQueue[str, str] = FairQueue()
    for item in ("a1", "a2", "a3"):
        queue.push("a", item)
    queue.push("b", "b1")
    assert queue.pop() == "a1"  # a moves behind b
    queue.push("c", "c1")  # c joins behind a
    assert drain(queue) == ["b1", "a2", "c1", "a3"]


def test_a_drained_flow_that_returns_waits_for_the_others() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.push("a", "a1")
    for item in ("b1", "b2"):
        queue.push("b", item)
    assert queue.pop() == "a1"  # a leaves the rotation
    queue.push("a", "a2")  # and comes back behind b
    assert drain(queue) == ["b1", "a2", "b2"]


def test_thousand_items_of_one_flow_delay_another_by_one() -> None:
    queue: FairQueue[str, str] = FairQueue()
    for n in range(1000):
        queue.push("heavy", f"h{n}")
    queue.push("light", "x")
    assert [queue.pop(), queue.pop()] == ["h0", "x"]


def test_depth_and_flows_report_each_flow() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.push("a", "a1")
    queue.push("a", "a2")
    queue.push("b", "b1")
    assert queue.depth("a") == 2
    assert queue.depth("b") == 1
    assert queue.depth("never") == 0
    assert queue.flows() == ["a", "b"]
    queue.pop()
    assert queue.flows() == ["b", "a"]
    queue.pop()
    assert queue.depth("b") == 0
    assert queue.flows() == ["a"]


def test_remove_keeps_the_rotation_of_other_flows() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.push("a", "a1")
    queue.push("a", "a2")
    queue.push("b", "b1")
    queue.push("c", "c1")
    assert queue.remove("b", "b1")  # b empties and leaves the rotation
    assert not queue.remove("b", "b1")
    assert not queue.remove("a", "zz")
    assert not queue.remove("nobody", "a1")
    assert queue.remove("a", "a1")  # a keeps its turn
    assert queue.flows() == ["a", "c"]
    assert len(queue) == 2
    assert drain(queue) == ["a2", "c1"]


def test_pop_from_an_empty_queue_raises() -> None:
    queue: FairQueue[str, str] = FairQueue()
    with pytest.raises(IndexError):
        queue.pop()
    queue.push("a", "a1")
    queue.pop()
    with pytest.raises(IndexError):
        queue.pop()


def test_none_is_a_flow_like_any_other() -> None:
    queue: FairQueue[str | None, str] = FairQueue()
    queue.push(None, "n1")
    queue.push(None, "n2")
    queue.push("a", "a1")
    assert [queue.pop() for _ in range(3)] == ["n1", "a1", "n2"]
