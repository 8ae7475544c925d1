"""Differential tests: rjsonnet + our manifester against go-jsonnet 0.22 (the oracle)."""

from __future__ import annotations

import random
import struct
import sys

import _gojsonnet
import pytest
import rjsonnet

from jaas.evaluator.manifest import OutputError, manifest_json, parse_output

# Jsonnet programs whose value both engines compute identically: the rendered
# bytes must then be identical too.
PROGRAMS: dict[str, str] = {
    "empty_object": "{}",
    "empty_array": "[]",
    "scalars_in_object": "{a: 1, b: 'x', c: null, d: true, e: false}",
    "nested_arrays": "[[1, [2, [3, []]]], [], [[]]]",
    "nested_empties": "{a: {}, b: [], c: [{}], d: {e: [[]], f: [{}, []]}}",
    # U+FF01 sorts before U+1F600 by UTF-8 bytes (Go) but after it in UTF-16.
    "key_order_utf8": (
        "{b: 1, a: 2, B: 3, 'é': 4, z: 5, '😀': 6, '\\uff01': 7, 'ÿa': 8, '': 9,"
        " 'a b': 10, _: 11, '0': 12}"
    ),
    "unicode_strings": (
        "['😀𝄞', 'e\\u0301', 'שלום', '日本語', '\\ufeff', '\\u2028\\u2029',"
        " '\\u00a0\\u00ff\\u0100', '\\udbff\\udfff']"
    ),
    "control_chars": "std.join('', [std.char(i) for i in std.range(0, 31)])",
    "c1_controls": "std.join('', [std.char(i) for i in std.range(127, 160)])",
    "controls_in_keys": (
        "{['k' + std.char(i)]: i for i in std.range(0, 40)}"
        " + {['c' + std.char(i)]: i for i in std.range(120, 165)}"
    ),
    "quotes_backslashes": (
        "['\"', '\\\\', '/', '\\b\\f\\n\\r\\t', \"it's\", '<script>&amp;</script>', '\\\\u0041']"
    ),
    "integers": "[0, 1, -1, 42, 1000000, -987654321, 4294967296]",
    "negative_zero": "[-0, -0.0, 0 * -1, {z: -0}]",
    "floats": "[0.1, 0.5, 1.5, 2.25, 1 / 3, -2 / 3, 3.14159, 100.25, 123.456e5, 0.1 + 0.2]",
    "small_floats": "[1e-7, 1e-5, 0.0001, 0.00001234, 1.5e-10, -1e-7]",
    "large_numbers": (
        "[1e20, 1e21, 1e22, 1e23, 1e300, -1e300, 1.7976931348623157e308,"
        " 123456789012345678901234567890]"
    ),
    "subnormals": "[5e-324, 2.2250738585072014e-308, 1e-320]",
    "two_pow_53": (
        "[std.pow(2, 53) - 1, std.pow(2, 53), std.pow(2, 53) + 1, 9007199254740993,"
        " -9007199254740993, 4503599627370495.5]"
    ),
    "deep_object_nesting": (
        "std.foldl(function(acc, i) {['k%d' % i]: acc, n: i, l: [i, [i]]}, std.range(1, 60), {})"
    ),
    "deep_array_nesting": "std.foldl(function(acc, i) [i, acc], std.range(1, 120), [])",
    "manifest_json_in_string": (
        "{s: std.manifestJson({a: [1, 0.5, 'x'], b: {c: null}, d: 'é\\n', f: 1 / 3})}"
    ),
    "manifest_json_ex_in_string": "std.manifestJsonEx({a: [1, 2, {}], b: 'x', c: [0.99]}, '  ')",
    "manifest_yaml_in_string": "std.manifestYamlDoc({a: [1, 2], b: 'x', c: {d: null}, e: 0.1})",
    "top_level_string": "'hello\\nworld'",
    "top_level_number": "42",
    "top_level_float": "0.1",
    "top_level_true": "true",
    "top_level_null": "null",
    "top_level_mixed_array": "[1, 'a', null, true, false, {x: []}, [[]]]",
    "hidden_fields": "{a: 1, b:: 2, c::: 3, d: self.b}",
    "object_inheritance": "local base = {a: 1, n: {x: 1}}; base + {b: super.a + 1, n+: {y: 2}}",
    "comprehension_keys": "{['k%03d' % i]: i * 0.1 for i in std.range(0, 50)}",
    "large_array": "std.range(1, 500)",
    "text_block": '{t: |||\n  line one\n    indented "quoted"\n  last\n|||}',
    "string_functions": (
        "{md5: std.md5('x'), b64: std.base64('hello'), up: std.asciiUpper('abc'),"
        " fmt: '%05d|%-4s|%x|%.3f' % [42, 'ab', 255, 0.99], split: std.split('a,b,,c', ',')}"
    ),
    "long_string": "std.join('', std.repeat(['abc😀\\u0007'], 3000))",
    "integer_math": (
        "[std.floor(2.5), std.ceil(-2.5), 7 % 3, -7 % 3, 1 << 10, 255 & 15, std.abs(-3),"
        " std.max(1, 2), 10 / 4]"
    ),
    "math_functions": "[std.sqrt(2), std.exp(1), std.log(10), std.sin(1), std.cos(1), std.atan(1)]",
    "parsed_json_numbers": "std.parseJson('[0.1, 1e300, -0, 12345678901234567890, 5e-324]')",
    "kubernetes_like": (
        "{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'x', labels:"
        " {'app.kubernetes.io/name': 'x'}}, data: {'config.json':"
        " std.manifestJsonEx({replicas: 3, ratio: 0.75}, '  ')}}"
    ),
}


