"""The three Jsonnet engines on the same inputs, called directly and through the evaluator pool.

Prints figures and asserts nothing (issue 8). Run::

    .venv/bin/python -m loadtests.bench_engines [--engines jrsonnet,rjsonnet,go-jsonnet]
        [--repeat N] [--only PATTERN] [--timeout SECONDS] [--cell-budget SECONDS]
        [--memory-limit MIB] [--json FILE]

Inputs (``--only`` keeps those whose name matches a regular expression):

* ``builtin/*``: go-jsonnet 0.22's own benchmarks, every ``*.jsonnet`` under a
  ``*benchmark*`` directory of the ``github.com/google/go-jsonnet@v0.22.0``
  Go module (only ``builtin-benchmarks/`` has any; ``benchmark.sh`` and
  ``builtins_benchmark_test.go`` are the Go harness that runs them). The
  module is located as ``tests/conformance/conftest.py`` locates it (``make
  corpus`` puts it in the Go module cache); without it only the generated
  input runs, and the output says why.
* ``kube-prometheus-like``: ``loadtests/data/kube_prometheus_like/``, a
  program shaped like kube-prometheus: 24 components, 264 Kubernetes objects
  (Deployments, Services, ServiceMonitors, RBAC, PrometheusRules with 432
  rules, ConfigMaps holding ``std.manifestYamlDoc`` configs and
  ``std.manifestJsonEx`` Grafana dashboards built grafonnet-style with
  ``+``), ``+:`` overrides applied with ``std.foldl``, ``std.mergePatch``
  labels and ``%`` formatting throughout. :data:`KUBE_PROMETHEUS_LIKE` sizes
  it to 3.2 MiB of ``rendered.json``, and as much again of ``objects.yaml``.
  That is large enough for the costs that grow with the output
  (manifesting, ``objects.yaml``, the result frame through the socket) to
  outweigh the pool's fixed round trip, as in a real large render; and small
  enough for go-jsonnet, at 3.5-4.5 s on it (8-9x rjsonnet, near the 7.4x
  measured on the real kube-prometheus when the engines were chosen: 4.9 s
  against 0.67 s), to run with repeats inside the time limits below. The
  real kube-prometheus renders 8 MB, which would more than double the run.

Per input and engine (times in ms):

* **direct**: the engine in this process, called as the worker calls it,
  ``jaas.evaluator.worker.evaluate(request, using=engine)`` on a fresh thread
  with the worker's stack size, so that it includes the worker's manifest
  step (parse the engine's JSON, write it in go-jsonnet's format, compute
  ``objects.yaml`` and ``kustomization.yaml``). ``engine`` is the engine call
  alone (timed inside that same call), ``+manif`` the whole call.
* **path**: ``EvaluatorPool(size=1, engine=...)`` and an
  ``EvaluationRequest``, a fresh pool for every input and engine. ``start``
  (in the summary) is the pool's start: process start, imports, engine load
  and the worker's ``{}`` self-test, until it reports ready. ``cold`` is the
  first evaluation in that fresh worker, ``warm`` the median of ``n`` more,
  timed here around ``pool.evaluate``, so they include encoding the request,
  the socket in both directions and decoding the result. ``worker`` is the
  median time the worker reports for its own part.
* **ovh**: ``warm / +manif - 1`` in per cent and ``warm - +manif`` in ms: the
  cost of the process boundary (the target is under 10% for non-trivial
  programs, those taking 100 ms or more directly). ``cpu ovh`` is the same in
  CPU time (this process's plus the worker's, from ``/proc`` in 10 ms ticks,
  so shown for non-trivial programs only): other work on the machine moves
  wall-clock figures, CPU time much less.
* **HWM**: the worker's peak RSS (``VmHWM``) after its runs of this input; the
  idle figure after start is in the summary.
* **xgo**: the engine's time over go-jsonnet's on the same input: ``eng`` for
  the engine call alone, ``path`` for the warm evaluation through the pool.

After the cold evaluation, one unmeasured direct call, then ``n`` pairs of a
warm evaluation and a direct call, interleaved so that both see the same load.
``n`` is ``--repeat``, cut (shown with ``*``) where the cold run says the cell
would take over ``--cell-budget`` seconds. The pool goes first because it
stops an evaluation that uses over ``--timeout`` CPU seconds, shown as a
timeout, which an in-process call could not; an input an engine fails (a
Jsonnet error, a crash, the worker's ``--memory-limit``) shows the error and
the run goes on.

The summary gives each engine's fixed round-trip cost: the warm evaluation of
``{}`` through the pool minus the same call made directly. Below it, every
cell over the 10% target is explained from its own figures.

Wall-clock figures on a shared 2-core machine: the header prints the load
average; compare figures of one run, not across runs or machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from jaas.api.reasons import Reason, ReasonError
from jaas.evaluator import worker
from jaas.evaluator.engines import ENGINES, Engine, EngineUnavailable, Inputs, load_engine
from jaas.evaluator.importer import InMemoryImporter
from jaas.evaluator.pool import DEFAULT_MEMORY_LIMIT, EvaluatorPool, format_bytes
from jaas.evaluator.request import DEFAULT_STACK_SIZE, EvaluationRequest
from jaas.observability.memory import cpu_seconds

T = TypeVar("T")

#: The module and release ``tests/conformance/conftest.py`` takes its corpus from.
GO_JSONNET_MODULE: Final = "github.com/google/go-jsonnet"
GO_JSONNET_VERSION: Final = "v0.22.0"
#: The engine every other is compared with.
REFERENCE_ENGINE: Final = "go-jsonnet"
#: Directory of the kube-prometheus-like program's Jsonnet files.
DATA_DIR: Final = Path(__file__).resolve().parent / "data" / "kube_prometheus_like"
#: Sizes of the kube-prometheus-like program (``params.libsonnet``); see the module docstring.
KUBE_PROMETHEUS_LIKE: Final[Mapping[str, Any]] = {
    "namespace": "monitoring",
    "commonLabels": {
        "app.kubernetes.io/part-of": "kube-prometheus",
        "app.kubernetes.io/managed-by": "jaas",
    },
    "components": 24,
    "panels": 16,
    "ruleGroups": 3,
    "rulesPerGroup": 6,
}
#: Programs whose direct evaluation takes at least this long (ms) count as non-trivial.
NON_TRIVIAL_MS: Final = 100.0
#: The overhead the evaluator path should stay under on non-trivial programs (per cent).
OVERHEAD_TARGET: Final = 10.0
#: Round trips of ``{}`` that measure the fixed cost.
FIXED_COST_ROUNDS: Final = 100
_TINY = EvaluationRequest("main.jsonnet", {"main.jsonnet": b"{}"}, label="bench/tiny")


@dataclass(frozen=True)
class BenchInput:
    """One Jsonnet program to evaluate.

    Attributes:
        name: shown in the table and matched by ``--only``
            (``builtin/<file stem>``, ``kube-prometheus-like``).
        files: ``{relative path: content}`` with ``main.jsonnet`` as the entry file.
        origin: where it comes from, for the JSON report.
    """

    name: str
    files: Mapping[str, bytes]
    origin: str

    def request(self) -> EvaluationRequest:
        """The evaluation request of this program (entry file ``main.jsonnet``)."""
        return EvaluationRequest("main.jsonnet", dict(self.files), label=f"bench/{self.name}")


@dataclass
class Cell:
    """The figures of one input on one engine (times in milliseconds, sizes in bytes).

    ``None`` means not measured (the engine failed or timed out, or there is
    nothing to compare with). ``error`` holds the first line of the failure.
    """

    input: str
    engine: str
    output_bytes: int | None = None
    frame_bytes: int | None = None
    repeats: int = 0
    shortened: bool = False
    engine_ms: float | None = None
    direct_ms: float | None = None
    start_ms: float | None = None
    cold_ms: float | None = None
    warm_ms: float | None = None
    worker_ms: float | None = None
    overhead_pct: float | None = None
    overhead_ms: float | None = None
    path_cpu_ms: float | None = None
    direct_cpu_ms: float | None = None
    cpu_overhead_pct: float | None = None
    idle_hwm_bytes: int | None = None
    hwm_bytes: int | None = None
    vs_go_engine: float | None = None
    vs_go_path: float | None = None
    error: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class FixedCost:
    """An engine's warm round trip of ``{}`` through the pool and directly (ms, medians)."""

    engine: str
    version: str
    path_ms: float
    direct_ms: float

    @property
    def cost_ms(self) -> float:
        """The fixed cost of the evaluator path: ``path_ms - direct_ms``."""
        return self.path_ms - self.direct_ms


