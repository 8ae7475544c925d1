"""The shared artifact cache: verification, LRU bound, single-flight in and across processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import blake3
import pytest
import pytest_asyncio
import zstandard
from aiohttp import web

from jaas.sources.cache import EVICT_SCAN_EVERY, ArtifactCache, entry_key
from jaas.sources.digest import ALGORITHMS, Digest
from jaas.sources.fetch import ArtifactFetcher
from jaas.sources.urlguard import URLGuard


def sha256(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def digest_of(algorithm: str, data: bytes) -> Digest:
    """``data``'s digest in ``algorithm``, computed here, not by jaas.sources.digest."""
    if algorithm == "blake3":
        return Digest(algorithm, blake3.blake3(data).hexdigest())
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


def blob(seed: int, size: int = 4096) -> tuple[Digest, bytes]:
    """Incompressible bytes (so compressed sizes are predictable) and their sha256 digest."""
    data = b"".join(hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(size // 32))
    return sha256(data), data


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ArtifactCache]:
    instance = ArtifactCache(tmp_path / "cache")
    yield instance
    instance.close()


def test_put_get_roundtrip_stores_zstd(cache: ArtifactCache) -> None:
    data = b'{"kind": "ConfigMap"}\n' * 500
    digest = sha256(data)
    assert cache.get(digest) is None
    cache.put(digest, data)
    stored = cache.object_path(digest).read_bytes()
    assert stored[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    assert len(stored) < len(data) // 10
    assert cache.get(digest) == data
    assert (cache.hits, cache.misses) == (1, 1)


def test_put_refuses_bytes_that_do_not_match_the_digest(cache: ArtifactCache) -> None:
    digest, _ = blob(1)
    with pytest.raises(ValueError, match="hashes to"):
        cache.put(digest, b"something else")
    assert cache.get(digest) is None


@pytest.mark.parametrize(
    ("algorithm", "bad"),
    [
        ("sha256", ""),
        ("sha256", "../" + "a" * 61),
        ("sha256", "A" * 64),
        ("sha256", "a" * 63),
        ("sha256", "g" * 64),
        ("sha512", "a" * 64),
        ("blake3", "a" * 128),
        ("../sha256", "a" * 64),
        ("md5", "a" * 32),
    ],
)
def test_malformed_keys_cannot_be_made(algorithm: str, bad: str) -> None:
    # A Digest checks its shape, so no cache key can name a path outside objects/.
    with pytest.raises(ValueError, match="digest"):
        Digest(algorithm, bad)


def test_entry_names_keep_sha256_entries_and_separate_algorithms(cache: ArtifactCache) -> None:
    hexes = {"sha256": "a" * 64, "sha384": "b" * 96, "sha512": "c" * 128, "blake3": "d" * 64}
    assert set(hexes) == set(ALGORITHMS)
    names = {cache.object_path(Digest(alg, hexes[alg])).name for alg in ALGORITHMS}
    assert names == {
        f"{'a' * 64}.zst",  # the layout before other algorithms: existing entries stay valid
        f"sha384-{'b' * 96}.zst",
        f"sha512-{'c' * 128}.zst",
        f"blake3-{'d' * 64}.zst",
    }
    # blake3 and sha256 hexes have the same length; the same hex never shares an entry.
    assert entry_key(Digest("blake3", "a" * 64)) != entry_key(Digest("sha256", "a" * 64))


def test_an_entry_written_before_other_algorithms_is_still_a_hit(cache: ArtifactCache) -> None:
    digest, data = blob(6)
    legacy = cache.object_path(digest).parent / f"{digest.hex}.zst"
    legacy.write_bytes(zstandard.ZstdCompressor().compress(data))
    assert cache.get(digest) == data
    assert cache.hits == 1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_round_trips_and_is_verified_on_read(
    cache: ArtifactCache, algorithm: str
) -> None:
    _, data = blob(7)
    digest = digest_of(algorithm, data)
    assert cache.get(digest) is None
    cache.put(digest, data)
    assert cache.get(digest) == data
    # Valid zstd of other bytes under this digest's name: re-hashed in its algorithm, refused.
    cache.object_path(digest).write_bytes(zstandard.ZstdCompressor().compress(data + b"x"))
    assert cache.get(digest) is None
    assert cache.corrupt == 1
    assert not cache.object_path(digest).exists()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_put_refuses_bytes_that_do_not_match_in_the_digests_algorithm(
    cache: ArtifactCache, algorithm: str
) -> None:
    _, data = blob(8)
    with pytest.raises(ValueError, match=f"hashes to {algorithm}:"):
        cache.put(digest_of(algorithm, b"other bytes"), data)
    if algorithm == "blake3":
        # The sha256 hex of the bytes has blake3's length, but it is not their blake3.
        with pytest.raises(ValueError, match="hashes to blake3:"):
            cache.put(Digest("blake3", hashlib.sha256(data).hexdigest()), data)
    assert cache.size_bytes() == 0


async def test_sha512_and_sha256_entries_of_the_same_bytes_coexist(cache: ArtifactCache) -> None:
    by_sha256, data = blob(9)
    by_sha512 = digest_of("sha512", data)
    loads: list[Digest] = []

    def loader_for(digest: Digest) -> Callable[[], Awaitable[bytes]]:
        async def load() -> bytes:
            loads.append(digest)
            return data

        return load

    # Concurrent fills of the two digests do not coalesce: they are different keys.
    both = await asyncio.gather(
        cache.get_or_fetch(by_sha256, loader_for(by_sha256), origin="http://a"),
        cache.get_or_fetch(by_sha512, loader_for(by_sha512), origin="http://a"),
    )
    assert list(both) == [data, data]
    assert sorted(map(str, loads)) == sorted([str(by_sha256), str(by_sha512)])
    assert cache.coalesced == 0
    assert cache.object_path(by_sha256) != cache.object_path(by_sha512)
    assert cache.object_path(by_sha256).exists()
    assert cache.object_path(by_sha512).exists()
    assert cache.get(by_sha256) == data
    assert cache.get(by_sha512) == data
    # Losing one leaves the other.
    cache.object_path(by_sha256).unlink()
    assert cache.get(by_sha256) is None
    assert cache.get(by_sha512) == data


def test_corrupt_entry_is_deleted_and_missed(cache: ArtifactCache) -> None:
    digest, data = blob(2)
    cache.put(digest, data)
    path = cache.object_path(digest)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert cache.get(digest) is None
    assert not path.exists()
    assert cache.corrupt == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated frame
        lambda raw: b"not zstd at all",
        lambda raw: b"",
    ],
)
def test_unreadable_entries_are_misses(cache: ArtifactCache, damage: object) -> None:
    digest, data = blob(3)
    cache.put(digest, data)
    path = cache.object_path(digest)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    assert cache.get(digest) is None
    assert not path.exists()


