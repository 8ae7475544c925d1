import asyncio

import pytest

from jaas.operator.workqueue import MAX_TRIGGERS, ShutDown, Trigger, WorkQueue


async def test_duplicate_adds_are_processed_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    for _ in range(3):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert await q.get() == "a"
    assert await q.get() == "b"


async def test_a_key_is_never_handed_out_twice_at_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    key = await q.get()
    q.add("a")  # added while processing: must wait for done()
    assert len(q) == 0
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    q.done(key)
    assert await asyncio.wait_for(waiter, 1) == "a"


async def test_add_after_keeps_the_earliest_time_and_add_cancels_the_delay() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 30)
    q.add_after("a", 0.01)
    assert q.delayed == 1
    assert await asyncio.wait_for(q.get(), 2) == "a"
    q.done("a")
    q.add_after("b", 30)
    q.add("b")
    assert q.delayed == 0
    assert await q.get() == "b"


async def test_backoff_grows_per_key_until_forgotten() -> None:
    q: WorkQueue[str] = WorkQueue(base_delay=1, max_delay=8)
    delays = [q.backoff("a") for _ in range(6)]
    assert delays[0] == pytest.approx(1, rel=0.11)
    assert delays[2] == pytest.approx(4, rel=0.11)
    assert delays[5] == pytest.approx(8, rel=0.11)
    assert q.backoff("b") == pytest.approx(1, rel=0.11)
    q.forget("a")
    assert q.failures("a") == 0
    assert q.backoff("a") == pytest.approx(1, rel=0.11)


async def test_shutdown_releases_waiting_workers_and_stops_handing_out_keys() -> None:
    q: WorkQueue[str] = WorkQueue()
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.add("x")
    assert await waiter == "x"
    q.add("y")
    await q.shutdown()
    with pytest.raises(ShutDown):
        await q.get()


def namespace(key: tuple[str, str]) -> str:
    return key[0]


async def test_without_a_flow_function_the_queue_is_fifo() -> None:
    q: WorkQueue[tuple[str, str]] = WorkQueue()
    keys = [("a", "1"), ("b", "1"), ("a", "2"), ("a", "3"), ("b", "2")]
    for key in keys:
        q.add(key)
    assert [await q.get() for _ in keys] == keys
    assert q.flows() == []


async def test_one_namespace_with_a_thousand_keys_delays_another_by_one_key() -> None:
    q: WorkQueue[tuple[str, str]] = WorkQueue(flow=namespace)
    for n in range(1000):
        q.add(("heavy", f"s{n}"))
    q.add(("light", "x"))
    assert q.depth("heavy") == 1000
    assert q.depth("light") == 1
    handed_out = [await q.get(), await q.get()]
    assert ("light", "x") in handed_out
    assert q.depth("light") == 0
    assert len(q) == 999


