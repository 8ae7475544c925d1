from jaas.api.conditions import find_condition, is_ready, set_condition


def test_transition_time_is_kept_while_status_stays_the_same() -> None:
    first = set_condition(
        None, type_="Ready", status=True, reason="Synced", message="a", now="2026-01-01T00:00:00Z"
    )
    second = set_condition(
        first, type_="Ready", status=True, reason="Synced", message="b", now="2026-02-01T00:00:00Z"
    )
    assert second[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert second[0]["message"] == "b"
    third = set_condition(
        second,
        type_="Ready",
        status=False,
        reason="EvaluationFailed",
        message="c",
        now="2026-03-01T00:00:00Z",
    )
    assert third[0]["lastTransitionTime"] == "2026-03-01T00:00:00Z"
    assert third[0]["status"] == "False"


def test_other_condition_types_are_preserved_in_order() -> None:
    conditions = [{"type": "Reconciling", "status": "True"}, {"type": "Ready", "status": "False"}]
    out = set_condition(
        conditions,
        type_="Ready",
        status=True,
        reason="Succeeded",
        message="",
        observed_generation=4,
    )
    assert [c["type"] for c in out] == ["Reconciling", "Ready"]
    ready = find_condition(out, "Ready")
    assert ready is not None
    assert ready["observedGeneration"] == 4


def test_is_ready_explains_why_not() -> None:
    assert is_ready({}) == (False, "it has no status conditions yet")
    assert (
        is_ready({"status": {"conditions": [{"type": "Other"}]}})[1] == "it has no Ready condition"
    )
    obj = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "GitOperationFailed", "message": "x"}
            ]
        }
    }
    assert is_ready(obj) == (False, "Ready=False/GitOperationFailed: x")
    obj["status"]["conditions"][0]["status"] = "True"
    assert is_ready(obj) == (True, "")
