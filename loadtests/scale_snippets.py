"""How long N snippets over M namespaces take to become Ready, per shard count.

For each shard count it starts a fresh control plane and ``jaas operator
--shards S``, creates the snippets as fast as the API allows, polls until all
are Ready, and samples the resident memory of every process of the operator
(leader, shard workers, evaluators) and of kube-apiserver/etcd meanwhile.
Prints one table; asserts nothing.

    .venv/bin/python -m loadtests.scale_snippets --snippets 200 --namespaces 20 --shards 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from jaas.api.conditions import find_condition
from jaas.api.constants import GROUP, SNIPPET_PLURAL, VERSION
from jaas.operator.kube import KubeClient, resource_path
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.operator import OperatorProcess
from jaas.testing.tenants import TENANT_SA, grant_tenant

PROGRAM = """
local n = %(n)d;
{
  namespace: '%(ns)s',
  items: [{ name: 'item-%%d' %% i, value: i * n, tags: ['a', 'b', std.toString(i)] }
          for i in std.range(1, 50)],
  total: std.foldl(function(a, b) a + b, std.range(1, 1000), 0),
}
"""


@dataclass
class Run:
    """Figures of one run."""

    shards: int
    ready_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    peak_rss: dict[str, int] = field(default_factory=dict)
    #: CPU seconds (user + system) per process kind over the run, summed over processes.
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    #: TokenRequests the operator made (tenant tokens minted).
    token_requests: int = 0


def metric_sum(exposition: str, name: str) -> float:
    """Sum of every sample of metric ``name`` in a Prometheus text exposition."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def classify(cmdline: str) -> str | None:
    """Process kind of an operator process from its command line."""
    if "jaas.evaluator.worker" in cmdline:
        return "evaluator"
    if " shard " in f" {cmdline} ":
        return "shard"
    if " operator " in f" {cmdline} ":
        return "leader"
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(session: int, peaks: dict[str, int], cpu: dict[int, tuple[str, float]]) -> None:
    """Update ``peaks`` (kind -> max RSS bytes of one process) and ``cpu`` (pid -> kind, s)."""
    out = subprocess.run(
        ["ps", "-o", "pid=,rss=,args=", "-s", str(session)], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        pid, rss, args = line.strip().split(None, 2)
        kind = classify(args)
        if kind is not None:
            peaks[kind] = max(peaks.get(kind, 0), int(rss) * 1024)
            cpu[int(pid)] = (kind, cpu_seconds(int(pid)))


async def measure(shards: int, snippets: int, namespaces: int, workdir: Path) -> Run:
    """One run with ``shards`` shard workers; returns its figures."""
    plane = await asyncio.to_thread(ControlPlane.start, workdir / "cp", default_crd_dirs())
    # Every namespace's snippets act as its ServiceAccount `tenant` (TokenRequest tokens).
    operator = OperatorProcess(
        plane.kubeconfig,
        workdir / "op",
        shards=shards,
        extra_args=["--default-service-account", TENANT_SA],
    )
    run = Run(shards)
    api = await api_client_from_kubeconfig(plane.kubeconfig)
    client = KubeClient(api)
    try:
        await asyncio.to_thread(operator.start)
        assert operator.process is not None
        names = [f"load-{i}" for i in range(namespaces)]
        for ns in names:
            await client.create("/api/v1/namespaces", {"metadata": {"name": ns}})
            await grant_tenant(client, ns)
        created: dict[tuple[str, str], float] = {}
        baseline: dict[int, tuple[str, float]] = {}
        sample(operator.process.pid, run.peak_rss, baseline)
        plane_cpu = {kind: cpu_seconds(pid) for kind, pid in plane.pids().items()}
        started = time.monotonic()

        async def create(ns: str, j: int) -> None:
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "JsonnetSnippet",
                "metadata": {"name": f"s{j}"},
                "spec": {"files": {"main.jsonnet": PROGRAM % {"n": j, "ns": ns}}},
            }
            await client.create(resource_path(GROUP, VERSION, SNIPPET_PLURAL, ns), body)
            created[(ns, f"s{j}")] = time.monotonic()

        per_ns = snippets // namespaces
        await asyncio.gather(*(create(ns, j) for ns in names for j in range(per_ns)))
        pending = set(created)
        cpu: dict[int, tuple[str, float]] = {}
        while pending:
            sample(operator.process.pid, run.peak_rss, cpu)
            now = time.monotonic()
            for ns in {ns for ns, _ in pending}:
                items = (await client.get(resource_path(GROUP, VERSION, SNIPPET_PLURAL, ns)))[
                    "items"
                ]
                for item in items:
                    key = (ns, item["metadata"]["name"])
                    cond = find_condition((item.get("status") or {}).get("conditions"), "Ready")
                    if key in pending and cond and cond.get("reason") == "Synced":
                        pending.discard(key)
                        run.latencies.append(now - created[key])
            if time.monotonic() - started > 600:
                raise TimeoutError(f"{len(pending)} snippets not Ready after 600 s")
            await asyncio.sleep(0.1)
        run.ready_seconds = time.monotonic() - started
        sample(operator.process.pid, run.peak_rss, cpu)
        for pid, (kind, seconds) in cpu.items():
            before = baseline.get(pid, (kind, 0.0))[1]
            run.cpu_seconds[kind] = run.cpu_seconds.get(kind, 0.0) + seconds - before
        for kind, pid in plane.pids().items():
            run.cpu_seconds[kind] = cpu_seconds(pid) - plane_cpu[kind]
        run.token_requests = int(metric_sum(operator.metrics(), "jaas_tenant_token_mints_total"))
        rss = plane.rss()
        run.peak_rss["kube-apiserver"] = rss["kube-apiserver"]
        run.peak_rss["etcd"] = rss["etcd"]
    finally:
        await client.close()
        await asyncio.to_thread(operator.stop)
        await asyncio.to_thread(plane.stop)
    return run


