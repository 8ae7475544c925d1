"""Start-time fair queueing between flows, the primitive behind work and evaluator fairness.

A ``FairQueue`` holds items in one FIFO queue per *flow* (for jaas-py, a
namespace: one tenant) and hands them out so that every flow with waiting
items gets an equal share of turns, however many items it has queued.

It is start-time fair queueing (Goyal, Vin and Cheng, SIGCOMM 1996) with a
unit cost per item, the scheme behind kube-apiserver's API Priority and
Fairness (KEP-1040, ``k8s.io/apiserver/pkg/util/flowcontrol/fairqueuing``),
much simplified: APF shuffle-shards flows onto a fixed number of queues and
weighs each request by its estimated cost; here every flow has its own queue
and every item costs one turn. Each pushed item gets a start tag
``max(V, finish of its flow's previous item)`` and the flow's finish tag becomes
that plus one; ``pop`` returns the waiting item with the smallest start tag
(ties: the earlier push) and moves the virtual time ``V`` to its tag. So a
flow that has been idle is served next, ahead of a flow with a backlog that
was served a moment ago, and a flow that keeps one item waiting alternates
with the others instead of overtaking them. With a single flow it is a plain
FIFO queue.

A *held* flow keeps its items but is skipped until it is released
(``WorkQueue`` holds a namespace that already has its share of workers busy).
Not thread-safe; meant for one asyncio event loop (it never awaits, so callers
need no lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

F = TypeVar("F", bound=Hashable)
T = TypeVar("T")


@dataclass
class _Flow(Generic[T]):
    """One flow's waiting items as ``(start tag, push sequence, item)`` and its finish tag."""

    items: deque[tuple[int, int, T]] = field(default_factory=deque)
    finish: int = 0


class FairQueue(Generic[F, T]):
    """Items of type ``T`` queued per flow ``F``, each flow getting an equal share of turns.

    ``push`` and ``pop`` are O(log flows); ``remove`` is O(items of that flow).
    Within a flow, items leave in the order they were pushed. The queue does
    not de-duplicate: pushing an item twice queues it twice (callers such as
    ``WorkQueue`` de-duplicate themselves).
    """

    def __init__(self) -> None:
        # Flows with waiting items, and flows that are held (with or without items).
        self._flows: dict[F, _Flow[T]] = {}
        self._held: set[F] = set()
        # (start tag, push sequence, entry number, flow) of each servable flow's
        # head item; an entry whose flow head has changed since is stale and
        # skipped. The entry number keeps the heap from ever comparing flows.
        self._heads: list[tuple[int, int, int, F]] = []
        self._sequence = itertools.count()
        self._entries = itertools.count()
        self._virtual_time = 0
        self._length = 0
        # Finish tags of flows that drained, kept while they could still matter.
        self._finished: dict[F, int] = {}

    def __len__(self) -> int:
        """Items waiting, over all flows (held flows included)."""
        return self._length

    def __bool__(self) -> bool:
        """Whether any item is waiting (held flows included)."""
        return self._length > 0

    @property
    def servable(self) -> bool:
        """Whether ``pop`` has an item to return: some flow that is not held has items."""
        return self._next_head() is not None

    def push(self, flow: F, item: T) -> None:
        """Queue ``item`` at the back of ``flow``'s queue, tagged for its fair turn."""
        state = self._flows.get(flow)
        if state is None:
            state = self._flows[flow] = _Flow(finish=self._finished.pop(flow, 0))
        start = max(self._virtual_time, state.finish)
        state.finish = start + 1
        entry = (start, next(self._sequence), item)
        state.items.append(entry)
        self._length += 1
        if len(state.items) == 1 and flow not in self._held:
            self._index_head(flow, state)

    def charge(self, flow: F) -> None:
        """Count a turn ``flow`` got without queueing (a slot that was free at once).

        The turn is tagged as if its item had been pushed and popped now, so
        a flow served on the fast path does not also go first the next time
        everyone has to wait.
        """
        state = self._flows.get(flow)
        finish = state.finish if state is not None else self._finished.get(flow, 0)
        start = max(self._virtual_time, finish)
        self._virtual_time = start
        if state is not None:
            state.finish = start + 1
        else:
            self._finished[flow] = start + 1
            self._forget_finished()

    def pop(self) -> T:
        """Remove and return the waiting item with the smallest start tag.

        Raises:
            IndexError: no flow that is not held has an item (see ``servable``).
        """
        head = self._next_head()
        if head is None:
            raise IndexError("pop from a FairQueue with no servable item")
        heapq.heappop(self._heads)
        start, flow = head
        state = self._flows[flow]
        _, _, item = state.items.popleft()
        self._length -= 1
        self._virtual_time = max(self._virtual_time, start)
        self._after_change(flow, state)
        return item

    def remove(self, flow: F, item: T) -> bool:
        """Remove the first occurrence of ``item`` from ``flow``'s queue.

        Other items keep their tags, so every flow keeps its place.

        Returns:
            Whether ``item`` was found (``False`` leaves the queue unchanged).
        """
        state = self._flows.get(flow)
        if state is None:
            return False
        index = next((i for i, entry in enumerate(state.items) if entry[2] == item), None)
        if index is None:
            return False
        del state.items[index]
        self._length -= 1
        if index == 0 or not state.items:
            self._after_change(flow, state)
        return True

    def hold(self, flow: F) -> None:
        """Skip ``flow`` until ``release``; its items stay queued with their tags.

        Pushing to a held flow queues the item without making the flow
        servable. Holding a held flow does nothing.
        """
        self._held.add(flow)

    def release(self, flow: F) -> None:
        """End a ``hold``: ``flow``'s items compete for turns again with their tags."""
        if flow not in self._held:
            return
        self._held.discard(flow)
        state = self._flows.get(flow)
        if state is not None and state.items:
            self._index_head(flow, state)

    def depth(self, flow: F) -> int:
        """Items waiting in ``flow`` (``0`` for a flow never seen or drained)."""
        state = self._flows.get(flow)
        return len(state.items) if state is not None else 0

    def flows(self) -> list[F]:
        """Flows with waiting items that are not held, in the order their heads will be served."""
        heads = sorted(
            (state.items[0][0], state.items[0][1], flow)
            for flow, state in self._flows.items()
            if state.items and flow not in self._held
        )
        return [flow for _, _, flow in heads]

    def _index_head(self, flow: F, state: _Flow[T]) -> None:
        start, sequence, _ = state.items[0]
        heapq.heappush(self._heads, (start, sequence, next(self._entries), flow))

    def _next_head(self) -> tuple[int, F] | None:
        """(start tag, flow) of the servable head with the smallest tag; stale entries go."""
        while self._heads:
            start, sequence, _, flow = self._heads[0]
            state = self._flows.get(flow)
            if (
                state is not None
                and state.items
                and flow not in self._held
                and state.items[0][1] == sequence
            ):
                return start, flow
            heapq.heappop(self._heads)
        return None

    def _after_change(self, flow: F, state: _Flow[T]) -> None:
        """Re-index ``flow`` after its head left: a new head entry, or forget the drained flow."""
        if state.items:
            if flow not in self._held:
                self._index_head(flow, state)
            return
        del self._flows[flow]
        # A drained flow's finish tag only matters while it is ahead of the
        # virtual time; later pushes start at V anyway.
        if state.finish > self._virtual_time:
            self._finished[flow] = state.finish
        self._forget_finished()

    def _forget_finished(self) -> None:
        """Drop remembered finish tags the virtual time has passed (bounded memory)."""
        if len(self._finished) > 2 * len(self._flows) + 64:
            now = self._virtual_time
            self._finished = {f: t for f, t in self._finished.items() if t > now}