class _TimedEngine:
    """An :class:`~jaas.evaluator.engines.Engine` that records how long each call takes."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.last_seconds = 0.0

    def version(self) -> str:
        """The wrapped engine's version."""
        return self.inner.version()

    def evaluate(self, inputs: Inputs, importer: InMemoryImporter) -> str:
        """Call the wrapped engine and keep its wall-clock seconds in ``last_seconds``."""
        started = time.perf_counter()
        try:
            return self.inner.evaluate(inputs, importer)
        finally:
            self.last_seconds = time.perf_counter() - started


# -- inputs ------------------------------------------------------------------------------


def go_jsonnet_module() -> tuple[Path | None, str]:
    """The go-jsonnet 0.22 module directory, or None and why it is missing.

    Uses ``tests.conformance.conftest.fetch_corpus`` (``go mod download`` into
    ``$JAAS_CACHE/go/mod``, offline when ``make corpus`` has run); when that
    cannot be imported (no pytest) or fails, falls back to the directory the
    same rules name.
    """
    cache = Path(os.environ.get("JAAS_CACHE") or Path.home() / ".cache" / "jaas-py")
    fallback = cache / "go" / "mod" / f"{GO_JSONNET_MODULE}@{GO_JSONNET_VERSION}"
    try:
        import pytest

        from tests.conformance.conftest import fetch_corpus
    except ImportError as err:
        reason = f"tests.conformance.conftest is not importable ({err})"
    else:
        try:
            return fetch_corpus().parent, ""
        except (pytest.fail.Exception, Exception) as err:  # pytest.fail's is a BaseException
            reason = str(err).strip()
    if fallback.is_dir():
        return fallback, ""
    return None, f"{reason}; run `make corpus`"


