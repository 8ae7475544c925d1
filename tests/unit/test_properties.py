"""Property-based tests (Hypothesis) of what a tenant controls: digests and tarballs.

Whatever bytes or strings come in, the parsers end in a value or in a
permanent ``SourceFetchFailed``; they never raise anything else, and what
extraction keeps always obeys the name rules and the caps. (The URL guard's
properties live in test_urlguard.py.)
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jaas.api.reasons import Reason, ReasonError
from jaas.sources.digest import ALGORITHMS, Digest, parse_digest
from jaas.sources.extract import MAX_FILES, extract_tarball, safe_entry_name

HEX = "0123456789abcdef"
#: hex length of each digest algorithm Flux can write.
LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128, "blake3": 64}
T = TypeVar("T")


def attempt(call: Callable[[], T]) -> tuple[T | None, ReasonError | None]:
    """``call()``'s value, or the ReasonError it raised (anything else propagates)."""
    try:
        return call(), None
    except ReasonError as err:
        return None, err


def hex_of_length(algorithm: str) -> st.SearchStrategy[tuple[str, str]]:
    """``(algorithm, hex)`` with the algorithm's hex length, in mixed case."""
    length = LENGTHS[algorithm]
    return st.tuples(
        st.just(algorithm), st.text(alphabet=HEX + "ABCDEF", min_size=length, max_size=length)
    )


@given(
    st.one_of(
        st.text(max_size=160),
        st.builds(
            lambda algorithm, sep, value: f"{algorithm}{sep}{value}",
            st.sampled_from([*ALGORITHMS, "md5", "sha1", "SHA512", ""]),
            st.sampled_from([":", "", "::"]),
            st.text(alphabet=HEX + "ABCDEFg ", max_size=130),
        ),
        st.sampled_from(ALGORITHMS)
        .flatmap(hex_of_length)
        .map(lambda spec: f" {spec[0]}:{spec[1]}\t"),
    )
)
def test_any_digest_string_parses_or_fails_permanently(text: str) -> None:
    parsed, err = attempt(lambda: parse_digest(text))
    if err is not None:
        assert err.reason is Reason.SOURCE_FETCH_FAILED
        assert not err.transient
        if "unsupported algorithm" in err.message:
            assert "(supported: sha256, sha384, sha512, blake3)" in err.message
    elif parsed is None:
        assert not text.strip()
    else:
        assert parsed.algorithm in ALGORITHMS
        assert len(parsed.hex) == LENGTHS[parsed.algorithm]
        assert set(parsed.hex) <= set(HEX)
        assert text.strip().lower() == str(parsed)


@given(st.sampled_from(ALGORITHMS).flatmap(hex_of_length), st.sampled_from(["", " ", "\n"]))
def test_a_digest_of_every_algorithm_survives_case_and_whitespace(
    spec: tuple[str, str], pad: str
) -> None:
    algorithm, hex_text = spec
    parsed = parse_digest(f"{pad}{algorithm.upper()}:{hex_text}{pad}")
    assert parsed == Digest(algorithm, hex_text.lower())


@given(st.sampled_from(ALGORITHMS), st.integers(min_value=1, max_value=140))
def test_a_hex_of_another_length_is_refused_for_every_algorithm(
    algorithm: str, length: int
) -> None:
    assume(length != LENGTHS[algorithm])
    _, err = attempt(lambda: parse_digest(f"{algorithm}:{'a' * length}"))
    assert err is not None
    assert f"want {LENGTHS[algorithm]} hex characters" in err.message


@settings(max_examples=50)
@given(
    st.sampled_from(ALGORITHMS), st.binary(max_size=2048), st.integers(min_value=1, max_value=64)
)
def test_streaming_in_any_chunks_equals_hashing_at_once(
    algorithm: str, data: bytes, chunk: int
) -> None:
    whole = Digest(algorithm, "0" * LENGTHS[algorithm]).compute(data)
    hasher = whole.hasher()
    for start in range(0, len(data), chunk):
        hasher.update(data[start : start + chunk])
    assert Digest(algorithm, hasher.hexdigest()) == whole


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_escape_the_reason_mapping(data: bytes) -> None:
    files, err = attempt(lambda: extract_tarball(data))  # ArchiveError is a ReasonError
    if err is not None:
        assert err.reason is Reason.SOURCE_FETCH_FAILED
    assert all(safe_entry_name(name) == name for name in files or {})


def tarball(entries: list[tuple[str, bytes, bytes]]) -> bytes:
    """A real .tar.gz of (name, type flag, content) entries, as tarfile writes them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, content in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.linkname = "target"
                tar.addfile(info)
    return gzip.compress(buffer.getvalue(), mtime=0)


names = st.text(alphabet="ab./-_\\ :\x00é", min_size=1, max_size=40)
kinds = st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(names, kinds, st.binary(max_size=64)), max_size=12))
def test_extraction_keeps_only_safe_regular_files(entries: list[tuple[str, bytes, bytes]]) -> None:
    try:
        data = tarball(entries)
    except (ValueError, UnicodeError):
        return  # tarfile itself refuses the name: nothing to extract
    files, err = attempt(lambda: extract_tarball(data))
    if err is not None:
        assert err.reason is Reason.SOURCE_FETCH_FAILED
        assert "duplicate" in err.message or "NUL" in err.message
        return
    assert files is not None
    regular = {name: content for name, kind, content in entries if kind == tarfile.REGTYPE}
    assert len(files) <= min(len(regular), MAX_FILES)
    for name, content in files.items():
        assert safe_entry_name(name) == name
        assert not name.startswith("/")
        assert ".." not in name.split("/")
        assert content in regular.values()
