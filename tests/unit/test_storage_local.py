"""The local artifact store: layout, atomic puts, prune with grace, delete, concurrent writers."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pytest

from jaas.sources.digest import sha256_digest
from jaas.storage.local import LocalStore
from jaas.storage.package import Package, package_rendered


def rendered(i: int) -> Package:
    return package_rendered(b'{\n   "n": %d\n}\n' % i, {"kustomization.yaml": b"k"}, "")


def test_put_layout_and_mode(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    package = rendered(1)
    rel = store.put("team-a", "snippet.one", package).path
    assert rel == f"team-a/snippet.one/{package.file_name}"
    path = tmp_path / "store" / rel
    assert path.read_bytes() == package.data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert store.path("team-a", "snippet.one", package.file_name) == path
    assert store.exists("team-a", "snippet.one", package.file_name)
    assert not store.exists("team-a", "snippet.one", rendered(2).file_name)
    assert sorted(p.name for p in path.parent.iterdir()) == [package.file_name]


def test_put_is_skip_if_exists_and_only_a_revert_bumps_mtime(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    old, new = rendered(1), rendered(2)
    old_path = tmp_path / store.put("ns", "s", old).path
    new_path = tmp_path / store.put("ns", "s", new).path
    os.utime(old_path, (1000, 1000))
    os.utime(new_path, (2000, 2000))
    inode = old_path.stat().st_ino
    # Republishing the newest revision keeps a running grace where it is.
    store.put("ns", "s", new)
    assert new_path.stat().st_mtime == 2000
    # Reverting to an older one re-anchors the grace of what it displaces.
    store.put("ns", "s", old)
    assert old_path.stat().st_ino == inode  # not rewritten
    assert old_path.stat().st_mtime > 2000
    assert old_path.read_bytes() == old.data


def test_a_stored_revision_is_never_rewritten_with_other_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    package = rendered(1)
    path = tmp_path / store.put("ns", "s", package).path
    path.write_bytes(b"written by another zlib")
    stored = store.put("ns", "s", package)
    assert path.read_bytes() == b"written by another zlib"
    assert stored.digest == sha256_digest(b"written by another zlib") != package.digest
    assert stored.size == len(b"written by another zlib")


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", ".hidden", "a\\b", "x\x00", "-"])
def test_unsafe_segments_are_refused(tmp_path: Path, bad: str) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ValueError, match="invalid"):
        store.put(bad, "s", rendered(1))
    with pytest.raises(ValueError, match="invalid"):
        store.put("ns", bad, rendered(1))
    with pytest.raises(ValueError, match="invalid"):
        store.delete("ns", bad)
    with pytest.raises(ValueError, match="invalid"):
        store.path("ns", "s", bad)
    assert list(tmp_path.iterdir()) == []


def test_put_refuses_a_foreign_file_name(tmp_path: Path) -> None:
    bogus = Package(b"x", "sha256:../../etc", "sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="artifact file name"):
        LocalStore(tmp_path).put("ns", "s", bogus)


def test_a_file_in_the_way_of_the_snippet_directory_is_an_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / "ns").mkdir()
    (tmp_path / "ns" / "s").write_text("not a directory")
    with pytest.raises(NotADirectoryError):
        store.put("ns", "s", rendered(1))


def test_prune_keeps_the_keep_set_and_foreign_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    packages = [rendered(i) for i in range(4)]
    for package in packages:
        store.put("ns", "s", package)
    directory = tmp_path / "ns" / "s"
    (directory / "notes.txt").write_text("not ours")
    (directory / "sha256-short.tar.gz").write_text("not our shape")
    keep = {packages[1].file_name, packages[3].file_name}
    removed = store.prune("ns", "s", keep).removed
    assert removed == sorted([packages[0].file_name, packages[2].file_name])
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [*keep, "notes.txt", "sha256-short.tar.gz"]
    )


def test_prune_with_empty_keep_set_or_missing_dir_does_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    package = rendered(1)
    store.put("ns", "s", package)
    assert store.prune("ns", "s", set()).removed == []
    assert store.exists("ns", "s", package.file_name)
    assert store.prune("ns", "never-stored", {package.file_name}).removed == []
    assert not (tmp_path / "ns" / "never-stored").exists()


def test_prune_grace_counts_from_supersession(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    old, middle, new = rendered(1), rendered(2), rendered(3)
    for package, mtime in ((old, 1000), (middle, 2000), (new, 3000)):
        path = tmp_path / store.put("ns", "s", package).path
        os.utime(path, (mtime, mtime))
    keep = {new.file_name}
    # old was superseded at 2000, middle at 3000; grace 500.
    assert store.prune("ns", "s", keep, grace=500, now=2400).removed == []
    # The next expiry is the old file's: superseded at 2000 (middle's mtime), grace 500.
    assert store.prune("ns", "s", keep, grace=500, now=2400).next_in == pytest.approx(100)
    assert store.prune("ns", "s", keep, grace=500, now=2600).removed == [old.file_name]
    assert store.prune("ns", "s", keep, grace=500, now=3499).removed == []
    assert store.prune("ns", "s", keep, grace=500, now=3500).removed == [middle.file_name]
    assert store.exists("ns", "s", new.file_name)


def test_prune_grace_for_an_orphan_uses_its_own_mtime(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    orphan = rendered(1)
    path = tmp_path / store.put("ns", "s", orphan).path
    os.utime(path, (1000, 1000))
    keep = {rendered(9).file_name}  # newest revision not stored here
    assert store.prune("ns", "s", keep, grace=100, now=1050).removed == []
    assert store.prune("ns", "s", keep, grace=100, now=1100).removed == [orphan.file_name]


def test_delete_removes_the_whole_tree(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(3):
        store.put("ns", "s", rendered(i))
    store.put("ns", "other", rendered(0))
    store.delete("ns", "s")
    assert sorted(p.name for p in (tmp_path / "ns").iterdir()) == ["other"]
    store.delete("ns", "s")  # already gone: no error
    store.delete("missing-ns", "s")
    assert store.put("ns", "s", rendered(5)).path.startswith("ns/s/")


def test_sweep_removes_stale_leftovers(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("ns", "s", rendered(1))
    directory = tmp_path / "ns" / "s"
    stale = directory / ".sha256-x.tar.gz.dead.tmp"
    fresh = directory / ".sha256-y.tar.gz.live.tmp"
    trash = tmp_path / "ns" / ".trash-gone.abc"
    for leftover in (stale, fresh):
        leftover.write_bytes(b"partial")
    trash.mkdir()
    (trash / "f").write_bytes(b"x")
    os.utime(stale, (1000, 1000))
    os.utime(trash, (1000, 1000))
    assert store.sweep(max_tmp_age=3600, now=fresh.stat().st_mtime + 10) == 2
    assert not stale.exists()
    assert not trash.exists()
    assert fresh.exists()
    assert store.exists("ns", "s", rendered(1).file_name)


def test_threads_racing_on_one_snippet(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    packages = [rendered(i) for i in range(6)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(30):
                package = packages[(i + offset) % len(packages)]
                store.put("ns", "s", package)
                store.prune("ns", "s", {package.file_name, packages[0].file_name})
                if i % 10 == 9:
                    store.delete("ns", "s")
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_store_consistent(tmp_path, {p.file_name: p.data for p in packages})


def assert_store_consistent(root: Path, expected: dict[str, bytes]) -> None:
    """Every stored artifact file holds exactly its package's bytes; no leftovers."""
    for path in root.rglob("*"):
        if path.is_file():
            assert path.name in expected, path
            assert path.read_bytes() == expected[path.name]
        else:
            assert not path.name.startswith("."), path


def put_many(root: str, worker: int) -> list[str]:
    """Runs in a spawned process: writes and prunes revisions of shared snippets."""
    store = LocalStore(Path(root))
    written = []
    for i in range(25):
        package = rendered(i % 8)
        written.append(store.put("ns", f"s{i % 2}", package).path)
        store.prune("ns", f"s{i % 2}", {package.file_name, rendered(0).file_name})
    store.put("ns", f"w{worker}", rendered(worker))
    return written


def test_processes_writing_one_root(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        results = pool.starmap(put_many, [(str(tmp_path), k) for k in range(3)])
    assert all(len(r) == 25 for r in results)
    expected = {rendered(i).file_name: rendered(i).data for i in range(8)}
    assert_store_consistent(tmp_path, expected)
    for worker in range(3):
        package = rendered(worker)
        stored = (tmp_path / "ns" / f"w{worker}" / package.file_name).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == package.digest.removeprefix("sha256:")
