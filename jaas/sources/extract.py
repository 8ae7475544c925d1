"""Safe in-memory extraction of a Flux artifact (``.tar.gz``) into ``{path: bytes}``.

Behaviour follows metio/jaas ``internal/sources/sources.go``
(``extractTarballWithLimits``, ``normaliseEntry``):

- gzip (multistream allowed) wrapping a tar; only regular files are kept,
  every other entry type (directories, links, devices, PAX globals) is skipped;
- entry names that are empty, absolute, contain NUL or a backslash, have a
  ``..`` segment or a byte outside ``[A-Za-z0-9._/-]`` are dropped, as are
  names with any segment starting with ``.`` (``.git/...``, ``.gitignore``);
  kept names are ``path.Clean``-ed (``./a//b`` is ``a/b``). JaaS drops all
  of these silently rather than failing the whole artifact, so a Git
  repository with one oddly named file still renders; jaas-py does the same;
- ``path`` keeps only entries under ``<path>/`` and strips that prefix;
- two entries with the same final name are an error;
- caps: extracted total 64 MiB, one entry 16 MiB (checked on the header before
  the body is read), decompressed gzip stream 512 MiB (the gzip-bomb guard:
  counted while streaming, nothing is inflated ahead of the tar reader).

The tar reader is our own, small and bounded, instead of :mod:`tarfile`:
``tarfile`` reads PAX and GNU long-name headers of any size into memory,
parses PAX records with a backtracking regex (CVE-2024-6232, unfixed in the
Python 3.11.7 this project runs on) and keeps every member it has seen in a
list. Here special headers are capped at 1 MiB (Go's ``archive/tar`` limit)
and nothing but the current entry is held. The format rules (checksum,
octal/base-256 numbers, USTAR prefix, PAX ``path``/``size``, GNU ``L``/``K``,
header-only types, end-of-archive handling) are Go ``archive/tar``'s, the
reader JaaS uses.

Errors: cap violations are :class:`~jaas.api.reasons.ReasonError`
``SourceFetchFailed``, not transient (JaaS: the upstream must shrink). A
corrupt or malformed archive raises :class:`ArchiveError` (also
``SourceFetchFailed``), not transient by default: the fetcher has verified the
bytes against the source's digest, so a retry reads the same bytes and fails
the same way; a new source revision triggers a new reconcile anyway. JaaS
lets such errors fall into its transient default; the fetcher keeps that
behaviour only when there was no digest to verify (the bytes may differ next
time), see :meth:`jaas.sources.fetch.ArtifactFetcher.fetch_files`.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import re
import zlib
from typing import Final

from jaas.api.reasons import Reason, ReasonError

MiB: Final = 1 << 20
#: Cap on the sum of the extracted entry bodies (JaaS ``defaultMaxExtractedBytes``).
MAX_EXTRACTED_BYTES: Final = 64 * MiB
#: Cap on one entry's body (JaaS ``defaultMaxPerEntryBytes``).
MAX_ENTRY_BYTES: Final = 16 * MiB
#: Cap on the decompressed gzip stream (JaaS ``defaultMaxDecompressedBytes``).
MAX_DECOMPRESSED_BYTES: Final = 512 * MiB
#: Cap on the number of files kept (ours; JaaS has none): every kept name travels
#: to the evaluator in one frame header, and no Jsonnet tree needs more.
MAX_FILES: Final = 10_000
#: Cap on the summed UTF-8 length of the kept file names (ours, as ``MAX_FILES``).
MAX_NAME_BYTES: Final = 1 * MiB
#: Cap on a PAX or GNU long-name header's data (Go ``archive/tar`` ``maxSpecialFileSize``).
MAX_SPECIAL_HEADER_BYTES: Final = 1 * MiB

_BLOCK: Final = 512
_ZERO_BLOCK: Final = bytes(_BLOCK)
_SAFE_NAME = re.compile(r"[A-Za-z0-9._/-]+")
_OCTAL = re.compile(rb"[0-7]+")
#: PAX lengths and sizes are int64 in Go: at most 19 digits (and int() refuses > 4300).
_DECIMAL = re.compile(rb"[0-9]{1,19}")
#: Type flags whose header carries no data even when its size field is non-zero (Go).
_HEADER_ONLY_TYPES: Final = frozenset(b"123456")
_CHUNK: Final = 1 * MiB


class ArchiveError(ReasonError):
    """The artifact is not a well-formed gzip-compressed tar (or repeats an entry name).

    Always reason ``SourceFetchFailed``; ``transient`` as given (default False).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(Reason.SOURCE_FETCH_FAILED, message, transient=transient)


