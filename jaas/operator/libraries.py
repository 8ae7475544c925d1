"""Resolve a snippet's ``spec.libraries`` into import trees keyed by alias.

Rules from metio/jaas ``internal/operator/reconciler.go`` (resolveLibraries)
and ``docs/content/rendering/jsonnet-libraries.md``: the alias (``importPath``
or the library's name) must be one safe path segment and unique; only kind
``JsonnetLibrary`` exists; a library in another namespace needs cross-namespace
references enabled; a missing library is ``LibraryNotFound``; a library's own
``sourceRef`` defaults to the library's namespace.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

from jaas.api.constants import LIBRARY_KIND
from jaas.api.models import LibraryRef, parse_source_ref
from jaas.api.reasons import Reason, ReasonError
from jaas.operator.kube import Obj
from jaas.operator.sourcing import Fetcher, SourceGetter, check_namespace, resolve_source

#: Looks up a JsonnetLibrary: ``(namespace, name) -> object or None``.
LibraryGetter = Callable[[str, str], Awaitable[Obj | None]]
_ALIAS = re.compile(r"^[A-Za-z0-9._-]+$")


def check_aliases(refs: Sequence[LibraryRef]) -> None:
    """Validate library aliases and kinds before any API call.

    Raises:
        ReasonError: ``InvalidSpec`` for an unsafe or duplicate alias or an
            unsupported kind.
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
        if alias in seen:
            raise ReasonError(
                Reason.INVALID_SPEC, f"spec.libraries: import path {alias!r} is used twice"
            )
        seen.add(alias)


async def resolve_libraries(
    namespace: str,
    refs: Sequence[LibraryRef],
    *,
    get_library: LibraryGetter,
    get_source: SourceGetter,
    fetcher: Fetcher,
    no_cross_namespace_refs: bool,
) -> dict[str, dict[str, bytes]]:
    """Return ``{alias: {path: content}}`` for every library the snippet lists.

    Raises:
        ReasonError: ``InvalidSpec``, ``CrossNamespaceRefRejected``,
            ``LibraryNotFound``, or any reason of ``resolve_source`` for a
            library's own source.
    """
    check_aliases(refs)
    out: dict[str, dict[str, bytes]] = {}
    for ref in refs:
        lib_ns = ref.namespace or namespace
        ident = f"JsonnetLibrary {lib_ns}/{ref.name}"
        check_namespace(lib_ns, namespace, ident, no_cross_namespace_refs=no_cross_namespace_refs)
        obj = await get_library(lib_ns, ref.name)
        if obj is None:
            raise ReasonError(Reason.LIBRARY_NOT_FOUND, f"{ident} not found")
        spec = obj.get("spec") or {}
        files = spec.get("files") or {}
        if not isinstance(files, dict):
            raise ReasonError(Reason.INVALID_SPEC, f"{ident}: spec.files must be a map")
        try:
            source_ref = parse_source_ref(spec.get("sourceRef"))
            resolved = await resolve_source(
                lib_ns,
                files,
                source_ref,
                get_source=get_source,
                fetcher=fetcher,
                no_cross_namespace_refs=no_cross_namespace_refs,
            )
        except ReasonError as err:
            raise ReasonError(
                err.reason, f"library {ref.alias!r}: {err.message}", transient=err.transient
            ) from err
        out[ref.alias] = resolved.files
    return out
