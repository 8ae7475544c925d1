"""Artifact download against a real local HTTP server: digests, errors, retries, caps, cache."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import socket
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from jaas.api.reasons import Reason, ReasonError
from jaas.sources.cache import ArtifactCache
from jaas.sources.digest import ALGORITHMS, parse_digest
from jaas.sources.extract import ArchiveError
from jaas.sources.fetch import (
    ArtifactFetcher,
    GuardedResolver,
    RefusedAddressError,
    is_permanent_http_status,
)
from jaas.sources.urlguard import ForbiddenURLError, URLGuard


def make_tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


TARBALL = make_tarball({"main.jsonnet": b"{a: 1}", "sub/lib.libsonnet": b"{b: 2}"})
DIGEST = "sha256:" + hashlib.sha256(TARBALL).hexdigest()
# The artifact servers below listen on 127.0.0.1, which the default guard refuses.
LOOPBACK = URLGuard(allow_loopback=True)


class ArtifactServer:
    """A Flux-style artifact server that records what it is asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"artifact.tar.gz": TARBALL}
        self.hits: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.flaky: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = asyncio.Event()
        self.slow_requested = asyncio.Event()
        self.two_in_flight = asyncio.Event()
        self.base = ""
        self.port = 0
        self.redirect_target = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/a/{name}", self.serve)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/flaky/{name}", self.flaky_serve)
        app.router.add_get("/redirect/{name}", self.redirect)
        app.router.add_get("/relative/{name}", self.relative_redirect)
        app.router.add_get("/loop", self.loop)
        app.router.add_get("/redirect-to", self.redirect_to)
        app.router.add_get("/to-ftp", self.to_ftp)
        app.router.add_get("/chunked/{size}", self.chunked)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/encoded/{name}", self.content_encoded)
        app.router.add_get("/overlap/{name}", self.overlap)
        app.router.add_get("/trickle", self.trickle)
        app.router.add_get("/no-headers", self.no_headers)
        app.router.add_get("/stall", self.stall)
        return app

    def record(self, request: web.Request) -> None:
        self.hits.append(request.path)
        self.headers.append(dict(request.headers))

    async def serve(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.Response(body=self.files[request.match_info["name"]])

    async def status(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def flaky_serve(self, request: web.Request) -> web.Response:
        self.record(request)
        if self.flaky:
            return web.Response(status=self.flaky.pop(0))
        return web.Response(body=self.files[request.match_info["name"]])

    async def redirect(self, request: web.Request) -> web.Response:
        self.record(request)
        raise web.HTTPFound(f"{self.base}/a/{request.match_info['name']}")

    async def relative_redirect(self, request: web.Request) -> web.Response:
        self.record(request)
        raise web.HTTPTemporaryRedirect(f"../a/{request.match_info['name']}")

    async def redirect_to(self, request: web.Request) -> web.Response:
        self.record(request)
        raise web.HTTPFound(self.redirect_target)

    async def loop(self, request: web.Request) -> web.Response:
        self.record(request)
        raise web.HTTPFound("/loop")

    async def to_ftp(self, request: web.Request) -> web.Response:
        self.record(request)
        raise web.HTTPFound("ftp://example.com/a.tar.gz")

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        remaining = int(request.match_info["size"])
        while remaining > 0:
            part = min(remaining, 4096)
            await response.write(b"x" * part)
            remaining -= part
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        self.record(request)
        self.slow_requested.set()
        await asyncio.wait_for(self.release.wait(), 30)
        return web.Response(body=TARBALL)

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        # One byte every 50 ms, forever: never idle, hopelessly slow.
        self.record(request)
        response = web.StreamResponse()
        await response.prepare(request)
        while True:
            await response.write(b"\x1f")
            await asyncio.sleep(0.05)

    async def no_headers(self, request: web.Request) -> web.Response:
        self.record(request)
        await asyncio.sleep(30)
        return web.Response(body=TARBALL)

    async def stall(self, request: web.Request) -> web.StreamResponse:
        # Some bytes, then silence.
        self.record(request)
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(TARBALL[:10])
        await asyncio.sleep(30)
        return response

    async def content_encoded(self, request: web.Request) -> web.Response:
        # The tarball is gzip data; a client that honours Content-Encoding would hand
        # back the inner tar and fail the digest check.
        self.record(request)
        body = self.files[request.match_info["name"]]
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    async def overlap(self, request: web.Request) -> web.Response:
        # Each request stays in flight until a second one has arrived (so two always
        # overlap), then a little longer (so a third, if the client sent one, overlaps too).
        self.record(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.in_flight >= 2:
            self.two_in_flight.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.two_in_flight.wait(), 5)
            await asyncio.sleep(0.1)
        finally:
            self.in_flight -= 1
        return web.Response(body=self.files[request.match_info["name"]])


@contextlib.asynccontextmanager
async def serving(address: str) -> AsyncIterator[ArtifactServer]:
    """An ArtifactServer listening on ``address`` (a loopback IP) and a free port."""
    state = ArtifactServer()
    runner = web.AppRunner(state.app(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, address, 0)
    await site.start()
    port = runner.addresses[0][1]
    state.port = port
    state.base = f"http://{address}:{port}" if ":" not in address else f"http://[{address}]:{port}"
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[ArtifactServer]:
    async with serving("127.0.0.1") as state:
        yield state


@pytest_asyncio.fixture
async def server6() -> AsyncIterator[ArtifactServer]:
    """A second artifact server, on the IPv6 loopback ::1."""
    async with serving("::1") as state:
        yield state


@pytest_asyncio.fixture
async def fetcher() -> AsyncIterator[ArtifactFetcher]:
    instance = ArtifactFetcher(None, retry_backoff=0.01, guard=LOOPBACK)
    yield instance
    await instance.close()


async def test_fetch_verifies_digest(server: ArtifactServer, fetcher: ArtifactFetcher) -> None:
    url = f"{server.base}/a/artifact.tar.gz"
    assert await fetcher.fetch(url, DIGEST) == TARBALL
    assert await fetcher.fetch(url, "  " + DIGEST.upper() + "\n") == TARBALL
    assert fetcher.downloads == 2


async def test_digest_mismatch_is_permanent_and_not_retried(
    server: ArtifactServer, fetcher: ArtifactFetcher
) -> None:
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ReasonError) as info:
        await fetcher.fetch(f"{server.base}/a/artifact.tar.gz", wrong)
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient
    assert info.value.message.startswith(f"digest mismatch: expected {wrong}, got {DIGEST}")
    assert len(server.hits) == 1


@pytest.mark.parametrize(
    "digest",
    [
        "md5:abc",
        "sha256:xyz",
        "sha256",
        f"sha512:{'a' * 64}",
        f"sha384:{'a' * 128}",
        f"blake3:{'a' * 128}",
        f"md5:{'a' * 32}",
        f"sha1:{'a' * 40}",
    ],
)
async def test_malformed_digest_fails_before_any_request(
    server: ArtifactServer, fetcher: ArtifactFetcher, digest: str
) -> None:
    with pytest.raises(ReasonError) as info:
        await fetcher.fetch(f"{server.base}/a/artifact.tar.gz", digest)
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient
    if digest.startswith(("md5:", "sha1:")):
        assert "(supported: sha256, sha384, sha512, blake3)" in info.value.message
    assert server.hits == []


def digest_of(algorithm: str, data: bytes) -> str:
    """``<algorithm>:<hex>`` of ``data``, as Flux writes it, computed without jaas."""
    if algorithm == "blake3":
        return f"blake3:{blake3.blake3(data).hexdigest()}"
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def flipped(data: bytes) -> bytes:
    """``data`` with one byte in the middle flipped."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_every_flux_digest_algorithm_is_verified(
    server: ArtifactServer, fetcher: ArtifactFetcher, algorithm: str
) -> None:
    url = f"{server.base}/a/artifact.tar.gz"
    digest = digest_of(algorithm, TARBALL)
    assert await fetcher.fetch(url, digest) == TARBALL
    assert await fetcher.fetch(url, f" {digest.upper()}\n") == TARBALL
    parsed = parse_digest(digest)
    assert parsed is not None
    assert await fetcher.fetch(url, parsed) == TARBALL  # an already parsed Digest
    assert await fetcher.fetch_files(url, digest, "sub") == {"lib.libsonnet": b"{b: 2}"}
    assert fetcher.downloads == 4


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_one_flipped_byte_fails_in_the_digests_algorithm(
    server: ArtifactServer, fetcher: ArtifactFetcher, algorithm: str
) -> None:
    server.files["tampered.tar.gz"] = flipped(TARBALL)
    url = f"{server.base}/a/tampered.tar.gz"
    expected = digest_of(algorithm, TARBALL)
    with pytest.raises(ReasonError) as info:
        await fetcher.fetch(url, expected)
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient
    got = digest_of(algorithm, flipped(TARBALL))
    assert info.value.message == f"digest mismatch: expected {expected}, got {got} (from {url})"
    assert len(server.hits) == 1  # permanent: not retried
    assert fetcher.downloads == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_every_algorithm_hashes_a_body_of_many_chunks(
    server: ArtifactServer, fetcher: ArtifactFetcher, algorithm: str
) -> None:
    size = (1 << 20) + 12345  # several reads of the 256 KiB chunk, a ragged last one
    body = b"x" * size
    url = f"{server.base}/chunked/{size}"
    assert await fetcher.fetch(url, digest_of(algorithm, body)) == body
    with pytest.raises(ReasonError, match=f"digest mismatch: expected {algorithm}:"):
        await fetcher.fetch(url, digest_of(algorithm, body + b"x"))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_every_algorithm_goes_through_the_cache(
    server: ArtifactServer, tmp_path: Path, algorithm: str
) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    fetcher = ArtifactFetcher(cache, guard=LOOPBACK)
    url = f"{server.base}/a/artifact.tar.gz"
    digest = digest_of(algorithm, TARBALL)
    try:
        results = await asyncio.gather(*(fetcher.fetch(url, digest) for _ in range(5)))
        assert results == [TARBALL] * 5
        assert await fetcher.fetch(url, digest.upper()) == TARBALL
    finally:
        await fetcher.close()
        cache.close()
    assert len(server.hits) == 1
    assert (cache.downloads, cache.coalesced, cache.hits) == (1, 4, 1)


async def test_sha512_and_sha256_digests_of_one_artifact_are_cached_apart(
    server: ArtifactServer, tmp_path: Path
) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    fetcher = ArtifactFetcher(cache, guard=LOOPBACK)
    url = f"{server.base}/a/artifact.tar.gz"
    by_sha256, by_sha512 = DIGEST, digest_of("sha512", TARBALL)
    try:
        assert await fetcher.fetch(url, by_sha256) == TARBALL
        assert await fetcher.fetch(url, by_sha512) == TARBALL  # another key: downloaded
        assert await fetcher.fetch(url, by_sha256) == TARBALL
        assert await fetcher.fetch(url, by_sha512) == TARBALL
    finally:
        await fetcher.close()
        cache.close()
    assert len(server.hits) == 2
    assert (cache.downloads, cache.hits) == (2, 2)
    names = sorted(path.name for path in (tmp_path / "cache" / "objects").iterdir())
    assert names == sorted(
        [f"{DIGEST.removeprefix('sha256:')}.zst", f"{by_sha512.replace(':', '-')}.zst"]
    )


@pytest.mark.parametrize("digest", [None, "", "  "])
async def test_empty_digest_skips_verification_and_cache(
    server: ArtifactServer, tmp_path: Path, digest: str | None
) -> None:
    server.files["other.tar.gz"] = b"anything at all"
    cache = ArtifactCache(tmp_path / "cache")
    fetcher = ArtifactFetcher(cache, guard=LOOPBACK)
    try:
        assert await fetcher.fetch(f"{server.base}/a/other.tar.gz", digest) == b"anything at all"
        assert await fetcher.fetch(f"{server.base}/a/other.tar.gz", digest) == b"anything at all"
    finally:
        await fetcher.close()
        cache.close()
    assert len(server.hits) == 2
    assert cache.size_bytes() == 0
    assert (cache.hits, cache.misses) == (0, 0)


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410])
async def test_permanent_http_errors_are_not_retried(
    server: ArtifactServer, fetcher: ArtifactFetcher, code: int
) -> None:
    with pytest.raises(ReasonError, match=f"HTTP {code}") as info:
        await fetcher.fetch(f"{server.base}/status/{code}", DIGEST)
    assert not info.value.transient
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert len(server.hits) == 1


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 302])
async def test_transient_http_errors_are_retried_then_raised(
    server: ArtifactServer, fetcher: ArtifactFetcher, code: int
) -> None:
    with pytest.raises(ReasonError, match=f"HTTP {code}") as info:
        await fetcher.fetch(f"{server.base}/status/{code}", DIGEST)
    assert info.value.transient
    assert len(server.hits) == fetcher.attempts == 3


def test_permanent_status_table() -> None:
    assert [s for s in (200, 302, 399, 400, 404, 408, 429, 499, 500, 503) if
            is_permanent_http_status(s)] == [400, 404, 499]  # fmt: skip


async def test_retry_recovers(server: ArtifactServer, fetcher: ArtifactFetcher) -> None:
    server.flaky = [503, 429]
    assert await fetcher.fetch(f"{server.base}/flaky/artifact.tar.gz", DIGEST) == TARBALL
    assert len(server.hits) == 3


async def test_connection_refused_is_transient(fetcher: ArtifactFetcher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ReasonError) as info:
        await fetcher.fetch(f"http://127.0.0.1:{port}/a.tar.gz", DIGEST)
    assert info.value.transient
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED


async def test_timeout_is_transient(server: ArtifactServer) -> None:
    fetcher = ArtifactFetcher(None, timeout=0.2, attempts=2, retry_backoff=0.01, guard=LOOPBACK)
    try:
        with pytest.raises(ReasonError, match="timed out") as info:
            await fetcher.fetch(f"{server.base}/slow", DIGEST)
    finally:
        await fetcher.close()
    assert info.value.transient
    assert len(server.hits) == 2


async def test_download_cap_with_content_length(server: ArtifactServer) -> None:
    server.files["big.tar.gz"] = bytes(2000)
    fetcher = ArtifactFetcher(None, max_download_bytes=1999, guard=LOOPBACK)
    try:
        with pytest.raises(ReasonError, match="1999-byte download cap") as info:
            await fetcher.fetch(f"{server.base}/a/big.tar.gz", None)
        assert not info.value.transient
        assert len(server.hits) == 1
        fetcher.max_download_bytes = 2000
        assert len(await fetcher.fetch(f"{server.base}/a/big.tar.gz", None)) == 2000
    finally:
        await fetcher.close()


async def test_download_cap_while_streaming_chunked(server: ArtifactServer) -> None:
    fetcher = ArtifactFetcher(None, max_download_bytes=10_000, guard=LOOPBACK)
    try:
        with pytest.raises(ReasonError, match="download cap") as info:
            await fetcher.fetch(f"{server.base}/chunked/50000", None)
        assert not info.value.transient
        assert len(await fetcher.fetch(f"{server.base}/chunked/10000", None)) == 10_000
    finally:
        await fetcher.close()


async def test_default_download_cap_is_64_mib() -> None:
    assert ArtifactFetcher(None).max_download_bytes == 64 << 20


async def test_redirects_are_followed(server: ArtifactServer, fetcher: ArtifactFetcher) -> None:
    assert await fetcher.fetch(f"{server.base}/redirect/artifact.tar.gz", DIGEST) == TARBALL
    assert await fetcher.fetch(f"{server.base}/relative/artifact.tar.gz", DIGEST) == TARBALL
    assert server.hits == [
        "/redirect/artifact.tar.gz",
        "/a/artifact.tar.gz",
        "/relative/artifact.tar.gz",
        "/a/artifact.tar.gz",
    ]


async def test_redirect_targets_are_checked(
    server: ArtifactServer, fetcher: ArtifactFetcher
) -> None:
    with pytest.raises(ReasonError, match="must use http or https") as info:
        await fetcher.fetch(f"{server.base}/to-ftp", DIGEST)
    assert not info.value.transient
    assert len(server.hits) == 1


async def test_redirect_loop_stops(server: ArtifactServer) -> None:
    fetcher = ArtifactFetcher(None, attempts=1, guard=LOOPBACK)
    try:
        with pytest.raises(ReasonError, match="stopped after 10 redirects"):
            await fetcher.fetch(f"{server.base}/loop", DIGEST)
    finally:
        await fetcher.close()
    assert len(server.hits) == 11


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/a.tar.gz", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http:///a.tar.gz", "no host"),
        ("not a url", "http or https"),
        ("http://[::1/a.tar.gz", "cannot be parsed"),
    ],
)
async def test_bad_urls_are_permanent(fetcher: ArtifactFetcher, url: str, message: str) -> None:
    with pytest.raises(ReasonError, match=message) as info:
        await fetcher.fetch(url, DIGEST)
    assert not info.value.transient


async def test_request_headers_and_identity_encoding(
    server: ArtifactServer, fetcher: ArtifactFetcher
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await fetcher.fetch(
        f"{server.base}/a/artifact.tar.gz", DIGEST, headers={"traceparent": traceparent}
    )
    assert server.headers[0]["traceparent"] == traceparent
    assert server.headers[0]["Accept-Encoding"] == "identity"


async def test_content_encoding_is_not_undone(
    server: ArtifactServer, fetcher: ArtifactFetcher
) -> None:
    data = await fetcher.fetch(f"{server.base}/encoded/artifact.tar.gz", DIGEST)
    assert data == TARBALL
    assert gzip.decompress(data) != data


async def test_environment_proxies_are_ignored(
    server: ArtifactServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    for variable in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(variable, f"http://127.0.0.1:{dead}")
    for variable in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
    fetcher = ArtifactFetcher(None, attempts=1, guard=LOOPBACK)
    try:
        assert await fetcher.fetch(f"{server.base}/a/artifact.tar.gz", DIGEST) == TARBALL
    finally:
        await fetcher.close()


async def test_concurrent_downloads_are_bounded(server: ArtifactServer) -> None:
    fetcher = ArtifactFetcher(None, max_concurrent_downloads=2, guard=LOOPBACK)
    url = f"{server.base}/overlap/artifact.tar.gz"
    try:
        results = await asyncio.gather(
            *(fetcher.fetch(url, DIGEST, flow=f"ns-{n % 2}") for n in range(5))
        )
    finally:
        await fetcher.close()
    assert results == [TARBALL] * 5
    assert len(server.hits) == 5
    assert server.max_in_flight == 2


async def test_cache_makes_concurrent_fetches_one_download(
    server: ArtifactServer, tmp_path: Path
) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    fetcher = ArtifactFetcher(cache, guard=LOOPBACK)
    url = f"{server.base}/a/artifact.tar.gz"
    try:
        results = await asyncio.gather(*(fetcher.fetch(url, DIGEST) for _ in range(10)))
        assert results == [TARBALL] * 10
        assert len(server.hits) == 1
        # Later fetches, also with another spelling of the digest, are served from disk.
        assert await fetcher.fetch(url, DIGEST.upper()) == TARBALL
        assert len(server.hits) == 1
        assert (cache.downloads, cache.coalesced, cache.hits) == (1, 9, 1)
    finally:
        await fetcher.close()
        cache.close()


async def test_cached_mismatch_is_not_stored(server: ArtifactServer, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    fetcher = ArtifactFetcher(cache, guard=LOOPBACK)
    wrong = "sha256:" + "1" * 64
    try:
        for _ in range(2):
            with pytest.raises(ReasonError, match="digest mismatch"):
                await fetcher.fetch(f"{server.base}/a/artifact.tar.gz", wrong)
    finally:
        await fetcher.close()
        cache.close()
    assert len(server.hits) == 2
    assert cache.size_bytes() == 0


async def test_fetch_files_extracts_and_narrows(
    server: ArtifactServer, fetcher: ArtifactFetcher
) -> None:
    url = f"{server.base}/a/artifact.tar.gz"
    assert await fetcher.fetch_files(url, DIGEST) == {
        "main.jsonnet": b"{a: 1}",
        "sub/lib.libsonnet": b"{b: 2}",
    }
    assert await fetcher.fetch_files(url, DIGEST, "sub") == {"lib.libsonnet": b"{b: 2}"}


async def test_corrupt_archive_is_permanent_only_when_digest_verified(
    server: ArtifactServer, fetcher: ArtifactFetcher
) -> None:
    server.files["corrupt.tar.gz"] = b"not a tarball"
    url = f"{server.base}/a/corrupt.tar.gz"
    digest = "sha256:" + hashlib.sha256(b"not a tarball").hexdigest()
    with pytest.raises(ArchiveError, match=r"corrupt\.tar\.gz") as verified:
        await fetcher.fetch_files(url, digest)
    assert not verified.value.transient
    with pytest.raises(ArchiveError) as unverified:
        await fetcher.fetch_files(url, None)
    assert unverified.value.transient
    assert unverified.value.reason is Reason.SOURCE_FETCH_FAILED


async def test_cap_violation_in_extraction_stays_permanent_without_digest(
    server: ArtifactServer, fetcher: ArtifactFetcher
) -> None:
    server.files["big.tar.gz"] = make_tarball({"big.json": bytes((16 << 20) + 1)})
    with pytest.raises(ReasonError, match="per-entry cap") as info:
        await fetcher.fetch_files(f"{server.base}/a/big.tar.gz", None)
    assert not info.value.transient


# --- the SSRF guard -------------------------------------------------------------------------


@dataclass(frozen=True)
class AdmitOrigin(URLGuard):
    """The default guard (loopback refused), except one origin it treats as a public host.

    Lets the 127.0.0.1 test server stand in for an allowed artifact host while
    every other loopback URL, a redirect target in particular, is refused.
    """

    origin: str = ""

    def check(self, url: str | URL) -> URL:
        parsed = url if isinstance(url, URL) else URL(url)
        if parsed.absolute and str(parsed.origin()) == self.origin:
            return parsed
        return super().check(parsed)


class FakeResolver(AbstractResolver):
    """Answers from a fixed table, as a DNS server controlled by an attacker would."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        self.closed = True


async def test_default_guard_refuses_loopback_before_any_request(server: ArtifactServer) -> None:
    fetcher = ArtifactFetcher(None)
    try:
        with pytest.raises(ForbiddenURLError, match="loopback") as info:
            await fetcher.fetch(f"{server.base}/a/artifact.tar.gz", DIGEST)
    finally:
        await fetcher.close()
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient
    assert server.hits == []
    assert fetcher.requests == 0


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "metadata"),
        ("{v6}/a/artifact.tar.gz", "loopback"),
    ],
)
async def test_redirect_to_a_forbidden_host_is_refused_without_a_request(
    server: ArtifactServer, server6: ArtifactServer, target: str, why: str
) -> None:
    server.redirect_target = target.format(v6=server6.base)
    fetcher = ArtifactFetcher(None, guard=AdmitOrigin(origin=server.base))
    try:
        with pytest.raises(ForbiddenURLError) as info:
            await fetcher.fetch(f"{server.base}/redirect-to", DIGEST)
    finally:
        await fetcher.close()
    assert not info.value.transient
    assert why in info.value.message
    assert info.value.host is not None
    assert info.value.host in info.value.message
    assert server.hits == ["/redirect-to"]  # refused, and not retried
    assert server6.hits == []
    assert fetcher.requests == 1