class FairSlots(Generic[F]):
    """``slots`` interchangeable slots (e.g. download connections) shared fairly between flows.

    A caller holds a slot with ``async with slots.hold(flow):``. While every
    slot is taken, callers wait in a ``FairQueue`` by flow and a freed slot
    goes to the flow whose fair turn it is; a flow never holds more than
    ``per_flow`` slots at once, so one tenant's slow transfers leave the other
    slots to everyone else. Not thread-safe; one asyncio event loop.

    Args:
        slots: slots in total (>= 1).
        per_flow: most slots one flow holds at once; default ``slots - 1``
            (at least 1), so a slot is always left for another flow.

    Raises:
        ValueError: ``slots`` or ``per_flow`` is below 1.
    """

    def __init__(self, slots: int, *, per_flow: int | None = None) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.slots = slots
        self.per_flow = per_flow if per_flow is not None else max(1, slots - 1)
        if self.per_flow < 1:
            raise ValueError(f"per_flow must be at least 1, got {self.per_flow}")
        self._free = slots
        self._held: dict[F, int] = {}
        self._waiters: FairQueue[F, tuple[F, asyncio.Future[None]]] = FairQueue()

    @property
    def in_use(self) -> int:
        """Slots held now."""
        return self.slots - self._free

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        return len(self._waiters)

    def held_by(self, flow: F) -> int:
        """Slots ``flow`` holds now."""
        return self._held.get(flow, 0)

    @contextlib.asynccontextmanager
    async def hold(self, flow: F) -> AsyncIterator[None]:
        """Hold one slot for ``flow`` for the body of the ``async with``."""
        await self._acquire(flow)
        try:
            yield
        finally:
            self._release(flow)

    async def _acquire(self, flow: F) -> None:
        if self._free and not self._waiters.servable and self.held_by(flow) < self.per_flow:
            self._waiters.charge(flow)
            self._take(flow)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (flow, waiter)
        self._waiters.push(flow, entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(flow)  # granted as we were cancelled: hand it on
            else:
                self._waiters.remove(flow, entry)
            raise

    def _take(self, flow: F) -> None:
        self._free -= 1
        held = self._held[flow] = self.held_by(flow) + 1
        if held >= self.per_flow:
            self._waiters.hold(flow)

    def _release(self, flow: F) -> None:
        self._free += 1
        held = self.held_by(flow) - 1
        if held > 0:
            self._held[flow] = held
        else:
            self._held.pop(flow, None)
        if held < self.per_flow:
            self._waiters.release(flow)
        while self._free and self._waiters.servable:
            owner, waiter = self._waiters.pop()
            if waiter.done():
                continue
            self._take(owner)
            waiter.set_result(None)
