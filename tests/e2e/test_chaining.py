"""Chaining snippets through ExternalArtifacts, both variants, and dependency cycles.

The two chaining manifests are metio/jaas docs/content/operator/snippet-sources.md's
examples as written there (only ``namespace: default`` becomes the test's
namespace); their ServiceAccount ``chained-tenant`` is bound to
deploy/rbac/tenant-role.yaml.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from jaas.api.constants import GROUP, LIBRARY_PLURAL, VERSION
from jaas.operator.kube import KubeClient, resource_path
from tests.e2e.helpers import (
    create_snippet,
    download,
    grant_tenant,
    ready,
    snippet_path,
    untar,
    wait_for,
    wait_reason,
)

pytestmark = pytest.mark.usefixtures("operator")

RENDERED_VARIANT = """\
# Snippet A renders a shared config blob other snippets consume.
apiVersion: jaas.metio.wtf/v1
kind: JsonnetSnippet
metadata:
  name: base-config
  namespace: default
spec:
  serviceAccountName: chained-tenant
  entryFile: main.jsonnet
  files:
    main.jsonnet: |
      {
        cluster: 'prod',
        region: 'eu-west-1',
        retentionDays: 30,
      }
---
# Snippet B sources from base-config's ExternalArtifact and extends it.
apiVersion: jaas.metio.wtf/v1
kind: JsonnetSnippet
metadata:
  name: derived-config
  namespace: default
spec:
  serviceAccountName: chained-tenant
  entryFile: rendered.json
  sourceRef:
    kind: ExternalArtifact
    name: base-config
"""

SOURCE_VARIANT = """\
# Snippet A publishes its raw Jsonnet, not its evaluated output.
apiVersion: jaas.metio.wtf/v1
kind: JsonnetSnippet
metadata:
  name: dashboard-template
  namespace: default
spec:
  serviceAccountName: chained-tenant
  output: source
  entryFile: main.jsonnet
  files:
    main.jsonnet: |
      function(env='dev') {
        title: 'API latency — ' + env,
        refresh: if env == 'prod' then '30s' else '5m',
      }
---
# Snippet B sources A's raw Jsonnet and re-evaluates it with its own TLAs.
apiVersion: jaas.metio.wtf/v1
kind: JsonnetSnippet
metadata:
  name: dashboard-prod
  namespace: default
spec:
  serviceAccountName: chained-tenant
  entryFile: main.jsonnet
  sourceRef:
    kind: ExternalArtifact
    name: dashboard-template
  tlas:
    - name: env
      value: prod
