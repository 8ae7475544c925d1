"""deploy/dashboards: the Grafana dashboard, rendered by jaas-py itself, is well formed.

``jaas render deploy/dashboards/snippet.yaml`` (the manifest users apply) runs
in a subprocess with ``--source`` a directory laid out like the Git
repository, exactly as the operator would render it. The JSON must be a
Grafana dashboard model (https://grafana.com/docs/grafana/latest/dashboards/build-dashboards/view-dashboard-json-model/):
unique panel ids, panels on the 24-column grid without overlaps, a data
source variable, and queries that promtool accepts as PromQL and that select
only metrics the operator exports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jaas.testing.promql import exported_metric_names, metric_names, vector_selectors
from jaas.testing.promtool import check_expressions

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "dashboards"
SNIPPET = DASHBOARDS / "snippet.yaml"
GRID_COLUMNS = 24
PANEL_TYPES = {"row", "timeseries", "stat"}
#: Grafana's built-in interval variables, replaced as Grafana would before a query runs.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}
CUSTOM_TLAS = {
    "datasource": "mimir-prod",
    "title": "Ops: jaas-py",
    "selector": 'cluster="prod",job=~"jaas.*"',
}


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Git repository's artifact as the snippet reads it: deploy/dashboards only."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(DASHBOARDS, root / "deploy" / "dashboards")
    return root


def jaas_render(manifest: Path, source: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jaas", "render", str(manifest), "--source", str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def with_tlas(tmp: Path, tlas: dict[str, str]) -> Path:
    """A copy of snippet.yaml whose JsonnetSnippet has ``tlas``."""
    docs = list(yaml.safe_load_all(SNIPPET.read_text()))
    for doc in docs:
        if doc["kind"] == "JsonnetSnippet":
            doc["spec"]["tlas"] = [{"name": k, "value": v} for k, v in tlas.items()]
    path = tmp / "snippet.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


@pytest.fixture(scope="module")
def dashboard(source_dir: Path) -> dict[str, Any]:
    result = jaas_render(SNIPPET, source_dir)
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = json.loads(result.stdout)
    return rendered


@pytest.fixture(scope="module")
def custom(source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = jaas_render(with_tlas(tmp_path_factory.mktemp("custom"), CUSTOM_TLAS), source_dir)
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = json.loads(result.stdout)
    return rendered


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in dashboard["panels"] if p["type"] != "row")


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in query_panels(dashboard) for t in p["targets"]]


def as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_dashboard_model(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "jaas-py"
    assert dashboard["uid"]
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["panels"]
    assert {p["type"] for p in dashboard["panels"]} <= PANEL_TYPES
    ids = [p["id"] for p in dashboard["panels"]]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))


def test_datasource_variable_and_references(dashboard: dict[str, Any]) -> None:
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "datasource"
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"
    assert variable["current"]["value"] == "prometheus"
    ref = {"type": "prometheus", "uid": "${datasource}"}
    for panel in query_panels(dashboard):
        assert panel["datasource"] == ref, panel["title"]
        assert all(t["datasource"] == ref for t in panel["targets"]), panel["title"]


def test_panels_tile_the_grid_without_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert set(pos) == {"x", "y", "w", "h"}
        assert all(isinstance(v, int) for v in pos.values())
        assert pos["x"] >= 0
        assert pos["y"] >= 0
        assert pos["w"] >= 1
        assert pos["h"] >= 1
        assert pos["x"] + pos["w"] <= GRID_COLUMNS, panel["title"]
        if panel["type"] == "row":
            assert (pos["x"], pos["w"], pos["h"]) == (0, GRID_COLUMNS, 1)
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken.get((x, y))}"
                taken[(x, y)] = panel["title"]


def test_every_panel_queries(dashboard: dict[str, Any]) -> None:
    for panel in query_panels(dashboard):
        assert panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert all(t["expr"].strip() for t in targets), panel["title"]
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_the_sections_the_docs_name_are_there(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Reconciles", "Evaluation", "Caches", "Shards", "Sources and API"]


def test_every_expr_is_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each query parses as the expression of a recording rule (``promtool check rules``)."""
    queries = [as_promql(e) for e in exprs(dashboard)]
    assert not [q for q in queries if "$" in q], "a Grafana variable the test does not know"
    result = check_expressions(queries, tmp_path, "dashboard")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_promtool_refuses_a_broken_expr(tmp_path: Path) -> None:
    """The check above can fail: an unclosed call is a parse error."""
    result = check_expressions(["sum(rate(x[5m])"], tmp_path, "broken")
    assert result.returncode == 1
    assert "parse error" in result.stdout + result.stderr


def test_every_expr_selects_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_metric_names()
    for expr in exprs(dashboard):
        used = metric_names(as_promql(expr))
        assert used, expr
        assert used - exported == set(), expr


def test_top_level_arguments(custom: dict[str, Any], dashboard: dict[str, Any]) -> None:
    assert custom["title"] == CUSTOM_TLAS["title"]
    (variable,) = custom["templating"]["list"]
    assert variable["current"]["value"] == CUSTOM_TLAS["datasource"]
    # the same queries, each series selector narrowed by the selector's matchers
    assert len(exprs(custom)) == len(exprs(dashboard))
    for expr in exprs(custom):
        for selector in vector_selectors(as_promql(expr)):
            assert ("cluster", "=", "prod") in selector.matchers, expr
            assert ("job", "=~", "jaas.*") in selector.matchers, expr
    for expr in exprs(dashboard):
        for selector in vector_selectors(as_promql(expr)):
            assert not {m[0] for m in selector.matchers} & {"cluster", "job"}, expr