def safe_entry_name(name: str) -> str | None:
    """Return the cleaned form of a tar entry name, or None if consumers drop it.

    JaaS's rule (``normaliseEntry`` / ``SafeEntryName``): None for an empty or
    absolute name, one with NUL or backslash, a ``..`` segment, a segment
    starting with ``.`` after cleaning, or a character outside
    ``[A-Za-z0-9._/-]``. Otherwise the ``path.Clean``-ed name: ``./a//b/`` is
    ``a/b``. (JaaS checks ``..`` after cleaning, which keeps ``a/../b`` as
    ``b``; jaas-py drops any name that has a ``..`` segment at all.)
    """
    if not name or name.startswith("/") or "\x00" in name or "\\" in name:
        return None
    if ".." in name.split("/"):
        return None
    cleaned = posixpath.normpath(name)
    if any(segment.startswith(".") for segment in cleaned.split("/")):
        return None
    if _SAFE_NAME.fullmatch(cleaned) is None:
        return None
    return cleaned


def normalise_path_prefix(path: str) -> str:
    """Return ``sourceRef.path`` as the prefix that narrowing strips, without slashes.

    ``""``, ``"."``, ``"/"`` and ``"./"`` mean the artifact root (``""``);
    ``"./manifests/"`` and ``"/manifests"`` mean ``"manifests"``. JaaS uses
    the value verbatim, so there ``./manifests`` matches nothing; accepting it
    here only makes such specs work.
    """
    stripped = path.strip("/")
    if not stripped:
        return ""
    cleaned = posixpath.normpath(stripped)
    return "" if cleaned == "." else cleaned


class _Stream:
    """The decompressed bytes of a gzip member sequence, read with the bomb cap applied."""

    def __init__(self, data: bytes, cap: int) -> None:
        self._gz = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
        self._cap = cap
        self.consumed = 0

    def read(self, size: int) -> bytes:
        """Read up to ``size`` bytes (fewer only at the end of the stream)."""
        allowed = self._cap - self.consumed + 1
        try:
            chunk = self._gz.read(min(size, allowed))
        except (OSError, EOFError, zlib.error) as err:
            raise ArchiveError(f"artifact is not a valid gzip stream: {err}") from err
        self.consumed += len(chunk)
        if self.consumed > self._cap:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"artifact decompresses to more than {self._cap // MiB} MiB (gzip bomb guard)",
            )
        return chunk

    def read_exact(self, size: int, what: str) -> bytes:
        """Read exactly ``size`` bytes, else :class:`ArchiveError` naming ``what``."""
        parts = []
        remaining = size
        while remaining > 0:
            chunk = self.read(min(remaining, _CHUNK))
            if not chunk:
                raise ArchiveError(f"tar archive is truncated in {what}")
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)

    def skip(self, size: int, what: str) -> None:
        """Discard exactly ``size`` bytes (they still count against the bomb cap)."""
        remaining = size
        while remaining > 0:
            chunk = self.read(min(remaining, _CHUNK))
            if not chunk:
                raise ArchiveError(f"tar archive is truncated in {what}")
            remaining -= len(chunk)

    def read_block(self) -> bytes:
        """Read one 512-byte block; ``b""`` at a clean end of stream."""
        block = self.read(_BLOCK)
        if block and len(block) < _BLOCK:
            block += self.read_exact(_BLOCK - len(block), "a header block")
        return block


def _padding(size: int) -> int:
    return -size % _BLOCK


