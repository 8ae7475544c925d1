"""The artifact HTTP server on a real aiohttp server: GET/HEAD, Range, ETag, 404s and 405s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from jaas.storage.local import LocalStore
from jaas.storage.package import Package, package_rendered
from jaas.storage.server import add_artifact_routes


@dataclass
class Served:
    base: str
    port: int
    root: Path
    package: Package
    rel: str
    session: aiohttp.ClientSession


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    root = tmp_path / "store"
    store = LocalStore(root)
    package = package_rendered(b'{\n   "served": true\n}\n' * 50, {}, "")
    rel = store.put("team-a", "snip", package).path
    (root / "team-a" / "snip" / "notes.txt").write_text("not an artifact")
    (root / "team-a" / "snip" / ".hidden.tar.gz").write_bytes(package.data)
    (root / "team-a" / "snip" / "dir.tar.gz").mkdir()
    outside = tmp_path / "secret.tar.gz"
    outside.write_bytes(b"outside the root")
    (root / "team-a" / "snip" / "escape.tar.gz").symlink_to(outside)
    (root / "team-a" / "snip" / "alias.tar.gz").symlink_to(package.file_name)

    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="jaas_up 1\n")

    app.router.add_get("/metrics", metrics)
    add_artifact_routes(app, root)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield Served(f"http://127.0.0.1:{port}", port, root, package, rel, session)
    await runner.cleanup()


async def raw_status(port: int, method: str, target: str) -> int:
    """Send a request line exactly as given (no client-side normalisation); return the status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


async def test_get(served: Served) -> None:
    async with served.session.get(f"{served.base}/{served.rel}") as response:
        body = await response.read()
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/gzip"
        assert "Content-Encoding" not in response.headers
        assert response.headers["ETag"]
        assert response.headers["Accept-Ranges"] == "bytes"
    assert body == served.package.data


async def test_get_with_accept_encoding_still_sends_the_file(served: Served) -> None:
    headers = {"Accept-Encoding": "gzip, br"}
    async with served.session.get(f"{served.base}/{served.rel}", headers=headers) as response:
        assert response.status == 200
        assert "Content-Encoding" not in response.headers
        assert await response.read() == served.package.data


async def test_head(served: Served) -> None:
    async with served.session.head(f"{served.base}/{served.rel}") as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) == served.package.size
        assert response.headers["Content-Type"] == "application/gzip"
        assert await response.read() == b""


async def test_range(served: Served) -> None:
    headers = {"Range": "bytes=10-19"}
    async with served.session.get(f"{served.base}/{served.rel}", headers=headers) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 10-19/{served.package.size}"
        assert await response.read() == served.package.data[10:20]


async def test_etag_conditional_get(served: Served) -> None:
    url = f"{served.base}/{served.rel}"
    async with served.session.get(url) as response:
        etag = response.headers["ETag"]
    async with served.session.get(url, headers={"If-None-Match": etag}) as response:
        assert response.status == 304
        assert await response.read() == b""
    async with served.session.get(url, headers={"If-None-Match": '"other"'}) as response:
        assert response.status == 200


async def test_symlink_inside_the_root_is_served(served: Served) -> None:
    async with served.session.get(f"{served.base}/team-a/snip/alias.tar.gz") as response:
        assert response.status == 200
        assert await response.read() == served.package.data


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/team-a/",
        "/team-a/snip/",
        "/team-a/snip",
        "/team-a/snip/notes.txt",
        "/team-a/snip/missing.tar.gz",
        "/team-a/snip/.hidden.tar.gz",
        "/team-a/snip/dir.tar.gz",
        "/team-a/snip/escape.tar.gz",
        "/team-a/snip/../snip/{file}",
        "/team-a/../team-a/snip/{file}",
        "/team-a/%2e%2e/snip/{file}",
        "/team-a/%2e%2e/secret.tar.gz",
        "/%2e%2e/%2e%2e/secret.tar.gz",
        "/team-a/snip/%2e%2e",
        "/team-a/%2E%2E/%2e%2e%2fsecret.tar.gz",
        "/team-a/snip/..%2f..%2fsecret.tar.gz",
        "/team-a/snip/%2e%2e%2f%2e%2e%2fsecret.tar.gz",
        "/team-a/snip%2f{file}",
        "/..%2f..%2f..%2fetc/passwd/x.tar.gz",
        "/../secret.tar.gz",
        "/team-a/snip/..\\..\\secret.tar.gz",
        "/a/b/c/{file}",
        "/team-a/snip/{file}.sig",
    ],
)
async def test_not_found(served: Served, target: str) -> None:
    path = target.format(file=served.package.file_name)
    assert await raw_status(served.port, "GET", path) == 404


async def test_traversal_never_reaches_outside(served: Served) -> None:
    # The only file outside the root is secret.tar.gz; no request spelling returns it.
    for target in (
        "/team-a/snip/../../../secret.tar.gz",
        "/team-a/..%2f..%2fsecret.tar.gz",
        "/%2e%2e/%2e%2e/secret.tar.gz",
    ):
        async with served.session.get(served.base + target, allow_redirects=False) as response:
            assert response.status == 404
            assert b"outside the root" not in await response.read()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_not_allowed(served: Served, method: str) -> None:
    assert await raw_status(served.port, method, f"/{served.rel}") == 405


async def test_leader_routes_are_not_shadowed(served: Served) -> None:
    async with served.session.get(f"{served.base}/metrics") as response:
        assert response.status == 200
        assert await response.text() == "jaas_up 1\n"


async def test_deleted_artifact_is_gone(served: Served) -> None:
    LocalStore(served.root).delete("team-a", "snip")
    async with served.session.get(f"{served.base}/{served.rel}") as response:
        assert response.status == 404
