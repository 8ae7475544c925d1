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
- Fills are single-flight per digest, but only as far as they succeed: a
  verified entry is shared by digest, an in-flight download is not a shared
  fate. Inside a process, callers with the same *origin* (the source's URL)
  share one :class:`asyncio.Task`; a caller with another origin waits for the
  running fill at most ``share_wait`` seconds and takes its bytes only if it
  succeeds; if it fails or is slower, the caller downloads from its own URL
  and sees only its own errors (a tenant pointing a source with another
  tenant's digest at a slow or broken server delays and fails only itself).
  Across processes the filler holds an exclusive ``flock`` on
  ``locks/<hex>.lock``; a waiter polls for it (``LOCK_NB``, never blocking
  the event loop or a thread) for at most ``share_wait`` seconds, re-checks
  the cache once it has it, and downloads without it when the wait runs out.
  The filler unlinks the lock file while still holding it; a waiter that then
  locks the unlinked file notices (inode changed) and retries, so lock files
  do not pile up.
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
import hashlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import zstandard

from jaas import defaults
from jaas.sources.digest import is_sha256_hex

#: Default bound on the cache's on-disk size (compressed bytes).
DEFAULT_MAX_BYTES: Final = 1 << 30
#: zstd level; 3 is zstd's default speed/ratio point.
ZSTD_LEVEL: Final = 3
#: Largest decompressed entry :meth:`ArtifactCache.get` accepts (guards a corrupt frame header).
MAX_ENTRY_BYTES: Final = 1 << 30
#: Temporary files older than this (seconds) are leftovers of a crashed writer.
STALE_TMP_SECONDS: Final = 3600.0
#: How often a waiter retries another process's file lock (seconds).
LOCK_POLL_INTERVAL: Final = 0.02
_SUFFIX: Final = ".zst"

Loader = Callable[[], Awaitable[bytes]]
_log = logging.getLogger(__name__)


class ArtifactCache:
    """Content-addressed, size-bounded, multi-process-safe store of artifact tarballs.

    Args:
        root: cache directory (created if missing); share it between processes.
        max_bytes: bound on the compressed bytes kept on disk (default 1 GiB);
            an artifact that alone compresses to more is returned but not kept.
        share_wait: longest wait (seconds) for a fill of the same digest from
            another origin or process before downloading from one's own URL.

    Counters (per process, plain ints): ``hits`` (served from disk),
    ``misses`` (not on disk, loader called), ``downloads`` (loader calls
    that returned bytes), ``coalesced`` (callers that joined a fill already
    running in this process), ``unshared`` (callers whose wait for another
    origin's fill ended in its failure or ran out, so they downloaded
    themselves), ``evictions``, ``corrupt`` (entries deleted
    because they failed verification) and ``write_errors`` (downloads that
    could not be stored, e.g. disk full; the caller still gets the bytes).

    The root must be on a local filesystem (e.g. the pod's ``emptyDir``):
    ``flock`` is what serialises processes.
    """

    def __init__(
        self,
        root: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        share_wait: float = defaults.SHARED_DOWNLOAD_WAIT,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.share_wait = share_wait
        self._objects = self.root / "objects"
        self._locks = self.root / "locks"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._locks.mkdir(parents=True, exist_ok=True)
        # digest -> origin -> the fill running in this process for that origin
        self._inflight: dict[str, dict[str, asyncio.Task[bytes]]] = {}
        self.hits = 0
        self.misses = 0
        self.downloads = 0
        self.coalesced = 0
        self.unshared = 0
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

    async def get_or_fetch(self, hex_digest: str, loader: Loader, *, origin: str = "") -> bytes:
        """Return the tarball for ``hex_digest``, sharing downloads only as far as they succeed.

        A verified entry on disk is returned at once. Otherwise, concurrent
        calls with the same ``origin`` (the URL ``loader`` downloads from) in
        this process share one fill and its outcome. A call whose origin
        differs from the fills already running waits up to ``share_wait``
        seconds for one of them to succeed and returns its bytes; when they
        fail or take longer it starts a fill of its own, so it never sees
        another origin's error. Across processes the first to take the
        digest's file lock downloads and the others read its result from
        disk, or download themselves after ``share_wait``. The loader must
        return bytes whose sha256 is ``hex_digest`` (the fetcher verifies
        before returning); they are stored, then returned. A caller's
        cancellation does not cancel a fill other callers wait for.

        Raises:
            ValueError: ``hex_digest`` is malformed, or the loader's bytes do
                not hash to it.
            Exception: whatever this call's own ``loader`` raises (shared only
                with callers of the same origin).
        """
        _check_hex(hex_digest)
        fills = self._inflight.get(hex_digest, {})
        own = fills.get(origin)
        if own is not None:
            self.coalesced += 1
            return await asyncio.shield(own)
        if fills:
            self.coalesced += 1
            shared = await self._first_success(list(fills.values()), self.share_wait)
            if shared is not None:
                return shared
            self.unshared += 1
            # Another origin's fill in this process may still hold the file
            # lock: this fill does not wait for it again.
            return await self._start_fill(hex_digest, origin, loader, lock_wait=0.0)
        return await self._start_fill(hex_digest, origin, loader, lock_wait=self.share_wait)

    async def _start_fill(
        self, hex_digest: str, origin: str, loader: Loader, *, lock_wait: float
    ) -> bytes:
        fills = self._inflight.setdefault(hex_digest, {})
        task = asyncio.get_running_loop().create_task(self._fill(hex_digest, loader, lock_wait))
        fills[origin] = task

        def done(finished: asyncio.Task[bytes]) -> None:
            current = self._inflight.get(hex_digest)
            if current is not None and current.get(origin) is finished:
                del current[origin]
                if not current:
                    del self._inflight[hex_digest]
            if not finished.cancelled():
                finished.exception()  # retrieved here so an unawaited failure is not logged

        task.add_done_callback(done)
        return await asyncio.shield(task)

    @staticmethod
    async def _first_success(fills: list[asyncio.Task[bytes]], timeout: float) -> bytes | None:
        """The bytes of the first of ``fills`` to succeed within ``timeout`` seconds, else None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = set(fills)
        while pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            finished, pending = await asyncio.wait(
                pending,
                timeout=remaining,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in finished:
                if not task.cancelled() and task.exception() is None:
                    return task.result()
        return None

    async def _fill(self, hex_digest: str, loader: Loader, lock_wait: float) -> bytes:
        data = await asyncio.to_thread(self._read, hex_digest)
        if data is not None:
            self.hits += 1
            return data
        async with self._file_lock(hex_digest, lock_wait) as locked:
            if locked:
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
    async def _file_lock(self, hex_digest: str, wait: float) -> AsyncIterator[bool]:
        """Hold an exclusive ``flock`` on ``locks/<hex>.lock``, polling for it up to ``wait`` s.

        Yields whether the lock is held; ``False`` when another holder kept it
        for the whole wait (the caller then proceeds without it).
        """
        path = self._locks / f"{hex_digest}.lock"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if loop.time() >= deadline:
                    yield False
                    return
                await asyncio.sleep(LOCK_POLL_INTERVAL)
                continue
            except BaseException:
                os.close(fd)
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
                yield True
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
        """Release what the cache holds; it holds no threads or descriptors between calls."""


def _check_hex(hex_digest: str) -> None:
    if not is_sha256_hex(hex_digest):
        raise ValueError(f"not a lower-case sha256 hex digest: {hex_digest!r}")
