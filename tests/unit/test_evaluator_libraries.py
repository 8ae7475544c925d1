"""Loading shared libraries from ``--library-path`` directories (JaaS operator rules)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import rjsonnet

from jaas.evaluator.importer import InMemoryImporter
from jaas.evaluator.libraries import (
    MAX_LIBRARY_BYTES,
    LibraryPathError,
    library_path_aliases,
    load_library_paths,
)


def tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """Create ``files`` (``{relative path: content}``) below ``root``; return ``root``."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    root.mkdir(parents=True, exist_ok=True)
    return root


def test_every_subdirectory_is_an_alias_with_its_jsonnet_files_at_any_depth(
    tmp_path: Path,
) -> None:
    libraries = tree(
        tmp_path / "libraries",
        {
            "examplonet/main.libsonnet": "{a: 1}",
            "examplonet/helpers.libsonnet": "{h: 2}",
            "examplonet/sub/deep/x.jsonnet": "3",
            "examplonet/sub/data.json": '{"d": 4}',
            "examplonet/notes.txt": "not loaded",
            "examplonet/README.md": "not loaded",
            "examplonet/Makefile": "not loaded",
            "examplonet/upper.JSON": "not loaded: extensions are case-sensitive, as in Go",
            "other/main.libsonnet": "'other'",
            "stray.libsonnet": "a file beside the libraries is no library",
        },
    )
    loaded = load_library_paths([libraries])
    assert loaded == {
        "examplonet": {
            "helpers.libsonnet": b"{h: 2}",
            "main.libsonnet": b"{a: 1}",
            "sub/data.json": b'{"d": 4}',
            "sub/deep/x.jsonnet": b"3",
        },
        "other": {"main.libsonnet": b"'other'"},
    }
    assert list(loaded) == ["examplonet", "other"]
    assert library_path_aliases([libraries]) == {"examplonet", "other"}
    # str paths work as well as Path objects.
    assert load_library_paths([str(libraries)]) == loaded


def test_hidden_files_and_directories_are_skipped_at_every_level(tmp_path: Path) -> None:
    libraries = tree(
        tmp_path / "libraries",
        {
            "lib/main.libsonnet": "{}",
            "lib/.hidden.libsonnet": "{}",
            "lib/.git/config.json": "{}",
            "lib/sub/.cache/x.libsonnet": "{}",
            "lib/sub/y.libsonnet": "{}",
            ".hiddenlib/main.libsonnet": "{}",
        },
    )
    assert load_library_paths([libraries]) == {
        "lib": {"main.libsonnet": b"{}", "sub/y.libsonnet": b"{}"}
    }
    assert library_path_aliases([libraries]) == {"lib"}


def test_unsafe_alias_and_file_names_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    libraries = tree(
        tmp_path / "libraries",
        {
            "lib/main.libsonnet": "{}",
            "lib/my file.libsonnet": "{}",
            "lib/ünï.libsonnet": "{}",
            "bad alias/main.libsonnet": "{}",
        },
    )
    with caplog.at_level(logging.WARNING):
        assert load_library_paths([libraries]) == {"lib": {"main.libsonnet": b"{}"}}
    assert "bad alias" in caplog.text
    assert "my file.libsonnet" in caplog.text
    assert library_path_aliases([libraries]) == {"lib"}


def test_symlinks_are_followed_only_inside_their_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tree(tmp_path / "outside", {"secret.libsonnet": "'secret'", "d/s.json": "1"})
    libraries = tree(
        tmp_path / "libraries",
        {
            "lib/main.libsonnet": "'main'",
            "lib/v1/x.libsonnet": "'x'",
            "inner/main.libsonnet": "'inner'",
        },
    )
    lib = libraries / "lib"
    (lib / "alias.libsonnet").symlink_to("main.libsonnet")
    (lib / "latest").symlink_to("v1")
    (lib / "leak.libsonnet").symlink_to(outside / "secret.libsonnet")
    (lib / "vendor").symlink_to(outside)
    (lib / "climb.libsonnet").symlink_to("../inner/main.libsonnet")  # another alias: outside
    (lib / "loop").symlink_to(".")
    (lib / "dangling.libsonnet").symlink_to("missing.libsonnet")
    (libraries / "escaped").symlink_to(outside)  # an alias leading out of the library path
    (libraries / "again").symlink_to("inner")  # an alias inside it
    (libraries / "self").symlink_to(".")
    with caplog.at_level(logging.WARNING):
        loaded = load_library_paths([libraries])
    assert loaded == {
        "again": {"main.libsonnet": b"'inner'"},
        "inner": {"main.libsonnet": b"'inner'"},
        "lib": {
            "alias.libsonnet": b"'main'",
            "latest/x.libsonnet": b"'x'",
            "main.libsonnet": b"'main'",
            "v1/x.libsonnet": b"'x'",
        },
    }
    for name in ("leak.libsonnet", "vendor", "climb.libsonnet", "loop", "dangling", "escaped"):
        assert name in caplog.text
    assert library_path_aliases([libraries]) == {"again", "inner", "lib"}


