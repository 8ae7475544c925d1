"""Every engine behind ``jaas.evaluator.engines`` evaluates through the worker's path alike."""

from __future__ import annotations

import importlib.util

import pytest

from jaas.api.models import JsonnetVariable
from jaas.evaluator.engines import ENGINES, Engine, EngineUnavailable, load_engine
from jaas.evaluator.request import EvaluationRequest
from jaas.evaluator.worker import evaluate

#: Engines whose module is installed here (jaas-jrsonnet needs ``make native``).
AVAILABLE = [
    name
    for name, module in (
        ("jrsonnet", "jaas_jrsonnet"),
        ("rjsonnet", "rjsonnet"),
        ("go-jsonnet", "_gojsonnet"),
    )
    if importlib.util.find_spec(module) is not None
]
#: Engines whose import callback takes bytes, so importbin of binary files works.
BYTES_ENGINES = [name for name in AVAILABLE if name != "rjsonnet"]

PROGRAM = b"""\
local lib = import 'lib.libsonnet';
local shared = import 'shared/util.libsonnet';
function(greeting, count=1) {
  message: '%s, %s' % [greeting, std.extVar('who')],
  count: count,
  labels: std.extVar('labels'),
  lib: lib,
  shared: shared.name,
  text: importstr 'notes.txt',
  floats: [0.5, 1e21, 3],
}
"""
FILES = {
    "main.jsonnet": PROGRAM,
    "lib.libsonnet": b"{ value: 42 }",
    "notes.txt": "grüße ✓\n".encode(),
}
LIBRARIES = {"shared": {"util.libsonnet": b"{ name: 'shared' }"}}
EXPECTED = """\
{
   "count": 3,
   "floats": [
      0.5,
      1000000000000000000000,
      3
   ],
   "labels": {
      "team": "a"
   },
   "lib": {
      "value": 42
   },
   "message": "Hello, world",
   "shared": "shared",
   "text": "grüße ✓\\n"
}
"""


@pytest.fixture(params=AVAILABLE)
def engine(request: pytest.FixtureRequest) -> Engine:
    return load_engine(str(request.param))


def run(engine: Engine, files: dict[str, bytes], **kwargs: object) -> bytes:
    request = EvaluationRequest("main.jsonnet", files, **kwargs)  # type: ignore[arg-type]
    return evaluate(request, engine).rendered


def test_rjsonnet_and_go_jsonnet_are_always_there() -> None:
    assert {"rjsonnet", "go-jsonnet"} <= set(AVAILABLE)


def test_every_engine_renders_the_same_bytes(engine: Engine) -> None:
    rendered = run(
        engine,
        FILES,
        libraries=LIBRARIES,
        tlas=(JsonnetVariable("greeting", "Hello"), JsonnetVariable("count", "3", code=True)),
        external_variables=(
            JsonnetVariable("who", "world"),
            JsonnetVariable("labels", "{team: 'a'}", code=True),
        ),
    )
    assert rendered.decode() == EXPECTED


def test_errors_name_files_as_the_user_does(engine: Engine) -> None:
    files = {"main.jsonnet": b"local lib = import 'lib.libsonnet';\n{a: lib.f(1)}\n"}
    files["lib.libsonnet"] = b"{\n  f(x):: error 'boom ' + x,\n}\n"
    with pytest.raises(RuntimeError) as info:
        run(engine, files)
    message = str(info.value)
    assert "boom 1" in message
    assert "lib.libsonnet:2:" in message, message


def test_a_missing_import_says_what_was_looked_for(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match=r"nope\.libsonnet"):
        run(engine, {"main.jsonnet": b"import 'nope.libsonnet'"})


@pytest.mark.parametrize("name", BYTES_ENGINES)
def test_importbin_of_a_binary_file(name: str) -> None:
    files = {"main.jsonnet": b"importbin 'blob.bin'", "blob.bin": bytes([0, 255, 128, 10])}
    assert run(load_engine(name), files) == b"[\n   0,\n   255,\n   128,\n   10\n]\n"


def test_rjsonnet_refuses_binary_imports_in_plain_words() -> None:
    files = {"main.jsonnet": b"importbin 'blob.bin'", "blob.bin": bytes([0, 255])}
    with pytest.raises(RuntimeError, match=r"blob\.bin is not valid UTF-8 text"):
        run(load_engine("rjsonnet"), files)


def test_every_engine_has_a_version(engine: Engine) -> None:
    assert engine.name in ENGINES
    assert engine.version()


def test_an_unknown_engine_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="jrsonnet, rjsonnet, go-jsonnet"):
        load_engine("v8")


def test_a_missing_module_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def missing(name: str, package: str | None = None) -> object:
        if name == "jaas_jrsonnet":
            raise ImportError(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(EngineUnavailable, match="make native"):
        load_engine("jrsonnet")