def _c_string(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _numeric(field: bytes, what: str) -> int:
    """A tar numeric field: octal text, or GNU base-256 when the high bit is set."""
    if field and field[0] & 0x80:
        negative = bool(field[0] & 0x40)
        value = field[0] & 0x3F
        for byte in field[1:]:
            value = value << 8 | byte
        if negative:
            raise ArchiveError(f"tar header has a negative {what}")
        return value
    text = field.strip(b" \x00")
    if not text:
        return 0
    if _OCTAL.fullmatch(text) is None:
        raise ArchiveError(f"tar header has an invalid {what} field {text!r}")
    return int(text, 8)


def _check_checksum(block: bytes) -> None:
    """Go and POSIX accept the unsigned byte sum; some old writers used signed bytes."""
    expected = _numeric(block[148:156], "checksum")
    rest = block[:148] + b"        " + block[156:]
    if expected == sum(rest):
        return
    if expected != sum(b - 256 if b > 127 else b for b in rest):
        raise ArchiveError("tar archive is corrupt: header checksum mismatch")


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX extended header records ``<length> <key>=<value>`` + newline (POSIX.1-2001)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        length_text = data[pos:space] if space >= 0 else b""
        if _DECIMAL.fullmatch(length_text) is None:
            raise ArchiveError("tar archive has a malformed PAX record length")
        length = int(length_text)
        end = pos + length
        if length < 5 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ArchiveError("tar archive has a malformed PAX record")
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep or not key:
            raise ArchiveError("tar archive has a PAX record without a key")
        key_text = key.decode("utf-8", "replace")
        value_text = value.decode("utf-8", "replace")
        if key_text in ("path", "linkpath") and "\x00" in value_text:
            raise ArchiveError("tar archive has a NUL byte in a PAX path")
        records[key_text] = value_text
        pos = end
    return records


def extract_tarball(
    data: bytes,
    *,
    path: str = "",
    max_extracted_bytes: int = MAX_EXTRACTED_BYTES,
    max_entry_bytes: int = MAX_ENTRY_BYTES,
    max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES,
) -> dict[str, bytes]:
    """Extract the regular files of a ``.tar.gz`` held in memory.

    Args:
        data: the artifact bytes (gzip; concatenated gzip members are one stream).
        path: ``sourceRef.path``; when set, only entries under ``<path>/`` are
            kept, with that prefix removed (see :func:`normalise_path_prefix`).
        max_extracted_bytes: cap on the sum of kept entry sizes (default 64 MiB).
        max_entry_bytes: cap on one kept entry (default 16 MiB).
        max_decompressed_bytes: cap on the whole decompressed stream, skipped
            entries and tar headers included (default 512 MiB).

    At most ``MAX_FILES`` files with ``MAX_NAME_BYTES`` of names are kept.

    Returns:
        ``{cleaned relative name: content}``; names obey :func:`safe_entry_name`.
        Unsafe or hidden names are dropped silently (JaaS behaviour).

    Raises:
        ReasonError: ``SourceFetchFailed``, not transient, for a cap violation.
        ArchiveError: ``SourceFetchFailed``, not transient, for a corrupt or
            truncated gzip or tar, an unsupported GNU sparse entry, or two
            entries with the same final name.

    CPU-bound (inflating up to 512 MiB); run it in a thread from an event loop.
    """
    if not data:
        raise ArchiveError("artifact is empty, not a gzip stream")
    prefix = normalise_path_prefix(path)
    narrow = prefix + "/" if prefix else ""
    stream = _Stream(data, max_decompressed_bytes)
    files: dict[str, bytes] = {}
    total = 0
    name_bytes = 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        block = stream.read_block()
        if not block:
            break  # end of stream without an end-of-archive marker: Go accepts it
        if block == _ZERO_BLOCK:
            following = stream.read_block()
            if not following or following == _ZERO_BLOCK:
                break
            raise ArchiveError("tar archive is corrupt: data after an empty header block")
        _check_checksum(block)
        typeflag = block[156:157]
        size = _numeric(block[124:136], "size")

        if typeflag in (b"x", b"g", b"L", b"K"):
            if size > MAX_SPECIAL_HEADER_BYTES:
                raise ArchiveError(
                    f"tar archive has a {size}-byte extended header "
                    f"(limit {MAX_SPECIAL_HEADER_BYTES})"
                )
            body = stream.read_exact(size, "an extended header")
            stream.skip(_padding(size), "an extended header")
            if typeflag == b"x":
                pax.update(_parse_pax(body))
            elif typeflag == b"L":
                long_name = _c_string(body).decode("latin-1")
            continue  # "g" (global) records are not applied, as in Go; "K" is a link target

        name = _c_string(block[0:100]).decode("latin-1")
        magic, version = block[257:263], block[263:265]
        if magic == b"ustar\x00" and version == b"00":
            star = block[508:512] == b"tar\x00"
            prefix_field = _c_string(block[345:476] if star else block[345:500])
            if prefix_field:
                name = prefix_field.decode("latin-1") + "/" + name
        if "path" in pax:
            name = pax["path"]
        if "size" in pax:
            size_text = pax["size"].encode()
            if _DECIMAL.fullmatch(size_text) is None:
                raise ArchiveError("tar archive has an invalid PAX size")
            size = int(size_text)
        if long_name is not None:
            name = long_name
        sparse = any(key.startswith("GNU.sparse.") for key in pax)
        pax, long_name = {}, None

        if typeflag == b"\x00":
            typeflag = b"5" if name.endswith("/") else b"0"
        if typeflag == b"S":
            # Old GNU sparse: extra sparse-map blocks follow while "isextended" is set.
            extended = block[482]
            while extended:
                extension = stream.read_exact(_BLOCK, "a sparse header")
                extended = extension[504]
        data_size = 0 if typeflag[0] in _HEADER_ONLY_TYPES else size
        if typeflag != b"0":
            stream.skip(data_size + _padding(data_size), f"entry {name!r}")
            continue

        cleaned = safe_entry_name(name)
        if cleaned is not None and narrow:
            cleaned = cleaned[len(narrow) :] if cleaned.startswith(narrow) else None
        if cleaned is None:
            stream.skip(size + _padding(size), f"entry {name!r}")
            continue
        if sparse:
            raise ArchiveError(f"tar entry {name!r} is a GNU sparse file, which is unsupported")
        if cleaned in files:
            raise ArchiveError(f"tar archive contains duplicate entry path {cleaned!r}")
        if size > max_entry_bytes:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"tar entry {name!r} is {size} bytes, over the {max_entry_bytes}-byte "
                "per-entry cap",
            )
        if size > max_extracted_bytes - total:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"artifact extracts to more than {max_extracted_bytes} bytes",
            )
        name_bytes += len(cleaned.encode())
        if len(files) >= MAX_FILES or name_bytes > MAX_NAME_BYTES:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"artifact holds more than {MAX_FILES} files or {MAX_NAME_BYTES} bytes of "
                "file names",
            )
        files[cleaned] = stream.read_exact(size, f"entry {name!r}")
        stream.skip(_padding(size), f"entry {name!r}")
        total += size
    return files
