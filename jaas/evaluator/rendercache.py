"""The render cache: a render is a pure function of its inputs, so a result is reused by their key.

The inputs of a render are the evaluator (its engine and that engine's exact
build, jaas-py's version, the operator-wide ``--library-path`` libraries and
the pool's ``max_stack``: :func:`evaluator_fingerprint`) and the request (its
entry file, the digests of its file trees, source and libraries, see
``jaas.evaluator.trees``, its TLAs and external variables, ``max_stack``, and
what the caller asked back: the output cap and whether the output is
discarded). :func:`render_key` hashes them; :class:`RenderCache` maps a key
to the successful result. An unchanged snippet is then never evaluated
twice, whether it comes back by its interval, after a restart of a shard or
of the whole operator, a resync, or a re-render of its namespace for a
library change that does not touch it. Failures are not cached: a failed
render is evaluated again when it is retried.

Storage is the pod's artifact cache (``jaas.sources.cache.ArtifactCache``),
shared by every process and surviving restarts of the operator's processes:
a result is stored as a content-addressed entry (its ``result`` frame,
verified on every read, evicted least recently used with everything else in
the cache), and ``renders/<key>`` beside ``objects/`` holds the digest of
the entry for a key. An entry evicted under a key is a miss (and the key's
file is removed); key files are few bytes each, and beyond ``max_keys`` the
least recently used are removed.

Blocking (file I/O, zstd, hashing): call from a thread on an event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import orjson

import jaas
from jaas.evaluator.request import EvaluationRequest, EvaluationResult, Files
from jaas.evaluator.trees import TreeStore, stored_digest, tree_digest
from jaas.ipc import FrameError, decode_frame, encode_frame
from jaas.sources.cache import ArtifactCache
from jaas.sources.digest import ALGORITHM, Digest

#: Bump when what a cached result holds, or how it is computed, changes.
RENDER_FORMAT: Final = 1
#: Key files kept by default (each a few dozen bytes on disk).
DEFAULT_MAX_KEYS: Final = 100_000
#: Puts between two scans of the key directory for the ``max_keys`` bound.
PRUNE_EVERY: Final = 256
#: The Python distribution of each engine (``jaas.evaluator.engines.ENGINES``),
#: whose installed files identify the engine's build.
ENGINE_DISTRIBUTIONS: Final = {
    "jrsonnet": "jaas-jrsonnet",
    "rjsonnet": "rjsonnet",
    "go-jsonnet": "gojsonnet",
}

_log = logging.getLogger(__name__)


def engine_build(engine: str) -> str:
    """Identify the installed build of ``engine``: its distribution, version and files' hash.

    The hash is of the distribution's ``RECORD`` (the sha256 of every
    installed file, PEP 376), so a rebuilt native module with the same
    version still changes it. An engine that is not installed gives
    ``"<engine> not installed"`` (its evaluator fails to start anyway).
    """
    name = ENGINE_DISTRIBUTIONS.get(engine, engine)
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return f"{engine} not installed"
    record = (dist.read_text("RECORD") or "").encode()
    return f"{name} {dist.version} {hashlib.sha256(record).hexdigest()}"


def evaluator_fingerprint(
    engine: str, shared_libraries: Mapping[str, Files], max_stack: int
) -> str:
    """Return the hex digest of everything about the evaluator that shapes a render.

    Args:
        engine: the engine's name (``--engine``).
        shared_libraries: ``{alias: files}`` every evaluation sees (``--library-path``).
        max_stack: the pool's ``max_stack``, which replaces every request's.
    """
    identity = {
        "format": RENDER_FORMAT,
        "jaas": jaas.__version__,
        "engine": engine,
        "build": engine_build(engine),
        "shared_libraries": sorted(
            [alias, tree_digest(files)] for alias, files in shared_libraries.items()
        ),
        "max_stack": max_stack,
    }
    return hashlib.sha256(orjson.dumps(identity)).hexdigest()


def render_key(request: EvaluationRequest, evaluator: str) -> str:
    """Return the hex key of ``request``'s render by the evaluator ``evaluator`` fingerprints.

    Trees the request names by digest are keyed by it; inline trees are
    hashed the same way (``jaas.evaluator.trees.tree_digest``), so a request
    keys alike either way.
    """
    libraries = sorted(
        [alias, request.library_trees.get(alias) or tree_digest(files)]
        for alias, files in request.libraries.items()
    )
    inputs: dict[str, Any] = {
        "evaluator": evaluator,
        "entry_file": request.entry_file,
        "source": request.source_tree or tree_digest(request.files),
        "libraries": libraries,
        "tlas": [[v.name, v.value, v.code] for v in request.tlas],
        "ext_vars": [[v.name, v.value, v.code] for v in request.external_variables],
        "max_stack": request.max_stack,
        "max_output_bytes": request.max_output_bytes,
        "max_output_name": request.max_output_name,
        "discard_output": request.discard_output,
    }
    return hashlib.sha256(orjson.dumps(inputs)).hexdigest()


class RenderCache:
    """Successful evaluation results by :func:`render_key`, kept in the pod's artifact cache.

    Args:
        cache: the artifact cache (its directory holds ``renders/`` too).
        evaluator: the :func:`evaluator_fingerprint` of the pool the results come from.
        max_keys: key files kept, least recently used removed first.

    :meth:`prepare` also stores a request's file trees (``jaas.evaluator.trees``)
    in the same cache and names them by digest in the request it returns.

    Counters: ``hits``, ``misses``, ``stored`` and ``pruned`` (key files removed
    for ``max_keys`` or because their entry was evicted).
    """

    def __init__(
        self, cache: ArtifactCache, evaluator: str, *, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        self.cache = cache
        self.evaluator = evaluator
        self.trees = TreeStore(cache)
        self.max_keys = max_keys
        self._keys = Path(cache.root) / "renders"
        self._keys.mkdir(parents=True, exist_ok=True)
        self._puts = 0
        self.hits = 0
        self.misses = 0
        self.stored = 0
        self.pruned = 0

    def prepare(self, request: EvaluationRequest) -> tuple[EvaluationRequest, str]:
        """Store ``request``'s trees; return it naming them by digest, and its render key.

        Raises:
            FrameError: a tree does not fit one frame.
            OSError: the cache cannot be written.
        """
        source = self.trees.put(request.files)
        libraries = {alias: self.trees.put(files) for alias, files in request.libraries.items()}
        by_digest = replace(request, source_tree=source, library_trees=libraries)
        return by_digest, render_key(by_digest, self.evaluator)

    def _key_path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a render key: {key!r}")
        return self._keys / key

    def get(self, key: str) -> EvaluationResult | None:
        """The result stored under ``key``, or ``None``.

        Raises:
            ValueError: ``key`` is not a :func:`render_key`.
        """
        path = self._key_path(key)
        result = self._load(path)
        if result is None:
            self.misses += 1
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        self.hits += 1
        return result

    def _load(self, path: Path) -> EvaluationResult | None:
        try:
            digest = stored_digest(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            digest = None
        blob = None if digest is None else self.cache.get(digest)
        if blob is not None:
            try:
                return EvaluationResult.from_frame(*decode_frame(blob))
            except FrameError as err:
                _log.warning("render cache entry %s is not a result: %s", digest, err)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            self.pruned += 1
        return None

    def put(self, key: str, result: EvaluationResult) -> None:
        """Store ``result`` under ``key``.

        Raises:
            ValueError: ``key`` is not a :func:`render_key`.
            FrameError: the result does not fit one frame.
            OSError: the cache cannot be written.
        """
        path = self._key_path(key)
        blob = encode_frame(*result.to_frame())
        digest = Digest(ALGORITHM, hashlib.sha256(blob).hexdigest())
        if not self.cache.touch(digest):
            self.cache.put(digest, blob)
        tmp = self._keys / f".{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            tmp.write_text(str(digest))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self.stored += 1
        self._puts += 1
        if self._puts % PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> int:
        """Remove the least recently used key files beyond ``max_keys``; return how many."""
        entries: list[tuple[float, str]] = []
        with os.scandir(self._keys) as it:
            for item in it:
                with contextlib.suppress(FileNotFoundError):
                    entries.append((item.stat(follow_symlinks=False).st_mtime, item.path))
        removed = 0
        for _, path in sorted(entries)[: max(0, len(entries) - self.max_keys)]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
        self.pruned += removed
        return removed
