"""Locate and run promtool, Prometheus's rule checker and rule unit-test runner.

The binary comes from ``tools/promtool/build.sh`` (``make promtool``), found
through the environment variable ``PROMTOOL`` or the line of the same name in
``$JAAS_CACHE/promtool.env`` (``~/.cache/jaas-py/promtool.env``) that the
build writes. The commands used here are documented at
https://prometheus.io/docs/prometheus/latest/command-line/promtool/ and
https://prometheus.io/docs/prometheus/latest/configuration/unit_testing_rules/.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml

#: The variable (in the environment or in :func:`env_file`) naming the promtool binary.
ENV = "PROMTOOL"
#: What to run when promtool is missing.
HINT = "run `make promtool` (tools/promtool/build.sh) to build it"


class PromtoolNotFoundError(FileNotFoundError):
    """promtool is not built, or its recorded path does not hold an executable."""


def env_file() -> Path:
    """Return the file ``tools/promtool/build.sh`` writes (``$JAAS_CACHE/promtool.env``)."""
    cache = os.environ.get("JAAS_CACHE") or str(Path.home() / ".cache" / "jaas-py")
    return Path(cache) / "promtool.env"


def promtool_path() -> Path:
    """Return the path of the promtool executable.

    ``$PROMTOOL`` in the environment wins over the ``PROMTOOL=`` line of
    :func:`env_file`.

    Raises:
        PromtoolNotFoundError: neither names a path, or the path is not an
            executable file; the message says to run ``make promtool``.
    """
    value = os.environ.get(ENV, "")
    origin = f"${ENV}"
    path = env_file()
    if not value and path.is_file():
        for line in path.read_text().splitlines():
            key, sep, rest = line.partition("=")
            if sep and key.strip() == ENV:
                value = rest.strip()
                origin = str(path)
    if not value:
        raise PromtoolNotFoundError(
            f"promtool is not built: {ENV} is set neither in the environment nor in {path}; {HINT}"
        )
    exe = Path(value)
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise PromtoolNotFoundError(f"{exe} (from {origin}) is missing or not executable; {HINT}")
    return exe


def run_promtool(
    args: Sequence[str], *, cwd: Path | None = None, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS`` and return its exit code and text output; never raises on failure.

    Args:
        args: the promtool arguments, e.g. ``["check", "rules", "alerts.yaml"]``.
        cwd: working directory (``promtool test rules`` resolves ``rule_files``
            relative to the test file, not to it).
        timeout: seconds before the run is abandoned (:class:`subprocess.TimeoutExpired`).

    Raises:
        PromtoolNotFoundError: from :func:`promtool_path`.
    """
    return subprocess.run(
        [str(promtool_path()), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def check_expressions(
    expressions: Sequence[str], directory: Path, name: str
) -> subprocess.CompletedProcess[str]:
    """Parse PromQL ``expressions`` with ``promtool check rules``; return its result.

    Each expression becomes a recording rule ``jaas:<name>:<index>`` in a rule
    file ``<directory>/<name>-rules.yaml``: promtool has no command that
    parses a bare expression, but it parses every rule's ``expr``. Exit code
    0 and ``SUCCESS: <n> rules found`` mean every expression parsed.

    Raises:
        PromtoolNotFoundError: from :func:`promtool_path`.
    """
    rules = directory / f"{name}-rules.yaml"
    group = {
        "name": name,
        "rules": [
            {"record": f"jaas:{name}:{i}", "expr": expr} for i, expr in enumerate(expressions)
        ],
    }
    rules.write_text(yaml.safe_dump({"groups": [group]}))
    return run_promtool(["check", "rules", str(rules)])
