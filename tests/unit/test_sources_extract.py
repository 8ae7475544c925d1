"""Safe extraction of Flux artifacts: name rules, narrowing, caps, tar and gzip edge cases."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import pytest

from jaas.api.reasons import Reason, ReasonError
from jaas.sources.extract import (
    MAX_ENTRY_BYTES,
    MAX_FILES,
    MAX_NAME_BYTES,
    ArchiveError,
    extract_tarball,
    normalise_path_prefix,
    safe_entry_name,
)
from jaas.testing.flux import make_tarball

MiB = 1 << 20


# --- raw tar construction (for archives tarfile refuses to write) -------------------------


def header(
    name: bytes,
    size: int,
    typeflag: bytes = b"0",
    *,
    size_field: bytes | None = None,
    prefix: bytes = b"",
    magic: bytes = b"ustar\x00",
    version: bytes = b"00",
    checksum_delta: int = 0,
) -> bytes:
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\x00"
    block[108:116] = b"0000000\x00"
    block[116:124] = b"0000000\x00"
    block[124:136] = size_field if size_field is not None else b"%011o\x00" % size
    block[136:148] = b"00000000000\x00"
    block[156:157] = typeflag
    block[257:263] = magic
    block[263:265] = version
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % (sum(block) + checksum_delta)
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def entry(name: bytes, content: bytes, typeflag: bytes = b"0", **kwargs: object) -> bytes:
    return header(name, len(content), typeflag, **kwargs) + pad(content)  # type: ignore[arg-type]


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length = len(str(length).encode()) + len(body)
    return str(length).encode() + body


def pax(records: dict[str, str], typeflag: bytes = b"x") -> bytes:
    return entry(b"PaxHeaders/x", b"".join(pax_record(k, v) for k, v in records.items()), typeflag)


def targz(*parts: bytes, end: bool = True) -> bytes:
    return gzip.compress(b"".join(parts) + (bytes(1024) if end else b""), mtime=0)


def tar_with(files: dict[str, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("main.jsonnet", "main.jsonnet"),
        ("./main.jsonnet", "main.jsonnet"),
        ("lib//k8s/./x.libsonnet", "lib/k8s/x.libsonnet"),
        ("dir/", "dir"),
        ("A-Z_0.9/x-y", "A-Z_0.9/x-y"),
        ("", None),
        ("/etc/passwd", None),
        ("../x", None),
        ("a/../b", None),
        ("a/..", None),
        ("a\\b", None),
        ("a\x00b", None),
        (".git/config", None),
        ("sub/.hidden", None),
        (".gitignore", None),
        ("./", None),
        (".", None),
        ("with space.jsonnet", None),
        ("ünïcode.jsonnet", None),
        ("semi;colon", None),
        ("new\nline", None),
    ],
)
def test_safe_entry_name(raw: str, expected: str | None) -> None:
    assert safe_entry_name(raw) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", ""),
        (".", ""),
        ("/", ""),
        ("./", ""),
        ("manifests", "manifests"),
        ("./manifests/", "manifests"),
        ("/manifests", "manifests"),
        ("a//b/", "a/b"),
    ],
)
def test_normalise_path_prefix(path: str, expected: str) -> None:
    assert normalise_path_prefix(path) == expected


# --- well-formed archives -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_formats_long_names_and_unsafe_names(fmt: int) -> None:
    long_name = "lib/" + "x" * 90 + "/" + "y" * 90 + ".libsonnet"  # needs prefix / PAX / GNU L
    data = tar_with(
        {
            "./main.jsonnet": b"{a: 1}",
            long_name: b"long",
            ".git/HEAD": b"ref",
            "lib/.hidden.libsonnet": b"h",
            "has space.jsonnet": b"s",
            "../escape.jsonnet": b"e",
        },
        fmt,
    )
    assert extract_tarball(data) == {"main.jsonnet": b"{a: 1}", long_name: b"long"}


def test_only_regular_files_are_kept() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, link in [
            ("dir", tarfile.DIRTYPE, ""),
            ("sym.jsonnet", tarfile.SYMTYPE, "/etc/passwd"),
            ("hard.jsonnet", tarfile.LNKTYPE, "main.jsonnet"),
            ("fifo", tarfile.FIFOTYPE, ""),
            ("chr", tarfile.CHRTYPE, ""),
        ]:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            tar.addfile(info)
        info = tarfile.TarInfo("dir/main.jsonnet")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    assert extract_tarball(buffer.getvalue()) == {"dir/main.jsonnet": b"{}"}


def test_header_only_types_carry_no_data_even_with_a_size() -> None:
    # A symlink header claiming 600 bytes has no data blocks (Go archive/tar); the next
    # header follows immediately.
    data = targz(header(b"link", 600, b"2"), entry(b"a.jsonnet", b"A"))
    assert extract_tarball(data) == {"a.jsonnet": b"A"}


def test_old_style_regular_type_and_trailing_slash_directory() -> None:
    data = targz(entry(b"old.jsonnet", b"O", b"\x00"), entry(b"olddir/", b"", b"\x00"))
    assert extract_tarball(data) == {"old.jsonnet": b"O"}


def test_v7_header_without_magic_and_ustar_prefix() -> None:
    data = targz(
        entry(b"v7.jsonnet", b"7", magic=b"\x00" * 6, version=b"\x00\x00"),
        entry(b"file.jsonnet", b"P", prefix=b"some/dir"),
        # GNU magic: the prefix area is not a prefix
        entry(b"gnu.jsonnet", b"G", magic=b"ustar ", version=b" \x00", prefix=b"ignored"),
    )
    assert extract_tarball(data) == {
        "v7.jsonnet": b"7",
        "some/dir/file.jsonnet": b"P",
        "gnu.jsonnet": b"G",
    }


def test_base256_size_field() -> None:
    size_field = b"\x80" + bytes(10) + b"\x03"
    data = targz(header(b"b.jsonnet", 3, size_field=size_field) + pad(b"abc"))
    assert extract_tarball(data) == {"b.jsonnet": b"abc"}


def test_pax_path_and_size_override_the_header() -> None:
    data = targz(
        pax({"path": "pax/named.jsonnet", "size": "5"}),
        header(b"ustar-name", 0) + pad(b"12345"),
        entry(b"after.jsonnet", b"next"),
    )
    assert extract_tarball(data) == {"pax/named.jsonnet": b"12345", "after.jsonnet": b"next"}


def test_pax_global_header_is_skipped_and_not_applied() -> None:
    data = targz(pax({"path": "global.jsonnet"}, b"g"), entry(b"a.jsonnet", b"A"))
    assert extract_tarball(data) == {"a.jsonnet": b"A"}


def test_gnu_long_name_wins() -> None:
    name = b"gnu/" + b"n" * 200 + b".jsonnet"
    data = targz(entry(b"././@LongLink", name + b"\x00", b"L"), entry(b"short", b"L!"))
    assert extract_tarball(data) == {name.decode(): b"L!"}


def test_old_gnu_sparse_entry_with_extension_blocks_is_skipped() -> None:
    sparse = bytearray(header(b"sparse", 3, b"S"))
    sparse[482] = 1  # isextended: one extension block follows
    sparse[148:156] = b" " * 8
    sparse[148:156] = b"%06o\x00 " % sum(sparse)
    extension = bytearray(512)  # its own isextended (byte 504) is 0
    data = targz(bytes(sparse), bytes(extension), pad(b"xyz"), entry(b"a.jsonnet", b"A"))
    assert extract_tarball(data) == {"a.jsonnet": b"A"}


def test_pax_sparse_regular_file_is_refused() -> None:
    data = targz(pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}), entry(b"s.json", b"x"))
    with pytest.raises(ArchiveError, match="sparse"):
        extract_tarball(data)


def test_end_of_archive_variants() -> None:
    body = entry(b"a.jsonnet", b"A")
    assert extract_tarball(targz(body, end=False)) == {"a.jsonnet": b"A"}
    assert extract_tarball(gzip.compress(body + bytes(512))) == {"a.jsonnet": b"A"}
    # Anything after the end-of-archive marker is ignored, as Go's reader never reads it.
    assert extract_tarball(targz(body, bytes(1024), b"garbage" * 100, end=False)) == {
        "a.jsonnet": b"A"
    }


def test_multistream_gzip() -> None:
    raw = entry(b"a.jsonnet", b"A") + entry(b"b.jsonnet", b"B") + bytes(1024)
    split = 700  # in the middle of the first entry's data block
    data = gzip.compress(raw[:split]) + gzip.compress(raw[split:])
    assert extract_tarball(data) == {"a.jsonnet": b"A", "b.jsonnet": b"B"}


def test_real_gnu_tar_and_git_archive(tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    (tree / "lib").mkdir(parents=True)
    (tree / "main.jsonnet").write_text("{}")
    (tree / "lib" / "k.libsonnet").write_text("{k: 1}")
    (tree / ".gitignore").write_text("x")
    (tree / "lib" / "link.libsonnet").symlink_to("k.libsonnet")
    tarball = tmp_path / "a.tar.gz"
    subprocess.run(["tar", "-C", str(tree), "-czf", str(tarball), "."], check=True)
    assert extract_tarball(tarball.read_bytes()) == {
        "main.jsonnet": b"{}",
        "lib/k.libsonnet": b"{k: 1}",
    }

    def git(*args: str) -> bytes:
        return subprocess.run(
            ["git", "-C", str(tree), *args],
            check=True,
            capture_output=True,
            env={"GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(tmp_path), "PATH": "/usr/bin"},
        ).stdout

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    archive = git("archive", "--format=tar.gz", "--prefix=repo-abc/", "HEAD")
    assert extract_tarball(archive, path="repo-abc") == {
        "main.jsonnet": b"{}",
        "lib/k.libsonnet": b"{k: 1}",
    }


# --- path narrowing and duplicates ---------------------------------------------------------


def test_path_narrowing_keeps_subtree_and_strips_prefix() -> None:
    data = tar_with(
        {
            "manifests/main.jsonnet": b"M",
            "manifests/lib/x.libsonnet": b"X",
            "manifests": b"a file named like the prefix",
            "manifests-other/y.jsonnet": b"Y",
            "top.jsonnet": b"T",
        }
    )
    expected = {"main.jsonnet": b"M", "lib/x.libsonnet": b"X"}
    for path in ("manifests", "./manifests/", "/manifests", "manifests/"):
        assert extract_tarball(data, path=path) == expected
    assert extract_tarball(data, path="lib") == {}
    assert extract_tarball(data, path="manifests/lib") == {"x.libsonnet": b"X"}


def test_duplicate_names_after_cleaning_are_an_error() -> None:
    data = targz(entry(b"a.jsonnet", b"1"), entry(b"./a.jsonnet", b"2"))
    with pytest.raises(ArchiveError, match=r"duplicate entry path 'a\.jsonnet'") as info:
        extract_tarball(data)
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient


def test_duplicates_outside_the_narrowed_path_do_not_count() -> None:
    data = targz(entry(b"x/a", b"1"), entry(b"x/a", b"2"), entry(b"y/a", b"3"))
    assert extract_tarball(data, path="y") == {"a": b"3"}


# --- caps -----------------------------------------------------------------------------------


def test_entry_cap_at_the_default_boundary() -> None:
    exactly = tar_with({"ok.json": bytes(MAX_ENTRY_BYTES)})
    assert len(extract_tarball(exactly)["ok.json"]) == MAX_ENTRY_BYTES
    over = tar_with({"big.json": bytes(MAX_ENTRY_BYTES + 1)})
    with pytest.raises(ReasonError, match="per-entry cap") as info:
        extract_tarball(over)
    assert not isinstance(info.value, ArchiveError)
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient


def test_entry_cap_is_checked_on_the_header_before_reading() -> None:
    # The header claims 1 GiB; there is no body at all. The cap fires, not truncation.
    data = targz(header(b"huge.json", 1 << 30), end=False)
    with pytest.raises(ReasonError, match="per-entry cap"):
        extract_tarball(data)


def test_extracted_total_cap_at_the_default() -> None:
    files = {f"f{i}.json": bytes(15 * MiB) for i in range(5)}  # 75 MiB > 64 MiB
    with pytest.raises(ReasonError, match="extracts to more than") as info:
        extract_tarball(tar_with(files))
    assert not info.value.transient
    # Dropped entries do not count against the total.
    hidden = {f".hidden/f{i}.json": bytes(15 * MiB) for i in range(5)}
    assert extract_tarball(tar_with({**hidden, "a.json": b"1"})) == {"a.json": b"1"}


def test_custom_caps() -> None:
    data = tar_with({"a": b"12345", "b": b"12345"})
    with pytest.raises(ReasonError, match="per-entry cap"):
        extract_tarball(data, max_entry_bytes=4)
    with pytest.raises(ReasonError, match="extracts to more than 9 bytes"):
        extract_tarball(data, max_extracted_bytes=9)
    assert len(extract_tarball(data, max_extracted_bytes=10)) == 2


def test_decompressed_cap_counts_skipped_entries() -> None:
    data = tar_with({".hidden/padding": bytes(2 * MiB), "a": b"A"})
    assert extract_tarball(data) == {"a": b"A"}
    with pytest.raises(ReasonError, match="decompresses to more than 1 MiB") as info:
        extract_tarball(data, max_decompressed_bytes=1 * MiB)
    assert not isinstance(info.value, ArchiveError)
    assert not info.value.transient


def test_gzip_bomb_is_stopped_while_streaming() -> None:
    # 600 MiB of zeros in one skipped (hidden) entry compresses to under 3 MiB.
    size = 600 * MiB
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    parts = [compressor.compress(header(b".bomb", size))]
    zeros = bytes(4 * MiB)
    for _ in range(size // len(zeros)):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(bytes(1024)))
    parts.append(compressor.flush())
    bomb = b"".join(parts)
    assert len(bomb) < 3 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(ReasonError, match="decompresses to more than 512 MiB"):
            extract_tarball(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * MiB  # streamed: never holds the inflated stream


# --- corrupt input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not gzip at all", "not a valid gzip"),
        (gzip.compress(b"x" * 100)[:-8], "not a valid gzip"),  # no trailer: truncated stream
        (b"\x1f\x8b\x08\x00" + b"\xff" * 40, "not a valid gzip"),
    ],
)
def test_corrupt_gzip(data: bytes, message: str) -> None:
    with pytest.raises(ArchiveError, match=message) as info:
        extract_tarball(data)
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient


def test_plain_tar_is_not_accepted() -> None:
    with pytest.raises(ArchiveError):
        extract_tarball(entry(b"a", b"A") + bytes(1024))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (targz(entry(b"a", b"A", checksum_delta=1)), "checksum"),
        (targz(header(b"a", 100) + b"short", end=False), "truncated"),
        (targz(entry(b"a", b"A")[:300], end=False), "truncated"),
        (targz(bytes(512) + entry(b"a", b"A"), end=False), "after an empty header block"),
        (targz(header(b"a", 0, size_field=b"12x4\x00       ")), "invalid size"),
        (targz(header(b"a", 0, size_field=b"\xc0" + bytes(11))), "negative size"),
        # A header whose size is smaller than its body: the body is read as the next header.
        (targz(header(b"a", 2) + pad(b"A" * 600)), "checksum"),
    ],
)
def test_corrupt_tar(data: bytes, message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        extract_tarball(data)


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",
        b"9 path=\n",  # length runs past the data
        b"5 x=y\n",  # the newline is not where the length says
        b"3 x\n",  # shorter than the smallest record
        b"11 noequals\n",
        b"10 path=a\x00\n",
        b"9" * 5000 + b" path=a\n",  # a length int() would refuse to parse
    ],
)
def test_malformed_pax_records(body: bytes) -> None:
    with pytest.raises(ArchiveError):
        extract_tarball(targz(entry(b"pax", body, b"x"), entry(b"a", b"A")))


@pytest.mark.parametrize("size", ["-1", "1e3", "9" * 5000, " 5", ""])
def test_malformed_pax_size(size: str) -> None:
    data = targz(pax({"size": size}), entry(b"a", b"A"))
    with pytest.raises(ArchiveError, match="invalid PAX size"):
        extract_tarball(data)


def test_oversized_pax_header_is_refused_before_reading() -> None:
    # 2 MiB of digits: CVE-2024-6232 made tarfile's regex parser quadratic on this.
    digits = b"1" * (2 * MiB)
    with pytest.raises(ArchiveError, match="extended header"):
        extract_tarball(targz(entry(b"pax", digits, b"x"), entry(b"a", b"A")))


def test_pax_header_of_digits_within_the_limit_is_rejected_not_backtracked() -> None:
    digits = b"1" * (MiB - 16)
    with pytest.raises(ArchiveError, match="PAX record"):
        extract_tarball(targz(entry(b"pax", digits, b"x"), entry(b"a", b"A")))


def test_more_files_than_the_cap_is_refused() -> None:
    tarball = make_tarball({f"f{n}.jsonnet": b"" for n in range(MAX_FILES + 1)})
    with pytest.raises(ReasonError, match=f"more than {MAX_FILES} files") as info:
        extract_tarball(tarball)
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient
    assert len(extract_tarball(make_tarball({f"f{n}": b"" for n in range(MAX_FILES)}))) == MAX_FILES


def test_more_name_bytes_than_the_cap_is_refused() -> None:
    # 2,000 names of 600 characters: 1.2 MB of names in a few KB of gzip.
    long = "d" * 590
    tarball = make_tarball({f"{long}/{n:05}.json": b"" for n in range(2000)})
    assert len(tarball) < 200_000
    with pytest.raises(ReasonError, match=f"{MAX_NAME_BYTES} bytes of file names"):
        extract_tarball(tarball)
