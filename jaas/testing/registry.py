"""Flux OCI artifacts: packed as ``flux push artifact`` packs them, pushed to a real registry.

:func:`build_flux_artifact` makes the image ``flux push artifact`` makes
(``fluxcd/pkg`` ``oci/client/push.go``): an OCI image manifest whose config
has media type :data:`FLUX_CONFIG_MEDIA_TYPE`, one gzipped tar layer of the
files (:data:`FLUX_CONTENT_MEDIA_TYPE`) and the annotations
``org.opencontainers.image.created``, ``.source`` and ``.revision``.
:func:`push_artifact` uploads it with the OCI distribution API (monolithic
blob uploads, then ``PUT /v2/<repository>/manifests/<tag>``).
:class:`OciRegistry` runs the registry of ``go-containerregistry``
(``cmd/registry``, built by ``tools/flux/build.sh``) on a free port, in memory.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jaas.sources.digest import sha256_digest
from jaas.testing.processes import ChildProcess, ChildProcessError, Stoppable, free_port, log_tail

#: Media types ``flux push artifact`` uses (``fluxcd/pkg`` ``oci/meta.go``).
FLUX_CONFIG_MEDIA_TYPE = "application/vnd.cncf.flux.config.v1+json"
FLUX_CONTENT_MEDIA_TYPE = "application/vnd.cncf.flux.content.v1.tar+gzip"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
#: Seconds to wait for the registry to answer ``GET /v2/``.
START_TIMEOUT = 30.0
#: Seconds one registry request may take.
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class OciArtifact:
    """An image as ``flux push artifact`` builds it.

    Attributes:
        layer: the gzipped tarball of the files (what source-controller extracts).
        config: the config blob (``{}``).
        manifest: the manifest's exact bytes (its digest is the image digest).
        annotations: the manifest's annotations.
    """

    layer: bytes
    config: bytes
    manifest: bytes
    annotations: dict[str, str]

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of :attr:`manifest`: what source-controller puts in the revision."""
        return sha256_digest(self.manifest)


def build_flux_artifact(
    layer: bytes, *, source: str, revision: str, created: str = "1970-01-01T00:00:00Z"
) -> OciArtifact:
    """Wrap ``layer`` (a ``.tar.gz``) in an OCI image the way ``flux push artifact`` does.

    Args:
        layer: the gzipped tarball of the files (e.g. :func:`jaas.testing.flux.make_tarball`).
        source: ``--source``, written as ``org.opencontainers.image.source``.
        revision: ``--revision``, written as ``org.opencontainers.image.revision``.
        created: RFC 3339 time written as ``org.opencontainers.image.created``.
    """
    config = b"{}"
    annotations = {
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": source,
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": FLUX_CONFIG_MEDIA_TYPE,
            "digest": sha256_digest(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": FLUX_CONTENT_MEDIA_TYPE,
                "digest": sha256_digest(layer),
                "size": len(layer),
            }
        ],
        "annotations": annotations,
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()
    return OciArtifact(layer, config, body, annotations)


def _request(
    method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        raise RuntimeError(f"{method} {url}: HTTP {err.code}: {detail}") from err


def push_artifact(registry: str, repository: str, tag: str, artifact: OciArtifact) -> str:
    """Push ``artifact`` to ``http://<registry>/<repository>:<tag>``; return its manifest digest.

    Blobs go up as monolithic uploads (``POST /v2/<repository>/blobs/uploads/``,
    then ``PUT <location>?digest=…``), then the manifest by tag, as the OCI
    distribution specification describes.

    Args:
        registry: ``host:port`` of a plain-HTTP registry.
        repository: repository path, e.g. ``team-a/app``.
        tag: the tag to set.
        artifact: what :func:`build_flux_artifact` returned.

    Raises:
        RuntimeError: the registry refused a request (the message has its answer).
    """
    base = f"http://{registry}/v2/{repository}"
    for blob in (artifact.config, artifact.layer):
        _, headers = _request("POST", f"{base}/blobs/uploads/", b"")
        location = urllib.parse.urljoin(f"http://{registry}/", headers["Location"])
        separator = "&" if "?" in location else "?"
        digest = urllib.parse.quote(sha256_digest(blob))
        _request(
            "PUT",
            f"{location}{separator}digest={digest}",
            blob,
            {"Content-Type": "application/octet-stream"},
        )
    _request(
        "PUT",
        f"{base}/manifests/{tag}",
        artifact.manifest,
        {"Content-Type": OCI_MANIFEST_MEDIA_TYPE},
    )
    return artifact.digest


class OciRegistry(Stoppable):
    """go-containerregistry's in-memory registry on a free port (plain HTTP).

    Args:
        binary: the ``registry`` executable (:class:`jaas.testing.fluxcontrollers.FluxBinaries`).
        log_path: file for its output.
    """

    def __init__(self, binary: Path, log_path: Path) -> None:
        self.port = free_port()
        self._process = ChildProcess("registry", [str(binary), f"-port={self.port}"], log_path)
        self._wait_ready()

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, the host part of ``oci://`` URLs."""
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._process.check_running()
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        self._process.stop()
        raise ChildProcessError(
            f"registry not answering on {self.address} within {START_TIMEOUT:.0f} s:\n"
            f"{log_tail(self._process.log_path)}"
        )

    def stop(self) -> None:
        """Stop the registry (its content is gone)."""
        self._process.stop()
