from jaas.api.reasons import Reason, ReasonError
from jaas.api.runbooks import runbook_suffix
from jaas.operator.informer import Event, EventType
from jaas.operator.reconciler import (
    MAX_MESSAGE,
    SHORT_MESSAGE,
    failure_message,
    file_name_of,
    jitter,
    shorten_message,
    updated_history,
)
from jaas.operator.triggers import snippet_needs_reconcile


def test_history_is_newest_first_bounded_and_keeps_the_head_time_on_republish() -> None:
    history = [{"revision": "sha256:b", "time": "t2"}, {"revision": "sha256:a", "time": "t1"}]
    assert updated_history(history, "sha256:b", 3, "t9") == history
    assert updated_history(history, "sha256:c", 2, "t3") == [
        {"revision": "sha256:c", "time": "t3"},
        {"revision": "sha256:b", "time": "t2"},
    ]
    # An older revision coming back (a revert) moves to the head, once.
    assert updated_history(history, "sha256:a", 5, "t4") == [
        {"revision": "sha256:a", "time": "t4"},
        {"revision": "sha256:b", "time": "t2"},
    ]
    assert updated_history([{"bogus": 1}], "sha256:x", 1, "t") == [
        {"revision": "sha256:x", "time": "t"}
    ]


def test_store_file_names_replace_the_colon() -> None:
    assert file_name_of("sha256:ab12") == "sha256-ab12.tar.gz"


def test_interval_jitter_stays_within_five_percent() -> None:
    values = [jitter(100) for _ in range(200)]
    assert all(95 <= v <= 105 for v in values)
    assert len(set(values)) > 1


def _obj(
    generation: int, annotations: dict[str, str] | None = None, deleting: bool = False
) -> dict[str, object]:
    meta: dict[str, object] = {"generation": generation, "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def test_snippet_predicate_ignores_status_only_updates() -> None:
    key = ("ns", "s")
    assert snippet_needs_reconcile(Event(EventType.ADDED, key, None, _obj(1)))
    assert not snippet_needs_reconcile(Event(EventType.MODIFIED, key, _obj(1), _obj(1)))
    assert snippet_needs_reconcile(Event(EventType.MODIFIED, key, _obj(1), _obj(2)))
    requested = {"reconcile.fluxcd.io/requestedAt": "x"}
    assert snippet_needs_reconcile(Event(EventType.MODIFIED, key, _obj(1), _obj(1, requested)))
    assert snippet_needs_reconcile(Event(EventType.MODIFIED, key, _obj(1), _obj(1, deleting=True)))
    assert not snippet_needs_reconcile(Event(EventType.DELETED, key, _obj(1), None))


def test_long_messages_keep_head_and_tail_within_the_limit() -> None:
    assert shorten_message("short") == "short"
    long = "HEAD" + "x" * 50_000 + "TAIL"
    cut = shorten_message(long)
    assert len(cut) <= MAX_MESSAGE
    assert cut.startswith("HEAD")
    assert cut.endswith("TAIL")
    assert "characters cut" in cut


def test_a_cut_failure_message_keeps_its_tail_and_its_whole_runbook_link() -> None:
    frames = "\n    main.jsonnet:1:1-5: error statement"
    err = ReasonError(Reason.EVALUATION_FAILED, "runtime error: " + "x" * 20_000 + frames)
    message = failure_message(err)
    link = runbook_suffix(Reason.EVALUATION_FAILED)
    for limit in (MAX_MESSAGE, SHORT_MESSAGE):
        cut = shorten_message(message, limit)
        assert len(cut) <= limit
        assert cut.startswith("runtime error: xxx")
        assert cut.endswith(frames + link), cut[-200:]
