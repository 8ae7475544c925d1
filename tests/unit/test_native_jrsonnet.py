"""jaas_jrsonnet, the native module in native/ (jrsonnet 0.5.0-pre98, patched), on its own.

What PyPI rjsonnet 0.5.6 lacks or gets wrong and this module must do: the
newer std functions, ``|||-``, negative slices, ``std.thisFile``, binary
``importbin``, positions in runtime errors, a clean stack overflow, deep
nesting on any thread, and the GIL released while evaluating. What upstream
jrsonnet 0.5.0-pre98 itself gets wrong (native/vendor/README.md): runtime
errors without a position, ``function(a) a`` refusing a TLA ``a``.
"""

from __future__ import annotations

import json
import math
import threading
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jaas_jrsonnet
import pytest

from jaas.evaluator.importer import ImportResolutionError, InMemoryImporter, user_facing

NATIVE = Path(__file__).resolve().parents[2] / "native"


class Files:
    """An import callback over ``{virtual path: content}`` that records its calls.

    ``rel`` is resolved against ``base`` (``"."`` is the snippet root,
    ``/snippet``); an absolute ``rel`` is taken as it is.
    """

    def __init__(self, files: Mapping[str, bytes | str]) -> None:
        self.files = {f"/snippet/{name}": content for name, content in files.items()}
        self.calls: list[tuple[str, str]] = []

    def __call__(self, base: str, rel: str) -> tuple[str, bytes | str]:
        self.calls.append((base, rel))
        if rel.startswith("/"):
            path = rel
        else:
            parts = ("/snippet" if base == "." else base).split("/")
            for part in rel.split("/"):
                if part == "..":
                    parts.pop()
                elif part not in ("", "."):
                    parts.append(part)
            path = "/".join(parts)
        if path not in self.files:
            raise ImportResolutionError(f"no file {path} (imported as {rel!r} from {base})")
        return path, self.files[path]


def evaluate(files: Mapping[str, bytes | str], entry: str = "main.jsonnet", **options: Any) -> Any:
    text = jaas_jrsonnet.evaluate_file(f"/snippet/{entry}", import_callback=Files(files), **options)
    return json.loads(text)


def snippet(code: str, **options: Any) -> Any:
    return evaluate({"main.jsonnet": code}, **options)


def error_of(files: Mapping[str, bytes | str], **options: Any) -> str:
    with pytest.raises(jaas_jrsonnet.JsonnetError) as caught:
        jaas_jrsonnet.evaluate_file(
            "/snippet/main.jsonnet", import_callback=Files(files), **options
        )
    return str(caught.value)


def test_version_names_the_pinned_jrsonnet() -> None:
    manifest = tomllib.loads((NATIVE / "Cargo.toml").read_text())
    pinned = manifest["dependencies"]["jrsonnet-evaluator"]["version"].lstrip("=")
    assert pinned == jaas_jrsonnet.JRSONNET_VERSION
    assert jaas_jrsonnet.version() == (
        f"jaas-jrsonnet {manifest['package']['version']} (jrsonnet {pinned})"
    )


def test_jsonnet_error_is_a_runtime_error() -> None:
    assert issubclass(jaas_jrsonnet.JsonnetError, RuntimeError)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("std.trim(' \\t a b \\n')", "a b"),
        ("std.log2(8)", 3),
        ("std.log10(1000)", 3),
        ("std.atan2(1, 1)", math.pi / 4),
        ("std.hypot(3, 4)", 5),
        ("std.deg2rad(180)", math.pi),
        ("std.rad2deg(std.pi / 2)", 90),
        ("std.pi", math.pi),
        ("std.flattenDeepArray([1, [2, [3, [[4]]]], []])", [1, 2, 3, 4]),
        ("[std.isNull(null), std.isNull(0), std.isNull('')]", [True, False, False]),
    ],
)
def test_std_functions_rjsonnet_lacks(expression: str, expected: Any) -> None:
    value = snippet(expression)
    if isinstance(expected, float | int) and not isinstance(expected, bool):
        assert value == pytest.approx(expected, rel=1e-12)
    else:
        assert value == expected


