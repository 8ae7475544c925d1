"""The Flux-style publisher: real sources through the real API, real tarballs over HTTP."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client

from jaas.api import constants
from jaas.testing.flux import FluxPublisher, PublishedArtifact, make_git_repo, make_tarball

FILES = {"main.jsonnet": "{ a: import 'lib/a.libsonnet' }\n", "lib/a.libsonnet": "42\n"}


async def get_source(api: client.ApiClient, kind: str, namespace: str, name: str) -> Any:
    return await client.CustomObjectsApi(api).get_namespaced_custom_object(
        constants.FLUX_SOURCE_GROUP,
        constants.FLUX_SOURCE_VERSION,
        namespace,
        constants.SOURCE_KIND_PLURALS[kind],
        name,
    )


async def download(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


def regular_files(tarball: bytes) -> dict[str, bytes]:
    files = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[member.name] = extracted.read()
    return files


async def assert_ready_with_artifact(
    kube: client.ApiClient, kind: str, namespace: str, name: str, published: PublishedArtifact
) -> tuple[dict[str, Any], bytes]:
    """Check the object's status as a consumer would, and return it and the downloaded bytes."""
    obj = await get_source(kube, kind, namespace, name)
    status = obj["status"]
    artifact = status["artifact"]
    assert artifact["url"] == published.url
    assert artifact["revision"] == published.revision
    assert artifact["digest"] == published.digest
    assert artifact["path"] == published.path
    assert artifact["path"].startswith(f"{kind.lower()}/{namespace}/{name}/")
    assert published.url.endswith("/" + artifact["path"])
    assert artifact["lastUpdateTime"].endswith("Z")
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Succeeded")
    assert ready["observedGeneration"] == obj["metadata"]["generation"]
    assert ready["lastTransitionTime"]
    if kind == "ExternalArtifact":
        assert "observedGeneration" not in status  # not in ExternalArtifact's status schema
    else:
        assert status["observedGeneration"] == obj["metadata"]["generation"]
    code, body = await download(artifact["url"])
    assert code == 200
    assert artifact["size"] == len(body)
    return obj, body


@pytest.mark.parametrize("kind", ["GitRepository", "OCIRepository", "Bucket", "ExternalArtifact"])
async def test_publish_tarball_serves_bytes_matching_the_digest(
    kube: client.ApiClient, flux: FluxPublisher, namespace: str, kind: str
) -> None:
    tarball = make_tarball(FILES)
    published = await flux.publish_tarball(
        kube, kind, namespace, "src", tarball, "sha256:" + "ab" * 32
    )
    _, body = await assert_ready_with_artifact(kube, kind, namespace, "src", published)
    assert body == tarball
    assert published.digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert published.size == len(tarball)
    assert regular_files(body) == {k: v.encode() for k, v in FILES.items()}


async def test_publish_tarball_can_advertise_a_wrong_digest(
    kube: client.ApiClient, flux: FluxPublisher, namespace: str
) -> None:
    wrong = "sha256:" + "0" * 64
    tarball = make_tarball(FILES)
    published = await flux.publish_tarball(
        kube, "GitRepository", namespace, "src", tarball, "main@sha1:" + "1" * 40, digest=wrong
    )
    obj = await get_source(kube, "GitRepository", namespace, "src")
    assert obj["status"]["artifact"]["digest"] == wrong == published.digest
    code, body = await download(published.url)
    assert code == 200
    assert "sha256:" + hashlib.sha256(body).hexdigest() != wrong


