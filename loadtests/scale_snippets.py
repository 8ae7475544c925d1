"""How long N snippets over M namespaces take to become Ready, per shard count.

For each shard count it starts a fresh control plane and ``jaas operator
--shards S``, creates the snippets as fast as the API allows, polls until all
are Ready, and samples the resident memory of every process of the operator
(leader, shard workers, evaluators) and of kube-apiserver/etcd meanwhile.
Throughput is snippets / seconds from the first create to all Ready.
Prints one table; asserts nothing.

``--tracing on`` starts a real OpenTelemetry Collector
(:class:`jaas.testing.collector.Collector`, ``make otelcol``) in the run's
work directory and runs the operator with metio/jaas's tracing flags
(``--tracing-endpoint <collector gRPC> --tracing-insecure true
--tracing-sample-ratio 1``: every reconcile traced, OTLP/gRPC, the SDK's
default ``OTEL_BSP_*`` batching). After the operator has stopped (flushing its
spans) and the collector too, it reports the spans received and the size of
a reconcile's trace (:mod:`loadtests.trace_size`), and the lines of
``operator.log`` that mention exporting or OpenTelemetry. ``--tracing both``
runs every shard count with tracing off and on, interleaved.

    .venv/bin/python -m loadtests.scale_snippets --snippets 200 --namespaces 20 --shards 1 2
    .venv/bin/python -m loadtests.scale_snippets --shards 2 --tracing both --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
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
from jaas.testing.collector import Collector
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.operator import OperatorProcess
from jaas.testing.tenants import TENANT_SA, grant_tenant
from loadtests.trace_size import TraceFigures
from loadtests.trace_size import measure as measure_traces

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
    #: Whether the operator exported traces (every reconcile sampled).
    tracing: bool = False
    ready_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    peak_rss: dict[str, int] = field(default_factory=dict)
    #: CPU seconds (user + system) per process kind over the run, summed over processes.
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    #: TokenRequests the operator made (tenant tokens minted).
    token_requests: int = 0
    #: Lines of operator.log with level WARNING or above.
    warnings: int = 0
    #: Lines of operator.log about exporting spans or OpenTelemetry (tracing failures).
    tracing_log: list[str] = field(default_factory=list)
    #: The collector's output, measured (tracing on only).
    traces: TraceFigures | None = None


def metric_sum(exposition: str, name: str) -> float:
    """Sum of every sample of metric ``name`` in a Prometheus text exposition."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


#: operator.log lines worth reporting when tracing is on: exporter failures,
#: dropped spans (the SDK logs "Queue is full, likely spans will be dropped").
TRACING_LOG = re.compile(r"export|opentelemetry|otlp|queue is full|dropp", re.IGNORECASE)
#: A log line at WARNING or above (JSON or text format).
WARNING_LOG = re.compile(
    r'"level": ?"(warning|error|critical)"'  # --log-format json (the default)
    r"|^\S+ \S+ (WARNING|ERROR|CRITICAL) "  # --log-format text
)


