"""``make demo``: the GitOps chain on a real control plane, end to end, in one command.

Starts kube-apiserver and etcd (``make controlplane``), Flux's real
source-controller and kustomize-controller (``make flux``), a Git server on
127.0.0.1 and ``jaas operator --shards 2``. Then, as a user would:

1. commits ``examples/git-repo`` to a Git repository and creates the
   GitRepository of ``examples/git-repository.yaml`` pointing at it;
2. applies every other manifest of ``examples/``: JsonnetSnippets (one reads
   the GitRepository) and the Kustomizations of ``examples/kustomizations.yaml``
   that deploy their ExternalArtifacts;
3. waits until the snippets and Kustomizations are Ready and prints them, the
   ExternalArtifacts and the objects kustomize-controller applied;
4. changes the Jsonnet's data in Git, commits, asks source-controller to
   reconcile (``reconcile.fluxcd.io/requestedAt``, what a push webhook does)
   and prints the changed Deployment and how long the chain took.

``--once`` stops after that and exits 0 only if every step happened;
otherwise everything keeps running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jaas.api.constants import (
    FLUX_SOURCE_GROUP,
    FLUX_SOURCE_VERSION,
    GROUP,
    LIBRARY_PLURAL,
    SNIPPET_PLURAL,
    SOURCE_KIND_PLURALS,
    VERSION,
)
from jaas.operator.kube import KubeApiError, KubeClient, resource_path
from jaas.operator.publisher import external_artifact_path
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.flux import make_git_repo
from jaas.testing.fluxcontrollers import FluxControllers
from jaas.testing.gitops import (
    KUSTOMIZE_GROUP,
    KUSTOMIZE_VERSION,
    create_in,
    kustomization_path,
    poll,
    ready_condition,
    request_reconcile,
    snippet_path,
    source_path,
)
from jaas.testing.gitserver import GitHttpServer
from jaas.testing.operator import OperatorProcess
from jaas.testing.tenants import TENANT_SA, grant_tenant

Obj = dict[str, Any]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMESPACE = "jaas-demo"
#: The GitRepository of examples/git-repository.yaml and the repository it serves.
GIT_SOURCE = "jaas-examples"
#: kind -> (group, version, plural) of what examples/*.yaml may hold.
KINDS = {
    "JsonnetSnippet": (GROUP, VERSION, SNIPPET_PLURAL),
    "JsonnetLibrary": (GROUP, VERSION, LIBRARY_PLURAL),
    "Kustomization": (KUSTOMIZE_GROUP, KUSTOMIZE_VERSION, "kustomizations"),
    "GitRepository": (FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, SOURCE_KIND_PLURALS["GitRepository"]),
}
#: Seconds each wait of the demo may take.
STEP_TIMEOUT = 120.0
#: The change step 4 commits: production gets 5 replicas of a new image.
CHANGED_ENVIRONMENTS = {
    "staging": {"replicas": 1, "image": "ghcr.io/example/web:1.4.0-rc.1"},
    "production": {"replicas": 5, "image": "ghcr.io/example/web:1.4.0"},
}


def table(rows: Sequence[Sequence[str]]) -> str:
    """Format rows as ``kubectl get`` does: left-aligned columns, three spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def example_documents() -> list[Obj]:
    """Every manifest in ``examples/*.yaml``, in file order."""
    return [
        doc
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def collection(doc: Obj) -> str:
    """The API path a manifest is created at, in the demo namespace."""
    group, version, plural = KINDS[doc["kind"]]
    return resource_path(group, version, plural, NAMESPACE)


def git_files() -> dict[str, bytes]:
    """The files of ``examples/git-repo`` by path."""
    root = EXAMPLES / "git-repo"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@dataclass
class Demo:
    """The demo's running parts and what it has seen (``ok`` turns False on any failed step)."""

    client: KubeClient
    git: GitHttpServer
    ok: bool = True
    snippets: list[str] = field(default_factory=list)
    kustomizations: list[str] = field(default_factory=list)

    def step(self, text: str) -> None:
        """Print a step heading."""
        print(f"\n==> {text}", flush=True)

    def fail(self, text: str) -> None:
        """Record and print a failed step."""
        self.ok = False
        print(f"FAILED: {text}", flush=True)

    async def apply_examples(self) -> None:
        """Commit examples/git-repo, then create every manifest of examples/ in the namespace."""
        repo = self.git.repository_path(GIT_SOURCE)
        commit = await asyncio.to_thread(make_git_repo, repo, git_files(), "demo: initial commit")
        self.step(
            f"committed examples/git-repo as {commit[:12]}, served at {self.git.url(GIT_SOURCE)}"
        )
        for doc in example_documents():
            doc["metadata"]["namespace"] = NAMESPACE
            if doc["kind"] == "GitRepository":
                doc["spec"]["url"] = self.git.url(doc["metadata"]["name"])
            await create_in(self.client, collection(doc), doc)
            name = doc["metadata"]["name"]
            print(f"    created {doc['kind']} {name}")
            if doc["kind"] == "JsonnetSnippet":
                self.snippets.append(name)
            elif doc["kind"] == "Kustomization":
                self.kustomizations.append(name)

    async def wait_ready(self) -> None:
        """Wait until every snippet and Kustomization is Ready=True (or say which is not)."""
        started = time.monotonic()
        paths = [snippet_path(NAMESPACE, n) for n in self.snippets] + [
            kustomization_path(NAMESPACE, n) for n in self.kustomizations
        ]
        for path in paths:
            try:
                await poll(
                    self.client,
                    path,
                    lambda o: ready_condition(o or {}).get("status") == "True",
                    timeout=STEP_TIMEOUT,
                    what="Ready=True",
                )
            except TimeoutError as err:
                self.fail(str(err))
        print(f"    all Ready after {time.monotonic() - started:.1f} s")

    async def show_status(self) -> None:
        """Print the snippets, ExternalArtifacts and Kustomizations as ``kubectl get`` would."""
        rows = [["NAME", "READY", "REASON", "REVISION", "MESSAGE"]]
        for name in sorted(self.snippets):
            obj = await self.client.get(snippet_path(NAMESPACE, name))
            cond = ready_condition(obj)
            rows.append(
                [
                    name,
                    str(cond.get("status", "Unknown")),
                    str(cond.get("reason", "")),
                    str((obj.get("status") or {}).get("revision", ""))[:19],
                    str(cond.get("message", ""))[:90],
                ]
            )
        print(f"\n$ kubectl get jsonnetsnippets -n {NAMESPACE}")
        print(table(rows))
        rows = [["NAME", "REVISION", "DIGEST", "SIZE", "URL"]]
        for name in sorted(self.snippets):
            with contextlib.suppress(KubeApiError):
                ea = await self.client.get(external_artifact_path(NAMESPACE, name))
                art = (ea.get("status") or {}).get("artifact") or {}
                rows.append(
                    [
                        name,
                        str(art.get("revision", ""))[:19],
                        str(art.get("digest", ""))[:19],
                        str(art.get("size", "")),
                        str(art.get("url", "")),
                    ]
                )
        print(f"\n$ kubectl get externalartifacts -n {NAMESPACE}")
        print(table(rows))
        rows = [["NAME", "READY", "APPLIED REVISION", "OBJECTS"]]
        for name in sorted(self.kustomizations):
            ks = await self.client.get(kustomization_path(NAMESPACE, name))
            status = ks.get("status") or {}
            entries = (status.get("inventory") or {}).get("entries") or []
            rows.append(
                [
                    name,
                    str(ready_condition(ks).get("status", "Unknown")),
                    str(status.get("lastAppliedRevision", ""))[:19],
                    str(len(entries)),
                ]
            )
        print(f"\n$ kubectl get kustomizations -n {NAMESPACE}")
        print(table(rows))

    async def show_objects(self) -> None:
        """Print the objects kustomize-controller applied (from each Kustomization's inventory)."""
        rows = [["KIND", "NAME", "DETAILS"]]
        for name in sorted(self.kustomizations):
            ks = await self.client.get(kustomization_path(NAMESPACE, name))
            for entry in ((ks.get("status") or {}).get("inventory") or {}).get("entries") or []:
                namespace, obj_name, group, kind = entry["id"].split("_")
                path = _object_path(namespace, obj_name, group, entry["v"], kind)
                obj = await self.client.get(path)
                rows.append([kind, obj_name, _details(obj)])
        print(f"\n$ kubectl get deployments,services,configmaps -n {NAMESPACE}")
        print(table(rows))
        if len(rows) == 1:
            self.fail("kustomize-controller applied no objects")

    async def change_and_follow(self) -> None:
        """Commit a change to the Jsonnet's data and follow it through the chain."""
        repo = self.git.repository_path(GIT_SOURCE)
        changed = {"configs/lib/environments.json": json.dumps(CHANGED_ENVIRONMENTS, indent=2)}
        started = time.monotonic()
        commit = await asyncio.to_thread(
            make_git_repo, repo, changed, "production: 5 replicas of web 1.4.0"
        )
        self.step(
            f"committed {commit[:12]}: production gets 5 replicas of web:1.4.0; "
            f"annotating GitRepository {GIT_SOURCE} with reconcile.fluxcd.io/requestedAt"
        )
        await request_reconcile(self.client, source_path("GitRepository", NAMESPACE, GIT_SOURCE))
        try:
            await poll(
                self.client,
                _object_path(NAMESPACE, "web", "apps", "v1", "Deployment"),
                lambda o: (o or {}).get("spec", {}).get("replicas") == 5,
                timeout=STEP_TIMEOUT,
                what="Deployment web with 5 replicas",
            )
        except TimeoutError as err:
            self.fail(str(err))
            return
        took = time.monotonic() - started
        print(
            f"    git commit → Deployment changed in the cluster in {took:.1f} s "
            "(source-controller → jaas-py → kustomize-controller)"
        )
        await self.show_objects()


def _object_path(namespace: str, name: str, group: str, version: str, kind: str) -> str:
    plural = {"Deployment": "deployments", "Service": "services", "ConfigMap": "configmaps"}[kind]
    return resource_path(group, version, plural, namespace, name)


def _details(obj: Obj) -> str:
    spec = obj.get("spec") or {}
    if obj["kind"] == "Deployment":
        containers = spec["template"]["spec"]["containers"]
        return f"replicas={spec['replicas']} image={containers[0]['image']}"
    if obj["kind"] == "Service":
        return "ports=" + ",".join(str(p["port"]) for p in spec.get("ports", []))
    return "data=" + json.dumps(obj.get("data") or {}, ensure_ascii=False)


async def demo(once: bool, workdir: Path) -> int:
    """Run the demo; return the process exit code."""
    print(f"==> starting kube-apiserver and etcd (work dir {workdir})", flush=True)
    plane = await asyncio.to_thread(
        ControlPlane.start, workdir / "controlplane", default_crd_dirs()
    )
    operator = OperatorProcess(
        plane.kubeconfig,
        workdir / "operator",
        shards=2,
        extra_args=["--artifact-allow-loopback", "--default-service-account", TENANT_SA],
    )
    api = await api_client_from_kubeconfig(plane.kubeconfig)
    client = KubeClient(api)
    flux: FluxControllers | None = None
    try:
        print(f"    ready at {plane.server} in {plane.timings.total_ready:.1f} s")
        print("==> starting source-controller and kustomize-controller", flush=True)
        flux = await asyncio.to_thread(FluxControllers.start, plane, workdir / "flux")
        print("==> starting jaas operator --shards 2", flush=True)
        await asyncio.to_thread(operator.start)
        with GitHttpServer(workdir / "git") as git:
            await client.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
            await grant_tenant(client, NAMESPACE)
            run = Demo(client, git)
            await run.apply_examples()
            run.step("waiting for the snippets and Kustomizations to be Ready")
            await run.wait_ready()
            await run.show_status()
            await run.show_objects()
            await run.change_and_follow()
            if once:
                print(f"\n==> demo {'succeeded' if run.ok else 'FAILED'}; stopping")
                return 0 if run.ok else 1
            print(
                f"\n==> running; try: KUBECONFIG={plane.kubeconfig} kubectl get jsnip,ks -A\n"
                "    press Ctrl-C to stop",
                flush=True,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            return 0 if run.ok else 1
    finally:
        await client.close()
        await asyncio.to_thread(operator.stop)
        if flux is not None:
            await asyncio.to_thread(flux.stop)
        await asyncio.to_thread(plane.stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m jaas.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--once", action="store_true", help="stop after printing the result")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jaas-demo-") as tmp:
        return asyncio.run(demo(args.once, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
