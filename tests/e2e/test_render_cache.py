"""The render cache on a real operator: a restart evaluates nothing, a library change its users.

Its own control plane and operator (the session's operator would reconcile
the same snippets and its evaluations would count in no metric here). The
evaluations are counted by the leader's ``jaas_evaluations_total`` and the
reuses by the shards' ``jaas_render_cache_total``, as an operator of a
cluster would read them.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from jaas.api.constants import GROUP, LIBRARY_PLURAL, VERSION
from jaas.operator.kube import KubeClient, resource_path
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.operator import OperatorProcess
from tests.e2e.conftest import FIGURES, OPERATOR_ARGS
from tests.e2e.helpers import (
    create_namespace,
    create_snippet,
    download,
    get_external_artifact,
    snippet_path,
    untar,
    wait_reason,
)

NAMESPACES = 10
PER_NAMESPACE = 20


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane.start(
        tmp_path_factory.mktemp("render-cache-plane"), default_crd_dirs()
    ) as started:
        yield started


@pytest_asyncio.fixture
async def admin(plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = KubeClient(await api_client_from_kubeconfig(plane.kubeconfig))
    yield client
    await client.close()


def metric(exposition: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there are none)."""
    total = 0.0
    for line in exposition.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_metric(
    op: OperatorProcess, name: str, at_least: float, timeout: float = 120.0, **labels: str
) -> float:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = metric(op.metrics(), name, **labels)
        if value >= at_least:
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{name}{labels} stayed at {value}, below {at_least}")


async def synced_count(client: KubeClient, namespaces: list[str]) -> int:
    done = 0
    for namespace in namespaces:
        for item in (await client.get(snippet_path(namespace)))["items"]:
            conditions = (item.get("status") or {}).get("conditions") or []
            done += any(c["type"] == "Ready" and c["reason"] == "Synced" for c in conditions)
    return done


async def test_a_restarted_operator_evaluates_none_of_200_unchanged_snippets(
    plane: ControlPlane, admin: KubeClient, tmp_path: Path
) -> None:
    namespaces = [f"cache-{n}" for n in range(NAMESPACES)]
    for namespace in namespaces:
        await create_namespace(admin, namespace)
    args = [*OPERATOR_ARGS, "--watch-namespaces", ",".join(namespaces)]
    op = OperatorProcess(plane.kubeconfig, tmp_path / "operator", extra_args=args)
    with op:
        for namespace in namespaces:
            for i in range(PER_NAMESPACE):
                program = f"{{ namespace: '{namespace}', index: {i}, big: std.range(1, 200) }}"
                await create_snippet(admin, namespace, f"s{i}", files={"main.jsonnet": program})
        total = NAMESPACES * PER_NAMESPACE
        deadline = time.monotonic() + 180
        while (synced := await synced_count(admin, namespaces)) < total:
            assert time.monotonic() < deadline, f"{synced} of {total} snippets Synced"
            await asyncio.sleep(0.5)
        first = metric(op.metrics(), "jaas_evaluations_total", result="ok")
        assert first >= total
        before = {ns: (await get_external_artifact(admin, ns, "s0"))["status"] for ns in namespaces}

    started = time.monotonic()
    with op:  # the same operator again: same cache and storage directories, fresh processes
        hits = await wait_metric(op, "jaas_render_cache_total", total, result="hit")
        reused_after = time.monotonic() - started
        await asyncio.sleep(1.0)  # anything still in flight would show now
        exposition = op.metrics()
        assert metric(exposition, "jaas_evaluations_total") == 0
        assert metric(exposition, "jaas_render_cache_total", result="miss") == 0
        assert hits == total
        for namespace in namespaces:
            after = (await get_external_artifact(admin, namespace, "s0"))["status"]
            assert after["artifact"]["digest"] == before[namespace]["artifact"]["digest"]
    FIGURES.append(
        f"render cache: operator restart with {total} unchanged snippets: 0 evaluations, "
        f"{total} renders reused {reused_after:.1f}s after the start"
    )


def library(name: str, value: int) -> dict[str, object]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "JsonnetLibrary",
        "metadata": {"name": name},
        "spec": {"files": {"main.libsonnet": f"{{ value: {value} }}"}},
    }


async def test_a_library_change_re_evaluates_only_the_snippets_that_import_it(
    plane: ControlPlane, admin: KubeClient, tmp_path: Path
) -> None:
    namespace = await create_namespace(admin, "cache-library")
    libraries = resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace)
    for name, value in (("one", 1), ("two", 2)):
        await admin.create(libraries, library(name, value))
    users = {"a": "one", "b": "one", "c": "two"}
    args = [*OPERATOR_ARGS, "--watch-namespaces", namespace]  # not the other test's snippets
    op = OperatorProcess(plane.kubeconfig, tmp_path / "operator", extra_args=args)
    with op:
        for name, lib in users.items():
            await create_snippet(
                admin,
                namespace,
                name,
                files={"main.jsonnet": f"{{ name: '{name}', lib: (import '{lib}').value }}"},
                libraries=[{"kind": "JsonnetLibrary", "name": lib}],
            )
        await create_snippet(admin, namespace, "plain", files={"main.jsonnet": "{ plain: 1 }"})
        for name in (*users, "plain"):
            await wait_reason(admin, namespace, name, "Synced")
        evaluated = metric(op.metrics(), "jaas_evaluations_total")
        assert evaluated == 4

        await admin.merge_patch(
            f"{libraries}/one", {"spec": {"files": {"main.libsonnet": "{ value: 10 }"}}}
        )
        for name in ("a", "b"):
            await wait_rendered(admin, namespace, name, b'"lib": 10')
        assert metric(op.metrics(), "jaas_evaluations_total") == evaluated + 2

        # Now the whole namespace comes back (as after a resync): only renders are reused.
        hits = metric(op.metrics(), "jaas_render_cache_total", result="hit")
        for name in (*users, "plain"):
            await admin.merge_patch(
                snippet_path(namespace, name),
                {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "again"}}},
            )
        await wait_metric(op, "jaas_render_cache_total", hits + 4, result="hit")
        assert metric(op.metrics(), "jaas_evaluations_total") == evaluated + 2
        for name, expected in (("a", 10), ("b", 10), ("c", 2)):
            assert json.loads(await rendered(admin, namespace, name))["lib"] == expected


async def rendered(client: KubeClient, namespace: str, name: str) -> bytes:
    """The published ``rendered.json`` of snippet ``namespace/name``."""
    ea = await get_external_artifact(client, namespace, name)
    return untar(await download(ea["status"]["artifact"]["url"]))["rendered.json"]


async def wait_rendered(
    client: KubeClient, namespace: str, name: str, needle: bytes, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if needle in await rendered(client, namespace, name):
                return
        except (KeyError, AssertionError):
            pass
        await asyncio.sleep(0.25)
    raise AssertionError(f"{namespace}/{name} never rendered {needle!r}")
