"""A shard worker process: reconciles the snippets of the namespaces it owns.

Started by the leader as ``jaas shard ...``; runs asyncio's own event loop (not
uvloop: uvloop's TCP transports and aiohttp's connector together can leave a
closed socket's file descriptor registered, and after an API server restart
every new connection failed with ``RuntimeError: File descriptor N is used by
transport``, MagicStack/uvloop#653, unfixed upstream), connects
to the leader's control socket (evaluations go through it), watches the API
and reconciles. It exits when the leader goes away, and on SIGTERM after
letting in-flight reconciles finish.

This module is the shard's manager: it builds every part once, explicitly,
and hands each its dependencies (client, watch cache, trigger index, token
cache, fetcher, publisher, recorder, reconciler, queue, controller).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from jaas import defaults
from jaas.api.constants import SNIPPET_KIND
from jaas.evaluator.libraries import library_path_aliases
from jaas.evaluator.rendercache import RenderCache
from jaas.observability import logging as jaas_logging
from jaas.observability import metrics, tracing
from jaas.observability.memory import resident_bytes
from jaas.operator.cache import ObjectCache
from jaas.operator.controller import REPORT_INTERVAL, ShardController
from jaas.operator.events import EventRecorder
from jaas.operator.informer import Event, Key
from jaas.operator.kube import Obj, connect
from jaas.operator.publisher import Publisher
from jaas.operator.ratelimit import RateLimiter, parse_rate
from jaas.operator.reconciler import ReconcilerOptions, SnippetReconciler
from jaas.operator.tenancy import TokenCache
from jaas.operator.triggers import TriggerIndex
from jaas.operator.workqueue import WorkQueue
from jaas.options import OperatorOptions
from jaas.shards.assignment import Assignment, RingAssignment
from jaas.shards.channel import LeaderConnection
from jaas.sources.cache import ArtifactCache
from jaas.sources.fetch import ArtifactFetcher
from jaas.sources.urlguard import URLGuard
from jaas.storage.local import LocalStore

log = logging.getLogger(__name__)

#: Seconds the informers get for their first LIST before the shard starts anyway.
SYNC_TIMEOUT = 60.0


class ShardObjects:
    """The watch cache as the reconciler and the cache's filter see it.

    ``accept`` keeps everything in an owned namespace and, from other
    namespaces, what a snippet of this shard references (the trigger index
    knows); ``authoritative`` says when a cache miss means "absent".
    """

    def __init__(self, assignment: Assignment, index: TriggerIndex) -> None:
        self.assignment = assignment
        self.index = index
        self.cache: ObjectCache | None = None

    def accept(self, kind: str, obj: Obj) -> bool:
        """Whether the cache keeps ``obj`` of ``kind``."""
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        if self.assignment.owns(namespace):
            return True
        return self.index.references(kind, namespace, str(meta.get("name") or ""))

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The cached object, or ``None``."""
        return None if self.cache is None else self.cache.get(kind, namespace, name)

    def authoritative(self, kind: str, namespace: str) -> bool:
        """A miss is "absent" only in an owned, fully watched and synced namespace."""
        return (
            self.cache is not None
            and self.assignment.owns(namespace)
            and self.cache.complete(kind, namespace)
        )