def test_text_block_with_chomping() -> None:
    assert snippet("|||-\n  first\n  second\n|||") == "first\nsecond"
    assert snippet("|||\n  kept\n|||") == "kept\n"


def test_negative_slices() -> None:
    assert snippet("[1, 2, 3, 4, 5][-2:]") == [4, 5]
    assert snippet("[1, 2, 3, 4, 5][:-3]") == [1, 2]
    assert snippet("'hello'[-4:-1]") == "ell"


def test_this_file_names_each_file_by_its_virtual_path() -> None:
    files = {
        "main.jsonnet": "{main: std.thisFile, lib: import 'sub/lib.libsonnet'}",
        "sub/lib.libsonnet": "std.thisFile",
    }
    assert evaluate(files) == {
        "main": "/snippet/main.jsonnet",
        "lib": "/snippet/sub/lib.libsonnet",
    }


def test_importbin_of_bytes_that_are_not_utf8() -> None:
    files: dict[str, bytes | str] = {
        "main.jsonnet": "importbin 'blob.bin'",
        "blob.bin": b"\xff\x00\xfe\x80",
    }
    assert evaluate(files) == [255, 0, 254, 128]


def test_import_and_importstr_go_through_the_callback_with_the_importing_directory() -> None:
    callback = Files(
        {
            "main.jsonnet": "{lib: import 'lib/a.libsonnet', text: importstr 'notes.txt'}",
            "lib/a.libsonnet": "{b: importstr 'b.txt', bytes: importstr 'c.txt'}",
            "lib/b.txt": "bee",
            "lib/c.txt": "caf\u00e9".encode(),
            "notes.txt": "n\u00f6tes\n",
        }
    )
    text = jaas_jrsonnet.evaluate_file("/snippet/main.jsonnet", import_callback=callback)
    assert json.loads(text) == {"lib": {"b": "bee", "bytes": "caf\u00e9"}, "text": "n\u00f6tes\n"}
    assert sorted(callback.calls) == sorted(
        [
            (".", "/snippet/main.jsonnet"),
            ("/snippet", "lib/a.libsonnet"),
            ("/snippet", "notes.txt"),
            ("/snippet/lib", "b.txt"),
            ("/snippet/lib", "c.txt"),
        ]
    )


def test_a_resolved_path_is_loaded_once() -> None:
    calls: list[str] = []

    def callback(base: str, rel: str) -> tuple[str, str]:
        calls.append(rel)
        if rel == "/snippet/main.jsonnet":
            return rel, "[import 'a.libsonnet', import './a.libsonnet', importstr 'a.libsonnet']"
        # Different content on every call: only the first one may be used.
        return "/snippet/a.libsonnet", f"{{n: {len(calls)}}}"

    text = jaas_jrsonnet.evaluate_file("/snippet/main.jsonnet", import_callback=callback)
    assert json.loads(text) == [{"n": 2}, {"n": 2}, "{n: 2}"]
    assert len(calls) == 4


def test_in_memory_importer_works_as_the_callback() -> None:
    files = {"main.jsonnet": b"(import 'x') + {v: std.extVar('v')}"}
    importer = InMemoryImporter(files, {"x": {"main.libsonnet": b"{lib: std.thisFile}"}})
    text = jaas_jrsonnet.evaluate_file(
        importer.entry_path("main.jsonnet"), import_callback=importer, ext_vars={"v": "1"}
    )
    assert json.loads(text) == {"lib": "/lib/x/main.libsonnet", "v": "1"}


def test_top_level_arguments_as_strings_and_as_code_that_imports() -> None:
    callback = Files(
        {
            "main.jsonnet": "function(name, code) {name: name, code: code}",
            "sub/lib.libsonnet": "{answer: 42}",
        }
    )
    text = jaas_jrsonnet.evaluate_file(
        "/snippet/main.jsonnet",
        import_callback=callback,
        tla_vars={"name": "x"},
        tla_codes={"code": "(import 'sub/lib.libsonnet').answer + 1"},
    )
    assert json.loads(text) == {"name": "x", "code": 43}
    # Imports inside TLA code resolve from the default base, the snippet root.
    assert (".", "sub/lib.libsonnet") in callback.calls


