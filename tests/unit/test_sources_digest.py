"""Parsing of Flux ``sha256:<hex>`` digests."""

from __future__ import annotations

import pytest

from jaas.api.reasons import Reason, ReasonError
from jaas.sources.digest import format_digest, is_sha256_hex, parse_digest

HEX = "ab" * 32


@pytest.mark.parametrize(
    "value",
    [f"sha256:{HEX}", f"  SHA256:{HEX.upper()}\n", f"Sha256:{HEX}"],
)
def test_valid_digests_are_normalised(value: str) -> None:
    assert parse_digest(value) == HEX


@pytest.mark.parametrize("value", [None, "", "   ", "\n"])
def test_empty_digest_means_no_verification(value: str | None) -> None:
    assert parse_digest(value) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (HEX, "malformed"),
        (f":{HEX}", "malformed"),
        ("sha256:", "malformed"),
        (f"sha512:{HEX}{HEX}", "unsupported algorithm 'sha512'"),
        (f"md5:{HEX[:32]}", "unsupported algorithm 'md5'"),
        (f"sha256:{HEX[:-1]}", "64 hex"),
        (f"sha256:{HEX}00", "64 hex"),
        (f"sha256:{HEX[:-1]}g", "64 hex"),
    ],
)
def test_malformed_digests_are_permanent_failures(value: str, message: str) -> None:
    with pytest.raises(ReasonError, match=message) as info:
        parse_digest(value)
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient


def test_helpers() -> None:
    assert format_digest(HEX) == f"sha256:{HEX}"
    assert is_sha256_hex(HEX)
    assert not is_sha256_hex(HEX.upper())
    assert not is_sha256_hex("../" + HEX[3:])
