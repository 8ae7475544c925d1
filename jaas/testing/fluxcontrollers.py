"""Real Flux controllers, source-controller and kustomize-controller, run out of cluster.

``tools/flux/build.sh`` (``make flux``) builds both from their released Go
modules, and go-containerregistry's ``registry``, and records where in
``~/.cache/jaas-py/flux.env``; :func:`locate_flux_binaries` reads it.
:meth:`FluxControllers.start` installs their CRDs (from the same modules) into
a :class:`~jaas.testing.controlplane.ControlPlane` and starts them the way
``shared/reference/flux.md`` found works out of cluster: ``KUBECONFIG`` (the
admin kubeconfig) and ``RUNTIME_NAMESPACE`` in the environment, metrics,
health and artifact storage on free loopback ports, no leader election, and
kustomize-controller with ``--feature-gates=ExternalArtifact=true`` so that a
Kustomization may take a jaas-py ``ExternalArtifact`` as its source.

Flux's sharding flag ``--watch-label-selector`` lets a second source-controller
(e.g. one writing ``sha512`` digests) own only the sources labelled
``sharding.fluxcd.io/key=<key>`` while the first owns the rest.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jaas.testing.controlplane import ControlPlane
from jaas.testing.processes import ChildProcess, ChildProcessError, Stoppable, free_port, log_tail

#: Namespace the controllers consider their own (``RUNTIME_NAMESPACE``).
RUNTIME_NAMESPACE = "flux-system"
#: Label that assigns a Flux object to a controller shard (Flux's sharding convention).
SHARD_LABEL = "sharding.fluxcd.io/key"
#: Seconds to wait for a controller's ``/readyz``.
START_TIMEOUT = 60.0


class FluxError(ChildProcessError):
    """A Flux controller could not be found or started."""


@dataclass(frozen=True)
class FluxBinaries:
    """Where ``tools/flux/build.sh`` put its outputs.

    Attributes:
        source_controller: the source-controller executable.
        kustomize_controller: the kustomize-controller executable.
        registry: go-containerregistry's ``registry`` executable.
        crds: directory with the CRDs of both controllers (``config/crd/bases``).
    """

    source_controller: Path
    kustomize_controller: Path
    registry: Path
    crds: Path


def locate_flux_binaries() -> FluxBinaries:
    """Find the Flux controllers built by ``make flux``.

    ``JAAS_FLUX_BIN`` in the environment overrides the line of the same name
    in ``$JAAS_CACHE/flux.env`` (default ``~/.cache/jaas-py/flux.env``).

    Raises:
        FluxError: nothing says where they are, or a file is missing; the
            message says to run ``make flux``.
    """
    cache = Path(os.environ.get("JAAS_CACHE") or Path.home() / ".cache" / "jaas-py")
    env_file = cache / "flux.env"
    bindir = os.environ.get("JAAS_FLUX_BIN", "")
    if not bindir and env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "JAAS_FLUX_BIN":
                bindir = value.strip()
    hint = "run `make flux` (tools/flux/build.sh) to build them"
    if not bindir:
        raise FluxError(
            f"the Flux controllers are not built: JAAS_FLUX_BIN is set neither in the "
            f"environment nor in {env_file}; {hint}"
        )
    root = Path(bindir)
    found = FluxBinaries(
        root / "source-controller", root / "kustomize-controller", root / "registry", root / "crds"
    )
    for exe in (found.source_controller, found.kustomize_controller, found.registry):
        if not os.access(exe, os.X_OK):
            raise FluxError(f"{exe} is missing or not executable; {hint}")
    if not any(found.crds.glob("*.yaml")):
        raise FluxError(f"no CRD YAML in {found.crds}; {hint}")
    return found


def _wait_ready(process: ChildProcess, health_port: int, timeout: float) -> None:
    """Wait until controller-runtime's health endpoint answers ``GET /readyz`` with 200."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{health_port}/readyz"
    while time.monotonic() < deadline:
        process.check_running()
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    process.check_running()
    raise FluxError(
        f"{process.name} not ready within {timeout:.0f} s; last lines of {process.log_path}:\n"
        f"{log_tail(process.log_path)}"
    )


