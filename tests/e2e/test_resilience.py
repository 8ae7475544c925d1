"""The operator rides out kube-apiserver restarts: every snippet converges afterwards.

Its own control plane (the restart would disturb the session's other tests).
Convergence times are printed at the end of the session, never asserted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from jaas.api.conditions import find_condition
from jaas.operator.kube import KubeClient
from jaas.shards.assignment import HashRing
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.operator import OperatorProcess
from tests.e2e.conftest import FIGURES, OPERATOR_ARGS
from tests.e2e.helpers import create_namespace, create_snippet, snippet_path

NAMESPACES = 6
PER_NAMESPACE = 20


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane.start(
        tmp_path_factory.mktemp("resilience-plane"), default_crd_dirs()
    ) as started:
        yield started


@pytest_asyncio.fixture
async def admin(plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = KubeClient(await api_client_from_kubeconfig(plane.kubeconfig))
    yield client
    await client.close()


def program(namespace: str, name: str, version: int) -> str:
    return f"{{ snippet: '{namespace}/{name}', version: {version} }}"


async def converged(client: KubeClient, keys: list[tuple[str, str]], version: int) -> int:
    """How many snippets are Synced for their current generation with ``version`` rendered."""
    done = 0
    for namespace in sorted({ns for ns, _ in keys}):
        items = (await client.get(snippet_path(namespace)))["items"]
        for item in items:
            status = item.get("status") or {}
            ready = find_condition(status.get("conditions"), "Ready") or {}
            source = item["spec"]["files"]["main.jsonnet"]
            done += (
                ready.get("reason") == "Synced"
                and status.get("observedGeneration") == item["metadata"]["generation"]
                and f"version: {version} " in source
            )
    return done


async def test_snippets_converge_after_the_api_server_is_killed_twice_during_updates(
    plane: ControlPlane, admin: KubeClient, tmp_path: Path
) -> None:
    keys = [(f"restart-{n}", f"s{i}") for n in range(NAMESPACES) for i in range(PER_NAMESPACE)]
    for namespace in sorted({ns for ns, _ in keys}):
        await create_namespace(admin, namespace)
    with OperatorProcess(plane.kubeconfig, tmp_path / "operator", extra_args=OPERATOR_ARGS) as op:
        for namespace, name in keys:
            await create_snippet(
                admin, namespace, name, files={"main.jsonnet": program(namespace, name, 1)}
            )
        await wait_until(admin, keys, 1)
        for version in (2, 3):
            # Half the updates before the restart, half while the API comes back.
            half = len(keys) // 2
            for namespace, name in keys[:half]:
                await bump(admin, namespace, name, version)
            await asyncio.to_thread(plane.restart_apiserver, kill=True)
            await reconnect(admin)
            for namespace, name in keys[half:]:
                await bump(admin, namespace, name, version)
        started = time.monotonic()
        await wait_until(admin, keys, 3)
        FIGURES.append(
            f"resilience: {len(keys)} snippets converged {time.monotonic() - started:.1f} s "
            "after the second kube-apiserver SIGKILL"
        )
        shards = op.shards()
        log = op.log_path.read_text()
    assert "is used by transport" not in log
    assert all(s["ready"] for s in shards), shards


async def bump(client: KubeClient, namespace: str, name: str, version: int) -> None:
    await client.merge_patch(
        snippet_path(namespace, name),
        {"spec": {"files": {"main.jsonnet": program(namespace, name, version)}}},
    )


async def reconnect(client: KubeClient) -> None:
    """Wait until the restarted API answers this client again."""
    for _ in range(300):
        try:
            await client.get("/api/v1/namespaces/default")
            return
        except Exception:  # any failure means it is not back yet
            await asyncio.sleep(0.1)
    raise AssertionError("the API server did not come back")


async def wait_until(client: KubeClient, keys: list[tuple[str, str]], version: int) -> None:
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline:
        done = await converged(client, keys, version)
        if done == len(keys):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"only {done} of {len(keys)} snippets converged to version {version}")


async def test_a_shard_whose_event_loop_stops_is_found_wedged_and_replaced(
    plane: ControlPlane, admin: KubeClient, tmp_path: Path
) -> None:
    ring = HashRing(["shard-0", "shard-1"])
    namespace = next(f"wedge-{n}" for n in range(100) if ring.owner(f"wedge-{n}") == "shard-0")
    await create_namespace(admin, namespace)
    args = [*OPERATOR_ARGS, "--shard-heartbeat-timeout", "3s"]
    with OperatorProcess(plane.kubeconfig, tmp_path / "operator", extra_args=args) as op:
        await create_snippet(
            admin, namespace, "s", files={"main.jsonnet": program(namespace, "s", 1)}
        )
        await wait_until(admin, [(namespace, "s")], 1)
        wedged = next(s for s in op.shards() if s["name"] == "shard-0")
        os.kill(wedged["pid"], signal.SIGSTOP)  # its event loop stops; the process lives
        stopped_at = time.monotonic()
        await bump(admin, namespace, "s", 2)
        seen_wedged: str | None = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shard = next(s for s in op.shards() if s["name"] == "shard-0")
            seen_wedged = seen_wedged or shard["wedged"]
            if shard["restarts"] >= 1 and shard["ready"]:
                break
            await asyncio.sleep(0.2)
        await wait_until(admin, [(namespace, "s")], 2)
        FIGURES.append(
            f"resilience: a SIGSTOPped shard was replaced and its snippet re-rendered "
            f"{time.monotonic() - stopped_at:.1f} s after the stop (heartbeat timeout 3 s)"
        )
        log = op.log_path.read_text()
    assert seen_wedged is not None
    assert seen_wedged.startswith("no heartbeat from its event loop")
    assert "is wedged: no heartbeat" in log