def test_a_configmap_volume_layout_loads_through_its_hidden_data_directory(
    tmp_path: Path,
) -> None:
    # kubelet writes ConfigMap keys as symlinks into a hidden, timestamped directory.
    libraries = tree(tmp_path / "libraries", {"cm/..2024_01_01/main.libsonnet": "'cm'"})
    (libraries / "cm" / "..data").symlink_to("..2024_01_01")
    (libraries / "cm" / "main.libsonnet").symlink_to("..data/main.libsonnet")
    assert load_library_paths([libraries]) == {"cm": {"main.libsonnet": b"'cm'"}}


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    libraries = tree(tmp_path / "libraries", {"lib/main.libsonnet": "{}"})
    os.mkfifo(libraries / "lib" / "pipe.json")  # opening it would block
    assert load_library_paths([libraries]) == {"lib": {"main.libsonnet": b"{}"}}


def test_right_most_path_wins_and_replaces_the_whole_alias(tmp_path: Path) -> None:
    default = tree(
        tmp_path / "libraries",
        {
            "examplonet/main.libsonnet": "{resolved_from: 'default'}",
            "examplonet/only-default.libsonnet": "{}",
            "shared/main.libsonnet": "'kept'",
        },
    )
    override = tree(
        tmp_path / "libraries-overrides",
        {"examplonet/main.libsonnet": "{resolved_from: 'override'}"},
    )
    assert load_library_paths([default, override]) == {
        "examplonet": {"main.libsonnet": b"{resolved_from: 'override'}"},
        "shared": {"main.libsonnet": b"'kept'"},
    }
    reverse = load_library_paths([override, default])
    assert reverse["examplonet"] == {
        "main.libsonnet": b"{resolved_from: 'default'}",
        "only-default.libsonnet": b"{}",
    }
    assert library_path_aliases([default, override]) == {"examplonet", "shared"}


def test_files_of_a_replaced_alias_are_not_read(tmp_path: Path) -> None:
    default = tree(tmp_path / "a", {"big/main.libsonnet": "x" * 1000})
    override = tree(tmp_path / "b", {"big/main.libsonnet": "'small'"})
    assert load_library_paths([default, override], max_bytes=100) == {
        "big": {"main.libsonnet": b"'small'"}
    }
    with pytest.raises(LibraryPathError, match="exceed"):
        load_library_paths([override, default], max_bytes=100)


def test_an_empty_alias_directory_is_still_an_alias(tmp_path: Path) -> None:
    libraries = tree(tmp_path / "libraries", {"empty/notes.txt": "no jsonnet here"})
    assert load_library_paths([libraries]) == {"empty": {}}
    assert library_path_aliases([libraries]) == {"empty"}


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_library_path_that_is_not_a_directory_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "not-a-dir"
    if kind == "file":
        path.write_text("{}")
    good = tree(tmp_path / "libraries", {"lib/main.libsonnet": "{}"})
    for call in (load_library_paths, library_path_aliases):
        with pytest.raises(LibraryPathError, match=r"--library-path .*not-a-dir") as caught:
            call([good, path])
        assert isinstance(caught.value, ValueError)


def test_the_total_size_is_capped(tmp_path: Path) -> None:
    assert MAX_LIBRARY_BYTES == 256 * 1024 * 1024
    libraries = tree(tmp_path / "libraries", {"a/x.json": "12345", "b/y.json": "67890"})
    assert load_library_paths([libraries], max_bytes=10)["b"] == {"y.json": b"67890"}
    with pytest.raises(LibraryPathError, match=r"exceed 9 bytes \(reading .*b/y\.json\)"):
        load_library_paths([libraries], max_bytes=9)


def test_the_number_of_entries_walked_is_capped(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {f"lib/f{n:02}.txt": "" for n in range(20)}
    libraries = tree(tmp_path / "libraries", files)
    assert load_library_paths([libraries], max_entries=21) == {"lib": {}}
    with pytest.raises(LibraryPathError, match="more than 20 files and directories"):
        load_library_paths([libraries], max_entries=20)


def test_loaded_libraries_resolve_like_jsonnet_jpath_libraries(tmp_path: Path) -> None:
    vendor = "github.com/example/vendored/main.libsonnet"
    libraries = tree(
        tmp_path / "libraries",
        {
            "examplonet/main.libsonnet": "{name: 'examplonet', h: import 'helpers.libsonnet'}",
            "examplonet/helpers.libsonnet": "{helper: true}",
            f"joi/{vendor}": "'vendored'",
        },
    )
    files = {
        "main.jsonnet": (
            b"{main: import 'examplonet', helpers: import 'examplonet/helpers.libsonnet',"
            b" vendored: import '" + vendor.encode() + b"'}"
        )
    }
    importer = InMemoryImporter(files, load_library_paths([libraries]))
    text = rjsonnet.evaluate_file(importer.entry_path("main.jsonnet"), import_callback=importer)
    assert json.loads(text) == {
        "main": {"name": "examplonet", "h": {"helper": True}},
        "helpers": {"helper": True},
        "vendored": "vendored",
    }
