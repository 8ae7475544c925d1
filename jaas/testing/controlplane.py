"""A real Kubernetes control plane (etcd + kube-apiserver) started from Python.

Does what controller-runtime's envtest does (``pkg/internal/testing/controlplane``,
``pkg/envtest/crd.go``), synchronously so that pytest fixtures and a plain CLI
can both use it:

1. generate throwaway CAs, a serving certificate, an admin client certificate
   (group ``system:masters``) and a ServiceAccount signing key (:mod:`.certs`);
2. start etcd on free loopback ports with ``--unsafe-no-fsync`` and wait for
   ``GET /health``;
3. start kube-apiserver with TLS, RBAC, ``--endpoint-reconciler-type=none`` and
   the ServiceAccount issuer flags, wait for ``GET /readyz`` (as admin, TLS
   verified) and for namespaces ``default`` and ``kube-system``;
4. write an admin kubeconfig; install CustomResourceDefinitions from YAML
   directories and wait until each is Established and listed by discovery.

The binaries come from ``tools/controlplane/build.sh`` (``make controlplane``),
found through ``JAAS_CONTROLPLANE_BIN`` / ``JAAS_FLUX_CRDS`` or the file
``~/.cache/jaas-py/controlplane.env`` that the build writes.

Run ``python -m jaas.testing.controlplane`` to start one for a demo or for
debugging; it prints the kubeconfig path and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from jaas.observability.memory import resident_bytes
from jaas.testing.certs import CertificateAuthority, SigningKey
from jaas.testing.processes import (
    ChildProcess,
    ChildProcessError,
    Stoppable,
    free_port,
    log_tail,
)

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

#: Seconds to wait for etcd health and for apiserver readiness (each), per attempt.
DEFAULT_START_TIMEOUT = 120.0
#: Seconds to wait for one CRD to become Established and discoverable.
DEFAULT_CRD_TIMEOUT = 60.0
#: Whole-start attempts when a port turns out to be taken (envtest retries 5 times too).
START_ATTEMPTS = 5
#: ServiceAccount/Service ClusterIP range given to kube-apiserver (envtest's default).
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"

_POLL = 0.1
_CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


class ControlPlaneError(ChildProcessError):
    """The control plane could not be found, started or configured."""


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class Binaries:
    """Where the built control-plane binaries and Flux's source CRDs are.

    Attributes:
        kube_apiserver: the kube-apiserver executable.
        etcd: the etcd executable.
        flux_crds: directory holding ``source.toolkit.fluxcd.io_*.yaml``.
    """

    kube_apiserver: Path
    etcd: Path
    flux_crds: Path


def env_file() -> Path:
    """Return the file ``tools/controlplane/build.sh`` writes (``$JAAS_CACHE/controlplane.env``)."""
    cache = os.environ.get("JAAS_CACHE") or str(Path.home() / ".cache" / "jaas-py")
    return Path(cache) / "controlplane.env"


def locate_binaries() -> Binaries:
    """Find kube-apiserver, etcd and the Flux CRDs.

    Environment variables ``JAAS_CONTROLPLANE_BIN`` and ``JAAS_FLUX_CRDS``
    override the lines of the same name in :func:`env_file`.

    Raises:
        ControlPlaneError: a location is unknown or does not hold what it should;
            the message says to run ``make controlplane``.
    """
    settings: dict[str, str] = {}
    path = env_file()
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                settings[key.strip()] = value.strip()
    for key in ("JAAS_CONTROLPLANE_BIN", "JAAS_FLUX_CRDS"):
        if os.environ.get(key):
            settings[key] = os.environ[key]
    hint = "run `make controlplane` (tools/controlplane/build.sh) to build it"
    missing = [k for k in ("JAAS_CONTROLPLANE_BIN", "JAAS_FLUX_CRDS") if not settings.get(k)]
    if missing:
        raise ControlPlaneError(
            f"the test control plane is not built: {', '.join(missing)} is set neither in the "
            f"environment nor in {path}; {hint}"
        )
    bindir = Path(settings["JAAS_CONTROLPLANE_BIN"])
    found = Binaries(bindir / "kube-apiserver", bindir / "etcd", Path(settings["JAAS_FLUX_CRDS"]))
    for exe in (found.kube_apiserver, found.etcd):
        if not os.access(exe, os.X_OK):
            raise ControlPlaneError(f"{exe} is missing or not executable; {hint}")
    if not any(found.flux_crds.glob("*.yaml")):
        raise ControlPlaneError(f"no Flux CRD YAML in {found.flux_crds}; {hint}")
    return found


def default_crd_dirs() -> list[Path]:
    """Return the CRD directories a jaas-py test or demo installs.

    The repository's ``deploy/crds`` (jaas CRDs) and Flux's source CRDs.

    Raises:
        ControlPlaneError: as :func:`locate_binaries`.
    """
    repo = Path(__file__).resolve().parents[2]
    return [repo / "deploy" / "crds", locate_binaries().flux_crds]


# --------------------------------------------------------------------------- helpers


#: Route flags (linux/route.h): the route is up; the route rejects (unreachable).
RTF_UP = 0x0001
RTF_REJECT = 0x0200


def default_route_in(ipv4_routes: str, ipv6_routes: str) -> bool:
    """Whether ``/proc/net/route`` and ``/proc/net/ipv6_route`` texts hold a usable default route.

    A default route is one to ``0.0.0.0/0`` or ``::/0`` that is up and does not
    reject: a network namespace with only loopback (``unshare --net``) still
    has the kernel's unreachable ``::/0`` route on ``lo``, which is no route to
    advertise.
    """

    def usable(flags: str) -> bool:
        value = int(flags, 16)
        return bool(value & RTF_UP) and not value & RTF_REJECT

    for line in ipv4_routes.splitlines()[1:]:
        # Iface Destination Gateway Flags ...
        fields = line.split()
        if len(fields) > 3 and fields[1] == "00000000" and usable(fields[3]):
            return True
    for line in ipv6_routes.splitlines():
        # destination prefix-length source prefix-length next-hop metric refs use flags device
        fields = line.split()
        if len(fields) > 8 and fields[0] == "0" * 32 and fields[1] == "00" and usable(fields[8]):
            return True
    return False


def has_default_route() -> bool:
    """Return whether this network namespace has a usable IPv4 or IPv6 default route.

    kube-apiserver bound to loopback advertises the default-route interface and
    fails to start without one (control-plane.md §2.11); without one we pass
    ``--advertise-address=127.0.0.1``.
    """
    texts = []
    for path in ("/proc/net/route", "/proc/net/ipv6_route"):
        try:
            texts.append(Path(path).read_text())
        except OSError:
            texts.append("")
    return default_route_in(*texts)


def rss_bytes(pid: int) -> int:
    """Return the resident set size of process ``pid`` in bytes (0 if it is gone)."""
    return resident_bytes(pid)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _kubeconfig(server: str, ca_pem: bytes, user: dict[str, str], name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "jaas-test",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": "jaas-test", "user": name}}],
        "current-context": name,
        "preferences": {},
    }


def _write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- control plane

_live: set[ControlPlane] = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        planes = list(_live)
    for plane in planes:
        plane.stop()


atexit.register(_stop_all_at_exit)


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _make_sigterm_stoppable() -> None:
    """Let SIGTERM unwind the process so that ``finally`` blocks and ``atexit`` stop children.

    Python's default SIGTERM action ends the process without running either, and
    the children live in their own sessions, so they would outlive it (e.g. a CI
    job's timeout). Only done from the main thread and only while SIGTERM still
    has its default action; SIGTERM then raises ``KeyboardInterrupt``, which
    pytest treats as an interrupted session.
    """
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError):
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


@dataclass
class StartupTimings:
    """Wall-clock seconds spent starting a control plane (measured, never asserted).

    Attributes:
        etcd: from launching etcd (last attempt) to a healthy ``/health``.
        apiserver: from launching kube-apiserver to ``/readyz`` OK and the
            ``default`` and ``kube-system`` namespaces present.
        total_ready: from :meth:`ControlPlane.start` to the API being ready,
            including certificate generation and retries.
        crds: installing the CRDs given to :meth:`ControlPlane.start` and
            waiting until they are served.
        attempts: how many whole-start attempts were needed.
    """

    etcd: float = 0.0
    apiserver: float = 0.0
    total_ready: float = 0.0
    crds: float = 0.0
    attempts: int = 0


@dataclass(eq=False)
class ControlPlane(Stoppable):
    """A running etcd + kube-apiserver pair; create it with :meth:`start`.

    Attributes:
        workdir: directory holding ``certs/``, ``logs/`` and the kubeconfig.
        server: the API URL, ``https://127.0.0.1:<port>``.
        kubeconfig: the admin kubeconfig (user ``admin`` in ``system:masters``,
            embedded ``*-data`` fields).
        ca_file: CA certificate that signed the serving certificate.
        admin_cert_file: admin client certificate (PEM).
        admin_key_file: admin client key (PEM).
        log_dir: where ``etcd.log`` and ``kube-apiserver.log`` are written.
        etcd_url: etcd's client URL (``http://127.0.0.1:<port>``).
        timings: what starting took.
    """

    workdir: Path
    server: str
    kubeconfig: Path
    ca_file: Path
    admin_cert_file: Path
    admin_key_file: Path
    log_dir: Path
    etcd_url: str
    timings: StartupTimings
    _serving_ca: CertificateAuthority = field(repr=False)
    _client_ca: CertificateAuthority = field(repr=False)
    _etcd: ChildProcess = field(repr=False)
    _apiserver: ChildProcess = field(repr=False)
    _etcd_data: Path = field(repr=False)
    _ssl: ssl.SSLContext = field(repr=False)
    _stopped: bool = field(default=False, repr=False)
    restarts: int = 0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        workdir: Path,
        crd_dirs: Sequence[Path] = (),
        *,
        timeout: float = DEFAULT_START_TIMEOUT,
        binaries: Binaries | None = None,
    ) -> ControlPlane:
        """Start etcd and kube-apiserver, wait until ready and install CRDs.

        Args:
            workdir: an existing or new directory for certificates, logs, the
                kubeconfig and etcd's (temporary) data directory.
            crd_dirs: directories whose ``*.yaml``/``*.yml`` documents of kind
                CustomResourceDefinition are installed (see :meth:`install_crds`).
            timeout: seconds to wait for etcd health and, separately, for
                apiserver readiness, per attempt.
            binaries: where the executables are; default :func:`locate_binaries`.

        Processes that are still running at interpreter exit are stopped by an
        ``atexit`` hook; if SIGTERM still has its default action, it is made to
        raise ``KeyboardInterrupt`` in the main thread so that the hook runs.

        Returns:
            The running control plane; call :meth:`stop` (or use ``with``).

        Raises:
            ControlPlaneError: binaries missing, a process exited or did not get
                ready in time (the message carries the tail of its log), or a
                CRD was not served in time.
        """
        began = time.monotonic()
        bins = binaries or locate_binaries()
        _make_sigterm_stoppable()
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        certs = workdir / "certs"
        log_dir = workdir / "logs"
        serving_ca = CertificateAuthority("jaas-py test serving CA")
        client_ca = CertificateAuthority("jaas-py test client CA")
        certs.mkdir(parents=True, exist_ok=True)
        ca_file = certs / "serving-ca.crt"
        ca_file.write_bytes(serving_ca.cert_pem)
        client_ca_file = certs / "client-ca.crt"
        client_ca_file.write_bytes(client_ca.cert_pem)
        serving_cert, serving_key = serving_ca.issue_serving().write(certs, "apiserver")
        admin_cert, admin_key = client_ca.issue_client("admin", ["system:masters"]).write(
            certs, "admin"
        )
        sa_key = SigningKey.generate()
        sa_private = _write_private(certs / "sa.key", sa_key.private_pem.decode())
        sa_public = certs / "sa.pub"
        sa_public.write_bytes(sa_key.public_pem)

        context = ssl.create_default_context(cafile=str(ca_file))
        context.load_cert_chain(str(admin_cert), str(admin_key))

        timings = StartupTimings()
        last_error: ChildProcessError | None = None
        for attempt in range(1, START_ATTEMPTS + 1):
            timings.attempts = attempt
            etcd_data = Path(tempfile.mkdtemp(prefix="etcd-data-", dir=workdir))
            etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
            etcd_url = f"http://127.0.0.1:{etcd_port}"
            server = f"https://127.0.0.1:{api_port}"
            etcd: ChildProcess | None = None
            apiserver: ChildProcess | None = None
            try:
                t0 = time.monotonic()
                etcd = ChildProcess(
                    "etcd",
                    [
                        str(bins.etcd),
                        "--name=jaas-test",
                        f"--data-dir={etcd_data}",
                        f"--listen-client-urls={etcd_url}",
                        f"--advertise-client-urls={etcd_url}",
                        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                        f"--initial-cluster=jaas-test=http://127.0.0.1:{peer_port}",
                        "--unsafe-no-fsync=true",
                        "--log-level=warn",
                    ],
                    log_dir / "etcd.log",
                    attempt,
                    error=ControlPlaneError,
                )
                _wait_etcd(etcd, etcd_url, timeout)
                timings.etcd = time.monotonic() - t0

                t1 = time.monotonic()
                argv = [
                    str(bins.kube_apiserver),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={api_port}",
                    f"--cert-dir={certs}",
                    f"--tls-cert-file={serving_cert}",
                    f"--tls-private-key-file={serving_key}",
                    f"--client-ca-file={client_ca_file}",
                    f"--service-account-issuer={server}/",
                    f"--service-account-key-file={sa_public}",
                    f"--service-account-signing-key-file={sa_private}",
                    "--authorization-mode=RBAC",
                    "--disable-admission-plugins=ServiceAccount",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    "--endpoint-reconciler-type=none",
                    "--allow-privileged=true",
                    "-v=1",
                ]
                if not has_default_route():
                    argv.append("--advertise-address=127.0.0.1")
                apiserver = ChildProcess(
                    "kube-apiserver",
                    argv,
                    log_dir / "kube-apiserver.log",
                    attempt,
                    error=ControlPlaneError,
                )
                _wait_apiserver(apiserver, api_port, context, timeout)
                timings.apiserver = time.monotonic() - t1
            except BaseException as exc:
                for proc in (apiserver, etcd):
                    if proc is not None:
                        proc.stop()
                shutil.rmtree(etcd_data, ignore_errors=True)
                if isinstance(exc, ChildProcessError) and exc.port_in_use:
                    last_error = exc
                    continue
                raise
            break
        else:
            raise ControlPlaneError(
                f"gave up after {START_ATTEMPTS} attempts, ports kept being taken: {last_error}"
            )
        assert etcd is not None
        assert apiserver is not None

        kubeconfig = _write_private(
            workdir / "kubeconfig",
            yaml.safe_dump(
                _kubeconfig(
                    server,
                    serving_ca.cert_pem,
                    {
                        "client-certificate-data": _b64(admin_cert.read_bytes()),
                        "client-key-data": _b64(admin_key.read_bytes()),
                    },
                    "admin",
                ),
                sort_keys=False,
            ),
        )
        plane = cls(
            workdir=workdir,
            server=server,
            kubeconfig=kubeconfig,
            ca_file=ca_file,
            admin_cert_file=admin_cert,
            admin_key_file=admin_key,
            log_dir=log_dir,
            etcd_url=etcd_url,
            timings=timings,
            _serving_ca=serving_ca,
            _client_ca=client_ca,
            _etcd=etcd,
            _apiserver=apiserver,
            _etcd_data=etcd_data,
            _ssl=context,
        )
        with _live_lock:
            _live.add(plane)
        timings.total_ready = time.monotonic() - began
        try:
            t2 = time.monotonic()
            plane.install_crds(crd_dirs)
            timings.crds = time.monotonic() - t2
        except BaseException:
            plane.stop()
            raise
        return plane

    def restart_apiserver(
        self, *, kill: bool = False, timeout: float = DEFAULT_START_TIMEOUT
    ) -> None:
        """Stop kube-apiserver (SIGKILL with ``kill``, else SIGTERM) and start it again.

        The new process serves the same port, certificates and etcd, so clients
        see the API go away and come back: watches break, connections reset.

        Raises:
            ControlPlaneError: it did not get ready again within ``timeout`` seconds.
        """
        old = self._apiserver
        if kill:
            old.kill()
        else:
            old.stop()
        self.restarts += 1
        port = int(self.server.rsplit(":", 1)[1])
        self._apiserver = old.restart(self.restarts + 1)
        _wait_apiserver(self._apiserver, port, self._ssl, timeout)

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd, and remove etcd's data directory.

        SIGTERM, up to :data:`STOP_GRACE` seconds, then SIGKILL. Idempotent;
        certificates, logs and the kubeconfig stay in :attr:`workdir`.
        """
        if self._stopped:
            return
        self._stopped = True
        with _live_lock:
            _live.discard(self)
        self._apiserver.stop()
        self._etcd.stop()
        shutil.rmtree(self._etcd_data, ignore_errors=True)

    @property
    def running(self) -> bool:
        """Whether both processes are still alive."""
        return self._etcd.exited() is None and self._apiserver.exited() is None

    def pids(self) -> dict[str, int]:
        """Return the process ids of ``kube-apiserver`` and ``etcd``."""
        return {"kube-apiserver": self._apiserver.pid, "etcd": self._etcd.pid}

    def rss(self) -> dict[str, int]:
        """Return the resident set size in bytes of ``kube-apiserver`` and ``etcd``."""
        return {
            "kube-apiserver": rss_bytes(self._apiserver.pid),
            "etcd": rss_bytes(self._etcd.pid),
        }

    # ------------------------------------------------------------------ identities

    def write_token_kubeconfig(self, path: Path, token: str) -> Path:
        """Write a kubeconfig that authenticates with a bearer ``token``.

        Args:
            path: file to write (mode 0600; parent directories are created).
            token: e.g. a ServiceAccount TokenRequest token.

        Returns:
            ``path``.
        """
        config = _kubeconfig(self.server, self._serving_ca.cert_pem, {"token": token}, "token")
        return _write_private(path, yaml.safe_dump(config, sort_keys=False))

    def write_user_kubeconfig(self, path: Path, user: str, groups: Sequence[str] = ()) -> Path:
        """Write a kubeconfig with a fresh client certificate for ``user`` in ``groups``.

        The certificate is signed by the apiserver's client CA, so the apiserver
        authenticates it as that user (plus ``system:authenticated``).

        Returns:
            ``path``.
        """
        pair = self._client_ca.issue_client(user, groups)
        config = _kubeconfig(
            self.server,
            self._serving_ca.cert_pem,
            {"client-certificate-data": _b64(pair.cert_pem), "client-key-data": _b64(pair.key_pem)},
            user,
        )
        return _write_private(path, yaml.safe_dump(config, sort_keys=False))

    async def api_client(self, kubeconfig: Path | None = None) -> ApiClient:
        """Return a new kubernetes_asyncio ``ApiClient`` (the caller closes it).

        Args:
            kubeconfig: identity to use; default the admin :attr:`kubeconfig`.
        """
        return await api_client_from_kubeconfig(kubeconfig or self.kubeconfig)

    # ------------------------------------------------------------------ raw API access

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30.0
    ) -> tuple[int, Any]:
        """Make one admin API call with a JSON body.

        Args:
            method: HTTP method.
            path: absolute API path, e.g. ``/api/v1/namespaces``.
            body: JSON-serialisable request body, or None.
            timeout: socket timeout in seconds.

        Returns:
            The HTTP status and the decoded JSON response (None if not JSON).

        Raises:
            OSError: the connection failed.
        """
        host, port = self.server.removeprefix("https://").rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=self._ssl, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        return response.status, decoded

    # ------------------------------------------------------------------ CRDs

    def install_crds(self, dirs: Sequence[Path], *, timeout: float = DEFAULT_CRD_TIMEOUT) -> None:
        """Create or update every CRD found in ``dirs`` and wait until all are served.

        Reads all YAML documents of ``*.yaml`` / ``*.yml`` files directly in each
        directory (sorted by name) and keeps those of kind CustomResourceDefinition.
        A CRD that exists is replaced (retrying on conflicts). Then, as envtest's
        ``WaitForCRDs`` does, waits until each CRD's ``Established`` condition is
        True and ``GET /apis/<group>/<version>`` lists its plural for every served
        version.

        Args:
            dirs: directories to read; a directory without CRDs is allowed.
            timeout: seconds to wait for each CRD to be served.

        Raises:
            ControlPlaneError: a directory does not exist, the API rejected a CRD,
                or a CRD was not served within ``timeout``.
        """
        crds = [doc for directory in dirs for doc in _read_crds(directory)]
        for crd in crds:
            self._apply_crd(crd, timeout)
        for crd in crds:
            self._wait_crd_served(crd, timeout)

    def _apply_crd(self, crd: dict[str, Any], timeout: float) -> None:
        name = crd["metadata"]["name"]
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.request("POST", _CRD_PATH, crd)
            if status == 201:
                return
            if status == 409:
                status, current = self.request("GET", f"{_CRD_PATH}/{name}")
                if status == 200:
                    update = dict(crd)
                    update["metadata"] = dict(crd["metadata"])
                    update["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                    status, body = self.request("PUT", f"{_CRD_PATH}/{name}", update)
                    if status == 200:
                        return
            if status != 409 or time.monotonic() > deadline:
                raise ControlPlaneError(f"installing CRD {name} failed: HTTP {status}: {body}")
            time.sleep(_POLL)

    def _wait_crd_served(self, crd: dict[str, Any], timeout: float) -> None:
        name = crd["metadata"]["name"]
        group = crd["spec"]["group"]
        plural = crd["spec"]["names"]["plural"]
        versions = [v["name"] for v in crd["spec"]["versions"] if v.get("served", False)]
        deadline = time.monotonic() + timeout
        pending = "Established"
        while time.monotonic() < deadline:
            if self._crd_established(name):
                missing = [v for v in versions if not self._discovery_lists(group, v, plural)]
                pending = f"discovery of {plural} in {group}/{','.join(missing)}"
                if not missing:
                    # A new resource's watch cache can still answer 429 "storage is
                    # (re)initializing" for a moment: served means a LIST succeeds.
                    missing = [
                        v
                        for v in versions
                        if self.request("GET", f"/apis/{group}/{v}/{plural}?limit=1")[0] != 200
                    ]
                    pending = f"a LIST of {plural} in {group}/{','.join(missing)}"
                    if not missing:
                        return
            time.sleep(_POLL)
        raise ControlPlaneError(
            f"CRD {name} not served within {timeout:.0f} s (waiting for {pending})"
        )

    def _crd_established(self, name: str) -> bool:
        status, body = self.request("GET", f"{_CRD_PATH}/{name}")
        conditions = ((body or {}).get("status") or {}).get("conditions") or []
        if status != 200:
            return False
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    def _discovery_lists(self, group: str, version: str, plural: str) -> bool:
        status, listing = self.request("GET", f"/apis/{group}/{version}")
        resources = (listing or {}).get("resources") or []
        if status != 200:
            return False
        return any(r.get("name") == plural for r in resources)


# --------------------------------------------------------------------------- readiness


def _wait_etcd(proc: ChildProcess, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_running()
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"{url}/health", timeout=2) as response,
        ):
            if response.status == 200 and json.loads(response.read()).get("health") == "true":
                return
        time.sleep(_POLL)
    proc.check_running()
    raise ControlPlaneError(
        f"etcd not healthy within {timeout:.0f} s; last lines of {proc.log_path}:\n"
        f"{log_tail(proc.log_path)}"
    )


