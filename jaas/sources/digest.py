"""sha256 digests in Flux's ``<algorithm>:<hex>`` form: parsing, formatting, checking.

Flux writes ``status.artifact.digest`` as ``sha256:<64 hex>`` (fluxcd/pkg
``apis/meta/artifact.go``). Parsing follows metio/jaas
``internal/sources/sources.go`` (``parseDigest``): the value is trimmed and
lower-cased; only ``sha256`` is accepted; an empty value means "do not verify".
"""

from __future__ import annotations

import re
from typing import Final

from jaas.api.reasons import Reason, ReasonError

#: The only digest algorithm JaaS (and jaas-py) verifies.
ALGORITHM: Final = "sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_sha256_hex(value: str) -> bool:
    """Whether ``value`` is exactly 64 lower-case hex characters (a sha256 in hex)."""
    return _HEX64.fullmatch(value) is not None


def format_digest(hex_digest: str) -> str:
    """Return ``sha256:<hex_digest>``."""
    return f"{ALGORITHM}:{hex_digest}"


def parse_digest(digest: str | None) -> str | None:
    """Return the 64-character hex of a ``sha256:<hex>`` digest, or None when it is empty.

    The value is stripped of surrounding whitespace and lower-cased first, as
    JaaS does. ``None``, ``""`` and whitespace mean "no digest": the caller
    skips verification (and, in jaas-py, caching).

    Raises:
        ReasonError: ``SourceFetchFailed``, not transient, when the digest is
            malformed (no ``:``, empty algorithm or value, wrong length,
            non-hex) or names an algorithm other than sha256.
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
    if algorithm != ALGORITHM:
        raise ReasonError(
            Reason.SOURCE_FETCH_FAILED,
            f"artifact digest {normalised!r} uses unsupported algorithm {algorithm!r} "
            f"(supported: {ALGORITHM})",
        )
    if not is_sha256_hex(value):
        raise ReasonError(
            Reason.SOURCE_FETCH_FAILED,
            f"artifact digest {normalised!r} is malformed: want 64 hex characters after "
            f"'{ALGORITHM}:'",
        )
    return value