def test_external_variables_as_strings_and_as_code_that_imports() -> None:
    callback = Files(
        {
            "main.jsonnet": "[std.extVar('s'), std.extVar('c'), std.extVar('c')]",
            "lib.libsonnet": "{k: 'v'}",
        }
    )
    text = jaas_jrsonnet.evaluate_file(
        "/snippet/main.jsonnet",
        import_callback=callback,
        ext_vars={"s": "str"},
        ext_codes={"c": "import 'lib.libsonnet'"},
    )
    assert json.loads(text) == ["str", {"k": "v"}, {"k": "v"}]
    assert (".", "lib.libsonnet") in callback.calls


def test_runtime_error_names_file_line_and_column() -> None:
    message = error_of({"main.jsonnet": "local x={a:1};\n{b: x.missing}"})
    assert message.startswith("no such field: missing")
    assert "/snippet/main.jsonnet:2:" in message


# Each error on line 3 of main.jsonnet, between two other lines: (code, the
# message's first line, the first frame). Upstream jrsonnet 0.5.0-pre98 gave
# none of these a position; native/vendor/ patches it (go-jsonnet names them).
RUNTIME_ERRORS = {
    "no such field": (
        "local x = {a: 1};\n{\n  b: x.missing,\n}",
        "no such field: missing",
        "/snippet/main.jsonnet:3:8-14: field <missing> access",
    ),
    "no such field in super": (
        "{a: 1} + {\n  c: 2,\n  b: super.missing,\n}",
        "no such field: missing",
        "/snippet/main.jsonnet:3:12-18: super field <missing> access",
    ),
    "array index out of bounds": (
        "local a = [1, 2];\n{\n  b: a[5],\n}",
        "array out of bounds: 5 is not within [0,2)",
        "/snippet/main.jsonnet:3:8-8: element <5> access",
    ),
    "negative array index": (
        "local a = [1, 2];\n{\n  b: a[-1],\n}",
        "array out of bounds: -1 is not within [0,2)",
        "/snippet/main.jsonnet:3:8-9: element <-1> access",
    ),
    "string index out of bounds": (
        "local s = 'abc';\n{\n  b: s[9],\n}",
        "string out of bounds: 9 is not within [0,3)",
        "/snippet/main.jsonnet:3:8-8: element <9> access",
    ),
    "index of the wrong type": (
        "local o = {a: 1};\n{\n  b: o[0],\n}",
        "object index type should be string, got number",
        "/snippet/main.jsonnet:3:8-8: index",
    ),
    "binary operator on wrong types": (
        "local s = 'a';\n{\n  b: s - 1,\n}",
        "binary operation string - number is not implemented",
        "/snippet/main.jsonnet:3:6-10: binary operator -",
    ),
    "comparison of wrong types": (
        "local o = {};\n{\n  b: o < 1,\n}",
        "binary operation object < number is not implemented",
        "/snippet/main.jsonnet:3:6-10: binary operator <",
    ),
    "division by zero": (
        "local n = 1;\n{\n  b: 2 * n / 0,\n}",
        "attempted to divide by zero",
        "/snippet/main.jsonnet:3:6-14: binary operator /",
    ),
    "modulo by zero": (
        "local n = 1;\n{\n  b: n % 0,\n}",
        "attempted to divide by zero",
        "/snippet/main.jsonnet:3:6-10: binary operator %",
    ),
    "call of a non-function": (
        "local n = 1;\n{\n  b: n(2),\n}",
        "only functions can be called, got number",
        "/snippet/main.jsonnet:3:7-9: function call",
    ),
}


@pytest.mark.parametrize(
    ("code", "first_line", "frame"), RUNTIME_ERRORS.values(), ids=RUNTIME_ERRORS.keys()
)
def test_runtime_errors_name_the_failing_expression(code: str, first_line: str, frame: str) -> None:
    lines = error_of({"main.jsonnet": code}).split("\n")
    assert lines[0] == first_line
    assert lines[1] == f"    {frame}"
    # The manifester's frame for the field stays last.
    assert lines[-1] == "    field <b> evaluation"
    assert "\n    main.jsonnet:3:" in user_facing("\n".join(lines))


