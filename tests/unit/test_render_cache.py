"""The render cache: keys that change with every input, results that survive processes, bounds.

The last tests run the reconcile pipeline over the in-memory API of
test_reconciler with a render cache: a reconcile of unchanged inputs makes no
evaluation, a changed library re-evaluates only the snippet that uses it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from jaas.api.models import JsonnetVariable
from jaas.evaluator.rendercache import (
    RenderCache,
    engine_build,
    evaluator_fingerprint,
    render_key,
)
from jaas.evaluator.request import EvaluationRequest, EvaluationResult
from jaas.evaluator.trees import tree_digest
from jaas.sources.cache import ArtifactCache
from tests.unit.test_reconciler import NS, Harness

BASE = EvaluationRequest(
    "main.jsonnet",
    {"main.jsonnet": b"function(x) { x: x, c: std.extVar('c') }"},
    tlas=(JsonnetVariable("x", "1", code=True),),
    external_variables=(JsonnetVariable("c", "unit"),),
    libraries={"lib": {"main.libsonnet": b"{}"}},
    max_stack=500,
    max_output_bytes=1000,
)
RESULT = EvaluationResult(
    b'{\n   "c": "unit",\n   "x": 1\n}\n',
    0.25,
    4242,
    consumer_files={"kustomization.yaml": b"resources: []\n"},
    objects_summary="no Kubernetes objects",
)


@pytest.mark.parametrize(
    "changed",
    [
        replace(BASE, entry_file="other.jsonnet"),
        replace(BASE, files={**BASE.files, "main.jsonnet": b"{}"}),
        replace(BASE, files={**BASE.files, "unused.txt": b""}),
        replace(BASE, tlas=(JsonnetVariable("x", "2", code=True),)),
        replace(BASE, tlas=(JsonnetVariable("x", "1", code=False),)),
        replace(BASE, external_variables=(JsonnetVariable("c", "other"),)),
        replace(BASE, libraries={"lib": {"main.libsonnet": b"{ a: 1 }"}}),
        replace(BASE, libraries={"other": {"main.libsonnet": b"{}"}}),
        replace(BASE, max_stack=501),
        replace(BASE, max_output_bytes=0),
        replace(BASE, discard_output=True),
    ],
    ids=[
        "entry file",
        "file content",
        "file added",
        "tla value",
        "tla kind",
        "external variable",
        "library content",
        "library alias",
        "max_stack",
        "output cap",
        "output discarded",
    ],
)
def test_every_input_of_a_render_is_in_its_key(changed: EvaluationRequest) -> None:
    assert render_key(changed, "e") != render_key(BASE, "e")


def test_the_key_is_the_same_for_trees_inline_or_by_digest_and_for_the_label() -> None:
    by_digest = replace(
        BASE,
        files={},
        source_tree=tree_digest(BASE.files),
        library_trees={"lib": tree_digest(BASE.libraries["lib"])},
    )
    assert render_key(by_digest, "e") == render_key(BASE, "e")
    assert render_key(replace(BASE, label="ns/other"), "e") == render_key(BASE, "e")
    assert render_key(BASE, "f") != render_key(BASE, "e")


def test_the_evaluator_fingerprint_changes_with_engine_libraries_and_max_stack() -> None:
    shared = {"k": {"main.libsonnet": b"{}"}}
    base = evaluator_fingerprint("jrsonnet", shared, 500)
    assert evaluator_fingerprint("jrsonnet", {"k": {"main.libsonnet": b"{}"}}, 500) == base
    assert evaluator_fingerprint("rjsonnet", shared, 500) != base
    assert evaluator_fingerprint("jrsonnet", {"k": {"main.libsonnet": b"[]"}}, 500) != base
    assert evaluator_fingerprint("jrsonnet", shared, 600) != base
    # The build is identified by the installed files, not only the version.
    assert engine_build("jrsonnet").startswith("jaas-jrsonnet ")
    assert len(engine_build("jrsonnet").split()[-1]) == 64
    assert engine_build("no-such-engine") == "no-such-engine not installed"


def test_a_result_survives_the_process_that_stored_it(tmp_path: Path) -> None:
    key = render_key(BASE, "e")
    writer = RenderCache(ArtifactCache(tmp_path), "e")
    assert writer.get(key) is None
    writer.put(key, RESULT)
    reader = RenderCache(ArtifactCache(tmp_path), "e")
    assert reader.get(key) == RESULT
    assert (writer.misses, writer.stored, reader.hits) == (1, 1, 1)
    with pytest.raises(ValueError, match="not a render key"):
        reader.get("../objects/x")


def test_an_evicted_or_corrupt_result_is_a_miss_and_its_key_is_dropped(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    renders = RenderCache(cache, "e")
    key = render_key(BASE, "e")
    renders.put(key, RESULT)
    for path in (tmp_path / "objects").iterdir():
        path.write_bytes(b"corrupt")
    assert renders.get(key) is None
    assert not (tmp_path / "renders" / key).exists()
    renders.put(key, RESULT)
    (tmp_path / "renders" / key).write_text("garbage")
    assert renders.get(key) is None
    assert renders.pruned == 2


def test_results_share_the_artifact_caches_bound(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, max_bytes=4096)
    renders = RenderCache(cache, "e")
    keys = []
    for i in range(20):
        request = replace(BASE, files={"main.jsonnet": str(i).encode()})
        keys.append(render_key(request, "e"))
        payload = bytes(range(256)) * 4 + str(i).encode()
        renders.put(keys[-1], replace(RESULT, rendered=payload))
    assert cache.size_bytes() <= 4096
    assert renders.get(keys[-1]) is not None
    assert renders.get(keys[0]) is None  # evicted, least recently used first


def test_key_files_beyond_the_bound_are_pruned_oldest_first(tmp_path: Path) -> None:
    renders = RenderCache(ArtifactCache(tmp_path), "e", max_keys=3)
    keys = [render_key(replace(BASE, max_stack=i), "e") for i in range(5)]
    for key in keys:
        renders.put(key, RESULT)
    assert renders.prune() == 2
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == sorted(keys[2:])


async def test_an_unchanged_snippet_is_evaluated_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.reconciler.render_cache = RenderCache(ArtifactCache(tmp_path / "cache"), "e")
    h.snippet(files={"main.jsonnet": "{ a: 1 }"})
    assert await h.reason() == "Synced"
    revision = h.status()["revision"]
    for _ in range(3):
        h.update_spec(interval="5m")  # a new generation, same inputs
        assert await h.reason() == "Synced"
    assert len(h.evaluator.requests) == 1
    assert h.status()["revision"] == revision
    # A restarted shard (a new cache object on the same directory) evaluates nothing either.
    h.reconciler.render_cache = RenderCache(ArtifactCache(tmp_path / "cache"), "e")
    h.update_spec(interval="6m")
    assert await h.reason() == "Synced"
    assert len(h.evaluator.requests) == 1
    # Requests name their trees by digest.
    assert h.evaluator.requests[0].source_tree == tree_digest({"main.jsonnet": b"{ a: 1 }"})


async def test_a_library_change_re_evaluates_only_the_snippets_that_use_it(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.reconciler.render_cache = RenderCache(ArtifactCache(tmp_path / "cache"), "e")
    h.library("one", files={"main.libsonnet": "{ v: 1 }"})
    h.library("two", files={"main.libsonnet": "{ v: 2 }"})
    h.snippet("a", files={"main.jsonnet": "import 'one'"}, libraries=[{"name": "one"}])
    h.snippet("b", files={"main.jsonnet": "import 'two'"}, libraries=[{"name": "two"}])
    h.snippet("c", files={"main.jsonnet": "{}"})
    for name in "abc":
        assert await h.reason(name) == "Synced"
    assert len(h.evaluator.requests) == 3
    h.library("one", files={"main.libsonnet": "{ v: 10 }"})
    for name in "abc":  # the whole namespace comes back
        assert await h.reason(name) == "Synced"
    assert [r.label for r in h.evaluator.requests[3:]] == [f"{NS}/a"]
