"""docs/metrics.md against jaas/observability/metrics.py, and every declared metric in use.

Issue 9 (point 3) asks for one scrape with every process's metrics, the
reference's ``jaas_*`` names kept where the meaning is the same (both listed
in docs/metrics.md), and every declared metric updated somewhere. These tests
hold the catalogue to the metric objects of ``jaas.observability.metrics``:
each family is documented once with its type, label names, updating process,
histogram buckets and gauge multiprocess mode; every ``metio/jaas`` metric
has a row saying what replaces it; the page names no other metric; and each
metric object is updated (``inc``, ``set``, ``observe``, ...) by code in
``jaas/``, found with the ``ast`` module so that a metric that is only
declared, or only given a labelled child, fails.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from jaas.observability import metrics
from jaas.testing.promql import metric_names
from jaas.testing.promtool import check_expressions

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "metrics.md"
PACKAGE = REPO / "jaas"
METRICS_FILE = PACKAGE / "observability" / "metrics.py"
METRICS_MODULE = "jaas.observability.metrics"

#: The metrics of the Go reference (metio/jaas ``internal/operator/metrics.go``; the
#: reference summary, section 9.1), each of which docs/metrics.md must map.
REFERENCE_METRICS = frozenset(
    {
        "jaas_snippet_reconcile_total",
        "jaas_snippet_rendered_bytes",
        "jaas_snippet_rate_limited_total",
        "jaas_snippet_eval_unavailable_total",
        "jaas_snippet_force_drop_total",
        "jaas_eval_in_flight",
        "jaas_eval_max_concurrent",
        "jaas_eval_unavailable_total",
        "jaas_eval_outstanding_timed_out",
        "jaas_storage_sweep_failures_total",
        "jaas_webhook_cert_renewal_failures_total",
        "jaas_tenant_token_mint_failures_total",
        "jaas_crd_watch_engagement_failures_total",
    }
)
#: Methods of a prometheus_client metric (or of its labelled child) that change its
#: value, directly or as a decorator / context manager
#: (https://prometheus.github.io/client_python/instrumenting/).
UPDATE_METHODS = frozenset(
    {
        "inc",
        "dec",
        "set",
        "observe",
        "set_to_current_time",
        "time",
        "track_inprogress",
        "count_exceptions",
    }
)
#: The process that runs the code of a module (a file, or every file under a
#: directory): ``jaas.shards.worker.run_shard`` builds a shard's Kubernetes client,
#: fetcher, artifact and render caches, reconciler and controller; the leader
#: (``jaas.shards.leader``) runs the evaluator pool and the artifact server.
PROCESS_OF = {
    "jaas/shards/leader.py": "leader",
    "jaas/evaluator/pool.py": "leader",
    "jaas/storage/server.py": "leader",
    "jaas/shards/worker.py": "shard worker",
    "jaas/operator/": "shard worker",
    "jaas/sources/": "shard worker",
}
CATALOGUE_HEADER = ("metric", "type", "labels", "process", "updated when", "meaning")
REFERENCE_HEADER = ("metio/jaas metric", "jaas-py metric", "notes")
BUCKETS_HEADER = ("histogram", "buckets")
MODES_HEADER = ("gauge", "multiprocess mode", "served value")
NO_LABELS = "—"

_CODE = re.compile(r"`([^`]*)`")
_NAME = re.compile(r"\bjaas_[a-z0-9_]+\b")
_PROMQL_BLOCK = re.compile(r"^```promql\n(.*?)^```", re.DOTALL | re.MULTILINE)


# --- the declared metrics -------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One metric object of ``jaas.observability.metrics``.

    ``name`` is the name ``/metrics`` serves it under (a counter's with
    ``_total``); ``samples`` are its sample names as served in multiprocess
    mode (no ``_created``).
    """

    attribute: str
    name: str
    type: str
    labels: tuple[str, ...]
    samples: frozenset[str]
    metric: MetricWrapperBase = field(compare=False)


def _family(attribute: str, metric: MetricWrapperBase) -> Family:
    (described,) = metric.describe()
    kind = described.type
    name = described.name + "_total" if kind == "counter" else described.name
    samples = {name} if kind != "histogram" else {name + s for s in ("_bucket", "_sum", "_count")}
    return Family(
        attribute=attribute,
        name=name,
        type=kind,
        labels=tuple(metric._labelnames),
        samples=frozenset(samples),
        metric=metric,
    )


