"""Resolve where a snippet's (or a library's) Jsonnet comes from: inline files or a Flux source.

For a ``sourceRef`` the steps and error reasons follow metio/jaas
``internal/sources/sources.go`` and ``internal/operator/reconciler.go``:
cross-namespace references are refused before any API call
(``CrossNamespaceRefRejected``); the source object is read **as the tenant**
(a refusal is ``RBACDenied``, a missing object a transient
``SourceFetchFailed``); it must have ``Ready=True`` and a
``status.artifact.url`` (else a transient ``SourceNotReady``); the artifact is
downloaded, its digest (sha256, sha384, sha512 or blake3) checked and the
tarball extracted with the fetcher's caps (``SourceFetchFailed``); an empty
result is ``InvalidSpec``.

When the reference reaches into another namespace (cross-namespace
references on), every failure keeps its reason but gets one constant message
that says nothing about the other namespace (JaaS
``scrubbedCrossNamespaceMessage``): NotFound, Forbidden, a bad digest and an
unreachable server all read the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace

from jaas.api.conditions import is_ready
from jaas.api.constants import FLUX_SOURCE_API_VERSION, SOURCE_KIND_PLURALS
from jaas.api.models import SourceRef
from jaas.api.reasons import Reason, ReasonError
from jaas.observability import metrics
from jaas.operator.denials import denied
from jaas.operator.kube import KubeApiError, Obj, resource_path


class Reader(Protocol):
    """What sourcing needs of a ``KubeClient`` (a tenant's view)."""

    @property
    def identity(self) -> str | None:
        """Who reads (for messages)."""
        ...

    async def get(self, path: str) -> Obj:  # pragma: no cover - protocol
        """GET an object; raises ``KubeApiError``."""
        ...


class Fetcher(Protocol):
    """What sourcing needs of ``jaas.sources.fetch.ArtifactFetcher``."""

    async def fetch_files(
        self, url: str, digest: str | None, path: str = "", *, flow: str = ""
    ) -> dict[str, bytes]:  # pragma: no cover - protocol
        """Download, verify and extract an artifact; ``flow`` is the tenant namespace."""
        ...


@dataclass(frozen=True)
class ResolvedSource:
    """The files a snippet or library evaluates, and where they came from.

    ``origin`` is ``"inline"`` or ``"<Kind>/<namespace>/<name>"``;
    ``upstream_revision`` is the Flux artifact revision of a sourceRef.
    """

    files: dict[str, bytes]
    origin: str
    upstream_revision: str | None = None


def check_namespace(
    ref_namespace: str, owner_namespace: str, what: str, *, no_cross_namespace_refs: bool
) -> None:
    """Refuse a reference into another namespace when cross-namespace references are off.

    Raises:
        ReasonError: ``CrossNamespaceRefRejected``.
    """
    if no_cross_namespace_refs and ref_namespace != owner_namespace:
        raise ReasonError(
            Reason.CROSS_NAMESPACE_REF_REJECTED,
            f"{what} points at namespace {ref_namespace!r}, but cross-namespace references "
            f"are disabled (--no-cross-namespace-refs); it must be in {owner_namespace!r}",
        )


def source_path(ref: SourceRef, namespace: str) -> str:
    """API path of the object a ``sourceRef`` names (its ``apiVersion`` honoured)."""
    api_version = ref.api_version or FLUX_SOURCE_API_VERSION
    group, _, version = api_version.rpartition("/")
    return resource_path(group, version, SOURCE_KIND_PLURALS[ref.kind], namespace, ref.name)


def unreachable_message(stage: str, kind: str, namespace: str, name: str, who: str) -> str:
    """The constant message of any failure that reaches into another namespace."""
    return (
        f"{stage}: cross-namespace {kind} {name!r} in namespace {namespace!r} is not reachable "
        f"as {who}; it needs get on {kind} there, and the {kind} must be Ready"
    )


async def resolve_source(
    owner_namespace: str,
    inline_files: Mapping[str, str],
    source_ref: SourceRef | None,
    *,
    reader: Reader,
    fetcher: Fetcher,
    no_cross_namespace_refs: bool,
    stage: str = "resolve source",
) -> ResolvedSource:
    """Return the files of inline ``files`` or of the artifact ``source_ref`` points at.

    Raises:
        ReasonError: ``CrossNamespaceRefRejected``, ``SourceFetchFailed``,
            ``SourceNotReady``, ``RBACDenied`` or ``InvalidSpec`` (empty source).
    """
    if source_ref is None:
        return inline_source(inline_files)
    namespace = source_ref.namespace_or(owner_namespace)
    ident = f"{source_ref.kind} {namespace}/{source_ref.name}"
    check_namespace(
        namespace,
        owner_namespace,
        f"{stage}: {ident}",
        no_cross_namespace_refs=no_cross_namespace_refs,
    )
    try:
        resolved = await _fetch(
            source_ref,
            namespace,
            ident,
            reader=reader,
            fetcher=fetcher,
            stage=stage,
            tenant=owner_namespace,
        )
        metrics.SOURCE_FETCHES.labels("ok").inc()
        return resolved
    except ReasonError as err:
        not_ready = err.reason is Reason.SOURCE_NOT_READY
        metrics.SOURCE_FETCHES.labels("not_ready" if not_ready else "failed").inc()
        if namespace == owner_namespace:
            raise
        who = reader.identity or "the operator"
        raise ReasonError(
            err.reason,
            unreachable_message(stage, source_ref.kind, namespace, source_ref.name, who),
            transient=err.transient,
        ) from err


async def _fetch(
    source_ref: SourceRef,
    namespace: str,
    ident: str,
    *,
    reader: Reader,
    fetcher: Fetcher,
    stage: str,
    tenant: str,
) -> ResolvedSource:
    try:
        obj = await reader.get(source_path(source_ref, namespace))
    except KubeApiError as err:
        if err.not_found:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED, f"{stage}: {ident} not found", transient=True
            ) from err
        if err.permanent:
            raise denied(stage, err, what=ident) from err
        raise
    ready, why = is_ready(obj)
    if not ready:
        raise ReasonError(
            Reason.SOURCE_NOT_READY, f"{stage}: {ident} is not ready: {why}", transient=True
        )
    artifact = (obj.get("status") or {}).get("artifact") or {}
    url = artifact.get("url")
    if not isinstance(url, str) or not url:
        raise ReasonError(
            Reason.SOURCE_NOT_READY,
            f"{stage}: {ident} has no status.artifact.url yet",
            transient=True,
        )
    digest = artifact.get("digest")
    if digest is not None and not isinstance(digest, str):
        raise ReasonError(
            Reason.SOURCE_FETCH_FAILED, f"{stage}: {ident} has a non-string artifact digest"
        )
    try:
        # Download slots are shared fairly by the namespace the work is for.
        files = await fetcher.fetch_files(url, digest or None, source_ref.path, flow=tenant)
    except ReasonError as err:
        raise ReasonError(
            err.reason, f"{stage}: {ident}: {err.message}", transient=err.transient
        ) from err
    revision = artifact.get("revision")
    span = trace.get_current_span()
    span.set_attribute("flux.source.kind", source_ref.kind)
    span.set_attribute("flux.source.name", f"{namespace}/{source_ref.name}")
    if isinstance(revision, str):
        span.set_attribute("flux.source.revision", revision)
    return artifact_source(
        files,
        source_ref,
        namespace,
        revision if isinstance(revision, str) else None,
        stage=stage,
    )


