"""deploy/prometheus/alerts.yaml: valid for promtool, unit-tested, documented, on real metrics.

``promtool check rules`` and ``promtool test rules`` (Prometheus 3.x, built by
``make promtool``) judge the rule file and run the firing / not-firing cases of
tests/prometheus/alerts.test.yaml. The remaining checks hold every alert to
what docs/observability.md promises: a severity, a summary and description,
a runbook page that exists, and only metric names the operator exports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from jaas.api.reasons import Reason
from jaas.testing.promql import exported_metric_names, metric_names
from jaas.testing.promtool import PromtoolNotFoundError, promtool_path, run_promtool

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = REPO / "tests" / "prometheus" / "alerts.test.yaml"
RUNBOOKS = REPO / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/metio/jaas-py/blob/main/docs/runbooks/"
SEVERITIES = {"info", "warning", "critical"}
#: The per-reason runbook link: the reason label lowercased (Prometheus's ``toLower``).
REASON_TEMPLATE = "{{ $labels.reason | toLower }}"
#: Reasons the reconcile-error alert leaves out (its expr's ``reason!~``); Synced is status True.
NOT_ERRORS = {Reason.SYNCED, Reason.SUSPENDED, Reason.PENDING}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


ALERTS = alert_rules()
ALERT_IDS = [rule["alert"] for rule in ALERTS]


def test_a_missing_promtool_names_the_make_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMTOOL", raising=False)
    monkeypatch.setenv("JAAS_CACHE", str(tmp_path))
    with pytest.raises(PromtoolNotFoundError, match="make promtool"):
        promtool_path()
    (tmp_path / "promtool.env").write_text(f"PROMTOOL={tmp_path / 'gone'}\n")
    with pytest.raises(PromtoolNotFoundError, match=r"gone \(from .*promtool.env\) is missing"):
        promtool_path()


def test_promtool_accepts_the_rule_file() -> None:
    result = run_promtool(["check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool(["test", "rules", str(RULE_TESTS)], cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "FAILED" not in result.stdout + result.stderr


def test_every_alert_has_unit_tests_that_fire_it_and_that_do_not() -> None:
    """Each alert has at least one firing case and at least one empty case."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fired: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(ALERT_IDS) - fired == set()
    assert set(ALERT_IDS) - silent == set()


def test_a_broken_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The promtool run above can fail: a wrong runbook expansion is reported."""
    text = RULE_TESTS.read_text().replace(
        "docs/runbooks/rbacdenied.md", "docs/runbooks/RBACDenied.md"
    )
    broken = tmp_path / "tests" / "prometheus" / "alerts.test.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text)
    rules = tmp_path / "deploy" / "prometheus" / "alerts.yaml"
    rules.parent.mkdir(parents=True)
    rules.write_text(RULES.read_text())
    result = run_promtool(["test", "rules", str(broken)], cwd=tmp_path)
    assert result.returncode == 1
    assert "FAILED" in result.stdout + result.stderr
    assert "docs/runbooks/rbacdenied.md" in result.stdout + result.stderr


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_alert_is_named_labelled_and_annotated(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"JaaS[A-Z][A-Za-z]+", rule["alert"])
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert annotations["runbook_url"].startswith(RUNBOOK_BASE)


def runbook_pages(rule: dict[str, Any]) -> list[str]:
    """The runbook pages an alert can link to (one per failure reason when templated)."""
    page = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_BASE)
    if REASON_TEMPLATE not in page:
        return [page]
    return [page.replace(REASON_TEMPLATE, r.value.lower()) for r in Reason if r not in NOT_ERRORS]


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_runbook_pages_exist(rule: dict[str, Any]) -> None:
    pages = runbook_pages(rule)
    assert "{{" not in "".join(pages), "an unknown template in runbook_url"
    missing = [page for page in pages if not (RUNBOOKS / page).is_file()]
    assert missing == []


def test_reason_alert_leaves_out_exactly_the_non_errors() -> None:
    (rule,) = [r for r in ALERTS if REASON_TEMPLATE in r["annotations"]["runbook_url"]]
    assert 'status="False"' in rule["expr"]
    excluded = re.search(r'reason!~"([^"]*)"', rule["expr"])
    assert excluded is not None
    assert set(excluded.group(1).split("|")) == {r.value for r in NOT_ERRORS - {Reason.SYNCED}}


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_alert_uses_only_exported_metrics(rule: dict[str, Any]) -> None:
    used = metric_names(rule["expr"])
    assert used, "an alert that selects no series"
    assert used - exported_metric_names() == set()
