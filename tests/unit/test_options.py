import dataclasses

import pytest

from jaas.cli import build_parser
from jaas.options import OperatorOptions, parse_ext_vars, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [("2Gi", 2 * 1024**3), ("512Mi", 512 * 1024**2), ("1G", 10**9), ("1048576", 1048576)],
)
def test_parse_quantity(text: str, value: int) -> None:
    assert parse_quantity(text) == value


def test_ext_var_flags_win_over_environment() -> None:
    env = {"JAAS_EXT_VAR_cluster": "env", "JAAS_EXT_VAR_region": "eu", "OTHER": "x"}
    assert parse_ext_vars(["cluster=flag", "empty="], env) == {
        "cluster": "flag",
        "region": "eu",
        "empty": "",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_ext_vars(["novalue"], {})


def test_operator_flags_parse_durations_and_quantities() -> None:
    args = build_parser().parse_args(
        [
            "operator",
            "--storage-path",
            "/tmp/a",
            "--storage-base-url",
            "http://x",
            "--evaluation-timeout",
            "1m30s",
            "--evaluation-memory-limit",
            "1Gi",
            "--no-cross-namespace-refs",
            "false",
        ]
    )
    assert args.evaluation_timeout == 90
    assert args.evaluation_memory_limit == 1024**3
    assert args.no_cross_namespace_refs is False


def test_options_round_trip_through_json() -> None:
    options = OperatorOptions(storage_path="/s", storage_base_url="http://b", ext_vars={"a": "b"})
    assert OperatorOptions.from_json(options.to_json()) == options


def test_every_operator_option_has_a_flag() -> None:
    args = build_parser().parse_args(
        ["operator", "--storage-path", "/s", "--storage-base-url", "http://b"]
    )
    names = {f.name for f in dataclasses.fields(OperatorOptions)} - {"ext_vars"}
    assert names <= set(vars(args)), names - set(vars(args))


def test_every_flag_default_is_the_options_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAAS_WATCH_NAMESPACES", raising=False)
    args = build_parser().parse_args(
        ["operator", "--storage-path", "/s", "--storage-base-url", "http://b"]
    )
    defaults = OperatorOptions(storage_path="/s", storage_base_url="http://b")
    for f in dataclasses.fields(OperatorOptions):
        if f.name == "ext_vars":
            continue
        assert getattr(args, f.name) == getattr(defaults, f.name), f.name


def test_watch_namespaces_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAAS_WATCH_NAMESPACES", "a, b,")
    args = build_parser().parse_args(
        ["operator", "--storage-path", "/s", "--storage-base-url", "x"]
    )
    assert args.watch_namespaces == ["a", "b"]
    args = build_parser().parse_args(
        ["operator", "--storage-path", "/s", "--storage-base-url", "x", "--watch-namespaces", "c"]
    )
    assert args.watch_namespaces == ["c"]


@pytest.mark.parametrize(
    "flags",
    [["--rerender-rate", "60/day"], ["--rerender-burst", "0"], ["--max-artifact-bytes", "x"]],
)
def test_bad_operator_flags_exit_2(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(
            ["operator", "--storage-path", "/s", "--storage-base-url", "x", *flags]
        )
    assert info.value.code == 2
