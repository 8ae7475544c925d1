"""A work queue with per-key de-duplication, serialisation, delays and backoff.

The semantics are client-go's ``workqueue`` (k8s.io/client-go/util/workqueue):
a key queued several times before a worker takes it is processed once; a key
is never processed by two workers at once, and a key added while it is being
processed runs again right after; ``add_after`` schedules a key for later
(keeping the earliest time); ``backoff`` grows per key on consecutive failures
until ``forget`` resets it.

On top of that, waiting keys are queued fairly between *flows* (the operator's
flow of a ``(namespace, name)`` key is its namespace): each flow has its own
FIFO queue and ``get`` gives every flow with waiting keys an equal share of
turns, a flow that has had none going first (start-time fair queueing,
``jaas.fairqueue``, after kube-apiserver's API Priority and Fairness). A
namespace with a thousand queued snippets therefore delays another namespace's
snippet by one key, not by a thousand. Without a ``flow`` function every key is
in one flow and the queue is client-go's FIFO.

Turns alone do not stop one flow from holding every worker: if a namespace's
reconciles are all waiting for an evaluator, a newly queued key of another
namespace waits for one of them to finish before it even reaches the evaluator
queue. ``max_in_flight_per_flow`` bounds how many keys of one flow are processed
at once (the operator sets it to its workers minus one), so a worker is always
free for a namespace that has nothing in flight.

Each add may say why (a :class:`Trigger`): the reasons collected while a key
waits are handed to the worker that takes it (``take_triggers``), so a
reconcile can be traced to the watch event, interval or retry that caused it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from jaas import defaults
from jaas.backoff import Backoff
from jaas.fairqueue import FairQueue

K = TypeVar("K", bound=Hashable)


#: Most triggers kept per waiting key; later ones are counted, not kept.
MAX_TRIGGERS: Final = 8


class ShutDown(Exception):
    """The queue was shut down; workers should exit."""


@dataclass(frozen=True)
class Trigger:
    """Why a key was queued.

    Attributes:
        cause: a short word: ``created``, ``generation``, ``requestedAt``,
            ``deletion``, ``library``, ``source``, ``interval``, ``retry``,
            ``recheck``, ``requeue``.
        source: for ``source`` (and ``library``): ``(kind, namespace, name)``
            of the object whose change queued the key.
        revision: the Flux artifact revision of that source, if it has one.
    """

    cause: str
    source: tuple[str, str, str] | None = None
    revision: str = ""


class WorkQueue(Generic[K]):
    """Keys waiting for a reconcile, handed out fairly between flows.

    Args:
        base_delay: first failure backoff, seconds.
        max_delay: cap of the failure backoff, seconds. The per-key exponential
            backoff is ``base_delay * 2**failures``, capped, with ±10 % jitter
            (client-go ``ItemExponentialFailureRateLimiter``).
        flow: maps a key to its flow (any hashable, e.g. ``lambda key: key[0]``
            for the namespace of a ``(namespace, name)`` key); it must return
            the same flow for the same key every time. ``None`` puts every key
            in one flow: first come, first served.
        max_in_flight_per_flow: most keys of one flow processed at once; a flow
            at the bound is skipped by ``get`` until one of its keys is done.
            ``None``: no bound.

    Raises:
        ValueError: ``max_in_flight_per_flow`` is below 1.
    """

    def __init__(
        self,
        *,
        base_delay: float = defaults.RETRY_BACKOFF_INITIAL,
        max_delay: float = defaults.RETRY_BACKOFF_MAX,
        flow: Callable[[K], Hashable] | None = None,
        max_in_flight_per_flow: int | None = None,
    ) -> None:
        if max_in_flight_per_flow is not None and max_in_flight_per_flow < 1:
            raise ValueError(
                f"max_in_flight_per_flow must be at least 1, got {max_in_flight_per_flow}"
            )
        self.max_in_flight_per_flow = max_in_flight_per_flow
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._backoff = Backoff(base_delay, max_delay, jitter=0.1)
        self._flow = flow
        self._queue: FairQueue[Hashable, K] = FairQueue()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._flow_in_flight: dict[Hashable, int] = {}
        self._started: dict[K, float] = {}
        self._failures: dict[K, int] = {}
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        #: Why each waiting (or delayed) key was queued, oldest first.
        self._triggers: dict[K, list[Trigger]] = {}
        #: Loop time each waiting key was first queued at.
        self._queued_at: dict[K, float] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._shutdown = False
        #: Keys added in total (after de-duplication) and keys completed.
        self.adds = 0
        self.completions = 0

    def __len__(self) -> int:
        """Keys waiting (not counting those being processed or delayed)."""
        return len(self._queue)

    def flow_of(self, key: K) -> Hashable:
        """The flow ``key`` is queued in (``None`` when the queue has no ``flow`` function)."""
        return None if self._flow is None else self._flow(key)

    def depth(self, flow: Hashable) -> int:
        """Keys of ``flow`` waiting (not counting those being processed or delayed)."""
        return self._queue.depth(flow)

    def flows(self) -> list[Hashable]:
        """Flows with waiting keys, in the order ``get`` will serve them next."""
        return self._queue.flows()

    @property
    def delayed(self) -> int:
        """Keys scheduled for later."""
        return len(self._timers)

    @property
    def in_flight(self) -> int:
        """Keys being processed now."""
        return len(self._processing)

    def oldest_in_flight(self) -> float:
        """Seconds the longest-running key has been processed (0 when none is)."""
        if not self._started:
            return 0.0
        return asyncio.get_running_loop().time() - min(self._started.values())

    def oldest_waiting(self) -> float:
        """Seconds the key that has waited longest has been waiting (0 when none waits)."""
        if not self._queued_at:
            return 0.0
        return asyncio.get_running_loop().time() - min(self._queued_at.values())

    def _remember(self, key: K, why: Trigger | None) -> None:
        if why is None:
            return
        kept = self._triggers.setdefault(key, [])
        if why not in kept and len(kept) < MAX_TRIGGERS:
            kept.append(why)

    def take_triggers(self, key: K) -> list[Trigger]:
        """Why ``key`` was queued since it was last taken (and forget it)."""
        return self._triggers.pop(key, [])

    def add(self, key: K, why: Trigger | None = None) -> None:
        """Queue ``key`` now (no-op if already waiting), remembering ``why``."""
        if self._shutdown:
            return
        self._remember(key, why)
        if key in self._dirty:
            return
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()
        self._dirty.add(key)
        self._queued_at[key] = asyncio.get_running_loop().time()
        self.adds += 1
        if key not in self._processing:
            self._queue.push(self.flow_of(key), key)
            self._notify()

    def add_after(self, key: K, delay: float, why: Trigger | None = None) -> None:
        """Queue ``key`` after ``delay`` seconds, unless it is queued sooner anyway."""
        if self._shutdown:
            return
        if delay <= 0:
            self.add(key, why)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing[0] <= when:
                return
            existing[1].cancel()
        handle = loop.call_at(when, self._fire, key, why)
        self._timers[key] = (when, handle)

    def _fire(self, key: K, why: Trigger | None) -> None:
        self._timers.pop(key, None)
        self.add(key, why)

    def backoff(self, key: K) -> float:
        """Record a failure of ``key`` and return the delay before its retry (seconds)."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        return self._backoff.delay(failures)

    def forget(self, key: K) -> None:
        """Reset the failure backoff of ``key`` (after a success)."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        """Consecutive failures recorded for ``key``."""
        return self._failures.get(key, 0)

    def cancel(self, key: K) -> None:
        """Drop a pending delayed add and the backoff state of ``key`` (object deleted)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()
        self._failures.pop(key, None)
        if key not in self._dirty and key not in self._processing:
            self._triggers.pop(key, None)

    def _notify(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self) -> K:
        """Wait for the next key and mark it as being processed.

        The key comes from the flow whose fair turn it is, skipping flows that
        already have ``max_in_flight_per_flow`` keys being processed.

        Raises:
            ShutDown: the queue was shut down.
        """
        while not self._queue.servable or self._shutdown:
            if self._shutdown:
                raise ShutDown
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._notify()  # pass the wake-up on to another worker
                raise
        key = self._queue.pop()
        self._dirty.discard(key)
        self._queued_at.pop(key, None)
        self._processing.add(key)
        self._started[key] = asyncio.get_running_loop().time()
        flow = self.flow_of(key)
        busy = self._flow_in_flight.get(flow, 0) + 1
        self._flow_in_flight[flow] = busy
        if self.max_in_flight_per_flow is not None and busy >= self.max_in_flight_per_flow:
            self._queue.hold(flow)
        return key

    def done(self, key: K) -> None:
        """Mark ``key`` as processed; it is queued again if it was added meanwhile."""
        if key not in self._processing:
            return
        self._processing.discard(key)
        self._started.pop(key, None)
        self.completions += 1
        flow = self.flow_of(key)
        busy = self._flow_in_flight[flow] - 1
        if busy:
            self._flow_in_flight[flow] = busy
        else:
            del self._flow_in_flight[flow]
        self._queue.release(flow)
        if key in self._dirty and not self._shutdown:
            self._queue.push(flow, key)
        if self._queue.servable:
            self._notify()

    async def shutdown(self) -> None:
        """Stop handing out keys; waiting workers get ``ShutDown``."""
        self._shutdown = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
