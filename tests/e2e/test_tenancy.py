"""Every tenant acts with its own rights: tokens, the tenant Role, cross-namespace rules.

Own control plane and operator: ``--no-cross-namespace-refs=false`` (so the
cross-namespace tests can reach another namespace at all), no default
ServiceAccount, and a 2-second permanent-failure re-check so that granting
a permission visibly heals a snippet without anyone touching it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from jaas.api.constants import GROUP, LIBRARY_PLURAL, VERSION
from jaas.operator.kube import KubeApiError, KubeClient, resource_path
from jaas.shards.assignment import HashRing
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.flux import FluxPublisher, make_tarball
from jaas.testing.operator import OperatorProcess
from jaas.testing.tenants import RBAC_API, TENANT_ROLE, TENANT_SA
from tests.e2e.helpers import (
    create_namespace,
    create_snippet,
    download,
    get_external_artifact,
    grant_tenant,
    ready,
    sha256,
    snippet_path,
    untar,
    wait_for,
    wait_reason,
)

Obj = dict[str, Any]
FLUX = "source.toolkit.fluxcd.io"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane.start(tmp_path_factory.mktemp("tenancy-plane"), default_crd_dirs())
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def tenancy_operator(
    plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        plane.kubeconfig,
        tmp_path_factory.mktemp("tenancy-operator"),
        extra_args=[
            "--artifact-allow-loopback",
            "--no-cross-namespace-refs=false",
            "--permanent-retry-interval",
            "2s",
        ],
    )
    proc.start()
    yield proc
    proc.stop()


@pytest_asyncio.fixture
async def admin(
    plane: ControlPlane, tenancy_operator: OperatorProcess
) -> AsyncIterator[KubeClient]:
    client = KubeClient(await api_client_from_kubeconfig(plane.kubeconfig))
    yield client
    await client.close()


async def new_namespace(
    client: KubeClient, *, tenant: bool = True, shard: str | None = None
) -> str:
    ring = HashRing(["shard-0", "shard-1"])
    while True:
        name = f"tenancy-{secrets.token_hex(3)}"
        if shard is None or ring.owner(name) == shard:
            return await create_namespace(client, name, tenant=tenant)


def without(verb: str, resource: str) -> list[Obj]:
    """TENANT_ROLE's rules minus one verb on one resource."""
    plural = resource
    rules: list[Obj] = []
    for rule in copy.deepcopy(TENANT_ROLE["rules"]):
        if plural in rule["resources"] and verb in rule["verbs"]:
            others = [r for r in rule["resources"] if r != plural]
            if others:
                rules.append({**rule, "resources": others})
            if len(rule["verbs"]) > 1:
                rules.append(
                    {
                        **rule,
                        "resources": [plural],
                        "verbs": [v for v in rule["verbs"] if v != verb],
                    }
                )
        else:
            rules.append(rule)
    return rules


async def publish_source(
    kube: KubeClient, flux: FluxPublisher, kind: str, ns: str, name: str, files: dict[str, str]
) -> None:
    if kind == "GitRepository":
        tarball = make_tarball(files)
        await flux.publish_tarball(
            kube.api, kind, ns, name, tarball, f"main@sha1:{sha256(tarball)[7:47]}"
        )
    elif kind == "OCIRepository":
        await flux.publish_oci(kube.api, ns, name, files)
    else:
        await flux.publish_bucket(kube.api, ns, name, files)


async def events(client: KubeClient, namespace: str) -> list[Obj]:
    items: list[Obj] = (await client.get(f"/apis/events.k8s.io/v1/namespaces/{namespace}/events"))[
        "items"
    ]
    return items


async def test_exactly_the_tenant_role_is_enough(admin: KubeClient, tmp_path: Path) -> None:
    ns = await new_namespace(admin)
    async with FluxPublisher() as flux:
        for kind in ("GitRepository", "OCIRepository", "Bucket"):
            await publish_source(
                admin, flux, kind, ns, kind.lower(), {"main.jsonnet": f"{{ kind: '{kind}' }}"}
            )
            await create_snippet(
                admin,
                ns,
                kind.lower(),
                serviceAccountName=TENANT_SA,
                sourceRef={"kind": kind, "name": kind.lower()},
            )
        await admin.create(
            resource_path(GROUP, VERSION, LIBRARY_PLURAL, ns),
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "JsonnetLibrary",
                "metadata": {"name": "lib"},
                "spec": {"sourceRef": {"kind": "ExternalArtifact", "name": "bucket"}},
            },
        )
        await create_snippet(
            admin,
            ns,
            "chained",
            serviceAccountName=TENANT_SA,
            files={"main.jsonnet": "import 'lib/rendered.json'"},
            libraries=[{"kind": "JsonnetLibrary", "name": "lib"}],
        )
        for name in ("gitrepository", "ocirepository", "bucket", "chained"):
            await wait_reason(admin, ns, name, "Synced")
        chained = await admin.get(snippet_path(ns, "chained"))
        rendered = untar(await download(chained["status"]["artifactURL"]))["rendered.json"]
        assert json.loads(rendered) == {"kind": "Bucket"}
        await admin.delete(snippet_path(ns, "chained"))
        await wait_for(
            admin,
            snippet_path(ns),
            lambda lst: "chained" not in [i["metadata"]["name"] for i in lst["items"]],
            what="withdraw",
        )
        with pytest.raises(KubeApiError) as gone:
            await get_external_artifact(admin, ns, "chained")
        assert gone.value.not_found
    assert not [e for e in await events(admin, ns) if e["reason"] == "RBACDenied"]


