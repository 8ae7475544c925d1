"""Helpers for end-to-end tests of the operator: create snippets, wait for conditions."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from jaas.api.conditions import find_condition
from jaas.api.constants import GROUP, VERSION
from jaas.operator.kube import KubeClient
from jaas.operator.publisher import external_artifact_path
from jaas.testing.gitops import snippet_path
from jaas.testing.tenants import TENANT_ROLE, TENANT_SA, grant_tenant

Obj = dict[str, Any]
__all__ = ["TENANT_ROLE", "TENANT_SA", "grant_tenant", "snippet_path"]


async def create_namespace(client: KubeClient, name: str, *, tenant: bool = True) -> str:
    """Create namespace ``name`` (and, with ``tenant``, its TENANT_SA bound to TENANT_ROLE)."""
    await client.create("/api/v1/namespaces", {"metadata": {"name": name}})
    if tenant:
        await grant_tenant(client, name)
    return name


def snippet(name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "JsonnetSnippet",
        "metadata": {"name": name},
        "spec": spec,
    }


def ready(obj: Obj) -> Obj:
    """The Ready condition of ``obj`` (empty dict if none)."""
    return find_condition((obj.get("status") or {}).get("conditions"), "Ready") or {}


async def create_snippet(client: KubeClient, namespace: str, name: str, **spec: Any) -> Obj:
    body = snippet(name, **spec)
    created: Obj = await client.create(snippet_path(namespace), body)
    return created


async def wait_for(
    client: KubeClient,
    path: str,
    predicate: Callable[[Obj], bool],
    *,
    timeout: float = 60.0,
    what: str = "condition",
) -> Obj:
    """Poll ``path`` until ``predicate`` holds; fail with the last object after ``timeout``."""
    deadline = time.monotonic() + timeout
    obj: Obj = {}
    while time.monotonic() < deadline:
        obj = await client.get(path)
        if predicate(obj):
            return obj
        await asyncio.sleep(0.2)
    raise AssertionError(
        f"timed out waiting for {what} on {path}; last status: {obj.get('status')}"
    )


async def wait_reason(
    client: KubeClient,
    namespace: str,
    name: str,
    reason: str,
    *,
    timeout: float = 60.0,
    generation: int | None = None,
) -> Obj:
    """Wait until the snippet's Ready reason is ``reason`` (for ``generation`` if given)."""

    def check(obj: Obj) -> bool:
        cond = ready(obj)
        observed = (obj.get("status") or {}).get("observedGeneration")
        return cond.get("reason") == reason and (generation is None or observed == generation)

    return await wait_for(
        client, snippet_path(namespace, name), check, timeout=timeout, what=f"Ready reason {reason}"
    )


async def get_external_artifact(client: KubeClient, namespace: str, name: str) -> Obj:
    ea: Obj = await client.get(external_artifact_path(namespace, name))
    return ea


async def download(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, f"GET {url}: {resp.status}"
        return await resp.read()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def untar(data: bytes) -> dict[str, bytes]:
    """Members of a .tar.gz (regular files only) by name."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        for member in tar.getmembers():
            content = tar.extractfile(member)
            assert content is not None, f"{member.name} is not a regular file"
            out[member.name] = content.read()
    return out


class HostileServer:
    """Loopback HTTP answers an attacker controls: status codes, redirects, trickles."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.base = ""
        #: Set once the first request for ``/trickle`` arrived.
        self.requested = asyncio.Event()

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no")

    async def _loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def _to(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["target"])

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        self.requested.set()
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"\x1f")
                await asyncio.sleep(0.5)
        except ConnectionResetError:  # the fetcher gave up on us, as it should
            return response

    async def _lying_length(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 100, headers={"Content-Length": str(70 << 20)})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/status/{code}", self._status)
        app.router.add_get("/loop", self._loop)
        app.router.add_get("/to", self._to)
        app.router.add_get("/trickle", self._trickle)
        app.router.add_get("/trickle/{path:.*}", self._trickle)
        app.router.add_get("/lying-length", self._lying_length)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
