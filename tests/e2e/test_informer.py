"""The informer survives 410 Gone, dropped connections and read time-outs (real apiserver)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from kubernetes_asyncio.client import ApiClient

from jaas.api.constants import GROUP, LIBRARY_PLURAL, VERSION
from jaas.operator.informer import Event, EventType, Informer
from jaas.operator.kube import KubeClient, resource_path
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig
from jaas.testing.proxy import ChaosProxy


def library(name: str) -> dict[str, object]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "JsonnetLibrary",
        "metadata": {"name": name},
        "spec": {"files": {"main.libsonnet": "{}"}},
    }


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def proxy(control_plane: ControlPlane) -> AsyncIterator[ChaosProxy]:
    target = urlsplit(control_plane.server)
    assert target.hostname is not None
    assert target.port is not None
    chaos = await ChaosProxy(target.hostname, target.port).start()
    yield chaos
    await chaos.close()


@pytest_asyncio.fixture
async def proxied_client(
    control_plane: ControlPlane, proxy: ChaosProxy
) -> AsyncIterator[KubeClient]:
    api: ApiClient = await api_client_from_kubeconfig(control_plane.kubeconfig)
    api.configuration.host = f"https://127.0.0.1:{proxy.port}"
    client = KubeClient(api)
    yield client
    await client.close()


async def start_informer(
    client: KubeClient, namespace: str, read_timeout: float = 60.0
) -> tuple[Informer, list[Event], asyncio.Task[None]]:
    events: list[Event] = []
    informer = Informer(
        client,
        resource_path(GROUP, VERSION, LIBRARY_PLURAL),
        events.append,
        accept=lambda obj: obj["metadata"]["namespace"] == namespace,
        read_timeout=read_timeout,
    )
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(informer.synced.wait(), 30)
    await eventually(lambda: informer.stats["watches"] >= 1)
    await asyncio.sleep(0.3)  # let the watch request reach the server
    return informer, events, task


async def compact_etcd(etcd_url: str) -> None:
    """Compact etcd's history up to its current revision (etcd v3 JSON gateway)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{etcd_url}/v3/kv/range", json={"key": "AA=="}) as resp:
            revision = (await resp.json())["header"]["revision"]
        async with session.post(
            f"{etcd_url}/v3/kv/compaction", json={"revision": revision, "physical": True}
        ) as resp:
            assert resp.status == 200, await resp.text()


async def test_expired_resource_version_relists_and_reports_missed_changes(
    control_plane: ControlPlane,
    kube: ApiClient,
    proxied_client: KubeClient,
    proxy: ChaosProxy,
    namespace: str,
) -> None:
    admin = KubeClient(kube)
    collection = resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace)
    await admin.create(collection, library("old"))
    informer, events, task = await start_informer(proxied_client, namespace)
    try:
        assert informer.get(namespace, "old") is not None
        # Compact etcd past every revision: a watch from resourceVersion 1 then
        # answers 410 Gone (the apiserver would otherwise replay it from etcd).
        await compact_etcd(control_plane.etcd_url)
        informer.resource_version = "1"
        proxy.drop()
        await admin.delete(resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace, "old"))
        await admin.create(collection, library("new"))
        await eventually(lambda: informer.get(namespace, "new") is not None)
        await eventually(lambda: informer.get(namespace, "old") is None)
        assert informer.stats["expired"] >= 1, (informer.stats, proxy.connections)
        assert informer.stats["lists"] >= 2
        assert (EventType.DELETED, (namespace, "old")) in [(e.type, e.key) for e in events]
    finally:
        task.cancel()


async def test_dropped_connections_resume_from_the_last_resource_version(
    kube: ApiClient, proxied_client: KubeClient, proxy: ChaosProxy, namespace: str
) -> None:
    admin = KubeClient(kube)
    collection = resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace)
    informer, events, task = await start_informer(proxied_client, namespace)
    try:
        for i in range(3):
            proxy.drop()
            await admin.create(collection, library(f"lib-{i}"))
            await eventually(lambda i=i: informer.get(namespace, f"lib-{i}") is not None)  # type: ignore[misc]
        assert informer.stats["errors"] >= 1
        assert informer.stats["lists"] == 1  # resumed, never re-listed
        added = [e.key[1] for e in events if e.type is EventType.ADDED]
        assert added == ["lib-0", "lib-1", "lib-2"]
    finally:
        task.cancel()


async def test_a_silent_watch_times_out_and_reconnects(
    kube: ApiClient, proxied_client: KubeClient, proxy: ChaosProxy, namespace: str
) -> None:
    admin = KubeClient(kube)
    collection = resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace)
    informer, _events, task = await start_informer(proxied_client, namespace, read_timeout=1.5)
    try:
        watches = informer.stats["watches"]
        proxy.stall()
        await admin.create(collection, library("during-stall"))
        await eventually(lambda: informer.stats["errors"] >= 1)
        proxy.resume()
        await eventually(lambda: informer.get(namespace, "during-stall") is not None)
        assert informer.stats["watches"] > watches
    finally:
        task.cancel()


@pytest.mark.parametrize("page_size", [2])
async def test_lists_are_paginated(
    kube: ApiClient, proxied_client: KubeClient, namespace: str, page_size: int
) -> None:
    admin = KubeClient(kube)
    collection = resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace)
    for i in range(5):
        await admin.create(collection, library(f"p{i}"))
    informer = Informer(
        proxied_client,
        resource_path(GROUP, VERSION, LIBRARY_PLURAL),
        lambda _e: None,
        accept=lambda obj: obj["metadata"]["namespace"] == namespace,
        page_size=page_size,
    )
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)
        assert sorted(name for _, name in informer.store) == [f"p{i}" for i in range(5)]
    finally:
        task.cancel()


WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.late.example.com
spec:
  group: late.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"""


async def test_a_resource_installed_later_is_watched_once_it_is_served(
    control_plane: ControlPlane, kube: ApiClient, namespace: str, tmp_path: Path
) -> None:
    admin = KubeClient(kube)
    informer = Informer(
        admin,
        "/apis/late.example.com/v1/widgets",
        lambda _e: None,
        accept=lambda obj: obj["metadata"]["namespace"] == namespace,
        max_backoff=1.0,
    )
    task = asyncio.create_task(informer.run())
    try:
        # Not served yet: the informer counts as synced (empty) instead of blocking.
        await asyncio.wait_for(informer.synced.wait(), 30)
        assert informer.store == {}
        (tmp_path / "widget.yaml").write_text(WIDGET_CRD)
        await asyncio.to_thread(control_plane.install_crds, [tmp_path])
        await admin.create(
            f"/apis/late.example.com/v1/namespaces/{namespace}/widgets",
            {"apiVersion": "late.example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        )
        await eventually(lambda: informer.get(namespace, "w") is not None)
    finally:
        task.cancel()
