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

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
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