def test_valid_zstd_of_other_content_is_a_miss(cache: ArtifactCache) -> None:
    hex_a, data_a = blob(4)
    hex_b, data_b = blob(5)
    cache.put(hex_a, data_a)
    cache.put(hex_b, data_b)
    os.replace(cache.object_path(hex_b), cache.object_path(hex_a))
    assert cache.get(hex_a) is None
    assert cache.corrupt == 1


def test_lru_eviction_keeps_recently_used(tmp_path: Path) -> None:
    entries = [blob(10 + i) for i in range(3)]
    probe = ArtifactCache(tmp_path / "probe")
    probe.put(*entries[0])
    one = probe.size_bytes()
    probe.close()
    cache = ArtifactCache(tmp_path / "cache", max_bytes=2 * one + one // 2)  # room for two
    try:
        (hex_a, data_a), (hex_b, data_b), (hex_c, data_c) = entries
        cache.put(hex_a, data_a)
        cache.put(hex_b, data_b)
        os.utime(cache.object_path(hex_a), (1000, 1000))
        os.utime(cache.object_path(hex_b), (2000, 2000))
        assert cache.get(hex_a) == data_a  # a hit: A becomes the most recently used
        cache.put(hex_c, data_c)
        assert cache.get(hex_b) is None  # B was the least recently used
        assert cache.get(hex_a) == data_a
        assert cache.get(hex_c) == data_c
        assert cache.evictions == 1
        assert cache.size_bytes() <= cache.max_bytes
    finally:
        cache.close()


def test_entry_larger_than_the_bound_is_not_kept(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=1000)
    try:
        digest, data = blob(20, 8192)
        cache.put(digest, data)
        assert cache.get(digest) is None
    finally:
        cache.close()


def test_stale_temporary_files_are_swept(cache: ArtifactCache) -> None:
    objects = cache.object_path(Digest("sha256", "a" * 64)).parent
    stale = objects / ".dead.123.tmp"
    fresh = objects / ".live.456.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (1000, 1000))
    cache.evict()
    assert not stale.exists()
    assert fresh.exists()


async def test_in_process_single_flight(cache: ArtifactCache) -> None:
    digest, data = blob(30)
    calls = 0
    gate = asyncio.Event()

    async def loader() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        return data

    waiters = [asyncio.create_task(cache.get_or_fetch(digest, loader)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiters) == [data] * 20
    assert calls == 1
    assert (cache.downloads, cache.coalesced, cache.misses) == (1, 19, 1)
    assert await cache.get_or_fetch(digest, loader) == data
    assert calls == 1
    assert cache.hits == 1


async def test_a_loader_failure_reaches_the_waiters_of_the_same_origin_and_is_not_cached(
    cache: ArtifactCache,
) -> None:
    digest, data = blob(31)
    attempts = 0

    async def failing() -> bytes:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("upstream down")

    results = await asyncio.gather(
        *(cache.get_or_fetch(digest, failing) for _ in range(5)), return_exceptions=True
    )
    assert attempts == 1
    assert all(isinstance(r, RuntimeError) for r in results)

    async def working() -> bytes:
        return data

    assert await cache.get_or_fetch(digest, working) == data
    assert cache.downloads == 1


async def test_another_origins_failure_is_not_shared(cache: ArtifactCache) -> None:
    digest, data = blob(35)
    own_loads = 0

    async def attacker() -> bytes:
        await asyncio.sleep(0.05)
        raise RuntimeError("download http://attacker/slow: HTTP 404")

    async def innocent() -> bytes:
        nonlocal own_loads
        own_loads += 1
        return data

    leader = asyncio.create_task(cache.get_or_fetch(digest, attacker, origin="http://a"))
    await asyncio.sleep(0)
    assert await cache.get_or_fetch(digest, innocent, origin="http://b") == data
    with pytest.raises(RuntimeError, match="attacker"):
        await leader
    assert own_loads == 1
    assert (cache.coalesced, cache.unshared, cache.downloads) == (1, 1, 1)
    assert cache.get(digest) == data


async def test_a_slow_fill_of_another_origin_is_waited_for_only_share_wait(
    tmp_path: Path,
) -> None:
    cache = ArtifactCache(tmp_path / "cache", share_wait=0.2)
    digest, data = blob(36)
    never = asyncio.Event()

    async def trickling() -> bytes:
        await never.wait()
        return data

    async def own_failure() -> bytes:
        raise RuntimeError("download http://b/own: HTTP 503")

    async def own_success() -> bytes:
        return data

    leader = asyncio.create_task(cache.get_or_fetch(digest, trickling, origin="http://a"))
    await asyncio.sleep(0)
    # The waiter's own error, not a wait for the stuck leader.
    with pytest.raises(RuntimeError, match="http://b/own"):
        await cache.get_or_fetch(digest, own_failure, origin="http://b")
    assert await cache.get_or_fetch(digest, own_success, origin="http://c") == data
    assert cache.unshared == 2
    # Once an entry is verified on disk, every origin is served from it.
    assert await cache.get_or_fetch(digest, own_failure, origin="http://d") == data
    assert not leader.done()
    never.set()
    assert await leader == data


async def test_a_quick_fill_of_another_origin_is_shared(cache: ArtifactCache) -> None:
    digest, data = blob(37)
    gate = asyncio.Event()
    other_loads = 0

    async def first() -> bytes:
        await gate.wait()
        return data

    async def second() -> bytes:
        nonlocal other_loads
        other_loads += 1
        return data

    leader = asyncio.create_task(cache.get_or_fetch(digest, first, origin="http://a"))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.get_or_fetch(digest, second, origin="http://b"))
    await asyncio.sleep(0.01)
    gate.set()
    assert await waiter == data
    assert await leader == data
    assert other_loads == 0
    assert (cache.coalesced, cache.unshared, cache.downloads) == (1, 0, 1)


async def test_a_cache_that_cannot_be_written_still_returns_the_download(
    tmp_path: Path,
) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    digest, data = blob(34)
    objects = cache.object_path(digest).parent
    objects.rmdir()
    objects.write_bytes(b"")  # reads and writes below it fail with NotADirectoryError

    async def loader() -> bytes:
        return data

    try:
        assert await cache.get_or_fetch(digest, loader) == data
        assert await cache.get_or_fetch(digest, loader) == data
        assert (cache.downloads, cache.write_errors) == (2, 2)
        assert cache.get(digest) is None
    finally:
        cache.close()


async def test_loader_returning_wrong_bytes_is_refused(cache: ArtifactCache) -> None:
    digest, _ = blob(32)

    async def wrong() -> bytes:
        return b"tampered"

    with pytest.raises(ValueError, match="hashes to"):
        await cache.get_or_fetch(digest, wrong)
    assert cache.get(digest) is None


async def test_cancelled_waiter_does_not_cancel_the_fill(cache: ArtifactCache) -> None:
    digest, data = blob(33)
    gate = asyncio.Event()

    async def loader() -> bytes:
        await gate.wait()
        return data

    first = asyncio.create_task(cache.get_or_fetch(digest, loader))
    second = asyncio.create_task(cache.get_or_fetch(digest, loader))
    await asyncio.sleep(0.01)
    first.cancel()
    gate.set()
    assert await second == data
    with pytest.raises(asyncio.CancelledError):
        await first
    assert cache.get(digest) == data


async def test_two_caches_on_one_root_share_one_fill_through_the_file_lock(
    tmp_path: Path,
) -> None:
    # Two instances have separate in-process maps, so only the flock can serialise them.
    first = ArtifactCache(tmp_path / "shared")
    second = ArtifactCache(tmp_path / "shared")
    digest, data = blob(40)
    started = asyncio.Event()
    gate = asyncio.Event()
    second_loads = 0

    async def slow_loader() -> bytes:
        started.set()
        await gate.wait()
        return data

    async def second_loader() -> bytes:
        nonlocal second_loads
        second_loads += 1
        return data

    try:
        filling = asyncio.create_task(first.get_or_fetch(digest, slow_loader))
        await started.wait()  # the first instance holds the lock inside its loader
        waiting = asyncio.create_task(second.get_or_fetch(digest, second_loader))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        gate.set()
        assert await filling == data
        assert await waiting == data
        assert second_loads == 0
        assert (second.hits, second.downloads) == (1, 0)
        assert list((tmp_path / "shared" / "locks").iterdir()) == []
    finally:
        first.close()
        second.close()


async def test_a_lock_held_longer_than_share_wait_is_downloaded_around(tmp_path: Path) -> None:
    first = ArtifactCache(tmp_path / "shared")
    second = ArtifactCache(tmp_path / "shared", share_wait=0.2)
    digest, data = blob(41)
    started = asyncio.Event()
    never = asyncio.Event()

    async def stuck() -> bytes:
        started.set()
        await never.wait()
        return data

    async def own() -> bytes:
        return data

    holder = asyncio.create_task(first.get_or_fetch(digest, stuck))
    await started.wait()
    assert await asyncio.wait_for(second.get_or_fetch(digest, own), 5) == data
    assert (second.downloads, second.hits) == (1, 0)
    never.set()
    assert await holder == data


# --- across processes ------------------------------------------------------------------------


def fetch_in_child(root: str, url: str, digest: str) -> tuple[str, int, int]:
    """Runs in a spawned process: one fetch through its own cache and fetcher."""

    async def run() -> tuple[str, int, int]:
        cache = ArtifactCache(Path(root))
        fetcher = ArtifactFetcher(cache, guard=URLGuard(allow_loopback=True))
        try:
            data = await fetcher.fetch(url, digest)
        finally:
            await fetcher.close()
            cache.close()
        return hashlib.sha256(data).hexdigest(), cache.downloads, cache.hits

    return asyncio.run(run())


class CountingServer:
    """Serves one artifact; holds each response until `expected` requests arrived or 1.5 s."""

    def __init__(self, data: bytes, expected: int) -> None:
        self.data = data
        self.expected = expected
        self.requests = 0
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests >= self.expected:
            self.arrived.set()
        # Without cross-process single-flight every process would be in here at once and
        # release each other; with it the only request waits out the grace period.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.arrived.wait(), 1.5)
        return web.Response(body=self.data)


@pytest_asyncio.fixture
async def counting_server() -> AsyncIterator[tuple[CountingServer, str]]:
    _, data = blob(50, 1 << 20)
    state = CountingServer(data, expected=3)
    app = web.Application()
    app.router.add_get("/artifact.tar.gz", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield state, f"http://127.0.0.1:{runner.addresses[0][1]}/artifact.tar.gz"
    await runner.cleanup()


async def test_three_processes_cause_one_download(
    counting_server: tuple[CountingServer, str], tmp_path: Path
) -> None:
    server, url = counting_server
    digest = hashlib.sha256(server.data).hexdigest()
    context = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with context.Pool(3) as pool:
        pending = pool.starmap_async(
            fetch_in_child, [(str(tmp_path / "cache"), url, f"sha256:{digest}")] * 3
        )
        results = await loop.run_in_executor(None, pending.get, 120)
    assert server.requests == 1
    assert [r[0] for r in results] == [digest] * 3
    assert sum(r[1] for r in results) == 1  # downloads
    assert sum(r[2] for r in results) == 2  # the other two read the filled entry
    assert list((tmp_path / "cache" / "locks").iterdir()) == []


def test_writes_scan_the_directory_only_when_the_bound_may_be_passed(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=1 << 30)
    try:
        for i in range(200):
            cache.put(*blob(1000 + i))
        # The first write, then one every EVICT_SCAN_EVERY: not one per write.
        assert cache.scans == 1 + 199 // EVICT_SCAN_EVERY
        small = ArtifactCache(tmp_path / "small", max_bytes=3 * 1024)
        for i in range(10):
            small.put(*blob(2000 + i, 1024))
            assert small.size_bytes() <= small.max_bytes  # still exact for one writer
    finally:
        cache.close()