def test_error_in_an_operand_is_not_the_operator_s() -> None:
    code = "local f(n) = if n == 0 then error 'bottom' else 1 + f(n - 1);\n{\n  b: 1 + f(3),\n}"
    message = error_of({"main.jsonnet": code})
    assert message.startswith("runtime error: bottom\n    /snippet/main.jsonnet:1:29-33: error")
    assert "binary operator" not in message


def test_error_inside_an_operation_names_the_operator() -> None:
    code = "local o = {a: error 'in a field'};\n{\n  b: 'x' + o,\n}"
    message = error_of({"main.jsonnet": code})
    assert message.startswith("runtime error: in a field\n")
    frames = message.split("\n")[1:]
    assert frames[0].startswith("    /snippet/main.jsonnet:1:15-19: ")
    # Frames with positions are padded to the longest position.
    assert frames[2].startswith("    /snippet/main.jsonnet:3:6-12: ")
    assert frames[2].endswith(" binary operator +")


def test_runtime_error_frames_name_file_line_and_column() -> None:
    code = "local x={a:1};\nlocal f(o) = o.missing;\n{b: f(x), c: error 'c'}"
    message = error_of({"main.jsonnet": code})
    lines = message.split("\n")
    assert lines[0] == "no such field: missing"
    assert lines[1].startswith("    /snippet/main.jsonnet:2:16-22: ")
    assert lines[1].endswith(" field <missing> access")
    assert lines[2].startswith("    /snippet/main.jsonnet:3:")
    assert lines[2].endswith(" function <f> call")
    shown = user_facing(message)
    assert "\n    main.jsonnet:3:" in shown
    assert "/snippet/" not in shown


def test_error_in_an_imported_library_names_both_files() -> None:
    files = {
        "main.jsonnet": "local lib = import 'lib.libsonnet';\n{x: lib.f(1)}",
        "lib.libsonnet": "{\n  f(n):: error 'bad ' + n,\n}",
    }
    message = error_of(files)
    assert message.startswith("runtime error: bad 1")
    assert "/snippet/lib.libsonnet:2:" in message
    assert "/snippet/main.jsonnet:2:" in message


def test_syntax_and_static_errors_carry_positions() -> None:
    message = error_of({"main.jsonnet": "{\n  a: ,\n}"})
    assert message.startswith("syntax error")
    assert "/snippet/main.jsonnet:2:" in message
    message = error_of({"main.jsonnet": "local y = 1;\n\nz"})
    assert "z" in message.split("\n")[0]
    assert "/snippet/main.jsonnet:3:" in message


def test_syntax_error_position_is_printed_once() -> None:
    message = error_of({"main.jsonnet": "{\n  a: ,\n}"})
    assert message == "syntax error: unexpected ','\n    /snippet/main.jsonnet:2:6"


def test_syntax_error_in_an_imported_file_names_it_then_the_import() -> None:
    files = {
        "main.jsonnet": "local lib = import 'lib.libsonnet';\n{x: lib}",
        "lib.libsonnet": "{\n  a: ,\n}",
    }
    assert error_of(files).split("\n") == [
        "syntax error: unexpected ','",
        "    /snippet/lib.libsonnet:2:6",
        "    /snippet/main.jsonnet:1:13-18: import",
        "    field <x> evaluation",
    ]


def test_identity_function_keeps_its_parameter_name() -> None:
    # Upstream 0.5.0-pre98 replaced `function(a) a` with std.id, whose
    # parameter is `x`: the TLA `a` failed with "parameter a is not defined".
    assert snippet("function(a) a", tla_vars={"a": "value"}) == "value"
    assert snippet("function(a) a", tla_codes={"a": "{b: 1}"}) == {"b": 1}
    code = "local same = function(v) v;\n[same(1), same(v=2), std.id(3), std.id(x=4)]"
    assert snippet(code) == [1, 2, 3, 4]


