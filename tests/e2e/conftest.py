"""Fixtures for end-to-end tests on a real kube-apiserver + etcd (see jaas.testing).

One control plane per pytest session with the jaas CRDs (``deploy/crds``) and
Flux's source CRDs installed; each test gets its own namespace. Nothing deletes
namespaces (no kube-controller-manager runs), so none is ever waited for.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from kubernetes_asyncio import client

from jaas.operator.kube import KubeClient
from jaas.testing.controlplane import ControlPlane, default_crd_dirs
from jaas.testing.flux import FluxPublisher
from jaas.testing.fluxcontrollers import FluxControllers
from jaas.testing.gitserver import GitHttpServer
from jaas.testing.operator import OperatorProcess
from jaas.testing.registry import OciRegistry
from tests.e2e.collector_fixture import collector  # noqa: F401  (a fixture)
from tests.e2e.helpers import TENANT_SA, HostileServer, create_namespace

_HERE = Path(__file__).resolve().parent
_started: list[ControlPlane] = []
#: Figures measured by tests (printed at the end of the session, never asserted).
FIGURES: list[str] = []

#: Longest namespace name Kubernetes accepts (a DNS-1123 label).
MAX_NAMESPACE_LENGTH = 63


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e with ``e2e``."""
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what starting the control plane took and its memory (measured, not asserted)."""
    for plane in _started:
        t = plane.timings
        rss = plane.rss() if plane.running else {}
        line = (
            f"control plane: ready in {t.total_ready:.2f} s (etcd {t.etcd:.2f} s, "
            f"kube-apiserver {t.apiserver:.2f} s, {t.attempts} attempt(s)), "
            f"CRDs served after {t.crds:.2f} s more"
        )
        if rss:
            line += (
                f"; RSS at the end of the session: kube-apiserver "
                f"{rss['kube-apiserver'] / 2**20:.0f} MiB, etcd {rss['etcd'] / 2**20:.0f} MiB"
            )
        terminalreporter.write_line(line)
    for figure in FIGURES:
        terminalreporter.write_line(figure)


def namespace_name(hint: str) -> str:
    """Return a fresh DNS-1123 namespace name (<= 63 chars) derived from ``hint``.

    Lower-cases ``hint``, turns every run of other characters than ``[a-z0-9]``
    into ``-``, shortens it and appends ``-`` and 6 random hex digits.
    """
    suffix = secrets.token_hex(3)
    base = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")
    base = base[: MAX_NAMESPACE_LENGTH - len(suffix) - 1].rstrip("-") or "ns"
    return f"{base}-{suffix}"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The session's control plane, with the jaas and Flux source CRDs served."""
    plane = ControlPlane.start(tmp_path_factory.mktemp("controlplane"), default_crd_dirs())
    _started.append(plane)
    try:
        yield plane
    finally:
        plane.stop()


@pytest_asyncio.fixture(scope="session")
async def kube(control_plane: ControlPlane) -> AsyncIterator[client.ApiClient]:
    """An admin kubernetes_asyncio ApiClient (user ``admin``, group ``system:masters``)."""
    api = await control_plane.api_client()
    try:
        yield api
    finally:
        await api.close()


@pytest_asyncio.fixture
async def namespace(request: pytest.FixtureRequest, kube: client.ApiClient) -> str:
    """A new namespace named after the test, its tenant bound to deploy/rbac/tenant-role.yaml.

    It is never deleted or waited for.
    """
    return await create_namespace(KubeClient(kube), namespace_name(request.node.name))


@pytest.fixture
def kube_client(kube: client.ApiClient) -> KubeClient:
    """The admin ``ApiClient`` as a jaas ``KubeClient`` (raw JSON requests)."""
    return KubeClient(kube)


DATA = _HERE / "data"
#: Flags of the session's operator: artifacts on loopback (the Flux-style
#: publisher and the operator's own storage serve on 127.0.0.1), and the
#: ServiceAccount every test namespace has as the default tenant identity.
OPERATOR_ARGS = ["--artifact-allow-loopback", "--default-service-account", TENANT_SA]
#: What the session's operator adds: operator external variables (a flag and
#: the environment, the flag winning), a 1 MiB artifact cap, shared libraries.
SESSION_ARGS = [
    *OPERATOR_ARGS,
    "--ext-var",
    "jaas_cluster=e2e-flag",
    "--max-artifact-bytes",
    "1Mi",
    "--library-path",
    str(DATA / "libraries"),
    "--library-path",
    str(DATA / "libraries-overrides"),
]
SESSION_ENV = {"JAAS_EXT_VAR_jaas_cluster": "e2e-env", "JAAS_EXT_VAR_jaas_region": "eu-env"}


@pytest.fixture(scope="session")
def operator(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """``jaas operator --shards 2 --evaluators 2`` against the session's control plane."""
    proc = OperatorProcess(
        control_plane.kubeconfig,
        tmp_path_factory.mktemp("operator"),
        extra_args=SESSION_ARGS,
        env=SESSION_ENV,
    )
    proc.start()
    try:
        yield proc
    finally:
        code = proc.stop()
        print(f"\noperator exited with {code}; log: {proc.log_path}")


@pytest_asyncio.fixture(scope="session")
async def flux() -> AsyncIterator[FluxPublisher]:
    """A started FluxPublisher serving artifacts on 127.0.0.1."""
    async with FluxPublisher() as publisher:
        yield publisher


@pytest_asyncio.fixture
async def hostile() -> AsyncIterator[HostileServer]:
    """A loopback server of attacker-controlled answers (``HostileServer``)."""
    server = HostileServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture(scope="session")
def flux_controllers(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FluxControllers]:
    """Real source-controller and kustomize-controller (built by ``make flux``) on the plane."""
    with FluxControllers.start(control_plane, tmp_path_factory.mktemp("flux")) as controllers:
        yield controllers


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpServer]:
    """Git repositories over smart HTTP on 127.0.0.1 (``git http-backend``)."""
    with GitHttpServer(tmp_path_factory.mktemp("git")) as server:
        yield server


@pytest.fixture(scope="session")
def oci_registry(
    flux_controllers: FluxControllers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OciRegistry]:
    """go-containerregistry's registry on a free loopback port (plain HTTP, in memory)."""
    log = tmp_path_factory.mktemp("registry") / "registry.log"
    with OciRegistry(flux_controllers.binaries.registry, log) as registry:
        yield registry
