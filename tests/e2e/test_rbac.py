"""The operator works with exactly deploy/rbac's ClusterRole (a real ServiceAccount token).

Its tenants work with exactly deploy/rbac/tenant-role.yaml.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from jaas.operator.kube import KubeApiError, KubeClient
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.flux import FluxPublisher, make_git_repo
from jaas.testing.operator import OperatorProcess
from tests.e2e.conftest import OPERATOR_ARGS
from tests.e2e.helpers import (
    create_namespace,
    create_snippet,
    get_external_artifact,
    snippet_path,
    wait_for,
    wait_reason,
)

ROLE = Path(__file__).resolve().parents[2] / "deploy" / "rbac" / "operator-clusterrole.yaml"


@pytest.fixture(scope="module")
def own_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of its own: no other operator may hold the snippets."""
    plane = ControlPlane.start(tmp_path_factory.mktemp("rbac-plane"), default_crd_dirs())
    yield plane
    plane.stop()


@pytest_asyncio.fixture
async def admin(own_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = KubeClient(await api_client_from_kubeconfig(own_plane.kubeconfig))
    yield client
    await client.close()


async def service_account_kubeconfig(plane: ControlPlane, admin: KubeClient, path: Path) -> Path:
    """Create the ServiceAccount deploy/rbac binds; return a kubeconfig with its token."""
    await admin.create("/api/v1/namespaces", {"metadata": {"name": "jaas-system"}})
    await admin.create(
        "/api/v1/namespaces/jaas-system/serviceaccounts", {"metadata": {"name": "jaas-operator"}}
    )
    for doc in yaml.safe_load_all(ROLE.read_text()):
        plural = "clusterroles" if doc["kind"] == "ClusterRole" else "clusterrolebindings"
        await admin.create(f"/apis/rbac.authorization.k8s.io/v1/{plural}", doc)
    token = await admin.create(
        "/api/v1/namespaces/jaas-system/serviceaccounts/jaas-operator/token",
        {"spec": {"expirationSeconds": 3600}},
    )
    return plane.write_token_kubeconfig(path, token["status"]["token"])


async def test_the_documented_cluster_role_is_enough(
    own_plane: ControlPlane, admin: KubeClient, tmp_path: Path
) -> None:
    kubeconfig = await service_account_kubeconfig(own_plane, admin, tmp_path / "sa.kubeconfig")
    # The token really is limited: it may not read Secrets.
    limited = KubeClient(await api_client_from_kubeconfig(kubeconfig))
    with pytest.raises(KubeApiError) as denied:
        await limited.get("/api/v1/namespaces/jaas-system/secrets")
    assert denied.value.status == 403
    await limited.close()

    await create_namespace(admin, "team-a")
    with OperatorProcess(kubeconfig, tmp_path / "op", extra_args=OPERATOR_ARGS) as operator:
        async with FluxPublisher() as flux:
            repo = tmp_path / "repo"
            make_git_repo(repo, {"main.jsonnet": "{ from: 'git' }"}, "c1")
            await flux.publish_git(admin.api, "team-a", "repo", repo)
            await create_snippet(
                admin, "team-a", "git", sourceRef={"kind": "GitRepository", "name": "repo"}
            )
            await create_snippet(admin, "team-a", "inline", files={"main.jsonnet": "{}"})
            await wait_reason(admin, "team-a", "git", "Synced")
            await wait_reason(admin, "team-a", "inline", "Synced")
            # Chaining reads another snippet's ExternalArtifact, also as the tenant.
            await create_snippet(
                admin,
                "team-a",
                "chained",
                sourceRef={"kind": "ExternalArtifact", "name": "git"},
                entryFile="rendered.json",
            )
            await wait_reason(admin, "team-a", "chained", "Synced")
            events = await admin.get("/apis/events.k8s.io/v1/namespaces/team-a/events")
            assert {e["regarding"]["name"] for e in events["items"]} == {"git", "inline", "chained"}
            await admin.delete(snippet_path("team-a", "inline"))
            await wait_for(
                admin,
                snippet_path("team-a"),
                lambda lst: "inline" not in [i["metadata"]["name"] for i in lst["items"]],
                what="the deleted snippet to be gone",
            )
            with pytest.raises(KubeApiError) as gone:
                await get_external_artifact(admin, "team-a", "inline")
            assert gone.value.not_found
        log = operator.log_path.read_text()
        assert "Forbidden" not in log
        # An HTTP 403 anywhere, but not the milliseconds of a timestamp (".403+00:00").
        assert re.search(r"(?<![\d.])403(?!\d)", log) is None