CASES = [
    # (verb, resource, what the snippet uses)
    ("get", "gitrepositories", "GitRepository"),
    ("get", "ocirepositories", "OCIRepository"),
    ("get", "buckets", "Bucket"),
    ("get", "externalartifacts", "ExternalArtifact"),
    ("get", "jsonnetlibraries", "library"),
    ("create", "externalartifacts", "inline"),
    ("patch", "externalartifacts", "foreign ExternalArtifact"),
    ("patch", "externalartifacts/status", "inline"),
]


@pytest.mark.parametrize(("verb", "resource", "uses"), CASES, ids=[f"{v}-{r}" for v, r, _ in CASES])
async def test_each_rule_of_the_tenant_role_is_needed_and_granting_it_heals(
    admin: KubeClient, verb: str, resource: str, uses: str
) -> None:
    ns = await new_namespace(admin, tenant=False)
    await grant_tenant(admin, ns, rules=without(verb, resource))
    spec: dict[str, Any] = {"serviceAccountName": TENANT_SA}
    stage = "publish"
    async with FluxPublisher() as flux:
        if uses in ("GitRepository", "OCIRepository", "Bucket"):
            await publish_source(admin, flux, uses, ns, "src", {"main.jsonnet": "{}"})
            spec["sourceRef"] = {"kind": uses, "name": "src"}
            stage = "resolve source"
        elif uses == "ExternalArtifact":
            await flux.publish_tarball(
                admin.api, "ExternalArtifact", ns, "src", make_tarball({"main.jsonnet": "{}"}), "v1"
            )
            spec["sourceRef"] = {"kind": "ExternalArtifact", "name": "src"}
            stage = "resolve source"
        elif uses == "library":
            await admin.create(
                resource_path(GROUP, VERSION, LIBRARY_PLURAL, ns),
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "JsonnetLibrary",
                    "metadata": {"name": "lib"},
                    "spec": {"files": {"main.libsonnet": "{}"}},
                },
            )
            spec.update(
                files={"main.jsonnet": "import 'lib'"},
                libraries=[{"kind": "JsonnetLibrary", "name": "lib"}],
            )
            stage = "resolve libraries"
        else:
            spec["files"] = {"main.jsonnet": "{ ok: true }"}
            if uses == "foreign ExternalArtifact":
                await flux.publish_tarball(
                    admin.api, "ExternalArtifact", ns, "s", make_tarball({"x": "y"}), "foreign"
                )
        created = await create_snippet(admin, ns, "s", **spec)
        obj = await wait_reason(admin, ns, "s", "RBACDenied")
        message = ready(obj)["message"]
        group = GROUP if resource == "jsonnetlibraries" else FLUX
        plural, _, sub = resource.partition("/")
        full = f"{plural}.{group}" + (f"/{sub}" if sub else "")
        assert message.startswith(
            f"RBAC denied at {stage}: ServiceAccount {ns}/{TENANT_SA} may not {verb} {full}"
        ), message
        assert "revision" not in obj["status"]  # nothing was published
        if uses == "inline" and verb == "create":
            with pytest.raises(KubeApiError):
                await get_external_artifact(admin, ns, "s")
        # Bind the whole Role: the same snippet heals without being touched.
        await grant_tenant(admin, ns)
        healed = await wait_reason(admin, ns, "s", "Synced", timeout=60)
        assert healed["metadata"]["generation"] == created["metadata"]["generation"] == 1
        ea = await get_external_artifact(admin, ns, "s")
        assert ea["spec"]["sourceRef"] == {
            "apiVersion": "jaas.metio.wtf/v1",
            "kind": "JsonnetSnippet",
            "name": "s",
        }


