"""The trigger index: which snippets an event of a source, a library or a snippet queues."""

from __future__ import annotations

from typing import Any

from jaas.operator.informer import Event, EventType
from jaas.operator.triggers import TriggerIndex
from jaas.operator.workqueue import Trigger


def snippet(ns: str, name: str, gen: int = 1, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "generation": gen}, "spec": spec}


def library(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


def source(ns: str, name: str, revision: str, ready: str = "True") -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "artifact": {"url": f"http://x/{revision}", "revision": revision},
        },
    }


def added(obj: dict[str, Any]) -> Event:
    meta = obj["metadata"]
    return Event(EventType.ADDED, (meta["namespace"], meta["name"]), None, obj)


def modified(old: dict[str, Any], new: dict[str, Any]) -> Event:
    meta = new["metadata"]
    return Event(EventType.MODIFIED, (meta["namespace"], meta["name"]), old, new)


def test_a_source_change_queues_direct_and_library_dependents_only() -> None:
    index = TriggerIndex()
    index.handle(
        "JsonnetSnippet", added(snippet("a", "direct", sourceRef={"kind": "Bucket", "name": "b"}))
    )
    index.handle("JsonnetSnippet", added(snippet("a", "via-lib", libraries=[{"name": "lib"}])))
    index.handle("JsonnetSnippet", added(snippet("a", "other", files={"m": "{}"})))
    index.handle(
        "JsonnetLibrary", added(library("a", "lib", sourceRef={"kind": "Bucket", "name": "b"}))
    )
    old, new = source("a", "b", "r1"), source("a", "b", "r2")
    triggered = index.handle("Bucket", modified(old, new))
    assert triggered.add == {("a", "direct"), ("a", "via-lib")}
    # A status change that does not touch the artifact or readiness queues nothing.
    assert index.handle("Bucket", modified(new, source("a", "b", "r2"))).add == set()
    # The same name of another kind is another source.
    assert index.handle("GitRepository", modified(old, new)).add == set()


def test_a_library_change_queues_the_snippets_that_list_it() -> None:
    index = TriggerIndex()
    index.handle(
        "JsonnetSnippet", added(snippet("a", "s", libraries=[{"name": "l", "namespace": "shared"}]))
    )
    assert index.handle("JsonnetLibrary", added(library("shared", "l", files={}))).add == {
        ("a", "s")
    }
    assert index.references("JsonnetLibrary", "shared", "l")
    assert not index.references("JsonnetLibrary", "a", "l")


def test_snippet_updates_move_references_and_deletion_forgets_them() -> None:
    index = TriggerIndex()
    first = snippet("a", "s", 1, sourceRef={"kind": "Bucket", "name": "one"})
    second = snippet("a", "s", 2, sourceRef={"kind": "Bucket", "name": "two", "namespace": "b"})
    assert index.handle("JsonnetSnippet", added(first)).add == {("a", "s")}
    assert index.handle("JsonnetSnippet", modified(first, second)).add == {("a", "s")}
    assert not index.references("Bucket", "a", "one")
    assert index.references("Bucket", "b", "two")
    gone = index.handle("JsonnetSnippet", Event(EventType.DELETED, ("a", "s"), second, None))
    assert gone.cancel == {("a", "s")}
    assert not gone.add
    assert not index.references("Bucket", "b", "two")
    assert index.sizes() == {"snippets": 0, "libraries": 0, "sources": 0}


def test_a_library_read_during_a_reconcile_is_indexed() -> None:
    index = TriggerIndex()
    index.handle(
        "JsonnetSnippet", added(snippet("a", "s", libraries=[{"name": "l", "namespace": "far"}]))
    )
    index.observe_library(library("far", "l", sourceRef={"kind": "OCIRepository", "name": "o"}))
    assert index.references("OCIRepository", "far", "o")
    triggered = index.handle("OCIRepository", added(source("far", "o", "v1")))
    assert triggered.add == {("a", "s")}


def test_lookups_do_not_scan_every_library() -> None:
    index = TriggerIndex()
    for i in range(2000):
        index.handle(
            "JsonnetLibrary",
            added(library("a", f"l{i}", sourceRef={"kind": "Bucket", "name": f"b{i}"})),
        )
    index.handle("JsonnetSnippet", added(snippet("a", "s", libraries=[{"name": "l7"}])))
    assert index.snippets_of_source(("Bucket", "a", "b7")) == {("a", "s")}
    assert index.snippets_of_source(("Bucket", "a", "b8")) == set()


def test_each_event_says_why_it_queues() -> None:
    index = TriggerIndex()
    first = snippet("a", "s", sourceRef={"kind": "Bucket", "name": "b"}, libraries=[{"name": "l"}])
    assert index.handle("JsonnetSnippet", added(first)).why == Trigger("created")
    second = snippet("a", "s", gen=2, sourceRef={"kind": "Bucket", "name": "b"})
    assert index.handle("JsonnetSnippet", modified(first, second)).why == Trigger("generation")
    requested = snippet("a", "s", gen=2, sourceRef={"kind": "Bucket", "name": "b"})
    requested["metadata"]["annotations"] = {"reconcile.fluxcd.io/requestedAt": "now"}
    assert index.handle("JsonnetSnippet", modified(second, requested)).why == Trigger("requestedAt")
    deleting = {**requested, "metadata": {**requested["metadata"], "deletionTimestamp": "t"}}
    assert index.handle("JsonnetSnippet", modified(requested, deleting)).why == Trigger("deletion")
    changed = index.handle("Bucket", modified(source("a", "b", "r1"), source("a", "b", "r2")))
    assert changed.why == Trigger("source", ("Bucket", "a", "b"), "r2")
    assert index.handle("JsonnetLibrary", added(library("a", "l"))).why == Trigger(
        "library", ("JsonnetLibrary", "a", "l")
    )
