"""Parity with go-jsonnet, measured on go-jsonnet 0.22's own test corpus.

Every ``testdata/*.jsonnet`` program of ``github.com/google/go-jsonnet``
v0.22.0 (fetched by ``conftest.corpus``) is evaluated through the worker's
path, :func:`jaas.evaluator.worker.evaluate`, with each engine of
:data:`jaas.evaluator.engines.ENGINES`, in this process, and compared with its
``.golden`` file the way go-jsonnet's ``main_test.go`` does:

- the snippet's files are the whole ``testdata`` tree under ``testdata/``, the
  entry file the program (imports resolve from ``testdata/`` as in
  go-jsonnet's harness, which names the program ``testdata/<name>``);
- the ``extvar_*`` programs get the harness's ``standardExtVars`` and
  ``standardExtCode``; go-jsonnet's default ``max_stack`` (500) applies;
- a golden that parses as JSON is output: the rendered bytes must equal it
  (``*_no_newline*`` goldens lack the trailing newline jaas-py always writes);
  any other golden is an error text (``RUNTIME ERROR: ...``,
  ``testdata/x.jsonnet:1:2 ...``), and only the fact of an error is compared.

Programs that do not match are listed per engine in
``differences-<engine>.txt`` (``path<TAB>kind<TAB>cause``, kind ``output``,
``error`` or ``skip``); the test fails when a program joins or leaves its
list, or changes kind, so a fix forces the list to shrink. ``skip`` covers
what cannot run here: the harness's multi-file and native-function tests
(computed) and programs that would take the test process down with an
engine (listed by hand; those are not evaluated at all).
``JAAS_CONFORMANCE_UPDATE=1`` rewrites the lists from the run (causes of
entries that stay are kept, new ones read "not yet analysed: ...").
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from jaas.api.models import JsonnetVariable
from jaas.evaluator.engines import ENGINES, Engine, load_engine
from jaas.evaluator.request import DEFAULT_STACK_SIZE, EvaluationRequest
from jaas.evaluator.worker import evaluate
from tests.conformance.conftest import FIGURES, GO_JSONNET_VERSION

_HERE = Path(__file__).resolve().parent
UPDATE = os.environ.get("JAAS_CONFORMANCE_UPDATE") == "1"
KINDS: Final = ("output", "error", "skip")

#: Engines built outside the virtualenv's requirements: skipped, with a
#: reason, only when their module is absent. The others must load.
OPTIONAL_MODULES: Final = {"jrsonnet": "jaas_jrsonnet"}

# go-jsonnet main_test.go: metadataForTests gives these to the extvar_* programs.
_STANDARD_EXT_VARS: Final = {"stringVar": "2 + 2"}
_STANDARD_EXT_CODE: Final = {
    "codeVar": "3 + 3",
    "errorVar": "error 'xxx'",
    "staticErrorVar": ")",
    "UndeclaredX": "x",
    "selfRecursiveVar": '[42, std.extVar("selfRecursiveVar")[0] + 1]',
    "mutuallyRecursiveVar1": '[42, std.extVar("mutuallyRecursiveVar2")[0] + 1]',
    "mutuallyRecursiveVar2": '[42, std.extVar("mutuallyRecursiveVar1")[0] + 1]',
}
_EXT_VAR_PROGRAMS: Final = frozenset(
    f"extvar_{name}"
    for name in (
        "code",
        "error",
        "hermetic",
        "mutually_recursive",
        "self_recursive",
        "static_error",
        "string",
    )
)
STANDARD_EXTERNAL_VARIABLES: Final = tuple(
    [JsonnetVariable(k, v) for k, v in _STANDARD_EXT_VARS.items()]
    + [JsonnetVariable(k, v, code=True) for k, v in _STANDARD_EXT_CODE.items()]
)
#: Native functions go-jsonnet's harness registers (main_test.go); jaas-py has none.
HARNESS_NATIVES: Final = ("jsonToString", "nativeError", "nativePanic")


@dataclass(frozen=True)
class Difference:
    """One program that does not match its golden: its kind and a cause in words."""

    kind: str
    cause: str


def differences_path(engine: str) -> Path:
    return _HERE / f"differences-{engine}.txt"


def read_differences(path: Path) -> dict[str, Difference]:
    """Parse a differences list: ``path<TAB>kind<TAB>cause`` lines, ``#`` comments."""
    listed: dict[str, Difference] = {}
    if not path.exists():
        return listed
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        assert len(fields) == 3, f"{path.name}:{number}: want path<TAB>kind<TAB>cause"
        program, kind, cause = fields
        assert kind in KINDS, f"{path.name}:{number}: kind {kind!r} is not one of {KINDS}"
        assert cause.strip(), f"{path.name}:{number}: {program} has no cause"
        assert program not in listed, f"{path.name}:{number}: {program} is listed twice"
        listed[program] = Difference(kind, cause)
    return listed


