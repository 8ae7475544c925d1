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

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaas.api.reasons import Reason, ReasonError
from jaas.sources.digest import format_digest, parse_digest
from jaas.sources.extract import MAX_FILES, extract_tarball, safe_entry_name

HEX = "0123456789abcdef"
T = TypeVar("T")


def attempt(call: Callable[[], T]) -> tuple[T | None, ReasonError | None]:
    """``call()``'s value, or the ReasonError it raised (anything else propagates)."""
    try:
        return call(), None
    except ReasonError as err:
        return None, err


@given(st.text(max_size=120))
def test_any_digest_string_parses_or_fails_permanently(text: str) -> None:
    parsed, err = attempt(lambda: parse_digest(text))
    if err is not None:
        assert err.reason is Reason.SOURCE_FETCH_FAILED
        assert not err.transient
    elif parsed is None:
        assert not text.strip()
    else:
        assert len(parsed) == 64
        assert set(parsed) <= set(HEX)
        assert text.strip().lower() == format_digest(parsed)


@given(st.text(alphabet=HEX + "ABCDEF", min_size=64, max_size=64), st.sampled_from(["", " ", "\n"]))
def test_a_sha256_digest_survives_case_and_whitespace(hex_text: str, pad: str) -> None:
    assert parse_digest(f"{pad}SHA256:{hex_text}{pad}") == hex_text.lower()


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
