"""Revision history, GC grace (also while suspended and across restarts), byte-stable URLs.

Own control plane and operator with ``--artifact-gc-grace 4s``, so revisions
that leave the keep-set disappear within the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from jaas.operator.kube import KubeClient
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.operator import OperatorProcess
from tests.e2e.conftest import OPERATOR_ARGS
from tests.e2e.helpers import create_namespace, create_snippet, snippet_path, wait_for, wait_reason

GRACE = 4.0


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane.start(tmp_path_factory.mktemp("lifecycle-plane"), default_crd_dirs())
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def gc_operator(
    plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        plane.kubeconfig,
        tmp_path_factory.mktemp("lifecycle-operator"),
        extra_args=[*OPERATOR_ARGS, "--artifact-gc-grace", f"{GRACE:g}s"],
    )
    proc.start()
    yield proc
    proc.stop()


@pytest_asyncio.fixture
async def admin(plane: ControlPlane, gc_operator: OperatorProcess) -> AsyncIterator[KubeClient]:
    client = KubeClient(await api_client_from_kubeconfig(plane.kubeconfig))
    yield client
    await client.close()


async def fetch(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.read()


async def render(client: KubeClient, ns: str, version: int, previous: str | None) -> Any:
    await client.merge_patch(
        snippet_path(ns, "s"), {"spec": {"files": {"main.jsonnet": f"{{ v: {version} }}"}}}
    )
    return await wait_for(
        client,
        snippet_path(ns, "s"),
        lambda o: (
            (o.get("status") or {}).get("revision") not in (None, previous)
            and o["status"].get("observedGeneration") == o["metadata"]["generation"]
        ),
        what=f"revision {version}",
    )


async def wait_gone(url: str, timeout: float = 30) -> float:
    """Seconds until ``url`` answers 404."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (await fetch(url))[0] == 404:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} is still served after {timeout}s")


async def test_history_three_keeps_three_urls_serving_and_prunes_the_fourth_after_the_grace(
    admin: KubeClient,
) -> None:
    ns = await create_namespace(admin, f"history-{time.monotonic_ns() % 10**6}")
    await create_snippet(admin, ns, "s", history=3, files={"main.jsonnet": "{ v: 0 }"})
    obj = await wait_reason(admin, ns, "s", "Synced")
    urls, data = [obj["status"]["artifactURL"]], {}
    for version in (1, 2, 3):
        obj = await render(admin, ns, version, obj["status"]["revision"])
        urls.append(obj["status"]["artifactURL"])
    for url in urls:
        status, body = await fetch(url)
        assert status == 200
        data[url] = body
    history = [h["revision"] for h in obj["status"]["history"]]
    assert len(history) == 3
    assert history[0] == obj["status"]["revision"]
    kept = [u for u in urls if any(r.removeprefix("sha256:") in u for r in history)]
    assert kept == urls[1:]
    # The revision that left the keep-set is deleted after the grace, the others stay,
    # byte for byte.
    await wait_gone(urls[0])
    await asyncio.sleep(GRACE + 1)
    for url in kept:
        assert await fetch(url) == (200, data[url])


async def test_a_suspended_snippet_still_prunes_after_the_grace(admin: KubeClient) -> None:
    ns = await create_namespace(admin, f"suspended-{time.monotonic_ns() % 10**6}")
    await create_snippet(admin, ns, "s", files={"main.jsonnet": "{ v: 0 }"})
    first = await wait_reason(admin, ns, "s", "Synced")
    second = await render(admin, ns, 1, first["status"]["revision"])
    await admin.merge_patch(snippet_path(ns, "s"), {"spec": {"suspend": True}})
    await wait_reason(admin, ns, "s", "Suspended", generation=3)
    assert (await fetch(first["status"]["artifactURL"]))[0] == 200  # within its grace
    await wait_gone(first["status"]["artifactURL"])
    assert (await fetch(second["status"]["artifactURL"]))[0] == 200
    status = (await admin.get(snippet_path(ns, "s")))["status"]
    assert status["conditions"][0]["reason"] == "Suspended"


async def test_the_grace_survives_a_restart_of_the_operator(
    admin: KubeClient, gc_operator: OperatorProcess
) -> None:
    ns = await create_namespace(admin, f"restart-{time.monotonic_ns() % 10**6}")
    await create_snippet(admin, ns, "s", files={"main.jsonnet": "{ v: 0 }"})
    first = await wait_reason(admin, ns, "s", "Synced")
    second = await render(admin, ns, 1, first["status"]["revision"])
    gc_operator.stop()
    stored = gc_operator.storage_path / ns / "s"
    assert len(list(stored.iterdir())) == 2  # the superseded one is still within its grace
    await asyncio.sleep(GRACE + 1)
    gc_operator.start()
    await wait_gone(first["status"]["artifactURL"])
    assert (await fetch(second["status"]["artifactURL"]))[0] == 200