async def run_shard(
    options: OperatorOptions,
    shard: str,
    members: list[str],
    leader_socket: Path,
    evaluator_fingerprint: str = "",
) -> int:
    """Run one shard until SIGTERM or until the leader goes away; return the exit code."""
    leader = LeaderConnection(leader_socket, shard)
    await leader.connect()
    client = await connect(options.kubeconfig, shard=shard)
    artifact_cache = ArtifactCache(Path(options.cache_path), options.cache_max_bytes)
    fetcher = ArtifactFetcher(
        artifact_cache,
        max_concurrent_downloads=options.max_concurrent_downloads,
        connect_timeout=options.download_connect_timeout,
        first_byte_timeout=options.download_first_byte_timeout,
        idle_timeout=options.download_idle_timeout,
        min_rate=options.download_min_rate,
        guard=URLGuard(allow_loopback=options.artifact_allow_loopback),
        shard=shard,
    )
    assignment = RingAssignment(shard, members)
    index = TriggerIndex()
    # One worker always stays free for a namespace with nothing in flight (see WorkQueue).
    queue: WorkQueue[Key] = WorkQueue(
        flow=lambda key: key[0],
        max_in_flight_per_flow=max(1, options.concurrent_reconciles - 1),
    )
    objects = ShardObjects(assignment, index)

    def on_event(kind: str, event: Event) -> None:
        triggered = index.handle(kind, event)
        for key in triggered.cancel:
            queue.cancel(key)
        for key in triggered.add:
            queue.add(key, triggered.why)

    cache = ObjectCache(
        client,
        accept=objects.accept,
        on_event=on_event,
        namespaces=options.watch_namespaces,
        label_selector=options.label_selector,
    )
    objects.cache = cache
    render_cache = (
        RenderCache(artifact_cache, evaluator_fingerprint)
        if options.render_cache and evaluator_fingerprint
        else None
    )
    reconciler = SnippetReconciler(
        client,
        render_cache=render_cache,
        objects=objects,
        tokens=TokenCache(client),
        fetcher=fetcher,
        evaluator=leader,
        publisher=Publisher(
            LocalStore(Path(options.storage_path)),
            options.storage_base_url,
            gc_grace=options.artifact_gc_grace,
            cached=lambda ns, name: cache.get("ExternalArtifact", ns, name),
        ),
        recorder=EventRecorder(client, shard),
        limiter=RateLimiter(parse_rate(options.rerender_rate), options.rerender_burst),
        options=ReconcilerOptions(
            shard=shard,
            no_cross_namespace_refs=options.no_cross_namespace_refs,
            max_stack=options.max_stack,
            operator_ext_vars=options.ext_vars,
            default_service_account=options.default_service_account,
            shared_library_aliases=library_path_aliases([Path(p) for p in options.library_paths]),
            max_artifact_bytes=options.max_artifact_bytes,
            max_withdraw_wait=options.max_withdraw_wait,
            observe_library=index.observe_library,
        ),
    )
    controller = ShardController(
        queue,
        reconciler.reconcile,
        shard=shard,
        concurrency=options.concurrent_reconciles,
        permanent_retry=options.permanent_retry_interval,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reporter = asyncio.create_task(_report(shard, cache))
    try:
        await cache.start(SYNC_TIMEOUT)
        controller.start()
        await leader.send_ready()
        heartbeat = asyncio.create_task(_heartbeat(leader, queue, cache))
        log.info(
            "shard %s of %s ready: %d snippets",
            shard,
            members,
            sum(1 for _ in cache.keys(SNIPPET_KIND)),
        )
        lost = asyncio.create_task(leader.lost.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
        code = 0 if stop.is_set() else 1
        if not stop.is_set():
            log.error("the leader process went away; shard %s exits", shard)
        lost.cancel()
        stopped.cancel()
        heartbeat.cancel()
    finally:
        reporter.cancel()
        await controller.stop(options.shutdown_timeout)
        await cache.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await reconciler.flush_events()
        with contextlib.suppress(Exception):
            await fetcher.close()
        artifact_cache.close()
        await leader.close()
        await client.close()
    return code


async def _heartbeat(leader: LeaderConnection, queue: WorkQueue[Key], cache: ObjectCache) -> None:
    """Tell the leader, from this event loop, that it runs and how the work progresses.

    A loop that is wedged sends nothing, and the leader restarts the shard
    (``jaas.shards.leader``); ``watching`` false or a reconcile that has run
    for ``defaults.SHARD_STUCK_RECONCILE`` seconds make it restart the shard too.
    """
    while True:
        progress = {
            "depth": len(queue),
            "in_flight": queue.in_flight,
            "completions": queue.completions,
            "oldest_in_flight": round(queue.oldest_in_flight(), 3),
            "watching": cache.watching(),
            "rss_bytes": resident_bytes(),
        }
        with contextlib.suppress(OSError):
            await leader.send_heartbeat(progress)
        await asyncio.sleep(defaults.SHARD_HEARTBEAT_INTERVAL)


async def _report(shard: str, cache: ObjectCache) -> None:
    while True:
        snippets = list(cache.keys(SNIPPET_KIND))
        metrics.OWNED_NAMESPACES.labels(shard).set(len({ns for ns, _ in snippets}))
        metrics.OWNED_SNIPPETS.labels(shard).set(len(snippets))
        await asyncio.sleep(REPORT_INTERVAL)


def main(
    options: OperatorOptions,
    shard: str,
    members: list[str],
    leader_socket: Path,
    *,
    evaluator_fingerprint: str = "",
) -> int:
    """Process entry point of ``jaas shard``.

    ``evaluator_fingerprint`` is the leader's pool's
    (``jaas.evaluator.rendercache.evaluator_fingerprint``); without it, or
    with ``--render-cache=false``, every render is evaluated.
    """
    jaas_logging.setup(shard, level=options.log_level, fmt=options.log_format)
    provider = tracing.setup_tracing("shard", shard=shard)
    try:
        return asyncio.run(run_shard(options, shard, members, leader_socket, evaluator_fingerprint))
    finally:
        tracing.shutdown_tracing(provider)
