"""A shard's controller: informers, trigger index, work queue and reconcile workers.

Watches JsonnetSnippets, JsonnetLibraries and the four Flux source kinds
cluster-wide and keeps only objects in namespaces this shard owns. Triggers
(design.md §3, metio/jaas ``internal/operator/indexes.go``):

* a snippet is queued when it appears, when its ``metadata.generation`` or its
  ``reconcile.fluxcd.io/requestedAt`` annotation changes, and when it is being
  deleted — status-only updates (our own writes) do not queue it;
* a Flux source queues the snippets whose ``spec.sourceRef`` names it, and the
  snippets listing a library whose ``sourceRef`` names it, when its artifact
  or readiness changes;
* a JsonnetLibrary queues the snippets listing it on any change.

The work queue is fair between namespaces (one flow per namespace): a namespace
with many queued snippets delays another namespace's snippet by one reconcile
per namespace ahead of it in the rotation, not by its whole backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from jaas.api.conditions import is_ready
from jaas.api.constants import (
    EXTERNAL_ARTIFACT_KIND,
    FLUX_SOURCE_GROUP,
    FLUX_SOURCE_VERSION,
    GROUP,
    LIBRARY_PLURAL,
    REQUESTED_AT_ANNOTATION,
    SNIPPET_PLURAL,
    SOURCE_KIND_PLURALS,
    VERSION,
)
from jaas.observability import metrics
from jaas.operator.informer import Event, EventType, Informer, Key
from jaas.operator.kube import KubeApiError, KubeClient, Obj, resource_path
from jaas.operator.reconciler import Outcome, SnippetReconciler
from jaas.operator.workqueue import ShutDown, WorkQueue
from jaas.shards.assignment import Assignment

log = logging.getLogger(__name__)

SourceKey = tuple[str, str, str]  # (kind, namespace, name)


def _generation(obj: Obj | None) -> Any:
    return ((obj or {}).get("metadata") or {}).get("generation")


def _requested_at(obj: Obj | None) -> Any:
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(
        REQUESTED_AT_ANNOTATION
    )


def _deleting(obj: Obj | None) -> bool:
    return bool(((obj or {}).get("metadata") or {}).get("deletionTimestamp"))


def _artifact_signature(obj: Obj | None) -> tuple[Any, ...]:
    if obj is None:
        return ()
    artifact = (obj.get("status") or {}).get("artifact") or {}
    return (
        is_ready(obj)[0],
        artifact.get("url"),
        artifact.get("digest"),
        artifact.get("revision"),
    )


def _source_key(owner_namespace: str, ref: Any) -> SourceKey | None:
    if not isinstance(ref, dict) or not ref.get("kind") or not ref.get("name"):
        return None
    return str(ref["kind"]), str(ref.get("namespace") or owner_namespace), str(ref["name"])


def _namespace(key: Key) -> str:
    """The work-queue flow of a snippet key: its namespace (the tenant)."""
    return key[0]


def snippet_needs_reconcile(event: Event) -> bool:
    """The snippet predicate: new, generation or requestedAt changed, or being deleted."""
    if event.type is EventType.ADDED:
        return True
    if event.type is EventType.DELETED:
        return False
    old, new = event.old, event.new
    return (
        _generation(old) != _generation(new)
        or _requested_at(old) != _requested_at(new)
        or (_deleting(new) and not _deleting(old))
    )


class ShardController:
    """Runs the informers and reconcile workers of one shard.

    ``concurrency`` is the number of snippets reconciled at once (different
    keys; one key is never reconciled twice at the same time). Queued snippets
    are handed to the workers round-robin by namespace (``WorkQueue`` flows).
    """

    def __init__(
        self,
        client: KubeClient,
        assignment: Assignment,
        reconciler_factory: Any,
        *,
        concurrency: int = 8,
        sync_timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.assignment = assignment
        self.concurrency = concurrency
        self.sync_timeout = sync_timeout
        self.queue: WorkQueue[Key] = WorkQueue(flow=_namespace)
        accept = self._accept
        self.snippets = Informer(
            client, resource_path(GROUP, VERSION, SNIPPET_PLURAL), self._on_snippet, accept=accept
        )
        self.libraries = Informer(
            client, resource_path(GROUP, VERSION, LIBRARY_PLURAL), self._on_library, accept=accept
        )
        self.sources = {
            kind: Informer(
                client,
                resource_path(FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, plural),
                self._source_handler(kind),
                accept=accept,
            )
            for kind, plural in SOURCE_KIND_PLURALS.items()
        }
        self._by_source: dict[SourceKey, set[Key]] = defaultdict(set)
        self._by_library: dict[tuple[str, str], set[Key]] = defaultdict(set)
        self._refs: dict[Key, tuple[SourceKey | None, list[tuple[str, str]]]] = {}
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        self.reconciler: SnippetReconciler = reconciler_factory(self)

    # --- lookups used by the reconciler -------------------------------------------------

    def _accept(self, obj: Obj) -> bool:
        ns = (obj.get("metadata") or {}).get("namespace") or ""
        return self.assignment.owns(str(ns))

    def cached_snippet(self, namespace: str, name: str) -> Obj | None:
        """The cached snippet, or ``None``."""
        return self.snippets.get(namespace, name)

    def cached_external_artifact(self, namespace: str, name: str) -> Obj | None:
        """The cached ExternalArtifact of an owned namespace, or ``None``."""
        return self.sources[EXTERNAL_ARTIFACT_KIND].get(namespace, name)

    async def _lookup(self, informer: Informer, path: str, namespace: str, name: str) -> Obj | None:
        if self.assignment.owns(namespace) and informer.synced.is_set():
            return informer.get(namespace, name)
        try:
            obj: Obj = await self.client.get(path)
            return obj
        except KubeApiError as err:
            if err.not_found:
                return None
            raise

    async def get_source(self, kind: str, namespace: str, name: str) -> Obj | None:
        """A Flux source object from the cache (owned namespace) or the API."""
        plural = SOURCE_KIND_PLURALS[kind]
        path = resource_path(FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, plural, namespace, name)
        return await self._lookup(self.sources[kind], path, namespace, name)

    async def get_library(self, namespace: str, name: str) -> Obj | None:
        """A JsonnetLibrary from the cache (owned namespace) or the API."""
        path = resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace, name)
        return await self._lookup(self.libraries, path, namespace, name)

    # --- event handlers -----------------------------------------------------------------

    def _index(self, key: Key, obj: Obj | None) -> None:
        old_source, old_libs = self._refs.pop(key, (None, []))
        if old_source is not None:
            self._by_source[old_source].discard(key)
        for lib in old_libs:
            self._by_library[lib].discard(key)
        if obj is None:
            return
        spec = obj.get("spec") or {}
        source = _source_key(key[0], spec.get("sourceRef"))
        libs = [
            (str(ref.get("namespace") or key[0]), str(ref["name"]))
            for ref in spec.get("libraries") or []
            if isinstance(ref, dict) and ref.get("name")
        ]
        if source is not None:
            self._by_source[source].add(key)
        for lib in libs:
            self._by_library[lib].add(key)
        self._refs[key] = (source, libs)

    def _on_snippet(self, event: Event) -> None:
        if event.type is EventType.DELETED:
            self._index(event.key, None)
            self.queue.cancel(event.key)
            return
        self._index(event.key, event.new)
        if snippet_needs_reconcile(event):
            self.queue.add(event.key)

    def _enqueue(self, keys: Iterable[Key]) -> None:
        for key in list(keys):
            self.queue.add(key)

    def _source_handler(self, kind: str) -> Any:
        def handle(event: Event) -> None:
            if _artifact_signature(event.old) == _artifact_signature(event.new):
                return
            source = (kind, event.key[0], event.key[1])
            self._enqueue(self._by_source.get(source, ()))
            for lib in self.libraries.values():
                meta = lib.get("metadata") or {}
                lib_ns = str(meta.get("namespace") or "")
                ref = _source_key(lib_ns, (lib.get("spec") or {}).get("sourceRef"))
                if ref == source:
                    self._enqueue(self._by_library.get((lib_ns, str(meta.get("name"))), ()))

        return handle

    def _on_library(self, event: Event) -> None:
        self._enqueue(self._by_library.get(event.key, ()))

    # --- lifecycle ----------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            outcome = Outcome(backoff=True)
            try:
                outcome = await self.reconciler.reconcile(*key)
            except Exception:
                log.exception("reconcile of %s/%s crashed", *key)
            finally:
                self.queue.done(key)
            if outcome.backoff:
                self.queue.add_after(key, self.queue.backoff(key))
            else:
                self.queue.forget(key)
                if outcome.requeue_after is not None:
                    self.queue.add_after(key, outcome.requeue_after)

    async def _report(self) -> None:
        while True:
            metrics.WORKQUEUE_DEPTH.labels(self.assignment.shard).set(
                len(self.queue) + self.queue.in_flight
            )
            namespaces = {ns for ns, _ in self.snippets.store}
            metrics.OWNED_NAMESPACES.labels(self.assignment.shard).set(len(namespaces))
            await asyncio.sleep(5)

    async def start(self) -> None:
        """Start the informers, wait (bounded) for their first LIST, then start the workers."""
        informers = [self.snippets, self.libraries, *self.sources.values()]
        self._tasks = [asyncio.create_task(inf.run()) for inf in informers]
        self._tasks.append(asyncio.create_task(self._report()))
        try:
            async with asyncio.timeout(self.sync_timeout):
                await asyncio.gather(*(inf.synced.wait() for inf in informers))
        except TimeoutError:
            missing = [inf.path for inf in informers if not inf.synced.is_set()]
            log.warning("informers not synced after %ss: %s", self.sync_timeout, missing)
            await self.snippets.synced.wait()
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        self.ready.set()
        log.info(
            "shard %s ready: %d snippets in %d namespaces",
            self.assignment.shard,
            len(self.snippets.store),
            len({ns for ns, _ in self.snippets.store}),
        )

    async def stop(self, grace: float = 10.0) -> None:
        """Stop watching, let in-flight reconciles finish for up to ``grace`` seconds."""
        for task in self._tasks:
            task.cancel()
        await self.queue.shutdown()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=grace)
            for task in pending:
                task.cancel()
        for task in [*self._tasks, *self._workers]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
