"""Publish a packaged artifact: store it, then point the ExternalArtifact at it.

Order and shape follow metio/jaas ``internal/operator/publisher.go``: store
Put (content addressed, skip if present) → upsert the ExternalArtifact (spec,
then status through the status subresource) → prune revisions outside the
keep-set, so the ExternalArtifact never points at a pruned file. The
ExternalArtifact has the snippet's name and namespace, ``spec.sourceRef``
``{apiVersion: jaas.metio.wtf/v1, kind: JsonnetSnippet, name}`` and a
``Ready=True`` condition with reason ``Succeeded``; it is never set to
``Ready=False``: after a failed reconcile it keeps pointing at the last good
artifact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from jaas.api.conditions import find_condition, now_rfc3339, set_condition
from jaas.api.constants import (
    API_VERSION,
    EXTERNAL_ARTIFACT_KIND,
    EXTERNAL_ARTIFACT_PLURAL,
    EXTERNAL_ARTIFACT_READY_REASON,
    FLUX_SOURCE_API_VERSION,
    FLUX_SOURCE_GROUP,
    FLUX_SOURCE_VERSION,
    READY,
    SNIPPET_KIND,
)
from jaas.operator.kube import KubeApiError, KubeClient, Obj, resource_path
from jaas.storage.local import Pruned, Stored
from jaas.storage.package import Package


class Store(Protocol):
    """What the publisher needs of ``jaas.storage.local.LocalStore`` (blocking calls)."""

    def put(self, namespace: str, name: str, package: Package) -> Stored:
        """Store the package (never rewriting a stored revision); say what is served."""
        ...

    def prune(self, namespace: str, name: str, keep: set[str], *, grace: float = 0.0) -> Pruned:
        """Delete revisions not in ``keep`` once superseded for ``grace`` seconds."""
        ...

    def delete(self, namespace: str, name: str) -> Any:
        """Delete every stored revision of the snippet."""
        ...


@dataclass(frozen=True)
class Artifact:
    """Flux's ``meta.Artifact`` as JaaS publishes it (``metadata`` is never written)."""

    url: str
    path: str
    revision: str
    digest: str
    size: int
    last_update_time: str

    def to_api(self) -> dict[str, Any]:
        """The ``status.artifact`` object."""
        return {
            "url": self.url,
            "path": self.path,
            "revision": self.revision,
            "digest": self.digest,
            "size": self.size,
            "lastUpdateTime": self.last_update_time,
        }


@dataclass(frozen=True)
class Published:
    """A publish: the artifact now advertised, and when the next stored revision expires.

    ``prune_in``: seconds until a revision outside the keep-set reaches its GC
    grace (``None``: none is waiting), so the caller can come back then.
    """

    artifact: Artifact
    prune_in: float | None


def external_artifact_path(namespace: str, name: str | None = None) -> str:
    """API path of an ExternalArtifact (or of the namespace's collection)."""
    return resource_path(
        FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, EXTERNAL_ARTIFACT_PLURAL, namespace, name
    )


def desired_source_ref(name: str) -> dict[str, str]:
    """The ``spec.sourceRef`` back-pointer JaaS writes (no namespace: same as the EA's)."""
    return {"apiVersion": API_VERSION, "kind": SNIPPET_KIND, "name": name}