"""


async def apply(client: KubeClient, namespace: str, manifests: str) -> None:
    await grant_tenant(client, namespace, service_account="chained-tenant")
    for doc in yaml.safe_load_all(manifests):
        doc["metadata"]["namespace"] = namespace
        await client.create(snippet_path(namespace), doc)


async def rendered(
    client: KubeClient, namespace: str, name: str, revision: str | None = None
) -> Any:
    obj = await wait_for(
        client,
        snippet_path(namespace, name),
        lambda o: (
            ready(o).get("reason") == "Synced"
            and o["status"].get("revision") not in (None, revision)
        ),
        what=f"{name} Synced with a new revision",
    )
    members = untar(await download(obj["status"]["artifactURL"]))
    return obj, members


async def test_rendered_chaining_follows_the_upstream(
    kube_client: KubeClient, namespace: str
) -> None:
    await apply(kube_client, namespace, RENDERED_VARIANT)
    _base, base_files = await rendered(kube_client, namespace, "base-config")
    derived, files = await rendered(kube_client, namespace, "derived-config")
    assert json.loads(files["rendered.json"]) == {
        "cluster": "prod",
        "region": "eu-west-1",
        "retentionDays": 30,
    }
    # JSON is valid Jsonnet: the downstream re-emits the upstream's rendered bytes.
    assert files["rendered.json"] == base_files["rendered.json"]
    await kube_client.merge_patch(
        snippet_path(namespace, "base-config"),
        {"spec": {"files": {"main.jsonnet": "{ cluster: 'prod', retentionDays: 90 }"}}},
    )
    _, files = await rendered(
        kube_client, namespace, "derived-config", derived["status"]["revision"]
    )
    assert json.loads(files["rendered.json"]) == {"cluster": "prod", "retentionDays": 90}


async def test_source_chaining_re_evaluates_the_upstream_jsonnet(
    kube_client: KubeClient, namespace: str
) -> None:
    await apply(kube_client, namespace, SOURCE_VARIANT)
    _template, template_files = await rendered(kube_client, namespace, "dashboard-template")
    # output: source publishes the Jsonnet itself.
    assert list(template_files) == ["main.jsonnet"]
    assert template_files["main.jsonnet"].startswith(b"function(env='dev')")
    prod, files = await rendered(kube_client, namespace, "dashboard-prod")
    assert json.loads(files["rendered.json"]) == {"title": "API latency — prod", "refresh": "30s"}
    await kube_client.merge_patch(
        snippet_path(namespace, "dashboard-template"),
        {
            "spec": {
                "files": {
                    "main.jsonnet": "function(env='dev') { title: 'Errors — ' + env, "
                    "refresh: if env == 'prod' then '10s' else '1m' }"
                }
            }
        },
    )
    _, files = await rendered(kube_client, namespace, "dashboard-prod", prod["status"]["revision"])
    assert json.loads(files["rendered.json"]) == {"title": "Errors — prod", "refresh": "10s"}


async def test_a_downstream_waits_until_its_upstream_is_ready(
    kube_client: KubeClient, namespace: str
) -> None:
    await create_snippet(
        kube_client,
        namespace,
        "down",
        entryFile="rendered.json",
        sourceRef={"kind": "ExternalArtifact", "name": "up"},
    )
    obj = await wait_reason(kube_client, namespace, "down", "SourceFetchFailed")
    assert f"ExternalArtifact {namespace}/up not found" in ready(obj)["message"]
    await create_snippet(kube_client, namespace, "up", files={"main.jsonnet": "{ up: 1 }"})
    await wait_reason(kube_client, namespace, "down", "Synced", timeout=90)


def _via(name: str) -> dict[str, Any]:
    return {"sourceRef": {"kind": "ExternalArtifact", "name": name}, "entryFile": "rendered.json"}


@pytest.mark.parametrize("shape", ["self", "two", "three", "library"])
async def test_dependency_cycles_are_caught_and_breaking_them_heals_every_member(
    kube_client: KubeClient, namespace: str, shape: str
) -> None:
    ns = namespace
    if shape == "self":
        members = {"a": _via("a")}
        path = f"{ns}/a → {ns}/a"
    elif shape == "two":
        members = {"a": _via("b"), "b": _via("a")}
        path = f"{ns}/a → {ns}/b → {ns}/a"
    elif shape == "three":
        members = {"a": _via("b"), "b": _via("c"), "c": _via("a")}
        path = f"{ns}/a → {ns}/b → {ns}/c → {ns}/a"
    else:
        await kube_client.create(
            resource_path(GROUP, VERSION, LIBRARY_PLURAL, ns),
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "JsonnetLibrary",
                "metadata": {"name": "lib"},
                "spec": {"sourceRef": {"kind": "ExternalArtifact", "name": "b"}},
            },
        )
        members = {
            "a": {
                "files": {"main.jsonnet": "(import 'lib/rendered.json') + { a: 1 }"},
                "libraries": [{"kind": "JsonnetLibrary", "name": "lib"}],
            },
            "b": _via("a"),
        }
        path = f"{ns}/a → library {ns}/lib → {ns}/b → {ns}/a"
    for name, spec in members.items():
        await create_snippet(kube_client, ns, name, **spec)
    obj = await wait_reason(kube_client, ns, "a", "DependencyCycle")
    assert path in ready(obj)["message"]
    for name in members:
        await wait_reason(kube_client, ns, name, "DependencyCycle")
    # Nothing was published for any member.
    for name in members:
        assert "revision" not in (await kube_client.get(snippet_path(ns, name)))["status"]
    # Break the cycle at a: every member renders.
    if shape == "library":
        await kube_client.merge_patch(
            resource_path(GROUP, VERSION, LIBRARY_PLURAL, ns, "lib"),
            {"spec": {"sourceRef": None, "files": {"rendered.json": '{"lib": true}'}}},
        )
    else:
        await kube_client.merge_patch(
            snippet_path(ns, "a"),
            {
                "spec": {
                    "sourceRef": None,
                    "entryFile": "main.jsonnet",
                    "files": {"main.jsonnet": "{ a: 1 }"},
                }
            },
        )
    for name in members:
        await wait_reason(kube_client, ns, name, "Synced", timeout=90)
