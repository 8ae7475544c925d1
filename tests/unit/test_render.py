"""``jaas render``: the operator's stages, engine and packaging, run locally (jaas.render).

Renders run in real evaluator processes (``EvaluatorPool``); a few cases run
the command itself (``python -m jaas render``) to prove the entry point.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from jaas import defaults
from jaas.api.reasons import Reason, ReasonError
from jaas.api.runbooks import with_runbook
from jaas.evaluator.engines import ENGINES
from jaas.evaluator.pool import EvaluatorPool
from jaas.render import (
    Renderer,
    RenderOptions,
    SourceDirectory,
    UsageError,
    condition_of,
    load_manifest,
    render,
)
from jaas.sources.extract import extract_tarball
from jaas.storage.objects import consumer_files_for
from jaas.storage.package import package_rendered, package_sources

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

CONFIGMAP = """\
function(name='cm', replicas=1) {
  apiVersion: 'v1',
  kind: 'ConfigMap',
  metadata: { name: name, labels: { env: std.extVar('env') } },
  data: { replicas: std.toString(replicas), cluster: std.extVar('cluster') },
}
"""


def ready_condition(reason: str, message: str) -> tuple[str, str]:
    """The Ready ``(reason, message)`` the operator writes: the message ends in its runbook link."""
    return reason, with_runbook(Reason(reason), message)


def snippet(name: str = "s", namespace: str | None = "team", **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": "jaas.metio.wtf/v1",
        "kind": "JsonnetSnippet",
        "metadata": meta,
        "spec": spec,
    }


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> Path:
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content)
        else:
            target.write_bytes(content)
    return root


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[EvaluatorPool]:
    """One evaluator with the operator's defaults, as ``jaas render`` starts it."""
    async with EvaluatorPool(1) as started:
        yield started


