"""Peak resident memory per process kind while the operator handles a 60 MiB render.

Starts a control plane and ``jaas operator --shards 2 --evaluators 2``, then
renders, one after the other, a small snippet (the baseline), a snippet whose
``rendered.json`` would be 60 MiB (refused inside the evaluator as
``ArtifactTooLarge``), the same program with ``output: source`` (the render
must succeed, its output is discarded in the evaluator), and 12,000
ConfigMaps (a 14.5 MiB ``rendered.json`` that is published, with its
``objects.yaml`` for kustomize-controller). After each it prints
the peak RSS of the leader, the shards and the evaluators, sampled every 50 ms.
Leader and shard peaks should not move with the render size. Asserts nothing.

    .venv/bin/python -m loadtests.render_memory
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from jaas.api.conditions import find_condition
from jaas.api.constants import GROUP, SNIPPET_PLURAL, VERSION
from jaas.operator.kube import KubeClient, resource_path
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.operator import OperatorProcess
from jaas.testing.tenants import TENANT_SA, grant_tenant
from loadtests.scale_snippets import sample

BIG = "std.join('', std.makeArray(%d, function(i) std.repeat('x', 1024)))"
#: A kind: List of ConfigMaps whose rendered.json is about 14.5 MiB, under the
#: 16 MiB per-file cap: published with objects.yaml and kustomization.yaml.
OBJECTS = (
    "{apiVersion: 'v1', kind: 'List', items: std.makeArray(12000, function(i) "
    "{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'cm-%d' % i}, "
    "data: {value: std.repeat('x', 1024)}})}"
)


async def render(
    client: KubeClient, session: int, namespace: str, name: str, spec: dict[str, object]
) -> tuple[str, dict[str, int]]:
    """Create a snippet, wait for its Ready reason; return it and the peaks meanwhile."""
    path = resource_path(GROUP, VERSION, SNIPPET_PLURAL, namespace)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "JsonnetSnippet",
        "metadata": {"name": name},
        "spec": spec,
    }
    await client.create(path, body)
    peaks: dict[str, int] = {}
    cpu: dict[int, tuple[str, float]] = {}
    while True:
        await asyncio.to_thread(sample, session, peaks, cpu)
        obj = await client.get(f"{path}/{name}")
        cond = find_condition((obj.get("status") or {}).get("conditions"), "Ready")
        if cond is not None and cond.get("reason") not in (None, "ProgressingWithRetry"):
            return str(cond["reason"]), peaks
        await asyncio.sleep(0.05)


async def measure(mebibytes: int, workdir: Path) -> None:
    """Run the three renders and print one line each."""
    plane = await asyncio.to_thread(ControlPlane.start, workdir / "cp", default_crd_dirs())
    operator = OperatorProcess(
        plane.kubeconfig,
        workdir / "op",
        evaluation_timeout=60.0,
        extra_args=["--default-service-account", TENANT_SA],
    )
    client = KubeClient(await api_client_from_kubeconfig(plane.kubeconfig))
    try:
        await asyncio.to_thread(operator.start)
        assert operator.process is not None
        session = operator.process.pid
        await client.create("/api/v1/namespaces", {"metadata": {"name": "memory"}})
        await grant_tenant(client, "memory")
        big = BIG % (mebibytes * 1024)
        cases: list[tuple[str, dict[str, object]]] = [
            ("small render", {"files": {"main.jsonnet": "{ a: 1 }"}}),
            (f"{mebibytes} MiB render", {"files": {"main.jsonnet": big}}),
            (
                f"{mebibytes} MiB, output: source",
                {"files": {"main.jsonnet": big}, "output": "source"},
            ),
            # Last: a shard does not hand freed memory back, so this would raise
            # the peaks of the cases after it.
            ("14.5 MiB of ConfigMaps", {"files": {"main.jsonnet": OBJECTS}}),
        ]
        columns = f"{'case':<28} {'reason':<18} {'leader':>8} {'shard':>8} {'evaluator':>10}"
        print(columns + "  (peak RSS, MiB)")
        for n, (label, spec) in enumerate(cases):
            reason, peaks = await render(client, session, "memory", f"s{n}", spec)
            print(
                f"{label:<28} {reason:<18} {peaks.get('leader', 0) / 2**20:>8.0f} "
                f"{peaks.get('shard', 0) / 2**20:>8.0f} {peaks.get('evaluator', 0) / 2**20:>10.0f}"
            )
    finally:
        await client.close()
        await asyncio.to_thread(operator.stop)
        await asyncio.to_thread(plane.stop)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mebibytes", type=int, default=60, help="size of the big render")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaas-memory-") as tmp:
        asyncio.run(measure(args.mebibytes, Path(tmp)))


if __name__ == "__main__":
    main()
