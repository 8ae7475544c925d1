"""Parsing of Flux ``<algorithm>:<hex>`` digests: sha256, sha384, sha512 and blake3."""

from __future__ import annotations

import hashlib

import blake3
import pytest

from jaas.api.reasons import Reason, ReasonError
from jaas.sources.digest import ALGORITHMS, Digest, format_digest, is_sha256_hex, parse_digest

HEX = "ab" * 32
#: hex length of each algorithm Flux can write (opencontainers/go-digest).
LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128, "blake3": 64}
SUPPORTED = "supported: sha256, sha384, sha512, blake3"


@pytest.mark.parametrize(
    "value",
    [f"sha256:{HEX}", f"  SHA256:{HEX.upper()}\n", f"Sha256:{HEX}"],
)
def test_valid_digests_are_normalised(value: str) -> None:
    assert parse_digest(value) == Digest("sha256", HEX)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_flux_algorithm_parses_with_its_length(algorithm: str) -> None:
    hex_text = "c" * LENGTHS[algorithm]
    parsed = parse_digest(f" {algorithm.upper()}:{hex_text.upper()}\n")
    assert parsed == Digest(algorithm, hex_text)
    assert parsed is not None
    assert str(parsed) == f"{algorithm}:{hex_text}"


def test_the_supported_algorithms_are_the_ones_flux_writes() -> None:
    assert ALGORITHMS == ("sha256", "sha384", "sha512", "blake3")


@pytest.mark.parametrize("value", [None, "", "   ", "\n"])
def test_empty_digest_means_no_verification(value: str | None) -> None:
    assert parse_digest(value) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (HEX, "malformed"),
        (f":{HEX}", "malformed"),
        ("sha256:", "malformed"),
        ("sha512:", "malformed"),
        (f"md5:{HEX[:32]}", "unsupported algorithm 'md5'"),
        (f"sha1:{HEX[:40]}", "unsupported algorithm 'sha1'"),
        (f"sha224:{HEX[:56]}", "unsupported algorithm 'sha224'"),
        (f"sha3-256:{HEX}", "unsupported algorithm 'sha3-256'"),
        (f"sha256:{HEX[:-1]}", "want 64 hex characters after 'sha256:'"),
        (f"sha256:{HEX}00", "want 64 hex characters after 'sha256:'"),
        (f"sha256:{HEX[:-1]}g", "want 64 hex characters after 'sha256:'"),
        (f"sha256:{HEX}{HEX}", "want 64 hex characters after 'sha256:'"),
        (f"sha384:{HEX}", "want 96 hex characters after 'sha384:'"),
        (f"sha384:{HEX}{HEX}", "want 96 hex characters after 'sha384:'"),
        (f"sha512:{HEX}", "want 128 hex characters after 'sha512:'"),
        (f"sha512:{HEX}{HEX}00", "want 128 hex characters after 'sha512:'"),
        (f"sha512:{HEX}{HEX[:-1]}z", "want 128 hex characters after 'sha512:'"),
        (f"blake3:{HEX}{HEX}", "want 64 hex characters after 'blake3:'"),
        (f"blake3:{HEX[:-2]}", "want 64 hex characters after 'blake3:'"),
        (f"sha256:{HEX[:-1]}٣", "want 64 hex characters"),  # a non-ASCII digit
    ],
)
def test_malformed_digests_are_permanent_failures(value: str, message: str) -> None:
    with pytest.raises(ReasonError, match=message) as info:
        parse_digest(value)
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha3-512", "crc32"])
def test_unsupported_algorithm_message_lists_the_supported_ones(algorithm: str) -> None:
    with pytest.raises(ReasonError) as info:
        parse_digest(f"{algorithm}:{HEX}")
    assert f"unsupported algorithm {algorithm!r} ({SUPPORTED})" in info.value.message
    assert not info.value.transient


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("sha256", hashlib.sha256(b"abc").hexdigest()),
        ("sha384", hashlib.sha384(b"abc").hexdigest()),
        ("sha512", hashlib.sha512(b"abc").hexdigest()),
        # The BLAKE3 reference test vector for "abc" (32-byte output, as go-digest's blake3).
        ("blake3", "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"),
    ],
)
def test_hasher_streams_in_the_digests_algorithm(algorithm: str, expected: str) -> None:
    digest = Digest(algorithm, expected)
    hasher = digest.hasher()
    for chunk in (b"a", b"", b"bc"):
        hasher.update(chunk)
    assert hasher.hexdigest() == expected
    assert digest.compute(b"abc") == digest
    assert digest.compute(b"abd") != digest
    assert digest.compute(b"abd").algorithm == algorithm
    # Each call is a fresh hash.
    assert digest.hasher().hexdigest() == digest.compute(b"").hex


def test_blake3_is_the_rust_crate_binding() -> None:
    data = bytes(range(256)) * 100
    assert Digest("blake3", "0" * 64).compute(data).hex == blake3.blake3(data).hexdigest()


@pytest.mark.parametrize(
    ("algorithm", "hex_text"),
    [
        ("md5", "a" * 32),
        ("SHA256", HEX),  # not normalised: Digest holds parsed values only
        ("sha256", HEX.upper()),
        ("sha256", HEX[:-1]),
        ("sha384", HEX),
        ("blake3", "a" * 128),
        ("sha256", "../" + HEX[3:]),
    ],
)
def test_digest_refuses_a_malformed_shape(algorithm: str, hex_text: str) -> None:
    with pytest.raises(ValueError, match="digest"):
        Digest(algorithm, hex_text)


def test_digests_of_different_algorithms_differ() -> None:
    assert Digest("sha256", HEX) != Digest("blake3", HEX)
    assert len({Digest("sha256", HEX), Digest("blake3", HEX), Digest("sha256", HEX)}) == 2


def test_helpers() -> None:
    assert format_digest(HEX) == f"sha256:{HEX}"
    assert is_sha256_hex(HEX)
    assert not is_sha256_hex(HEX.upper())
    assert not is_sha256_hex("../" + HEX[3:])
    assert not is_sha256_hex(HEX + "\n")