def builtin_inputs(module: Path) -> list[BenchInput]:
    """Every ``*.jsonnet`` under the module's ``*benchmark*`` directories, sorted by name."""
    found: list[BenchInput] = []
    for directory in sorted(module.glob("*benchmark*")):
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*.jsonnet")):
            stem = path.relative_to(directory).with_suffix("").as_posix()
            prefix = "builtin" if directory.name == "builtin-benchmarks" else directory.name
            found.append(
                BenchInput(
                    f"{prefix}/{stem}",
                    {"main.jsonnet": path.read_bytes()},
                    f"{GO_JSONNET_MODULE}@{GO_JSONNET_VERSION}/{path.relative_to(module)}",
                )
            )
    return found


def kube_prometheus_like(params: Mapping[str, Any] = KUBE_PROMETHEUS_LIKE) -> BenchInput:
    """The kube-prometheus-like program with ``params`` as its ``params.libsonnet``."""
    files = {
        path.relative_to(DATA_DIR).as_posix(): path.read_bytes()
        for path in sorted(DATA_DIR.rglob("*sonnet"))
    }
    files["params.libsonnet"] = json.dumps(dict(params), indent=2).encode()
    return BenchInput("kube-prometheus-like", files, "loadtests/data/kube_prometheus_like")


# -- measurements ------------------------------------------------------------------------


def read_hwm(pid: int) -> int | None:
    """Peak resident set (``VmHWM``) of ``pid`` in bytes; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def on_worker_thread(call: Callable[[], T]) -> T:
    """Run ``call`` on a fresh thread with the worker's stack size (as the worker does)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as err:  # a Rust panic is a BaseException
            failure.append(err)

    previous = threading.stack_size(DEFAULT_STACK_SIZE)
    try:
        thread = threading.Thread(target=target, name="bench-direct")
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def direct_run(engine: _TimedEngine, request: EvaluationRequest) -> tuple[float, float]:
    """Evaluate ``request`` once in this process, as the worker does.

    Returns:
        Seconds of the engine call and of the whole ``worker.evaluate`` call
        (engine plus manifest step).

    Raises:
        whatever ``jaas.evaluator.worker.evaluate`` raises.
    """

    def call() -> float:
        started = time.perf_counter()
        worker.evaluate(request, using=engine)
        return time.perf_counter() - started

    total = on_worker_thread(call)
    return engine.last_seconds, total


