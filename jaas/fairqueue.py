"""Round-robin fair queueing between flows, the primitive behind work and evaluator fairness.

A ``FairQueue`` holds items in one FIFO queue per *flow* (for jaas-py, a
namespace: one tenant) and hands them out one flow at a time in round-robin
order, so a flow with a thousand waiting items delays an item of another flow
by at most one item per other waiting flow.

The idea is kube-apiserver's API Priority and Fairness (KEP-1040, package
``k8s.io/apiserver/pkg/util/flowcontrol/fairqueuing``), much simplified: APF
shuffle-shards flows onto a fixed number of queues and serves them by virtual
finish time, weighting each request by its estimated cost; here every flow
has its own queue, every item costs the same, and each flow with waiting
items gets exactly one item per turn. A flow that becomes non-empty joins the
end of the rotation; a flow that is served and still has items moves to the
end; a flow whose queue empties leaves the rotation.

With a single flow it is a plain FIFO queue. Not thread-safe; meant for one
asyncio event loop (it never awaits, so callers need no lock).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Hashable)
T = TypeVar("T")


class FairQueue(Generic[F, T]):
    """Items of type ``T`` queued per flow ``F``, popped round-robin across flows.

    ``push`` and ``pop`` are O(1); ``remove`` is O(items of that flow) plus
    O(flows) when it empties the flow. Within a flow, items leave in the order
    they were pushed. The queue does not de-duplicate: pushing an item twice
    queues it twice (callers such as ``WorkQueue`` de-duplicate themselves).
    """

    def __init__(self) -> None:
        # Only flows with at least one item have an entry in either structure;
        # ``_rotation`` holds each of them exactly once, next to be served first.
        self._queues: dict[F, deque[T]] = {}
        self._rotation: deque[F] = deque()
        self._length = 0

    def __len__(self) -> int:
        """Items waiting, over all flows."""
        return self._length

    def __bool__(self) -> bool:
        """Whether any item is waiting."""
        return self._length > 0

    def push(self, flow: F, item: T) -> None:
        """Queue ``item`` at the back of ``flow``'s queue.

        If ``flow`` had no waiting item, it joins the end of the rotation, so
        it is served after every flow already waiting has had one turn.
        """
        queue = self._queues.get(flow)
        if queue is None:
            queue = self._queues[flow] = deque()
            self._rotation.append(flow)
        queue.append(item)
        self._length += 1

    def pop(self) -> T:
        """Remove and return the oldest item of the flow whose turn it is.

        That flow then moves to the end of the rotation, or leaves it if it has
        no more items.

        Raises:
            IndexError: the queue is empty.
        """
        if not self._rotation:
            raise IndexError("pop from an empty FairQueue")
        flow = self._rotation.popleft()
        queue = self._queues[flow]
        item = queue.popleft()
        if queue:
            self._rotation.append(flow)
        else:
            del self._queues[flow]
        self._length -= 1
        return item

    def remove(self, flow: F, item: T) -> bool:
        """Remove the first occurrence of ``item`` from ``flow``'s queue.

        Other flows keep their place in the rotation; ``flow`` keeps its place
        unless this was its last item, in which case it leaves the rotation.

        Returns:
            Whether ``item`` was found (``False`` leaves the queue unchanged).
        """
        queue = self._queues.get(flow)
        if queue is None:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        self._length -= 1
        if not queue:
            del self._queues[flow]
            self._rotation.remove(flow)
        return True

    def depth(self, flow: F) -> int:
        """Items waiting in ``flow`` (``0`` for a flow never seen or drained)."""
        queue = self._queues.get(flow)
        return len(queue) if queue is not None else 0

    def flows(self) -> list[F]:
        """Flows with waiting items, in the order they will next be served."""
        return list(self._rotation)