FAMILIES = sorted(
    (
        _family(attr, value)
        for attr, value in vars(metrics).items()
        if isinstance(value, MetricWrapperBase)
    ),
    key=lambda f: f.name,
)
BY_NAME = {f.name: f for f in FAMILIES}
SERVED_SAMPLES = frozenset().union(*(f.samples for f in FAMILIES))


# --- where metrics are updated (ast) --------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One update of a metric: ``attribute`` of the metrics module, at ``path:line``."""

    attribute: str
    path: str
    line: int


def _metric_references(tree: ast.Module) -> tuple[set[str], dict[str, str]]:
    """How a module refers to the metrics module and to its objects.

    Returns the expressions naming the module (``metrics``, an alias, or the
    dotted ``jaas.observability.metrics``) and the local names bound by
    ``from jaas.observability.metrics import NAME [as alias]``.
    """
    modules: set[str] = set()
    direct: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module == METRICS_MODULE.rpartition(".")[0]:
                modules.update(a.asname or a.name for a in node.names if a.name == "metrics")
            elif node.module == METRICS_MODULE:
                direct.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == METRICS_MODULE:
                    modules.add(alias.asname or METRICS_MODULE)
    return modules, direct


def update_sites(source: str, path: str) -> list[Site]:
    """Every call in ``source`` that updates a metric of ``jaas.observability.metrics``.

    An update is ``M.X.<method>(...)`` or ``M.X.labels(...).<method>(...)``,
    with ``M`` the metrics module as the source imports it (or ``X`` imported
    by name) and ``<method>`` one of :data:`UPDATE_METHODS`. A labelled child
    kept in a variable and updated later is not seen.
    """
    tree = ast.parse(source, path)
    modules, direct = _metric_references(tree)
    if not modules and not direct:
        return []

    def metric_of(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Attribute) and ast.unparse(expr.value) in modules:
            return expr.attr
        if isinstance(expr, ast.Name):
            return direct.get(expr.id)
        return None

    sites = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in UPDATE_METHODS
        ):
            continue
        target = node.func.value
        if (
            isinstance(target, ast.Call)
            and isinstance(target.func, ast.Attribute)
            and target.func.attr == "labels"
        ):
            target = target.func.value
        attribute = metric_of(target)
        if attribute is not None:
            sites.append(Site(attribute, path, node.lineno))
    return sites


def package_update_sites() -> dict[str, list[Site]]:
    """Metric attribute -> its update sites in ``jaas/``, outside metrics.py itself."""
    found: dict[str, list[Site]] = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        if file == METRICS_FILE:
            continue
        relative = file.relative_to(REPO).as_posix()
        for site in update_sites(file.read_text(), relative):
            found.setdefault(site.attribute, []).append(site)
    return found


SITES = package_update_sites()


def process_of(path: str) -> str:
    """The process that runs ``path`` (:data:`PROCESS_OF`, the file before its directory)."""
    if path in PROCESS_OF:
        return PROCESS_OF[path]
    for prefix, process in PROCESS_OF.items():
        if prefix.endswith("/") and path.startswith(prefix):
            return process
    raise AssertionError(
        f"{path} updates a metric but PROCESS_OF does not say which process runs it"
    )


# --- docs/metrics.md ------------------------------------------------------------------


@dataclass
class Table:
    """A Markdown table: the heading it is under, its header cells and its body rows."""

    section: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)


