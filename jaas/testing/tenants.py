"""Tenants for tests, the demo and load tests: a ServiceAccount bound to jaas-py's tenant Role.

jaas-py acts as each snippet's ServiceAccount; ``grant_tenant`` creates one
and binds it to ``deploy/rbac/tenant-role.yaml`` (or to other rules, to take
a permission away), as a cluster administrator would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jaas.operator.kube import KubeApiError, KubeClient

Obj = dict[str, Any]

_RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac"
#: deploy/rbac/tenant-role.yaml, the Role a tenant's ServiceAccount needs.
TENANT_ROLE: Obj = yaml.safe_load((_RBAC / "tenant-role.yaml").read_text())
#: The ServiceAccount every test namespace gets, bound to TENANT_ROLE; the
#: session's operator runs with ``--default-service-account tenant``.
TENANT_SA = "tenant"
RBAC_API = "/apis/rbac.authorization.k8s.io/v1"


async def _create_or_replace(client: KubeClient, collection: str, body: Obj) -> None:
    try:
        await client.create(collection, body)
    except KubeApiError as err:
        if not err.conflict:
            raise
        path = f"{collection}/{body['metadata']['name']}"
        current = await client.get(path)
        await client.request(
            "PUT", path, body={**body, "metadata": {**body["metadata"], **current["metadata"]}}
        )


async def grant_tenant(
    client: KubeClient,
    namespace: str,
    *,
    service_account: str = TENANT_SA,
    rules: list[Obj] | None = None,
    role: str = "jaas-tenant",
) -> None:
    """Create ``service_account`` and bind it to a Role with ``rules`` (default TENANT_ROLE's).

    Calling it again with other rules replaces the Role's rules.
    """
    await _create_or_replace(
        client,
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"metadata": {"name": service_account}},
    )
    await _create_or_replace(
        client,
        f"{RBAC_API}/namespaces/{namespace}/roles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": role},
            "rules": TENANT_ROLE["rules"] if rules is None else rules,
        },
    )
    await _create_or_replace(
        client,
        f"{RBAC_API}/namespaces/{namespace}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{role}-{service_account}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [
                {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
            ],
        },
    )