_HEADER = """\
# Programs of go-jsonnet {version}'s testdata/ that {engine} does not evaluate
# as go-jsonnet's goldens say, through jaas-py's evaluator path
# (tests/conformance/test_go_jsonnet_corpus.py, docs/engines.md).
# path<TAB>kind<TAB>cause; kind: output (the output differs), error (an error
# expected but none, or none expected but one), skip (cannot be run here;
# hand-listed skips are never evaluated).
"""


def write_differences(path: Path, engine: str, entries: Mapping[str, Difference]) -> None:
    lines = [_HEADER.format(version=GO_JSONNET_VERSION, engine=engine)]
    lines += [f"{p}\t{d.kind}\t{d.cause}\n" for p, d in sorted(entries.items())]
    path.write_text("".join(lines), encoding="utf-8")


def load_files(corpus: Path) -> dict[str, bytes]:
    """Every file of the corpus as a snippet file under ``testdata/``."""
    return {
        "testdata/" + p.relative_to(corpus).as_posix(): p.read_bytes()
        for p in sorted(corpus.rglob("*"))
        if p.is_file()
    }


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def harness_skip(corpus: Path, stem: str, source: bytes) -> str | None:
    """Why go-jsonnet's harness runs ``stem`` in a way jaas-py cannot mirror, if it does."""
    if (corpus / f"{stem}.golden").is_dir():
        return "multi-file output (jsonnet -m, a golden directory): jaas-py renders one document"
    needed = [name for name in HARNESS_NATIVES if name.encode() in source]
    if needed:
        return (
            f"calls the native function {needed[0]} that go-jsonnet's test harness "
            "registers; jaas-py offers no native functions"
        )
    return None


def first_difference(expected: str, actual: str, limit: int = 80) -> str:
    """The first differing line of each, shortened, for a cause nobody analysed yet."""
    for want, got in zip(expected.splitlines(), actual.splitlines(), strict=False):
        if want != got:
            return f"want {want.strip()[:limit]!r}, got {got.strip()[:limit]!r}"
    return f"want {len(expected)} bytes, got {len(actual)} bytes"


