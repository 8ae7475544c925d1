"""``make demo``: jaas-py on a real control plane, end to end, in one command.

Starts kube-apiserver and etcd (built by ``make controlplane``), then
``jaas operator --shards 2``; commits ``examples/git-repo`` into a real git
repository and publishes it as a Flux GitRepository artifact (playing
source-controller's part); applies every manifest in ``examples/``; waits for
the snippets to become Ready; prints them and their ExternalArtifacts as
``kubectl get`` would; downloads one artifact, checks its digest and prints
the rendered JSON. ``--once`` stops after that (exit 0 only if every snippet
became Ready); otherwise it keeps running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import io
import signal
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from jaas.api.conditions import find_condition
from jaas.api.constants import GROUP, LIBRARY_PLURAL, SNIPPET_PLURAL, VERSION
from jaas.operator.kube import KubeApiError, KubeClient, resource_path
from jaas.operator.publisher import external_artifact_path
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.flux import FluxPublisher, make_git_repo
from jaas.testing.operator import OperatorProcess
from jaas.testing.tenants import TENANT_SA, grant_tenant

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMESPACE = "jaas-demo"
GIT_SOURCE = "jaas-examples"
PLURALS = {"JsonnetSnippet": SNIPPET_PLURAL, "JsonnetLibrary": LIBRARY_PLURAL}


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "-"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - then).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Format rows as ``kubectl get`` does: left-aligned columns, three spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


async def apply_examples(client: KubeClient) -> list[str]:
    """Create every object of ``examples/*.yaml`` in the demo namespace; return snippet names."""
    names = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            group, _, version = doc["apiVersion"].rpartition("/")
            plural = PLURALS[doc["kind"]]
            doc["metadata"]["namespace"] = NAMESPACE
            with contextlib.suppress(KubeApiError):
                await client.create(resource_path(group, version, plural, NAMESPACE), doc)
            if doc["kind"] == "JsonnetSnippet":
                names.append(doc["metadata"]["name"])
    return names


async def wait_ready(client: KubeClient, names: list[str], timeout: float) -> dict[str, Any]:
    """Poll until every snippet is Ready=True (or the timeout); return the last objects."""
    deadline = time.monotonic() + timeout
    objects: dict[str, Any] = {}
    while True:
        for name in names:
            objects[name] = await client.get(
                resource_path(GROUP, VERSION, SNIPPET_PLURAL, NAMESPACE, name)
            )
        ready = [
            (find_condition((o.get("status") or {}).get("conditions"), "Ready") or {}).get("status")
            == "True"
            for o in objects.values()
        ]
        if all(ready) or time.monotonic() > deadline:
            return objects
        await asyncio.sleep(0.5)


def snippet_rows(objects: dict[str, Any]) -> list[list[str]]:
    """``kubectl get jsnip -o wide`` rows."""
    rows = [["NAME", "READY", "REASON", "REVISION", "URL", "AGE"]]
    for name, obj in sorted(objects.items()):
        status = obj.get("status") or {}
        ready = find_condition(status.get("conditions"), "Ready") or {}
        rows.append(
            [
                name,
                str(ready.get("status", "Unknown")),
                str(ready.get("reason", "")),
                str(status.get("revision", ""))[:19],
                str(status.get("artifactURL", "")),
                _age(obj["metadata"].get("creationTimestamp")),
            ]
        )
    return rows


async def demo(once: bool, workdir: Path) -> int:
    """Run the demo; return the process exit code."""
    print(f"==> starting kube-apiserver and etcd (work dir {workdir})", flush=True)
    plane = await asyncio.to_thread(
        ControlPlane.start, workdir / "controlplane", default_crd_dirs()
    )
    # Artifacts are served on 127.0.0.1 here; snippets act as the namespace's tenant.
    operator = OperatorProcess(
        plane.kubeconfig,
        workdir / "operator",
        shards=2,
        extra_args=["--artifact-allow-loopback", "--default-service-account", TENANT_SA],
    )
    api = await api_client_from_kubeconfig(plane.kubeconfig)
    client = KubeClient(api)
    try:
        print(f"==> control plane ready at {plane.server} in {plane.timings.total_ready:.1f}s")
        print("==> starting jaas operator --shards 2", flush=True)
        await asyncio.to_thread(operator.start)
        shards = await asyncio.to_thread(operator.shards)
        print("    " + ", ".join(f"{s['name']} (pid {s['pid']})" for s in shards))
        async with FluxPublisher() as flux:
            await client.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
            await grant_tenant(client, NAMESPACE)
            repo = workdir / "git-repo"
            files = {
                str(p.relative_to(EXAMPLES / "git-repo")): p.read_bytes()
                for p in (EXAMPLES / "git-repo").rglob("*")
                if p.is_file()
            }
            commit = await asyncio.to_thread(make_git_repo, repo, files, "demo: initial commit")
            published = await flux.publish_git(api, NAMESPACE, GIT_SOURCE, repo)
            print(f"==> GitRepository {GIT_SOURCE} at commit {commit[:12]}: {published.url}")
            names = await apply_examples(client)
            print(f"==> applied {len(names)} JsonnetSnippets from examples/; waiting for Ready")
            started = time.monotonic()
            objects = await wait_ready(client, names, timeout=120)
            took = time.monotonic() - started
            print(f"\n$ kubectl get jsonnetsnippets -n {NAMESPACE}   # Ready after {took:.1f}s")
            print(table(snippet_rows(objects)))
            ok = all(
                (find_condition((o.get("status") or {}).get("conditions"), "Ready") or {}).get(
                    "status"
                )
                == "True"
                for o in objects.values()
            )
            for name, obj in objects.items():
                cond = find_condition((obj.get("status") or {}).get("conditions"), "Ready") or {}
                if cond.get("status") != "True":
                    print(f"\n{name}: {cond.get('reason')}: {cond.get('message')}")
            eas = []
            for name in sorted(names):
                with contextlib.suppress(KubeApiError):
                    eas.append(await client.get(external_artifact_path(NAMESPACE, name)))
            print(f"\n$ kubectl get externalartifacts -n {NAMESPACE}")
            rows = [["NAME", "READY", "REVISION", "DIGEST", "SIZE", "URL"]]
            for ea in eas:
                art = (ea.get("status") or {}).get("artifact") or {}
                cond = find_condition((ea.get("status") or {}).get("conditions"), "Ready") or {}
                rows.append(
                    [
                        ea["metadata"]["name"],
                        str(cond.get("status", "Unknown")),
                        str(art.get("revision", ""))[:19],
                        str(art.get("digest", ""))[:19],
                        str(art.get("size", "")),
                        str(art.get("url", "")),
                    ]
                )
            print(table(rows))
            shown = [ea for ea in eas if ea["metadata"]["name"] == "app-config"] or eas[-1:]
            if shown:
                ok = await show_artifact(shown[0]) and ok
            if once:
                print(f"\n==> demo {'succeeded' if ok else 'FAILED'}; stopping")
                return 0 if ok else 1
            print(
                f"\n==> running; try: KUBECONFIG={plane.kubeconfig} kubectl get jsnip -A\n"
                "    press Ctrl-C to stop",
                flush=True,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            return 0 if ok else 1
    finally:
        await client.close()
        await asyncio.to_thread(operator.stop)
        await asyncio.to_thread(plane.stop)


async def show_artifact(ea: dict[str, Any]) -> bool:
    """Download an ExternalArtifact's tarball, check its digest, print rendered.json."""
    art = (ea.get("status") or {}).get("artifact") or {}
    async with aiohttp.ClientSession() as session, session.get(art["url"]) as resp:
        data = await resp.read()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    good = digest == art.get("digest")
    print(f"\n$ curl {art['url']}  # {len(data)} bytes, digest {'matches' if good else 'MISMATCH'}")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        for member in tar.getmembers():
            content = tar.extractfile(member)
            if content is not None:
                print(f"--- {member.name}")
                print(content.read().decode(), end="")
    return good


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m jaas.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--once", action="store_true", help="stop after printing the result")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jaas-demo-") as tmp:
        return asyncio.run(demo(args.once, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
