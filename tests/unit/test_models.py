import pytest

from jaas.api.models import JsonnetVariable, parse_duration, parse_snippet_spec
from jaas.api.reasons import Reason, ReasonError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1h30m", 5400), ("1.5h", 5400), ("300ms", 0.3), ("24h", 86400), ("0", 0)],
)
def test_parse_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1d", "h", "1h-5m"])
def test_reject_invalid_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_defaults_match_jaas() -> None:
    spec = parse_snippet_spec({"files": {"main.jsonnet": "{}"}})
    assert spec.entry_file == "main.jsonnet"
    assert spec.output == "rendered"
    assert spec.history == 1
    assert spec.interval is None
    assert spec.suspend is False


def test_variables_and_source_ref_are_parsed() -> None:
    spec = parse_snippet_spec(
        {
            "sourceRef": {"kind": "GitRepository", "name": "repo", "path": "/configs/"},
            "tlas": [{"name": "a", "value": "1", "code": True}],
            "externalVariables": [{"name": "b"}],
            "interval": "5m",
        }
    )
    assert spec.source_ref is not None
    assert spec.source_ref.path == "configs"
    assert spec.source_ref.api_version == "source.toolkit.fluxcd.io/v1"
    assert spec.tlas == (JsonnetVariable("a", "1", True),)
    assert spec.external_variables == (JsonnetVariable("b", "", False),)
    assert spec.interval == 300


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "exactly one of spec.files or spec.sourceRef"),
        (
            {"files": {"a": "1"}, "sourceRef": {"kind": "Bucket", "name": "b"}},
            "exactly one of spec.files or spec.sourceRef",
        ),
        ({"files": {"a": "1"}, "entryFile": "../x"}, "entryFile"),
        ({"files": {"a": "1"}, "interval": "10s"}, "between 30s and 24h"),
        ({"files": {"a": "1"}, "tlas": [{"name": "x", "code": True}]}, "non-empty when code"),
        ({"files": {"a": "1"}, "tlas": [{"name": "x"}, {"name": "x"}]}, "twice"),
        ({"sourceRef": {"kind": "HelmChart", "name": "c"}}, "not one of"),
        ({"files": {"a": "1"}, "history": 51}, "between 1 and 50"),
    ],
)
def test_invalid_specs_give_invalid_spec(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ReasonError, match=message) as info:
        parse_snippet_spec(spec)
    assert info.value.reason is Reason.INVALID_SPEC