@dataclass
class FluxControllers(Stoppable):
    """Running Flux controllers; create them with :meth:`start`, end them with :meth:`stop`.

    Attributes:
        binaries: what runs.
        workdir: holds ``logs/`` and each source-controller's ``storage-<n>/``.
        env: the controllers' environment (``KUBECONFIG``, ``RUNTIME_NAMESPACE``).
    """

    binaries: FluxBinaries
    workdir: Path
    env: dict[str, str]
    _processes: list[ChildProcess] = field(default_factory=list, repr=False)

    @classmethod
    def start(
        cls,
        control_plane: ControlPlane,
        workdir: Path,
        *,
        kustomize: bool = True,
        binaries: FluxBinaries | None = None,
        timeout: float = START_TIMEOUT,
    ) -> FluxControllers:
        """Install the Flux CRDs, start source-controller (and kustomize-controller).

        The first source-controller watches every namespace for sources that
        carry no :data:`SHARD_LABEL`; :meth:`add_source_controller` starts more.

        Args:
            control_plane: the API the controllers use (as its admin).
            workdir: a new or existing directory for logs and artifact storage.
            kustomize: start kustomize-controller too.
            binaries: default :func:`locate_flux_binaries`.
            timeout: seconds each controller may take to answer ``/readyz``.

        Raises:
            FluxError: binaries missing, or a controller exited or was not
                ready in time (the message has the tail of its log).
            jaas.testing.controlplane.ControlPlaneError: a CRD was not served.
        """
        bins = binaries or locate_flux_binaries()
        control_plane.install_crds([bins.crds])
        control_plane.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RUNTIME_NAMESPACE}},
        )
        env = {
            **os.environ,
            "KUBECONFIG": str(control_plane.kubeconfig),
            "RUNTIME_NAMESPACE": RUNTIME_NAMESPACE,
        }
        flux = cls(bins, workdir.resolve(), env)
        try:
            flux.add_source_controller(timeout=timeout)
            if kustomize:
                flux._launch(
                    "kustomize-controller",
                    bins.kustomize_controller,
                    ["--feature-gates=ExternalArtifact=true", "--requeue-dependency=5s"],
                    timeout,
                )
        except BaseException:
            flux.stop()
            raise
        return flux

    def add_source_controller(
        self, *, shard: str = "", digest_algorithm: str = "sha256", timeout: float = START_TIMEOUT
    ) -> str:
        """Start a source-controller; return the address it serves artifacts on.

        Args:
            shard: empty for the controller of every unlabelled source, else
                the value of :data:`SHARD_LABEL` whose sources it alone owns.
            digest_algorithm: ``--artifact-digest-algo`` (``sha256``,
                ``sha384``, ``sha512`` or ``blake3``).
            timeout: seconds it may take to answer ``/readyz``.

        Raises:
            FluxError: it exited or was not ready in time.
        """
        index = sum(p.name.startswith("source-controller") for p in self._processes)
        storage = self.workdir / f"storage-{index}"
        storage.mkdir(parents=True, exist_ok=True)
        storage_address = f"127.0.0.1:{free_port()}"
        selector = f"{SHARD_LABEL}={shard}" if shard else f"!{SHARD_LABEL}"
        self._launch(
            f"source-controller-{index}",
            self.binaries.source_controller,
            [
                f"--storage-path={storage}",
                f"--storage-addr={storage_address}",
                f"--storage-adv-addr={storage_address}",
                f"--artifact-digest-algo={digest_algorithm}",
                f"--watch-label-selector={selector}",
            ],
            timeout,
        )
        return storage_address

    def _launch(self, name: str, binary: Path, args: Sequence[str], timeout: float) -> None:
        health = free_port()
        process = ChildProcess(
            name,
            [
                str(binary),
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--health-addr=127.0.0.1:{health}",
                "--enable-leader-election=false",
                "--watch-all-namespaces=true",
                "--log-encoding=console",
                *args,
            ],
            self.workdir / "logs" / f"{name}.log",
            env=self.env,
            error=FluxError,
        )
        self._processes.append(process)
        _wait_ready(process, health, timeout)

    @property
    def log_paths(self) -> list[Path]:
        """The log file of every controller started."""
        return [p.log_path for p in self._processes]

    def check_running(self) -> None:
        """Raise :class:`FluxError` (with its log tail) if a controller has exited."""
        for process in self._processes:
            process.check_running()

    def stop(self) -> None:
        """Stop every controller (SIGTERM, then SIGKILL after a grace period); idempotent."""
        while self._processes:
            self._processes.pop().stop()