async def test_redirect_to_ipv6_loopback_is_followed_when_loopback_is_allowed(
    server: ArtifactServer, server6: ArtifactServer, fetcher: ArtifactFetcher
) -> None:
    # The control for the test above: the [::1] server is reachable, so its
    # empty hit list there means the guard stopped the request.
    server.redirect_target = f"{server6.base}/a/artifact.tar.gz"
    assert await fetcher.fetch(f"{server.base}/redirect-to", DIGEST) == TARBALL
    assert server6.hits == ["/a/artifact.tar.gz"]


async def test_metadata_redirect_is_refused_even_with_loopback_allowed(
    server: ArtifactServer, fetcher: ArtifactFetcher
) -> None:
    server.redirect_target = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(ForbiddenURLError, match="metadata") as info:
        await fetcher.fetch(f"{server.base}/redirect-to", DIGEST)
    assert not info.value.transient
    assert server.hits == ["/redirect-to"]


async def test_name_resolving_to_loopback_is_refused_at_connect_time(
    server: ArtifactServer,
) -> None:
    resolver = FakeResolver({"artifacts.example": ["127.0.0.1"]})
    fetcher = ArtifactFetcher(None, resolver=resolver)
    url = f"http://artifacts.example:{server.port}/a/artifact.tar.gz?token=x"
    try:
        assert fetcher.check_url(url).host == "artifacts.example"  # the URL itself is fine
        with pytest.raises(ForbiddenURLError) as info:
            await fetcher.fetch(url, DIGEST)
    finally:
        await fetcher.close()
    assert info.value.reason is Reason.SOURCE_FETCH_FAILED
    assert not info.value.transient
    assert info.value.host == "artifacts.example"
    assert info.value.why == "loopback"
    for part in ("artifacts.example", "127.0.0.1", "loopback"):
        assert part in info.value.message
    assert "token" not in info.value.message
    assert resolver.lookups == ["artifacts.example"]  # not retried
    assert server.hits == []
    assert not resolver.closed  # the caller's, reused by a later fetch