async def test_flows_are_served_round_robin_and_fifo_within_a_flow() -> None:
    q: WorkQueue[tuple[str, str]] = WorkQueue(flow=namespace)
    for key in [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1"), ("b", "2"), ("c", "1")]:
        q.add(key)
    assert q.flows() == ["a", "b", "c"]
    order = [await q.get() for _ in range(6)]
    assert order == [("a", "1"), ("b", "1"), ("c", "1"), ("a", "2"), ("b", "2"), ("a", "3")]


async def test_fair_queue_still_deduplicates_waiting_keys_per_flow() -> None:
    q: WorkQueue[tuple[str, str]] = WorkQueue(flow=namespace)
    for _ in range(3):
        q.add(("a", "1"))
        q.add(("b", "1"))
    assert len(q) == 2
    assert q.depth("a") == 1
    assert q.adds == 2
    assert {await q.get(), await q.get()} == {("a", "1"), ("b", "1")}
    assert len(q) == 0


async def test_fair_queue_still_holds_a_key_added_while_processing_until_done() -> None:
    q: WorkQueue[tuple[str, str]] = WorkQueue(flow=namespace)
    q.add(("a", "1"))
    key = await q.get()
    q.add(("a", "1"))  # dirty while processing: not waiting yet
    q.add(("b", "1"))
    assert q.depth("a") == 0
    assert await q.get() == ("b", "1")
    q.add(("b", "2"))
    waiter = asyncio.create_task(q.get())
    assert await waiter == ("b", "2")
    assert q.in_flight == 3
    q.done(key)  # re-queued at the back of its flow
    assert q.depth("a") == 1
    assert await q.get() == ("a", "1")
    assert q.completions == 1


async def test_a_requeued_key_takes_its_flows_next_turn() -> None:
    q: WorkQueue[tuple[str, str]] = WorkQueue(flow=namespace)
    q.add(("a", "1"))
    key = await q.get()
    q.add(("a", "1"))
    q.add(("b", "1"))
    q.add(("b", "2"))
    q.done(key)
    assert q.flows() == ["b", "a"]
    # a had its turn (a/1 the first time); a/1 again and b/2 are both second turns
    assert [await q.get() for _ in range(3)] == [("b", "1"), ("b", "2"), ("a", "1")]


async def test_a_flow_at_its_in_flight_bound_leaves_a_worker_for_other_flows() -> None:
    q: WorkQueue[tuple[str, str]] = WorkQueue(flow=namespace, max_in_flight_per_flow=2)
    for n in range(5):
        q.add(("heavy", f"s{n}"))
    first = [await q.get(), await q.get()]
    assert first == [("heavy", "s0"), ("heavy", "s1")]
    # heavy is at its bound: a third worker waits although heavy has keys queued
    third = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not third.done()
    assert q.depth("heavy") == 3
    q.add(("light", "x"))  # the waiting worker takes the light key at once
    assert await asyncio.wait_for(third, 1) == ("light", "x")
    # finishing a heavy key frees its flow for exactly one more
    fourth = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not fourth.done()
    q.done(first[0])
    assert await asyncio.wait_for(fourth, 1) == ("heavy", "s2")
    assert q.in_flight == 3


async def test_a_key_re_added_while_its_flow_is_at_the_bound_runs_after_done() -> None:
    q: WorkQueue[tuple[str, str]] = WorkQueue(flow=namespace, max_in_flight_per_flow=1)
    q.add(("a", "1"))
    key = await q.get()
    q.add(("a", "1"))
    q.add(("a", "2"))
    q.done(key)
    assert [await q.get()] == [("a", "2")]
    q.done(("a", "2"))
    assert await q.get() == ("a", "1")
    q.done(("a", "1"))
    q.done(("a", "1"))  # a second done of a finished key changes nothing
    assert q.completions == 3
    assert q.in_flight == 0


def test_the_in_flight_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WorkQueue(max_in_flight_per_flow=0)


async def test_the_worker_learns_why_a_key_was_queued_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    source = Trigger("source", ("GitRepository", "ns", "repo"), "main@sha1:1")
    queue.add("a", Trigger("created"))
    queue.add("a", source)  # coalesced with the first add
    queue.add("a", source)  # the same reason is kept once
    queue.add("a")  # no reason given
    assert await queue.get() == "a"
    assert queue.take_triggers("a") == [Trigger("created"), source]
    assert queue.take_triggers("a") == []
    queue.add("a", Trigger("generation"))  # while processing: kept for the next turn
    queue.done("a")
    assert await queue.get() == "a"
    assert queue.take_triggers("a") == [Trigger("generation")]


async def test_a_delayed_add_brings_its_reason_when_it_fires() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.01, Trigger("interval"))
    assert await asyncio.wait_for(queue.get(), 1) == "a"
    assert queue.take_triggers("a") == [Trigger("interval")]


async def test_triggers_kept_per_key_are_bounded() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for i in range(3 * MAX_TRIGGERS):
        queue.add("a", Trigger("source", ("GitRepository", "ns", "repo"), f"r{i}"))
    await queue.get()
    kept = queue.take_triggers("a")
    assert [t.revision for t in kept] == [f"r{i}" for i in range(MAX_TRIGGERS)]


async def test_oldest_waiting_is_the_age_of_the_longest_waiting_key() -> None:
    queue: WorkQueue[str] = WorkQueue()
    assert queue.oldest_waiting() == 0.0
    queue.add("a")
    await asyncio.sleep(0.05)
    queue.add("b")
    assert queue.oldest_waiting() >= 0.05
    await queue.get()  # "a" is taken: "b" is now the oldest
    assert queue.oldest_waiting() < 0.05
    await queue.get()
    assert queue.oldest_waiting() == 0.0
