"""Hostile inputs against the session operator: each ends in its reason and harms no neighbour.

Every server here is on loopback (the suite runs in a loopback-only network
namespace). Latencies are printed at the end of the session, never asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from jaas.operator.kube import KubeClient
from jaas.testing.flux import FluxPublisher, make_tarball
from jaas.testing.operator import OperatorProcess
from tests.e2e.conftest import FIGURES
from tests.e2e.helpers import (
    create_namespace,
    create_snippet,
    download,
    ready,
    untar,
    wait_reason,
)

pytestmark = pytest.mark.usefixtures("operator")


class TricklingServer:
    """Answers every GET with 200 and then one byte per second, forever."""

    def __init__(self) -> None:
        self.requests = 0
        self.requested = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.requested.set()
        response = web.StreamResponse(headers={"Content-Type": "application/gzip"})
        await response.prepare(request)
        while True:
            await response.write(b"\x1f")
            await asyncio.sleep(1.0)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._trickle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest_asyncio.fixture
async def trickling() -> AsyncIterator[TricklingServer]:
    server = TricklingServer()
    await server.start()
    yield server
    await server.close()


async def test_a_source_with_another_tenants_digest_on_a_slow_server_harms_only_itself(
    kube_client: KubeClient,
    kube: ApiClient,
    flux: FluxPublisher,
    trickling: TricklingServer,
    operator: OperatorProcess,
) -> None:
    client = kube_client
    attacker = await create_namespace(client, "hostile-attacker")
    victim = await create_namespace(client, "hostile-victim")
    tarball = make_tarball({"main.jsonnet": "{ owner: 'victim' }"})
    # The attacker's source claims the victim's digest, but its URL (with
    # credentials and a token in the query) leads to a server that never finishes.
    published = await flux.publish_tarball(kube, "Bucket", attacker, "stolen", tarball, "r1")
    slow = trickling.url.replace("http://", "http://admin:S3cr3t@") + "/slow?token=T0K3N"
    flux.put_redirect(published.path, slow)
    await create_snippet(client, attacker, "a", sourceRef={"kind": "Bucket", "name": "stolen"})
    await asyncio.wait_for(trickling.requested.wait(), 30)  # its download is under way
    await flux.publish_tarball(kube, "Bucket", victim, "own", tarball, "r1")
    started = time.monotonic()
    await create_snippet(client, victim, "v", sourceRef={"kind": "Bucket", "name": "own"})
    synced = await wait_reason(client, victim, "v", "Synced", timeout=60)
    latency = time.monotonic() - started
    FIGURES.append(
        f"hostile: victim create→Ready beside a same-digest source on a trickling server: "
        f"{latency:.2f} s"
    )
    rendered = untar(await download(synced["status"]["artifactURL"]))["rendered.json"]
    assert rendered == b'{\n   "owner": "victim"\n}\n'
    assert ready(synced)["status"] == "True"
    # The victim's own server was asked for the artifact.
    assert flux.requests[f"bucket/{victim}/own/{published.path.rsplit('/', 1)[1]}"] >= 1


async def test_a_long_name_and_a_long_multibyte_error_still_get_their_warning_event(
    kube_client: KubeClient,
) -> None:
    client = kube_client
    ns = await create_namespace(client, "hostile-events")
    name = "n" * 200 + "-" + "x" * 39  # 240 characters
    program = "error std.join('', std.makeArray(2000, function(i) '✓'))"
    await create_snippet(client, ns, name, files={"main.jsonnet": program})
    failed = await wait_reason(client, ns, name, "EvaluationFailed")
    assert "✓✓✓" in ready(failed)["message"]

    async def warning() -> dict[str, object] | None:
        events = await client.get(f"/apis/events.k8s.io/v1/namespaces/{ns}/events")
        for event in events["items"]:
            if event["regarding"]["name"] == name and event["reason"] == "EvaluationFailed":
                return dict(event)
        return None

    deadline = time.monotonic() + 30
    event = await warning()
    while event is None and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        event = await warning()
    assert event is not None, "no EvaluationFailed event was recorded"
    assert event["type"] == "Warning"
    note = str(event["note"])
    assert "✓" in note
    assert len(note.encode()) <= 1024
