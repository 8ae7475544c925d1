"""Figures for the artifact cache, the fetcher and packaging (prints a report; asserts nothing).

Run: ``.venv/bin/python loadtests/bench_cache.py [--concurrency 32] [--processes 4]``

Measures, on this machine, in one run (compare the ratios, not the absolute
times; the server runs on loopback in the same process, so a "download" here
is far cheaper than one across a cluster network):

1. N concurrent fetches of one digest: downloads and wall time with the cache
   off, cold, warm, and cold across several processes sharing one cache;
2. latency of a cache hit versus a download of a ~5 MB artifact;
3. the zstd ratio of a stored artifact (a ``.tar.gz``) and, for comparison, of
   the tar inside it;
4. packaging time for 1 KiB, 1 MiB and 16 MiB of rendered JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import io
import json
import multiprocessing
import random
import statistics
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import zstandard
from aiohttp import web

from jaas.sources.cache import ZSTD_LEVEL, ArtifactCache
from jaas.sources.digest import Digest
from jaas.sources.extract import extract_tarball
from jaas.sources.fetch import ArtifactFetcher
from jaas.sources.urlguard import URLGuard
from jaas.storage.objects import consumer_files_for
from jaas.storage.package import package_rendered

# CountingServer listens on 127.0.0.1, which the default artifact URL guard refuses.
LOOPBACK = URLGuard(allow_loopback=True)

MB = 1_000_000
WORDS = [
    "apiVersion", "kind", "metadata", "labels", "spec", "containers", "image", "ports",
    "replicas", "selector", "matchLabels", "template", "resources", "limits", "requests",
    "cpu", "memory", "grafana", "dashboard", "panels", "targets", "expr", "rate", "sum",
    "histogram_quantile", "le", "job", "instance", "namespace", "pod", "container",
]  # fmt: skip


def jsonnet_like(rng: random.Random, size: int) -> bytes:
    """Source-like text: nested objects of Kubernetes-ish words and numbers."""
    out: list[str] = []
    length = 0
    while length < size:
        key, value = rng.choice(WORDS), rng.choice(WORDS)
        line = f"  {key}_{rng.randrange(10_000)}: {{ {value}: '{value}-{rng.random():.6f}' }},\n"
        out.append(line)
        length += len(line)
    return "".join(out).encode()


def make_artifact(target_bytes: int) -> bytes:
    """A Flux-like ``.tar.gz`` of generated source files, about ``target_bytes`` big."""
    rng = random.Random(42)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        index = 0
        while buffer.tell() < target_bytes:
            content = jsonnet_like(rng, 64 * 1024)
            info = tarfile.TarInfo(f"lib/part{index:04d}.libsonnet")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
            index += 1
    return buffer.getvalue()


def rendered_json(size: int) -> bytes:
    """Rendered JSON laid out as go-jsonnet does (3-space indent, sorted keys), >= size bytes."""
    rng = random.Random(7)
    items = []
    for index in range(size // 200 + 1):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"cm-{index}", "labels": {"app": rng.choice(WORDS)}},
                "data": {rng.choice(WORDS): f"{rng.random():.12f}" for _ in range(4)},
            }
        )
    return (json.dumps(items, indent=3, sort_keys=True) + "\n").encode()


class CountingServer:
    """Serves artifacts from memory on 127.0.0.1 and counts requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests = 0
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def handle(self, request: web.Request) -> web.Response:
        """Serve ``/<name>`` from memory."""
        self.requests += 1
        return web.Response(body=self.files[request.match_info["name"]])

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_get("/{name}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        """Stop listening."""
        if self.runner is not None:
            await self.runner.cleanup()


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    """Seconds one awaited call takes."""
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def median_of(runs: int, action: Callable[[], Awaitable[object]]) -> float:
    """Median seconds over ``runs`` awaited calls."""
    return statistics.median([await timed(action) for _ in range(runs)])


def child_fetch(root: str, url: str, digest: str, concurrency: int) -> int:
    """Spawned-process worker: ``concurrency`` concurrent fetches through the shared cache."""

    async def run() -> int:
        cache = ArtifactCache(Path(root))
        fetcher = ArtifactFetcher(cache, guard=LOOPBACK)
        try:
            await asyncio.gather(*(fetcher.fetch(url, digest) for _ in range(concurrency)))
        finally:
            await fetcher.close()
            cache.close()
        return cache.downloads

    return asyncio.run(run())


def warm_worker() -> None:
    """Pool initializer: import everything before the clock starts."""
    import jaas.sources.fetch  # noqa: F401


async def concurrent_fetches(
    server: CountingServer, url: str, digest: str, concurrency: int, processes: int
) -> None:
    """Section 1: N concurrent fetches of one digest."""
    print(f"\n1. {concurrency} concurrent fetches of one digest ({len(server.files['a'])} bytes)")
    print(f"   {'mode':<34} {'downloads':>9} {'wall ms':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        rows: list[tuple[str, int, float]] = []
        fetcher = ArtifactFetcher(None, guard=LOOPBACK)
        before = server.requests
        wall = await timed(
            lambda: asyncio.gather(*(fetcher.fetch(url, digest) for _ in range(concurrency)))
        )
        await fetcher.close()
        rows.append(("cache off", server.requests - before, wall))

        cache = ArtifactCache(Path(tmp) / "cache")
        fetcher = ArtifactFetcher(cache, guard=LOOPBACK)
        for label in ("cache on, cold", "cache on, warm"):
            before = server.requests
            wall = await timed(
                lambda: asyncio.gather(*(fetcher.fetch(url, digest) for _ in range(concurrency)))
            )
            rows.append((label, server.requests - before, wall))
        await fetcher.close()
        cache.close()

        per_process = max(1, concurrency // processes)
        context = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        with context.Pool(processes, initializer=warm_worker) as pool:
            await loop.run_in_executor(None, pool.map, abs, range(processes * 4))
            before = server.requests
            start = time.perf_counter()
            pending = pool.starmap_async(
                child_fetch,
                [(str(Path(tmp) / "shared"), url, digest, per_process)] * processes,
            )
            await loop.run_in_executor(None, pending.get, 300)
            wall = time.perf_counter() - start
        label = f"cache on, cold, {processes} procs × {per_process}"
        rows.append((label, server.requests - before, wall))
        for label, downloads, seconds in rows:
            print(f"   {label:<34} {downloads:>9} {seconds * 1000:>9.1f}")


async def hit_versus_download(server: CountingServer, url: str, digest: str, data: bytes) -> None:
    """Section 2: cache hit latency versus a download."""
    parsed = Digest("sha256", digest.removeprefix("sha256:"))
    print(f"\n2. latency, {len(data) / MB:.1f} MB artifact (median of 15)")
    with tempfile.TemporaryDirectory() as tmp:
        cache = ArtifactCache(Path(tmp) / "cache")
        cached = ArtifactFetcher(cache, guard=LOOPBACK)
        uncached = ArtifactFetcher(None, guard=LOOPBACK)
        await cached.fetch(url, digest)
        download = await median_of(15, lambda: uncached.fetch(url, digest))
        hit_async = await median_of(15, lambda: cached.fetch(url, digest))
        start = time.perf_counter()
        for _ in range(15):
            cache.get(parsed)
        hit_sync = (time.perf_counter() - start) / 15
        extract = await median_of(5, lambda: asyncio.to_thread(extract_tarball, data))
        await cached.close()
        await uncached.close()
        cache.close()
    print(f"   download over loopback (GET + sha256)     {download * 1000:8.2f} ms")
    print(f"   cache hit via fetch() (thread, zstd, sha) {hit_async * 1000:8.2f} ms")
    print(f"   cache hit, ArtifactCache.get() direct    {hit_sync * 1000:8.2f} ms")
    print(f"   hit / download                           {hit_async / download:8.2f}")
    print(f"   (for scale: extracting it                 {extract * 1000:8.2f} ms)")


def zstd_ratio(data: bytes) -> None:
    """Section 3: what zstd saves on stored artifacts."""
    inner = gzip.decompress(data)
    print(f"\n3. zstd level {ZSTD_LEVEL} on a stored artifact")
    for label, payload in (
        ("the .tar.gz (what the cache stores)", data),
        ("the tar inside", inner),
    ):
        compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload)
        start = time.perf_counter()
        zstandard.ZstdDecompressor().decompress(compressed)
        unzstd = time.perf_counter() - start
        print(
            f"   {label:<38} {len(payload):>10} -> {len(compressed):>10} B,"
            f" ratio {len(payload) / len(compressed):5.2f}, decompress {unzstd * 1000:6.1f} ms"
        )
    start = time.perf_counter()
    gzip.decompress(data)
    print(
        f"   (gunzip of the .tar.gz for comparison: {(time.perf_counter() - start) * 1000:.1f} ms)"
    )


def packaging() -> None:
    """Section 4: packaging time for rendered JSON."""
    print("\n4. package_rendered (deterministic tar.gz with the files for kustomize, median of 5)")
    for label, size in (("1 KiB", 1024), ("1 MiB", 1 << 20), ("16 MiB", 16 << 20)):
        full = rendered_json(size)
        # Computed in the evaluator process, not by package_rendered: not timed here.
        files, found = consumer_files_for(json.loads(full))
        content = full[:size]  # cut to the exact size; package_rendered parses nothing
        times = []
        for _ in range(5):
            start = time.perf_counter()
            package = package_rendered(content, files, found.summary())
            times.append(time.perf_counter() - start)
        print(
            f"   {label:>6}: {statistics.median(times) * 1000:8.2f} ms,"
            f" tarball {package.size:>9} B (ratio {len(content) / package.size:5.1f})"
        )


async def main() -> None:
    """Run every section and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()

    data = make_artifact(5 * MB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    server = CountingServer({"a": data})
    await server.start()
    url = f"{server.base}/a"
    try:
        await concurrent_fetches(server, url, digest, args.concurrency, args.processes)
        await hit_versus_download(server, url, digest, data)
    finally:
        await server.stop()
    zstd_ratio(data)
    packaging()


if __name__ == "__main__":
    asyncio.run(main())
