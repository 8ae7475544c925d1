"""A stand-in for Flux's source-controller: serves real tarballs, writes source status.

:class:`FluxPublisher` holds ``.tar.gz`` artifacts in memory and serves them from
an aiohttp server on 127.0.0.1 under source-controller's storage layout,
``/<kind lowercased>/<namespace>/<name>/<file>`` (``fluxcd/pkg`` ``artifact/storage``).
Its ``publish_*`` methods create or update a ``source.toolkit.fluxcd.io/v1``
object through the real API (so the object must pass Flux's CRD schema),
labelled as Flux shard :data:`PUBLISHER_SHARD` so that a real source-controller
in the same cluster does not reconcile it, and
then set ``status.artifact``, ``status.conditions`` (``Ready=True``, reason
``Succeeded``) and ``status.observedGeneration`` through the status subresource,
as source-controller does after a successful reconcile.

Revisions follow Flux RFC-0005 (``fluxcd/flux2`` ``rfcs/0005-artifact-revision-and-digest``):
GitRepository ``<branch>@sha1:<commit>``, OCIRepository ``<tag>@sha256:<manifest
digest>``, Bucket ``sha256:<index digest>``; ``digest`` is always
``sha256:<hex>`` of the served tarball.

:func:`make_git_repo` makes real Git commits, and :func:`make_tarball` packs
files the way Flux's archiver does (sorted, mtime 0, mode 0644, uid/gid 0).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import gzip
import hashlib
import io
import os
import socket
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from jaas.api.conditions import find_condition, set_condition
from jaas.api.constants import (
    EXTERNAL_ARTIFACT_KIND,
    FLUX_SOURCE_API_VERSION,
    FLUX_SOURCE_GROUP,
    FLUX_SOURCE_VERSION,
    READY,
    SOURCE_KIND_PLURALS,
)
from jaas.sources.digest import sha256_digest
from jaas.testing.fluxcontrollers import SHARD_LABEL
from jaas.testing.registry import build_flux_artifact

#: ``spec.interval`` written on the sources this module creates.
SOURCE_INTERVAL = "1m"
#: Author and committer of every commit :func:`make_git_repo` makes.
GIT_IDENTITY = ("jaas-py tests", "tests@jaas-py.invalid")
#: Author and committer date of every such commit (fixed, so shas are reproducible).
GIT_DATE = "2026-01-01T00:00:00Z"
#: The Flux shard (value of ``sharding.fluxcd.io/key``) of every source the
#: publisher writes: a real source-controller running beside it
#: (:mod:`jaas.testing.fluxcontrollers`) leaves them alone.
PUBLISHER_SHARD = "jaas-py-publisher"
#: Reason source-controller writes on ``Ready=True``.
SUCCEEDED = "Succeeded"


@dataclass(frozen=True)
class PublishedArtifact:
    """What a publish wrote to ``status.artifact`` and serves.

    Attributes:
        url: download URL, ``http://127.0.0.1:<port>/<path>``.
        digest: ``status.artifact.digest`` as written (``<algorithm>:<hex>``; may be a
            deliberately wrong value when the caller overrode it).
        revision: ``status.artifact.revision``.
        size: tarball size in bytes.
        path: ``status.artifact.path``, ``<kind>/<namespace>/<name>/<file>``.
    """

    url: str
    digest: str
    revision: str
    size: int
    path: str


def make_tarball(files: Mapping[str, str | bytes]) -> bytes:
    """Pack ``files`` into a reproducible ``.tar.gz``.

    Entries are regular files only, sorted by name, with mode 0644, uid/gid 0,
    mtime 0 (PAX format), and the gzip header carries mtime 0, as Flux's
    archiver sanitises headers (``fluxcd/pkg`` ``tar``/``artifact/storage``).

    Args:
        files: path inside the archive (``/``-separated, relative) to content;
            ``str`` content is encoded as UTF-8.

    Returns:
        The gzip-compressed tar bytes.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            content = files[name]
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _git_env() -> dict[str, str]:
    name, email = GIT_IDENTITY
    env = dict(os.environ)
    env.update(
        {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_AUTHOR_DATE": GIT_DATE,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
            "GIT_COMMITTER_DATE": GIT_DATE,
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
        }
    )
    return env


def _git(repo: Path, *args: str) -> bytes:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], env=_git_env(), capture_output=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"git {' '.join(args)} failed ({result.returncode}): {result.stderr.decode().strip()}"
        )
    return result.stdout