async def failure(pool: EvaluatorPool, manifest: dict[str, Any], **kwargs: Any) -> ReasonError:
    with pytest.raises(ReasonError) as caught:
        await render(manifest, evaluator=pool, **kwargs)
    return caught.value


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """``python -m jaas render ARGS`` in the repository, environment without JAAS_EXT_VAR_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAAS_EXT_VAR_")}
    return subprocess.run(
        [PYTHON, "-m", "jaas", "render", *args],
        cwd=REPO,
        env=env,
        input=None if stdin is None else stdin.encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )


# --- inline files, TLAs, external variables ----------------------------------------------


async def test_inline_files_with_tlas_and_external_variables(pool: EvaluatorPool) -> None:
    manifest = snippet(
        files={"main.jsonnet": CONFIGMAP},
        tlas=[{"name": "name", "value": "web"}, {"name": "replicas", "value": "2", "code": True}],
        externalVariables=[{"name": "env", "value": "prod"}],
    )
    rendered = await render(
        manifest, evaluator=pool, options=RenderOptions(ext_vars={"cluster": "eu-1"})
    )
    assert json.loads(rendered.stdout) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "web", "labels": {"env": "prod"}},
        "data": {"replicas": "2", "cluster": "eu-1"},
    }
    assert rendered.stdout.endswith(b"}\n")
    assert rendered.result.objects_summary == "1 Kubernetes object"


async def test_an_external_variable_that_redefines_an_operator_one_is_a_conflict(
    pool: EvaluatorPool,
) -> None:
    manifest = snippet(
        files={"main.jsonnet": "std.extVar('cluster')"},
        externalVariables=[
            {"name": "cluster", "value": "mine"},
            {"name": "env", "value": "x"},
        ],
    )
    error = await failure(
        pool, manifest, options=RenderOptions(ext_vars={"cluster": "op", "env": "op"})
    )
    assert condition_of(error) == ready_condition(
        "ExternalVariableConflict",
        "spec.externalVariables may not redefine the operator's external variables "
        "(--ext-var, JAAS_EXT_VAR_*): cluster, env",
    )


async def test_a_jsonnet_error_is_evaluation_failed_naming_the_file_and_line(
    pool: EvaluatorPool,
) -> None:
    manifest = snippet(files={"main.jsonnet": "{\n  a: 1,\n  b: error 'boom',\n}\n"})
    reason, message = condition_of(await failure(pool, manifest))
    assert reason == "EvaluationFailed"
    assert "boom" in message.splitlines()[0]
    assert "main.jsonnet:3:" in message


async def test_an_invalid_spec_is_the_operators_invalid_spec(pool: EvaluatorPool) -> None:
    error = await failure(pool, snippet(files={"main.jsonnet": "{}"}, output="yaml"))
    assert condition_of(error) == ready_condition(
        "InvalidSpec",
        "spec.output 'yaml' must be rendered or source",
    )
    missing = await failure(pool, snippet(files={"lib.jsonnet": "{}"}))
    assert missing.reason is Reason.INVALID_SPEC
    assert "entry file 'main.jsonnet' is not among the 1 files of inline" in missing.message


async def test_suspend_is_ignored_and_the_namespace_defaults(pool: EvaluatorPool) -> None:
    manifest = snippet(namespace=None, files={"main.jsonnet": "{ a: 1 }"}, suspend=True)
    rendered = await render(manifest, evaluator=pool)
    assert rendered.stdout == b'{\n   "a": 1\n}\n'


async def test_the_evaluation_timeout_is_the_pools() -> None:
    endless = "std.foldl(function(a, b) a + b, std.range(1, 1000000000), 0)"
    async with EvaluatorPool(1, timeout=0.5, memory_limit=1 << 30) as short:
        error = await failure(short, snippet(files={"main.jsonnet": endless}))
    assert condition_of(error) == ready_condition("EvaluationTimeout", "evaluation exceeded 500ms")


async def test_the_max_stack_is_the_operators(pool: EvaluatorPool) -> None:
    deep = "local f(n) = if n == 0 then 0 else 1 + f(n - 1); f(%d)"
    ok = await render(snippet(files={"main.jsonnet": deep % 100}), evaluator=pool)
    assert ok.stdout == b"100\n"
    error = await failure(pool, snippet(files={"main.jsonnet": deep % (defaults.MAX_STACK * 2)}))
    assert error.reason is Reason.EVALUATION_FAILED
    assert "stack" in error.message.lower()


# --- --source and spec.sourceRef.path ---------------------------------------------------


async def test_source_directory_with_source_ref_path(pool: EvaluatorPool, tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "repo",
        {
            "README.md": "not used",
            "configs/main.jsonnet": "local app = import 'lib/app.libsonnet'; app { n: 2 }",
            "configs/lib/app.libsonnet": "{ name: importstr 'name.txt' }",
            "configs/lib/name.txt": "web",
            "configs/.hidden/x.libsonnet": "{}",
            "configs/bad name.jsonnet": "{}",
            "elsewhere/main.jsonnet": "{ wrong: true }",
        },
    )
    (root / "configs" / "outside.libsonnet").symlink_to(root / "elsewhere" / "main.jsonnet")
    manifest = snippet(
        sourceRef={"kind": "GitRepository", "name": "repo", "path": "./configs/"},
    )
    directory = SourceDirectory(root)
    rendered = await render(manifest, evaluator=pool, source=directory)
    assert json.loads(rendered.stdout) == {"name": "web", "n": 2}
    # The operator's extractor rules: hidden, unsafe and symlinked names are gone.
    assert sorted(rendered.files) == ["lib/app.libsonnet", "lib/name.txt", "main.jsonnet"]
    assert directory.files("configs") == extract_tarball(directory.tarball(), path="configs")


async def test_a_source_ref_path_without_files_is_invalid_spec(
    pool: EvaluatorPool, tmp_path: Path
) -> None:
    root = write_tree(tmp_path / "repo", {"main.jsonnet": "{}"})
    manifest = snippet(sourceRef={"kind": "Bucket", "name": "b", "path": "nowhere"})
    error = await failure(pool, manifest, source=SourceDirectory(root))
    assert condition_of(error) == ready_condition(
        "InvalidSpec",
        "resolve source: the artifact of Bucket team/b holds no usable files under path 'nowhere'",
    )


async def test_the_operators_caps_apply_to_a_source_directory(
    pool: EvaluatorPool, tmp_path: Path
) -> None:
    big = 16 * 1024 * 1024 + 1
    root = write_tree(tmp_path / "repo", {"main.jsonnet": "{}", "big.json": b"0" * big})
    manifest = snippet(sourceRef={"kind": "GitRepository", "name": "r"})
    error = await failure(pool, manifest, source=SourceDirectory(root))
    assert condition_of(error) == ready_condition(
        "SourceFetchFailed",
        f"resolve source: GitRepository team/r: tar entry 'big.json' is {big} bytes, over the "
        "16777216-byte per-entry cap",
    )


async def test_cross_namespace_source_refs_are_rejected_by_default(
    pool: EvaluatorPool, tmp_path: Path
) -> None:
    root = write_tree(tmp_path / "repo", {"main.jsonnet": "{}"})
    manifest = snippet(sourceRef={"kind": "GitRepository", "name": "r", "namespace": "other"})
    error = await failure(pool, manifest, source=SourceDirectory(root))
    assert error.reason is Reason.CROSS_NAMESPACE_REF_REJECTED
    relaxed = await render(
        manifest,
        evaluator=pool,
        source=SourceDirectory(root),
        options=RenderOptions(no_cross_namespace_refs=False),
    )
    assert relaxed.stdout == b"{ }\n"


async def test_source_and_manifest_must_agree(pool: EvaluatorPool, tmp_path: Path) -> None:
    root = write_tree(tmp_path / "repo", {"main.jsonnet": "{}"})
    with pytest.raises(UsageError, match="give its artifact's files with --source DIR"):
        await render(snippet(sourceRef={"kind": "GitRepository", "name": "r"}), evaluator=pool)
    with pytest.raises(UsageError, match=r"inline spec\.files"):
        await render(
            snippet(files={"main.jsonnet": "{}"}), evaluator=pool, source=SourceDirectory(root)
        )


async def test_one_renderer_renders_many_snippets_at_once(
    pool: EvaluatorPool, tmp_path: Path
) -> None:
    roots = [write_tree(tmp_path / str(n), {"main.jsonnet": f"{{ n: {n} }}"}) for n in range(6)]
    manifest = snippet(sourceRef={"kind": "GitRepository", "name": "same-name-for-all"})
    renderer = Renderer(pool)
    outputs = await asyncio.gather(
        *(renderer.render(manifest, source=SourceDirectory(root)) for root in roots)
    )
    assert [json.loads(o.stdout) for o in outputs] == [{"n": n} for n in range(6)]


# --- --library --------------------------------------------------------------------------


async def test_libraries_by_import_path_and_by_name(pool: EvaluatorPool, tmp_path: Path) -> None:
    ksonnet = write_tree(
        tmp_path / "k",
        {
            "main.libsonnet": "{ kind: 'k' }",
            "util/helpers.libsonnet": "{ help: importstr 'x.txt' }",
        },
    )
    (ksonnet / "util" / "x.txt").write_text("yes")
    grafana = write_tree(tmp_path / "g", {"main.libsonnet": "{ kind: 'g' }"})
    manifest = snippet(
        files={
            "main.jsonnet": "{ k: (import 'k').kind, h: (import 'k/util/helpers.libsonnet').help,"
            " g: (import 'grafana').kind }"
        },
        libraries=[
            {"kind": "JsonnetLibrary", "name": "ksonnet-lib", "importPath": "k"},
            {"kind": "JsonnetLibrary", "name": "grafana", "namespace": "team"},
        ],
    )
    rendered = await render(
        manifest,
        evaluator=pool,
        libraries={"k": SourceDirectory(ksonnet), "grafana": SourceDirectory(grafana)},
    )
    assert json.loads(rendered.stdout) == {"k": "k", "h": "yes", "g": "g"}


async def test_library_aliases_follow_the_operators_rules(
    pool: EvaluatorPool, tmp_path: Path
) -> None:
    lib = SourceDirectory(write_tree(tmp_path / "lib", {"main.libsonnet": "{}"}))
    twice = snippet(
        files={"main.jsonnet": "{}"},
        libraries=[
            {"kind": "JsonnetLibrary", "name": "a", "importPath": "x"},
            {"kind": "JsonnetLibrary", "name": "b", "importPath": "x"},
        ],
    )
    error = await failure(pool, twice, libraries={"x": lib})
    assert condition_of(error) == ready_condition(
        "InvalidSpec", "spec.libraries: import path 'x' is used twice"
    )
    shadow = snippet(
        files={"main.jsonnet": "{}"}, libraries=[{"kind": "JsonnetLibrary", "name": "greeter"}]
    )
    error = await failure(
        pool,
        shadow,
        libraries={"greeter": lib},
        options=RenderOptions(shared_libraries={"greeter": {}}),
    )
    assert error.reason is Reason.INVALID_SPEC
    assert "would shadow the operator's shared library" in error.message
    with pytest.raises(UsageError, match="--library other=DIR"):
        await render(
            snippet(
                files={"main.jsonnet": "{}"},
                libraries=[{"kind": "JsonnetLibrary", "name": "lib", "importPath": "other"}],
            ),
            evaluator=pool,
        )
    with pytest.raises(UsageError, match=r"spec\.libraries has no such import path"):
        await render(snippet(files={"main.jsonnet": "{}"}), evaluator=pool, libraries={"x": lib})


# --- --output and output: source ----------------------------------------------------------


async def test_the_package_is_what_jaas_storage_packaging_gives(pool: EvaluatorPool) -> None:
    manifest = snippet(
        files={"main.jsonnet": CONFIGMAP}, externalVariables=[{"name": "env", "value": "dev"}]
    )
    rendered = await render(
        manifest, evaluator=pool, options=RenderOptions(ext_vars={"cluster": "c"})
    )
    files, found = consumer_files_for(json.loads(rendered.stdout))
    expected = package_rendered(rendered.stdout, files, found.summary())
    assert rendered.package.data == expected.data
    assert rendered.package.revision == expected.revision
    members = extract_tarball(rendered.package.data)
    assert sorted(members) == ["kustomization.yaml", "objects.yaml", "rendered.json"]
    assert members["rendered.json"] == rendered.stdout


async def test_output_source_publishes_the_files_and_prints_nothing(pool: EvaluatorPool) -> None:
    files = {"main.jsonnet": "import 'lib.libsonnet'", "lib.libsonnet": "{ a: 1 }"}
    rendered = await render(snippet(files=files, output="source"), evaluator=pool)
    assert rendered.stdout == b""
    assert rendered.result.discarded_bytes == len(b'{\n   "a": 1\n}\n')
    expected = package_sources({k: v.encode() for k, v in files.items()})
    assert rendered.package.data == expected.data
    # The render must still succeed.
    error = await failure(pool, snippet(files={"main.jsonnet": "error 'no'"}, output="source"))
    assert error.reason is Reason.EVALUATION_FAILED


async def test_the_operators_artifact_cap_applies(pool: EvaluatorPool) -> None:
    manifest = snippet(files={"main.jsonnet": "std.repeat('x', 2000)"})
    error = await failure(pool, manifest, options=RenderOptions(max_artifact_bytes=1000))
    assert error.reason is Reason.ARTIFACT_TOO_LARGE
    assert error.message.endswith("refused in the evaluator, nothing published")


# --- engines ------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", sorted(ENGINES))
async def test_every_engine_renders_the_same_bytes(engine: str) -> None:
    manifest = snippet(
        files={"main.jsonnet": CONFIGMAP + "+ { list: [1.5, 'é', null, true, {}, []] }"},
        externalVariables=[{"name": "env", "value": "prod"}],
        tlas=[{"name": "replicas", "value": "3", "code": True}],
    )
    async with EvaluatorPool(1, engine=engine) as engine_pool:
        rendered = await render(
            manifest, evaluator=engine_pool, options=RenderOptions(ext_vars={"cluster": "c"})
        )
    assert rendered.stdout == EXPECTED_ENGINE_OUTPUT


EXPECTED_ENGINE_OUTPUT = b"""\
{
   "apiVersion": "v1",
   "data": {
      "cluster": "c",
      "replicas": "3"
   },
   "kind": "ConfigMap",
   "list": [
      1.5,
      "\xc3\xa9",
      null,
      true,
      { },
      [ ]
   ],
   "metadata": {
      "labels": {
         "env": "prod"
      },
      "name": "cm"
   }
}
"""


# --- the manifest -------------------------------------------------------------------------


def test_a_manifest_must_hold_exactly_one_snippet() -> None:
    one = yaml.safe_dump(snippet(files={"main.jsonnet": "{}"}))
    other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
    assert load_manifest(f"{other}---\n{one}")["metadata"]["name"] == "s"
    listed = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [snippet()]})
    assert load_manifest(listed)["kind"] == "JsonnetSnippet"
    with pytest.raises(UsageError, match="it holds none"):
        load_manifest(other)
    with pytest.raises(UsageError, match=r"it holds 2 \(team/s, team/s\)"):
        load_manifest(f"{one}---\n{one}")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_manifest("a: [")


# --- the command --------------------------------------------------------------------------


def test_cli_prints_rendered_json_of_the_inline_example() -> None:
    proc = run_cli("examples/inline-snippet.yaml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert json.loads(proc.stdout)["data"]["message"] == "Hello from demo-cluster"


def test_cli_source_library_ext_var_and_output(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", {"app/main.jsonnet": CONFIGMAP})
    manifest = snippet(
        sourceRef={"kind": "GitRepository", "name": "r", "path": "app"},
        externalVariables=[{"name": "env", "value": "stage"}],
    )
    path = tmp_path / "snippet.yaml"
    path.write_text(yaml.safe_dump(manifest))
    args = [str(path), "--source", str(source), "--ext-var", "cluster=blue"]
    printed = run_cli(*args)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["data"] == {"replicas": "1", "cluster": "blue"}
    out = tmp_path / "artifact.tar.gz"
    written = run_cli(*args, "--output", str(out))
    assert written.returncode == 0, written.stderr
    assert written.stdout == b""
    assert extract_tarball(out.read_bytes())["rendered.json"] == printed.stdout


def test_cli_reports_the_reason_and_message_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    program = "local x = 1;\n{\n  a: error 'boom ' + x,\n}\n"
    path.write_text(yaml.safe_dump(snippet(files={"main.jsonnet": program})))
    proc = run_cli(str(path))
    assert proc.returncode == 1
    assert proc.stdout == b""
    text = proc.stderr.decode()
    assert text.startswith("EvaluationFailed: ")
    assert "boom 1" in text.splitlines()[0]
    assert "main.jsonnet:3:" in text
    conflict = run_cli(
        "examples/inline-snippet.yaml", "--ext-var", "cluster=x", "--engine", "go-jsonnet"
    )
    assert conflict.returncode == 1
    message = with_runbook(
        Reason.EXTERNAL_VARIABLE_CONFLICT,
        "spec.externalVariables may not redefine the operator's "
        "external variables (--ext-var, JAAS_EXT_VAR_*): cluster",
    )
    assert conflict.stderr.decode() == f"ExternalVariableConflict: {message}\n"


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli("examples/kustomizations.yaml").returncode == 2
    missing_source = run_cli("examples/git-snippet.yaml")
    assert missing_source.returncode == 2
    assert b"--source DIR" in missing_source.stderr
    assert run_cli("examples/inline-snippet.yaml", "--engine", "nope").returncode == 2
    assert run_cli("examples/inline-snippet.yaml", "--library", "novalue").returncode == 2
    from_stdin = run_cli("-", stdin=(REPO / "examples/inline-snippet.yaml").read_text())
    assert from_stdin.returncode == 0, from_stdin.stderr
