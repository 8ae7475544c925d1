"""The operator rides out kube-apiserver restarts: every snippet converges afterwards.

Its own control plane (the restart would disturb the session's other tests).
Convergence times are printed at the end of the session, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
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
from tests.e2e.helpers import create_namespace, create_snippet, download, snippet_path, untar

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


def operator_pids(op: OperatorProcess, marker: str) -> list[int]:
    """PIDs in the operator's session whose command line holds ``marker``."""
    assert op.process is not None
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "-s", str(op.process.pid)], capture_output=True, text=True
    ).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if marker in line]


async def rendered_version(client: KubeClient, namespace: str, name: str) -> int | None:
    """The version in the snippet's published rendered.json, if it is Synced and current."""
    obj = await client.get(snippet_path(namespace, name))
    status = obj.get("status") or {}
    ready = find_condition(status.get("conditions"), "Ready") or {}
    if (
        ready.get("reason") != "Synced"
        or status.get("observedGeneration") != obj["metadata"]["generation"]
    ):
        return None
    rendered = untar(await download(status["artifactURL"]))["rendered.json"]
    return int(json.loads(rendered)["version"])


@pytest.mark.parametrize("run", range(1, 6))
async def test_chaos_every_snippet_converges_to_its_latest_generation(
    plane: ControlPlane, admin: KubeClient, tmp_path: Path, run: int
) -> None:
    """Churn, SIGKILL a shard, an evaluator, the leader and kube-apiserver; count lost updates.

    200 snippets in 8 namespaces are updated at random throughout; the leader is
    restarted by the test as a supervisor would, kube-apiserver on the same etcd.
    """
    rng = random.Random(run)
    keys = [(f"chaos{run}-{n}", f"s{i}") for n in range(8) for i in range(25)]
    for namespace in sorted({ns for ns, _ in keys}):
        await create_namespace(admin, namespace)
    latest = dict.fromkeys(keys, 1)
    op = OperatorProcess(plane.kubeconfig, tmp_path / "operator", extra_args=OPERATOR_ARGS)
    op.start()
    try:
        for namespace, name in keys:
            await create_snippet(
                admin, namespace, name, files={"main.jsonnet": program(namespace, name, 1)}
            )

        async def churn(rounds: int) -> None:
            for _ in range(rounds):
                key = rng.choice(keys)
                latest[key] += 1
                try:
                    await bump(admin, *key, latest[key])
                except Exception:  # the API is down for a moment: that update never happened
                    latest[key] -= 1
                    await asyncio.sleep(0.1)

        for marker in (" shard ", "jaas.evaluator.worker"):
            await churn(20)
            os.kill(rng.choice(operator_pids(op, marker)), signal.SIGKILL)
        await churn(20)
        assert op.process is not None
        op.process.kill()  # the leader; a supervisor (the kubelet) restarts the whole pod
        await churn(10)
        await asyncio.to_thread(op.stop)
        await asyncio.to_thread(op.start)
        await churn(20)
        await asyncio.to_thread(plane.restart_apiserver, kill=True)
        await reconnect(admin)
        last_fault = time.monotonic()
        await churn(20)
        lost = await converge(admin, keys, latest, deadline=last_fault + 120)
        converged_after = time.monotonic() - last_fault
    finally:
        await asyncio.to_thread(op.stop)
    FIGURES.append(
        f"chaos run {run}: {len(keys)} snippets, {sum(latest.values()) - len(keys)} updates, "
        f"converged {converged_after:.1f} s after the last fault, lost updates {len(lost)}"
    )
    assert lost == [], lost


async def converge(
    client: KubeClient,
    keys: list[tuple[str, str]],
    latest: dict[tuple[str, str], int],
    *,
    deadline: float,
) -> list[tuple[str, str, int, int | None]]:
    """Wait until every snippet publishes its latest version; return the ones that did not."""
    missing = list(keys)
    while missing and time.monotonic() < deadline:
        still = []
        for key in missing:
            if await rendered_version(client, *key) != latest[key]:
                still.append(key)
        missing = still
        if missing:
            await asyncio.sleep(0.5)
    return [
        (ns, name, latest[(ns, name)], await rendered_version(client, ns, name))
        for ns, name in missing
    ]


def test_a_leader_over_its_memory_limit_shuts_down_its_processes_and_exits_1(
    plane: ControlPlane, tmp_path: Path
) -> None:
    args = [*OPERATOR_ARGS, "--leader-memory-limit", "1Mi"]
    op = OperatorProcess(plane.kubeconfig, tmp_path / "operator", extra_args=args)
    leader = op.launch()
    try:
        code = leader.wait(60)
        left = op.pids()  # the shards and evaluators of its session
    finally:
        op.stop()
    log = op.log_path.read_text()
    assert code == 1, log
    assert "operator started: 2 shards" in log
    assert "over --leader-memory-limit (1 MiB); shutting down to be restarted" in log
    assert left == []
