"""Deterministic ``.tar.gz`` packaging of a snippet's output, with its revision and digest.

Follows metio/jaas ``internal/operator/publisher.go`` and
``internal/storage/store.go`` (jaas-reference §3.7):

- ``output: rendered``: ``rendered.json``; revision = ``sha256:`` + sha256
  of that content (JaaS's single entry, unchanged); beside it jaas-py adds
  ``kustomization.yaml`` and, when the render holds Kubernetes objects,
  ``objects.yaml``, so Flux's kustomize-controller applies them
  (:mod:`jaas.storage.objects`); the revision does not depend on them. The
  evaluator process computes those files from the value it parsed and sends
  them with the result: nothing here parses the render, so packaging costs
  time and memory in proportion to bytes only;
- ``output: source``: every file at its relative path; revision =
  ``sha256:`` + sha256 over the files sorted by name of
  ``name NUL content NUL`` …;
- the tarball: PAX-format tar, entries sorted by name, mode 0644, mtime 0,
  uid/gid 0, empty user and group names, no directory entries, gzip with
  header mtime 0, no file name and OS "unknown" (as Go's ``compress/gzip``);
  digest = ``sha256:`` + sha256 of the tarball. The same input gives
  byte-identical output (for a given zlib build: the deflate stream itself
  depends on the zlib implementation, so digests may differ from Go JaaS's);
- caps, checked before anything is written: each entry at most 16 MiB and
  the total at most 64 MiB (what every consumer using JaaS's fetcher limits
  can extract), plus an optional operator cap (``--max-artifact-bytes``, on
  ``rendered.json`` or the source files); exceeding one is ``ArtifactTooLarge``.

Packaging a large output is CPU-bound (deflate); call it from a thread when
on an event loop.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from jaas.api.reasons import Reason, ReasonError
from jaas.sources.digest import format_digest, sha256_digest
from jaas.sources.extract import MAX_ENTRY_BYTES, MAX_EXTRACTED_BYTES, safe_entry_name

#: The single entry of an ``output: rendered`` artifact.
RENDERED_FILE_NAME: Final = "rendered.json"
#: Deflate level; 6 is zlib's and Go's default.
GZIP_LEVEL: Final = 6
#: Gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS 255 (unknown).
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


@dataclass(frozen=True)
class Package:
    """A packaged artifact.

    Attributes:
        data: the ``.tar.gz`` bytes.
        revision: ``sha256:<hex>`` of the content (see module docstring).
        digest: ``sha256:<hex>`` of ``data``.
        objects_summary: what ``rendered.json`` holds, for the Ready message
            (``jaas.storage.objects.RenderedObjects.summary``, e.g. ``"3
            Kubernetes objects"``); None for ``output: source``.
    """

    data: bytes
    revision: str
    digest: str
    objects_summary: str | None = None

    @property
    def size(self) -> int:
        """Size of the tarball in bytes (``status.artifact.size``)."""
        return len(self.data)

    @property
    def file_name(self) -> str:
        """``sha256-<revision hex>.tar.gz``: the stored file and last URL segment."""
        return self.revision.replace(":", "-", 1) + ".tar.gz"


def source_revision(files: Mapping[str, bytes]) -> str:
    """``sha256:`` + sha256 over ``name NUL content NUL`` of the files sorted by name (JaaS)."""
    hasher = hashlib.sha256()
    for name in sorted(files):
        hasher.update(name.encode())
        hasher.update(b"\x00")
        hasher.update(files[name])
        hasher.update(b"\x00")
    return format_digest(hasher.hexdigest())


def package_rendered(
    rendered: bytes,
    consumer_files: Mapping[str, bytes],
    objects_summary: str,
    *,
    max_artifact_bytes: int | None = None,
) -> Package:
    """Package rendered JSON as ``rendered.json`` plus the files kustomize applies.

    Parses nothing: ``consumer_files`` and ``objects_summary`` come with the
    evaluation result (the evaluator computes them with
    ``jaas.storage.objects.consumer_files_for`` from the value it rendered).

    Args:
        rendered: the ``rendered.json`` bytes; the revision is their sha256.
        consumer_files: ``{file name: content}`` to add beside it
            (``kustomization.yaml``, ``objects.yaml``).
        objects_summary: what the render holds, kept as
            ``Package.objects_summary`` for the Ready message.
        max_artifact_bytes: the operator's cap on ``rendered.json``
            (``--max-artifact-bytes``), None for none.

    Raises:
        ReasonError: ``ArtifactTooLarge`` when ``rendered`` is over
            ``max_artifact_bytes``, an entry over 16 MiB or all of them over
            64 MiB.
        ValueError: a consumer file is named ``rendered.json`` or with a name
            consumers would drop (see :func:`jaas.sources.extract.safe_entry_name`).
    """
    for name in consumer_files:
        if name == RENDERED_FILE_NAME or safe_entry_name(name) != name:
            raise ValueError(f"{name!r} cannot be published beside {RENDERED_FILE_NAME}")
    _check_caps({RENDERED_FILE_NAME: rendered}, max_artifact_bytes)
    entries = {RENDERED_FILE_NAME: rendered, **consumer_files}
    _check_caps(entries, None)
    data = build_tarball(entries)
    return Package(data, sha256_digest(rendered), sha256_digest(data), objects_summary)


def package_sources(
    files: Mapping[str, bytes], *, max_artifact_bytes: int | None = None
) -> Package:
    """Package source files (``output: source``) at their relative paths.

    Raises:
        ReasonError: ``InvalidSpec`` when a name is one consumers would drop
            (see :func:`jaas.sources.extract.safe_entry_name`) or is not in
            its clean form; ``ArtifactTooLarge`` when an entry is over
            16 MiB, the total over 64 MiB or over ``max_artifact_bytes``.
    """
    for name in files:
        if safe_entry_name(name) != name:
            raise ReasonError(
                Reason.INVALID_SPEC,
                f"file {name!r} would be silently dropped by artifact consumers in "
                "output=source mode (allowed: clean relative paths of [A-Za-z0-9._/-], "
                "no dot-prefixed segments, no traversal)",
            )
    _check_caps(files, max_artifact_bytes)
    data = build_tarball(files)
    return Package(data, source_revision(files), sha256_digest(data))


def _check_caps(files: Mapping[str, bytes], max_artifact_bytes: int | None) -> None:
    total = 0
    for name, content in files.items():
        if len(content) > MAX_ENTRY_BYTES:
            raise ReasonError(
                Reason.ARTIFACT_TOO_LARGE,
                f"{name} is {len(content)} bytes, over the {MAX_ENTRY_BYTES}-byte per-file "
                "limit consumers can extract",
            )
        total += len(content)
    if total > MAX_EXTRACTED_BYTES:
        raise ReasonError(
            Reason.ARTIFACT_TOO_LARGE,
            f"the artifact content is {total} bytes, over the {MAX_EXTRACTED_BYTES}-byte "
            "limit consumers can extract",
        )
    if max_artifact_bytes is not None and total > max_artifact_bytes:
        raise ReasonError(
            Reason.ARTIFACT_TOO_LARGE,
            f"the artifact content is {total} bytes, over --max-artifact-bytes "
            f"({max_artifact_bytes})",
        )


def build_tarball(files: Mapping[str, bytes]) -> bytes:
    """Return the deterministic ``.tar.gz`` of ``files`` (names used as given, sorted)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            content = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(content))
    return gzip_deterministic(buffer.getvalue())


def gzip_deterministic(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """Gzip ``data`` with a fixed header (mtime 0, no name, OS unknown), as Go does."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data) + compressor.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return _GZIP_HEADER + body + trailer
