"""The pod-wide, content-addressed cache of downloaded Flux artifacts.

Every shard and evaluator process of a pod opens the same directory; an
artifact is stored once under the sha256 hex of its tarball, so N snippets
reading one source revision cause one download (design.md §3
"Content-addressed cache"). Layout under ``root``::

    objects/<hex>.zst           the tarball, zstd-compressed (written tmp + rename)
    objects/.<hex>.<id>.tmp     a write in progress
    locks/<hex>.lock            flock target while one process fills <hex>

- Reads are verified: the decompressed bytes are re-hashed; a corrupt or
  truncated entry is deleted and counts as a miss.
- Fills are single-flight per digest: inside a process concurrent callers
  share one :class:`asyncio.Task`; across processes the filler holds an
  exclusive ``flock`` on ``locks/<hex>.lock`` and waiters re-check the cache
  once they get the lock. The blocking ``flock`` runs in a dedicated thread
  pool so the event loop never blocks. The filler unlinks the lock file
  while still holding it; a waiter that then locks the unlinked file notices
  (inode changed) and retries, so lock files do not pile up.
- Size is bounded: a hit touches the entry's mtime, and after each write the
  oldest entries (by mtime) are evicted until the total is at most
  ``max_bytes``.

Blocking methods (:meth:`ArtifactCache.get`, :meth:`ArtifactCache.put`) do
file I/O, zstd and sha256 on up to tens of MiB; call them from a thread when
on an event loop. :meth:`ArtifactCache.get_or_fetch` does that itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

import zstandard

from jaas.sources.digest import is_sha256_hex

#: Default bound on the cache's on-disk size (compressed bytes).
DEFAULT_MAX_BYTES: Final = 1 << 30
#: zstd level; 3 is zstd's default speed/ratio point.
ZSTD_LEVEL: Final = 3
#: Largest decompressed entry :meth:`ArtifactCache.get` accepts (guards a corrupt frame header).
MAX_ENTRY_BYTES: Final = 1 << 30
#: Temporary files older than this (seconds) are leftovers of a crashed writer.
STALE_TMP_SECONDS: Final = 3600.0
_SUFFIX: Final = ".zst"

Loader = Callable[[], Awaitable[bytes]]
_log = logging.getLogger(__name__)


class ArtifactCache:
    """Content-addressed, size-bounded, multi-process-safe store of artifact tarballs.

    Args:
        root: cache directory (created if missing); share it between processes.
        max_bytes: bound on the compressed bytes kept on disk (default 1 GiB);
            an artifact that alone compresses to more is returned but not kept.
        lock_threads: threads that may wait in ``flock`` at once (one per
            digest being filled by another process).

    Counters (per process, plain ints): ``hits`` (served from disk),
    ``misses`` (not on disk, loader called), ``downloads`` (loader calls
    that returned bytes), ``coalesced`` (callers that joined a fill already
    running in this process), ``evictions``, ``corrupt`` (entries deleted
    because they failed verification) and ``write_errors`` (downloads that
    could not be stored, e.g. disk full; the caller still gets the bytes).

    The root must be on a local filesystem (e.g. the pod's ``emptyDir``):
    ``flock`` is what serialises processes.
    """

    def __init__(
        self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES, *, lock_threads: int = 16
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._objects = self.root / "objects"
        self._locks = self.root / "locks"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._locks.mkdir(parents=True, exist_ok=True)
        self._inflight: dict[str, asyncio.Task[bytes]] = {}
        self._lock_pool = ThreadPoolExecutor(
            max_workers=lock_threads, thread_name_prefix="jaas-cache-flock"
        )
        self.hits = 0
        self.misses = 0
        self.downloads = 0
        self.coalesced = 0
        self.evictions = 0
        self.corrupt = 0
        self.write_errors = 0

    def object_path(self, hex_digest: str) -> Path:
        """Where the entry for ``hex_digest`` lives (whether or not it exists)."""
        _check_hex(hex_digest)
        return self._objects / f"{hex_digest}{_SUFFIX}"

    def get(self, hex_digest: str) -> bytes | None:
        """Return the verified tarball for ``hex_digest``, or None on a miss (blocking).

        A hit refreshes the entry's mtime (its LRU position). A corrupt entry
        is deleted and reported as a miss.

        Raises:
            ValueError: ``hex_digest`` is not 64 lower-case hex characters.
        """
        data = self._read(hex_digest)
        if data is None:
            self.misses += 1
        else:
            self.hits += 1
        return data

    def put(self, hex_digest: str, data: bytes) -> None:
        """Store ``data`` under ``hex_digest`` atomically, then evict to the size bound (blocking).

        Raises:
            ValueError: ``hex_digest`` is malformed or is not the sha256 of ``data``.
            OSError: the cache directory cannot be written.
        """
        _check_hex(hex_digest)
        actual = hashlib.sha256(data).hexdigest()
        if actual != hex_digest:
            raise ValueError(f"cache put: data hashes to {actual}, not {hex_digest}")
        blob = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
        if len(blob) > self.max_bytes:
            return
        final = self.object_path(hex_digest)
        tmp = self._objects / f".{hex_digest}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with open(tmp, "xb") as out:
                out.write(blob)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self.evict(keep=final.name)

    async def get_or_fetch(self, hex_digest: str, loader: Loader) -> bytes:
        """Return the tarball for ``hex_digest``, calling ``loader`` at most once pod-wide.

        Concurrent calls for one digest in this process share one fill; across
        processes the first to take the digest's file lock runs ``loader`` and
        the others read its result from disk. The loader must return bytes
        whose sha256 is ``hex_digest`` (the fetcher verifies before returning);
        they are stored, then returned. A caller's cancellation does not
        cancel a fill other callers wait for.

        Raises:
            ValueError: ``hex_digest`` is malformed, or the loader's bytes do
                not hash to it.
            Exception: whatever ``loader`` raises (shared by every waiter).
        """
        _check_hex(hex_digest)
        task = self._inflight.get(hex_digest)
        if task is not None:
            self.coalesced += 1
            return await asyncio.shield(task)
        task = asyncio.get_running_loop().create_task(self._fill(hex_digest, loader))
        self._inflight[hex_digest] = task

        def done(finished: asyncio.Task[bytes]) -> None:
            if self._inflight.get(hex_digest) is finished:
                del self._inflight[hex_digest]
            if not finished.cancelled():
                finished.exception()  # retrieved here so an unawaited failure is not logged

        task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _fill(self, hex_digest: str, loader: Loader) -> bytes:
        data = await asyncio.to_thread(self._read, hex_digest)
        if data is not None:
            self.hits += 1
            return data
        async with self._file_lock(hex_digest):
            data = await asyncio.to_thread(self._read, hex_digest)
            if data is not None:
                self.hits += 1
                return data
            self.misses += 1
            data = await loader()
            self.downloads += 1
            try:
                await asyncio.to_thread(self.put, hex_digest, data)
            except OSError as err:
                # A full or read-only cache must not fail a good download.
                self.write_errors += 1
                _log.warning("artifact cache: cannot store %s: %s", hex_digest, err)
            return data

    @contextlib.asynccontextmanager
    async def _file_lock(self, hex_digest: str) -> AsyncIterator[None]:
        """Hold an exclusive ``flock`` on ``locks/<hex>.lock`` (waiting in a thread)."""
        path = self._locks / f"{hex_digest}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            pending: Future[None] = self._lock_pool.submit(fcntl.flock, fd, fcntl.LOCK_EX)
            try:
                await asyncio.wrap_future(pending)
            except BaseException:
                # The thread may still get the lock later: release it by closing then.
                pending.add_done_callback(functools.partial(_close_fd, fd))
                raise
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is None or (current.st_ino, current.st_dev) != (held.st_ino, held.st_dev):
                os.close(fd)  # the previous holder unlinked this file; lock the new one
                continue
            try:
                yield
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.close(fd)
            return

    def _read(self, hex_digest: str) -> bytes | None:
        path = self.object_path(hex_digest)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            # A broken cache degrades to downloading; it never fails a fetch.
            _log.warning("artifact cache: cannot read %s: %s", path, err)
            return None
        data: bytes | None = None
        try:
            size = zstandard.frame_content_size(blob)
            if 0 <= size <= MAX_ENTRY_BYTES:
                data = zstandard.ZstdDecompressor().decompress(blob)
        except zstandard.ZstdError:
            data = None
        if data is None or hashlib.sha256(data).hexdigest() != hex_digest:
            self.corrupt += 1
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        return data

    def size_bytes(self) -> int:
        """Total compressed bytes of the entries currently on disk (blocking)."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        entries: list[tuple[float, int, Path]] = []
        now = time.time()
        with os.scandir(self._objects) as it:
            for item in it:
                try:
                    stat = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if item.name.endswith(".tmp"):
                    if now - stat.st_mtime > STALE_TMP_SECONDS:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(item.path)
                    continue
                if item.name.endswith(_SUFFIX):
                    entries.append((stat.st_mtime, stat.st_size, Path(item.path)))
        return entries

    def evict(self, keep: str | None = None) -> int:
        """Delete least recently used entries until the total is within ``max_bytes`` (blocking).

        ``keep`` names an entry file that is never evicted (the one just
        written). Also removes temporary files older than an hour. Returns
        the number of entries evicted. Safe to run in several processes at
        once (an entry another process already removed is skipped).
        """
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        evicted = 0
        for _, size, path in sorted(entries, key=lambda entry: entry[0]):
            if total <= self.max_bytes:
                break
            if path.name == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                evicted += 1
            total -= size
        self.evictions += evicted
        return evicted

    def close(self) -> None:
        """Stop the lock-wait threads (a thread still waiting in ``flock`` finishes first)."""
        self._lock_pool.shutdown(wait=False, cancel_futures=True)


def _close_fd(fd: int, _done: object) -> None:
    os.close(fd)


def _check_hex(hex_digest: str) -> None:
    if not is_sha256_hex(hex_digest):
        raise ValueError(f"not a lower-case sha256 hex digest: {hex_digest!r}")
