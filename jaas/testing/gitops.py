"""The GitOps chain as Flux users write it: sources, snippets, Kustomizations, and waiting.

Manifests and waits shared by the chain tests, ``make demo`` and the
commit-to-cluster latency benchmark: a ``GitRepository`` or ``OCIRepository``
that real source-controller reconciles, a ``JsonnetSnippet`` reading it, a
``Kustomization`` (``kustomize.toolkit.fluxcd.io/v1``) that real
kustomize-controller applies from the snippet's ``ExternalArtifact``, and
``reconcile.fluxcd.io/requestedAt`` to ask a Flux object for a reconcile now
(what ``flux reconcile`` and Flux's notification receivers do, fluxcd/pkg
``apis/meta`` ``ReconcileRequestAnnotation``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from jaas.api.conditions import find_condition
from jaas.api.constants import (
    FLUX_SOURCE_API_VERSION,
    FLUX_SOURCE_GROUP,
    FLUX_SOURCE_VERSION,
    GROUP,
    REQUESTED_AT_ANNOTATION,
    SNIPPET_PLURAL,
    SOURCE_KIND_PLURALS,
    VERSION,
)
from jaas.operator.kube import KubeApiError, KubeClient, resource_path

Obj = dict[str, Any]

KUSTOMIZE_GROUP = "kustomize.toolkit.fluxcd.io"
KUSTOMIZE_VERSION = "v1"
#: ``spec.interval`` of the Flux objects made here: long, so that every change
#: in a test or benchmark is driven by a watch or by :func:`request_reconcile`.
INTERVAL = "10m"


def kustomization_path(namespace: str, name: str | None = None) -> str:
    """API path of Kustomizations in ``namespace`` (of one, with ``name``)."""
    return resource_path(KUSTOMIZE_GROUP, KUSTOMIZE_VERSION, "kustomizations", namespace, name)


def source_path(kind: str, namespace: str, name: str | None = None) -> str:
    """API path of Flux sources of ``kind`` (``GitRepository``, ``OCIRepository``)."""
    plural = SOURCE_KIND_PLURALS[kind]
    return resource_path(FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, plural, namespace, name)


def snippet_path(namespace: str, name: str | None = None) -> str:
    """API path of JsonnetSnippets in ``namespace`` (of one, with ``name``)."""
    return resource_path(GROUP, VERSION, SNIPPET_PLURAL, namespace, name)


def git_repository(name: str, url: str, *, branch: str = "main", labels: Obj | None = None) -> Obj:
    """A ``GitRepository`` following ``branch`` of the repository at ``url``."""
    return {
        "apiVersion": FLUX_SOURCE_API_VERSION,
        "kind": "GitRepository",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {"url": url, "interval": INTERVAL, "ref": {"branch": branch}, "timeout": "20s"},
    }


def oci_repository(name: str, url: str, *, tag: str) -> Obj:
    """An ``OCIRepository`` following ``tag`` of ``url`` (``oci://host:port/repo``, plain HTTP)."""
    return {
        "apiVersion": FLUX_SOURCE_API_VERSION,
        "kind": "OCIRepository",
        "metadata": {"name": name},
        "spec": {"url": url, "interval": INTERVAL, "ref": {"tag": tag}, "insecure": True},
    }


def kustomization(
    name: str, artifact: str, *, target_namespace: str, path: str = "./", prune: bool = True
) -> Obj:
    """A ``Kustomization`` applying the ``ExternalArtifact`` named ``artifact``.

    This is the manifest ``docs/consumers.md`` documents: ``sourceRef.kind:
    ExternalArtifact``, ``path: ./``, ``prune``, every object placed in
    ``target_namespace``.
    """
    return {
        "apiVersion": f"{KUSTOMIZE_GROUP}/{KUSTOMIZE_VERSION}",
        "kind": "Kustomization",
        "metadata": {"name": name},
        "spec": {
            "interval": INTERVAL,
            "retryInterval": "5s",
            "sourceRef": {"kind": "ExternalArtifact", "name": artifact},
            "path": path,
            "prune": prune,
            "targetNamespace": target_namespace,
        },
    }


async def create_in(client: KubeClient, collection: str, body: Obj) -> Obj:
    """POST ``body`` to ``collection`` and return the created object."""
    created: Obj = await client.create(collection, body)
    return created


async def request_reconcile(client: KubeClient, path: str) -> str:
    """Set Flux's ``reconcile.fluxcd.io/requestedAt`` on the object at ``path`` to now.

    Returns:
        The value written (an RFC 3339 time with microseconds).
    """
    value = datetime.now(UTC).isoformat(timespec="microseconds")
    annotations = {REQUESTED_AT_ANNOTATION: value}
    await client.merge_patch(path, {"metadata": {"annotations": annotations}})
    return value


def ready_condition(obj: Obj) -> Obj:
    """The ``Ready`` condition of ``obj`` (an empty dict if it has none)."""
    return find_condition((obj.get("status") or {}).get("conditions"), "Ready") or {}


async def poll(
    client: KubeClient,
    path: str,
    predicate: Callable[[Obj | None], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> Obj | None:
    """GET ``path`` until ``predicate`` holds for the object (None while it does not exist).

    Returns:
        The object (or None) that satisfied ``predicate``.

    Raises:
        TimeoutError: ``timeout`` seconds passed; the message names ``what``
            and shows the last object's status.
    """
    deadline = time.monotonic() + timeout
    obj: Obj | None = None
    while True:
        try:
            obj = await client.get(path)
        except KubeApiError as err:
            if not err.not_found:
                raise
            obj = None
        if predicate(obj):
            return obj
        if time.monotonic() > deadline:
            shown = (obj or {}).get("status", obj)
            raise TimeoutError(f"no {what} at {path} within {timeout:g} s; last: {shown}")
        await asyncio.sleep(interval)
