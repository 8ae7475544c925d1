"""``jaas render`` gives the bytes, or the Ready reason and message, the real operator does.

Against the session's operator (tests/e2e/conftest.py): each snippet is
created on the control plane, and its published ``rendered.json`` (or its
Ready condition) is compared with :func:`jaas.render.render` of the same
manifest in this process, under the operator's own flags (read back from
its command line): the examples in ``examples/``, and every program of
go-jsonnet 0.22's test corpus, served as one Bucket artifact of the whole
``testdata`` directory that one snippet per program points at.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from pathlib import Path
from typing import Any

import pytest_asyncio
import yaml
from kubernetes_asyncio.client import ApiClient

from jaas.api.reasons import ReasonError
from jaas.cli import build_parser
from jaas.evaluator.libraries import load_library_paths
from jaas.evaluator.pool import EvaluatorPool
from jaas.operator.kube import KubeClient
from jaas.options import parse_ext_vars
from jaas.render import Renderer, RenderOptions, SourceDirectory, condition_of, load_manifest
from jaas.testing.flux import FluxPublisher, make_git_repo
from jaas.testing.operator import OperatorProcess
from tests.conformance.conftest import fetch_corpus
from tests.conformance.test_go_jsonnet_corpus import (
    _EXT_VAR_PROGRAMS,
    STANDARD_EXTERNAL_VARIABLES,
)
from tests.e2e.conftest import FIGURES, SESSION_ENV
from tests.e2e.helpers import download, ready, snippet_path, untar

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
#: The Flux source examples/git-snippet.yaml names, and the tree it holds.
EXAMPLE_SOURCE = "jaas-examples"
EXAMPLE_REPO = EXAMPLES / "git-repo"
#: Ready reasons after which the operator does not change its mind on its own.
SETTLED = {"Synced", "EvaluationFailed", "EvaluationTimeout", "ArtifactTooLarge", "InvalidSpec"}
#: Requests to the API server at once while creating snippets.
CREATE_CONCURRENCY = 32
#: Evaluations of the local side at once (its own pool of as many workers).
LOCAL_EVALUATORS = 2

Obj = dict[str, Any]


def operator_render_options(operator: OperatorProcess) -> tuple[RenderOptions, Any]:
    """The render settings and the parsed flags of the running operator's command line."""
    argv = operator.argv
    args = build_parser().parse_args(argv[argv.index("operator") :])
    options = RenderOptions(
        ext_vars=parse_ext_vars(args.ext_var, dict(SESSION_ENV)),
        shared_libraries=load_library_paths(args.library_paths),
        max_stack=args.max_stack,
        max_artifact_bytes=args.max_artifact_bytes,
        no_cross_namespace_refs=args.no_cross_namespace_refs,
    )
    return options, args


@pytest_asyncio.fixture(scope="module")
async def local(operator: OperatorProcess) -> AsyncIterator[Renderer]:
    """A renderer with the operator's settings and an evaluator pool built as its leader's."""
    options, args = operator_render_options(operator)
    async with EvaluatorPool(
        LOCAL_EVALUATORS,
        timeout=args.evaluation_timeout,
        memory_limit=args.evaluation_memory_limit or None,
        max_stack=args.max_stack,
        shared_libraries=options.shared_libraries,
        engine=args.engine,
    ) as pool:
        yield Renderer(pool, options)


