import asyncio

import pytest

from jaas.operator.workqueue import ShutDown, WorkQueue


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
