"""``jaas operator --engine E`` renders with each installed engine, to the same bytes.

One control plane of its own (the session's operator would take the
snippets); one operator per engine, each watching only its namespace.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from jaas.operator.kube import KubeClient
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.operator import OperatorProcess
from tests.e2e.conftest import OPERATOR_ARGS
from tests.e2e.helpers import (
    create_namespace,
    create_snippet,
    download,
    get_external_artifact,
    ready,
    untar,
    wait_reason,
)
from tests.unit.test_evaluator_engines import AVAILABLE

PROGRAM = """\
local lib = import 'lib.libsonnet';
function(who) {
  apiVersion: 'v1',
  kind: 'ConfigMap',
  metadata: { name: 'greeting' },
  data: { text: lib.greet(who), stack: std.toString(std.length(std.range(1, 1000))) },
}
"""
LIBRARY = "{ greet(who):: 'hello ' + who }"


@pytest.fixture(scope="module")
def own_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane.start(tmp_path_factory.mktemp("engines-plane"), default_crd_dirs()) as plane:
        yield plane


@pytest_asyncio.fixture
async def admin(own_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = KubeClient(await api_client_from_kubeconfig(own_plane.kubeconfig))
    yield client
    await client.close()


def worker_engines(operator: OperatorProcess) -> set[str]:
    """The ``--engine`` of every evaluator worker process of ``operator``."""
    engines = set()
    for pid in operator.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"jaas.evaluator.worker" in argv:
            engines.add(argv[argv.index(b"--engine") + 1].decode())
    return engines


async def test_every_engine_renders_the_same_artifact(
    own_plane: ControlPlane, admin: KubeClient, tmp_path: Path
) -> None:
    rendered: dict[str, bytes] = {}
    operators: dict[str, OperatorProcess] = {}
    with contextlib.ExitStack() as stack:
        for engine in AVAILABLE:
            namespace = await create_namespace(admin, f"engine-{engine}")
            args = [*OPERATOR_ARGS, "--engine", engine, "--watch-namespaces", namespace]
            operator = OperatorProcess(own_plane.kubeconfig, tmp_path / engine, extra_args=args)
            operators[engine] = stack.enter_context(operator)
            await create_snippet(
                admin,
                namespace,
                "greeting",
                files={"main.jsonnet": PROGRAM, "lib.libsonnet": LIBRARY},
                tlas=[{"name": "who", "value": "world"}],
            )
        for engine in AVAILABLE:
            namespace = f"engine-{engine}"
            synced = await wait_reason(admin, namespace, "greeting", "Synced")
            assert ready(synced)["message"].endswith("1 Kubernetes object")
            ea = await get_external_artifact(admin, namespace, "greeting")
            files = untar(await download(ea["status"]["artifact"]["url"]))
            rendered[engine] = files["rendered.json"]
            assert worker_engines(operators[engine]) == {engine}
    assert len(set(rendered.values())) == 1, rendered
    assert b'"text": "hello world"' in rendered["go-jsonnet"]
