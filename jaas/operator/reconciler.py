"""The per-snippet reconcile pipeline.

One call of ``SnippetReconciler.reconcile`` takes a snippet from its cached
object to a published artifact and a written status. The order of checks, and
so the precedence of Ready reasons, follows metio/jaas
``internal/operator/reconciler.go`` (reconcileSpec): deletion → finalizer →
spec → suspend → external-variable conflicts → library aliases → source →
entry file → libraries → evaluate → package → generation re-check → publish →
status. A failure writes ``Ready=False`` with its reason and never touches the
last good artifact or ExternalArtifact; permanent failures are re-checked every
``permanent_retry`` seconds, transient ones retried with per-key backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from opentelemetry import trace

from jaas.api.conditions import find_condition, now_rfc3339, set_condition
from jaas.api.constants import (
    FINALIZER,
    GROUP,
    READY,
    REQUESTED_AT_ANNOTATION,
    SNIPPET_PLURAL,
    VERSION,
)
from jaas.api.models import JsonnetVariable, SnippetSpec, parse_snippet_spec
from jaas.api.reasons import Reason, ReasonError
from jaas.evaluator.request import EvaluationRequest, EvaluationResult
from jaas.observability import metrics
from jaas.operator.events import EventRecorder
from jaas.operator.kube import KubeApiError, KubeClient, Obj, resource_path
from jaas.operator.libraries import LibraryGetter, check_aliases, resolve_libraries
from jaas.operator.publisher import Publisher
from jaas.operator.sourcing import Fetcher, SourceGetter, resolve_source
from jaas.storage.package import package_rendered, package_sources

log = logging.getLogger(__name__)
tracer = trace.get_tracer("jaas")


class Evaluator(Protocol):
    """Evaluates Jsonnet somewhere killable (the leader's pool, or a local pool in tests)."""

    async def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        """Evaluate; raise ``ReasonError`` (EvaluationFailed / EvaluationTimeout) on failure."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What the queue should do next with the key.

    ``requeue_after``: reconcile again after that many seconds (interval,
    permanent-failure re-check). ``backoff``: a transient failure; retry with
    the key's exponential backoff.
    """

    requeue_after: float | None = None
    backoff: bool = False


@dataclass
class ReconcilerOptions:
    """Behaviour switches of the pipeline (mirroring ``jaas operator`` flags)."""

    shard: str = "shard-0"
    no_cross_namespace_refs: bool = True
    max_stack: int = 500
    #: Process-level external variables (``--ext-var``): always strings, not overridable.
    operator_ext_vars: Mapping[str, str] = field(default_factory=dict)
    #: Seconds between re-checks of a permanent failure (JaaS: one minute).
    permanent_retry: float = 60.0


def snippet_path(namespace: str, name: str, subresource: str | None = None) -> str:
    """API path of a JsonnetSnippet (or of one of its subresources)."""
    return resource_path(GROUP, VERSION, SNIPPET_PLURAL, namespace, name, subresource)


def file_name_of(revision: str) -> str:
    """Store file name of a revision: ``sha256:<hex>`` → ``sha256-<hex>.tar.gz``."""
    return revision.replace(":", "-") + ".tar.gz"


def updated_history(
    history: list[dict[str, Any]], revision: str, limit: int, now: str
) -> list[dict[str, Any]]:
    """The new ``status.history``: newest first, at most ``limit`` entries.

    A republish of the head revision keeps the head's time (metio/jaas
    ``publisher.go``): the keep-set does not churn on identical renders.
    """
    valid = [h for h in history if isinstance(h, dict) and isinstance(h.get("revision"), str)]
    if valid and valid[0]["revision"] == revision:
        return valid[:limit]
    rest = [h for h in valid if h["revision"] != revision]
    return [{"revision": revision, "time": now}, *rest][:limit]


#: Longest condition message written (metav1.Condition allows 32768 characters;
#: a status that stays readable in ``kubectl describe`` is far shorter).
MAX_MESSAGE = 4096


def shorten_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """Cut ``message`` to ``limit`` characters, keeping its head and its tail.

    The head says what failed, the tail where (the outermost stack frames).
    """
    if len(message) <= limit:
        return message
    marker = f"\n... ({len(message) - limit} characters cut) ...\n"
    keep = limit - len(marker)
    head = keep * 3 // 4
    return message[:head] + marker + message[len(message) - (keep - head) :]


def jitter(seconds: float, fraction: float = 0.05) -> float:
    """``seconds`` ± ``fraction`` (Flux's interval jitter)."""
    return seconds * random.uniform(1 - fraction, 1 + fraction)


class SnippetReconciler:
    """Reconciles one snippet at a time; the controller serialises calls per key.

    ``get_snippet`` returns the informer's cached object (synchronously);
    ``get_source`` / ``get_library`` look up referenced objects (cache or API).
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        get_snippet: Callable[[str, str], Obj | None],
        get_source: SourceGetter,
        get_library: LibraryGetter,
        fetcher: Fetcher,
        evaluator: Evaluator,
        publisher: Publisher,
        recorder: EventRecorder,
        options: ReconcilerOptions,
    ) -> None:
        self.client = client
        self.get_snippet = get_snippet
        self.get_source = get_source
        self.get_library = get_library
        self.fetcher = fetcher
        self.evaluator = evaluator
        self.publisher = publisher
        self.recorder = recorder
        self.options = options
        self._background: set[asyncio.Task[None]] = set()

    async def reconcile(self, namespace: str, name: str) -> Outcome:
        """Bring one snippet to its desired state; never raises for user input."""
        obj = self.get_snippet(namespace, name)
        if obj is None:
            return Outcome()
        meta = obj.get("metadata") or {}
        started = time.perf_counter()
        with tracer.start_as_current_span(
            "JsonnetSnippet.Reconcile",
            attributes={
                "jaas.namespace": namespace,
                "jaas.name": name,
                "jaas.generation": int(meta.get("generation") or 0),
                "jaas.shard": self.options.shard,
            },
        ) as span:
            try:
                if meta.get("deletionTimestamp"):
                    return await self._finalize(obj)
                fresh = False
                if FINALIZER not in (meta.get("finalizers") or []):
                    obj = await self._add_finalizer(obj)
                    fresh = True
                outcome, reason = await self._reconcile_spec(obj, fresh=fresh)
            except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as err:
                if isinstance(err, KubeApiError) and err.not_found:
                    return Outcome()  # deleted meanwhile
                log.warning(
                    "reconcile of %s/%s failed, will retry: %r",
                    namespace,
                    name,
                    err,
                    extra={"namespace": namespace, "snippet": name},
                )
                span.set_status(trace.StatusCode.ERROR, repr(err))
                return Outcome(backoff=True)
            span.set_attribute("jaas.reason", reason)
            metrics.RECONCILE_SECONDS.labels(self.options.shard, reason).observe(
                time.perf_counter() - started
            )
            return outcome

    async def _reconcile_spec(self, obj: Obj, *, fresh: bool) -> tuple[Outcome, str]:
        """Run the pipeline on ``obj`` (``fresh``: just read from the API, not the cache)."""
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        generation = int(meta.get("generation") or 0)
        try:
            spec = parse_snippet_spec(obj.get("spec") or {})
            if spec.suspend:
                await self._write_status(
                    obj,
                    Reason.SUSPENDED,
                    "spec.suspend is true; pause until the operator unsets it",
                )
                return Outcome(), Reason.SUSPENDED
            self._check_external_variables(spec)
            check_aliases(spec.libraries)
            with tracer.start_as_current_span("snippet.resolveSource") as span:
                span.set_attribute("jaas.source.mode", "sourceRef" if spec.source_ref else "inline")
                resolved = await resolve_source(
                    namespace,
                    spec.files,
                    spec.source_ref,
                    get_source=self.get_source,
                    fetcher=self.fetcher,
                    no_cross_namespace_refs=self.options.no_cross_namespace_refs,
                )
                span.set_attribute("jaas.source.fileCount", len(resolved.files))
            if spec.entry_file not in resolved.files:
                names = sorted(resolved.files)
                shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
                raise ReasonError(
                    Reason.INVALID_SPEC,
                    f"entry file {spec.entry_file!r} is not among the {len(names)} files of "
                    f"{resolved.origin}: {shown}",
                )
            with tracer.start_as_current_span("snippet.resolveLibraries") as span:
                libraries = await resolve_libraries(
                    namespace,
                    spec.libraries,
                    get_library=self.get_library,
                    get_source=self.get_source,
                    fetcher=self.fetcher,
                    no_cross_namespace_refs=self.options.no_cross_namespace_refs,
                )
                span.set_attribute("jaas.library.count", len(libraries))
            with tracer.start_as_current_span("snippet.evaluate") as span:
                result = await self.evaluator.evaluate(
                    EvaluationRequest(
                        entry_file=spec.entry_file,
                        files=resolved.files,
                        tlas=spec.tlas,
                        external_variables=self._external_variables(spec),
                        libraries=libraries,
                        max_stack=self.options.max_stack,
                        label=f"{namespace}/{name}",
                    )
                )
                span.set_attribute("jaas.eval.renderedBytes", len(result.rendered))
            if spec.output == "rendered":
                package = await asyncio.to_thread(package_rendered, result.rendered)
            else:
                package = await asyncio.to_thread(package_sources, resolved.files)
            with tracer.start_as_current_span("snippet.publish") as span:
                # The keep-set and the generation check need the API's view, not the
                # cache's (metio/jaas reads through its uncached reader here).
                current: Obj = (
                    obj if fresh else await self.client.get(snippet_path(namespace, name))
                )
                if int(current["metadata"].get("generation") or 0) != generation:
                    return Outcome(), "GenerationChanged"  # the newer generation is queued
                status = current.get("status") or {}
                history = updated_history(
                    list(status.get("history") or []), package.revision, spec.history, now_rfc3339()
                )
                keep = {file_name_of(h["revision"]) for h in history}
                artifact = await self.publisher.publish(namespace, name, package, keep)
                span.set_attribute("jaas.publish.revision", artifact.revision)
                span.set_attribute("jaas.publish.retainCount", len(keep))
            message = f"Rendered {len(result.rendered)} bytes from {len(resolved.files)} files"
            await self._write_status(
                current,
                Reason.SYNCED,
                message,
                extra={
                    "revision": artifact.revision,
                    "artifactURL": artifact.url,
                    "lastSyncTime": now_rfc3339(),
                    "history": history,
                },
            )
            metrics.RENDERED_BYTES.labels(self.options.shard).observe(len(result.rendered))
            log.info(
                "rendered %s/%s: %s (%s)",
                namespace,
                name,
                artifact.revision,
                message,
                extra={"namespace": namespace, "snippet": name, "shard": self.options.shard},
            )
            return Outcome(requeue_after=jitter(spec.interval) if spec.interval else None), (
                Reason.SYNCED
            )
        except ReasonError as err:
            await self._write_status(obj, err.reason, err.message)
            trace.get_current_span().set_attribute("jaas.transient", err.transient)
            if err.transient:
                return Outcome(backoff=True), err.reason
            return Outcome(requeue_after=self.options.permanent_retry), err.reason
        except KubeApiError as err:
            if not err.permanent:
                raise
            await self._write_status(
                obj, Reason.RBAC_DENIED, f"the API server refused a request: {err}"
            )
            return Outcome(requeue_after=self.options.permanent_retry), Reason.RBAC_DENIED

    def _check_external_variables(self, spec: SnippetSpec) -> None:
        clashes = sorted(
            v.name for v in spec.external_variables if v.name in self.options.operator_ext_vars
        )
        if clashes:
            raise ReasonError(
                Reason.EXTERNAL_VARIABLE_CONFLICT,
                "spec.externalVariables may not redefine the operator's external variables: "
                + ", ".join(clashes),
            )

    def _external_variables(self, spec: SnippetSpec) -> tuple[JsonnetVariable, ...]:
        operator = tuple(
            JsonnetVariable(name=k, value=v)
            for k, v in sorted(self.options.operator_ext_vars.items())
        )
        return operator + spec.external_variables

    async def _write_status(
        self, obj: Obj, reason: Reason, message: str, *, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Patch ``status`` (Ready, observedGeneration, lastHandledReconcileAt, ``extra``).

        Skips the write when nothing would change; records an Event when the
        Ready status or reason changes (metio/jaas: on every Ready transition).
        """
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        status = obj.get("status") or {}
        ok = reason is Reason.SYNCED
        generation = int(meta.get("generation") or 0)
        message = shorten_message(message)
        conditions = set_condition(
            status.get("conditions"),
            type_=READY,
            status=ok,
            reason=reason.value,
            message=message,
            observed_generation=generation,
        )
        patch: dict[str, Any] = {"conditions": conditions, "observedGeneration": generation}
        requested_at = (meta.get("annotations") or {}).get(REQUESTED_AT_ANNOTATION)
        if requested_at:
            patch["lastHandledReconcileAt"] = requested_at
        if extra:
            patch.update(extra)
        metrics.RECONCILE_TOTAL.labels(
            namespace, name, "True" if ok else "False", reason.value, self.options.shard
        ).inc()
        unchanged = all(
            status.get(k) == v for k, v in patch.items() if k not in ("conditions", "lastSyncTime")
        ) and _same_conditions(status.get("conditions"), conditions)
        if unchanged and "lastSyncTime" not in patch:
            return
        await self.client.merge_patch(snippet_path(namespace, name, "status"), {"status": patch})
        before = find_condition(status.get("conditions"), READY)
        if (
            before is None
            or before.get("status") != ("True" if ok else "False")
            or before.get("reason") != reason.value
        ):
            self._in_background(
                self.recorder.record(
                    obj,
                    type_="Normal" if ok else "Warning",
                    reason=reason.value,
                    note=message,
                    action=reason.value,
                )
            )

    def _in_background(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _add_finalizer(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        finalizers = [*(meta.get("finalizers") or []), FINALIZER]
        patched: Obj = await self.client.merge_patch(
            snippet_path(meta["namespace"], meta["name"]),
            {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}},
        )
        return patched

    async def _finalize(self, obj: Obj) -> Outcome:
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return Outcome()
        try:
            await self.publisher.withdraw(namespace, name)
        except KubeApiError as err:
            if not err.permanent:
                raise
            log.warning(
                "could not delete ExternalArtifact %s/%s (%s); dropping the finalizer anyway",
                namespace,
                name,
                err,
            )
            self._in_background(
                self.recorder.record(
                    obj,
                    type_="Warning",
                    reason="WithdrawForced",
                    note=f"ExternalArtifact could not be deleted: {err}",
                    action="Withdraw",
                )
            )
        finalizers.remove(FINALIZER)
        await self.client.merge_patch(
            snippet_path(namespace, name),
            {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}},
        )
        return Outcome()


def _same_conditions(before: Any, after: list[dict[str, Any]]) -> bool:
    if not isinstance(before, list) or len(before) != len(after):
        return False
    return all(
        isinstance(b, dict) and all(b.get(k) == v for k, v in a.items())
        for b, a in zip(before, after, strict=True)
    )
