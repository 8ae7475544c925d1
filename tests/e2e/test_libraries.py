"""JsonnetLibraries from inline files and from every Flux source kind; --library-path ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from jaas.api.constants import GROUP, LIBRARY_PLURAL, VERSION
from jaas.operator.kube import KubeClient, resource_path
from jaas.testing.flux import FluxPublisher, make_git_repo
from tests.e2e.helpers import (
    create_snippet,
    download,
    ready,
    snippet_path,
    untar,
    wait_for,
    wait_reason,
)

pytestmark = pytest.mark.usefixtures("operator")

USES_LIB = "local lib = import 'lib'; { version: lib.version, text: importstr 'lib/note.txt' }"


def library_path(namespace: str, name: str | None = None) -> str:
    return resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace, name)


async def create_library(client: KubeClient, namespace: str, name: str, **spec: Any) -> None:
    await client.create(
        library_path(namespace),
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "JsonnetLibrary",
            "metadata": {"name": name},
            "spec": spec,
        },
    )


async def output(client: KubeClient, namespace: str, name: str, previous: str | None = None) -> Any:
    obj = await wait_for(
        client,
        snippet_path(namespace, name),
        lambda o: (
            ready(o).get("reason") == "Synced"
            and o["status"].get("revision") not in (None, previous)
        ),
        what=f"{name} Synced with a new revision",
    )
    return obj["status"]["revision"], json.loads(
        untar(await download(obj["status"]["artifactURL"]))["rendered.json"]
    )


def lib_files(version: int) -> dict[str, str]:
    return {"vendor/main.libsonnet": f"{{ version: {version} }}", "vendor/note.txt": f"v{version}"}


@pytest.mark.parametrize("kind", ["GitRepository", "OCIRepository", "Bucket", "ExternalArtifact"])
async def test_a_library_from_a_flux_source_re_renders_its_snippets_when_the_source_changes(
    kube_client: KubeClient,
    kube: ApiClient,
    namespace: str,
    flux: FluxPublisher,
    tmp_path: Path,
    kind: str,
) -> None:
    async def publish(version: int) -> None:
        files = lib_files(version)
        if kind == "GitRepository":
            make_git_repo(tmp_path / "repo", files, f"v{version}")
            await flux.publish_git(kube, namespace, "src", tmp_path / "repo")
        elif kind == "OCIRepository":
            await flux.publish_oci(kube, namespace, "src", files)
        elif kind == "Bucket":
            await flux.publish_bucket(kube, namespace, "src", files)
        else:  # another snippet publishes the library's files (output: source)
            body = {"files": files, "output": "source", "entryFile": "vendor/main.libsonnet"}
            if version == 1:
                await create_snippet(kube_client, namespace, "src", **body)
            else:
                await kube_client.merge_patch(snippet_path(namespace, "src"), {"spec": body})

    await publish(1)
    await create_library(
        kube_client, namespace, "lib", sourceRef={"kind": kind, "name": "src", "path": "vendor"}
    )
    await create_snippet(
        kube_client,
        namespace,
        "s",
        files={"main.jsonnet": USES_LIB},
        libraries=[{"kind": "JsonnetLibrary", "name": "lib"}],
    )
    revision, rendered = await output(kube_client, namespace, "s")
    assert rendered == {"version": 1, "text": "v1"}
    await publish(2)
    _, rendered = await output(kube_client, namespace, "s", revision)
    assert rendered == {"version": 2, "text": "v2"}


async def test_an_inline_library_change_re_renders_every_snippet_that_lists_it(
    kube_client: KubeClient, namespace: str
) -> None:
    await create_library(
        kube_client, namespace, "lib", files={"main.libsonnet": "{ version: 1 }", "note.txt": "a"}
    )
    for name in ("one", "two"):
        await create_snippet(
            kube_client,
            namespace,
            name,
            files={"main.jsonnet": USES_LIB},
            libraries=[{"kind": "JsonnetLibrary", "name": "lib"}],
        )
    await create_snippet(kube_client, namespace, "unrelated", files={"main.jsonnet": "{}"})
    revisions = {n: (await output(kube_client, namespace, n))[0] for n in ("one", "two")}
    unrelated = await wait_reason(kube_client, namespace, "unrelated", "Synced")
    await kube_client.merge_patch(
        library_path(namespace, "lib"), {"spec": {"files": {"main.libsonnet": "{ version: 2 }"}}}
    )
    for name in ("one", "two"):
        _, rendered = await output(kube_client, namespace, name, revisions[name])
        assert rendered == {"version": 2, "text": "a"}
    after = await kube_client.get(snippet_path(namespace, "unrelated"))
    assert after["status"]["lastSyncTime"] == unrelated["status"]["lastSyncTime"]


async def test_shared_library_paths_are_importable_and_the_right_most_wins(
    kube_client: KubeClient, namespace: str
) -> None:
    program = "{ ex: (import 'examplonet').resolved_from, hi: (import 'greeter').greet('you') }"
    await create_snippet(kube_client, namespace, "s", files={"main.jsonnet": program})
    _, rendered = await output(kube_client, namespace, "s")
    assert rendered == {"ex": "override", "hi": "Hello, you!"}
    # The left-most examplonet is replaced whole, not merged.
    await create_snippet(
        kube_client,
        namespace,
        "left",
        files={"main.jsonnet": "import 'examplonet/helper.libsonnet'"},
    )
    obj = await wait_reason(kube_client, namespace, "left", "EvaluationFailed")
    assert "library examplonet has no file helper.libsonnet" in ready(obj)["message"]
    # Only .libsonnet, .jsonnet and .json files are loaded.
    await create_snippet(
        kube_client, namespace, "txt", files={"main.jsonnet": "importstr 'greeter/notes.txt'"}
    )
    await wait_reason(kube_client, namespace, "txt", "EvaluationFailed")


async def test_a_snippet_alias_may_not_shadow_a_shared_library(
    kube_client: KubeClient, namespace: str
) -> None:
    await create_library(kube_client, namespace, "mine", files={"main.libsonnet": "{}"})
    await create_snippet(
        kube_client,
        namespace,
        "s",
        files={"main.jsonnet": "import 'greeter'"},
        libraries=[{"kind": "JsonnetLibrary", "name": "mine", "importPath": "greeter"}],
    )
    obj = await wait_reason(kube_client, namespace, "s", "InvalidSpec")
    assert "would shadow the operator's shared library" in ready(obj)["message"]