def test_make_tarball_is_reproducible_and_flux_shaped() -> None:
    one = make_tarball({"b.txt": "b", "a/x.json": b"{}"})
    two = make_tarball({"a/x.json": b"{}", "b.txt": "b"})
    assert one == two
    assert gzip.decompress(one)  # a valid gzip stream
    assert one[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    with tarfile.open(fileobj=io.BytesIO(one), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a/x.json", "b.txt"]
    assert {(m.mode, m.mtime, m.uid, m.gid, m.type) for m in members} == {
        (0o644, 0, 0, 0, tarfile.REGTYPE)
    }


async def test_publish_git_serves_git_archive_of_the_commit(
    kube: client.ApiClient, flux: FluxPublisher, namespace: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    first = make_git_repo(repo, FILES, "first")
    published = await flux.publish_git(kube, namespace, "repo", repo)
    assert published.revision == f"main@sha1:{first}"
    assert published.path.endswith(f"/{first}.tar.gz")
    obj, body = await assert_ready_with_artifact(
        kube, "GitRepository", namespace, "repo", published
    )
    assert published.digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert regular_files(body) == {k: v.encode() for k, v in FILES.items()}
    assert obj["spec"]["ref"] == {"branch": "main"}
    assert obj["metadata"]["generation"] == 1

    # A second commit on another branch: new revision and tarball, spec updated.
    second = make_git_repo(repo, {"lib/a.libsonnet": "43\n", "extra.txt": b"\x00\x01"}, "second")
    assert second != first
    again = await flux.publish_git(kube, namespace, "repo", repo, branch="release")
    assert again.revision == f"release@sha1:{second}"
    obj, body = await assert_ready_with_artifact(kube, "GitRepository", namespace, "repo", again)
    assert obj["metadata"]["generation"] == 2
    assert obj["spec"]["ref"] == {"branch": "release"}
    assert regular_files(body) == {
        "main.jsonnet": FILES["main.jsonnet"].encode(),
        "lib/a.libsonnet": b"43\n",
        "extra.txt": b"\x00\x01",
    }
    # The earlier artifact is still served, as source-controller keeps recent ones.
    assert (await download(published.url))[0] == 200

    # An older ref can be published again.
    older = await flux.publish_git(kube, namespace, "repo", repo, ref=first)
    assert older.revision == f"main@sha1:{first}"
    assert older.digest == published.digest


def test_make_git_repo_is_reproducible(tmp_path: Path) -> None:
    one = make_git_repo(tmp_path / "one", FILES, "same")
    two = make_git_repo(tmp_path / "two", FILES, "same")
    assert one == two
    assert len(one) == 40
    assert make_git_repo(tmp_path / "one", {}, "empty") != one


async def test_publish_oci_packs_one_layer_and_names_the_manifest_digest(
    kube: client.ApiClient, flux: FluxPublisher, namespace: str
) -> None:
    published = await flux.publish_oci(kube, namespace, "oci", FILES, tag="v1.2.3")
    obj, body = await assert_ready_with_artifact(kube, "OCIRepository", namespace, "oci", published)
    tag, _, manifest_digest = published.revision.partition("@")
    assert tag == "v1.2.3"
    assert manifest_digest.startswith("sha256:")
    assert len(manifest_digest) == len("sha256:") + 64
    assert manifest_digest != published.digest  # the manifest's digest, not the layer's
    assert published.path.endswith(f"/{manifest_digest.removeprefix('sha256:')}.tar.gz")
    assert body == make_tarball(FILES)
    assert regular_files(body) == {k: v.encode() for k, v in FILES.items()}
    assert obj["spec"]["ref"] == {"tag": "v1.2.3"}
    assert obj["spec"]["url"].startswith("oci://")
    assert "org.opencontainers.image.created" in obj["status"]["artifact"]["metadata"]


async def test_publish_bucket_revision_is_the_etag_index_digest(
    kube: client.ApiClient, flux: FluxPublisher, namespace: str
) -> None:
    published = await flux.publish_bucket(kube, namespace, "bucket", FILES)
    _, body = await assert_ready_with_artifact(kube, "Bucket", namespace, "bucket", published)
    index = "".join(
        f"{key} {hashlib.md5(FILES[key].encode()).hexdigest()}\n" for key in sorted(FILES)
    )
    assert published.revision == "sha256:" + hashlib.sha256(index.encode()).hexdigest()
    assert regular_files(body) == {k: v.encode() for k, v in FILES.items()}
    changed = await flux.publish_bucket(kube, namespace, "bucket", {**FILES, "new.txt": "n"})
    assert changed.revision != published.revision


@pytest.mark.parametrize("kind", ["GitRepository", "ExternalArtifact"])
async def test_create_without_artifact_withdraws_artifact_and_readiness(
    kube: client.ApiClient, flux: FluxPublisher, namespace: str, kind: str
) -> None:
    await flux.publish_tarball(kube, kind, namespace, "src", make_tarball(FILES), "rev-1")
    before = await get_source(kube, kind, namespace, "src")
    (ready_before,) = before["status"]["conditions"]

    await flux.create_without_artifact(kube, kind, namespace, "src")
    obj = await get_source(kube, kind, namespace, "src")
    assert "artifact" not in obj["status"]
    (ready,) = obj["status"]["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "Progressing")

    await flux.create_without_artifact(
        kube, kind, namespace, "src", ready=True, reason="Succeeded", message="no artifact"
    )
    obj = await get_source(kube, kind, namespace, "src")
    assert "artifact" not in obj["status"]
    (ready,) = obj["status"]["conditions"]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "True",
        "Succeeded",
        "no artifact",
    )
    assert ready_before["status"] == "True"


async def test_create_without_artifact_on_a_new_source(
    kube: client.ApiClient, flux: FluxPublisher, namespace: str
) -> None:
    await flux.create_without_artifact(kube, "Bucket", namespace, "fresh", reason="BucketNotFound")
    obj = await get_source(kube, "Bucket", namespace, "fresh")
    assert obj["spec"]["bucketName"] == "fresh"
    assert "artifact" not in obj["status"]
    assert obj["status"]["observedGeneration"] == 1
    (ready,) = obj["status"]["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "BucketNotFound")


async def test_server_counts_downloads_answers_head_and_404s(flux: FluxPublisher) -> None:
    url = flux.put_file("custom/ns/name/file.tar.gz", b"not really gzip")
    async with aiohttp.ClientSession() as session:
        async with session.head(url) as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(len(b"not really gzip"))
        async with session.get(url) as response:
            assert response.status == 200
            assert await response.read() == b"not really gzip"
        flux.remove_file(url)
        async with session.get(url) as response:
            assert response.status == 404
        async with session.get(f"{flux.base_url}/never/there.tar.gz") as response:
            assert response.status == 404
    assert flux.requests["custom/ns/name/file.tar.gz"] == 2
    assert flux.requests["never/there.tar.gz"] == 1


async def test_unknown_kind_is_rejected(
    kube: client.ApiClient, flux: FluxPublisher, namespace: str
) -> None:
    with pytest.raises(ValueError, match="HelmChart"):
        await flux.publish_tarball(kube, "HelmChart", namespace, "x", b"", "r")
