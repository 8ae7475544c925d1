"""The pod-wide, content-addressed cache of downloaded Flux artifacts.

Every shard and evaluator process of a pod opens the same directory; an
artifact is stored once under its digest (:class:`~jaas.sources.digest.Digest`,
the Flux ``status.artifact.digest``), so N snippets reading one source
revision cause one download (design.md §3 "Content-addressed cache"). An
entry's *key* is the hex alone for sha256 (the layout before other algorithms
were supported, so existing entries stay valid) and ``<algorithm>-<hex>`` for
sha384, sha512 and blake3, so two algorithms never share a file. Layout under
``root``::

    objects/<key>.zst           the tarball, zstd-compressed (written tmp + rename)
    objects/.<key>.<id>.tmp     a write in progress
    locks/<key>.lock            flock target while one process fills <key>

- Reads are verified: the decompressed bytes are re-hashed with the digest's
  own algorithm; a corrupt or truncated entry is deleted and counts as a miss.
- Fills are single-flight per digest, but only as far as they succeed: a
  verified entry is shared by digest, an in-flight download is not a shared
  fate. Inside a process, callers with the same *origin* (the source's URL)
  share one :class:`asyncio.Task`; a caller with another origin waits for the
  running fill at most ``share_wait`` seconds and takes its bytes only if it
  succeeds; if it fails or is slower, the caller downloads from its own URL
  and sees only its own errors (a tenant pointing a source with another
  tenant's digest at a slow or broken server delays and fails only itself).
  Across processes the filler holds an exclusive ``flock`` on
  ``locks/<key>.lock``; a waiter polls for it (``LOCK_NB``, never blocking
  the event loop or a thread) for at most ``share_wait`` seconds, re-checks
  the cache once it has it, and downloads without it when the wait runs out.
  The filler unlinks the lock file while still holding it; a waiter that then
  locks the unlinked file notices (inode changed) and retries, so lock files
  do not pile up.
- Size is bounded: a hit touches the entry's mtime, and after a write the
  oldest entries (by mtime) are evicted until the total is at most
  ``max_bytes``. Finding them takes a scan of the directory, so a process
  scans only when its own writes since its last scan could have passed the
  bound, and at least every :data:`EVICT_SCAN_EVERY` writes (writes of other
  processes then overshoot the bound by at most that many entries each, until
  the next scan); a cache of 20,000 entries written to for every reconcile
  (file trees and renders, ``jaas.evaluator.rendercache``) would otherwise
  stat every entry on every write.

Blocking methods (:meth:`ArtifactCache.get`, :meth:`ArtifactCache.put`) do
file I/O, zstd and hashing on up to tens of MiB; call them from a thread when
on an event loop. :meth:`ArtifactCache.get_or_fetch` does that itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import zstandard

from jaas import defaults
from jaas.observability import metrics
from jaas.sources.digest import ALGORITHM, Digest

#: Default bound on the cache's on-disk size (compressed bytes).
DEFAULT_MAX_BYTES: Final = 1 << 30
#: zstd level; 3 is zstd's default speed/ratio point.
ZSTD_LEVEL: Final = 3
#: Largest decompressed entry :meth:`ArtifactCache.get` accepts (guards a corrupt frame header).
MAX_ENTRY_BYTES: Final = 1 << 30
#: Temporary files older than this (seconds) are leftovers of a crashed writer.
STALE_TMP_SECONDS: Final = 3600.0
#: Writes after which a process scans for eviction even when its own writes
#: since the last scan leave room (other processes write to the same directory).
EVICT_SCAN_EVERY: Final = 64
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
    themselves), ``evictions``, ``scans`` (directory scans for eviction),
    ``corrupt`` (entries deleted
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
        self._inflight: dict[Digest, dict[str, asyncio.Task[bytes]]] = {}
        self.hits = 0
        self.misses = 0
        self.downloads = 0
        self.coalesced = 0
        self.unshared = 0
        self.evictions = 0
        self.corrupt = 0
        self.write_errors = 0
        # The total found by the last eviction scan (None: no scan yet) and what
        # this process wrote since; see the module docstring.
        self.scans = 0
        self._scanned_total: int | None = None
        self._written_since_scan = 0
        self._writes_since_scan = 0

    def object_path(self, digest: Digest) -> Path:
        """Where the entry for ``digest`` lives (whether or not it exists).

        ``objects/<hex>.zst`` for sha256, ``objects/<algorithm>-<hex>.zst``
        for the other algorithms.
        """
        return self._objects / f"{entry_key(digest)}{_SUFFIX}"

    def get(self, digest: Digest) -> bytes | None:
        """Return the verified tarball for ``digest``, or None on a miss (blocking).

        The entry is re-hashed with ``digest``'s algorithm. A hit refreshes
        the entry's mtime (its LRU position). A corrupt entry is deleted and
        reported as a miss.
        """
        data = self._read(digest)
        if data is None:
            self.misses += 1
        else:
            self.hits += 1
        return data

    def put(self, digest: Digest, data: bytes) -> None:
        """Store ``data`` under ``digest`` atomically, then evict to the size bound (blocking).

        Raises:
            ValueError: ``data`` does not hash to ``digest`` (in its algorithm).
            OSError: the cache directory cannot be written.
        """
        actual = digest.compute(data)
        if actual != digest:
            raise ValueError(f"cache put: data hashes to {actual}, not {digest}")
        blob = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
        if len(blob) > self.max_bytes:
            return
        final = self.object_path(digest)
        tmp = self._objects / f".{entry_key(digest)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with open(tmp, "xb") as out:
                out.write(blob)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._written_since_scan += len(blob)
        self._writes_since_scan += 1
        if (
            self._scanned_total is None
            or self._scanned_total + self._written_since_scan > self.max_bytes
            or self._writes_since_scan >= EVICT_SCAN_EVERY
        ):
            self.evict(keep=final.name)

    def touch(self, digest: Digest) -> bool:
        """Refresh ``digest``'s entry as recently used; return whether it is on disk (blocking).

        Cheaper than :meth:`get` (nothing is read or verified): for a writer
        that only needs the entry to stay, e.g. a file tree it has stored
        before (``jaas.evaluator.trees``). A reader still verifies it.
        """
        try:
            os.utime(self.object_path(digest))
        except FileNotFoundError:
            return False
        return True

    async def get_or_fetch(self, digest: Digest, loader: Loader, *, origin: str = "") -> bytes:
        """Return the tarball for ``digest``, sharing downloads only as far as they succeed.

        A verified entry on disk is returned at once. Otherwise, concurrent
        calls with the same ``origin`` (the URL ``loader`` downloads from) in
        this process share one fill and its outcome. A call whose origin
        differs from the fills already running waits up to ``share_wait``
        seconds for one of them to succeed and returns its bytes; when they
        fail or take longer it starts a fill of its own, so it never sees
        another origin's error. Across processes the first to take the
        digest's file lock downloads and the others read its result from
        disk, or download themselves after ``share_wait``. The loader must
        return bytes that hash to ``digest`` in its algorithm (the fetcher
        verifies before returning); they are stored, then returned. A
        caller's cancellation does not cancel a fill other callers wait for.
        Digests of different algorithms are different keys, even of the same
        bytes.

        Raises:
            ValueError: the loader's bytes do not hash to ``digest``.
            Exception: whatever this call's own ``loader`` raises (shared only
                with callers of the same origin).
        """
        fills = self._inflight.get(digest, {})
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
            return await self._start_fill(digest, origin, loader, lock_wait=0.0)
        return await self._start_fill(digest, origin, loader, lock_wait=self.share_wait)

    async def _start_fill(
        self, digest: Digest, origin: str, loader: Loader, *, lock_wait: float
    ) -> bytes:
        fills = self._inflight.setdefault(digest, {})
        task = asyncio.get_running_loop().create_task(self._fill(digest, loader, lock_wait))
        fills[origin] = task

        def done(finished: asyncio.Task[bytes]) -> None:
            current = self._inflight.get(digest)
            if current is not None and current.get(origin) is finished:
                del current[origin]
                if not current:
                    del self._inflight[digest]
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

    async def _fill(self, digest: Digest, loader: Loader, lock_wait: float) -> bytes:
        data = await asyncio.to_thread(self._read, digest)
        if data is not None:
            self.hits += 1
            return data
        async with self._file_lock(digest, lock_wait) as locked:
            if locked:
                data = await asyncio.to_thread(self._read, digest)
                if data is not None:
                    self.hits += 1
                    return data
            self.misses += 1
            data = await loader()
            self.downloads += 1
            try:
                await asyncio.to_thread(self.put, digest, data)
            except OSError as err:
                # A full or read-only cache must not fail a good download.
                self.write_errors += 1
                _log.warning("artifact cache: cannot store %s: %s", digest, err)
            return data

    @contextlib.asynccontextmanager
    async def _file_lock(self, digest: Digest, wait: float) -> AsyncIterator[bool]:
        """Hold an exclusive ``flock`` on ``locks/<key>.lock``, polling for it up to ``wait`` s.

        Yields whether the lock is held; ``False`` when another holder kept it
        for the whole wait (the caller then proceeds without it).
        """
        path = self._locks / f"{entry_key(digest)}.lock"
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

    def _read(self, digest: Digest) -> bytes | None:
        path = self.object_path(digest)
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
        if data is None or digest.compute(data) != digest:
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
        self.scans += 1
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
        metrics.ARTIFACT_CACHE_EVICTIONS.inc(evicted)
        metrics.ARTIFACT_CACHE_BYTES.set(total)
        self._scanned_total = total
        self._written_since_scan = 0
        self._writes_since_scan = 0
        return evicted

    def close(self) -> None:
        """Release what the cache holds; it holds no threads or descriptors between calls."""


def entry_key(digest: Digest) -> str:
    """The name of ``digest``'s entry: its hex for sha256, else ``<algorithm>-<hex>``.

    Safe as a file name: a :class:`~jaas.sources.digest.Digest` holds only a
    known algorithm and lower-case hex.
    """
    if digest.algorithm == ALGORITHM:
        return digest.hex
    return f"{digest.algorithm}-{digest.hex}"