def make_git_repo(path: Path, files: Mapping[str, str | bytes], message: str) -> str:
    """Commit ``files`` to the Git repository at ``path`` with the real ``git``.

    The first call runs ``git init`` (branch ``main``); later calls add a commit
    on the current branch. Files are written (parents created) and staged with
    ``git add -A``, so files written earlier stay unless overwritten. Author,
    committer and dates are fixed (:data:`GIT_IDENTITY`, :data:`GIT_DATE`) and
    the user's Git configuration is ignored, so the same history gives the same
    shas. An unchanged tree still makes a (empty) commit.

    Args:
        path: repository directory (created if missing).
        files: relative path to content; ``str`` content is written as UTF-8.
        message: commit message.

    Returns:
        The new commit's sha (40 hex digits).

    Raises:
        RuntimeError: a git command failed (the message carries git's stderr).
    """
    path.mkdir(parents=True, exist_ok=True)
    if not (path / ".git").exists():
        _git(path, "init", "--quiet", "--initial-branch=main")
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content)
        else:
            target.write_bytes(content)
    _git(path, "add", "-A")
    _git(path, "commit", "--quiet", "--allow-empty", "--no-gpg-sign", "-m", message)
    return _git(path, "rev-parse", "HEAD").decode().strip()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _default_spec(kind: str, namespace: str, name: str) -> dict[str, Any]:
    """Return a minimal spec that passes Flux v1's CRD schema for ``kind``."""
    if kind == "GitRepository":
        return {
            "url": f"https://git.invalid/{namespace}/{name}.git",
            "interval": SOURCE_INTERVAL,
            "ref": {"branch": "main"},
        }
    if kind == "OCIRepository":
        return {
            "url": f"oci://registry.invalid/{namespace}/{name}",
            "interval": SOURCE_INTERVAL,
            "ref": {"tag": "latest"},
        }
    if kind == "Bucket":
        return {
            "bucketName": name,
            "endpoint": "s3.invalid",
            "provider": "generic",
            "interval": SOURCE_INTERVAL,
        }
    if kind == EXTERNAL_ARTIFACT_KIND:
        return {}
    raise ValueError(f"unknown Flux source kind {kind!r}; known: {sorted(SOURCE_KIND_PLURALS)}")