class Publisher:
    """Stores artifacts and maintains ExternalArtifacts.

    Every ExternalArtifact write goes through the ``client`` passed to the
    call: the tenant's view in the reconciler, so the tenant needs create and
    patch on ``externalartifacts`` and patch on ``externalartifacts/status``
    (``deploy/rbac/tenant-role.yaml``). What the ExternalArtifact looks like
    now is taken from ``cached`` (the operator's watch cache), which saves a
    GET per publish and lets an unchanged artifact cost no API call at all.

    ``base_url`` is ``--storage-base-url``; artifact URLs are
    ``<base_url>/<namespace>/<name>/sha256-<hex>.tar.gz``. Revisions outside
    the keep-set are deleted once superseded for ``gc_grace`` seconds
    (``--artifact-gc-grace``, JaaS default 5m), so a consumer that read the old
    URL a moment ago can still download it.
    """

    def __init__(
        self,
        store: Store,
        base_url: str,
        *,
        gc_grace: float,
        cached: Callable[[str, str], Obj | None] = lambda _ns, _name: None,
    ) -> None:
        self.store = store
        self.base_url = base_url.rstrip("/")
        self.gc_grace = gc_grace
        self.cached = cached

    async def publish(
        self, client: KubeClient, namespace: str, name: str, package: Package, keep: set[str]
    ) -> Published:
        """Store ``package``, upsert the ExternalArtifact, prune to ``keep`` (file names).

        Raises:
            KubeApiError: the ExternalArtifact could not be written.
            OSError: the store could not be written.
        """
        stored = await asyncio.to_thread(self.store.put, namespace, name, package)
        artifact = Artifact(
            url=f"{self.base_url}/{stored.path}",
            path=stored.path,
            revision=package.revision,
            digest=stored.digest,
            size=stored.size,
            last_update_time=now_rfc3339(),
        )
        artifact = await self.upsert_external_artifact(client, namespace, name, artifact)
        pruned = await self.prune(namespace, name, keep | {package.file_name})
        return Published(artifact, pruned)

    async def prune(self, namespace: str, name: str, keep: set[str]) -> float | None:
        """Delete stored revisions outside ``keep`` past their grace; seconds until the next.

        An empty ``keep`` prunes nothing.

        Raises:
            OSError: a file could not be deleted.
        """
        pruned = await asyncio.to_thread(
            functools.partial(self.store.prune, namespace, name, keep, grace=self.gc_grace)
        )
        return pruned.next_in

    async def upsert_external_artifact(
        self, client: KubeClient, namespace: str, name: str, artifact: Artifact
    ) -> Artifact:
        """Create or update the ExternalArtifact and its status; return the artifact as written.

        An unchanged artifact keeps its ``lastUpdateTime`` and causes no write.

        Raises:
            KubeApiError: a write was refused.
        """
        path = external_artifact_path(namespace, name)
        ea = self.cached(namespace, name)
        if ea is None:
            ea = await self._create(client, namespace, name)
        elif (ea.get("spec") or {}).get("sourceRef") != desired_source_ref(name):
            try:
                ea = await client.merge_patch(
                    path, {"spec": {"sourceRef": desired_source_ref(name)}}
                )
            except KubeApiError as err:
                if not err.not_found:
                    raise
                ea = await self._create(client, namespace, name)  # deleted behind the cache
        status = ea.get("status") or {}
        current = status.get("artifact") or {}
        ready = find_condition(status.get("conditions"), READY)
        same = all(
            current.get(k) == v for k, v in artifact.to_api().items() if k != "lastUpdateTime"
        )
        if same and current.get("lastUpdateTime"):
            artifact = dataclasses.replace(
                artifact, last_update_time=str(current["lastUpdateTime"])
            )
            if ready is not None and ready.get("status") == "True":
                return artifact
        generation = (ea.get("metadata") or {}).get("generation")
        conditions = set_condition(
            status.get("conditions"),
            type_=READY,
            status=True,
            reason=EXTERNAL_ARTIFACT_READY_REASON,
            message="artifact published",
            observed_generation=generation if isinstance(generation, int) else None,
        )
        patch: Obj = {"status": {"artifact": artifact.to_api(), "conditions": conditions}}
        if isinstance(generation, int):
            patch["status"]["observedGeneration"] = generation
        try:
            await client.merge_patch(path + "/status", patch)
        except KubeApiError as err:
            if not err.not_found or self.cached(namespace, name) is None:
                raise
            # Deleted behind the cache: create it again and write its status.
            await self._create(client, namespace, name)
            await client.merge_patch(path + "/status", patch)
        return artifact

    async def _create(self, client: KubeClient, namespace: str, name: str) -> Obj:
        body = {
            "apiVersion": FLUX_SOURCE_API_VERSION,
            "kind": EXTERNAL_ARTIFACT_KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"sourceRef": desired_source_ref(name)},
        }
        try:
            created: Obj = await client.create(external_artifact_path(namespace), body)
            return created
        except KubeApiError as err:
            if not err.conflict:
                raise
        # It exists although the cache has not seen it yet: set its spec blindly
        # (a merge patch needs no read, so no get permission either).
        patched: Obj = await client.merge_patch(
            external_artifact_path(namespace, name),
            {"spec": {"sourceRef": desired_source_ref(name)}},
        )
        return patched

    async def withdraw_external_artifact(
        self, client: KubeClient, namespace: str, name: str
    ) -> None:
        """Delete the ExternalArtifact; one that is already gone is fine.

        Raises:
            KubeApiError: the deletion was refused or failed.
        """
        try:
            await client.delete(external_artifact_path(namespace, name))
        except KubeApiError as err:
            if not err.not_found:
                raise

    async def delete_stored(self, namespace: str, name: str) -> None:
        """Delete every stored revision of the snippet (needs no API access).

        Raises:
            OSError: the files could not be removed.
        """
        await asyncio.to_thread(self.store.delete, namespace, name)
