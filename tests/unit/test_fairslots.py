"""FairSlots: slots handed out by fair turns, never all to one flow."""

from __future__ import annotations

import asyncio

import pytest

from jaas.fairqueue import FairSlots


async def hold_until(
    slots: FairSlots[str], flow: str, release: asyncio.Event, log: list[str]
) -> None:
    async with slots.hold(flow):
        log.append(flow)
        await release.wait()


async def test_one_flow_never_holds_every_slot() -> None:
    slots: FairSlots[str] = FairSlots(4)
    release = asyncio.Event()
    log: list[str] = []
    slow = [asyncio.create_task(hold_until(slots, "slow", release, log)) for _ in range(8)]
    await asyncio.sleep(0)
    assert slots.held_by("slow") == 3  # the fourth slot stays free for another flow
    assert slots.waiting == 5
    other = asyncio.create_task(hold_until(slots, "other", release, log))
    await asyncio.sleep(0)
    assert log.count("other") == 1
    assert slots.in_use == 4
    release.set()
    await asyncio.gather(*slow, other)
    assert slots.in_use == 0
    assert log.count("slow") == 8


async def test_a_freed_slot_goes_to_the_flow_whose_turn_it_is() -> None:
    slots: FairSlots[str] = FairSlots(1)
    gates = {name: asyncio.Event() for name in ("a1", "a2", "a3", "b1")}
    order: list[str] = []

    async def use(flow: str, name: str) -> None:
        async with slots.hold(flow):
            order.append(name)
            await gates[name].wait()

    tasks = [asyncio.create_task(use("a", n)) for n in ("a1", "a2", "a3")]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(use("b", "b1")))
    await asyncio.sleep(0)
    for name in ("a1", "b1", "a2", "a3"):
        assert order[-1] == name
        gates[name].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["a1", "b1", "a2", "a3"]


async def test_a_cancelled_waiter_gives_up_its_place_and_a_granted_one_its_slot() -> None:
    slots: FairSlots[str] = FairSlots(1)
    release = asyncio.Event()
    log: list[str] = []
    holder = asyncio.create_task(hold_until(slots, "a", release, log))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold_until(slots, "b", release, log))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.waiting == 0
    release.set()
    await holder
    assert slots.in_use == 0
    async with slots.hold("c"):
        assert slots.in_use == 1


def test_slot_counts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slots"):
        FairSlots(0)
    with pytest.raises(ValueError, match="per_flow"):
        FairSlots(2, per_flow=0)
    assert FairSlots(1).per_flow == 1
