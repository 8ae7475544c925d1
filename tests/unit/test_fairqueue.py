"""FairQueue: start-time fair queueing between flows, FIFO within a flow."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_a_flow_that_becomes_non_empty_goes_ahead_of_a_backlog_already_served() -> None:
    queue: FairQueue[str, str] = FairQueue()
    for item in ("a1", "a2", "a3"):
        queue.push("a", item)
    queue.push("b", "b1")
    assert queue.pop() == "a1"
    queue.push("c", "c1")  # c has had no turn yet; a just had one
    assert drain(queue) == ["b1", "c1", "a2", "a3"]


def test_a_new_flow_is_next_even_behind_a_long_backlog_of_one_flow() -> None:
    queue: FairQueue[str, str] = FairQueue()
    for n in range(100):
        queue.push("heavy", f"h{n}")
    for _ in range(10):
        queue.pop()
    queue.push("light", "x")  # round robin would serve one more heavy item first
    assert queue.pop() == "x"


def test_a_flow_that_keeps_one_item_waiting_alternates_with_a_backlog() -> None:
    queue: FairQueue[str, str] = FairQueue()
    for n in range(6):
        queue.push("heavy", f"h{n}")
    served = []
    queue.push("light", "x0")
    for n in range(1, 4):
        served.append(queue.pop())
        served.append(queue.pop())
        queue.push("light", f"x{n}")  # pushed again as soon as it could be
    assert served == ["h0", "x0", "h1", "x1", "h2", "x2"]


def test_a_drained_flow_that_returns_does_not_overtake_a_flow_it_already_led() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.push("a", "a1")
    for item in ("b1", "b2"):
        queue.push("b", item)
    assert queue.pop() == "a1"  # a leaves, remembering it had a turn
    queue.push("a", "a2")  # a2 and b2 both wait for their flow's second turn
    assert drain(queue) == ["b1", "b2", "a2"]


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


def test_remove_keeps_the_turns_of_every_flow() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.push("a", "a1")
    queue.push("a", "a2")
    queue.push("b", "b1")
    queue.push("c", "c1")
    assert queue.remove("b", "b1")  # b empties and leaves
    assert not queue.remove("b", "b1")
    assert not queue.remove("a", "zz")
    assert not queue.remove("nobody", "a1")
    assert queue.remove("a", "a1")  # a2 keeps its tag: a's second turn
    assert queue.flows() == ["c", "a"]
    assert len(queue) == 2
    assert drain(queue) == ["c1", "a2"]


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


def test_a_held_flow_keeps_its_items_but_is_skipped_until_released() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.push("a", "a1")
    queue.push("b", "b1")
    queue.hold("a")
    queue.hold("a")  # idempotent
    queue.push("a", "a2")  # queued, but a is not served
    queue.hold("c")  # holding an empty flow keeps it unserved when it fills
    queue.push("c", "c1")
    assert queue.flows() == ["b"]
    assert len(queue) == 4
    assert queue.pop() == "b1"
    assert not queue.servable
    assert queue  # items are still waiting
    with pytest.raises(IndexError):
        queue.pop()
    queue.release("c")
    queue.release("a")
    queue.release("b")  # never held: no effect
    assert queue.flows() == ["a", "c"]  # the items keep the tags they were pushed with
    assert drain(queue) == ["a1", "c1", "a2"]


def test_removing_the_last_item_of_a_held_flow_forgets_it() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.push("a", "a1")
    queue.hold("a")
    assert queue.remove("a", "a1")
    queue.release("a")
    assert queue.flows() == []
    assert not queue


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["push", "pop", "remove", "hold", "release"]),
            st.sampled_from(["a", "b", "c", None]),
        ),
        max_size=80,
    )
)
def test_nothing_is_lost_or_reordered_within_a_flow(ops: list[tuple[str, str | None]]) -> None:
    queue: FairQueue[str | None, int] = FairQueue()
    model: dict[str | None, list[int]] = {}
    held: set[str | None] = set()
    counter = 0
    for op, flow in ops:
        if op == "push":
            queue.push(flow, counter)
            model.setdefault(flow, []).append(counter)
            counter += 1
        elif op == "pop":
            servable = {f for f, items in model.items() if items and f not in held}
            assert queue.servable == bool(servable)
            if servable:
                item = queue.pop()
                owner = next(f for f in servable if model[f][0] == item)
                model[owner].pop(0)  # the oldest item of a servable flow
        elif op == "remove":
            items = model.get(flow) or []
            assert queue.remove(flow, items[-1]) if items else not queue.remove(flow, -1)
            if items:
                items.pop()
        elif op == "hold":
            queue.hold(flow)
            held.add(flow)
        else:
            queue.release(flow)
            held.discard(flow)
        assert len(queue) == sum(len(items) for items in model.values())
        for f, items in model.items():
            assert queue.depth(f) == len(items)
    assert set(queue.flows()) == {f for f, items in model.items() if items and f not in held}


def test_a_turn_charged_on_the_fast_path_counts_like_a_served_item() -> None:
    queue: FairQueue[str, str] = FairQueue()
    queue.charge("a")  # a got a slot without waiting
    queue.push("a", "a2")
    queue.push("b", "b1")
    assert drain(queue) == ["b1", "a2"]
    queue.charge("c")
    queue.charge("c")
    queue.push("c", "c3")
    queue.push("d", "d1")
    assert drain(queue) == ["d1", "c3"]