def first_line(text: str, limit: int = 160) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def ms(seconds: float) -> float:
    """Seconds as milliseconds."""
    return seconds * 1000.0


def _failure(err: ReasonError, memory_limit: int) -> str:
    """The table's one-line account of a failed or timed-out evaluation."""
    if err.reason is Reason.EVALUATION_TIMEOUT:
        return f"timeout: {first_line(err.message)} of CPU time (--timeout)"
    text = f"{err.reason.value}: {first_line(err.message)}"
    if memory_limit and "(SIGABRT)" in err.message:
        # go-jsonnet's runtime aborts with "fatal error: runtime: cannot allocate
        # memory", which the pool does not recognise as the memory limit.
        text += f" (perhaps at the {format_bytes(memory_limit)} --memory-limit; try 0)"
    return text


async def measure(
    bench: BenchInput,
    engine: _TimedEngine,
    *,
    repeat: int,
    timeout: float,
    cell_budget: float,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
) -> Cell:
    """Measure ``bench`` on ``engine`` in a fresh one-worker pool and directly.

    Order: pool start, the cold evaluation, one unmeasured direct call, then
    ``n`` pairs of a warm evaluation through the pool and a direct call
    (interleaved, so both see the same load on the machine; the idle worker
    uses no CPU meanwhile), then the worker's ``VmHWM``. The cold evaluation
    goes first because the pool stops an evaluation that passes ``timeout``
    CPU seconds, which an in-process call cannot do: a timeout or a failure
    there skips the rest.
    """
    cell = Cell(bench.name, engine.name)
    request = bench.request()
    pool = EvaluatorPool(
        1, timeout=timeout, memory_limit=memory_limit, flow=None, engine=engine.name
    )
    started = time.perf_counter()
    try:
        await pool.start()
    except RuntimeError as err:
        cell.error = f"the worker did not start: {first_line(str(err))}"
        return cell
    warm: list[float] = []
    in_worker: list[float] = []
    engine_seconds: list[float] = []
    direct_seconds: list[float] = []
    try:
        cell.start_ms = ms(time.perf_counter() - started)
        cell.idle_hwm_bytes = read_hwm(pool.worker_pids[0])
        started = time.perf_counter()
        try:
            result = await pool.evaluate(request)
        except ReasonError as err:
            cell.error = _failure(err, memory_limit)
            return cell
        cold = time.perf_counter() - started
        cell.cold_ms = ms(cold)
        cell.output_bytes = len(result.rendered)
        cell.frame_bytes = len(result.rendered) + sum(map(len, result.consumer_files.values()))
        del result
        # The cell costs about one cold run per warm and per direct run, plus the
        # unmeasured direct run: cut the repeats when that passes the budget.
        fitting = max(1, int((cell_budget / max(cold, 1e-9) - 2) / 2))
        cell.repeats = min(repeat, fitting)
        cell.shortened = cell.repeats < repeat
        pid = pool.worker_pids[0]
        path_cpu = direct_cpu = 0.0
        try:
            direct_run(engine, request)
            for _ in range(cell.repeats):
                own_cpu = time.process_time()
                worker_cpu = cpu_seconds(pid) or 0.0
                started = time.perf_counter()
                result = await pool.evaluate(request)
                warm.append(time.perf_counter() - started)
                path_cpu += (cpu_seconds(pid) or worker_cpu) - worker_cpu
                path_cpu += time.process_time() - own_cpu
                in_worker.append(result.evaluation_seconds)
                del result
                own_cpu = time.process_time()
                engine_time, direct_time = direct_run(engine, request)
                direct_cpu += time.process_time() - own_cpu
                engine_seconds.append(engine_time)
                direct_seconds.append(direct_time)
        except ReasonError as err:
            cell.error = f"warm run: {_failure(err, memory_limit)}"
            return cell
        except BaseException as err:  # a Rust panic is a BaseException
            if isinstance(err, KeyboardInterrupt | SystemExit):
                raise
            cell.error = f"direct call failed: {type(err).__name__}: {first_line(str(err))}"
            return cell
        cell.hwm_bytes = read_hwm(pid)
    finally:
        await pool.close()
    cell.warm_ms = ms(statistics.median(warm))
    cell.worker_ms = ms(statistics.median(in_worker))
    cell.engine_ms = ms(statistics.median(engine_seconds))
    cell.direct_ms = ms(statistics.median(direct_seconds))
    cell.overhead_ms = cell.warm_ms - cell.direct_ms
    cell.overhead_pct = 100.0 * (cell.warm_ms / cell.direct_ms - 1.0)
    cell.path_cpu_ms = ms(path_cpu / cell.repeats)
    cell.direct_cpu_ms = ms(direct_cpu / cell.repeats)
    if direct_cpu > 0:
        cell.cpu_overhead_pct = 100.0 * (path_cpu / direct_cpu - 1.0)
    cell.samples = {
        "warm_ms": [ms(s) for s in warm],
        "worker_ms": [ms(s) for s in in_worker],
        "engine_ms": [ms(s) for s in engine_seconds],
        "direct_ms": [ms(s) for s in direct_seconds],
    }
    return cell