def scan_log(path: Path, run: Run) -> None:
    """Count the warnings of an operator log into ``run`` and keep its tracing lines."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return
    run.warnings = sum(1 for line in lines if WARNING_LOG.search(line))
    run.tracing_log = [line for line in lines if TRACING_LOG.search(line)]


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


async def measure(
    shards: int, snippets: int, namespaces: int, workdir: Path, *, tracing: bool = False
) -> Run:
    """One run with ``shards`` shard workers, traced or not; returns its figures.

    Raises:
        TimeoutError: not every snippet was Ready within 600 s.
        jaas.testing.collector.CollectorError: tracing on and the collector
            is not built or did not start.
    """
    plane = await asyncio.to_thread(ControlPlane.start, workdir / "cp", default_crd_dirs())
    collector: Collector | None = None
    # Every namespace's snippets act as its ServiceAccount `tenant` (TokenRequest tokens).
    args = ["--default-service-account", TENANT_SA]
    try:
        if tracing:
            collector = await asyncio.to_thread(Collector, workdir / "otelcol")
            args += [
                "--tracing-endpoint",
                collector.grpc_endpoint,
                "--tracing-insecure",
                "true",
                "--tracing-sample-ratio",
                "1",
            ]
    except BaseException:
        await asyncio.to_thread(plane.stop)
        raise
    # Off means off even when this shell's environment sets OTEL_EXPORTER_OTLP_*.
    env = {} if tracing else {"OTEL_SDK_DISABLED": "true"}
    operator = OperatorProcess(
        plane.kubeconfig, workdir / "op", shards=shards, extra_args=args, env=env
    )
    run = Run(shards, tracing)
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
        # The operator flushes its queued spans when it stops; then the
        # collector flushes its file exporter when it stops.
        await asyncio.to_thread(operator.stop)
        if collector is not None:
            await asyncio.to_thread(collector.stop)
        await asyncio.to_thread(plane.stop)
    scan_log(operator.log_path, run)
    if collector is not None:
        run.traces = await asyncio.to_thread(measure_traces, collector.output)
    return run


def report(runs: list[Run], snippets: int, namespaces: int) -> None:
    """Print the figures of all runs, the median run per shard count and tracing, the traces."""
    print(f"\n{snippets} snippets in {namespaces} namespaces, until all Ready (2 evaluators)")
    print(
        "shards  tracing  all Ready (s)  snippets/s  p50 (s)  p95 (s)  max (s)  "
        "peak RSS MiB per process"
    )
    groups: dict[tuple[int, bool], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.shards, run.tracing)].append(run)
    medians = [
        sorted(group, key=lambda r: r.ready_seconds)[len(group) // 2] for group in groups.values()
    ]
    for label, rows in (("every run", runs), ("median run per shard count and tracing", medians)):
        print(f"-- {label}")
        _rows(rows, snippets)
    for number, run in enumerate(runs, start=1):
        if run.traces is None:
            continue
        print(f"-- traces of run {number} ({run.shards} shards, tracing on)")
        for line in run.traces.summary():
            print(f"   {line}")
    for number, run in enumerate(runs, start=1):
        if run.tracing_log:
            print(f"-- operator.log lines about exporting/OpenTelemetry, run {number}:")
            for line in run.tracing_log:
                print(f"   {line}")


def _rows(runs: list[Run], snippets: int) -> None:
    for run in runs:
        lat = sorted(run.latencies)
        p95 = lat[int(0.95 * (len(lat) - 1))]
        mib = defaultdict(str, {k: f"{v / 2**20:.0f}" for k, v in run.peak_rss.items()})
        print(
            f"{run.shards:>6}  {'on' if run.tracing else 'off':>7}  {run.ready_seconds:>13.1f}  "
            f"{snippets / run.ready_seconds:>10.1f}  "
            f"{statistics.median(lat):>7.2f}  {p95:>7.2f}  {lat[-1]:>7.2f}  "
            f"leader {mib['leader']}, shard {mib['shard']}, evaluator {mib['evaluator']}, "
            f"kube-apiserver {mib['kube-apiserver']}, etcd {mib['etcd']}"
        )
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(run.cpu_seconds.items()))
        print(
            f"        CPU seconds during the run: {cpu}; TokenRequests: {run.token_requests}; "
            f"operator.log warnings: {run.warnings}"
        )


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--snippets", type=int, default=200)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="runs per shard count (interleaved)")
    parser.add_argument(
        "--tracing",
        choices=["off", "on", "both"],
        default="off",
        help="export every reconcile's trace to a real collector; both: off and on, interleaved",
    )
    args = parser.parse_args()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.tracing]
    runs = []
    for _ in range(args.repeat):
        for shards in args.shards:
            for tracing in modes:
                with tempfile.TemporaryDirectory(prefix="jaas-load-") as tmp:
                    run = asyncio.run(
                        measure(shards, args.snippets, args.namespaces, Path(tmp), tracing=tracing)
                    )
                    runs.append(run)
    report(runs, args.snippets, args.namespaces)


if __name__ == "__main__":
    main()