def _get_status(port: int, path: str, context: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _wait_apiserver(proc: ChildProcess, port: int, context: ssl.SSLContext, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    stage = "/readyz"
    paths = ["/readyz", "/api/v1/namespaces/default", "/api/v1/namespaces/kube-system"]
    while time.monotonic() < deadline:
        proc.check_running()
        status = 0
        with contextlib.suppress(OSError, http.client.HTTPException, urllib.error.URLError):
            status = _get_status(port, paths[0], context)
        if status == 200:
            stage = paths.pop(0)
            if not paths:
                return
            continue
        time.sleep(_POLL)
    proc.check_running()
    raise ControlPlaneError(
        f"kube-apiserver not ready within {timeout:.0f} s (waiting for {paths[0]} after {stage}); "
        f"last lines of {proc.log_path}:\n{log_tail(proc.log_path)}"
    )


def _read_crds(directory: Path) -> Iterator[dict[str, Any]]:
    if not directory.is_dir():
        raise ControlPlaneError(f"CRD directory {directory} does not exist")
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    for path in files:
        with path.open() as stream:
            for doc in yaml.safe_load_all(stream):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    yield doc


async def api_client_from_kubeconfig(kubeconfig: Path) -> ApiClient:
    """Return a kubernetes_asyncio ``ApiClient`` for a kubeconfig file.

    Uses ``kubernetes_asyncio.config.load_kube_config`` into a private
    ``Configuration`` (the global default is left alone). The caller closes
    the client (``await client.close()`` or ``async with``).
    """
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
    )
    return client.ApiClient(configuration)


# --------------------------------------------------------------------------- CLI


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    """Start a control plane, print how to reach it and run until Ctrl-C or SIGTERM.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m jaas.testing.controlplane",
        description="Start a throwaway etcd + kube-apiserver with the jaas and Flux CRDs.",
    )
    parser.add_argument("--workdir", type=Path, help="directory for certs, logs and kubeconfig")
    parser.add_argument(
        "--crds",
        type=Path,
        action="append",
        help="CRD directory to install (repeatable); default deploy/crds and Flux's source CRDs",
    )
    parser.add_argument(
        "--measure",
        type=float,
        metavar="SECONDS",
        help="stay idle this long, print figures (start time, RSS) and stop",
    )
    args = parser.parse_args(argv)
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="jaas-controlplane-"))
    crd_dirs: list[Path] = args.crds if args.crds is not None else default_crd_dirs()

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        plane = ControlPlane.start(workdir, crd_dirs)
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with plane:
        t = plane.timings
        print(f"server:     {plane.server}")
        print(f"kubeconfig: {plane.kubeconfig}")
        print(f"logs:       {plane.log_dir}")
        print(
            f"ready in {t.total_ready:.2f} s (etcd {t.etcd:.2f} s, "
            f"kube-apiserver {t.apiserver:.2f} s, "
            f"{t.attempts} attempt(s)); CRDs installed and served in {t.crds:.2f} s, "
            f"{t.total_ready + t.crds:.2f} s in total",
            flush=True,
        )
        if args.measure is not None:
            stop.wait(args.measure)
            rss = plane.rss()
            print(
                f"RSS after {args.measure:.0f} s idle: "
                f"kube-apiserver {_mib(rss['kube-apiserver'])}, etcd {_mib(rss['etcd'])}",
                flush=True,
            )
            return 0
        print(f"export KUBECONFIG={plane.kubeconfig}   # Ctrl-C stops", flush=True)
        while not stop.wait(1.0):
            if not plane.running:
                print("error: a control-plane process exited; see the logs", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