async def fixed_cost(engine: _TimedEngine, rounds: int = FIXED_COST_ROUNDS) -> FixedCost:
    """The warm round trip of ``{}`` through a one-worker pool against the direct call.

    Interleaved as in :func:`measure`, after ten unmeasured rounds of each.
    """
    trips: list[float] = []
    direct: list[float] = []
    async with EvaluatorPool(1, timeout=10.0, flow=None, engine=engine.name) as pool:
        for run in range(10 + rounds):
            started = time.perf_counter()
            await pool.evaluate(_TINY)
            trip = time.perf_counter() - started
            _, direct_time = direct_run(engine, _TINY)
            if run >= 10:
                trips.append(trip)
                direct.append(direct_time)
    return FixedCost(
        engine.name, engine.version(), ms(statistics.median(trips)), ms(statistics.median(direct))
    )


def compare_with_reference(cells: Sequence[Cell]) -> None:
    """Fill ``vs_go_engine`` and ``vs_go_path`` from go-jsonnet's cell of the same input."""
    reference = {c.input: c for c in cells if c.engine == REFERENCE_ENGINE}
    for cell in cells:
        go = reference.get(cell.input)
        if go is None:
            continue
        if cell.engine_ms is not None and go.engine_ms:
            cell.vs_go_engine = cell.engine_ms / go.engine_ms
        if cell.warm_ms is not None and go.warm_ms:
            cell.vs_go_path = cell.warm_ms / go.warm_ms


