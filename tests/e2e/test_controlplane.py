"""The test control plane: RBAC, served CRDs, TokenRequest identities, lifecycle."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from jaas.api import constants
from jaas.testing import controlplane, processes
from jaas.testing.controlplane import ControlPlane, ControlPlaneError, locate_binaries

FLUX_KINDS = ["GitRepository", "OCIRepository", "Bucket", "ExternalArtifact"]


async def whoami(api: client.ApiClient) -> tuple[str, list[str]]:
    review = await client.AuthenticationV1Api(api).create_self_subject_review(
        client.V1SelfSubjectReview()
    )
    info = review.status.user_info
    return info.username, list(info.groups or [])


async def list_forbidden(api: client.ApiClient, namespace: str) -> bool:
    """Return True on 403 when listing ConfigMaps, False when allowed."""
    try:
        await client.CoreV1Api(api).list_namespaced_config_map(namespace)
    except ApiException as exc:
        if exc.status == 403:
            return True
        raise
    return False


async def test_admin_is_in_system_masters_and_lists_namespaces(kube: client.ApiClient) -> None:
    user, groups = await whoami(kube)
    assert user == "admin"
    assert "system:masters" in groups
    names = {ns.metadata.name for ns in (await client.CoreV1Api(kube).list_namespace()).items}
    assert {"default", "kube-system"} <= names


async def test_client_cert_user_without_groups_is_forbidden(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    config = control_plane.write_user_kubeconfig(tmp_path / "alice.kubeconfig", "alice")
    api = await control_plane.api_client(config)
    async with api:
        user, groups = await whoami(api)
        assert user == "alice"
        assert groups == ["system:authenticated"]
        with pytest.raises(ApiException) as denied:
            await client.CoreV1Api(api).list_namespace()
        assert denied.value.status == 403


@pytest.mark.parametrize(
    ("group", "kind"),
    [(constants.GROUP, constants.SNIPPET_KIND), (constants.GROUP, constants.LIBRARY_KIND)]
    + [(constants.FLUX_SOURCE_GROUP, kind) for kind in FLUX_KINDS],
)
async def test_crd_is_established_and_served(
    kube: client.ApiClient, namespace: str, group: str, kind: str
) -> None:
    plural = {
        constants.SNIPPET_KIND: constants.SNIPPET_PLURAL,
        constants.LIBRARY_KIND: constants.LIBRARY_PLURAL,
        **constants.SOURCE_KIND_PLURALS,
    }[kind]
    crd = await client.ApiextensionsV1Api(kube).read_custom_resource_definition(f"{plural}.{group}")
    established = [c for c in crd.status.conditions if c.type == "Established"]
    assert [c.status for c in established] == ["True"]
    assert crd.spec.names.kind == kind
    version = constants.VERSION if group == constants.GROUP else constants.FLUX_SOURCE_VERSION
    listing = await client.CustomObjectsApi(kube).list_namespaced_custom_object(
        group, version, namespace, plural
    )
    assert listing["kind"] == f"{kind}List"
    assert listing["items"] == []


async def test_service_account_token_request_gets_rbac_decisions(
    control_plane: ControlPlane, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    await core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="probe"))
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    issued = await core.create_namespaced_service_account_token("probe", namespace, request)
    token = issued.status.token
    assert token.count(".") == 2  # a signed JWT

    config = control_plane.write_token_kubeconfig(tmp_path / "probe.kubeconfig", token)
    assert yaml.safe_load(config.read_text())["users"][0]["user"] == {"token": token}
    api = await control_plane.api_client(config)
    async with api:
        user, groups = await whoami(api)
        assert user == f"system:serviceaccount:{namespace}:probe"
        assert f"system:serviceaccounts:{namespace}" in groups
        assert await list_forbidden(api, namespace)

        rbac = client.RbacAuthorizationV1Api(kube)
        await rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="read-configmaps"),
                rules=[
                    client.V1PolicyRule(
                        api_groups=[""], resources=["configmaps"], verbs=["get", "list"]
                    )
                ],
            ),
        )
        await rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="read-configmaps"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name="probe", namespace=namespace)
                ],
            ),
        )
        # The RBAC authorizer reads Roles through an informer: wait for it to catch up.
        for _ in range(300):
            if not await list_forbidden(api, namespace):
                break
            await asyncio.sleep(0.1)
        assert not await list_forbidden(api, namespace)
        # The Role is namespaced: other namespaces stay forbidden.
        assert await list_forbidden(api, "default")


@pytest.mark.parametrize("label", ["Mixed_Case.and/slashes--"])
async def test_namespace_fixture_makes_a_dns_label_from_a_long_odd_test_name(
    kube: client.ApiClient, namespace: str, request: pytest.FixtureRequest, label: str
) -> None:
    assert label in request.node.name
    assert len(request.node.name) > 63
    assert len(namespace) <= 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace)
    assert namespace.startswith("test-namespace-fixture-makes")
    ns = await client.CoreV1Api(kube).read_namespace(namespace)
    assert ns.status.phase == "Active"


def test_install_crds_later_creates_then_updates(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    crd: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.e2e.jaas-py.test"},
        "spec": {
            "group": "e2e.jaas-py.test",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}}
    (tmp_path / "widgets.yaml").write_text(yaml.safe_dump_all([other, crd]))
    (tmp_path / "notes.txt").write_text("kind: CustomResourceDefinition\n")
    control_plane.install_crds([tmp_path])
    status, listing = control_plane.request("GET", "/apis/e2e.jaas-py.test/v1")
    assert status == 200
    assert [r["name"] for r in listing["resources"]] == ["widgets"]

    # Installing again updates the existing CRD: add a served v2.
    crd["spec"]["versions"].append(dict(crd["spec"]["versions"][0], name="v2", storage=False))
    (tmp_path / "widgets.yaml").write_text(yaml.safe_dump(crd))
    control_plane.install_crds([tmp_path])
    status, listing = control_plane.request("GET", "/apis/e2e.jaas-py.test/v2")
    assert status == 200
    assert [r["name"] for r in listing["resources"]] == ["widgets"]


def test_install_crds_rejects_a_missing_directory(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    with pytest.raises(ControlPlaneError, match="does not exist"):
        control_plane.install_crds([tmp_path / "nope"])


def test_missing_binaries_say_to_run_make_controlplane(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JAAS_CACHE", str(tmp_path))
    monkeypatch.delenv("JAAS_CONTROLPLANE_BIN", raising=False)
    monkeypatch.delenv("JAAS_FLUX_CRDS", raising=False)
    with pytest.raises(ControlPlaneError, match="make controlplane"):
        locate_binaries()
    monkeypatch.setenv("JAAS_CONTROLPLANE_BIN", str(tmp_path))
    monkeypatch.setenv("JAAS_FLUX_CRDS", str(tmp_path))
    with pytest.raises(ControlPlaneError, match=r"kube-apiserver is missing.*make controlplane"):
        locate_binaries()


def test_start_failure_reports_the_log_tail_and_leaves_no_process(tmp_path: Path) -> None:
    found = locate_binaries()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "etcd").symlink_to(found.etcd)
    # A kube-apiserver that fails at once, writing a recognisable line.
    (fake / "kube-apiserver").write_text("#!/bin/sh\necho 'E0000 boom: no storage' >&2\nexit 7\n")
    (fake / "kube-apiserver").chmod(0o755)
    binaries = type(found)(fake / "kube-apiserver", fake / "etcd", found.flux_crds)
    with pytest.raises(ControlPlaneError, match=r"(?s)kube-apiserver exited with status 7.*boom"):
        ControlPlane.start(tmp_path / "work", binaries=binaries, timeout=60)
    # etcd was stopped and its data directory removed.
    assert not list((tmp_path / "work").glob("etcd-data-*"))
    assert "=== attempt 1" in (tmp_path / "work" / "logs" / "etcd.log").read_text()


def test_separate_control_plane_retries_a_taken_port_serves_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first port handed out (etcd's client port) is already taken by someone else.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])
    real_free_port = processes.free_port
    monkeypatch.setattr(controlplane, "free_port", lambda: next(ports, None) or real_free_port())
    with taken, ControlPlane.start(tmp_path / "cp") as plane:
        assert plane.timings.attempts == 2
        assert "address already in use" in (plane.log_dir / "etcd.log").read_text()
        assert plane.server.startswith("https://127.0.0.1:")
        status, body = plane.request("GET", "/readyz")
        assert status == 200
        status, body = plane.request("GET", "/api/v1/namespaces/kube-system")
        assert status == 200
        assert body["metadata"]["name"] == "kube-system"
        config = yaml.safe_load(plane.kubeconfig.read_text())
        assert config["clusters"][0]["cluster"]["server"] == plane.server
        assert set(config["users"][0]["user"]) == {"client-certificate-data", "client-key-data"}
        assert plane.kubeconfig.stat().st_mode & 0o077 == 0
        assert min(plane.rss().values()) > 0
        data_dirs = list((tmp_path / "cp").glob("etcd-data-*"))
        assert len(data_dirs) == 1
    assert not plane.running
    assert not data_dirs[0].exists()
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        plane.request("GET", "/readyz", timeout=5)
    plane.stop()  # idempotent


def test_the_suite_runs_where_only_loopback_exists(control_plane: ControlPlane) -> None:
    # make test runs pytest under tools/netns/run: hostile network tests can
    # reach nothing but loopback, and the control plane must start without a
    # default route (the kernel's unreachable ::/0 on lo is none).
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
    assert not controlplane.has_default_route()
    assert control_plane.server.startswith("https://127.0.0.1:")
