"""Times one program through jaas_jrsonnet and through rjsonnet (figures only).

Run from the repository root: ``.venv/bin/python tools/native/bench.py``.
Each program is evaluated REPEAT times per engine, alternating engines; the
best and the median wall-clock times are printed. rjsonnet is called as
``jaas.evaluator.worker`` calls it (``gc=False``, then ``rjsonnet.gc()``);
jaas_jrsonnet's figure includes its thread start and its cycle collection.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from collections.abc import Callable

import jaas_jrsonnet
import rjsonnet

REPEAT = 5
# rjsonnet's stub lacks the ``gc`` keyword and ``rjsonnet.gc()`` (both exist in 0.5.6).
_rjsonnet_evaluate_file: Callable[..., str] = rjsonnet.evaluate_file
_rjsonnet_gc: Callable[[], None] = rjsonnet.gc  # type: ignore[attr-defined]
ENTRY = "/snippet/main.jsonnet"

PROGRAMS = {
    "foldl": "std.foldl(function(acc, n) acc + n % 7, std.range(1, 1000000), 0)",
    "objects": """
local item(i) = {
  apiVersion: 'v1', kind: 'ConfigMap',
  metadata: { name: 'cm-%d' % i, labels: { app: 'bench', index: std.toString(i) } },
  data: { ['key%d' % k]: std.md5(std.toString(i * k)) for k in std.range(1, 10) },
};
local base = { spec+: { replicas: 1 } };
{
  items: [item(i) + base + { spec+: { replicas: i % 5 } } for i in std.range(1, 20000)],
  total: std.length(self.items),
}
""",
    "strings": (
        "std.join(',', [std.format('%05d-%s', [i, std.asciiUpper('x' + i)])"
        " for i in std.range(1, 200000)])"
    ),
}


def callback_for(code: str) -> Callable[[str, str], tuple[str, str]]:
    """An import callback serving ``code`` as the entry file."""

    def callback(base: str, rel: str) -> tuple[str, str]:
        return ENTRY, code

    return callback


def rjsonnet_as_the_worker_calls_it(callback: Callable[[str, str], tuple[str, str]]) -> str:
    """``rjsonnet.evaluate_file`` with ``gc=False``, then ``rjsonnet.gc()``, as the worker does."""
    try:
        text = _rjsonnet_evaluate_file(ENTRY, import_callback=callback, max_stack=500, gc=False)
    finally:
        _rjsonnet_gc()
    return text


def time_one(evaluate: Callable[[], str]) -> float:
    """Seconds one call of ``evaluate`` takes."""
    started = time.perf_counter()
    evaluate()
    return time.perf_counter() - started


def main() -> None:
    """Print the figures."""
    print(jaas_jrsonnet.version(), "vs rjsonnet 0.5.6 (jrsonnet 0.5.0-pre95)")
    for name, code in PROGRAMS.items():
        callback = callback_for(code)
        engines: dict[str, Callable[[], str]] = {
            "jaas_jrsonnet": functools.partial(
                jaas_jrsonnet.evaluate_file, ENTRY, import_callback=callback, max_stack=500
            ),
            "rjsonnet": functools.partial(rjsonnet_as_the_worker_calls_it, callback),
        }
        times: dict[str, list[float]] = {engine: [] for engine in engines}
        for _ in range(REPEAT):
            for engine, evaluate in engines.items():
                times[engine].append(time_one(evaluate))
        for engine, seconds in times.items():
            print(
                f"{name:8} {engine:14} best {min(seconds):7.3f} s"
                f"  median {statistics.median(seconds):7.3f} s"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
