"""Resolve a snippet's ``spec.libraries`` into import trees keyed by alias.

Rules from metio/jaas ``internal/operator/reconciler.go`` (resolveLibraries,
checkLibraryAliasCollisions) and ``docs/content/rendering/jsonnet-libraries.md``:
the alias (``importPath`` or the library's name) must be one safe path
segment, unique, and must not shadow a shared ``--library-path`` alias; only
kind ``JsonnetLibrary`` exists; a library in another namespace needs
cross-namespace references enabled; libraries are read as the tenant (a
missing one is ``LibraryNotFound``, a refused read ``RBACDenied``); a
library's own ``sourceRef`` defaults to the library's namespace and is
fetched through the same cached path as a snippet's source.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence

from jaas.api.constants import GROUP, LIBRARY_KIND, LIBRARY_PLURAL, VERSION
from jaas.api.models import LibraryRef, parse_source_ref
from jaas.api.reasons import Reason, ReasonError
from jaas.operator.denials import denied
from jaas.operator.kube import KubeApiError, Obj, resource_path
from jaas.operator.sourcing import Fetcher, Reader, check_namespace, resolve_source

_ALIAS = re.compile(r"^[A-Za-z0-9._-]+$")
STAGE = "resolve libraries"


def check_aliases(refs: Sequence[LibraryRef], shared_aliases: Collection[str] = ()) -> None:
    """Validate library aliases and kinds before any API call.

    Args:
        refs: ``spec.libraries``.
        shared_aliases: aliases of the operator's ``--library-path`` libraries.

    Raises:
        ReasonError: ``InvalidSpec`` for an unsafe, duplicate or shadowing
            alias or an unsupported kind.
    """
    seen: set[str] = set()
    for ref in refs:
        if ref.kind != LIBRARY_KIND:
            raise ReasonError(
                Reason.INVALID_SPEC, f"spec.libraries: kind {ref.kind!r} is not {LIBRARY_KIND}"
            )
        alias = ref.alias
        if alias in (".", "..") or not _ALIAS.match(alias):
            raise ReasonError(
                Reason.INVALID_SPEC,
                f"spec.libraries: import path {alias!r} must be one path segment of "
                "[A-Za-z0-9._-] (not '.' or '..')",
            )
        if alias in shared_aliases:
            raise ReasonError(
                Reason.INVALID_SPEC,
                f"spec.libraries: import path {alias!r} would shadow the operator's shared "
                "library of that name (--library-path); choose another importPath",
            )
        if alias in seen:
            raise ReasonError(
                Reason.INVALID_SPEC, f"spec.libraries: import path {alias!r} is used twice"
            )
        seen.add(alias)


def library_path(namespace: str, name: str) -> str:
    """API path of a JsonnetLibrary."""
    return resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace, name)


def _unreachable(namespace: str, name: str, who: str) -> str:
    return (
        f"{STAGE}: cross-namespace JsonnetLibrary {name!r} in namespace {namespace!r} is not "
        f"reachable as {who}; it needs get on jsonnetlibraries there, and so does its source"
    )


async def resolve_libraries(
    namespace: str,
    refs: Sequence[LibraryRef],
    *,
    reader: Reader,
    fetcher: Fetcher,
    no_cross_namespace_refs: bool,
    observe: Callable[[Obj], None] = lambda _obj: None,
) -> dict[str, dict[str, bytes]]:
    """Return ``{alias: {path: content}}`` for every library the snippet lists.

    ``observe`` sees every library object read (the trigger index learns
    their ``sourceRef`` from it).

    Raises:
        ReasonError: ``CrossNamespaceRefRejected``, ``LibraryNotFound``,
            ``RBACDenied``, ``InvalidSpec``, or any reason of
            ``resolve_source`` for a library's own source.
    """
    out: dict[str, dict[str, bytes]] = {}
    for ref in refs:
        lib_ns = ref.namespace or namespace
        ident = f"JsonnetLibrary {lib_ns}/{ref.name}"
        check_namespace(
            lib_ns, namespace, f"{STAGE}: {ident}", no_cross_namespace_refs=no_cross_namespace_refs
        )
        try:
            out[ref.alias] = await _resolve_one(
                ref,
                lib_ns,
                ident,
                reader=reader,
                fetcher=fetcher,
                observe=observe,
                no_cross_namespace_refs=no_cross_namespace_refs,
            )
        except ReasonError as err:
            if lib_ns == namespace or err.reason is Reason.CROSS_NAMESPACE_REF_REJECTED:
                raise
            who = reader.identity or "the operator"
            raise ReasonError(
                err.reason, _unreachable(lib_ns, ref.name, who), transient=err.transient
            ) from err
    return out


async def _resolve_one(
    ref: LibraryRef,
    lib_ns: str,
    ident: str,
    *,
    reader: Reader,
    fetcher: Fetcher,
    observe: Callable[[Obj], None],
    no_cross_namespace_refs: bool,
) -> dict[str, bytes]:
    try:
        obj = await reader.get(library_path(lib_ns, ref.name))
    except KubeApiError as err:
        if err.not_found:
            raise ReasonError(
                Reason.LIBRARY_NOT_FOUND, f"{STAGE}: {ident} (import path {ref.alias!r}) not found"
            ) from err
        if err.permanent:
            raise denied(STAGE, err, what=ident) from err
        raise
    observe(obj)
    spec = obj.get("spec") or {}
    files = spec.get("files") or {}
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise ReasonError(
            Reason.INVALID_SPEC, f"{STAGE}: {ident}: spec.files must map names to strings"
        )
    source_ref = parse_source_ref(spec.get("sourceRef"))
    resolved = await resolve_source(
        lib_ns,
        files,
        source_ref,
        reader=reader,
        fetcher=fetcher,
        no_cross_namespace_refs=no_cross_namespace_refs,
        stage=f"{STAGE}: library {ref.alias!r}",
    )
    return resolved.files
