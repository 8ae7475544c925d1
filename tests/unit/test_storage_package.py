"""Deterministic artifact packaging: contents, revisions, digests, tar/gzip headers, caps."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from jaas.api.reasons import Reason, ReasonError
from jaas.sources.extract import extract_tarball
from jaas.storage.objects import consumer_files_for
from jaas.storage.package import (
    Package,
    build_tarball,
    package_rendered,
    package_sources,
    source_revision,
)

MiB = 1 << 20
RENDERED = b'{\n   "a": 1\n}\n'
KUSTOMIZATION = b"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: []\n"


def members(package: Package) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(package.data), mode="r:gz") as tar:
        return tar.getmembers()


def rendered_package(rendered: bytes = RENDERED, **caps: int) -> Package:
    """Package ``rendered`` with the files the evaluator would send for its value."""
    files, found = consumer_files_for(json.loads(rendered))
    return package_rendered(rendered, files, found.summary(), **caps)


def test_rendered_package() -> None:
    package = rendered_package()
    hex_revision = hashlib.sha256(RENDERED).hexdigest()
    assert package.revision == f"sha256:{hex_revision}"
    assert package.digest == "sha256:" + hashlib.sha256(package.data).hexdigest()
    assert package.size == len(package.data)
    assert package.file_name == f"sha256-{hex_revision}.tar.gz"
    files = extract_tarball(package.data)
    assert files["rendered.json"] == RENDERED
    assert [m.name for m in members(package)] == ["kustomization.yaml", "rendered.json"]
    assert package.objects_summary == (
        "rendered.json is not Kubernetes objects ($.a: a number, not a Kubernetes object), "
        "a Kustomization of this artifact fails"
    )


def test_a_render_of_objects_ships_them_for_kustomize_and_keeps_its_revision() -> None:
    rendered = (
        b'{\n   "apiVersion": "v1",\n   "kind": "ConfigMap",\n   "metadata": {"name": "x"}\n}\n'
    )
    package = rendered_package(rendered)
    assert package.revision == "sha256:" + hashlib.sha256(rendered).hexdigest()
    assert package.objects_summary == "1 Kubernetes object"
    files = extract_tarball(package.data)
    assert sorted(files) == ["kustomization.yaml", "objects.yaml", "rendered.json"]
    assert files["rendered.json"] == rendered
    assert (
        b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}' in files["objects.yaml"]
    )
    assert b'- "objects.yaml"' in files["kustomization.yaml"]


def test_packaging_a_render_parses_nothing() -> None:
    # The consumer files and the summary come from the evaluator as they are:
    # rendered.json need not even be JSON here.
    rendered = b"not JSON \xff" * 1000
    given = {"kustomization.yaml": KUSTOMIZATION, "objects.yaml": b"---\n{}\n"}
    package = package_rendered(rendered, given, "as the evaluator said")
    assert extract_tarball(package.data) == {"rendered.json": rendered, **given}
    assert package.revision == "sha256:" + hashlib.sha256(rendered).hexdigest()
    assert package.objects_summary == "as the evaluator said"
    # The files add to the tarball, not to the revision.
    assert package_rendered(rendered, {}, "").revision == package.revision


@pytest.mark.parametrize("name", ["rendered.json", "../x.yaml", ".hidden.yaml", "a//b.yaml"])
def test_a_consumer_file_cannot_replace_rendered_json_or_escape(name: str) -> None:
    with pytest.raises(ValueError, match=r"cannot be published beside rendered\.json"):
        package_rendered(RENDERED, {name: b"x"}, "")


def test_source_package_and_revision() -> None:
    files = {"main.jsonnet": b"{}", "lib/a.libsonnet": b"{a: 1}", "b.json": b"[]"}
    package = package_sources(files)
    expected = hashlib.sha256(
        b"b.json\x00[]\x00lib/a.libsonnet\x00{a: 1}\x00main.jsonnet\x00{}\x00"
    ).hexdigest()
    assert package.revision == f"sha256:{expected}"
    assert source_revision(dict(reversed(files.items()))) == package.revision
    assert extract_tarball(package.data) == files
    assert [m.name for m in members(package)] == ["b.json", "lib/a.libsonnet", "main.jsonnet"]


def test_revision_separates_name_and_content() -> None:
    assert source_revision({"ab": b"c"}) != source_revision({"a": b"bc"})


def test_tar_headers_are_normalised() -> None:
    package = package_sources({"z.jsonnet": b"z", "a/b.jsonnet": b"ab"})
    for member in members(package):
        assert member.isreg()
        assert (member.mode, member.mtime, member.uid, member.gid) == (0o644, 0, 0, 0)
        assert (member.uname, member.gname) == ("", "")
    raw = gzip.decompress(package.data)
    assert raw[257:265] == b"ustar\x0000"  # POSIX (PAX-compatible) header


def test_pax_header_for_long_names() -> None:
    name = "lib/" + "n" * 200 + ".libsonnet"
    package = package_sources({name: b"x"})
    assert [m.name for m in members(package)] == [name]
    assert extract_tarball(package.data) == {name: b"x"}


def test_gzip_header_is_fixed() -> None:
    data = rendered_package().data
    assert data[:4] == b"\x1f\x8b\x08\x00"  # magic, deflate, no FNAME/FCOMMENT/FEXTRA
    assert data[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert data[9] == 0xFF  # OS unknown, as Go writes
    assert b"rendered" not in data[:10]


def test_same_input_same_bytes() -> None:
    files = {f"f{i}.json": (b"%d" % i) * 1000 for i in range(20)}
    assert package_sources(files) == package_sources(dict(reversed(files.items())))
    assert build_tarball(files) == build_tarball(files)
    assert rendered_package() == rendered_package()
    assert rendered_package(RENDERED + b" ") != rendered_package()


def test_same_bytes_in_another_process() -> None:
    program = (
        "import sys; from jaas.storage.package import package_rendered, package_sources\n"
        "print(package_rendered(sys.argv[1].encode(), {'k.yaml': b'k'}, '').digest)\n"
        "print(package_sources({'b': b'2', 'a/x': b'1'}).digest)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", program, RENDERED.decode()],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()
    assert output == [
        package_rendered(RENDERED, {"k.yaml": b"k"}, "").digest,
        package_sources({"a/x": b"1", "b": b"2"}).digest,
    ]


def test_gnu_tar_reads_it(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(package_sources({"a/b.jsonnet": b"1", "c.json": b"2"}).data)
    listing = subprocess.run(
        ["tar", "-tzvf", str(archive)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert [line.split()[-1] for line in listing] == ["a/b.jsonnet", "c.json"]
    assert all(line.startswith("-rw-r--r--") for line in listing)


def test_entry_cap() -> None:
    assert package_rendered(bytes(16 * MiB), {}, "").size > 0
    with pytest.raises(ReasonError, match="per-file") as info:
        package_rendered(bytes(16 * MiB + 1), {}, "")
    assert info.value.reason is Reason.ARTIFACT_TOO_LARGE
    with pytest.raises(ReasonError, match=r"objects\.yaml is 16777217 bytes, over the 16777216"):
        package_rendered(RENDERED, {"objects.yaml": bytes(16 * MiB + 1)}, "")
    with pytest.raises(ReasonError, match="per-file"):
        package_sources({"a": b"", "big": bytes(16 * MiB + 1)})


def test_total_cap() -> None:
    files = {f"part{i}.json": bytes(13 * MiB) for i in range(5)}  # 65 MiB
    with pytest.raises(ReasonError, match="over the 67108864-byte") as info:
        package_sources(files)
    assert info.value.reason is Reason.ARTIFACT_TOO_LARGE


def test_operator_cap() -> None:
    with pytest.raises(ReasonError, match="max-artifact-bytes") as info:
        rendered_package(max_artifact_bytes=len(RENDERED) - 1)
    assert info.value.reason is Reason.ARTIFACT_TOO_LARGE
    # The operator's cap is on rendered.json: the files beside it do not count.
    assert rendered_package(max_artifact_bytes=len(RENDERED)).size > 0
    with pytest.raises(ReasonError, match="max-artifact-bytes"):
        package_sources({"a": b"12", "b": b"34"}, max_artifact_bytes=3)


@pytest.mark.parametrize(
    "name",
    ["/abs", "../up", "a/../b", ".hidden", "dir/.git/x", "sp ace", "a\\b", "./a", "a//b", "a/"],
)
def test_names_consumers_would_drop_are_invalid_spec(name: str) -> None:
    with pytest.raises(ReasonError, match="silently dropped") as info:
        package_sources({name: b"x"})
    assert info.value.reason is Reason.INVALID_SPEC
