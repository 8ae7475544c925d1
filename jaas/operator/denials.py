"""Turn an API error that a retry cannot fix into an ``RBACDenied`` failure a user can act on.

metio/jaas ``internal/operator/reconciler.go`` (``isPermanentAPIError``,
``rbacDenialMessage``): Forbidden, a resource type the API server does not
serve (its CRD is missing), Invalid, BadRequest and MethodNotSupported are
``RBACDenied``, re-checked at the permanent-failure interval. The message
names the pipeline stage, the identity, the verb and the resource, and for a
missing CRD which one to install.
"""

from __future__ import annotations

from jaas.api.reasons import Reason, ReasonError
from jaas.operator.kube import KubeApiError

#: Where each CRD a reconcile may need comes from, for the "install it" hint.
_CRD_ORIGIN = {
    "source.toolkit.fluxcd.io": "Flux source-controller (ExternalArtifact needs v1.7 or newer)",
    "jaas.metio.wtf": "jaas-py's deploy/crds",
}

TENANT_ROLE_HINT = "deploy/rbac/tenant-role.yaml lists what a tenant ServiceAccount needs"


def denied(stage: str, err: KubeApiError, *, what: str = "") -> ReasonError:
    """The ``RBACDenied`` failure for a permanent API error at ``stage``.

    Args:
        stage: the pipeline stage, e.g. ``"resolve source"``, ``"publish"``.
        err: the API server's answer (``err.permanent`` should hold).
        what: the object asked for, e.g. ``GitRepository team-a/repo`` (optional).
    """
    who = err.identity or "the operator"
    target = f"{err.resource}" + (f" ({what})" if what else "")
    if err.resource_not_served:
        crd = err.resource.partition("/")[0]
        group = crd.partition(".")[2]
        origin = _CRD_ORIGIN.get(group, "the project that defines it")
        message = (
            f"{stage}: the API server does not serve {crd}; install its "
            f"CustomResourceDefinition ({origin})"
        )
    elif err.status == 403:
        message = (
            f"RBAC denied at {stage}: {who} may not {err.verb} {target}; grant it "
            f"({TENANT_ROLE_HINT}). The API server said: {err.message}"
        )
    elif err.status == 405:
        message = f"{stage}: the API server does not support {err.verb} on {target}: {err.message}"
    else:
        message = (
            f"{stage}: the API server rejected {err.verb} {target} and a retry will not "
            f"change that: {err.message}"
        )
    return ReasonError(Reason.RBAC_DENIED, message)
