"""Metric names in PromQL expressions, and the operator's exported names (jaas.testing.promql)."""

from __future__ import annotations

import pytest

from jaas.testing.promql import (
    PromQLSyntaxError,
    VectorSelector,
    exported_metric_names,
    metric_names,
    tokens,
    vector_selectors,
)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ("jaas_workqueue_depth > 50", {"jaas_workqueue_depth"}),
        ('foo{job="a", shard=~"s.*"}', {"foo"}),
        ("rate(foo_total[5m])", {"foo_total"}),
        # aggregation with the label list before and after the argument
        ("sum by (le, shard) (rate(x_bucket[5m]))", {"x_bucket"}),
        ("sum(rate(x_total[5m])) without (instance)", {"x_total"}),
        ("SUM BY (reason) (x)", {"x"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(jaas_reconcile_seconds_bucket[5m])))",
            {"jaas_reconcile_seconds_bucket"},
        ),
        # vector matching: on/ignoring/group_left take label lists, not metrics
        ("a == 0 and on () sum(b) > 0", {"a", "b"}),
        ("a * on (pod) group_left (node, zone) b", {"a", "b"}),
        ("a / ignoring (code) group_right b", {"a", "b"}),
        ("a > bool 1 unless b or c", {"a", "b", "c"}),
        # recording-rule names with colons
        ("job:requests:rate5m / 2", {"job:requests:rate5m"}),
        # numbers, exponents, hex and Inf/NaN are not names
        ("x > 1e3 and y < 0x1F and z != Inf and w == NaN", {"x", "y", "z", "w"}),
        ("x / 1 / 60 > .5", {"x"}),
        # offset, @ modifiers, subqueries
        ("x offset 1h30m", {"x"}),
        ("x @ start() - x @ end()", {"x"}),
        ("max_over_time(rate(x_total[5m])[1h:1m])", {"x_total"}),
        # string arguments and label values are never names
        ('label_replace(x, "dst", "$1", "src", "(up|down)")', {"x"}),
        ('count_values("version", build_info)', {"build_info"}),
        ('x{a="sum by (b) (c)"}', {"x"}),
        ("x{a='y\\'z'}", {"x"}),
        ("x{a=`raw \\ string`}", {"x"}),
        # names given as matchers or quoted UTF-8 names
        ('{__name__="via_matcher", job="a"}', {"via_matcher"}),
        ('{__name__=~"regex_.*"}', set()),
        ('{"my.dotted.metric", job="a"}', {"my.dotted.metric"}),
        # comments
        ("x # y is not selected\n + z", {"x", "z"}),
        # scalar-only expressions select nothing
        ("vector(1) + time()", set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    "expr",
    [
        "sum(x",
        "x)",
        'x{a="b"',
        "rate(x[5m)",
        "x]",
        '"unterminated',
        "x $ y",
        "x{a}",
        "x{a=b}",
        'x{"y"}',
    ],
)
def test_malformed_expressions_are_refused(expr: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        metric_names(expr)


def test_vector_selectors_keep_their_matchers_in_order() -> None:
    expr = (
        'sum(rate(a_total{status="False", reason!~"S|P",}[5m])) / sum(b)'
        ' + {__name__="c", "dotted.label"=~"x\\\\.y"}'
    )
    assert vector_selectors(expr) == [
        VectorSelector("a_total", (("status", "=", "False"), ("reason", "!~", "S|P"))),
        VectorSelector("b", ()),
        VectorSelector("c", (("__name__", "=", "c"), ("dotted.label", "=~", "x\\.y"))),
    ]


def test_durations_and_identifiers_are_told_apart() -> None:
    kinds = [(t.kind, t.text) for t in tokens("rate(m5m[5m]) offset 1h")]
    assert kinds == [
        ("ident", "rate"),
        ("punct", "("),
        ("ident", "m5m"),
        ("punct", "["),
        ("duration", "5m"),
        ("punct", "]"),
        ("punct", ")"),
        ("ident", "offset"),
        ("duration", "1h"),
    ]


def test_exported_names_follow_the_metric_types() -> None:
    names = exported_metric_names()
    # a labelled counter without children yet still exports its sample names
    assert {"jaas_shard_restarts_total", "jaas_shard_restarts_created"} <= names
    assert "jaas_shard_restarts" not in names
    # histogram samples
    assert {
        "jaas_reconcile_duration_seconds_bucket",
        "jaas_reconcile_duration_seconds_sum",
        "jaas_reconcile_duration_seconds_count",
    } <= names
    assert "jaas_reconcile_duration_seconds" not in names
    # gauges keep their name
    assert "jaas_workqueue_depth" in names
    # prometheus_client's own process collectors are not the operator's
    assert not any(name.startswith("process_") for name in names)
    assert all(name.startswith("jaas_") for name in names)
