"""Time from ``git commit`` to the changed ConfigMap in the cluster, through real Flux.

Starts a control plane, real source-controller and kustomize-controller
(``make flux``), a Git server on 127.0.0.1 and ``jaas operator --shards 2``;
sets up GitRepository → JsonnetSnippet → ExternalArtifact → Kustomization
(``prune: true``); then ``--runs`` times: commits a new ConfigMap value,
annotates the GitRepository with ``reconcile.fluxcd.io/requestedAt`` (what a
Git push webhook through Flux's notification receiver does; the source's
``spec.interval`` is 10 minutes, so nothing else triggers it) and polls the
ConfigMap every 20 ms until it holds the new value. Prints each run and the
median, plus the share of each hop (source-controller's new revision,
jaas-py's new ExternalArtifact revision, kustomize-controller's apply) as
seen by polling. Asserts nothing.

    .venv/bin/python -m loadtests.flux_chain_latency --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from jaas.operator.kube import KubeClient
from jaas.operator.publisher import external_artifact_path
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.flux import make_git_repo
from jaas.testing.fluxcontrollers import FluxControllers
from jaas.testing.gitops import (
    create_in,
    git_repository,
    kustomization,
    kustomization_path,
    poll,
    request_reconcile,
    snippet_path,
    source_path,
)
from jaas.testing.gitserver import GitHttpServer
from jaas.testing.operator import OperatorProcess
from jaas.testing.tenants import TENANT_SA, grant_tenant

NAMESPACE = "latency"
PROGRAM = "{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'app'}, data: import 'data.json'}"
POLL = 0.02
TIMEOUT = 120.0


def _artifact_revision(obj: dict[str, object] | None) -> str:
    status = (obj or {}).get("status")
    artifact = status.get("artifact") if isinstance(status, dict) else None
    return str(artifact.get("revision", "")) if isinstance(artifact, dict) else ""


async def run_once(client: KubeClient, git: GitHttpServer, value: str) -> tuple[float, ...]:
    """Commit ``value``, request a reconcile; return seconds to each hop and to the ConfigMap.

    The hops: source-controller's artifact names the commit; jaas-py's
    ExternalArtifact has a new revision; the ConfigMap holds ``value``.
    """
    rendered_before = _artifact_revision(await client.get(external_artifact_path(NAMESPACE, "app")))
    repo = git.repository_path(NAMESPACE)
    started = time.monotonic()
    commit = await asyncio.to_thread(
        make_git_repo, repo, {"data.json": f'{{"value": "{value}"}}'}, value
    )
    await request_reconcile(client, source_path("GitRepository", NAMESPACE, "app"))
    hops: list[tuple[str, Callable[[dict[str, object] | None], bool]]] = [
        (
            source_path("GitRepository", NAMESPACE, "app"),
            lambda o: _artifact_revision(o).endswith(commit),
        ),
        (
            external_artifact_path(NAMESPACE, "app"),
            lambda o: _artifact_revision(o) not in ("", rendered_before),
        ),
        (
            f"/api/v1/namespaces/{NAMESPACE}/configmaps/app",
            lambda o: (o or {}).get("data") == {"value": value},
        ),
    ]
    marks: list[float] = []
    for path, predicate in hops:
        await poll(client, path, predicate, timeout=TIMEOUT, what=path, interval=POLL)
        marks.append(time.monotonic() - started)
    return tuple(marks)


async def measure(runs: int, workdir: Path) -> None:
    """Set up the chain, run it ``runs`` times and print the figures."""
    plane = await asyncio.to_thread(ControlPlane.start, workdir / "cp", default_crd_dirs())
    operator = OperatorProcess(
        plane.kubeconfig,
        workdir / "op",
        extra_args=["--artifact-allow-loopback", "--default-service-account", TENANT_SA],
    )
    client = KubeClient(await api_client_from_kubeconfig(plane.kubeconfig))
    flux = await asyncio.to_thread(FluxControllers.start, plane, workdir / "flux")
    try:
        await asyncio.to_thread(operator.start)
        with GitHttpServer(workdir / "git") as git:
            await client.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
            await grant_tenant(client, NAMESPACE)
            make_git_repo(
                git.repository_path(NAMESPACE),
                {"main.jsonnet": PROGRAM, "data.json": '{"value": "initial"}'},
                "initial",
            )
            await create_in(
                client,
                source_path("GitRepository", NAMESPACE),
                git_repository("app", git.url(NAMESPACE)),
            )
            await create_in(
                client,
                snippet_path(NAMESPACE),
                {
                    "apiVersion": "jaas.metio.wtf/v1",
                    "kind": "JsonnetSnippet",
                    "metadata": {"name": "app"},
                    "spec": {"sourceRef": {"kind": "GitRepository", "name": "app"}},
                },
            )
            await create_in(
                client,
                kustomization_path(NAMESPACE),
                kustomization("app", "app", target_namespace=NAMESPACE),
            )
            await poll(
                client,
                "/api/v1/namespaces/latency/configmaps/app",
                lambda o: (o or {}).get("data", {}).get("value") == "initial",
                timeout=TIMEOUT,
                what="initial ConfigMap",
            )
            totals = []
            print(f"{'run':>4} {'source':>8} {'jaas-py':>8} {'applied':>8}  (seconds after commit)")
            for run in range(1, runs + 1):
                source, rendered, applied = await run_once(client, git, f"value-{run}")
                totals.append(applied)
                print(f"{run:>4} {source:>8.2f} {rendered:>8.2f} {applied:>8.2f}")
            print(
                f"git commit → changed ConfigMap: median {statistics.median(totals):.2f} s "
                f"over {runs} runs (min {min(totals):.2f}, max {max(totals):.2f}); "
                "trigger: reconcile.fluxcd.io/requestedAt on the GitRepository"
            )
    finally:
        await client.close()
        await asyncio.to_thread(operator.stop)
        await asyncio.to_thread(flux.stop)
        await asyncio.to_thread(plane.stop)


def main() -> None:
    """Parse the arguments and run the measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="commits to time (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaas-latency-") as tmp:
        asyncio.run(measure(args.runs, Path(tmp)))


if __name__ == "__main__":
    main()
