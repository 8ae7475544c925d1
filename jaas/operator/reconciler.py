"""The per-snippet reconcile pipeline: one named stage per step, each with its span.

``SnippetReconciler.reconcile(key)`` takes a snippet from its cached object to
a published artifact and a written status, and either returns a ``Result``
or raises: a ``ReasonError`` after the ``fail`` stage wrote ``Ready=False``
(``transient`` says whether to back off or re-check later), anything else for
a failure that wrote nothing (an API or network error). It never decides
when to retry: the controller does (``jaas.operator.controller``).

The stages, in the order that fixes the precedence of Ready reasons (metio/jaas
``internal/operator/reconciler.go`` reconcileSpec):

1. ``validate``: the spec parses (``InvalidSpec``); then, unless suspended,
   the ServiceAccount is known (``ServiceAccountMissing``), no external
   variable redefines the operator's (``ExternalVariableConflict``), library
   aliases are safe, unique and do not shadow shared ones (``InvalidSpec``),
   and no dependency cycle leads back to the snippet (``DependencyCycle``);
2. ``suspend`` when ``spec.suspend`` (``Suspended``; stored revisions past
   their grace are still pruned);
3. the per-snippet re-render rate limit (a deferral, no status change);
4. ``identity``: a token of the tenant's ServiceAccount (``ServiceAccountMissing``,
   ``RBACDenied``);
5. ``resolve source`` and 6. ``resolve libraries``, read as the tenant
   (``CrossNamespaceRefRejected``, ``SourceNotReady``, ``SourceFetchFailed``,
   ``LibraryNotFound``, ``RBACDenied``, ``InvalidSpec``);
7. ``evaluate`` in an evaluator process (``EvaluationFailed``, ``EvaluationTimeout``),
   unless the render cache holds the result of the same inputs
   (``jaas.evaluator.rendercache``; the file trees then travel to the
   evaluator by digest);
8. ``package`` (``ArtifactTooLarge``, ``InvalidSpec``);
9. ``commit``: re-read the snippet (a newer generation wins), publish as the
   tenant (``RBACDenied``), write ``Synced``;
10. ``fail`` on any reason above: ``Ready=False`` with the reason and a
    message naming what failed; the last good artifact stays published.

Deletion runs ``finalize`` instead: withdraw the ExternalArtifact as the
tenant and delete every stored file, giving up after ``max_withdraw_wait``
or on a permanent error with a ``WithdrawForced`` Warning event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import aiohttp
from opentelemetry import trace

from jaas import defaults
from jaas.api.conditions import find_condition, now_rfc3339, set_condition
from jaas.api.constants import (
    EXTERNAL_ARTIFACT_KIND,
    FINALIZER,
    GROUP,
    LIBRARY_KIND,
    READY,
    REQUESTED_AT_ANNOTATION,
    SNIPPET_KIND,
    SNIPPET_PLURAL,
    VERSION,
)
from jaas.api.models import JsonnetVariable, SnippetSpec, parse_snippet_spec
from jaas.api.reasons import Reason, ReasonError
from jaas.api.runbooks import with_runbook
from jaas.evaluator.rendercache import RenderCache
from jaas.evaluator.request import (
    EvaluationRequest,
    EvaluationResult,
    EvaluatorBusy,
    TreesMissing,
)
from jaas.ipc import FrameError
from jaas.observability import metrics, tracing
from jaas.operator.cycles import find_cycle
from jaas.operator.denials import denied
from jaas.operator.events import EventRecorder
from jaas.operator.informer import Key
from jaas.operator.kube import KubeApiError, KubeClient, Obj, resource_path
from jaas.operator.libraries import check_aliases, library_path, resolve_libraries
from jaas.operator.publisher import Publisher
from jaas.operator.ratelimit import RateLimiter
from jaas.operator.sourcing import Fetcher, ResolvedSource, resolve_source
from jaas.operator.tenancy import TokenCache, service_account_of, tenant_client
from jaas.operator.workqueue import Trigger
from jaas.sources.extract import MAX_ENTRY_BYTES
from jaas.storage.package import Package, package_rendered, package_sources

log = logging.getLogger(__name__)


class Evaluator(Protocol):
    """Evaluates Jsonnet somewhere killable (the leader's pool, or a local pool in tests)."""

    async def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        """Evaluate; raise ``ReasonError`` on failure.

        The reasons are EvaluationFailed, EvaluationTimeout and
        ArtifactTooLarge. The result of an ``output: rendered`` request
        carries the consumer files and the objects summary.
        """
        ...


class Objects(Protocol):
    """What the reconciler reads from the shard's watch cache."""

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The cached object, or ``None``."""
        ...

    def authoritative(self, kind: str, namespace: str) -> bool:
        """Whether a miss in ``namespace`` means the object does not exist."""
        ...


@dataclass(frozen=True)
class Result:
    """How a reconcile ended without a failure.

    ``reason`` names it for metrics and logs (a Ready reason, or ``RateLimited``,
    ``GenerationChanged``, ``Deleted``, ``Gone``); ``ready`` is the Ready status
    written (``None``: none was); ``requeue_after`` asks for another reconcile
    after that many seconds (``spec.interval``, a rate-limit wait, the next
    stored revision reaching its GC grace).
    """

    reason: str
    ready: bool | None = None
    requeue_after: float | None = None


@dataclass(frozen=True)
class ReconcilerOptions:
    """Behaviour switches of the pipeline (``jaas operator`` flags; no defaults here)."""

    shard: str
    no_cross_namespace_refs: bool
    max_stack: int
    #: Process-level external variables (``--ext-var``): always strings, not overridable.
    operator_ext_vars: Mapping[str, str]
    default_service_account: str | None
    #: Aliases of the ``--library-path`` libraries a snippet alias may not shadow.
    shared_library_aliases: frozenset[str]
    #: ``--max-artifact-bytes``; 0 disables the operator cap (consumer caps always apply).
    max_artifact_bytes: int
    #: ``--max-withdraw-wait``: seconds after deletion started that a withdraw is retried.
    max_withdraw_wait: float
    #: Called with every library object read, so the trigger index learns its sourceRef.
    observe_library: Callable[[Obj], None] = field(default=lambda _obj: None)


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


def keep_set(history: list[dict[str, Any]]) -> set[str]:
    """Store file names of the revisions in ``status.history``."""
    return {
        file_name_of(h["revision"])
        for h in history
        if isinstance(h, dict) and isinstance(h.get("revision"), str)
    }


#: Ready reason of a reconcile that failed unexpectedly and is retried with
#: backoff, with ``Ready=Unknown`` (Flux ``meta.ProgressingWithRetryReason``).
PROGRESSING_WITH_RETRY = "ProgressingWithRetry"
#: Flux's reason while a reconcile of the current generation is under way.
PROGRESSING = "Progressing"
#: The message written when the API refuses a status as too large.
SHORT_MESSAGE = 512

#: Longest condition message written (metav1.Condition allows 32768 characters;
#: a status that stays readable in ``kubectl describe`` is far shorter).
MAX_MESSAGE = 4096


class _Derived:
    """Marks an argument left to its derived default."""


_DERIVED = _Derived()


def _too_large(err: KubeApiError) -> bool:
    """Whether the API refused a write for its size (413, or etcd's limit behind a 500)."""
    return err.status == 413 or "too large" in err.message.lower()


def shorten_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """Cut ``message`` to ``limit`` characters, keeping its head and its tail.

    The head says what failed, the tail where (the outermost stack frames). A
    runbook link at the end (:func:`failure_message`) is kept whole, after
    the tail of the message it ends.
    """
    if len(message) <= limit:
        return message
    link = _RUNBOOK_LINK.search(message)
    suffix = link.group(0) if link is not None and len(link.group(0)) < limit // 2 else ""
    body = message[: len(message) - len(suffix)]
    room = limit - len(suffix)
    marker = f"\n... ({len(body) - room} characters cut) ...\n"
    keep = room - len(marker)
    head = keep * 3 // 4
    return body[:head] + marker + body[len(body) - (keep - head) :] + suffix


#: The runbook link ``failure_message`` ends a message with.
_RUNBOOK_LINK = re.compile(r" \(runbook: [^\s()]+\)$")


def failure_message(err: ReasonError) -> str:
    """The Ready message of a failure: its message and its runbook link.

    As metio/jaas (``decorateMessage``), every failure message ends in
    `` (runbook: <url>)``; see :mod:`jaas.api.runbooks`. ``shorten_message``
    keeps the link whole.
    """
    return with_runbook(err.reason, err.message)


def jitter(seconds: float, fraction: float = 0.05) -> float:
    """``seconds`` ± ``fraction`` (Flux's interval jitter)."""
    return seconds * random.uniform(1 - fraction, 1 + fraction)


def _sooner(*delays: float | None) -> float | None:
    present = [d for d in delays if d is not None]
    return min(present) if present else None


def _age(timestamp: str) -> float:
    """Seconds since an RFC 3339 ``metav1.Time``."""
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    return time.time() - then


def check_external_variables(spec: SnippetSpec, operator_ext_vars: Mapping[str, str]) -> None:
    """Refuse ``spec.externalVariables`` that redefine the operator's (``--ext-var``).

    Raises:
        ReasonError: ``ExternalVariableConflict`` naming the clashing names
            (metio/jaas ``internal/operator/variables.go``).
    """
    clashes = sorted(v.name for v in spec.external_variables if v.name in operator_ext_vars)
    if clashes:
        raise ReasonError(
            Reason.EXTERNAL_VARIABLE_CONFLICT,
            "spec.externalVariables may not redefine the operator's external "
            "variables (--ext-var, JAAS_EXT_VAR_*): " + ", ".join(clashes),
        )


def check_entry_file(entry_file: str, resolved: ResolvedSource) -> None:
    """Refuse a source whose files do not hold ``entry_file``.

    Raises:
        ReasonError: ``InvalidSpec`` listing (up to ten of) the files there are.
    """
    if entry_file not in resolved.files:
        names = sorted(resolved.files)
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        raise ReasonError(
            Reason.INVALID_SPEC,
            f"resolve source: entry file {entry_file!r} is not among the "
            f"{len(names)} files of {resolved.origin}: {shown}",
        )


def output_cap(spec: SnippetSpec, max_artifact_bytes: int) -> int:
    """Largest rendered output ``package_output`` could publish (0: the output is not published).

    ``max_artifact_bytes`` is ``--max-artifact-bytes`` (0: no operator cap;
    the 16 MiB a consumer extracts per file always applies).
    """
    if spec.output != "rendered":
        return 0  # output: source publishes the files; the render only has to succeed
    return min(MAX_ENTRY_BYTES, max_artifact_bytes or MAX_ENTRY_BYTES)


def evaluation_request(
    spec: SnippetSpec,
    files: Mapping[str, bytes],
    libraries: Mapping[str, Mapping[str, bytes]],
    *,
    label: str,
    operator_ext_vars: Mapping[str, str],
    max_stack: int,
    max_artifact_bytes: int,
) -> EvaluationRequest:
    """The evaluation of ``spec`` over its resolved ``files`` and ``libraries``.

    The operator's external variables come first, sorted by name, then the
    snippet's (``check_external_variables`` has refused overlaps). The
    evaluator refuses an output larger than ``package_output`` could publish
    (``output_cap``) before sending it; ``output: source`` discards the output.

    Args:
        spec: the parsed snippet spec.
        files: the snippet's files (inline, or its source's artifact).
        libraries: ``{alias: files}`` of ``spec.libraries``.
        label: ``<namespace>/<name>`` of the snippet, for logs and fair queueing.
        operator_ext_vars: ``--ext-var`` / ``JAAS_EXT_VAR_*``.
        max_stack: ``--max-stack``.
        max_artifact_bytes: ``--max-artifact-bytes`` (0: none).
    """
    operator_vars = tuple(
        JsonnetVariable(name=k, value=v) for k, v in sorted(operator_ext_vars.items())
    )
    cap = output_cap(spec, max_artifact_bytes)
    return EvaluationRequest(
        entry_file=spec.entry_file,
        files=files,
        tlas=spec.tlas,
        external_variables=operator_vars + spec.external_variables,
        libraries=libraries,
        max_stack=max_stack,
        label=label,
        max_output_bytes=cap,
        max_output_name=(
            "--max-artifact-bytes"
            if cap == max_artifact_bytes
            else "the most one file consumers can extract"
        ),
        discard_output=spec.output != "rendered",
    )


async def evaluate_request(
    evaluate: Callable[[EvaluationRequest], Awaitable[EvaluationResult]],
    request: EvaluationRequest,
) -> EvaluationResult:
    """``await evaluate(request)``, saying so when the evaluator refused an oversized output.

    Raises:
        ReasonError: as ``evaluate``; ``ArtifactTooLarge`` ends with "refused
            in the evaluator, nothing published".
    """
    try:
        return await evaluate(request)
    except ReasonError as err:
        if err.reason is not Reason.ARTIFACT_TOO_LARGE:
            raise
        raise ReasonError(
            Reason.ARTIFACT_TOO_LARGE,
            f"{err.message}; refused in the evaluator, nothing published",
        ) from err


def package_output(
    spec: SnippetSpec,
    files: Mapping[str, bytes],
    result: EvaluationResult,
    *,
    max_artifact_bytes: int,
) -> Package:
    """The deterministic tarball the snippet publishes: its render, or its source ``files``.

    Blocking (tar and gzip): call from a thread on an event loop.

    Raises:
        ReasonError: ``ArtifactTooLarge`` (over ``max_artifact_bytes``, 0:
            none), or ``InvalidSpec`` for a source file name consumers would
            drop (``output: source``).
    """
    cap = max_artifact_bytes or None
    if spec.output == "rendered":
        return package_rendered(
            result.rendered, result.consumer_files, result.objects_summary, max_artifact_bytes=cap
        )
    return package_sources(files, max_artifact_bytes=cap)


class SnippetReconciler:
    """Reconciles one snippet at a time; the controller serialises calls per key.

    Dependencies are passed in whole (nothing reaches back into the controller):
    ``client`` is the operator's identity (snippet status, finalizer, the cycle
    walk); ``tokens`` mint the tenant identities every other call is made with.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        objects: Objects,
        tokens: TokenCache,
        fetcher: Fetcher,
        evaluator: Evaluator,
        publisher: Publisher,
        recorder: EventRecorder,
        limiter: RateLimiter,
        options: ReconcilerOptions,
        render_cache: RenderCache | None = None,
    ) -> None:
        self.client = client
        self.render_cache = render_cache
        self.objects = objects
        self.tokens = tokens
        self.fetcher = fetcher
        self.evaluator = evaluator
        self.publisher = publisher
        self.recorder = recorder
        self.limiter = limiter
        self.options = options
        self._background: set[asyncio.Task[None]] = set()

    async def reconcile(self, key: Key, triggers: Sequence[Trigger] = ()) -> Result:
        """Bring snippet ``key`` (namespace, name) to its desired state.

        One trace per reconcile: the root span ``JsonnetSnippet.Reconcile``
        (namespace, name, generation, shard, ``jaas.trigger``: the causes in
        ``triggers``, comma-separated) with a child span per stage. A
        re-render caused by a Flux source change carries the source's
        revision (``jaas.source.revision``) and a link shared by every render
        of that revision (:func:`jaas.observability.tracing.revision_link`).
        One log line inside the span says how the reconcile ended.

        Raises:
            ReasonError: a failure, already written as ``Ready=False``.
            KubeApiError, aiohttp.ClientError, OSError, TimeoutError: a
                transient failure that wrote nothing.
        """
        namespace, name = key
        obj = self.objects.get(SNIPPET_KIND, namespace, name)
        if obj is None:
            return Result("Gone")
        meta = obj.get("metadata") or {}
        attributes: dict[str, Any] = {
            "jaas.namespace": namespace,
            "jaas.name": name,
            "jaas.generation": int(meta.get("generation") or 0),
            "jaas.shard": self.options.shard,
            "jaas.trigger": ",".join(dict.fromkeys(t.cause for t in triggers)) or "unknown",
        }
        links = []
        for trigger in triggers:
            if trigger.cause == "source" and trigger.source and trigger.revision:
                attributes.setdefault("jaas.source.revision", trigger.revision)
                links.append(tracing.revision_link(*trigger.source, trigger.revision))
        fields = {"namespace": namespace, "snippet": name, "shard": self.options.shard}
        with tracing.span("JsonnetSnippet.Reconcile", attributes=attributes, links=links) as span:
            try:
                if meta.get("deletionTimestamp"):
                    result = await self.finalize(obj)
                else:
                    result = await self._reconcile_spec(obj)
            except ReasonError as err:
                log.warning(
                    "reconcile of %s/%s failed: %s: %s",
                    namespace,
                    name,
                    err.reason.value,
                    err.message,
                    extra={**fields, "reason": err.reason.value},
                )
                raise
            except KubeApiError as err:
                if err.not_found and err.resource.startswith(SNIPPET_PLURAL + "."):
                    return Result("Gone")  # the snippet was deleted meanwhile
                self._log_retry(namespace, name, err, fields)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as err:
                self._log_retry(namespace, name, err, fields)
                raise
            span.set_attribute("jaas.reason", result.reason)
            if result.reason != Reason.SYNCED.value:  # Synced logs its revision in ``commit``
                log.info(
                    "reconciled %s/%s: %s",
                    namespace,
                    name,
                    result.reason,
                    extra={**fields, "reason": result.reason},
                )
            return result

    @staticmethod
    def _log_retry(namespace: str, name: str, err: Exception, fields: dict[str, str]) -> None:
        log.warning(
            "reconcile of %s/%s failed, retrying with backoff: %r",
            namespace,
            name,
            err,
            extra={**fields, "reason": PROGRESSING_WITH_RETRY},
            exc_info=not isinstance(
                err, KubeApiError | OSError | TimeoutError | aiohttp.ClientError
            ),
        )

    @contextlib.contextmanager
    def _stage(self, stage: str) -> Iterator[trace.Span]:
        """Span ``snippet.<stage>`` and ``jaas_reconcile_stage_duration_seconds{stage}``."""
        started = time.perf_counter()
        try:
            with tracing.span(f"snippet.{stage}") as span:
                yield span
        finally:
            metrics.STAGE_SECONDS.labels(self.options.shard, stage).observe(
                time.perf_counter() - started
            )

    async def _reconcile_spec(self, obj: Obj) -> Result:
        fresh = False
        try:
            if FINALIZER not in (obj["metadata"].get("finalizers") or []):
                obj = await self._add_finalizer(obj)
                fresh = True
            spec = await self.validate(obj)
            if spec.suspend:
                return await self.suspend(obj)
            wait = self.limiter.reserve(_key(obj))
            if wait > 0:
                return self._rate_limited(obj, wait)
            tenant = await self.identity(obj, spec)
            source = await self.resolve_source(obj, spec, tenant)
            libraries = await self.resolve_libraries(obj, spec, tenant)
            try:
                result = await self.evaluate(obj, spec, source, libraries)
            except EvaluatorBusy as busy:
                return await self._evaluator_busy(obj, busy)
            package = await self.package(spec, source, result)
            return await self.commit(obj, spec, tenant, source, result, package, fresh=fresh)
        except ReasonError as err:
            await self.fail(obj, err)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if not (isinstance(err, KubeApiError) and err.not_found):
                await self.retrying(obj, err)
            raise

    # --- stages -----------------------------------------------------------------------

    async def validate(self, obj: Obj) -> SnippetSpec:
        """Check everything that needs no tenant access; return the parsed spec.

        Raises:
            ReasonError: ``InvalidSpec``, ``ServiceAccountMissing``,
                ``ExternalVariableConflict``, ``DependencyCycle``, or
                ``RBACDenied`` / ``SourceFetchFailed`` when the cycle walk
                cannot read what it needs.
        """
        with tracing.span("snippet.validate"):
            spec = parse_snippet_spec(obj.get("spec") or {})
            if spec.suspend:
                return spec
            service_account_of(
                obj["metadata"]["namespace"],
                spec.service_account_name,
                self.options.default_service_account,
            )
            check_external_variables(spec, self.options.operator_ext_vars)
            check_aliases(spec.libraries, self.options.shared_library_aliases)
            await self._check_cycles(obj, spec)
            return spec

    async def _check_cycles(self, obj: Obj, spec: SnippetSpec) -> None:
        has_edge = bool(spec.libraries) or (
            spec.source_ref is not None and spec.source_ref.kind == EXTERNAL_ARTIFACT_KIND
        )
        if not has_edge:
            return
        try:
            cycle = await find_cycle(
                obj, get_snippet=self._lookup_snippet, get_library=self._lookup_library
            )
        except KubeApiError as err:
            if err.permanent:
                raise denied("validate (dependency-cycle walk)", err) from err
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"validate: the dependency-cycle walk could not complete: {err}",
                transient=True,
            ) from err
        if cycle is not None:
            raise ReasonError(
                Reason.DEPENDENCY_CYCLE,
                f"spec.sourceRef chain forms a cycle: {cycle}; nothing is published until "
                "one of its snippets stops depending on the next",
            )

    async def _lookup(self, kind: str, path: str, namespace: str, name: str) -> Obj | None:
        if self.objects.authoritative(kind, namespace):
            return self.objects.get(kind, namespace, name)
        try:
            found: Obj = await self.client.get(path)
            return found
        except KubeApiError as err:
            if err.not_found:
                return None
            raise

    async def _lookup_snippet(self, namespace: str, name: str) -> Obj | None:
        return await self._lookup(SNIPPET_KIND, snippet_path(namespace, name), namespace, name)

    async def _lookup_library(self, namespace: str, name: str) -> Obj | None:
        return await self._lookup(LIBRARY_KIND, library_path(namespace, name), namespace, name)

    async def suspend(self, obj: Obj) -> Result:
        """``Suspended``: keep the artifact, but still prune revisions past their grace."""
        with tracing.span("snippet.suspend"):
            meta = obj["metadata"]
            history = list((obj.get("status") or {}).get("history") or [])
            prune_in = await self.publisher.prune(
                meta["namespace"], meta["name"], keep_set(history)
            )
            await self._write_status(
                obj, Reason.SUSPENDED, "spec.suspend is true; pause until the operator unsets it"
            )
            return Result(Reason.SUSPENDED.value, ready=False, requeue_after=prune_in)

    def _rate_limited(self, obj: Obj, wait: float) -> Result:
        meta = obj["metadata"]
        metrics.RATE_LIMITED.labels(meta["namespace"], meta["name"]).inc()
        self._in_background(
            self.recorder.record(
                obj,
                type_="Warning",
                reason="RateLimited",
                note=f"reconcile deferred for {wait:.1f}s by the per-snippet re-render rate "
                "limit (--rerender-rate/--rerender-burst)",
                action="RateLimited",
            )
        )
        return Result("RateLimited", requeue_after=wait)

    async def identity(self, obj: Obj, spec: SnippetSpec) -> KubeClient:
        """A view of the client acting as the snippet's ServiceAccount, its token minted.

        Raises:
            ReasonError: ``ServiceAccountMissing`` or ``RBACDenied``.
        """
        with tracing.span("snippet.identity"):
            namespace, sa = service_account_of(
                obj["metadata"]["namespace"],
                spec.service_account_name,
                self.options.default_service_account,
            )
            return await tenant_client(self.client, self.tokens, namespace, sa)

    async def resolve_source(
        self, obj: Obj, spec: SnippetSpec, tenant: KubeClient
    ) -> ResolvedSource:
        """The snippet's files (inline, or its source's artifact read as the tenant).

        Raises:
            ReasonError: see ``jaas.operator.sourcing.resolve_source``; and
                ``InvalidSpec`` when the entry file is not among the files.
        """
        with self._stage("resolveSource") as span:
            span.set_attribute("jaas.source.mode", "sourceRef" if spec.source_ref else "inline")
            resolved = await resolve_source(
                obj["metadata"]["namespace"],
                spec.files,
                spec.source_ref,
                reader=tenant,
                fetcher=self.fetcher,
                no_cross_namespace_refs=self.options.no_cross_namespace_refs,
            )
            span.set_attribute("jaas.source.fileCount", len(resolved.files))
            check_entry_file(spec.entry_file, resolved)
            return resolved

    async def resolve_libraries(
        self, obj: Obj, spec: SnippetSpec, tenant: KubeClient
    ) -> dict[str, dict[str, bytes]]:
        """``{alias: files}`` of ``spec.libraries``, read as the tenant.

        Raises:
            ReasonError: see ``jaas.operator.libraries.resolve_libraries``.
        """
        with self._stage("resolveLibraries") as span:
            libraries = await resolve_libraries(
                obj["metadata"]["namespace"],
                spec.libraries,
                reader=tenant,
                fetcher=self.fetcher,
                no_cross_namespace_refs=self.options.no_cross_namespace_refs,
                observe=self.options.observe_library,
            )
            span.set_attribute("jaas.library.count", len(libraries))
            return libraries

    async def evaluate(
        self,
        obj: Obj,
        spec: SnippetSpec,
        source: ResolvedSource,
        libraries: dict[str, dict[str, bytes]],
    ) -> EvaluationResult:
        """Evaluate the entry file in an evaluator process.

        The evaluator refuses an output larger than ``package`` could publish
        before sending it (``output_cap``, and the per-file limit on the
        files it computes beside ``rendered.json``), so an oversized render
        never reaches the leader or this shard. For ``output: rendered`` the
        result carries those files and the objects summary, so this shard
        never parses the render.

        Raises:
            ReasonError: ``EvaluationFailed``, ``EvaluationTimeout`` or
                ``ArtifactTooLarge``.
        """
        meta = obj["metadata"]
        with self._stage("evaluate") as span:
            span.set_attribute("jaas.source.fileCount", len(source.files))
            span.set_attribute("jaas.library.count", len(libraries))
            request = evaluation_request(
                spec,
                source.files,
                libraries,
                label=f"{meta['namespace']}/{meta['name']}",
                operator_ext_vars=self.options.operator_ext_vars,
                max_stack=self.options.max_stack,
                max_artifact_bytes=self.options.max_artifact_bytes,
            )
            result = await evaluate_request(
                lambda request: self._evaluate_or_reuse(request, span), request
            )
            span.set_attribute("jaas.eval.renderedBytes", result.size)
            return result

    async def _evaluate_or_reuse(
        self, request: EvaluationRequest, span: trace.Span
    ) -> EvaluationResult:
        """The render cache's result for ``request``'s inputs, or a new evaluation (then cached).

        Without a render cache, or when its directory cannot be written, the
        request is evaluated with its trees inline.
        """
        cache = self.render_cache
        if cache is None:
            return await self.evaluator.evaluate(request)
        try:
            by_digest, key = await asyncio.to_thread(cache.prepare, request)
            cached = await asyncio.to_thread(cache.get, key)
        except (OSError, FrameError) as err:
            log.warning("render cache unavailable for %s: %s", request.label, err)
            metrics.RENDER_CACHE_TOTAL.labels("error").inc()
            return await self.evaluator.evaluate(request)
        span.set_attribute("jaas.render.key", key)
        span.set_attribute("jaas.render.cached", cached is not None)
        if cached is not None:
            metrics.RENDER_CACHE_TOTAL.labels("hit").inc()
            return cached
        metrics.RENDER_CACHE_TOTAL.labels("miss").inc()
        try:
            result = await self.evaluator.evaluate(by_digest)
        except TreesMissing as missing:
            log.info("%s: %s; sending them inline", request.label, missing)
            result = await self.evaluator.evaluate(request)
        try:
            await asyncio.to_thread(cache.put, key, result)
        except (OSError, FrameError) as err:
            log.warning("render of %s not cached: %s", request.label, err)
        return result

    async def package(
        self, spec: SnippetSpec, source: ResolvedSource, result: EvaluationResult
    ) -> Package:
        """The deterministic tarball of ``rendered.json`` or of the source files.

        Raises:
            ReasonError: ``ArtifactTooLarge``, or ``InvalidSpec`` for a source
                file name consumers would drop (``output: source``).
        """
        with self._stage("package") as span:
            package = await asyncio.to_thread(
                package_output,
                spec,
                source.files,
                result,
                max_artifact_bytes=self.options.max_artifact_bytes,
            )
            span.set_attribute("jaas.package.bytes", package.size)
            return package

    async def commit(
        self,
        obj: Obj,
        spec: SnippetSpec,
        tenant: KubeClient,
        source: ResolvedSource,
        result: EvaluationResult,
        package: Package,
        *,
        fresh: bool,
    ) -> Result:
        """Publish as the tenant and write ``Synced``, unless a newer generation arrived.

        Raises:
            ReasonError: ``RBACDenied`` when the tenant may not write its
                ExternalArtifact (nothing is written to the status then but
                that reason).
        """
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        generation = int(meta.get("generation") or 0)
        with self._stage("publish") as span:
            # The keep-set and the generation check need the API's view, not the
            # cache's (metio/jaas reads through its uncached reader here).
            current: Obj = obj if fresh else await self.client.get(snippet_path(namespace, name))
            if int(current["metadata"].get("generation") or 0) != generation:
                return Result("GenerationChanged")  # the newer generation is queued
            status = current.get("status") or {}
            history = updated_history(
                list(status.get("history") or []), package.revision, spec.history, now_rfc3339()
            )
            try:
                published = await self.publisher.publish(
                    tenant, namespace, name, package, keep_set(history)
                )
            except KubeApiError as err:
                if err.permanent:
                    raise denied(
                        "publish", err, what=f"ExternalArtifact {namespace}/{name}"
                    ) from err
                raise
            artifact = published.artifact
            span.set_attribute("jaas.publish.revision", artifact.revision)
            span.set_attribute("jaas.publish.retainCount", len(history))
        message = f"Rendered {result.size} bytes from {len(source.files)} files"
        if package.objects_summary is not None:
            message += f": {package.objects_summary}"
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
        metrics.RENDERED_BYTES.labels(self.options.shard).observe(result.size)
        log.info(
            "rendered %s/%s: %s (%s)",
            namespace,
            name,
            artifact.revision,
            message,
            extra={"namespace": namespace, "snippet": name, "shard": self.options.shard},
        )
        interval = jitter(spec.interval) if spec.interval else None
        return Result(
            Reason.SYNCED.value, ready=True, requeue_after=_sooner(interval, published.prune_in)
        )

    async def fail(self, obj: Obj, err: ReasonError) -> None:
        """Write ``Ready=False`` with the failure's reason; the published artifact stays."""
        with tracing.span("snippet.fail") as span:
            span.set_attribute("jaas.reason", err.reason.value)
            await self._write_status(obj, err.reason, failure_message(err))

    async def _evaluator_busy(self, obj: Obj, busy: EvaluatorBusy) -> Result:
        """Backpressure from the evaluator pool: requeue soon; not a failure.

        A re-render of the generation already rendered keeps its status. A
        new generation gets ``Ready=Unknown`` (``Progressing``, Flux) once, so
        an older generation's ``Ready=True`` does not stand for it meanwhile.
        """
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"].get("generation"):
            message = f"waiting for a free evaluator: {busy}"
            await self._write_status(obj, PROGRESSING, message, ready=None)
        return Result("EvaluatorBusy", requeue_after=defaults.EVALUATOR_BUSY_REQUEUE)

    async def retrying(self, obj: Obj, err: Exception) -> None:
        """Write ``Ready=Unknown`` (``ProgressingWithRetry``) for an unexpected failure.

        Whatever went wrong (an API error, a bug), the current generation's
        status then says that it is not rendered yet and why, instead of an
        older generation's ``Ready=True``; the controller retries with backoff
        and the published artifact stays. A status write that fails as well
        is logged, not raised: the original error is what the caller raises.
        """
        with tracing.span("snippet.fail") as span:
            span.set_attribute("jaas.reason", PROGRESSING_WITH_RETRY)
            message = f"reconcile failed, retrying with backoff: {type(err).__name__}: {err}"
            try:
                await self._write_status(obj, PROGRESSING_WITH_RETRY, message, ready=None)
            except asyncio.CancelledError:
                raise
            except Exception as write_error:
                meta = obj["metadata"]
                log.warning(
                    "could not write the status of %s/%s after %r: %r",
                    meta["namespace"],
                    meta["name"],
                    err,
                    write_error,
                )

    # --- deletion ---------------------------------------------------------------------

    async def finalize(self, obj: Obj) -> Result:
        """Withdraw the ExternalArtifact as the tenant, delete the stored files, drop the finalizer.

        A withdraw that fails transiently is retried (raise) until
        ``max_withdraw_wait`` after the deletion started; a permanent failure
        (the ServiceAccount is gone, RBAC refuses the delete) or the timeout
        force-drops the finalizer with a ``WithdrawForced`` Warning event
        (metio/jaas ``reconcileDelete``); the stored files are deleted in
        every case.
        """
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return Result("Deleted")
        with tracing.span("snippet.withdraw"):
            forced = await self._withdraw(obj)
            await self.publisher.delete_stored(namespace, name)
            finalizers.remove(FINALIZER)
            await self.client.merge_patch(
                snippet_path(namespace, name),
                {
                    "metadata": {
                        "finalizers": finalizers,
                        "resourceVersion": meta["resourceVersion"],
                    }
                },
            )
        self.limiter.forget((namespace, name))
        if forced is not None:
            why, failure = forced
            metrics.FORCE_DROPS.labels(namespace, name, why).inc()
            self._in_background(
                self.recorder.record(
                    obj,
                    type_="Warning",
                    reason="WithdrawForced",
                    note=f"finalizer dropped without deleting the ExternalArtifact "
                    f"({why}); its stored artifacts were deleted: {failure}",
                    action="Withdraw",
                )
            )
            log.warning(
                "withdraw of %s/%s forced (%s): %s",
                namespace,
                name,
                why,
                failure,
                extra={"namespace": namespace, "snippet": name},
            )
        return Result("Deleted")

    async def _withdraw(self, obj: Obj) -> tuple[str, str] | None:
        """Delete the ExternalArtifact; ``(why, message)`` when the withdraw is given up."""
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        spec = obj.get("spec") or {}
        sa = spec.get("serviceAccountName") if isinstance(spec, dict) else None
        try:
            tenant_ns, tenant_sa = service_account_of(
                namespace, sa if isinstance(sa, str) else None, self.options.default_service_account
            )
            tenant = await tenant_client(self.client, self.tokens, tenant_ns, tenant_sa)
        except ReasonError as err:
            await self.fail(obj, err)
            return "tenant_client_permanent", err.message
        except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as err:
            return self._withdraw_retry(obj, "tenant_client_timeout", err)
        try:
            await self.publisher.withdraw_external_artifact(tenant, namespace, name)
        except KubeApiError as err:
            if err.permanent or err.unauthorized:
                failure = denied("withdraw", err, what=f"ExternalArtifact {namespace}/{name}")
                await self.fail(obj, failure)
                return "withdraw_permanent", failure.message
            return self._withdraw_retry(obj, "withdraw_timed_out", err)
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            return self._withdraw_retry(obj, "withdraw_timed_out", err)
        return None

    def _withdraw_retry(self, obj: Obj, why: str, err: Exception) -> tuple[str, str]:
        started = str(obj["metadata"].get("deletionTimestamp") or "")
        if started and _age(started) >= self.options.max_withdraw_wait:
            return why, f"gave up after --max-withdraw-wait: {err}"
        raise err

    # --- status -----------------------------------------------------------------------

    async def _write_status(
        self,
        obj: Obj,
        reason: Reason | str,
        message: str,
        *,
        ready: bool | _Derived | None = _DERIVED,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Patch ``status`` (Ready, observedGeneration, lastHandledReconcileAt, ``extra``).

        ``ready`` defaults to whether ``reason`` is ``Synced``; ``None`` writes
        ``Ready=Unknown``. Skips the write when nothing would change; records
        an Event when the Ready status or reason changes (metio/jaas: on every
        Ready transition). When the API refuses the patch as too large (an
        object near etcd's size limit, HTTP 413 or etcd's "request is too
        large"), writes it again with the message cut to ``SHORT_MESSAGE``.

        Raises:
            KubeApiError: the API refused the write (also the short one).
        """
        with self._stage("status"):
            meta = obj["metadata"]
            namespace, name = meta["namespace"], meta["name"]
            status = obj.get("status") or {}
            reason_text = reason.value if isinstance(reason, Reason) else reason
            ok = reason_text == Reason.SYNCED.value if isinstance(ready, _Derived) else ready
            generation = int(meta.get("generation") or 0)
            full_message, message = message, shorten_message(message)

            def build(text: str) -> dict[str, Any]:
                conditions = set_condition(
                    status.get("conditions"),
                    type_=READY,
                    status=ok,
                    reason=reason_text,
                    message=text,
                    observed_generation=generation,
                )
                patch: dict[str, Any] = {"conditions": conditions, "observedGeneration": generation}
                requested_at = (meta.get("annotations") or {}).get(REQUESTED_AT_ANNOTATION)
                if requested_at:
                    patch["lastHandledReconcileAt"] = requested_at
                if extra:
                    patch.update(extra)
                return patch

            patch = build(message)
            unchanged = all(
                status.get(k) == v
                for k, v in patch.items()
                if k not in ("conditions", "lastSyncTime")
            ) and _same_conditions(status.get("conditions"), patch["conditions"])
            if unchanged and "lastSyncTime" not in patch:
                return
            path = snippet_path(namespace, name, "status")
            try:
                await self.client.merge_patch(path, {"status": patch})
            except KubeApiError as err:
                if not _too_large(err):
                    raise
                message = shorten_message(full_message, SHORT_MESSAGE)
                await self.client.merge_patch(path, {"status": build(message)})
            before = find_condition(status.get("conditions"), READY)
            now_status = "Unknown" if ok is None else "True" if ok else "False"
            if (
                before is None
                or before.get("status") != now_status
                or before.get("reason") != reason_text
            ):
                self._in_background(
                    self.recorder.record(
                        obj,
                        type_="Normal" if ok else "Warning",
                        reason=reason_text,
                        note=message,
                        action=reason_text,
                    )
                )

    async def flush_events(self) -> None:
        """Wait for the Events being recorded in the background (on shutdown, in tests)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

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


def _key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return str(meta["namespace"]), str(meta["name"])


def _same_conditions(before: Any, after: list[dict[str, Any]]) -> bool:
    if not isinstance(before, list) or len(before) != len(after):
        return False
    return all(
        isinstance(b, dict) and all(b.get(k) == v for k, v in a.items())
        for b, a in zip(before, after, strict=True)
    )
