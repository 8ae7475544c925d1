"""End-to-end behaviour of ``jaas operator`` on the real control plane (issue 2 acceptance)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import _gojsonnet
import pytest
from kubernetes_asyncio.client import ApiClient

from jaas.api.constants import FINALIZER, GROUP, LIBRARY_PLURAL, VERSION
from jaas.api.reasons import Reason
from jaas.api.runbooks import with_runbook
from jaas.operator.kube import KubeApiError, KubeClient, resource_path
from jaas.operator.publisher import external_artifact_path
from jaas.shards.assignment import HashRing
from jaas.testing.controlplane import ControlPlane
from jaas.testing.flux import FluxPublisher, make_git_repo, make_tarball
from jaas.testing.operator import OperatorProcess
from tests.e2e.helpers import (
    create_namespace,
    create_snippet,
    download,
    get_external_artifact,
    ready,
    sha256,
    snippet_path,
    untar,
    wait_for,
    wait_reason,
)

INLINE = """
function(greeting, replicas=1) {
  kind: 'ConfigMap',
  data: {
    message: '%s from %s' % [greeting, std.extVar('cluster')],
    replicas: replicas,
    labels: std.extVar('labels'),
    text: 'grüße\\t"quoted"\\u0001 ✓',
    ratio: 0.5,
    big: 1e21,
    empty: { list: [], obj: {} },
  },
}
"""
TLAS = [{"name": "greeting", "value": "Hello"}, {"name": "replicas", "value": "3", "code": True}]
EXT_VARS = [
    {"name": "cluster", "value": "demo"},
    {"name": "labels", "value": "{ team: 'a' }", "code": True},
]


def _timestamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").timestamp()


@pytest.fixture
def client(kube: ApiClient) -> KubeClient:
    return KubeClient(kube)


async def test_inline_snippet_publishes_a_complete_external_artifact(
    operator: OperatorProcess, client: KubeClient, namespace: str
) -> None:
    await create_snippet(
        client,
        namespace,
        "hello",
        files={"main.jsonnet": INLINE},
        tlas=TLAS,
        externalVariables=EXT_VARS,
    )
    obj = await wait_reason(client, namespace, "hello", "Synced")
    status = obj["status"]
    cond = ready(obj)
    assert cond["status"] == "True"
    assert re.fullmatch(r"Rendered \d+ bytes from 1 files: .*", cond["message"])
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert FINALIZER in obj["metadata"]["finalizers"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", status["revision"])
    assert status["lastSyncTime"]
    assert status["history"][0]["revision"] == status["revision"]

    ea = await get_external_artifact(client, namespace, "hello")
    assert ea["spec"]["sourceRef"] == {
        "apiVersion": "jaas.metio.wtf/v1",
        "kind": "JsonnetSnippet",
        "name": "hello",
    }
    artifact = ea["status"]["artifact"]
    hex_revision = status["revision"].removeprefix("sha256:")
    assert artifact["path"] == f"{namespace}/hello/sha256-{hex_revision}.tar.gz"
    assert artifact["url"] == f"{operator.base_url}/{artifact['path']}" == status["artifactURL"]
    assert artifact["revision"] == status["revision"]
    assert artifact["lastUpdateTime"]
    ea_ready = ready(ea)
    assert (ea_ready["status"], ea_ready["reason"]) == ("True", "Succeeded")

    tarball = await download(artifact["url"])
    assert sha256(tarball) == artifact["digest"]
    assert len(tarball) == artifact["size"]
    members = untar(tarball)
    assert sorted(members) == ["kustomization.yaml", "rendered.json"]
    assert sha256(members["rendered.json"]) == status["revision"]
    expected = _gojsonnet.evaluate_snippet(
        "main.jsonnet",
        INLINE,
        ext_vars={"cluster": "demo"},
        ext_codes={"labels": "{ team: 'a' }"},
        tla_vars={"greeting": "Hello"},
        tla_codes={"replicas": "3"},
    )
    assert members["rendered.json"].decode() == expected

    # The same input renders to a byte-identical tarball under another name.
    await create_snippet(
        client,
        namespace,
        "twin",
        files={"main.jsonnet": INLINE},
        tlas=TLAS,
        externalVariables=EXT_VARS,
    )
    await wait_reason(client, namespace, "twin", "Synced")
    twin = await get_external_artifact(client, namespace, "twin")
    assert twin["status"]["artifact"]["digest"] == artifact["digest"]
    assert await download(twin["status"]["artifact"]["url"]) == tarball

    events = await client.get(f"/apis/events.k8s.io/v1/namespaces/{namespace}/events")
    assert any(
        e["reason"] == "Synced" and e["regarding"]["name"] == "hello" for e in events["items"]
    )


async def test_git_repository_source_with_path_and_imports_rerenders_on_new_revision(
    operator: OperatorProcess,
    client: KubeClient,
    kube: ApiClient,
    namespace: str,
    flux: FluxPublisher,
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    files = {
        "configs/main.jsonnet": "local lib = import 'lib/app.libsonnet';\n"
        "{ app: lib.name, version: lib.version, text: importstr 'lib/note.txt' }\n",
        "configs/lib/app.libsonnet": "{ name: 'web', version: (import '../data.json').version }\n",
        "configs/lib/note.txt": "hello",
        "configs/data.json": '{"version": 1}',
        "other/ignored.jsonnet": "error 'not part of the path'",
    }
    make_git_repo(repo, files, "first")
    await flux.publish_git(kube, namespace, "repo", repo)
    await create_snippet(
        client,
        namespace,
        "from-git",
        sourceRef={"kind": "GitRepository", "name": "repo", "path": "configs"},
    )
    obj = await wait_reason(client, namespace, "from-git", "Synced")
    first_revision = obj["status"]["revision"]
    first_ea = await get_external_artifact(client, namespace, "from-git")
    assert " from 4 files: " in ready(obj)["message"]
    rendered = untar(await download(obj["status"]["artifactURL"]))["rendered.json"]
    assert json.loads(rendered) == {"app": "web", "version": 1, "text": "hello"}

    make_git_repo(repo, {"configs/data.json": '{"version": 2}'}, "second")
    await flux.publish_git(kube, namespace, "repo", repo)
    obj = await wait_for(
        client,
        snippet_path(namespace, "from-git"),
        lambda o: (o.get("status") or {}).get("revision") not in (None, first_revision),
        what="a new revision",
    )
    assert obj["metadata"]["generation"] == 1
    rendered = untar(await download(obj["status"]["artifactURL"]))["rendered.json"]
    assert json.loads(rendered)["version"] == 2
    ea = await get_external_artifact(client, namespace, "from-git")
    assert ea["status"]["artifact"]["revision"] == obj["status"]["revision"]
    # Ready stayed True, so its lastTransitionTime did not move.
    assert ready(ea)["lastTransitionTime"] == ready(first_ea)["lastTransitionTime"]
    assert [h["revision"] for h in obj["status"]["history"]] == [obj["status"]["revision"]]


@pytest.mark.parametrize("kind", ["OCIRepository", "Bucket"])
async def test_oci_and_bucket_sources_render(
    operator: OperatorProcess,
    client: KubeClient,
    kube: ApiClient,
    namespace: str,
    flux: FluxPublisher,
    kind: str,
) -> None:
    files = {"main.jsonnet": "{ kind: std.extVar('k') }"}
    publish = flux.publish_oci if kind == "OCIRepository" else flux.publish_bucket
    await publish(kube, namespace, "src", {k: v.encode() for k, v in files.items()})
    await create_snippet(
        client,
        namespace,
        "s",
        sourceRef={"kind": kind, "name": "src"},
        externalVariables=[{"name": "k", "value": kind}],
    )
    obj = await wait_reason(client, namespace, "s", "Synced")
    rendered = untar(await download(obj["status"]["artifactURL"]))["rendered.json"]
    assert json.loads(rendered) == {"kind": kind}


async def test_digest_mismatch_gives_source_fetch_failed(
    operator: OperatorProcess,
    client: KubeClient,
    kube: ApiClient,
    namespace: str,
    flux: FluxPublisher,
) -> None:
    tarball = make_tarball({"main.jsonnet": "{}"})
    await flux.publish_tarball(
        kube, "Bucket", namespace, "bad", tarball, sha256(tarball), digest="sha256:" + "0" * 64
    )
    await create_snippet(client, namespace, "s", sourceRef={"kind": "Bucket", "name": "bad"})
    obj = await wait_reason(client, namespace, "s", "SourceFetchFailed")
    assert "digest" in ready(obj)["message"]
    assert ready(obj)["status"] == "False"


async def test_source_without_artifact_gives_source_not_ready(
    operator: OperatorProcess,
    client: KubeClient,
    kube: ApiClient,
    namespace: str,
    flux: FluxPublisher,
) -> None:
    await flux.create_without_artifact(kube, "GitRepository", namespace, "pending")
    await create_snippet(
        client, namespace, "s", sourceRef={"kind": "GitRepository", "name": "pending"}
    )
    obj = await wait_reason(client, namespace, "s", "SourceNotReady")
    assert "GitRepository" in ready(obj)["message"]


async def test_jsonnet_error_gives_evaluation_failed_and_keeps_the_last_artifact(
    operator: OperatorProcess, client: KubeClient, namespace: str
) -> None:
    await create_snippet(client, namespace, "s", files={"main.jsonnet": "{ a: 1 }"})
    good = await wait_reason(client, namespace, "s", "Synced")
    ea_before = await get_external_artifact(client, namespace, "s")
    await client.merge_patch(
        snippet_path(namespace, "s"),
        {"spec": {"files": {"main.jsonnet": "{\n  a: error 'broken on purpose',\n}"}}},
    )
    bad = await wait_reason(client, namespace, "s", "EvaluationFailed", generation=2)
    message = ready(bad)["message"]
    assert "broken on purpose" in message
    assert "main.jsonnet:2" in message
    assert bad["status"]["revision"] == good["status"]["revision"]
    assert bad["status"]["artifactURL"] == good["status"]["artifactURL"]
    ea_after = await get_external_artifact(client, namespace, "s")
    assert ea_after["status"]["artifact"] == ea_before["status"]["artifact"]
    assert json.loads(untar(await download(good["status"]["artifactURL"]))["rendered.json"]) == {
        "a": 1
    }


async def test_a_huge_error_message_is_shortened_to_fit_the_condition(
    operator: OperatorProcess, client: KubeClient, namespace: str
) -> None:
    program = "error std.join('', ['boom' for i in std.range(1, 20000)])"
    await create_snippet(client, namespace, "loud", files={"main.jsonnet": program})
    obj = await wait_reason(client, namespace, "loud", "EvaluationFailed")
    message = ready(obj)["message"]
    assert message.startswith("runtime error: boomboom")
    assert "characters cut" in message
    assert len(message) <= 4096


async def test_endless_evaluation_times_out_while_other_snippets_render(
    operator: OperatorProcess, client: KubeClient, namespace: str
) -> None:
    # About 10^12 additions in constant memory: it never finishes on its own.
    inner = "std.foldl(function(a, y) a + y, std.range(0, 1000000), 0)"
    endless = f"std.foldl(function(acc, x) acc + {inner}, std.range(0, 1000000), 0)"
    created = await create_snippet(client, namespace, "endless", files={"main.jsonnet": endless})
    for i in range(3):
        await create_snippet(
            client, namespace, f"quick-{i}", files={"main.jsonnet": f"{{ i: {i} }}"}
        )
    quick = [
        await wait_reason(client, namespace, f"quick-{i}", "Synced", timeout=30) for i in range(3)
    ]
    obj = await wait_reason(client, namespace, "endless", "EvaluationTimeout", timeout=30)
    assert ready(obj)["message"] == with_runbook(
        Reason.EVALUATION_TIMEOUT, f"evaluation exceeded {operator.evaluation_timeout:g}s"
    )
    # Server timestamps have one-second resolution.
    took = _timestamp(ready(obj)["lastTransitionTime"]) - _timestamp(
        created["metadata"]["creationTimestamp"]
    )
    assert took <= operator.evaluation_timeout + 2
    for q in quick:
        assert _timestamp(ready(q)["lastTransitionTime"]) <= _timestamp(
            ready(obj)["lastTransitionTime"]
        )


@pytest.mark.parametrize(
    "program",
    [
        "local f(x) = [f(x)]; f(1)",
        "[" * 10_000 + "]" * 10_000,
    ],
    ids=["self-referencing-array", "10000-nested-arrays"],
)
async def test_a_crashing_snippet_fails_and_the_next_one_renders(
    operator: OperatorProcess, client: KubeClient, namespace: str, program: str
) -> None:
    await create_snippet(client, namespace, "crash", files={"main.jsonnet": program})
    # Which bound stops these first (the 2 GiB memory cap, or the 5 s wall-clock
    # timeout on a machine busy with the rest of the suite) depends on the
    # machine; either way the snippet fails with a reason and the pool recovers.
    obj = await wait_for(
        client,
        snippet_path(namespace, "crash"),
        lambda o: ready(o).get("reason") in {"EvaluationFailed", "EvaluationTimeout"},
        what="EvaluationFailed or EvaluationTimeout",
    )
    assert ready(obj)["status"] == "False"
    assert ready(obj)["message"]
    await create_snippet(client, namespace, "after", files={"main.jsonnet": "{ ok: true }"})
    await wait_reason(client, namespace, "after", "Synced", timeout=30)


async def test_deleting_a_snippet_withdraws_its_artifact(
    operator: OperatorProcess, client: KubeClient, namespace: str
) -> None:
    await create_snippet(client, namespace, "gone", files={"main.jsonnet": "{}"})
    obj = await wait_reason(client, namespace, "gone", "Synced")
    stored = operator.storage_path / namespace / "gone"
    assert any(stored.iterdir())
    await client.delete(snippet_path(namespace, "gone"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            await client.get(snippet_path(namespace, "gone"))
        except KubeApiError as err:
            if not err.not_found:
                raise
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("snippet still present (finalizer not removed)")
    with pytest.raises(KubeApiError) as info:
        await client.get(external_artifact_path(namespace, "gone"))
    assert info.value.not_found
    assert not stored.exists()
    assert obj["status"]["artifactURL"]


async def test_two_hundred_snippets_in_twenty_namespaces_are_reconciled_by_their_shard(
    operator: OperatorProcess, client: KubeClient, namespace: str
) -> None:
    namespaces = [f"scale-{namespace[-6:]}-{i}" for i in range(20)]
    started = time.monotonic()
    for ns in namespaces:
        await create_namespace(client, ns)
    await asyncio.gather(
        *(
            create_snippet(client, ns, f"s{j}", files={"main.jsonnet": f"{{ ns: '{ns}', j: {j} }}"})
            for ns in namespaces
            for j in range(10)
        )
    )
    pending = {(ns, f"s{j}") for ns in namespaces for j in range(10)}
    deadline = time.monotonic() + 180
    while pending and time.monotonic() < deadline:
        for ns in {ns for ns, _ in pending}:
            items = (await client.get(snippet_path(ns)))["items"]
            for item in items:
                if ready(item).get("reason") == "Synced":
                    pending.discard((ns, item["metadata"]["name"]))
        await asyncio.sleep(0.5)
    assert not pending, f"{len(pending)} snippets not Ready"
    print(
        f"\n200 snippets in 20 namespaces Ready after {time.monotonic() - started:.1f}s (2 shards)"
    )

    ring = HashRing([s["name"] for s in operator.shards()])
    shards_seen: dict[str, set[str]] = {}
    for line in operator.metrics().splitlines():
        if not line.startswith("jaas_snippet_reconcile_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels["namespace"] in namespaces:
            shards_seen.setdefault(labels["namespace"], set()).add(labels["shard"])
    assert set(shards_seen) == set(namespaces)
    for ns, shards in shards_seen.items():
        assert shards == {ring.owner(ns)}, ns
    assert {ring.owner(ns) for ns in namespaces} == {"shard-0", "shard-1"}


async def test_a_killed_shard_is_replaced_and_its_snippets_converge(
    operator: OperatorProcess, client: KubeClient, namespace: str
) -> None:
    await create_snippet(client, namespace, "s", files={"main.jsonnet": "{ v: 1 }"})
    await wait_reason(client, namespace, "s", "Synced")
    ring = HashRing([s["name"] for s in operator.shards()])
    owner = ring.owner(namespace)
    before = {s["name"]: s for s in operator.shards()}[owner]
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = {s["name"]: s for s in operator.shards()}[owner]
        if now["pid"] not in (None, before["pid"]) and now["ready"]:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"{owner} was not replaced")
    assert now["restarts"] == before["restarts"] + 1
    await client.merge_patch(
        snippet_path(namespace, "s"), {"spec": {"files": {"main.jsonnet": "{ v: 2 }"}}}
    )
    obj = await wait_reason(client, namespace, "s", "Synced", generation=2)
    assert json.loads(untar(await download(obj["status"]["artifactURL"]))["rendered.json"]) == {
        "v": 2
    }


async def test_libraries_are_imported_by_alias_and_a_missing_one_is_reported(
    operator: OperatorProcess, client: KubeClient, namespace: str
) -> None:
    await client.create(
        resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace),
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "JsonnetLibrary",
            "metadata": {"name": "utils"},
            "spec": {
                "files": {
                    "main.libsonnet": "{ double(x):: 2 * x, name: (import 'name.txt') }",
                    "name.txt": "'utils'",
                }
            },
        },
    )
    await create_snippet(
        client,
        namespace,
        "uses-lib",
        libraries=[{"kind": "JsonnetLibrary", "name": "utils", "importPath": "u"}],
        files={"main.jsonnet": "local u = import 'u'; { v: u.double(21), n: u.name }"},
    )
    obj = await wait_reason(client, namespace, "uses-lib", "Synced")
    rendered = untar(await download(obj["status"]["artifactURL"]))["rendered.json"]
    assert json.loads(rendered) == {"v": 42, "n": "utils"}

    await create_snippet(
        client,
        namespace,
        "missing-lib",
        libraries=[{"kind": "JsonnetLibrary", "name": "nope"}],
        files={"main.jsonnet": "import 'nope'"},
    )
    obj = await wait_reason(client, namespace, "missing-lib", "LibraryNotFound")
    assert "nope" in ready(obj)["message"]


async def test_requested_at_annotation_reconciles_and_suspend_pauses(
    operator: OperatorProcess, client: KubeClient, namespace: str
) -> None:
    await create_snippet(client, namespace, "s", files={"main.jsonnet": "{}"})
    await wait_reason(client, namespace, "s", "Synced")
    await client.merge_patch(
        snippet_path(namespace, "s"),
        {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "now-1"}}},
    )
    await wait_for(
        client,
        snippet_path(namespace, "s"),
        lambda o: (o.get("status") or {}).get("lastHandledReconcileAt") == "now-1",
        what="lastHandledReconcileAt",
    )
    await client.merge_patch(snippet_path(namespace, "s"), {"spec": {"suspend": True}})
    obj = await wait_reason(client, namespace, "s", "Suspended", generation=2)
    assert ready(obj)["status"] == "False"
    assert obj["status"]["artifactURL"]  # the published artifact stays
    ea = await get_external_artifact(client, namespace, "s")
    assert ready(ea)["status"] == "True"


def test_sigterm_stops_every_process_cleanly(control_plane: ControlPlane, tmp_path: Path) -> None:
    # A second operator on the session's control plane: it watches a namespace of
    # its own only, so it never competes with the session's operator.
    proc = OperatorProcess(
        control_plane.kubeconfig,
        tmp_path,
        shards=2,
        evaluators=2,
        extra_args=["--watch-namespaces", "sigterm-only"],
    )
    proc.start()
    pids = proc.pids()
    assert len(pids) >= 5  # leader, 2 shards, 2 evaluators
    assert proc.process is not None
    proc.process.send_signal(signal.SIGTERM)
    try:
        assert proc.process.wait(30) == 0
        # Every child exited by itself (the session is only killed by stop() below).
        assert proc.pids() == []
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    assert "Traceback" not in log
    assert "shutting down" in log