async def test_name_resolving_to_loopback_is_fetched_when_loopback_is_allowed(
    server: ArtifactServer,
) -> None:
    # The control for the test above, and: a forbidden answer is dropped, the
    # allowed one used.
    resolver = FakeResolver({"artifacts.example": ["169.254.169.254", "127.0.0.1"]})
    fetcher = ArtifactFetcher(None, guard=LOOPBACK, resolver=resolver)
    try:
        url = f"http://artifacts.example:{server.port}/a/artifact.tar.gz"
        assert await fetcher.fetch(url, DIGEST) == TARBALL
    finally:
        await fetcher.close()
    assert server.hits == ["/a/artifact.tar.gz"]


async def test_redirect_to_a_name_that_resolves_to_loopback_is_refused(
    server: ArtifactServer,
) -> None:
    resolver = FakeResolver({"rebind.example": ["::1", "127.0.0.1"]})
    server.redirect_target = f"http://rebind.example:{server.port}/a/artifact.tar.gz"
    fetcher = ArtifactFetcher(None, guard=AdmitOrigin(origin=server.base), resolver=resolver)
    try:
        with pytest.raises(ForbiddenURLError, match=r"rebind\.example") as info:
            await fetcher.fetch(f"{server.base}/redirect-to", DIGEST)
    finally:
        await fetcher.close()
    assert not info.value.transient
    assert "::1 (loopback)" in info.value.message
    assert "127.0.0.1 (loopback)" in info.value.message
    assert server.hits == ["/redirect-to"]


