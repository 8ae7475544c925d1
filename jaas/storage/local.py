"""The local-directory artifact store: ``<root>/<namespace>/<name>/sha256-<hex>.tar.gz``.

Follows metio/jaas ``internal/storage/store.go`` (jaas-reference §3.9, §3.10,
§7.3): content-addressed puts that skip an existing identical file but bump
its mtime (a revert re-anchors the GC grace of what it displaces), writes to
a temporary file then an atomic rename, files 0644, prune by keep-set with a
supersession grace, delete of a snippet's whole tree, a sweep of leftover
temporary files. Only names of the artifact shape are ever pruned, so
foreign files survive.

Several shard processes share one root: each operation on a snippet holds an
exclusive ``flock`` on the snippet's directory (JaaS holds a per-key mutex,
which only covers one process). Temporary files have unique names, so even
two writers of one revision cannot interleave. Every method blocks (file
I/O, fsync); call it from a thread when on an event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from jaas.sources.digest import sha256_digest
from jaas.storage.package import Package

#: File name of a stored artifact: ``sha256-<revision hex>.tar.gz``.
ARTIFACT_FILE_NAME: Final = re.compile(r"sha256-[0-9a-f]{64}\.tar\.gz")
#: A namespace or snippet name as a path segment: Kubernetes names, no leading dot.
_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TMP_SUFFIX: Final = ".tmp"
_TRASH_PREFIX: Final = ".trash-"


def check_segment(value: str, what: str) -> None:
    """Refuse a namespace, name or file name that could leave its directory.

    Raises:
        ValueError: empty, starting with ``.``, or holding a character outside
            ``[A-Za-z0-9._-]`` (so no slash, backslash, NUL or ``..``).
    """
    if _SEGMENT.fullmatch(value) is None:
        raise ValueError(f"invalid {what} for the artifact store: {value!r}")


@dataclass(frozen=True)
class Stored:
    """What the store serves for a revision.

    Attributes:
        path: ``<namespace>/<name>/sha256-<hex>.tar.gz``, relative to the root
            (also the URL path under ``--storage-base-url``).
        digest: ``sha256:<hex>`` of the stored bytes.
        size: their length in bytes.
    """

    path: str
    digest: str
    size: int


@dataclass(frozen=True)
class Pruned:
    """What a prune did: ``removed`` file names, ``next_in`` seconds until the next is due."""

    removed: list[str]
    next_in: float | None


class LocalStore:
    """Artifacts on a local (or shared) filesystem, safe for concurrent processes.

    Args:
        root: storage root (created with mode 0750 if missing).
        durable: fsync each new file and its directory before it becomes
            visible, so that after a crash a published URL never serves a
            torn file. Turn off only for throwaway load tests.
    """

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self.root.mkdir(mode=0o750, parents=True, exist_ok=True)

    def path(self, namespace: str, name: str, file_name: str) -> Path:
        """Absolute path of a stored artifact (which may not exist).

        Raises:
            ValueError: a segment is not a safe single path component.
        """
        check_segment(namespace, "namespace")
        check_segment(name, "name")
        check_segment(file_name, "file name")
        return self.root / namespace / name / file_name

    def exists(self, namespace: str, name: str, file_name: str) -> bool:
        """Whether the artifact file is stored.

        Raises:
            ValueError: a segment is not a safe single path component.
        """
        return self.path(namespace, name, file_name).is_file()

    def put(self, namespace: str, name: str, package: Package) -> Stored:
        """Store ``package`` unless its revision is stored already; say what is served.

        A stored revision file is never rewritten. If the file exists and a
        newer revision was stored after it (a revert), its mtime is bumped so
        the revisions it displaces get a fresh GC grace; a republish of the
        newest revision leaves every mtime alone, so a grace already running
        (across restarts too) is not extended. Should the existing bytes
        differ from ``package.data`` (another zlib build compressed the same
        content differently), the stored
        bytes stay and their digest is returned, so a URL in the keep-set
        keeps serving the same bytes for as long as it exists.

        Raises:
            ValueError: an unsafe namespace or name, or a file name not of the
                ``sha256-<hex>.tar.gz`` shape.
            OSError: the file could not be written.
        """
        file_name = package.file_name
        if ARTIFACT_FILE_NAME.fullmatch(file_name) is None:
            raise ValueError(f"not an artifact file name: {file_name!r}")
        final = self.path(namespace, name, file_name)
        relative = f"{namespace}/{name}/{file_name}"
        with self._locked(namespace, name, create=True) as directory:
            assert directory is not None
            existing = _read(final)
            if existing is not None:
                if _is_revert(directory, file_name):
                    with contextlib.suppress(FileNotFoundError):
                        os.utime(final)
                if existing == package.data:
                    return Stored(relative, package.digest, package.size)
                return Stored(relative, sha256_digest(existing), len(existing))
            tmp = directory / f".{file_name}.{secrets.token_hex(6)}{_TMP_SUFFIX}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(package.data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.durable:
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise
            os.close(fd)
            os.replace(tmp, final)
            if self.durable:
                _fsync_directory(directory)
        return Stored(relative, package.digest, package.size)

    def delete(self, namespace: str, name: str) -> None:
        """Remove every stored artifact of the snippet (its whole directory), at once.

        The directory is first renamed to a hidden trash name (never served,
        never matched by another operation), then removed.

        Raises:
            ValueError: an unsafe namespace or name.
            OSError: the directory could not be removed.
        """
        check_segment(namespace, "namespace")
        check_segment(name, "name")
        trash = self.root / namespace / f"{_TRASH_PREFIX}{name}.{secrets.token_hex(6)}"
        with self._locked(namespace, name, create=False) as directory:
            if directory is None:
                return
            os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=False)

    def prune(
        self,
        namespace: str,
        name: str,
        keep: Collection[str],
        *,
        grace: float = 0.0,
        now: float | None = None,
    ) -> Pruned:
        """Delete the snippet's stored artifacts whose file names are not in ``keep``.

        An empty ``keep`` deletes nothing (use :meth:`delete`). With
        ``grace`` > 0 (seconds; JaaS ``--artifact-gc-grace``) a file survives
        until ``grace`` has passed since it was superseded: the earliest mtime
        of a strictly newer artifact file, or its own mtime when none is newer,
        so the grace survives restarts. Only ``sha256-<hex>.tar.gz`` files are
        considered.

        Args:
            namespace: snippet namespace.
            name: snippet name.
            keep: artifact file names to retain.
            grace: seconds a superseded artifact stays fetchable.
            now: the current time (seconds since the epoch); default ``time.time()``.

        Returns:
            The file names deleted, and in how many seconds the next file
            outside ``keep`` reaches its grace (``None``: none is waiting).

        Raises:
            ValueError: an unsafe namespace or name.
            OSError: a file could not be deleted.
        """
        check_segment(namespace, "namespace")
        check_segment(name, "name")
        if not keep:
            return Pruned([], None)
        current = time.time() if now is None else now
        removed: list[str] = []
        next_due: float | None = None
        with self._locked(namespace, name, create=False) as directory:
            if directory is None:
                return Pruned([], None)
            candidates: list[tuple[str, float]] = []
            with os.scandir(directory) as it:
                for entry in it:
                    if ARTIFACT_FILE_NAME.fullmatch(entry.name) is None:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        candidates.append((entry.name, entry.stat().st_mtime))
            for file_name, mtime in candidates:
                if file_name in keep:
                    continue
                if grace > 0:
                    newer = [m for _, m in candidates if m > mtime]
                    superseded = min(newer) if newer else mtime
                    remaining = superseded + grace - current
                    if remaining > 0:
                        next_due = remaining if next_due is None else min(next_due, remaining)
                        continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / file_name)
                removed.append(file_name)
        return Pruned(sorted(removed), next_due)

    def sweep(self, max_tmp_age: float = 3600.0, *, now: float | None = None) -> int:
        """Remove temporary files and trash directories older than ``max_tmp_age`` seconds.

        These are the leftovers of a process that died mid-put or mid-delete.
        Returns how many were removed.
        """
        current = time.time() if now is None else now
        removed = 0
        for namespace_dir in _subdirectories(self.root):
            for entry_dir in _subdirectories(namespace_dir):
                if entry_dir.name.startswith(_TRASH_PREFIX):
                    if _age(entry_dir, current) > max_tmp_age:
                        shutil.rmtree(entry_dir, ignore_errors=True)
                        removed += 1
                    continue
                for leftover in entry_dir.glob(f".*{_TMP_SUFFIX}"):
                    if _age(leftover, current) > max_tmp_age:
                        with contextlib.suppress(FileNotFoundError):
                            leftover.unlink()
                            removed += 1
        return removed

    @contextlib.contextmanager
    def _locked(self, namespace: str, name: str, *, create: bool) -> Iterator[Path | None]:
        """Hold an exclusive flock on ``<root>/<ns>/<name>``; yield it, or None if absent."""
        directory = self.root / namespace / name
        while True:
            if create:
                # pathlib raises FileExistsError when it saw EEXIST but then no directory:
                # a concurrent delete renamed it away (retry below), or a non-directory
                # is in the way (os.open then raises NotADirectoryError).
                with contextlib.suppress(FileExistsError):
                    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                if create:
                    continue  # deleted between mkdir and open: make it again
                yield None
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = os.stat(directory)
                except FileNotFoundError:
                    current = None
                held = os.fstat(fd)
                if current is not None and (current.st_ino, current.st_dev) == (
                    held.st_ino,
                    held.st_dev,
                ):
                    yield directory
                    return
                # A concurrent delete moved the directory away while we waited.
            finally:
                os.close(fd)


def _is_revert(directory: Path, file_name: str) -> bool:
    """Whether some other stored artifact is newer than ``file_name``."""
    try:
        own = (directory / file_name).stat().st_mtime
        with os.scandir(directory) as it:
            return any(
                entry.name != file_name
                and ARTIFACT_FILE_NAME.fullmatch(entry.name) is not None
                and entry.stat().st_mtime > own
                for entry in it
            )
    except FileNotFoundError:
        return False


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _subdirectories(directory: Path) -> list[Path]:
    try:
        with os.scandir(directory) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