class FluxPublisher:
    """Serves tarballs over HTTP and sets Flux source objects' status like source-controller.

    Use ``async with FluxPublisher() as flux:`` or :meth:`start` / :meth:`close`.
    All publish methods take a kubernetes_asyncio ``ApiClient`` whose identity
    may create sources and write their status (the admin, in tests).

    Attributes:
        requests: number of GET requests served per artifact path (404s included),
            for tests that count downloads.
        traceparents: the W3C ``traceparent`` header of every GET per artifact
            path (``""`` when a request had none), in arrival order.
    """

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}
        self._redirects: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._port = 0
        self.requests: collections.Counter[str] = collections.Counter()
        self.traceparents: collections.defaultdict[str, list[str]] = collections.defaultdict(list)

    # ------------------------------------------------------------------ HTTP server

    async def start(self) -> None:
        """Start serving on a free 127.0.0.1 port."""
        app = web.Application()
        app.router.add_get("/{path:.+}", self._serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FluxPublisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash).

        Raises:
            RuntimeError: the server is not started.
        """
        if self._runner is None:
            raise RuntimeError("FluxPublisher is not started")
        return f"http://127.0.0.1:{self._port}"

    async def _serve(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        if request.method == "GET":
            self.requests[path] += 1
            self.traceparents[path].append(request.headers.get("traceparent", ""))
        location = self._redirects.get(path)
        if location is not None:
            raise web.HTTPFound(location)
        data = self._files.get(path)
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/gzip")

    def put_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``/<path>`` (replacing what was there) and return its URL."""
        self._files[path.lstrip("/")] = data
        return f"{self.base_url}/{path.lstrip('/')}"

    def put_redirect(self, path: str, location: str) -> str:
        """Answer GET ``/<path>`` with ``302 Found`` to ``location``; return the path's URL."""
        self._redirects[path.lstrip("/")] = location
        return f"{self.base_url}/{path.lstrip('/')}"

    def remove_file(self, path_or_url: str) -> None:
        """Stop serving a file (later GETs answer 404); unknown paths are ignored."""
        path = path_or_url.removeprefix(self.base_url).lstrip("/")
        self._files.pop(path, None)

    # ------------------------------------------------------------------ publishing

    async def publish_tarball(
        self,
        api: ApiClient,
        kind: str,
        namespace: str,
        name: str,
        tarball: bytes,
        revision: str,
        *,
        digest: str | None = None,
        spec: Mapping[str, Any] | None = None,
        filename: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> PublishedArtifact:
        """Serve ``tarball`` and make ``kind/namespace/name`` Ready with it as its artifact.

        Creates the source (or replaces its spec), then writes its status through
        the status subresource: ``artifact`` {path, url, revision, digest,
        lastUpdateTime, size[, metadata]}, ``conditions`` [Ready=True,
        reason Succeeded, observedGeneration], and ``observedGeneration``
        (except on ExternalArtifact, whose status has no such field).

        Args:
            api: client allowed to write the source and its status.
            kind: GitRepository, OCIRepository, Bucket or ExternalArtifact.
            namespace: the source's namespace (must exist).
            name: the source's name.
            tarball: the bytes to serve.
            revision: ``status.artifact.revision``.
            digest: ``status.artifact.digest``; default ``sha256:<hex>`` of
                ``tarball``. Pass another value to publish a wrong digest.
            spec: the source's spec; default a minimal valid one for ``kind``.
            filename: the stored file's name; default ``<sha256 hex>.tar.gz``.
            metadata: ``status.artifact.metadata`` (e.g. OCI annotations).

        Returns:
            What was published.

        Raises:
            ValueError: unknown ``kind``.
            kubernetes_asyncio.client.exceptions.ApiException: the API refused.
        """
        if kind not in SOURCE_KIND_PLURALS:
            raise ValueError(f"unknown Flux source kind {kind!r}")
        real_digest = sha256_digest(tarball)
        filename = filename or f"{real_digest.removeprefix('sha256:')}.tar.gz"
        path = f"{kind.lower()}/{namespace}/{name}/{filename}"
        url = self.put_file(path, tarball)
        artifact: dict[str, Any] = {
            "path": path,
            "url": url,
            "revision": revision,
            "digest": digest if digest is not None else real_digest,
            "lastUpdateTime": _now(),
            "size": len(tarball),
        }
        if metadata:
            artifact["metadata"] = dict(metadata)
        obj = await self._upsert(api, kind, namespace, name, spec)
        await self._write_status(
            api,
            obj,
            artifact=artifact,
            ready="True",
            reason=SUCCEEDED,
            message=f"stored artifact for revision '{revision}'",
        )
        return PublishedArtifact(url, artifact["digest"], revision, len(tarball), path)

    async def publish_git(
        self,
        api: ApiClient,
        namespace: str,
        name: str,
        repo_dir: Path,
        *,
        ref: str = "HEAD",
        branch: str = "main",
    ) -> PublishedArtifact:
        """Publish a commit of a real Git repository as a GitRepository artifact.

        The tarball is ``git archive --format=tar.gz <ref>`` (the tree at that
        commit; source-controller's GitRepository artifact is likewise a tar.gz
        of the checked-out tree), stored as ``<commit>.tar.gz``; the revision is
        ``<branch>@sha1:<commit>`` and ``spec.ref.branch`` is ``branch``.

        Raises:
            RuntimeError: git failed (e.g. unknown ``ref``).
            kubernetes_asyncio.client.exceptions.ApiException: the API refused.
        """
        commit = (await _git_async(repo_dir, "rev-parse", "--verify", f"{ref}^{{commit}}")).strip()
        sha = commit.decode()
        tarball = await _git_async(repo_dir, "archive", "--format=tar.gz", sha)
        spec = _default_spec("GitRepository", namespace, name)
        spec["ref"] = {"branch": branch}
        return await self.publish_tarball(
            api,
            "GitRepository",
            namespace,
            name,
            tarball,
            f"{branch}@sha1:{sha}",
            spec=spec,
            filename=f"{sha}.tar.gz",
        )

    async def publish_oci(
        self,
        api: ApiClient,
        namespace: str,
        name: str,
        files: Mapping[str, str | bytes],
        *,
        tag: str = "latest",
    ) -> PublishedArtifact:
        """Publish ``files`` as an OCIRepository artifact, packed like ``flux push artifact``.

        The files become one gzipped tar layer (:func:`make_tarball`) of the
        image :func:`jaas.testing.registry.build_flux_artifact` makes, with the
        tag as its revision annotation. The served artifact is that layer. The
        revision is ``<tag>@sha256:<hex>`` of the **manifest**, as
        source-controller reports it (the manifest digest, not the layer
        digest); the file is stored as ``<manifest hex>.tar.gz``, and
        ``status.artifact.metadata`` carries the manifest's annotations.

        Raises:
            kubernetes_asyncio.client.exceptions.ApiException: the API refused.
        """
        source = f"oci://registry.invalid/{namespace}/{name}"
        image = build_flux_artifact(make_tarball(files), source=source, revision=tag)
        spec = _default_spec("OCIRepository", namespace, name)
        spec["ref"] = {"tag": tag}
        return await self.publish_tarball(
            api,
            "OCIRepository",
            namespace,
            name,
            image.layer,
            f"{tag}@{image.digest}",
            spec=spec,
            filename=f"{image.digest.removeprefix('sha256:')}.tar.gz",
            metadata=image.annotations,
        )

    async def publish_bucket(
        self,
        api: ApiClient,
        namespace: str,
        name: str,
        files: Mapping[str, str | bytes],
    ) -> PublishedArtifact:
        r"""Publish ``files`` (object keys to contents) as a Bucket artifact.

        The revision is ``sha256:<hex>`` of source-controller's object index:
        one ``<key> <etag>\n`` line per object, keys sorted
        (``source-controller`` ``internal/index/digest.go``), with the etag an
        S3 single-part upload gets (the MD5 hex of the content). The tarball
        (:func:`make_tarball`) is stored as ``<revision hex>.tar.gz``.

        Raises:
            kubernetes_asyncio.client.exceptions.ApiException: the API refused.
        """
        index = "".join(
            f"{key} {hashlib.md5(_as_bytes(files[key]), usedforsecurity=False).hexdigest()}\n"
            for key in sorted(files)
        )
        revision = sha256_digest(index.encode())
        return await self.publish_tarball(
            api,
            "Bucket",
            namespace,
            name,
            make_tarball(files),
            revision,
            filename=f"{revision.removeprefix('sha256:')}.tar.gz",
        )

    async def create_without_artifact(
        self,
        api: ApiClient,
        kind: str,
        namespace: str,
        name: str,
        *,
        ready: bool = False,
        reason: str = "Progressing",
        message: str = "reconciliation in progress",
        spec: Mapping[str, Any] | None = None,
    ) -> None:
        """Create (or update) a source that has no ``status.artifact``.

        Its status holds one ``Ready`` condition, ``True`` or ``False`` per
        ``ready``, with ``reason`` and ``message``; an artifact written earlier
        is removed. For SourceNotReady tests.

        Raises:
            ValueError: unknown ``kind``.
            kubernetes_asyncio.client.exceptions.ApiException: the API refused.
        """
        if kind not in SOURCE_KIND_PLURALS:
            raise ValueError(f"unknown Flux source kind {kind!r}")
        obj = await self._upsert(api, kind, namespace, name, spec)
        await self._write_status(
            api,
            obj,
            artifact=None,
            ready="True" if ready else "False",
            reason=reason,
            message=message,
        )

    # ------------------------------------------------------------------ API writes

    async def _upsert(
        self,
        api: ApiClient,
        kind: str,
        namespace: str,
        name: str,
        spec: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        objects = CustomObjectsApi(api)
        plural = SOURCE_KIND_PLURALS[kind]
        wanted = dict(spec) if spec is not None else _default_spec(kind, namespace, name)
        labels = {SHARD_LABEL: PUBLISHER_SHARD}
        body = {
            "apiVersion": FLUX_SOURCE_API_VERSION,
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": wanted,
        }
        try:
            created: dict[str, Any] = await objects.create_namespaced_custom_object(
                FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, namespace, plural, body
            )
            return created
        except ApiException as exc:
            if exc.status != 409:
                raise
        while True:
            current: dict[str, Any] = await objects.get_namespaced_custom_object(
                FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, namespace, plural, name
            )
            current["spec"] = wanted
            current["metadata"].setdefault("labels", {}).update(labels)
            try:
                replaced: dict[str, Any] = await objects.replace_namespaced_custom_object(
                    FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, namespace, plural, name, current
                )
                return replaced
            except ApiException as exc:
                if exc.status != 409:
                    raise

    async def _write_status(
        self,
        api: ApiClient,
        obj: dict[str, Any],
        *,
        artifact: dict[str, Any] | None,
        ready: str,
        reason: str,
        message: str,
    ) -> None:
        """Replace ``obj``'s status through the status subresource (PUT), retrying conflicts."""
        objects = CustomObjectsApi(api)
        kind: str = obj["kind"]
        plural = SOURCE_KIND_PLURALS[kind]
        namespace: str = obj["metadata"]["namespace"]
        name: str = obj["metadata"]["name"]
        while True:
            generation: int = obj["metadata"].get("generation", 1)
            previous = find_condition((obj.get("status") or {}).get("conditions"), READY)
            status: dict[str, Any] = {
                "conditions": set_condition(
                    [previous] if previous else [],
                    type_=READY,
                    status=ready == "True",
                    reason=reason,
                    message=message,
                    observed_generation=generation,
                    now=_now(),
                ),
            }
            if artifact is not None:
                status["artifact"] = artifact
            if kind != EXTERNAL_ARTIFACT_KIND:
                status["observedGeneration"] = generation
            obj["status"] = status
            try:
                await objects.replace_namespaced_custom_object_status(
                    FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, namespace, plural, name, obj
                )
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
            obj = await objects.get_namespaced_custom_object(
                FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, namespace, plural, name
            )


def _as_bytes(content: str | bytes) -> bytes:
    return content.encode() if isinstance(content, str) else content


async def _git_async(repo: Path, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "git",
        "-C",
        str(repo),
        *args,
        env=_git_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(
            f"git {' '.join(args)} failed ({proc.returncode}): {err.decode().strip()}"
        )
    return out
