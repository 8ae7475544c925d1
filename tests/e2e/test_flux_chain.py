"""The GitOps chain with real Flux: Git/OCI → source-controller → jaas-py → kustomize-controller.

Real source-controller v1.9.3 and kustomize-controller v1.9.6 (built by
``make flux``) run against the session's control plane; Git repositories are
served by ``git http-backend`` and OCI artifacts by go-containerregistry's
registry, both on loopback; the operator is the session's ``jaas operator``.
Each Kustomization is the one ``docs/consumers.md`` documents
(``sourceRef.kind: ExternalArtifact``, ``path: ./``, ``prune: true``).
Changes are picked up by ``reconcile.fluxcd.io/requestedAt`` on the source,
as a Git push webhook (Flux's notification receiver) would do.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from jaas.operator.kube import KubeClient
from jaas.testing.flux import make_git_repo, make_tarball
from jaas.testing.fluxcontrollers import SHARD_LABEL, FluxControllers
from jaas.testing.gitops import (
    create_in,
    git_repository,
    kustomization,
    kustomization_path,
    oci_repository,
    poll,
    ready_condition,
    request_reconcile,
    source_path,
)
from jaas.testing.gitserver import GitHttpServer
from jaas.testing.registry import OciRegistry, build_flux_artifact, push_artifact
from tests.e2e.conftest import FIGURES
from tests.e2e.helpers import create_snippet, ready, snippet_path, wait_reason

pytestmark = pytest.mark.usefixtures("operator", "flux_controllers")

Obj = dict[str, Any]
#: Seconds a step of the chain may take (each is about a second when idle).
STEP = 90.0

APP = """\
local settings = import 'settings.libsonnet';
{
  configs: {
    [name]: {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: name, labels: { app: 'web' } },
      data: settings.configs[name],
    }
    for name in std.objectFields(settings.configs)
  },
  web: {
    deployment: {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'web' },
      spec: {
        replicas: settings.replicas,
        selector: { matchLabels: { app: 'web' } },
        template: {
          metadata: { labels: { app: 'web' } },
          spec: { containers: [{ name: 'web', image: 'registry.invalid/web:1' }] },
        },
      },
    },
  },
}
"""
SETTINGS_V1 = """\
{
  replicas: 2,
  configs: {
    'web-settings': { greeting: 'hello' },
    'web-flags': { beta: 'off' },
  },
}
"""
SETTINGS_V2 = """\
{
  replicas: 3,
  configs: {
    'web-settings': { greeting: 'hello again' },
  },
}
"""
#: A typo in a variable name: an error that names main.jsonnet, its line and column.
BROKEN_APP = APP.replace("replicas: settings.replicas", "replicas: setings.replicas")


def configmap_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps/{name}"


def deployment_path(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"


def has_data(**data: str) -> Any:
    def check(obj: Obj | None) -> bool:
        return obj is not None and obj.get("data") == data

    return check


def gone(obj: Obj | None) -> bool:
    return obj is None


def kustomization_ready(revision_prefix: str = "") -> Any:
    def check(obj: Obj | None) -> bool:
        cond = ready_condition(obj or {})
        applied = (obj or {}).get("status", {}).get("lastAppliedRevision", "")
        return cond.get("status") == "True" and applied.startswith(revision_prefix)

    return check


async def kustomize(client: KubeClient, namespace: str, name: str) -> None:
    """Create a Kustomization of the ExternalArtifact ``name``, applying into ``namespace``."""
    await create_in(
        client, kustomization_path(namespace), kustomization(name, name, target_namespace=namespace)
    )


async def chain(client: KubeClient, namespace: str, name: str, source_ref: Obj) -> None:
    """Create a snippet reading ``source_ref`` and a Kustomization of its ExternalArtifact."""
    await create_snippet(client, namespace, name, sourceRef=source_ref)
    await kustomize(client, namespace, name)


async def wait_applied(
    client: KubeClient, namespace: str, name: str, revision: str = "sha256:"
) -> Obj:
    """Wait until Kustomization ``name`` is Ready with a revision starting with ``revision``."""
    obj = await poll(
        client,
        kustomization_path(namespace, name),
        kustomization_ready(revision),
        timeout=STEP,
        what=f"Ready Kustomization at {revision}",
    )
    assert obj is not None
    return obj


async def configmap_holds(client: KubeClient, namespace: str, name: str, **data: str) -> None:
    """Wait until ConfigMap ``name`` exists with exactly ``data``."""
    await poll(
        client, configmap_path(namespace, name), has_data(**data), timeout=STEP, what=str(data)
    )


async def pruned(client: KubeClient, namespace: str, name: str) -> None:
    """Wait until ConfigMap ``name`` is gone."""
    await poll(client, configmap_path(namespace, name), gone, timeout=STEP, what="deletion")


async def test_a_git_commit_becomes_objects_that_the_next_commit_changes_and_prunes(
    kube_client: KubeClient, namespace: str, git_server: GitHttpServer
) -> None:
    repo = git_server.repository_path(namespace)
    make_git_repo(repo, {"apps/main.jsonnet": APP, "apps/settings.libsonnet": SETTINGS_V1}, "v1")
    await create_in(
        kube_client,
        source_path("GitRepository", namespace),
        git_repository("app", git_server.url(namespace)),
    )
    await chain(
        kube_client, namespace, "app", {"kind": "GitRepository", "name": "app", "path": "apps"}
    )

    await configmap_holds(kube_client, namespace, "web-settings", greeting="hello")
    flags = await kube_client.get(configmap_path(namespace, "web-flags"))
    assert flags["data"] == {"beta": "off"}
    deployment = await kube_client.get(deployment_path(namespace, "web"))
    assert deployment["spec"]["replicas"] == 2
    ks = await wait_applied(kube_client, namespace, "app")
    snippet = await kube_client.get(snippet_path(namespace, "app"))
    assert ks["status"]["lastAppliedRevision"] == snippet["status"]["revision"]
    inventory = {entry["id"] for entry in ks["status"]["inventory"]["entries"]}
    assert inventory == {
        f"{namespace}_web-settings__ConfigMap",
        f"{namespace}_web-flags__ConfigMap",
        f"{namespace}_web_apps_Deployment",
    }

    # A new commit changes one ConfigMap and the Deployment and removes the other.
    committed = time.monotonic()
    make_git_repo(repo, {"apps/settings.libsonnet": SETTINGS_V2}, "v2")
    await request_reconcile(kube_client, source_path("GitRepository", namespace, "app"))
    await configmap_holds(kube_client, namespace, "web-settings", greeting="hello again")
    FIGURES.append(
        f"flux chain: git commit → changed ConfigMap in {time.monotonic() - committed:.2f} s "
        "(requestedAt on the GitRepository; source-controller, jaas-py, kustomize-controller)"
    )
    await pruned(kube_client, namespace, "web-flags")
    deployment = await kube_client.get(deployment_path(namespace, "web"))
    assert deployment["spec"]["replicas"] == 3
    good = await kube_client.get(snippet_path(namespace, "app"))
    await wait_applied(kube_client, namespace, "app", good["status"]["revision"])

    # A Jsonnet error: the snippet says where, the applied objects stay as they are.
    make_git_repo(repo, {"apps/main.jsonnet": BROKEN_APP}, "broken")
    await request_reconcile(kube_client, source_path("GitRepository", namespace, "app"))
    failed = await wait_reason(kube_client, namespace, "app", "EvaluationFailed", timeout=STEP)
    message = ready(failed)["message"]
    assert "main.jsonnet:" in message, message
    assert "setings" in message, message
    assert failed["status"]["revision"] == good["status"]["revision"]
    kept = await kube_client.get(configmap_path(namespace, "web-settings"))
    assert kept["data"] == {"greeting": "hello again"}
    still = await kube_client.get(kustomization_path(namespace, "app"))
    assert ready_condition(still)["status"] == "True"
    assert still["status"]["lastAppliedRevision"] == good["status"]["revision"]


async def test_an_oci_artifact_pushed_like_flux_push_artifact_becomes_objects(
    kube_client: KubeClient, namespace: str, oci_registry: OciRegistry
) -> None:
    repository = f"{namespace}/app"
    source = f"oci://{oci_registry.address}/{repository}"

    def push(settings: str, revision: str) -> str:
        layer = make_tarball({"main.jsonnet": APP, "settings.libsonnet": settings})
        image = build_flux_artifact(layer, source=source, revision=revision)
        return push_artifact(oci_registry.address, repository, "latest", image)

    first = push(SETTINGS_V1, "v1")
    await create_in(
        kube_client,
        source_path("OCIRepository", namespace),
        oci_repository("app", source, tag="latest"),
    )
    await chain(kube_client, namespace, "app", {"kind": "OCIRepository", "name": "app"})
    await configmap_holds(kube_client, namespace, "web-flags", beta="off")
    oci = await kube_client.get(source_path("OCIRepository", namespace, "app"))
    assert oci["status"]["artifact"]["revision"] == f"latest@{first}"

    second = push(SETTINGS_V2, "v2")
    await request_reconcile(kube_client, source_path("OCIRepository", namespace, "app"))
    await configmap_holds(kube_client, namespace, "web-settings", greeting="hello again")
    await pruned(kube_client, namespace, "web-flags")
    oci = await kube_client.get(source_path("OCIRepository", namespace, "app"))
    assert oci["status"]["artifact"]["revision"] == f"latest@{second}"


async def test_a_chained_snippet_rendered_variant_feeds_a_kustomization(
    kube_client: KubeClient, namespace: str
) -> None:
    items = ", ".join(
        f"{{apiVersion: 'v1', kind: 'ConfigMap', metadata: {{name: 'chained-{i}'}}, "
        f"data: {{index: '{i}'}}}}"
        for i in range(2)
    )
    base = f"{{kind: 'List', apiVersion: 'v1', items: [{items}]}}"
    await create_snippet(kube_client, namespace, "base", files={"main.jsonnet": base})
    await create_snippet(
        kube_client,
        namespace,
        "derived",
        entryFile="rendered.json",
        sourceRef={"kind": "ExternalArtifact", "name": "base"},
    )
    await kustomize(kube_client, namespace, "derived")
    for i in range(2):
        await configmap_holds(kube_client, namespace, f"chained-{i}", index=str(i))


def configmap(name: str) -> str:
    """Jsonnet for a ConfigMap named ``name``."""
    return f"{{apiVersion: 'v1', kind: 'ConfigMap', metadata: {{name: '{name}'}}}}"


#: Jsonnet of each shape a render may take, and the ConfigMaps it holds.
SHAPES = {
    "one-object": (configmap("one"), ["one"]),
    "list": (
        f"{{apiVersion: 'v1', kind: 'List', "
        f"items: [{configmap('list-a')}, {configmap('list-b')}]}}",
        ["list-a", "list-b"],
    ),
    "array": (f"[{configmap('array-a')}, null, {configmap('array-b')}]", ["array-a", "array-b"]),
    "tanka-tree": (
        f"{{team: {{frontend: {configmap('tree-a')}, backend: {{deep: {configmap('tree-b')}}}}}}}",
        ["tree-a", "tree-b"],
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_every_render_shape_is_applied(
    kube_client: KubeClient, namespace: str, shape: str
) -> None:
    program, names = SHAPES[shape]
    await create_snippet(kube_client, namespace, "shape", files={"main.jsonnet": program})
    await kustomize(kube_client, namespace, "shape")
    ks = await wait_applied(kube_client, namespace, "shape")
    for name in names:
        await kube_client.get(configmap_path(namespace, name))
    assert len(ks["status"]["inventory"]["entries"]) == len(names)


async def test_a_render_without_kubernetes_objects_makes_the_kustomization_fail(
    kube_client: KubeClient, namespace: str
) -> None:
    await create_snippet(
        kube_client, namespace, "dashboard", files={"main.jsonnet": "{title: 'API latency'}"}
    )
    synced = await wait_reason(kube_client, namespace, "dashboard", "Synced", timeout=STEP)
    assert "not Kubernetes objects" in ready(synced)["message"]
    await kustomize(kube_client, namespace, "dashboard")

    def failed(obj: Obj | None) -> bool:
        return ready_condition(obj or {}).get("status") == "False"

    refused = await poll(
        kube_client,
        kustomization_path(namespace, "dashboard"),
        failed,
        timeout=STEP,
        what="Ready=False Kustomization",
    )
    condition = ready_condition(refused or {})
    assert condition["reason"] == "BuildFailed", json.dumps(condition)
    assert "holds-no-kubernetes-objects" in condition["message"]


@pytest.mark.parametrize("algorithm", ["sha384", "sha512", "blake3"])
async def test_a_source_controller_writing_other_digests_is_verified(
    kube_client: KubeClient,
    namespace: str,
    git_server: GitHttpServer,
    flux_controllers: FluxControllers,
    algorithm: str,
) -> None:
    flux_controllers.add_source_controller(shard=algorithm, digest_algorithm=algorithm)
    repo = git_server.repository_path(namespace)
    make_git_repo(repo, {"main.jsonnet": f"{{algorithm: '{algorithm}'}}"}, "v1")
    await create_in(
        kube_client,
        source_path("GitRepository", namespace),
        git_repository("app", git_server.url(namespace), labels={SHARD_LABEL: algorithm}),
    )
    await create_snippet(
        kube_client, namespace, "app", sourceRef={"kind": "GitRepository", "name": "app"}
    )
    synced = await wait_reason(kube_client, namespace, "app", "Synced", timeout=STEP)
    source = await kube_client.get(source_path("GitRepository", namespace, "app"))
    assert source["status"]["artifact"]["digest"].startswith(f"{algorithm}:")
    assert synced["status"]["revision"].startswith("sha256:")


async def test_an_empty_render_prunes_what_the_kustomization_applied(
    kube_client: KubeClient, namespace: str
) -> None:
    await create_snippet(
        kube_client, namespace, "app", files={"main.jsonnet": f"[{configmap('temporary')}]"}
    )
    await kustomize(kube_client, namespace, "app")
    await wait_applied(kube_client, namespace, "app")
    await kube_client.get(configmap_path(namespace, "temporary"))

    await kube_client.merge_patch(
        snippet_path(namespace, "app"), {"spec": {"files": {"main.jsonnet": "[]"}}}
    )
    synced = await wait_reason(kube_client, namespace, "app", "Synced", generation=2, timeout=STEP)
    assert ready(synced)["message"].endswith(": 0 Kubernetes objects"), ready(synced)["message"]
    await pruned(kube_client, namespace, "temporary")
    ks = await wait_applied(kube_client, namespace, "app", synced["status"]["revision"])
    assert ks["status"]["inventory"]["entries"] == []
