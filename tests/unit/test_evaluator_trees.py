"""File trees by digest: canonical encoding, the store in the artifact cache, lean requests.

The pool tests at the end run real evaluator processes that read the trees
from the cache directory the test writes them to.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jaas.evaluator.pool import EvaluatorPool
from jaas.evaluator.request import EvaluationRequest, TreesMissing
from jaas.evaluator.trees import TreeStore, decode_tree, encode_tree, tree_digest
from jaas.ipc import FrameError, encode_frame
from jaas.sources.cache import ArtifactCache
from jaas.sources.digest import parse_digest

FILES = {"main.jsonnet": b"(import 'lib/x.libsonnet') + { b: 2 }", "lib/x.libsonnet": b"{ a: 1 }"}


def test_a_tree_round_trips_and_its_encoding_does_not_depend_on_insertion_order() -> None:
    reordered = dict(reversed(list(FILES.items())))
    assert encode_tree(reordered) == encode_tree(FILES)
    assert decode_tree(encode_tree(FILES)) == FILES
    assert tree_digest(reordered) == tree_digest(FILES)


@pytest.mark.parametrize(
    "changed",
    [
        {**FILES, "main.jsonnet": b"{}"},
        {**FILES, "README.md": b""},
        {"main.jsonnet": FILES["main.jsonnet"], "lib/y.libsonnet": FILES["lib/x.libsonnet"]},
        {"main.jsonnet": FILES["main.jsonnet"]},
    ],
    ids=["content", "added file", "renamed file", "removed file"],
)
def test_any_change_of_a_tree_changes_its_digest(changed: dict[str, bytes]) -> None:
    assert tree_digest(changed) != tree_digest(FILES)


def test_a_frame_that_is_not_a_tree_is_refused() -> None:
    with pytest.raises(FrameError, match="not a file tree"):
        decode_tree(encode_frame({"type": "result"}, b""))
    with pytest.raises(FrameError):
        decode_tree(encode_tree(FILES)[:-1])


def test_the_store_writes_a_tree_once_and_reads_it_back_verified(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    writer = TreeStore(cache)
    digest = writer.put(FILES)
    assert digest == tree_digest(FILES)
    assert writer.put(dict(FILES)) == digest
    assert (writer.stored, writer.reused) == (1, 1)
    reader = TreeStore(ArtifactCache(tmp_path))
    assert reader.get(digest) == FILES
    # A corrupted entry fails verification and reads as missing.
    parsed = parse_digest(digest)
    assert parsed is not None
    path = cache.object_path(parsed)
    path.write_bytes(path.read_bytes()[:-4] + b"junk")
    assert TreeStore(ArtifactCache(tmp_path)).get(digest) is None
    assert reader.get("sha256:" + "0" * 64) is None
    assert reader.get("not a digest") is None


def test_decoded_trees_are_kept_in_memory_within_the_bound(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    writer = TreeStore(cache)
    digests = [writer.put({"main.jsonnet": bytes([i]) * 1000}) for i in range(5)]
    reader = TreeStore(cache, memory_bytes=2500)
    for digest in digests:
        assert reader.get(digest) is not None
    for path in (tmp_path / "objects").iterdir():
        path.unlink()  # only what is held in memory can still be read
    held = [digest for digest in digests if reader.get(digest) is not None]
    assert held == digests[-2:]


def test_a_request_naming_its_trees_by_digest_carries_no_file_bytes() -> None:
    big = {"main.jsonnet": b"{}", "data.json": b"x" * 1_000_000}
    library = {"main.libsonnet": b"{}" * 1000}
    inline = EvaluationRequest("main.jsonnet", big, libraries={"lib": library})
    by_digest = EvaluationRequest(
        "main.jsonnet",
        big,
        libraries={"lib": library},
        source_tree=tree_digest(big),
        library_trees={"lib": tree_digest(library)},
    )
    assert len(inline.to_frame()[1]) == 1_000_002 + 2000
    header, payload = by_digest.to_frame()
    assert payload == b""
    decoded = EvaluationRequest.from_frame(header, payload)
    assert decoded.source_tree == tree_digest(big)
    assert decoded.library_trees == {"lib": tree_digest(library)}
    assert decoded.files == {}
    assert decoded.libraries == {}


async def test_evaluators_read_the_trees_a_request_names_from_the_cache(tmp_path: Path) -> None:
    store = TreeStore(ArtifactCache(tmp_path))
    library = {"main.libsonnet": b"{ fromLibrary: true }"}
    request = EvaluationRequest(
        "main.jsonnet",
        {"main.jsonnet": b"(import 'lib') + (import 'lib/x.libsonnet')"},
        libraries={"lib": library | {"x.libsonnet": b"{ x: 1 }"}},
    )
    by_digest = EvaluationRequest(
        request.entry_file,
        {},
        source_tree=store.put(request.files),
        library_trees={"lib": store.put(request.libraries["lib"])},
        libraries={"lib": {}},
    )
    async with EvaluatorPool(size=1, cache_path=tmp_path) as pool:
        result = await pool.evaluate(by_digest)
        assert result.rendered == b'{\n   "fromLibrary": true,\n   "x": 1\n}\n'
        assert (await pool.evaluate(request)).rendered == result.rendered
        for path in (tmp_path / "objects").iterdir():
            os.unlink(path)
        missing = EvaluationRequest("main.jsonnet", {}, source_tree=tree_digest({"a": b"b"}))
        with pytest.raises(TreesMissing) as err:
            await pool.evaluate(missing)
        assert err.value.digests == (tree_digest({"a": b"b"}),)
        # The worker stays in service after answering so.
        assert (await pool.evaluate(request)).rendered == result.rendered
        assert pool.restarts == 0


async def test_an_evaluator_without_a_cache_reports_every_tree_missing() -> None:
    async with EvaluatorPool(size=1) as pool:
        with pytest.raises(TreesMissing):
            await pool.evaluate(
                EvaluationRequest("main.jsonnet", {}, source_tree=tree_digest(FILES))
            )