def inline_source(inline_files: Mapping[str, str]) -> ResolvedSource:
    """The snippet's (or library's) inline ``spec.files``, UTF-8 encoded.

    Raises:
        ReasonError: ``InvalidSpec`` when there are none (and no sourceRef).
    """
    if not inline_files:
        raise ReasonError(Reason.INVALID_SPEC, "exactly one of files or sourceRef must be set")
    return ResolvedSource({k: v.encode() for k, v in inline_files.items()}, "inline")


def artifact_source(
    files: dict[str, bytes],
    source_ref: SourceRef,
    namespace: str,
    revision: str | None,
    *,
    stage: str = "resolve source",
) -> ResolvedSource:
    """The files extracted from ``source_ref``'s artifact (under its ``path``) as a source.

    Args:
        files: what ``jaas.sources.extract.extract_tarball`` returned.
        source_ref: the reference.
        namespace: the namespace the reference resolves to.
        revision: the artifact's Flux revision, if known.
        stage: the pipeline stage named in messages.

    Raises:
        ReasonError: ``InvalidSpec`` when no usable file is there.
    """
    if not files:
        ident = f"{source_ref.kind} {namespace}/{source_ref.name}"
        where = f" under path {source_ref.path!r}" if source_ref.path else ""
        raise ReasonError(
            Reason.INVALID_SPEC, f"{stage}: the artifact of {ident} holds no usable files{where}"
        )
    return ResolvedSource(files, f"{source_ref.kind}/{namespace}/{source_ref.name}", revision)
