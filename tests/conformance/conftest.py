"""Fixtures of the conformance suite: go-jsonnet's own test corpus, fetched as a Go module.

The corpus is ``testdata/`` of ``github.com/google/go-jsonnet`` at
:data:`GO_JSONNET_VERSION`, taken from the Go module cache under
``$JAAS_CACHE/go/mod`` (``~/.cache/jaas-py`` by default, as for
``tools/controlplane/env.sh``) with ``go mod download``. ``make test`` runs
pytest in a network namespace that holds only loopback, where ``go mod
download`` cannot reach the module proxy: the module must already be in the
cache (``make corpus`` puts it there, outside the namespace). When it is not,
the tests fail and say so; they never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: The go-jsonnet release whose corpus the engines are compared with.
GO_JSONNET_MODULE = "github.com/google/go-jsonnet"
GO_JSONNET_VERSION = "v0.22.0"
#: What puts the corpus into the module cache before ``make test`` enters the namespace.
FETCH_STEP = "make corpus"

#: Figures measured by the conformance tests (printed at the end of the session).
FIGURES: list[str] = []


def _go_env() -> dict[str, str]:
    cache = Path(os.environ.get("JAAS_CACHE") or Path.home() / ".cache" / "jaas-py")
    return {
        **os.environ,
        "GOMODCACHE": str(cache / "go" / "mod"),
        "GOCACHE": str(cache / "go" / "build"),
        "GOPATH": str(cache / "go" / "path"),
        "GOFLAGS": "-mod=mod",
        "GOTOOLCHAIN": "local",
    }


def fetch_corpus() -> Path:
    """Return go-jsonnet's ``testdata`` directory, downloading the module if it is not cached.

    Fails the test (naming :data:`FETCH_STEP`) when ``go`` is missing or the
    module can be neither found in the cache nor downloaded.
    """
    module = f"{GO_JSONNET_MODULE}@{GO_JSONNET_VERSION}"
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            f"the conformance corpus ({module}) is fetched with `go mod download`, "
            f"but there is no `go` on PATH (`{FETCH_STEP}` needs it too)"
        )
    proc = subprocess.run(
        [go, "mod", "download", "-json", module],
        env=_go_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    info: dict[str, str] = {}
    try:
        info = json.loads(proc.stdout or "{}")
    except ValueError:
        info = {}
    directory = info.get("Dir", "")
    if proc.returncode != 0 or not directory or not (Path(directory) / "testdata").is_dir():
        detail = info.get("Error") or proc.stderr.strip() or proc.stdout.strip()
        pytest.fail(
            f"go-jsonnet's test corpus ({module}) is not in the Go module cache "
            f"({_go_env()['GOMODCACHE']}) and `go mod download` could not fetch it: {detail}. "
            f"`make test` runs pytest without network: run `{FETCH_STEP}` "
            f"(go mod download {module}) before it."
        )
    return Path(directory) / "testdata"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """go-jsonnet's ``testdata`` directory, in the Go module cache (read-only)."""
    return fetch_corpus()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the conformance figures (measured, not asserted beyond the difference lists)."""
    for figure in FIGURES:
        terminalreporter.write_line(figure)
