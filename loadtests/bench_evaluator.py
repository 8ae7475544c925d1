"""Benchmark of the evaluator pool and the manifester; prints figures, asserts nothing.

Run: ``.venv/bin/python loadtests/bench_evaluator.py [--rounds N]``

Figures (medians unless stated; wall clock on this machine, so compare ratios
measured in the same run rather than across machines):

* round trip of a tiny evaluation through a warm pool;
* first-result latency of a fresh worker (pool start plus one evaluation);
* cost of a crash: from the crash report until a replacement worker is idle;
* evaluations per second with pool size 1 and 2 on a mid-size program;
* resident and virtual memory of an idle worker;
* rjsonnet + our manifester against go-jsonnet on the same mid-size program.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable

import _gojsonnet
import rjsonnet

from jaas.api.reasons import ReasonError
from jaas.evaluator.manifest import manifest_json, parse_output
from jaas.evaluator.pool import EvaluatorPool
from jaas.evaluator.request import EvaluationRequest

# rjsonnet's stub lacks the gc keyword and rjsonnet.gc(), which the worker uses.
evaluate_snippet: Callable[..., str] = rjsonnet.evaluate_snippet
collect_garbage: Callable[[], None] = rjsonnet.gc  # type: ignore[attr-defined]

# N + 1 Kubernetes-like objects with numbers, strings and nesting.
MID_SIZE = """
local service(i) = {
  apiVersion: 'v1',
  kind: 'Service',
  metadata: {
    name: 'svc-%d' % i,
    namespace: 'ns-%d' % (i % 7),
    labels: { app: 'a%d' % i, tier: 'backend', 'app.kubernetes.io/name': 'x' },
  },
  spec: {
    ports: [{ port: 80 + j, targetPort: 8080 + j, protocol: 'TCP', name: 'p%d' % j }
            for j in std.range(0, 3)],
    selector: { app: 'a%d' % i },
    ratio: i / 7,
    weights: [0.1 * j for j in std.range(0, 5)],
  },
  description: 'service %d with "quotes", \\\\ and unicode é ✓ 😀' % i,
};
{ ['item-%05d' % i]: service(i) for i in std.range(0, N) }
"""


def mid_size(n: int) -> str:
    """The mid-size program with ``n + 1`` objects."""
    return MID_SIZE.replace("std.range(0, N)", f"std.range(0, {n})")


def request(source: str) -> EvaluationRequest:
    """A request evaluating ``source`` as main.jsonnet."""
    return EvaluationRequest("main.jsonnet", {"main.jsonnet": source.encode()}, label="bench/x")


def median_ms(samples: list[float]) -> str:
    """Median and minimum of samples in seconds, as milliseconds."""
    return f"{statistics.median(samples) * 1000:.2f} ms (min {min(samples) * 1000:.2f})"


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    """Seconds ``call()`` takes."""
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


def memory_of(pid: int) -> tuple[int, int]:
    """(VmRSS, VmSize) of a process in KiB."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmSize"):
                fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmSize"]


async def until_full(pool: EvaluatorPool) -> None:
    """Wait until every worker of ``pool`` is alive and idle."""
    for _ in range(1_000_000):
        if pool.idle == pool.size:
            return
        await asyncio.sleep(0.001)


async def bench_pool(rounds: int, items: int) -> None:
    """Print the pool figures."""
    tiny = request("{a: 1, b: [1, 2, 3]}")

    # First result of a fresh worker.
    first: list[float] = []
    for _ in range(5):
        started = time.perf_counter()
        async with EvaluatorPool(1) as fresh:
            await fresh.evaluate(tiny)
            first.append(time.perf_counter() - started)
    print(f"fresh worker, start + first result:   {median_ms(first)}")

    async with EvaluatorPool(2, timeout=10.0) as pool:
        for _ in range(20):
            await pool.evaluate(tiny)
        trips = [await timed(lambda: pool.evaluate(tiny)) for _ in range(rounds)]
        print(f"tiny evaluation round trip (warm):    {median_ms(trips)}")

        for pid in pool.worker_pids:
            rss, vsz = memory_of(pid)
            print(f"idle worker {pid}: RSS {rss / 1024:.1f} MiB, virtual {vsz / 1024:.1f} MiB")

        # Crash: report latency, then time until the replacement is idle.
        crash = request("local f(x) = [f(x)]; f(1)")
        restart: list[float] = []
        crash_report: list[float] = []
        for _ in range(5):
            started = time.perf_counter()
            with contextlib.suppress(ReasonError):
                await pool.evaluate(crash)
            reported = time.perf_counter()
            crash_report.append(reported - started)
            await until_full(pool)
            restart.append(time.perf_counter() - reported)
        print(f"crash (memory cap) reported after:    {median_ms(crash_report)}")
        print(f"replacement worker idle after:        {median_ms(restart)}")
        print(
            f"counters: {pool.evaluations} evaluations, {pool.crashes} crashes, "
            f"{pool.restarts} restarts"
        )

    work = request(mid_size(items))
    for size in (1, 2):
        async with EvaluatorPool(size, timeout=60.0) as pool:
            await asyncio.gather(*(pool.evaluate(work) for _ in range(size)))
            count = 8 * size
            started = time.perf_counter()
            results = await asyncio.gather(*(pool.evaluate(work) for _ in range(count)))
            elapsed = time.perf_counter() - started
            worker_ms = statistics.median(r.evaluation_seconds for r in results) * 1000
            print(
                f"pool size {size}: {count / elapsed:.2f} evaluations/s of the mid-size program "
                f"({len(results[0].rendered) / 1e6:.2f} MB out; {worker_ms:.0f} ms in the worker)"
            )


def bench_engines(items: int) -> None:
    """Print rjsonnet + manifester against go-jsonnet on the mid-size program."""
    source = mid_size(items)
    rj_eval: list[float] = []
    rj_parse: list[float] = []
    rj_manifest: list[float] = []
    go: list[float] = []
    rendered = ""
    for _ in range(3):
        t0 = time.perf_counter()
        text = evaluate_snippet("main.jsonnet", source, gc=False)
        collect_garbage()
        t1 = time.perf_counter()
        value = parse_output(text)
        t2 = time.perf_counter()
        rendered = manifest_json(value)
        t3 = time.perf_counter()
        rj_eval.append(t1 - t0)
        rj_parse.append(t2 - t1)
        rj_manifest.append(t3 - t2)
    for _ in range(3):
        t0 = time.perf_counter()
        expected = _gojsonnet.evaluate_snippet("main.jsonnet", source)
        go.append(time.perf_counter() - t0)
    total = [a + b + c for a, b, c in zip(rj_eval, rj_parse, rj_manifest, strict=True)]
    print(f"mid-size program, {items + 1} objects, {len(rendered) / 1e6:.2f} MB rendered:")
    print(f"  rjsonnet evaluate:      {median_ms(rj_eval)}")
    print(f"  parse_output:           {median_ms(rj_parse)}")
    print(f"  manifest_json:          {median_ms(rj_manifest)}")
    print(f"  rjsonnet + manifest:    {median_ms(total)}")
    print(f"  go-jsonnet:             {median_ms(go)}")
    print(f"  go / (rjsonnet + manifest): {statistics.median(go) / statistics.median(total):.1f}x")
    print(f"  identical bytes: {rendered == expected}")


def main() -> None:
    """Run every benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="tiny round trips to time")
    parser.add_argument("--items", type=int, default=300, help="objects in the mid-size program")
    args = parser.parse_args()
    asyncio.run(bench_pool(args.rounds, args.items))
    bench_engines(args.items)


if __name__ == "__main__":
    main()
