"""A shard's controller: the work queue, the reconcile workers and their lifecycle.

As controller-runtime's controller: workers take keys from the queue (one key
is never reconciled twice at once), call the reconciler, and alone decide
what happens next and record it —

* a ``Result``: forget the key's backoff; requeue after ``requeue_after`` if
  asked (``spec.interval``, a rate-limit wait, a pending GC);
* a permanent ``ReasonError`` (the reconciler already wrote ``Ready=False``):
  re-check after ``permanent_retry`` seconds (JaaS: one minute), so an
  out-of-band fix (a RoleBinding, a CRD) heals without a watch event;
* a transient ``ReasonError`` or any other exception: retry with the key's
  exponential backoff.

Every outcome is counted in ``jaas_snippet_reconcile_total`` and timed in
``jaas_reconcile_duration_seconds``. Which keys get queued is not decided
here but by the trigger index (``jaas.operator.triggers``) feeding the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from jaas.api.reasons import Reason, ReasonError
from jaas.observability import metrics
from jaas.operator.informer import Key
from jaas.operator.reconciler import Result
from jaas.operator.workqueue import ShutDown, Trigger, WorkQueue

log = logging.getLogger(__name__)

#: Seconds between updates of the queue gauges.
REPORT_INTERVAL = 5.0

#: The reconciler's entry point: a key and why it was queued.
Reconcile = Callable[[Key, Sequence[Trigger]], Awaitable[Result]]

#: Why the controller itself queues a key again.
RETRY = Trigger("retry")
RECHECK = Trigger("recheck")
INTERVAL = Trigger("interval")
REQUEUE = Trigger("requeue")


class ShardController:
    """Runs ``concurrency`` workers that reconcile the keys of ``queue``.

    Args:
        queue: the shard's work queue (fair between namespaces).
        reconcile: the reconciler's entry point.
        shard: the shard identity (metric label).
        concurrency: keys reconciled at once.
        permanent_retry: seconds before a permanent failure is re-checked.
    """

    def __init__(
        self,
        queue: WorkQueue[Key],
        reconcile: Reconcile,
        *,
        shard: str,
        concurrency: int,
        permanent_retry: float,
    ) -> None:
        self.queue = queue
        self.reconcile = reconcile
        self.shard = shard
        self.concurrency = concurrency
        self.permanent_retry = permanent_retry
        self._workers: list[asyncio.Task[None]] = []
        self._reporter: asyncio.Task[None] | None = None

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            try:
                await self._process(key)
            finally:
                self.queue.done(key)

    async def _process(self, key: Key) -> None:
        started = time.perf_counter()
        namespace, name = key
        try:
            result = await self.reconcile(key, self.queue.take_triggers(key))
        except ReasonError as err:
            self._record(key, "False", err.reason.value, started)
            if err.transient:
                self.queue.add_after(key, self.queue.backoff(key), RETRY)
            else:
                self.queue.forget(key)
                self.queue.add_after(key, self.permanent_retry, RECHECK)
            return
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # The reconciler logged it inside the reconcile's span.
            self._record(key, "Unknown", type(err).__name__, started)
            delay = self.queue.backoff(key)
            log.debug(
                "reconcile of %s/%s is retried in %.1fs",
                namespace,
                name,
                delay,
                extra={"namespace": namespace, "snippet": name, "shard": self.shard},
            )
            self.queue.add_after(key, delay, RETRY)
            return
        status = "Unknown" if result.ready is None else str(result.ready)
        self._record(key, status, result.reason, started)
        self.queue.forget(key)
        if result.requeue_after is not None:
            why = INTERVAL if result.reason == Reason.SYNCED.value else REQUEUE
            self.queue.add_after(key, result.requeue_after, why)

    def _record(self, key: Key, status: str, reason: str, started: float) -> None:
        metrics.RECONCILE_SECONDS.labels(self.shard, reason).observe(time.perf_counter() - started)
        metrics.RECONCILE_TOTAL.labels(key[0], key[1], status, reason, self.shard).inc()

    async def _report(self) -> None:
        while True:
            metrics.WORKQUEUE_DEPTH.labels(self.shard).set(len(self.queue) + self.queue.in_flight)
            metrics.WORKQUEUE_OLDEST_AGE.labels(self.shard).set(self.queue.oldest_waiting())
            await asyncio.sleep(REPORT_INTERVAL)

    def start(self) -> None:
        """Start the workers (returns at once)."""
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        self._reporter = asyncio.create_task(self._report())

    async def stop(self, grace: float = 10.0) -> None:
        """Stop handing out keys; let in-flight reconciles finish for up to ``grace`` seconds."""
        if self._reporter is not None:
            self._reporter.cancel()
        await self.queue.shutdown()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=grace)
            for task in pending:
                task.cancel()
        for task in [*self._workers, *([self._reporter] if self._reporter else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
