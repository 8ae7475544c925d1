"""Resolve where a snippet's (or a library's) Jsonnet comes from: inline files or a Flux source.

For a ``sourceRef`` the steps and error reasons follow metio/jaas
``internal/sources/sources.go`` and ``internal/operator/reconciler.go``:
cross-namespace references are refused before any API call
(``CrossNamespaceRefRejected``); the source object must exist (else a
transient ``SourceFetchFailed``), have ``Ready=True`` and a
``status.artifact.url`` (else a transient ``SourceNotReady``); the artifact is
downloaded, its sha256 digest checked and the tarball extracted with the
fetcher's caps (``SourceFetchFailed``); an empty result is ``InvalidSpec``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from jaas.api.conditions import is_ready
from jaas.api.models import SourceRef
from jaas.api.reasons import Reason, ReasonError
from jaas.operator.kube import Obj

#: Looks up a Flux source object: ``(kind, namespace, name) -> object or None``.
SourceGetter = Callable[[str, str, str], Awaitable[Obj | None]]


class Fetcher(Protocol):
    """What sourcing needs of ``jaas.sources.fetch.ArtifactFetcher``."""

    async def fetch_files(
        self, url: str, digest: str | None, path: str = ""
    ) -> dict[str, bytes]:  # pragma: no cover - protocol
        """Download, verify and extract an artifact."""
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
            f"{what} is in namespace {ref_namespace!r}, but cross-namespace references are "
            f"disabled (--no-cross-namespace-refs); it must be in {owner_namespace!r}",
        )


async def resolve_source(
    owner_namespace: str,
    inline_files: Mapping[str, str],
    source_ref: SourceRef | None,
    *,
    get_source: SourceGetter,
    fetcher: Fetcher,
    no_cross_namespace_refs: bool,
) -> ResolvedSource:
    """Return the files of inline ``files`` or of the artifact ``source_ref`` points at.

    Raises:
        ReasonError: ``CrossNamespaceRefRejected``, ``SourceFetchFailed``,
            ``SourceNotReady``, ``RBACDenied`` or ``InvalidSpec`` (empty source).
    """
    if source_ref is None:
        if not inline_files:
            raise ReasonError(Reason.INVALID_SPEC, "exactly one of files or sourceRef must be set")
        return ResolvedSource({k: v.encode() for k, v in inline_files.items()}, "inline")
    namespace = source_ref.namespace_or(owner_namespace)
    ident = f"{source_ref.kind} {namespace}/{source_ref.name}"
    check_namespace(
        namespace, owner_namespace, ident, no_cross_namespace_refs=no_cross_namespace_refs
    )
    obj = await get_source(source_ref.kind, namespace, source_ref.name)
    if obj is None:
        raise ReasonError(Reason.SOURCE_FETCH_FAILED, f"{ident} not found", transient=True)
    ready, why = is_ready(obj)
    if not ready:
        raise ReasonError(Reason.SOURCE_NOT_READY, f"{ident} is not ready: {why}", transient=True)
    artifact = (obj.get("status") or {}).get("artifact") or {}
    url = artifact.get("url")
    if not isinstance(url, str) or not url:
        raise ReasonError(
            Reason.SOURCE_NOT_READY, f"{ident} has no status.artifact.url yet", transient=True
        )
    digest = artifact.get("digest")
    if digest is not None and not isinstance(digest, str):
        raise ReasonError(Reason.SOURCE_FETCH_FAILED, f"{ident} has a non-string artifact digest")
    files = await fetcher.fetch_files(url, digest or None, source_ref.path)
    if not files:
        where = f" under path {source_ref.path!r}" if source_ref.path else ""
        raise ReasonError(
            Reason.INVALID_SPEC, f"the artifact of {ident} holds no usable files{where}"
        )
    revision = artifact.get("revision")
    return ResolvedSource(
        files,
        f"{source_ref.kind}/{namespace}/{source_ref.name}",
        revision if isinstance(revision, str) else None,
    )