# -- report ------------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    """Milliseconds with 2, 1 or 0 decimals by magnitude; ``-`` for None."""
    if value is None:
        return "-"
    if abs(value) < 10:
        return f"{value:.2f}"
    if abs(value) < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    """A ratio such as ``0.12`` or ``3.4``; ``-`` for None."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def fmt_mib(size: int | None) -> str:
    """Bytes as MiB with one decimal; ``-`` for None."""
    return "-" if size is None else f"{size / 2**20:.1f}"


def fmt_kib(size: int | None) -> str:
    """Bytes as KiB; ``-`` for None."""
    if size is None:
        return "-"
    return f"{size / 1024:.1f}" if size < 10 * 1024 else f"{size / 1024:.0f}"


COLUMNS: Final = (
    ("input", "<"),
    ("engine", "<"),
    ("out KiB", ">"),
    ("n", ">"),
    ("engine", ">"),
    ("+manif", ">"),
    ("cold", ">"),
    ("warm", ">"),
    ("worker", ">"),
    ("ovh %", ">"),
    ("ovh ms", ">"),
    ("cpu ovh %", ">"),
    ("HWM MiB", ">"),
    ("xgo eng", ">"),
    ("xgo path", ">"),
)


def table(cells: Sequence[Cell]) -> list[str]:
    """The figures as aligned text lines, one row per input and engine."""
    rows: list[tuple[str, ...]] = []
    for c in cells:
        if c.error and c.warm_ms is None:
            rows.append((c.input, c.engine, "FAILED" if "timeout" not in c.error else "TIMEOUT"))
            continue
        rows.append(
            (
                c.input,
                c.engine,
                fmt_kib(c.output_bytes),
                f"{c.repeats}{'*' if c.shortened else ''}",
                fmt_ms(c.engine_ms),
                fmt_ms(c.direct_ms),
                fmt_ms(c.cold_ms),
                fmt_ms(c.warm_ms),
                fmt_ms(c.worker_ms),
                "-" if c.overhead_pct is None else f"{c.overhead_pct:+.1f}",
                "-" if c.overhead_ms is None else f"{c.overhead_ms:+.2f}",
                "-"
                if c.cpu_overhead_pct is None or (c.direct_ms or 0) < NON_TRIVIAL_MS
                else f"{c.cpu_overhead_pct:+.1f}",
                fmt_mib(c.hwm_bytes),
                fmt_ratio(c.vs_go_engine),
                fmt_ratio(c.vs_go_path),
            )
        )
    headers = tuple(name for name, _ in COLUMNS)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = []
    for row in [headers, *rows]:
        parts = [
            f"{value:{COLUMNS[i][1]}{widths[i]}}" if i < len(row) else ""
            for i, value in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
        if row is headers:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def geomean(values: Sequence[float]) -> float:
    """Geometric mean of positive values."""
    return math.exp(statistics.fmean(math.log(v) for v in values))


def explain(cell: Cell, fixed: FixedCost | None) -> str:
    """Why ``cell``'s overhead passes the target, from its own figures."""
    assert cell.direct_ms is not None
    assert cell.warm_ms is not None
    assert cell.worker_ms is not None
    outside = cell.warm_ms - cell.worker_ms
    inside = cell.worker_ms - cell.direct_ms
    fixed_ms = fixed.cost_ms if fixed else 0.0
    reasons = []
    if cell.direct_ms < NON_TRIVIAL_MS:
        reasons.append(
            f"a {fmt_ms(cell.direct_ms)} ms program: the fixed round trip "
            f"({fmt_ms(fixed_ms)} ms) alone is {100 * fixed_ms / cell.direct_ms:.0f}% of it"
        )
    reasons.append(
        f"{fmt_ms(outside)} ms outside the worker (request and a "
        f"{fmt_mib(cell.frame_bytes)} MiB result frame through the socket, decoded here), "
        f"the worker's own time {inside:+.2f} ms off the direct call's"
    )
    return f"  {cell.input} on {cell.engine}: {cell.overhead_pct:+.0f}%: " + "; ".join(reasons)


