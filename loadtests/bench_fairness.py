"""Benchmark of evaluator-pool fairness between tenants; prints figures, asserts nothing.

Run: ``.venv/bin/python loadtests/bench_fairness.py [--heavy N] [--light M] [--interval S]``

A real ``EvaluatorPool`` with 2 workers. The *heavy* tenant (namespace
``heavy``) keeps N CPU-bound evaluations outstanding (``std.foldl`` over a
large range, a few tenths of a second each; each one is resubmitted as soon as
it completes: a namespace full of slow programs). The *light* tenant
(namespace ``light``) submits M tiny evaluations, one every S seconds. For
each pool mode, FIFO (``flow=None``, the pool before fair dispatch) and fair
(``flow`` = namespace of the label, the default), it prints the light tenant's
latency from submission to result (queue wait for a worker plus evaluation,
milliseconds, p50/p99/max; with few samples p99 is close to the max), alone and
beside the heavy tenant, and the heavy tenant's throughput meanwhile.

Figures are wall clock on this machine and shift with load: compare the rows
of one run. Fair dispatch should keep the light tenant's latency beside the
heavy one within about one heavy evaluation, at the same heavy throughput
(work is reordered, not added). Flows take one evaluation per turn whatever it
costs, so a light tenant submitting faster than one evaluation per heavy
completion builds its own backlog (try ``--interval 0.15``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Hashable

from jaas.evaluator.pool import EvaluatorPool, label_namespace
from jaas.evaluator.request import EvaluationRequest

#: About 0.3-0.5 s of CPU in rjsonnet on a 2020s core.
HEAVY = b"std.foldl(function(a, b) a + b, std.range(1, 1500000), 0)"
#: A small inline snippet, like the 92-byte one that waited 24-41 s.
LIGHT = b"{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'x'}, data: {a: '1'}}"

FlowFunction = Callable[[str], Hashable] | None
MODES: tuple[tuple[str, FlowFunction], ...] = (("fifo", None), ("fair", label_namespace))


def request(label: str, source: bytes) -> EvaluationRequest:
    """A request evaluating ``source`` as main.jsonnet, labelled ``<namespace>/<name>``."""
    return EvaluationRequest("main.jsonnet", {"main.jsonnet": source}, label=label)


def percentile(samples: list[float], q: int) -> float:
    """The ``q``-th percentile (1-99) of ``samples``, inclusive method."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def summary(samples: list[float]) -> str:
    """p50, p99 and max of latencies in seconds, as milliseconds."""
    return (
        f"p50 {percentile(samples, 50) * 1000:8.1f}  "
        f"p99 {percentile(samples, 99) * 1000:8.1f}  "
        f"max {max(samples) * 1000:8.1f}"
    )


async def light_tenant(pool: EvaluatorPool, count: int, interval: float) -> list[float]:
    """Submit ``count`` light evaluations ``interval`` seconds apart; latencies in seconds."""
    latencies: list[float] = []

    async def one(n: int) -> None:
        started = time.perf_counter()
        await pool.evaluate(request(f"light/s{n}", LIGHT))
        latencies.append(time.perf_counter() - started)

    tasks = []
    for n in range(count):
        tasks.append(asyncio.create_task(one(n)))
        await asyncio.sleep(interval)
    await asyncio.gather(*tasks)
    return latencies


async def heavy_tenant(pool: EvaluatorPool, outstanding: int, completed: list[str]) -> None:
    """Keep ``outstanding`` heavy evaluations queued or running until cancelled.

    Appends the label of every completed evaluation to ``completed``.
    """

    async def resubmit(n: int) -> None:
        while True:
            label = f"heavy/s{n}"
            await pool.evaluate(request(label, HEAVY))
            completed.append(label)

    await asyncio.gather(*(resubmit(n) for n in range(outstanding)))


async def run_mode(
    flow: FlowFunction, heavy: int, light: int, interval: float
) -> tuple[list[float], list[float], float, float]:
    """Light latencies alone and beside heavy (s), heavy evaluations/s, one heavy eval (s)."""
    async with EvaluatorPool(
        2, timeout=30.0, flow=flow, max_waiting=0, max_waiting_per_flow=0
    ) as pool:
        # Warm both workers; time one heavy evaluation in the worker for scale.
        warm = await asyncio.gather(
            pool.evaluate(request("heavy/warm", HEAVY)), pool.evaluate(request("light/warm", LIGHT))
        )
        heavy_seconds = warm[0].evaluation_seconds

        alone = await light_tenant(pool, light, interval)

        heavy_done: list[str] = []
        started = time.perf_counter()
        background = asyncio.create_task(heavy_tenant(pool, heavy, heavy_done))
        await asyncio.sleep(0)  # the heavy backlog is queued before the light tenant starts
        beside = await light_tenant(pool, light, interval)
        elapsed = time.perf_counter() - started
        throughput = len(heavy_done) / elapsed
        background.cancel()  # waiting requests leave; running ones lose their worker
        await asyncio.gather(background, return_exceptions=True)
        return alone, beside, throughput, heavy_seconds


async def bench(heavy: int, light: int, interval: float) -> None:
    """Run both modes and print the figures."""
    print(
        f"pool: 2 workers; heavy tenant: {heavy} evaluations outstanding; "
        f"light tenant: {light} evaluations, one every {interval * 1000:.0f} ms"
    )
    print("light latency = queue wait + evaluation, ms")
    for name, flow in MODES:
        alone, beside, throughput, heavy_seconds = await run_mode(flow, heavy, light, interval)
        print(f"{name}: one heavy evaluation takes {heavy_seconds * 1000:.0f} ms in the worker")
        print(f"  {name} light alone:         {summary(alone)}")
        print(f"  {name} light beside heavy:  {summary(beside)}")
        print(f"  {name} heavy throughput meanwhile: {throughput:.2f} evaluations/s")


def main() -> None:
    """Parse the arguments and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heavy", type=int, default=40, help="heavy evaluations outstanding")
    parser.add_argument("--light", type=int, default=25, help="light evaluations submitted")
    parser.add_argument(
        "--interval", type=float, default=0.4, help="seconds between light submissions"
    )
    args = parser.parse_args()
    asyncio.run(bench(args.heavy, args.light, args.interval))


if __name__ == "__main__":
    main()
