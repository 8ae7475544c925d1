"""Flux artifact digests in the ``<algorithm>:<hex>`` form: parsing, formatting, hashing.

Flux's source-controller writes ``status.artifact.digest`` as
``<algorithm>:<hex>`` (fluxcd/pkg ``apis/meta/artifact.go``). The algorithm is
``sha256`` unless the controller runs with ``--artifact-digest-algo``, which
allows ``sha384``, ``sha512`` and ``blake3`` (fluxcd/pkg ``artifact/digest``,
built on opencontainers/go-digest: 64, 96, 128 and 64 hex characters; blake3
with its default 32-byte output). jaas-py verifies all four; blake3 through
the ``blake3`` package (the Rust crate's binding).

Parsing follows metio/jaas ``internal/sources/sources.go`` (``parseDigest``):
the value is trimmed and lower-cased; an empty value means "do not verify";
anything else must be a supported algorithm and exactly as many lower-case hex
characters as that algorithm has, or it is a permanent ``SourceFetchFailed``.

The digests jaas-py computes itself (its own artifacts, revisions) are
always sha256: :func:`format_digest`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from blake3 import blake3

from jaas.api.reasons import Reason, ReasonError


class Hasher(Protocol):
    """A streaming hash: ``hashlib``'s objects and ``blake3.blake3`` both fit."""

    def update(self, data: bytes, /) -> object:
        """Feed the next bytes."""
        ...

    def hexdigest(self) -> str:
        """The lower-case hex of the digest of everything fed so far."""
        ...


#: The algorithm of the digests jaas-py computes itself, and Flux's default.
ALGORITHM: Final = "sha256"

#: algorithm -> (hex characters, constructor of a fresh hasher); the only table of them.
_ALGORITHMS: Final[Mapping[str, tuple[int, Callable[[], Hasher]]]] = MappingProxyType(
    {
        "sha256": (64, hashlib.sha256),
        "sha384": (96, hashlib.sha384),
        "sha512": (128, hashlib.sha512),
        "blake3": (64, blake3),
    }
)

#: The algorithms :func:`parse_digest` accepts, in the order messages list them.
ALGORITHMS: Final = tuple(_ALGORITHMS)
_SUPPORTED: Final = ", ".join(ALGORITHMS)
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Digest:
    """A verified-shape artifact digest: a supported algorithm and its lower-case hex.

    Construction checks the shape, so a ``Digest`` is always safe to use in
    a file name or a comparison. Parse Flux's text with :func:`parse_digest`.

    Attributes:
        algorithm: one of :data:`ALGORITHMS` (``sha256``, ``sha384``,
            ``sha512``, ``blake3``).
        hex: the digest in lower-case hex, as long as the algorithm's digest
            (64, 96, 128 or 64 characters).

    Raises:
        ValueError: on construction, for an unsupported algorithm or a hex of
            the wrong length or with characters other than ``0-9a-f``.
    """

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        spec = _ALGORITHMS.get(self.algorithm)
        if spec is None:
            raise ValueError(
                f"unsupported digest algorithm {self.algorithm!r} (supported: {_SUPPORTED})"
            )
        if len(self.hex) != spec[0] or _HEX.fullmatch(self.hex) is None:
            raise ValueError(
                f"not a {self.algorithm} digest: want {spec[0]} lower-case hex characters, "
                f"got {self.hex!r}"
            )

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> Hasher:
        """Return a fresh streaming hash of this digest's algorithm.

        Feed it with ``update(chunk)``; ``hexdigest()`` then compares with
        :attr:`hex`.
        """
        return _ALGORITHMS[self.algorithm][1]()

    def compute(self, data: bytes) -> Digest:
        """Return the digest of ``data`` in this digest's algorithm (to compare with ``self``)."""
        hasher = self.hasher()
        hasher.update(data)
        return Digest(self.algorithm, hasher.hexdigest())


def is_sha256_hex(value: str) -> bool:
    """Whether ``value`` is exactly 64 lower-case hex characters (a sha256 in hex)."""
    return len(value) == 64 and _HEX.fullmatch(value) is not None


def format_digest(hex_digest: str) -> str:
    """Return ``sha256:<hex_digest>``, for the sha256 digests jaas-py computes itself."""
    return f"{ALGORITHM}:{hex_digest}"


def sha256_digest(data: bytes) -> str:
    """Return ``sha256:<hex>`` of ``data``: an artifact's digest or a revision jaas-py computes."""
    return format_digest(hashlib.sha256(data).hexdigest())


def parse_digest(digest: str | None) -> Digest | None:
    """Parse a Flux ``status.artifact.digest`` (``<algorithm>:<hex>``), or None when it is empty.

    The value is stripped of surrounding whitespace and lower-cased first, as
    JaaS does. ``None``, ``""`` and whitespace mean "no digest": the caller
    skips verification (and, in jaas-py, caching).

    Args:
        digest: e.g. ``sha256:<64 hex>``, ``sha384:<96 hex>``,
            ``sha512:<128 hex>`` or ``blake3:<64 hex>``, in any case.

    Returns:
        The parsed :class:`Digest`, or None for an empty value.

    Raises:
        ReasonError: ``SourceFetchFailed``, not transient, when the digest is
            malformed (no ``:``, empty algorithm or value, wrong length for
            its algorithm, non-hex) or names an algorithm other than
            :data:`ALGORITHMS` (the message lists them).
    """
    if digest is None:
        return None
    normalised = digest.strip().lower()
    if not normalised:
        return None
    algorithm, sep, value = normalised.partition(":")
    if not sep or not algorithm or not value:
        raise ReasonError(
            Reason.SOURCE_FETCH_FAILED,
            f"artifact digest {normalised!r} is malformed: want <algorithm>:<hex>",
        )
    spec = _ALGORITHMS.get(algorithm)
    if spec is None:
        raise ReasonError(
            Reason.SOURCE_FETCH_FAILED,
            f"artifact digest {normalised!r} uses unsupported algorithm {algorithm!r} "
            f"(supported: {_SUPPORTED})",
        )
    length = spec[0]
    if len(value) != length or _HEX.fullmatch(value) is None:
        raise ReasonError(
            Reason.SOURCE_FETCH_FAILED,
            f"artifact digest {normalised!r} is malformed: want {length} hex characters after "
            f"'{algorithm}:'",
        )
    return Digest(algorithm, value)
