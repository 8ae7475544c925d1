"""A light tenant's create→Ready latency alone and beside a heavy tenant on the same shard.

Starts a control plane and ``jaas operator --shards 2 --evaluators 2``, picks
two namespaces that hash to the same shard, and measures how long a small
inline snippet of the light namespace takes from create to ``Ready=True``:
first alone, then while the heavy namespace has a backlog of CPU-heavy
snippets (each evaluation takes most of a second) queued on that shard and
in the evaluator pool. Fair queueing by namespace (work queue and evaluator
slots) should keep the light tenant's delay at about one evaluation.
Prints the figures; asserts nothing.

    .venv/bin/python -m loadtests.tenant_fairness
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from jaas.api.conditions import find_condition
from jaas.api.constants import GROUP, SNIPPET_PLURAL, VERSION
from jaas.operator.kube import KubeClient, resource_path
from jaas.shards.assignment import HashRing
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.operator import OperatorProcess
from jaas.testing.tenants import TENANT_SA, grant_tenant

HEAVY = "{ total: std.foldl(function(a, b) a + b, std.range(1, %d), 0), n: %d }"
LIGHT = "{ light: true, n: %d }"


def same_shard_namespaces(shards: int) -> tuple[str, str]:
    """A heavy and a light namespace name that the hash ring gives the same shard."""
    ring = HashRing([f"shard-{i}" for i in range(shards)])
    heavy = "tenant-heavy"
    for i in range(10_000):
        light = f"tenant-light-{i}"
        if ring.owner(light) == ring.owner(heavy):
            return heavy, light
    raise RuntimeError("no namespace pair on one shard")


def snippet(name: str, program: str) -> dict[str, object]:
    """An inline JsonnetSnippet."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "JsonnetSnippet",
        "metadata": {"name": name},
        "spec": {"files": {"main.jsonnet": program}},
    }


async def create_and_wait(client: KubeClient, namespace: str, name: str, program: str) -> float:
    """Seconds from create until the snippet is Ready=True (polled every 20 ms)."""
    path = resource_path(GROUP, VERSION, SNIPPET_PLURAL, namespace)
    started = time.monotonic()
    await client.create(path, snippet(name, program))
    while True:
        obj = await client.get(f"{path}/{name}")
        cond = find_condition((obj.get("status") or {}).get("conditions"), "Ready")
        if cond is not None and cond.get("status") == "True":
            return time.monotonic() - started
        await asyncio.sleep(0.02)


def summary(label: str, latencies: list[float]) -> str:
    """One printed line: count, p50, p99 and max in seconds."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"{label:<28} n={len(ordered):>3}  p50 {statistics.median(ordered):6.2f} s  "
        f"p99 {p99:6.2f} s  max {ordered[-1]:6.2f} s"
    )


async def measure(args: argparse.Namespace, workdir: Path) -> None:
    """Run both phases on a fresh control plane and operator; print the figures."""
    plane = await asyncio.to_thread(ControlPlane.start, workdir / "cp", default_crd_dirs())
    operator = OperatorProcess(
        plane.kubeconfig,
        workdir / "op",
        shards=args.shards,
        evaluators=args.evaluators,
        evaluation_timeout=30,
        extra_args=["--default-service-account", TENANT_SA],
    )
    client = KubeClient(await api_client_from_kubeconfig(plane.kubeconfig))
    try:
        await asyncio.to_thread(operator.start)
        heavy_ns, light_ns = same_shard_namespaces(args.shards)
        for ns in (heavy_ns, light_ns):
            await client.create("/api/v1/namespaces", {"metadata": {"name": ns}})
            await grant_tenant(client, ns)
        # One heavy snippet alone (the second, warm): what one of its reconciles takes.
        await create_and_wait(client, heavy_ns, "probe-0", HEAVY % (args.range, -1))
        one_heavy = await create_and_wait(client, heavy_ns, "probe-1", HEAVY % (args.range, -2))
        alone = [
            await create_and_wait(client, light_ns, f"alone-{i}", LIGHT % i)
            for i in range(args.light)
        ]
        heavy_path = resource_path(GROUP, VERSION, SNIPPET_PLURAL, heavy_ns)
        burst_started = time.monotonic()
        await asyncio.gather(
            *(
                client.create(heavy_path, snippet(f"heavy-{i}", HEAVY % (args.range, i)))
                for i in range(args.heavy)
            )
        )
        beside = []
        for i in range(args.light):
            beside.append(await create_and_wait(client, light_ns, f"beside-{i}", LIGHT % i))
            await asyncio.sleep(args.interval)
        light_done = time.monotonic() - burst_started
        heavy_ready = 0
        for item in (await client.get(heavy_path))["items"]:
            cond = find_condition((item.get("status") or {}).get("conditions"), "Ready")
            heavy_ready += bool(cond and cond.get("status") == "True")
        owner = HashRing([f"shard-{i}" for i in range(args.shards)]).owner(light_ns)
        print(f"\nboth tenants on {owner}; {args.shards} shards, {args.evaluators} evaluators")
        print(f"one heavy snippet alone, create→Ready: {one_heavy:.2f} s")
        print(summary("light tenant alone", alone))
        print(summary(f"light beside {args.heavy} heavy", beside))
        done = heavy_ready - 2
        print(
            f"heavy snippets Ready when the light tenant finished ({light_done:.1f} s after "
            f"the heavy burst): {done}/{args.heavy}"
        )
        if done:
            # What one heavy evaluation took while the machine was this busy: the
            # yardstick of "delayed by about one evaluation".
            per_evaluation = light_done * args.evaluators / done
            print(f"one heavy evaluation under this load: ~{per_evaluation:.2f} s")
    finally:
        await client.close()
        await asyncio.to_thread(operator.stop)
        await asyncio.to_thread(plane.stop)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--heavy", type=int, default=60, help="heavy snippets in the burst")
    parser.add_argument("--light", type=int, default=20, help="light snippets per phase")
    parser.add_argument("--range", type=int, default=3_000_000, help="size of each heavy fold")
    parser.add_argument("--interval", type=float, default=0.25, help="pause between light ones")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--evaluators", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaas-fairness-") as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
