"""Which snippets a watch event concerns: the trigger index (source → libraries → snippets).

Triggers follow design.md §3 and metio/jaas ``internal/operator/indexes.go``:

* a snippet is queued when it appears, when its ``metadata.generation`` or
  its ``reconcile.fluxcd.io/requestedAt`` annotation changes, and when its
  deletion starts; status-only updates (our own writes) do not queue it;
* a Flux source queues the snippets whose ``spec.sourceRef`` names it and the
  snippets listing a library whose ``sourceRef`` names it, when its artifact
  or its readiness changes;
* a JsonnetLibrary queues the snippets listing it on any change.

Every lookup is a dictionary hit: snippets are indexed by the source and the
libraries they reference, libraries by their source, so an event costs the
same whatever the number of libraries or snippets (no scan per event). Each
queued key comes with the :class:`~jaas.operator.workqueue.Trigger` that
says why, which the reconcile's trace records (a source change with the
source's Flux revision).
``references`` tells the object cache which objects outside the shard's own
namespaces it must still watch: those a snippet of the shard depends on
through a cross-namespace reference.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jaas.api.conditions import is_ready
from jaas.api.constants import LIBRARY_KIND, REQUESTED_AT_ANNOTATION, SNIPPET_KIND
from jaas.operator.informer import Event, EventType, Key
from jaas.operator.kube import Obj
from jaas.operator.workqueue import Trigger

SourceKey = tuple[str, str, str]  # (kind, namespace, name)
LibraryKey = tuple[str, str]  # (namespace, name)

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V", bound=Hashable)


def _meta(obj: Obj | None) -> dict[str, Any]:
    meta = (obj or {}).get("metadata")
    return meta if isinstance(meta, dict) else {}


def _generation(obj: Obj | None) -> Any:
    return _meta(obj).get("generation")


def _requested_at(obj: Obj | None) -> Any:
    return (_meta(obj).get("annotations") or {}).get(REQUESTED_AT_ANNOTATION)


def _deleting(obj: Obj | None) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def artifact_signature(obj: Obj | None) -> tuple[Any, ...]:
    """What of a Flux source matters to its consumers: readiness and artifact identity."""
    if obj is None:
        return ()
    artifact = (obj.get("status") or {}).get("artifact") or {}
    return (
        is_ready(obj)[0],
        artifact.get("url"),
        artifact.get("digest"),
        artifact.get("revision"),
    )


def source_key(owner_namespace: str, ref: Any) -> SourceKey | None:
    """``(kind, namespace, name)`` of a ``sourceRef`` (namespace defaults to the owner's)."""
    if not isinstance(ref, dict) or not ref.get("kind") or not ref.get("name"):
        return None
    return str(ref["kind"]), str(ref.get("namespace") or owner_namespace), str(ref["name"])


def library_keys(owner_namespace: str, spec: Any) -> frozenset[LibraryKey]:
    """``(namespace, name)`` of every ``spec.libraries`` entry of a snippet."""
    refs = spec.get("libraries") if isinstance(spec, dict) else None
    return frozenset(
        (str(ref.get("namespace") or owner_namespace), str(ref["name"]))
        for ref in refs or []
        if isinstance(ref, dict) and ref.get("name")
    )


def snippet_trigger(event: Event) -> Trigger:
    """Why a snippet event queues the snippet (meaningful when ``snippet_needs_reconcile``)."""
    old, new = event.old, event.new
    if event.type is EventType.ADDED or old is None:
        return Trigger("created")
    if _deleting(new) and not _deleting(old):
        return Trigger("deletion")
    if _generation(old) != _generation(new):
        return Trigger("generation")
    return Trigger("requestedAt")


def source_trigger(kind: str, event: Event) -> Trigger:
    """Why a change of a Flux source (``kind``) queues the snippets that read it."""
    namespace, name = event.key
    artifact = ((event.new or {}).get("status") or {}).get("artifact") or {}
    return Trigger("source", (kind, namespace, name), str(artifact.get("revision") or ""))


def snippet_needs_reconcile(event: Event) -> bool:
    """The snippet predicate: new, generation or requestedAt changed, or deletion started."""
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


@dataclass
class Triggered:
    """What an event asks of the work queue: keys to queue, keys whose object is gone."""

    add: set[Key] = field(default_factory=set)
    cancel: set[Key] = field(default_factory=set)
    #: Why ``add`` is queued.
    why: Trigger | None = None


class _Multimap(dict[_K, set[_V]]):
    def put(self, key: _K, value: _V) -> None:
        self.setdefault(key, set()).add(value)

    def drop(self, key: _K, value: _V) -> None:
        values = self.get(key)
        if values is not None:
            values.discard(value)
            if not values:
                del self[key]


class TriggerIndex:
    """Reverse references of one shard's snippets: who depends on which source or library.

    Feed it every snippet and library the shard sees (``handle`` for watch
    events, ``observe_library`` for libraries read during a reconcile); ask
    it which snippets an event concerns.
    """

    def __init__(self) -> None:
        self._snippet_refs: dict[Key, tuple[SourceKey | None, frozenset[LibraryKey]]] = {}
        self._library_source: dict[LibraryKey, SourceKey] = {}
        self._snippets_by_source: _Multimap[SourceKey, Key] = _Multimap()
        self._snippets_by_library: _Multimap[LibraryKey, Key] = _Multimap()
        self._libraries_by_source: _Multimap[SourceKey, LibraryKey] = _Multimap()

    # --- updates ------------------------------------------------------------------------

    def update_snippet(self, key: Key, obj: Obj | None) -> None:
        """Record the references of snippet ``key`` (``None``: it is gone)."""
        old_source, old_libraries = self._snippet_refs.pop(key, (None, frozenset()))
        if old_source is not None:
            self._snippets_by_source.drop(old_source, key)
        for library in old_libraries:
            self._snippets_by_library.drop(library, key)
        if obj is None:
            return
        spec = obj.get("spec") or {}
        source = source_key(key[0], spec.get("sourceRef"))
        libraries = library_keys(key[0], spec)
        if source is not None:
            self._snippets_by_source.put(source, key)
        for library in libraries:
            self._snippets_by_library.put(library, key)
        self._snippet_refs[key] = (source, libraries)

    def update_library(self, key: LibraryKey, obj: Obj | None) -> None:
        """Record the ``sourceRef`` of library ``key`` (``None``: it is gone)."""
        old = self._library_source.pop(key, None)
        if old is not None:
            self._libraries_by_source.drop(old, key)
        if obj is None:
            return
        source = source_key(key[0], (obj.get("spec") or {}).get("sourceRef"))
        if source is not None:
            self._library_source[key] = source
            self._libraries_by_source.put(source, key)

    def observe_library(self, obj: Obj) -> None:
        """Index a library read during a reconcile (one the cache may not hold)."""
        meta = _meta(obj)
        self.update_library((str(meta.get("namespace") or ""), str(meta.get("name") or "")), obj)

    # --- queries ------------------------------------------------------------------------

    def snippets_of_library(self, key: LibraryKey) -> set[Key]:
        """Snippets that list library ``key``."""
        return set(self._snippets_by_library.get(key, ()))

    def snippets_of_source(self, key: SourceKey) -> set[Key]:
        """Snippets that read source ``key`` directly or through one of their libraries."""
        out = set(self._snippets_by_source.get(key, ()))
        for library in self._libraries_by_source.get(key, ()):
            out |= self._snippets_by_library.get(library, set())
        return out

    def references(self, kind: str, namespace: str, name: str) -> bool:
        """Whether some snippet of the shard depends on this object."""
        if kind == LIBRARY_KIND:
            return (namespace, name) in self._snippets_by_library
        if kind == SNIPPET_KIND:
            return False
        key = (kind, namespace, name)
        if key in self._snippets_by_source:
            return True
        return any(
            library in self._snippets_by_library
            for library in self._libraries_by_source.get(key, ())
        )

    def handle(self, kind: str, event: Event) -> Triggered:
        """Update the index from a watch event of ``kind`` and say which snippets it queues."""
        if kind == SNIPPET_KIND:
            if event.type is EventType.DELETED:
                self.update_snippet(event.key, None)
                return Triggered(cancel={event.key})
            self.update_snippet(event.key, event.new)
            if not snippet_needs_reconcile(event):
                return Triggered()
            return Triggered(add={event.key}, why=snippet_trigger(event))
        if kind == LIBRARY_KIND:
            self.update_library(event.key, event.new)
            return Triggered(
                add=self.snippets_of_library(event.key),
                why=Trigger("library", (LIBRARY_KIND, *event.key)),
            )
        if artifact_signature(event.old) == artifact_signature(event.new):
            return Triggered()
        return Triggered(
            add=self.snippets_of_source((kind, *event.key)), why=source_trigger(kind, event)
        )

    def sizes(self) -> dict[str, int]:
        """Entries per map, for metrics and tests."""
        return {
            "snippets": len(self._snippet_refs),
            "libraries": len(self._library_source),
            "sources": len(self._snippets_by_source),
        }


def all_keys(triggered: Iterable[Triggered]) -> set[Key]:
    """Union of the keys several events queue."""
    out: set[Key] = set()
    for t in triggered:
        out |= t.add
    return out