def summary(
    cells: Sequence[Cell], fixed: Mapping[str, FixedCost], engines: Sequence[str]
) -> tuple[list[str], dict[str, Any]]:
    """The per-engine summary lines and the same figures as a JSON-ready mapping."""
    lines: list[str] = []
    data: dict[str, Any] = {}
    for name in engines:
        mine = [c for c in cells if c.engine == name]
        starts = [c.start_ms for c in mine if c.start_ms is not None]
        idle = [c.idle_hwm_bytes for c in mine if c.idle_hwm_bytes is not None]
        measured = [c for c in mine if c.overhead_pct is not None and c.direct_ms is not None]
        heavy = [c for c in measured if (c.direct_ms or 0) >= NON_TRIVIAL_MS]
        ratios_engine = [c.vs_go_engine for c in mine if c.vs_go_engine]
        ratios_path = [c.vs_go_path for c in mine if c.vs_go_path]
        failed = [c for c in mine if c.error]
        cost = fixed.get(name)
        figures: dict[str, Any] = {
            "version": cost.version if cost else "",
            "fixed_cost": asdict(cost) | {"cost_ms": cost.cost_ms} if cost else None,
            "start_ms_median": statistics.median(starts) if starts else None,
            "start_ms_min": min(starts) if starts else None,
            "start_ms_max": max(starts) if starts else None,
            "idle_hwm_bytes_median": statistics.median(idle) if idle else None,
            "non_trivial_inputs": [c.input for c in heavy],
            "overhead_pct_median_non_trivial": (
                statistics.median(c.overhead_pct or 0.0 for c in heavy) if heavy else None
            ),
            "cpu_overhead_pct_median_non_trivial": (
                statistics.median(
                    c.cpu_overhead_pct for c in heavy if c.cpu_overhead_pct is not None
                )
                if any(c.cpu_overhead_pct is not None for c in heavy)
                else None
            ),
            "over_target": [c.input for c in measured if (c.overhead_pct or 0) > OVERHEAD_TARGET],
            "vs_go_engine_geomean": geomean(ratios_engine) if ratios_engine else None,
            "vs_go_path_geomean": geomean(ratios_path) if ratios_path else None,
            "failed": {c.input: c.error for c in failed},
        }
        data[name] = figures
        lines.append(f"{name}: {figures['version']}")
        if cost:
            lines.append(
                f"  fixed round trip ({{}} through the pool, warm): {fmt_ms(cost.path_ms)} ms "
                f"vs {fmt_ms(cost.direct_ms)} ms direct: {fmt_ms(cost.cost_ms)} ms per evaluation"
            )
        if starts:
            lines.append(
                f"  worker process start (spawn, imports, engine, self-test): median "
                f"{fmt_ms(statistics.median(starts))} ms (min {fmt_ms(min(starts))}, "
                f"max {fmt_ms(max(starts))}) over {len(starts)} pools"
            )
        if idle:
            lines.append(f"  idle worker peak RSS: {fmt_mib(int(statistics.median(idle)))} MiB")
        if heavy:
            over = [c for c in heavy if (c.overhead_pct or 0) > OVERHEAD_TARGET]
            median = figures["overhead_pct_median_non_trivial"]
            cpu = figures["cpu_overhead_pct_median_non_trivial"]
            lines.append(
                f"  overhead on the {len(heavy)} non-trivial inputs (direct >= "
                f"{NON_TRIVIAL_MS:.0f} ms): median {median:+.1f}%"
                + ("" if cpu is None else f" (CPU time {cpu:+.1f}%)")
                + f", {len(over)} over {OVERHEAD_TARGET:.0f}%"
                + (f" ({', '.join(c.input for c in over)})" if over else "")
            )
        small_over = [
            c for c in measured if c not in heavy and (c.overhead_pct or 0) > OVERHEAD_TARGET
        ]
        if small_over:
            lines.append(
                f"  over {OVERHEAD_TARGET:.0f}% on {len(small_over)} small inputs (direct < "
                f"{NON_TRIVIAL_MS:.0f} ms; see below)"
            )
        if ratios_engine and name != REFERENCE_ENGINE:
            lines.append(
                f"  time / go-jsonnet's, geometric mean over {len(ratios_engine)} inputs: "
                f"engine {fmt_ratio(figures['vs_go_engine_geomean'])}, "
                f"path {fmt_ratio(figures['vs_go_path_geomean'])}"
            )
        for c in failed:
            lines.append(f"  {c.input}: {c.error}")
    return lines, data


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_engines",
        description="The Jsonnet engines on the same inputs, directly and through the pool.",
    )
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma-separated engines (default: {','.join(ENGINES)})",
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="warm and direct runs per cell (default: 5)"
    )
    parser.add_argument(
        "--only", default="", help="regular expression an input's name must contain (re.search)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="CPU seconds one evaluation may use in the pool before it is stopped (default: 30)",
    )
    parser.add_argument(
        "--cell-budget",
        type=float,
        default=60.0,
        help="seconds one input may take on one engine; fewer repeats beyond (default: 60)",
    )
    parser.add_argument(
        "--memory-limit",
        type=int,
        default=DEFAULT_MEMORY_LIMIT // 2**20,
        metavar="MIB",
        help="RLIMIT_AS of each worker in MiB, 0 for none (default: the operator's, "
        f"{DEFAULT_MEMORY_LIMIT // 2**20})",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.memory_limit < 0:
        parser.error("--memory-limit must not be negative")
    unknown = [e for e in args.engines.split(",") if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    return args


def progress(message: str) -> None:
    """One progress line on stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    """Measure, print the table and the summary, write ``--json``; return the exit status."""
    notes: list[str] = []
    engines: dict[str, _TimedEngine] = {}
    for name in args.engines.split(","):
        try:
            engines[name] = _TimedEngine(load_engine(name))
        except EngineUnavailable as err:
            notes.append(f"engine {name} skipped: {err}")
    module, missing = go_jsonnet_module()
    inputs: list[BenchInput] = []
    if module is None:
        notes.append(f"go-jsonnet's benchmarks skipped: {missing}")
    else:
        inputs += builtin_inputs(module)
    inputs.append(kube_prometheus_like())
    pattern = re.compile(args.only)
    inputs = [i for i in inputs if pattern.search(i.name)]
    if not inputs or not engines:
        print("nothing to run: " + "; ".join(notes or ["no input matches --only"]))
        return 2

    load_start = os.getloadavg()
    began = time.perf_counter()
    fixed: dict[str, FixedCost] = {}
    for name, engine in engines.items():
        progress(f"fixed round-trip cost on {name}")
        fixed[name] = await fixed_cost(engine)
    cells: list[Cell] = []
    for bench in inputs:
        for name, engine in engines.items():
            progress(f"{bench.name} on {name}")
            cell = await measure(
                bench,
                engine,
                repeat=args.repeat,
                timeout=args.timeout,
                cell_budget=args.cell_budget,
                memory_limit=args.memory_limit * 2**20,
            )
            cells.append(cell)
    compare_with_reference(cells)
    elapsed = time.perf_counter() - began

    load_end = os.getloadavg()
    print(
        f"Jsonnet engines, direct and through EvaluatorPool(size=1): {len(inputs)} inputs, "
        f"--repeat {args.repeat}, --timeout {args.timeout:g} s CPU, "
        f"--cell-budget {args.cell_budget:g} s, worker memory limit "
        f"{format_bytes(args.memory_limit * 2**20) if args.memory_limit else 'none'}; "
        f"{os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; load average {load_start[0]:.2f} at the start, "
        f"{load_end[0]:.2f} at the end"
    )
    print(
        "times in ms (medians): engine = engine call alone, +manif = worker.evaluate in this "
        "process; cold/warm = pool.evaluate in a fresh/warm worker, worker = time the worker "
        "reports; ovh = warm/+manif - 1; HWM = worker peak RSS; xgo = time / go-jsonnet's; "
        "n* = repeats cut to fit --cell-budget"
    )
    print()
    for line in table(cells):
        print(line)
    print()
    summary_lines, summary_data = summary(cells, fixed, list(engines))
    for line in summary_lines:
        print(line)
    over = [
        c
        for c in cells
        if c.overhead_pct is not None and c.overhead_pct > OVERHEAD_TARGET and c.direct_ms
    ]
    if over:
        print()
        print(f"overhead over {OVERHEAD_TARGET:.0f}%, from each cell's figures:")
        for cell in over:
            print(explain(cell, fixed.get(cell.engine)))
    shortened = [c for c in cells if c.shortened]
    if shortened:
        print()
        print(
            f"repeats cut to fit --cell-budget {args.cell_budget:g} s: "
            + ", ".join(f"{c.input} on {c.engine} (n={c.repeats})" for c in shortened)
        )
    for note in notes:
        print(note)
    print(f"\nmeasured in {elapsed:.0f} s")

    if args.json:
        report = {
            "command": [sys.executable, "-m", "loadtests.bench_engines", *sys.argv[1:]],
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "repeat": args.repeat,
            "timeout_cpu_seconds": args.timeout,
            "cell_budget_seconds": args.cell_budget,
            "memory_limit_bytes": args.memory_limit * 2**20,
            "elapsed_seconds": elapsed,
            "load_average_start": load_start,
            "load_average_end": load_end,
            "inputs": [{"name": i.name, "origin": i.origin} for i in inputs],
            "cells": [asdict(c) for c in cells],
            "summary": summary_data,
            "notes": notes,
        }
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m loadtests.bench_engines``."""
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
