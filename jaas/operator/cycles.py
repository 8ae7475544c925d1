"""Dependency-cycle detection between snippets, before any tenant work.

metio/jaas ``internal/operator/cycle.go``: a breadth-first walk from the
snippet over two kinds of edges —

* ``spec.sourceRef`` of kind ExternalArtifact: the ExternalArtifact a snippet
  publishes has the snippet's name, so the edge leads to the snippet of that
  namespace and name;
* ``spec.libraries``: a library whose ``sourceRef`` is an ExternalArtifact
  leads to that artifact's snippet the same way —

and a path back to the start is a ``DependencyCycle`` whose message shows it
(``ns/a → ns/b → ns/a``). Objects that do not exist are leaves; other source
kinds end a path. The walk reads with the operator's identity (as JaaS's
uncached reader does), so it sees namespaces outside a tenant's reach.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from jaas.api.constants import EXTERNAL_ARTIFACT_KIND
from jaas.operator.kube import Obj

Node = tuple[str, str]  # a snippet: (namespace, name)
#: Looks up a snippet or a library by (namespace, name): the object, or None if absent.
Lookup = Callable[[str, str], Awaitable[Obj | None]]


def _artifact_producer(ref: Any, owner_namespace: str) -> Node | None:
    if (
        not isinstance(ref, dict)
        or ref.get("kind") != EXTERNAL_ARTIFACT_KIND
        or not ref.get("name")
    ):
        return None
    return str(ref.get("namespace") or owner_namespace), str(ref["name"])


def format_path(path: list[str]) -> str:
    """``["a/x", "a/y", "a/x"]`` → ``"a/x → a/y → a/x"``."""
    return " → ".join(path)


async def _edges(snippet: Obj, get_library: Lookup) -> list[tuple[Node, str | None]]:
    """Each dependency of ``snippet`` and the library it goes through (or None)."""
    meta = snippet.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    spec = snippet.get("spec") or {}
    out: list[tuple[Node, str | None]] = []
    direct = _artifact_producer(spec.get("sourceRef"), namespace)
    if direct is not None:
        out.append((direct, None))
    for ref in spec.get("libraries") or []:
        if not isinstance(ref, dict) or not ref.get("name"):
            continue
        lib_ns, lib_name = str(ref.get("namespace") or namespace), str(ref["name"])
        library = await get_library(lib_ns, lib_name)
        if library is None:
            continue
        node = _artifact_producer((library.get("spec") or {}).get("sourceRef"), lib_ns)
        if node is not None:
            out.append((node, f"{lib_ns}/{lib_name}"))
    return out


async def find_cycle(start: Obj, *, get_snippet: Lookup, get_library: Lookup) -> str | None:
    """The cycle through ``start`` as ``"ns/a → ns/b → ns/a"``, or ``None``.

    A hop through a library is shown as ``library ns/lib``. Raises whatever
    the lookups raise (``KubeApiError`` for a refused or failed read).
    """
    meta = start.get("metadata") or {}
    origin: Node = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
    parent: dict[Node, tuple[Node, str | None]] = {}
    queue: deque[tuple[Node, Obj]] = deque([(origin, start)])
    seen = {origin}
    while queue:
        node, obj = queue.popleft()
        for dependency, via in await _edges(obj, get_library):
            if dependency == origin:
                return format_path(_path(parent, node, via, origin))
            if dependency in seen:
                continue
            seen.add(dependency)
            parent[dependency] = (node, via)
            found = await get_snippet(*dependency)
            if found is not None:
                queue.append((dependency, found))
    return None


def _path(
    parent: dict[Node, tuple[Node, str | None]], last: Node, via: str | None, origin: Node
) -> list[str]:
    """Rebuild origin → … → last → origin from the BFS parents."""
    hops: list[str] = [f"{origin[0]}/{origin[1]}"]
    if via is not None:
        hops.append(f"library {via}")
    node = last
    while node != origin:
        hops.append(f"{node[0]}/{node[1]}")
        node, edge_via = parent[node]
        if edge_via is not None:
            hops.append(f"library {edge_via}")
    hops.append(f"{origin[0]}/{origin[1]}")
    hops.reverse()
    return hops
