"""What narrows an operator: --watch-namespaces, --label-selector, the rate limit, a missing CRD.

Each test has its own operator on a control plane of this module (no other
operator may take the snippets), started with the flags under test.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from jaas.operator.kube import KubeClient
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.operator import OperatorProcess
from tests.e2e.conftest import OPERATOR_ARGS
from tests.e2e.helpers import (
    create_namespace,
    create_snippet,
    ready,
    snippet_path,
    wait_for,
    wait_reason,
)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane.start(tmp_path_factory.mktemp("scope-plane"), default_crd_dirs())
    yield plane
    plane.stop()


@pytest_asyncio.fixture
async def admin(plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = KubeClient(await api_client_from_kubeconfig(plane.kubeconfig))
    yield client
    await client.close()


async def untouched(client: KubeClient, ns: str, name: str, seconds: float = 3.0) -> None:
    await asyncio.sleep(seconds)
    obj = await client.get(snippet_path(ns, name))
    assert not obj.get("status"), obj.get("status")
    assert not obj["metadata"].get("finalizers")


async def test_watch_namespaces_and_label_selector_narrow_what_is_reconciled(
    plane: ControlPlane, admin: KubeClient, tmp_path: Path
) -> None:
    inside, other, outside = "scope-inside", "scope-other", "scope-outside"
    for ns in (inside, other, outside):
        await create_namespace(admin, ns)
    args = [*OPERATOR_ARGS, "--label-selector", "team=blue"]
    with OperatorProcess(
        plane.kubeconfig,
        tmp_path,
        extra_args=args,
        env={"JAAS_WATCH_NAMESPACES": f"{inside},{other}"},
    ):
        labels = {"team": "blue"}
        for ns in (inside, other, outside):
            await admin.create(
                snippet_path(ns),
                {
                    "apiVersion": "jaas.metio.wtf/v1",
                    "kind": "JsonnetSnippet",
                    "metadata": {"name": "blue", "labels": labels},
                    "spec": {"files": {"main.jsonnet": "{}"}},
                },
            )
        await create_snippet(admin, inside, "unlabelled", files={"main.jsonnet": "{}"})
        await wait_reason(admin, inside, "blue", "Synced")
        await wait_reason(admin, other, "blue", "Synced")
        await untouched(admin, outside, "blue")
        await untouched(admin, inside, "unlabelled", seconds=0)


async def test_the_rerender_rate_limit_defers_without_touching_ready(
    plane: ControlPlane, admin: KubeClient, tmp_path: Path
) -> None:
    ns = await create_namespace(admin, "scope-rate")
    args = [*OPERATOR_ARGS, "--rerender-rate", "1/min", "--rerender-burst", "1"]
    with OperatorProcess(plane.kubeconfig, tmp_path, extra_args=args):
        await create_snippet(admin, ns, "s", files={"main.jsonnet": "{ v: 1 }"})
        synced = await wait_reason(admin, ns, "s", "Synced")
        await admin.merge_patch(
            snippet_path(ns, "s"), {"spec": {"files": {"main.jsonnet": "{ v: 2 }"}}}
        )

        def rate_limited(lst: dict[str, list[dict[str, str]]]) -> bool:
            return any(e["reason"] == "RateLimited" for e in lst["items"])

        await wait_for(
            admin,
            f"/apis/events.k8s.io/v1/namespaces/{ns}/events",
            rate_limited,
            what="RateLimited",
        )
        obj = await admin.get(snippet_path(ns, "s"))
        # Deferred, not failed: Ready still describes generation 1.
        assert ready(obj) == ready(synced)
        assert obj["status"]["observedGeneration"] == 1


@pytest.fixture(scope="module")
def plane_without_external_artifacts(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ControlPlane]:
    jaas_crds, flux_crds = default_crd_dirs()
    partial = tmp_path_factory.mktemp("flux-crds-without-ea")
    for crd in flux_crds.glob("*.yaml"):
        if "externalartifacts" not in crd.name:
            shutil.copy(crd, partial / crd.name)
    assert len(list(partial.iterdir())) == len(list(flux_crds.glob("*.yaml"))) - 1
    plane = ControlPlane.start(tmp_path_factory.mktemp("no-ea-plane"), [jaas_crds, partial])
    yield plane
    plane.stop()


async def test_a_missing_external_artifact_crd_is_rbac_denied_naming_the_crd(
    plane_without_external_artifacts: ControlPlane, tmp_path: Path
) -> None:
    plane = plane_without_external_artifacts
    client = KubeClient(await api_client_from_kubeconfig(plane.kubeconfig))
    try:
        ns = await create_namespace(client, "no-ea")
        with OperatorProcess(plane.kubeconfig, tmp_path, extra_args=OPERATOR_ARGS):
            await create_snippet(client, ns, "s", files={"main.jsonnet": "{}"})
            obj = await wait_reason(client, ns, "s", "RBACDenied")
            message = ready(obj)["message"]
            assert "externalartifacts.source.toolkit.fluxcd.io" in message
            assert "install its CustomResourceDefinition" in message
    finally:
        await client.close()


async def test_an_operator_started_beside_a_folder_named_jaas_runs_every_child(
    plane: ControlPlane, admin: KubeClient, tmp_path: Path
) -> None:
    # A storage directory called "jaas" in the working directory: without
    # ``python -P`` every child imported it as the jaas package and crash-looped.
    (tmp_path / "jaas").mkdir()
    (tmp_path / "jaas" / "main.jsonnet").write_text("{}")
    ns = await create_namespace(admin, "scope-cwd")
    with OperatorProcess(
        plane.kubeconfig, tmp_path / "operator", extra_args=OPERATOR_ARGS, cwd=tmp_path
    ) as operator:
        shards = operator.shards()
        assert [(s["ready"], s["restarts"]) for s in shards] == [(True, 0), (True, 0)], shards
        await create_snippet(admin, ns, "rendered", files={"main.jsonnet": "{ a: 1 + 1 }"})
        synced = await wait_reason(admin, ns, "rendered", "Synced")
        assert ready(synced)["message"].startswith("Rendered")
        assert "ImportError" not in operator.log_path.read_text()