def report(runs: list[Run], snippets: int, namespaces: int) -> None:
    """Print the figures of all runs, then the median run of each shard count."""
    print(f"\n{snippets} snippets in {namespaces} namespaces, until all Ready (2 evaluators)")
    print("shards  all Ready (s)  snippets/s  p50 (s)  p95 (s)  max (s)  peak RSS MiB per process")
    by_shards: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        by_shards[run.shards].append(run)
    medians = [
        sorted(group, key=lambda r: r.ready_seconds)[len(group) // 2]
        for group in by_shards.values()
    ]
    for label, rows in (("every run", runs), ("median run per shard count", medians)):
        print(f"-- {label}")
        _rows(rows, snippets)


def _rows(runs: list[Run], snippets: int) -> None:
    for run in runs:
        lat = sorted(run.latencies)
        p95 = lat[int(0.95 * (len(lat) - 1))]
        mib = defaultdict(str, {k: f"{v / 2**20:.0f}" for k, v in run.peak_rss.items()})
        print(
            f"{run.shards:>6}  {run.ready_seconds:>13.1f}  {snippets / run.ready_seconds:>10.1f}  "
            f"{statistics.median(lat):>7.2f}  {p95:>7.2f}  {lat[-1]:>7.2f}  "
            f"leader {mib['leader']}, shard {mib['shard']}, evaluator {mib['evaluator']}, "
            f"kube-apiserver {mib['kube-apiserver']}, etcd {mib['etcd']}"
        )
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(run.cpu_seconds.items()))
        print(f"        CPU seconds during the run: {cpu}; TokenRequests: {run.token_requests}")


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--snippets", type=int, default=200)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="runs per shard count (interleaved)")
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        for shards in args.shards:
            with tempfile.TemporaryDirectory(prefix="jaas-load-") as tmp:
                run = asyncio.run(measure(shards, args.snippets, args.namespaces, Path(tmp)))
                runs.append(run)
    report(runs, args.snippets, args.namespaces)


if __name__ == "__main__":
    main()