def compare(
    corpus: Path, files: Mapping[str, bytes], engine: Engine, listed: Mapping[str, Difference]
) -> tuple[dict[str, Difference], int]:
    """Evaluate every program; return the observed differences and the programs' count."""
    observed: dict[str, Difference] = {}
    programs = sorted(corpus.glob("*.jsonnet"))
    for program in programs:
        stem = program.name.removesuffix(".jsonnet")
        path = f"testdata/{program.name}"
        hand = listed.get(path)
        if hand is not None and hand.kind == "skip":
            observed[path] = hand
            continue
        skip = harness_skip(corpus, stem, files[path])
        if skip is not None:
            observed[path] = Difference("skip", skip)
            continue
        golden = (corpus / f"{stem}.golden").read_bytes().decode("utf-8")
        request = EvaluationRequest(
            path,
            files,
            external_variables=STANDARD_EXTERNAL_VARIABLES if stem in _EXT_VAR_PROGRAMS else (),
        )
        try:
            actual: str | None = evaluate(request, using=engine).rendered.decode("utf-8")
            error = ""
        except BaseException as err:  # Rust panics are BaseExceptions
            if not isinstance(err, Exception) and type(err).__name__ != "PanicException":
                raise
            actual, error = None, f"{type(err).__name__}: {err}"
        if not is_json(golden):
            if actual is not None:
                observed[path] = Difference(
                    "error", f"not yet analysed: expected an error, got {actual[:80]!r}"
                )
            continue
        if actual is None:
            first = " ".join(error.split())[:80]
            observed[path] = Difference("error", f"not yet analysed: unexpected error {first}")
            continue
        expected = golden + "\n" if "_no_newline" in stem else golden
        if actual != expected:
            observed[path] = Difference(
                "output", f"not yet analysed: {first_difference(expected, actual)}"
            )
    return observed, len(programs)


def run_with_large_stack(work: threading.Thread) -> None:
    """Run ``work`` on a thread with the worker's evaluation stack, as the evaluator does."""
    previous_stack = threading.stack_size(DEFAULT_STACK_SIZE)
    previous_limit = sys.getrecursionlimit()
    try:
        work.start()
    finally:
        threading.stack_size(previous_stack)
    work.join()
    sys.setrecursionlimit(previous_limit)


@pytest.fixture(scope="module")
def files(corpus: Path) -> dict[str, bytes]:
    return load_files(corpus)


@pytest.mark.parametrize("name", list(ENGINES))
def test_corpus_differences_are_the_listed_ones(
    name: str, corpus: Path, files: dict[str, bytes]
) -> None:
    module = OPTIONAL_MODULES.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"the {name} engine's module {module} is not installed (make native)")
    engine = load_engine(name)
    path = differences_path(name)
    listed = read_differences(path)
    results: list[tuple[dict[str, Difference], int]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(compare(corpus, files, engine, listed))
        except BaseException as err:
            errors.append(err)

    started = time.perf_counter()
    run_with_large_stack(threading.Thread(target=work, name=f"conformance-{name}"))
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    observed, total = results[0]

    kinds = Counter(d.kind for d in observed.values())
    FIGURES.append(
        f"conformance {engine.version()} on go-jsonnet {GO_JSONNET_VERSION} testdata: "
        f"{total - len(observed)} identical, {kinds['output']} output differs, "
        f"{kinds['error']} error mismatch, {kinds['skip']} skipped, of {total} programs "
        f"({seconds:.1f} s)"
    )

    joined = sorted(
        f"{p}\t{d.kind}\t{d.cause}"
        for p, d in observed.items()
        if p not in listed or listed[p].kind != d.kind
    )
    left = sorted(
        f"{p}\t{d.kind}\t{d.cause}"
        for p, d in listed.items()
        if p not in observed or observed[p].kind != d.kind
    )
    if UPDATE:
        kept = {
            p: listed[p] if p in listed and listed[p].kind == d.kind else d
            for p, d in observed.items()
        }
        write_differences(path, name, kept)
        return
    if joined or left:
        pytest.fail(
            f"{path.name} no longer matches what {engine.version()} does "
            "(JAAS_CONFORMANCE_UPDATE=1 rewrites it; then give new entries a cause).\n"
            "Now differ (not listed, or listed with another kind):\n  "
            + "\n  ".join(joined or ["(none)"])
            + "\nListed but no longer differing that way (remove them):\n  "
            + "\n  ".join(left or ["(none)"])
        )


def test_a_missing_corpus_fails_naming_the_fetch_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the module in the cache and without network, the suite fails, never skips."""
    from tests.conformance import conftest

    monkeypatch.setenv("JAAS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("GOPROXY", "off")
    with pytest.raises(pytest.fail.Exception, match="make corpus"):
        conftest.fetch_corpus()