async def test_guarded_resolver_filters_answers() -> None:
    inner = FakeResolver(
        {
            "mixed.example": ["169.254.169.254", "10.0.0.7", "::1", "fd00::7"],
            "bad.example": ["0.0.0.0", "fe80::1%eth0"],
            "empty.example": [],
        }
    )
    resolver = GuardedResolver(URLGuard(), inner)
    kept = await resolver.resolve("mixed.example", 443, socket.AF_UNSPEC)
    assert [answer["host"] for answer in kept] == ["10.0.0.7", "fd00::7"]
    assert all(answer["port"] == 443 for answer in kept)
    with pytest.raises(RefusedAddressError) as info:
        await resolver.resolve("bad.example", 80)
    assert info.value.host == "bad.example"
    assert info.value.refused == [("0.0.0.0", "unspecified"), ("fe80::1%eth0", "link-local")]
    assert isinstance(info.value, OSError)
    assert await resolver.resolve("empty.example") == []
    with pytest.raises(socket.gaierror):
        await resolver.resolve("unknown.example")
    await resolver.close()
    assert not inner.closed  # passed in, so the caller's to close


async def test_error_messages_leave_out_credentials_and_query(server: ArtifactServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    authority = f"user:secret@127.0.0.1:{server.port}"
    server.files["corrupt.tar.gz"] = b"not a tarball"
    corrupt = "sha256:" + hashlib.sha256(b"not a tarball").hexdigest()
    cases: list[tuple[str, str | None, str]] = [
        (f"http://{authority}/status/404?token=x#frag", DIGEST, "HTTP 404"),
        (f"http://{authority}/a/artifact.tar.gz?token=x", "sha256:" + "0" * 64, "mismatch"),
        (f"http://user:secret@127.0.0.1:{dead}/a.tar.gz?token=x", DIGEST, "download"),
        (f"http://{authority}/a/corrupt.tar.gz?token=x", corrupt, "corrupt.tar.gz"),
        ("http://user:secret@169.254.169.254/latest?token=x", DIGEST, "metadata"),
        (f"ftp://{authority}/a.tar.gz?token=x", DIGEST, "http or https"),
    ]
    fetcher = ArtifactFetcher(None, guard=LOOPBACK, attempts=1)
    try:
        for url, digest, expected in cases:
            with pytest.raises(ReasonError) as info:
                await fetcher.fetch_files(url, digest)
            message = info.value.message
            assert expected in message, (url, message)
            for leak in ("secret", "user", "token=x", "frag"):
                assert leak not in message, (url, message)
    finally:
        await fetcher.close()


def quick_fetcher(**limits: float) -> ArtifactFetcher:
    """A loopback fetcher with one attempt and the given download limits."""
    return ArtifactFetcher(None, attempts=1, guard=LOOPBACK, **limits)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "limits", "message", "flag"),
    [
        (
            "/no-headers",
            {"first_byte_timeout": 0.3},
            r"no response within 0\.3 s",
            "--download-first-byte-timeout",
        ),
        ("/stall", {"idle_timeout": 0.3}, r"no data for 0\.3 s", "--download-idle-timeout"),
        (
            "/trickle",
            {"min_rate": 1000, "min_rate_grace": 0.3},
            "below the minimum rate of 1000 bytes/s",
            "--download-min-rate",
        ),
    ],
    ids=["no-headers", "stalled-body", "trickle"],
)
async def test_a_slow_server_is_cut_off_by_the_bound_it_breaks(
    server: ArtifactServer, path: str, limits: dict[str, float], message: str, flag: str
) -> None:
    fetcher = quick_fetcher(**limits)
    try:
        with pytest.raises(ReasonError, match=message) as info:
            await fetcher.fetch(f"{server.base}{path}", DIGEST)
    finally:
        await fetcher.close()
    assert info.value.transient
    assert info.value.message.endswith(f"({flag})")