async def test_without_delete_the_withdraw_is_forced_and_the_files_still_go(
    admin: KubeClient, tenancy_operator: OperatorProcess
) -> None:
    ns = await new_namespace(admin, tenant=False)
    await grant_tenant(admin, ns, rules=without("delete", "externalartifacts"))
    await create_snippet(admin, ns, "s", serviceAccountName=TENANT_SA, files={"main.jsonnet": "{}"})
    await wait_reason(admin, ns, "s", "Synced")
    stored = tenancy_operator.storage_path / ns / "s"
    assert stored.is_dir()
    await admin.delete(snippet_path(ns, "s"))
    await wait_for(admin, snippet_path(ns), lambda lst: not lst["items"], what="finalizer dropped")
    assert not stored.exists()
    await get_external_artifact(admin, ns, "s")  # the tenant could not delete it
    for _ in range(50):
        forced = [e for e in await events(admin, ns) if e["reason"] == "WithdrawForced"]
        if forced:
            break
        await asyncio.sleep(0.2)
    assert forced, "no WithdrawForced event"
    assert "withdraw_permanent" in forced[0]["note"]
    assert f"may not delete externalartifacts.{FLUX}" in forced[0]["note"]


async def test_no_service_account_and_no_default_is_missing(admin: KubeClient) -> None:
    ns = await new_namespace(admin)
    await create_snippet(admin, ns, "s", files={"main.jsonnet": "{}"})
    obj = await wait_reason(admin, ns, "s", "ServiceAccountMissing")
    assert "--default-service-account" in ready(obj)["message"]


async def test_cross_namespace_references_work_with_rbac_there_and_follow_changes_across_shards(
    admin: KubeClient,
) -> None:
    here = await new_namespace(admin, shard="shard-0")
    there = await new_namespace(admin, tenant=False, shard="shard-1")
    # The tenant of `here` may read sources and libraries in `there`, nothing else.
    await admin.create(
        f"{RBAC_API}/namespaces/{there}/roles",
        {"metadata": {"name": "readers"}, "rules": TENANT_ROLE["rules"][:2]},
    )
    await admin.create(
        f"{RBAC_API}/namespaces/{there}/rolebindings",
        {
            "metadata": {"name": "readers"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "readers"},
            "subjects": [{"kind": "ServiceAccount", "name": TENANT_SA, "namespace": here}],
        },
    )
    async with FluxPublisher() as flux:
        await flux.publish_bucket(admin.api, there, "data", {"main.jsonnet": "{ v: 1 }"})
        await flux.publish_bucket(admin.api, there, "libsrc", {"main.libsonnet": "{ lib: 1 }"})
        await admin.create(
            resource_path(GROUP, VERSION, LIBRARY_PLURAL, there),
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "JsonnetLibrary",
                "metadata": {"name": "shared"},
                "spec": {"sourceRef": {"kind": "Bucket", "name": "libsrc"}},
            },
        )
        await create_snippet(
            admin,
            here,
            "direct",
            serviceAccountName=TENANT_SA,
            sourceRef={"kind": "Bucket", "name": "data", "namespace": there},
        )
        await create_snippet(
            admin,
            here,
            "vialib",
            serviceAccountName=TENANT_SA,
            files={"main.jsonnet": "import 'shared'"},
            libraries=[{"kind": "JsonnetLibrary", "name": "shared", "namespace": there}],
        )
        direct = await wait_reason(admin, here, "direct", "Synced")
        vialib = await wait_reason(admin, here, "vialib", "Synced")
        # Changes in `there` (another shard's namespace) re-render the snippets of `here`.
        await flux.publish_bucket(admin.api, there, "data", {"main.jsonnet": "{ v: 2 }"})
        await flux.publish_bucket(admin.api, there, "libsrc", {"main.libsonnet": "{ lib: 2 }"})
        for name, before, expected in (
            ("direct", direct, {"v": 2}),
            ("vialib", vialib, {"lib": 2}),
        ):
            old_revision = before["status"]["revision"]

            def moved(o: Obj, old: str = old_revision) -> bool:
                return bool(o["status"].get("revision") != old)

            obj = await wait_for(admin, snippet_path(here, name), moved, what=f"{name} re-rendered")
            assert (
                json.loads(untar(await download(obj["status"]["artifactURL"]))["rendered.json"])
                == expected
            )


async def test_a_tenant_without_rbac_in_another_namespace_learns_nothing_about_it(
    admin: KubeClient,
) -> None:
    here = await new_namespace(admin)
    there = await new_namespace(admin, tenant=False)
    async with FluxPublisher() as flux:
        await flux.publish_bucket(admin.api, there, "secret-data", {"main.jsonnet": "{}"})
        await create_snippet(
            admin,
            here,
            "exists",
            serviceAccountName=TENANT_SA,
            sourceRef={"kind": "Bucket", "name": "secret-data", "namespace": there},
        )
        await create_snippet(
            admin,
            here,
            "absent",
            serviceAccountName=TENANT_SA,
            sourceRef={"kind": "Bucket", "name": "secret-data", "namespace": f"{there}-x"},
        )
        exists = ready(await wait_reason(admin, here, "exists", "RBACDenied"))["message"]
        absent = ready(await wait_reason(admin, here, "absent", "RBACDenied"))["message"]
    assert exists.replace(there, "NS") == absent.replace(f"{there}-x", "NS")
    for text in ("Forbidden", "cannot get", "not found", "http://", "sha256"):
        assert text not in exists
