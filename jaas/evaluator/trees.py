"""File trees by digest: how a snippet's files and libraries reach the evaluator processes.

A *tree* is a set of files, ``{relative path: content}`` (a snippet's inline
files, the files of its source artifact under ``sourceRef.path``, or one
library's). Its canonical encoding is one ``jaas.ipc`` frame: the header
``{"type": "tree", "files": [[path, size], ...]}`` with the paths sorted, and
the contents concatenated in that order as the payload. Its digest is the
sha256 of that encoding, so equal trees have equal digests whatever their
origin (the same Git commit read by two snippets, the same inline files).

A shard stores each tree it evaluates in the pod's artifact cache
(``jaas.sources.cache.ArtifactCache``, the content-addressed store every
process of the pod shares) and sends the evaluator only the digests; the
worker reads the tree from the cache, verified by re-hashing, and keeps the
decoded trees it used last in memory (``TreeStore``'s ``memory_bytes``). The
bytes of an evaluation request then stay the same whatever the size of the
source and its libraries, and the digests are what the render cache
(``jaas.evaluator.rendercache``) keys a render by.

Blocking (file I/O, zstd, hashing): call from a thread on an event loop.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping

from jaas.evaluator.request import Files, pack_files, unpack_files
from jaas.ipc import FrameError, decode_frame, encode_frame
from jaas.sources.cache import ArtifactCache
from jaas.sources.digest import ALGORITHM, Digest

TREE = "tree"
#: Decoded trees a worker keeps in memory by default (bytes of file contents).
DEFAULT_MEMORY_BYTES = 32 * 1024 * 1024

_log = logging.getLogger(__name__)


def encode_tree(files: Files) -> bytes:
    """Return the canonical encoding of ``files`` (module docstring); equal trees, equal bytes.

    Raises:
        FrameError: the tree does not fit one ``jaas.ipc`` frame.
    """
    contents: list[bytes] = []
    listing = pack_files({path: files[path] for path in sorted(files)}, contents)
    return encode_frame({"type": TREE, "files": listing}, b"".join(contents))


def decode_tree(blob: bytes) -> dict[str, bytes]:
    """Return the files of an encoded tree.

    Raises:
        FrameError: ``blob`` is not an encoded tree.
    """
    header, payload = decode_frame(blob)
    if header.get("type") != TREE:
        raise FrameError(f"not a file tree: a {header.get('type')!r} frame")
    try:
        end, files = unpack_files(header["files"], memoryview(payload), 0)
    except (KeyError, TypeError, ValueError) as err:
        raise FrameError(f"malformed file tree: {err!r}") from err
    if end != len(payload):
        raise FrameError(f"file tree has {len(payload) - end} stray bytes")
    return files


def tree_digest(files: Files) -> str:
    """Return ``sha256:<hex>`` of ``files``' canonical encoding, without storing anything."""
    return f"{ALGORITHM}:{hashlib.sha256(encode_tree(files)).hexdigest()}"


def stored_digest(text: str) -> Digest | None:
    """Parse the ``<algorithm>:<hex>`` of an entry jaas-py stored; ``None`` if malformed."""
    algorithm, _, hex_digest = text.strip().partition(":")
    try:
        return Digest(algorithm, hex_digest)
    except ValueError:
        return None


class TreeStore:
    """Stores and reads file trees by digest in the pod's artifact cache.

    Args:
        cache: the artifact cache every process of the pod opens on the same
            directory (trees count against its size bound and are evicted
            like artifacts, least recently used first).
        memory_bytes: decoded trees kept in this process (an evaluator's) by
            their digest, least recently used dropped first; 0 keeps none.

    Counters: ``stored`` (trees written), ``reused`` (trees already on disk),
    ``hits`` (trees read from memory or disk) and ``misses`` (trees not found
    or failing verification).
    """

    def __init__(self, cache: ArtifactCache, memory_bytes: int = 0) -> None:
        self.cache = cache
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[str, tuple[int, dict[str, bytes]]] = OrderedDict()
        self._held = 0
        self.stored = 0
        self.reused = 0
        self.hits = 0
        self.misses = 0

    def put(self, files: Files) -> str:
        """Store ``files`` as a tree unless it is there already; return its ``sha256:<hex>``.

        Raises:
            FrameError: the tree does not fit one frame.
            OSError: the cache cannot be written.
        """
        blob = encode_tree(files)
        digest = Digest(ALGORITHM, hashlib.sha256(blob).hexdigest())
        if self.cache.touch(digest):
            self.reused += 1
        else:
            self.cache.put(digest, blob)
            self.stored += 1
        return str(digest)

    def get(self, digest: str) -> dict[str, bytes] | None:
        """The files of the tree ``digest`` names, or ``None`` when it is not in the cache.

        A malformed digest or a stored blob that is not a tree counts as not found.
        """
        held = self._memory.get(digest)
        if held is not None:
            self._memory.move_to_end(digest)
            self.hits += 1
            return held[1]
        parsed = stored_digest(digest)
        blob = None if parsed is None else self.cache.get(parsed)
        if blob is None:
            self.misses += 1
            return None
        try:
            files = decode_tree(blob)
        except FrameError as err:
            _log.warning("artifact cache entry %s is not a file tree: %s", digest, err)
            self.misses += 1
            return None
        self.hits += 1
        self._remember(digest, files, len(blob))
        return files

    def _remember(self, digest: str, files: dict[str, bytes], size: int) -> None:
        if size > self.memory_bytes:
            return
        self._memory[digest] = (size, files)
        self._held += size
        while self._held > self.memory_bytes:
            _, (dropped, _) = self._memory.popitem(last=False)
            self._held -= dropped


def resolve_trees(
    store: TreeStore | None, source_tree: str, library_trees: Mapping[str, str]
) -> tuple[Files | None, dict[str, Files], list[str]]:
    """Read a request's trees: ``(source files or None, {alias: files}, missing digests)``.

    ``source_tree`` ``""`` means the source is inline (``None`` is returned
    for it). Without a store every digest is missing.
    """
    missing: list[str] = []

    def read(digest: str) -> Files | None:
        files = None if store is None else store.get(digest)
        if files is None:
            missing.append(digest)
        return files

    source = read(source_tree) if source_tree else None
    libraries: dict[str, Files] = {}
    for alias, digest in library_trees.items():
        files = read(digest)
        if files is not None:
            libraries[alias] = files
    return source, libraries, missing