async def test_a_listener_that_never_accepts_is_cut_off_by_the_connect_timeout() -> None:
    # A listen backlog of 0 holds one connection; the kernel drops the SYNs of the
    # next ones, so their connect hangs as it would towards a black-holed address.
    with socket.socket() as listener, socket.socket() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued.connect(("127.0.0.1", port))
        fetcher = quick_fetcher(connect_timeout=0.3)
        try:
            with pytest.raises(ReasonError, match=r"no connection within 0\.3 s") as info:
                await fetcher.fetch(f"http://127.0.0.1:{port}/a.tar.gz", DIGEST)
        finally:
            await fetcher.close()
    assert info.value.transient
    assert info.value.message.endswith("(--download-connect-timeout)")


async def test_one_namespaces_slow_downloads_leave_a_slot_for_another(
    server: ArtifactServer,
) -> None:
    fetcher = ArtifactFetcher(None, max_concurrent_downloads=2, attempts=1, guard=LOOPBACK)
    slow = [
        asyncio.create_task(fetcher.fetch(f"{server.base}/slow", DIGEST, flow="slow"))
        for _ in range(4)
    ]
    try:
        await asyncio.wait_for(server.slow_requested.wait(), 5)
        # The slow namespace holds one slot and queues the rest; the other slot is free.
        assert fetcher.slots.held_by("slow") == 1
        fast = await asyncio.wait_for(
            fetcher.fetch(f"{server.base}/a/artifact.tar.gz", DIGEST, flow="fast"), 5
        )
        assert fast == TARBALL
        assert server.hits.count("/slow") == 1
    finally:
        server.release.set()
        assert await asyncio.gather(*slow) == [TARBALL] * 4
        await fetcher.close()