def test_import_callback_exception_message_reaches_the_error() -> None:
    files = {"main.jsonnet": "local a = 1;\n{x: import 'missing.libsonnet'}"}
    message = error_of(files)
    assert "no file /snippet/missing.libsonnet (imported as 'missing.libsonnet'" in message
    assert "ImportResolutionError" in message
    assert user_facing(message).startswith("no file /snippet/missing.libsonnet")


def test_import_callback_returning_the_wrong_type_is_a_jsonnet_error() -> None:
    def callback(base: str, rel: str) -> Any:
        return 42

    with pytest.raises(jaas_jrsonnet.JsonnetError, match=r"must return \(str, bytes \| str\)"):
        jaas_jrsonnet.evaluate_file("/snippet/main.jsonnet", import_callback=callback)


def test_import_of_bytes_that_are_not_utf8_is_a_jsonnet_error() -> None:
    message = error_of({"main.jsonnet": "importstr 'blob.bin'", "blob.bin": b"\xff"})
    assert "utf-8" in message.lower()


def test_exceeding_max_stack_is_a_jsonnet_error() -> None:
    code = "local f(n) = if n == 0 then 0 else 1 + f(n - 1);\nf(1000)"
    message = error_of({"main.jsonnet": code}, max_stack=100)
    assert message.startswith("stack overflow")
    assert len(message.split("\n")) <= 202
    assert snippet(code, max_stack=2000) == 1000


def test_recursion_100000_deep_with_max_stack_raised() -> None:
    code = "local f(n) = if n == 0 then 0 else 1 + f(n - 1);\nf(100000)"
    assert snippet(code, max_stack=200_000) == 100_000


def test_deeply_nested_literal_on_a_thread_with_the_default_stack() -> None:
    depth = 3000
    code = "[" * depth + "]" * depth
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(
                jaas_jrsonnet.evaluate_file(
                    "/snippet/main.jsonnet",
                    import_callback=Files({"main.jsonnet": code}),
                    max_stack=10_000,
                )
            )
        except BaseException as err:
            errors.append(err)

    assert threading.stack_size() == 0  # the platform default (8 MiB on Linux)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not errors
    assert "".join(results[0].split()) == code


def test_the_gil_is_released_while_evaluating() -> None:
    # About a second of evaluation on the development machine.
    code = "std.foldl(function(acc, n) acc + n % 7, std.range(1, 6000000), 0)"
    done = threading.Event()
    counted = 0

    def count() -> None:
        nonlocal counted
        while not done.is_set():
            counted += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        started = time.perf_counter()
        snippet(code)
        elapsed = time.perf_counter() - started
        seen = counted
    finally:
        done.set()
        counter.join()
    # With the GIL held the counter would not run at all until the end.
    assert elapsed > 0.1
    assert seen > 10_000


def test_import_callback_runs_with_the_gil_from_the_evaluation_thread() -> None:
    seen: list[str] = []

    def callback(base: str, rel: str) -> tuple[str, str]:
        seen.append(threading.current_thread().name)
        return "/snippet/main.jsonnet", "{ok: true}"

    text = jaas_jrsonnet.evaluate_file("/snippet/main.jsonnet", import_callback=callback)
    assert json.loads(text) == {"ok": True}
    assert len(seen) == 1


def test_format_e_of_zero() -> None:
    assert snippet("'%e' % 0") == "0.000000e+00"
    assert snippet("'%e' % 12345.678") == "1.234568e+04"


def test_log2_and_log10_round_as_go_jsonnets() -> None:
    # go-jsonnet 0.22's std.jsonnet: log2(x) = std.log(x) / std.log(2), the same for 10.
    code = "[std.log2(10), std.log10(1000), std.log10(2), std.log10(0.001), std.log2(8)]"
    text = jaas_jrsonnet.evaluate_file(
        "/snippet/main.jsonnet", import_callback=Files({"main.jsonnet": code})
    )
    assert json.loads(text) == [
        3.3219280948873626,
        2.9999999999999996,
        0.30102999566398114,
        -2.9999999999999996,
        3,
    ]