def split_row(line: str) -> tuple[str, ...]:
    r"""The cells of one table row; ``|`` inside a code span or escaped (``\|``) stays."""
    cells, cell, in_code, previous = [], "", False, ""
    for char in line.strip().removeprefix("|").removesuffix("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code and previous != "\\":
            cells.append(cell.strip())
            cell = ""
        else:
            cell += char
        previous = char
    cells.append(cell.strip())
    return tuple(cells)


def tables(text: str) -> list[Table]:
    """The tables of a Markdown text, outside fenced code blocks."""
    found: list[Table] = []
    section, current, fenced = "", None, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced, current = not fenced, None
        elif fenced:
            continue
        elif line.startswith("#"):
            section, current = line.lstrip("#").strip(), None
        elif line.startswith("|"):
            cells = split_row(line)
            if current is None:
                current = Table(section, cells)
                found.append(current)
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.rows.append(cells)
        else:
            current = None
    return found


def rows_with_header(header: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The body rows of every table of docs/metrics.md with exactly ``header``."""
    return [row for t in tables(DOC.read_text()) if t.header == header for row in t.rows]


def code_name(cell: str) -> str:
    """The one code span a cell consists of (e.g. a metric name)."""
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match is not None, f"expected a single code span, got {cell!r}"
    return match.group(1)


def code_list(cell: str) -> tuple[str, ...]:
    """A cell of comma-separated code spans, or :data:`NO_LABELS` for none."""
    if cell == NO_LABELS:
        return ()
    assert re.fullmatch(r"`[^`]+`(, `[^`]+`)*", cell), f"not a list of code spans: {cell!r}"
    return tuple(_CODE.findall(cell))


def catalogue() -> dict[str, tuple[str, ...]]:
    """Metric name -> its catalogue row; a name listed twice fails."""
    rows = rows_with_header(CATALOGUE_HEADER)
    names = [code_name(row[0]) for row in rows]
    assert len(names) == len(set(names)), (
        f"listed twice: {sorted(n for n in names if names.count(n) > 1)}"
    )
    return dict(zip(names, rows, strict=True))


def promql_examples() -> list[str]:
    """The ```` ```promql ```` blocks of docs/metrics.md."""
    return [block.strip() for block in _PROMQL_BLOCK.findall(DOC.read_text())]


# --- tests: the update finder itself --------------------------------------------------


@pytest.mark.parametrize(
    ("source", "updated"),
    [
        ("from jaas.observability import metrics\nmetrics.A.inc()\n", ["A"]),
        ("from jaas.observability import metrics\nmetrics.A.labels('x', y=1).observe(2)\n", ["A"]),
        (
            "from jaas.observability import metrics as m\nm.A.set(1)\nm.B.labels('s').dec()\n",
            ["A", "B"],
        ),
        ("import jaas.observability.metrics\njaas.observability.metrics.A.inc(3)\n", ["A"]),
        ("import jaas.observability.metrics as jm\nwith jm.A.time():\n    pass\n", ["A"]),
        ("from jaas.observability.metrics import A as X\nX.labels('a').inc()\n", ["A"]),
        # declared or mentioned, never updated
        ("from jaas.observability import metrics\nmetrics.A.labels('shard-0')\n", []),
        ("from jaas.observability import metrics\nprint(metrics.A)\n# metrics.A.inc()\n", []),
        ("from jaas.observability import metrics\ns = 'metrics.A.inc()'\n", []),
        ("from jaas.observability import metrics\nmetrics.exposition()\n", []),
        # not the metrics module
        ("from other import metrics\nmetrics.A.inc()\n", []),
        ("import metrics\nmetrics.A.inc()\n", []),
        ("counter.inc()\nA.set(1)\n", []),
    ],
)
def test_update_finder(source: str, updated: list[str]) -> None:
    """``update_sites`` counts updates through every import form, and nothing else."""
    assert [s.attribute for s in update_sites(source, "x.py")] == updated


def test_table_parser_keeps_pipes_inside_code() -> None:
    text = "# S\n\n| a | b |\n|---|---|\n| `x|y` | c \\| d |\n\nprose\n| e |\n"
    found = tables(text)
    assert [(t.section, t.header, t.rows) for t in found] == [
        ("S", ("a", "b"), [("`x|y`", "c \\| d")]),
        ("S", ("e",), []),
    ]


# --- tests: the metrics are in use ----------------------------------------------------


def test_metrics_module_declares_metrics() -> None:
    """The catalogue tests below have something to check."""
    assert len(FAMILIES) >= 20
    assert {f.type for f in FAMILIES} == {"counter", "gauge", "histogram"}


def test_every_declared_metric_is_updated() -> None:
    """Each metric object of metrics.py is incremented, set or observed somewhere in jaas/."""
    never = [f"{f.attribute} ({f.name})" for f in FAMILIES if not SITES.get(f.attribute)]
    assert never == [], (
        "declared but never updated (a labelled child kept in a variable is not seen)"
    )


def test_every_update_names_a_declared_metric() -> None:
    """No code updates ``metrics.X`` for an X that metrics.py does not declare."""
    declared = {f.attribute for f in FAMILIES}
    assert sorted(set(SITES) - declared) == []


# --- tests: the catalogue -------------------------------------------------------------


def test_catalogue_lists_exactly_the_declared_metrics() -> None:
    assert sorted(catalogue()) == sorted(BY_NAME)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_catalogue_row_has_the_type_and_labels(family: Family) -> None:
    row = catalogue().get(family.name)
    assert row is not None, f"{family.name} is not in a catalogue table of docs/metrics.md"
    assert row[1] == family.type
    assert code_list(row[2]) == family.labels
    assert all(row), "an empty cell"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_catalogue_names_the_process_that_updates_it(family: Family) -> None:
    row = catalogue().get(family.name)
    assert row is not None
    documented = set(row[3].split(", "))
    assert documented == {process_of(s.path) for s in SITES.get(family.attribute, [])}


def test_histogram_buckets_are_documented() -> None:
    documented = {
        code_name(row[0]): [float(b) for b in row[1].split(", ")]
        for row in rows_with_header(BUCKETS_HEADER)
    }
    declared = {
        f.name: [b for b in f.metric._upper_bounds if b != float("inf")]
        for f in FAMILIES
        if isinstance(f.metric, Histogram)
    }
    assert documented == declared


def test_gauge_multiprocess_modes_are_documented() -> None:
    documented = {code_name(row[0]): code_name(row[1]) for row in rows_with_header(MODES_HEADER)}
    declared = {
        f.name: f.metric._multiprocess_mode for f in FAMILIES if isinstance(f.metric, Gauge)
    }
    assert documented == declared


# --- tests: names kept from metio/jaas ------------------------------------------------


def reference_rows() -> dict[str, tuple[str, ...]]:
    rows = rows_with_header(REFERENCE_HEADER)
    names = [code_name(row[0]) for row in rows]
    assert len(names) == len(set(names))
    return dict(zip(names, rows, strict=True))


def test_every_reference_metric_has_a_row() -> None:
    assert sorted(reference_rows()) == sorted(REFERENCE_METRICS)


@pytest.mark.parametrize("reference", sorted(REFERENCE_METRICS))
def test_reference_metric_is_kept_or_replaced(reference: str) -> None:
    """A reference name jaas-py serves is kept as is; another maps to a declared metric.

    The jaas-py cell of another name is a selector of a served metric, or
    ``none`` with the reason why in the notes.
    """
    _, ours, notes = reference_rows()[reference]
    assert notes, "say what differs, or why there is no equivalent"
    if reference in BY_NAME:
        assert code_name(ours) == reference
    elif ours != "none":
        selector = code_name(ours)
        assert metric_names(selector) <= SERVED_SAMPLES
        assert metric_names(selector), f"{selector!r} selects no metric"


def test_reference_names_that_jaas_py_serves_are_all_kept() -> None:
    """Where jaas-py has a metric of a reference name, the row says it is that metric."""
    kept = {name for name, row in reference_rows().items() if row[1] == f"`{name}`"}
    assert kept == REFERENCE_METRICS & set(BY_NAME)


# --- tests: the page names no other metric --------------------------------------------


def test_doc_names_no_metric_that_is_not_served() -> None:
    """Every ``jaas_*`` name on the page is served, or a reference metric without equivalent.

    A served name is the name of a declared family or one of its sample names
    (``_bucket``, ...); the others are reference metrics the reference table
    maps to another metric or to ``none``.
    """
    served = SERVED_SAMPLES | set(BY_NAME)
    unknown = set(_NAME.findall(DOC.read_text())) - served - REFERENCE_METRICS
    assert sorted(unknown) == []


def test_promql_examples_select_served_metrics() -> None:
    examples = promql_examples()
    assert len(examples) >= 5
    for expr in examples:
        used = metric_names(expr)
        assert used, f"selects no metric: {expr}"
        assert used - SERVED_SAMPLES == set(), expr


def test_promql_examples_parse(tmp_path: Path) -> None:
    """Each example parses as a recording rule's expression (``promtool check rules``)."""
    examples = promql_examples()
    result = check_expressions(examples, tmp_path, "metrics-doc")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(examples)} rules found" in result.stdout