async def bounded(calls: Iterable[Awaitable[Any]], limit: int) -> list[Any]:
    """Await ``calls`` with at most ``limit`` in flight; results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[Any]) -> Any:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def settled(
    client: KubeClient, namespace: str, names: set[str], timeout: float
) -> dict[str, Obj]:
    """Every snippet of ``names`` once each has a settled Ready reason for its generation."""
    deadline = time.monotonic() + timeout
    found: dict[str, Obj] = {}
    while True:
        listing = await client.get(snippet_path(namespace))
        found = {
            o["metadata"]["name"]: o
            for o in listing["items"]
            if o["metadata"]["name"] in names
            and ready(o).get("reason") in SETTLED
            and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
        }
        if len(found) == len(names) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    missing = sorted(names - set(found))
    assert not missing, f"{len(missing)} snippets did not settle, e.g. {missing[:5]}"
    return found


async def operator_outcome(obj: Obj) -> tuple[str, bytes | str]:
    """``("Synced", rendered.json bytes)`` or ``(reason, message)`` of a settled snippet."""
    condition = ready(obj)
    if condition["reason"] == "Synced":
        return "Synced", untar(await download(obj["status"]["artifactURL"]))["rendered.json"]
    return str(condition["reason"]), str(condition["message"])


async def local_outcome(
    manifest: Obj, local: Renderer, source: SourceDirectory | None = None
) -> tuple[str, bytes | str]:
    """What ``jaas render`` gives: ``("Synced", stdout)`` or the Ready ``(reason, message)``."""
    try:
        rendered = await local.render(manifest, source=source)
    except ReasonError as err:
        return condition_of(err)
    return "Synced", rendered.stdout


def in_namespace(manifest: Obj, namespace: str) -> Obj:
    manifest = json.loads(json.dumps(manifest))
    manifest["metadata"]["namespace"] = namespace
    return manifest


def example_manifests() -> dict[str, Obj]:
    """The JsonnetSnippets of examples/*.yaml, by file name (files without one are skipped)."""
    manifests = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        documents = list(yaml.safe_load_all(path.read_text()))
        if any(isinstance(d, dict) and d.get("kind") == "JsonnetSnippet" for d in documents):
            manifests[path.name] = load_manifest(path.read_text(), path.name)
    return manifests


async def test_every_example_renders_as_the_operator_renders_it(
    kube_client: KubeClient,
    kube: ApiClient,
    namespace: str,
    flux: FluxPublisher,
    local: Renderer,
    tmp_path: Path,
) -> None:
    examples = example_manifests()
    assert set(examples) >= {"inline-snippet.yaml", "multi-file-inline.yaml", "git-snippet.yaml"}
    # The GitRepository of git-snippet.yaml: a real commit of examples/git-repo.
    files = {
        p.relative_to(EXAMPLE_REPO).as_posix(): p.read_bytes()
        for p in EXAMPLE_REPO.rglob("*")
        if p.is_file()
    }
    make_git_repo(tmp_path / "repo", files, "examples")
    await flux.publish_git(kube, namespace, EXAMPLE_SOURCE, tmp_path / "repo")
    sources: dict[str, SourceDirectory | None] = {}
    for file_name, manifest in examples.items():
        ref = manifest["spec"].get("sourceRef")
        if ref is None:
            sources[file_name] = None
            continue
        assert ref["name"] == EXAMPLE_SOURCE, f"{file_name}: no source for {ref}"
        sources[file_name] = SourceDirectory(EXAMPLE_REPO)
    for manifest in examples.values():
        await kube_client.create(snippet_path(namespace), in_namespace(manifest, namespace))
    names = {m["metadata"]["name"]: f for f, m in examples.items()}
    objects = await settled(kube_client, namespace, set(names), timeout=120)
    for name, file_name in sorted(names.items()):
        want = await operator_outcome(objects[name])
        got = await local_outcome(
            in_namespace(examples[file_name], namespace), local, sources[file_name]
        )
        assert want[0] == "Synced", f"{file_name}: the operator says {want}"
        assert got == want, f"{file_name}: jaas render differs from the operator"


def snippet_name(index: int, stem: str) -> str:
    """A DNS-1123 name for corpus program ``stem`` (unique by its index)."""
    base = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:40].rstrip("-")
    return f"c{index:03d}-{base}"


def corpus_manifest(name: str, namespace: str, program: str) -> Obj:
    stem = program.removesuffix(".jsonnet")
    spec: Obj = {"sourceRef": {"kind": "Bucket", "name": "corpus"}, "entryFile": program}
    if stem in _EXT_VAR_PROGRAMS:
        spec["externalVariables"] = [
            {"name": v.name, "value": v.value, "code": v.code} for v in STANDARD_EXTERNAL_VARIABLES
        ]
    return {
        "apiVersion": "jaas.metio.wtf/v1",
        "kind": "JsonnetSnippet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


async def test_the_go_jsonnet_corpus_renders_as_the_operator_renders_it(
    kube_client: KubeClient,
    kube: ApiClient,
    namespace: str,
    flux: FluxPublisher,
    local: Renderer,
) -> None:
    corpus = fetch_corpus()
    started = time.perf_counter()
    # The whole testdata tree as one artifact, packed from the files on disk.
    files = {
        p.relative_to(corpus).as_posix(): p.read_bytes() for p in corpus.rglob("*") if p.is_file()
    }
    await flux.publish_bucket(kube, namespace, "corpus", files)
    programs = sorted(p.name for p in corpus.glob("*.jsonnet"))
    manifests = {
        snippet_name(i, p): corpus_manifest(snippet_name(i, p), namespace, p)
        for i, p in enumerate(programs)
    }
    await bounded(
        (kube_client.create(snippet_path(namespace), m) for m in manifests.values()),
        CREATE_CONCURRENCY,
    )
    created = time.perf_counter()
    source = SourceDirectory(corpus)
    local_started = time.perf_counter()
    mine = dict(
        zip(
            manifests,
            await bounded(
                (local_outcome(m, local, source) for m in manifests.values()),
                LOCAL_EVALUATORS * 2,
            ),
            strict=True,
        )
    )
    local_seconds = time.perf_counter() - local_started
    objects = await settled(kube_client, namespace, set(manifests), timeout=600)
    settled_at = time.perf_counter()
    theirs = dict(
        zip(
            manifests,
            await bounded((operator_outcome(objects[n]) for n in manifests), 16),
            strict=True,
        )
    )
    finished = time.perf_counter()
    different = sorted(
        f"{manifests[n]['spec']['entryFile']}: operator {theirs[n][0]}, render {mine[n][0]}"
        for n in manifests
        if theirs[n] != mine[n]
    )
    synced = sum(1 for outcome in theirs.values() if outcome[0] == "Synced")
    figure = (
        f"render matches operator: {len(programs)} go-jsonnet corpus programs "
        f"({synced} Synced, {len(programs) - synced} failed), {len(different)} differ; "
        f"created in {created - started:.1f} s, local renders {local_seconds:.1f} s, "
        f"all settled after {settled_at - started:.1f} s, compared after "
        f"{finished - started:.1f} s"
    )
    print("\n" + figure)
    FIGURES.append(figure)
    assert not different, "jaas render differs from the operator:\n  " + "\n  ".join(different[:30])
    assert synced > len(programs) // 2