def rendered_by_rjsonnet(source: str) -> str:
    return manifest_json(parse_output(rjsonnet.evaluate_snippet("main.jsonnet", source)))


def rendered_by_go(source: str) -> str:
    text: str = _gojsonnet.evaluate_snippet("main.jsonnet", source)
    return text


@pytest.mark.parametrize("source", PROGRAMS.values(), ids=PROGRAMS.keys())
def test_rendering_matches_go_jsonnet_byte_for_byte(source: str) -> None:
    assert rendered_by_rjsonnet(source) == rendered_by_go(source)


def test_random_doubles_match_go_jsonnet() -> None:
    rng = random.Random(20240601)
    numbers: list[float] = []
    while len(numbers) < 1500:
        (value,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if value == value and abs(value) != float("inf"):
            numbers.append(value)
    numbers += [rng.uniform(-1e6, 1e6) for _ in range(500)]
    source = "[" + ", ".join(repr(n) for n in numbers) + "]"
    assert rendered_by_rjsonnet(source) == rendered_by_go(source)


# Where the ENGINES compute different values, the rendered bytes differ too; each
# case names the difference and pins both engines' actual output.


@pytest.mark.parametrize(
    "source",
    ["std.toString(0.99)", "'' + 0.99", "'%s' % 0.99"],
    ids=["std.toString", "string_concatenation", "percent_s"],
)
def test_engines_differ_float_to_string_shortest_vs_17_digits(source: str) -> None:
    # jrsonnet converts a number to a string with the shortest round-trip
    # digits; go-jsonnet (and C++ jsonnet) with %.17g.
    assert rendered_by_rjsonnet(source) == '"0.99"\n'
    assert rendered_by_go(source) == '"0.98999999999999999"\n'


def test_engines_differ_float_to_string_small_numbers() -> None:
    # Shortest digits are also printed without an exponent by jrsonnet.
    assert rendered_by_rjsonnet("std.toString(1e-7)") == '"0.0000001"\n'
    assert rendered_by_go("std.toString(1e-7)") == '"9.9999999999999995e-08"\n'


def test_engines_differ_std_tan_last_digit() -> None:
    # Rust's libm and Go's math package round tan(1) to neighbouring doubles.
    assert rendered_by_rjsonnet("std.tan(1)") == "1.5574077246549023\n"
    assert rendered_by_go("std.tan(1)") == "1.5574077246549021\n"


def test_engines_differ_overflow_is_an_error_only_in_go() -> None:
    # jrsonnet yields inf, which parse_output refuses; go-jsonnet raises "Overflow".
    with pytest.raises(OutputError, match="inf"):
        parse_output(rjsonnet.evaluate_snippet("main.jsonnet", "std.exp(1000)"))
    with pytest.raises(RuntimeError, match="Overflow"):
        rendered_by_go("std.exp(1000)")


def test_go_format_details_are_pinned() -> None:
    value = {"b": [], "a": {}, "c": [1.0, -0.0, 0.1, 1e21, "\x7f/é"]}
    assert manifest_json(value) == (
        "{\n"
        '   "a": { },\n'
        '   "b": [ ],\n'
        '   "c": [\n'
        "      1,\n"
        "      -0,\n"
        "      0.10000000000000001,\n"
        "      1000000000000000000000,\n"
        '      "\\u007f/é"\n'
        "   ]\n"
        "}\n"
    )


@pytest.mark.parametrize(
    "text",
    ["NaN", "[Infinity]", '{"a": -Infinity}', "inf", "[-inf]", '{"a": NaN}', "nan"],
)
def test_parse_output_rejects_non_finite_numbers(text: str) -> None:
    with pytest.raises(OutputError, match="not valid JSON"):
        parse_output(text)


@pytest.mark.parametrize("text", ["", "{", "[1,]", "{'a': 1}", "[1] 2", '"\x01"', "01"])
def test_parse_output_rejects_invalid_json(text: str) -> None:
    with pytest.raises(OutputError, match="invalid JSON"):
        parse_output(text)


def test_parse_output_keeps_every_number_a_float() -> None:
    value = parse_output('[1, -0, 100000000000000000000, 2.5, {"n": 7}]')
    assert isinstance(value, list)
    assert [type(v) for v in value[:4]] == [float, float, float, float]
    assert str(value[1]) == "-0.0"
    assert value[2] == 1e20
    assert value[4] == {"n": 7.0}
    assert type(value[4]["n"]) is float


@pytest.mark.parametrize("text", ["[1e400]", "-1e309", "1" + "0" * 400])
def test_parse_output_rejects_numbers_beyond_a_double(text: str) -> None:
    with pytest.raises(OutputError, match="beyond a double"):
        parse_output(text)


def test_parse_output_of_rjsonnet_big_integer_text() -> None:
    # rjsonnet prints 1e300 as 301 digits; it must come back as exactly 1e300.
    text = rjsonnet.evaluate_snippet("main.jsonnet", "[1e300, 5e-324]")
    assert parse_output(text) == [1e300, 5e-324]


def test_manifest_json_accepts_ints_and_tuples_as_jsonnet_would() -> None:
    assert manifest_json((2**53 + 1, 3)) == manifest_json([float(2**53), 3.0])


def test_manifest_json_rejects_non_json_values() -> None:
    with pytest.raises(TypeError):
        manifest_json({"a": {1, 2}})
    with pytest.raises(OutputError):
        manifest_json([float("nan")])
    with pytest.raises(OutputError):
        manifest_json({"a": float("-inf")})


def nested_arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("max_stack", [100, 500])
def test_depth_limit_is_go_jsonnets(max_stack: int) -> None:
    # go-jsonnet renders `max_stack` nested arrays (the innermost empty) and
    # fails on one more; a scalar may sit inside max_stack - 1 containers.
    accepted = parse_output(rjsonnet.evaluate_snippet("main.jsonnet", nested_arrays(max_stack)))
    assert manifest_json(accepted, max_depth=max_stack) == _gojsonnet.evaluate_snippet(
        "main.jsonnet", nested_arrays(max_stack), max_stack=max_stack
    )
    too_deep = nested_arrays(max_stack + 1)
    with pytest.raises(RuntimeError, match="max stack frames exceeded"):
        _gojsonnet.evaluate_snippet("main.jsonnet", too_deep, max_stack=max_stack)
    value = parse_output(rjsonnet.evaluate_snippet("main.jsonnet", too_deep))
    with pytest.raises(OutputError, match="max stack frames exceeded"):
        manifest_json(value, max_depth=max_stack)
    scalar = "{a:" * (max_stack - 1) + "1" + "}" * (max_stack - 1)
    value = parse_output(rjsonnet.evaluate_snippet("main.jsonnet", scalar))
    assert manifest_json(value, max_depth=max_stack) == _gojsonnet.evaluate_snippet(
        "main.jsonnet", scalar, max_stack=max_stack
    )
    with pytest.raises(OutputError):
        manifest_json([value], max_depth=max_stack)


# Deep nesting: the manifester writes the first levels recursively and deeper
# ones with an explicit stack, so no depth needs Python's recursion limit raised.


def nested_value(depth: int, innermost: object) -> object:
    """``innermost`` inside ``depth`` arrays, built without recursion."""
    value = innermost
    for _ in range(depth):
        value = [value]
    return value


def mixed_value(depth: int) -> tuple[object, str]:
    """Objects and arrays alternating ``depth`` levels deep, scalars and empties on each level.

    Returns the value and its Jsonnet source, both built without recursion.
    """
    value: object = {"leaf": "end", "n": 0.5}
    prefix: list[str] = []
    suffix: list[str] = []
    for level in range(depth - 1):
        if level % 2:
            value = [level * 1.0, value, "s\x85", [], {}, None, True]
            prefix.append(f"[{level}, ")
            suffix.append(', "s\\u0085", [], {}, null, true]')
        else:
            value = {"z": value, "a": level * 1.0, "e": {}, "l": [], "t": False, "\x7f": "x"}
            prefix.append(f'{{a: {level}, e: {{}}, l: [], t: false, "\\u007f": "x", z: ')
            suffix.append("}")
    source = "".join(reversed(prefix)) + '{leaf: "end", n: 0.5}' + "".join(suffix)
    return value, source


def test_deep_output_matches_go_jsonnet_within_the_default_recursion_limit() -> None:
    depth = 1500
    assert sys.getrecursionlimit() < depth  # the walk does not rely on a raised limit
    value, source = mixed_value(depth)
    expected = _gojsonnet.evaluate_snippet("main.jsonnet", source, max_stack=depth + 10)
    assert manifest_json(value) == expected
    assert manifest_json(value, max_depth=depth + 1) == expected


def test_ten_thousand_nested_arrays_manifest() -> None:
    depth = 10_000
    text = manifest_json(nested_value(depth - 1, []))
    lines = text.splitlines()
    assert len(lines) == 2 * depth - 1
    assert lines[0] == "["
    assert lines[depth - 1] == " " * 3 * (depth - 1) + "[ ]"
    assert lines[depth] == " " * 3 * (depth - 2) + "]"
    assert lines[-1] == "]"
    assert text == "".join(
        [" " * 3 * d + "[\n" for d in range(depth - 1)]
        + [" " * 3 * (depth - 1) + "[ ]\n"]
        + [" " * 3 * d + "]\n" for d in reversed(range(depth - 1))]
    )


@pytest.mark.parametrize("max_stack", [99, 100, 101, 1500])
def test_depth_limit_is_go_jsonnets_at_any_depth(max_stack: int) -> None:
    # Arrays: max_stack of them render (the innermost empty), one more fails.
    accepted = nested_value(max_stack - 1, [])
    assert manifest_json(accepted, max_depth=max_stack) == _gojsonnet.evaluate_snippet(
        "main.jsonnet", nested_arrays(max_stack), max_stack=max_stack
    )
    with pytest.raises(OutputError, match="max stack frames exceeded"):
        manifest_json(nested_value(max_stack, []), max_depth=max_stack)
    # Objects: a scalar may sit inside max_stack - 1 of them, not max_stack.
    scalar = "{a:" * (max_stack - 1) + "1" + "}" * (max_stack - 1)
    value: object = 1.0
    for _ in range(max_stack - 1):
        value = {"a": value}
    assert manifest_json(value, max_depth=max_stack) == _gojsonnet.evaluate_snippet(
        "main.jsonnet", scalar, max_stack=max_stack
    )
    with pytest.raises(OutputError, match="max stack frames exceeded"):
        manifest_json({"b": value}, max_depth=max_stack)
