"""Every process's metrics in one scrape of the session's two-shard operator.

Snippets in namespaces that hash to each of the two shards (one from a
Flux-style source artifact, so the fetch path is exercised), then one scrape
of ``--metrics-bind-address`` must hold per-shard series of both shards and
the leader's evaluator, cache and artifact server series.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
from kubernetes_asyncio import client

from jaas.operator.kube import KubeClient
from jaas.shards.assignment import HashRing
from jaas.testing.flux import FluxPublisher, make_tarball
from jaas.testing.operator import OperatorProcess
from tests.e2e.conftest import namespace_name
from tests.e2e.helpers import create_namespace, create_snippet, get_external_artifact, wait_reason

Sample = tuple[str, dict[str, str], float]


def samples(exposition: str) -> list[Sample]:
    """``(name, labels, value)`` of every sample line of a text exposition."""
    out: list[Sample] = []
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        out.append((name, dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
    return out


def values(scraped: list[Sample], name: str, **labels: str) -> list[float]:
    """Values of the samples of ``name`` whose labels include ``labels``."""
    return [
        value
        for sample, found, value in scraped
        if sample == name and all(found.get(k) == v for k, v in labels.items())
    ]


def namespaces_for_each_shard(shards: list[str]) -> dict[str, str]:
    """A fresh namespace name owned by each shard (by the operator's own hash ring)."""
    ring = HashRing(shards)
    chosen: dict[str, str] = {}
    while len(chosen) < len(shards):
        name = namespace_name("metrics")
        chosen.setdefault(ring.owner(name), name)
    return chosen


async def test_one_scrape_has_per_shard_series_for_both_shards(
    operator: OperatorProcess, kube: client.ApiClient, flux: FluxPublisher
) -> None:
    admin = KubeClient(kube)
    shards = sorted(s["name"] for s in operator.shards())
    assert shards == ["shard-0", "shard-1"]
    owned = namespaces_for_each_shard(shards)
    for shard, ns in owned.items():
        await create_namespace(admin, ns)
        await flux.publish_tarball(
            kube,
            "GitRepository",
            ns,
            "repo",
            make_tarball({"main.jsonnet": f"{{ shard: '{shard}' }}"}),
            "main@sha1:" + "c" * 40,
        )
        await create_snippet(
            admin, ns, "fetched", sourceRef={"kind": "GitRepository", "name": "repo"}
        )
        await create_snippet(admin, ns, "inline", files={"main.jsonnet": "{ inline: true }"})
    for ns in owned.values():
        for name in ("fetched", "inline"):
            await wait_reason(admin, ns, name, "Synced")
    # The artifact server: one download of a published artifact, one miss.
    artifact = await get_external_artifact(admin, owned["shard-0"], "inline")
    missing = f"{operator.base_url}/{owned['shard-0']}/nothing/none.tar.gz"
    async with aiohttp.ClientSession() as session:
        async with session.get(artifact["status"]["artifact"]["url"]) as found:
            assert found.status == 200
        async with session.get(missing) as absent:
            assert absent.status == 404

    def complete(scraped: list[Sample]) -> list[str]:
        """What is still missing from ``scraped`` (the gauges update every 5 s)."""
        wanted: list[str] = []
        for shard, ns in owned.items():
            per_shard = {
                "jaas_workqueue_depth": {},
                "jaas_workqueue_oldest_item_age_seconds": {},
                "jaas_shard_restarts_total": {},
                "jaas_snippet_rendered_bytes_count": {},
                "jaas_reconcile_duration_seconds_count": {"reason": "Synced"},
                "jaas_snippet_reconcile_total": {"namespace": ns, "reason": "Synced"},
                "jaas_kube_api_requests_total": {"verb": "PATCH", "code": "200"},
                "jaas_reconcile_stage_duration_seconds_count": {"stage": "evaluate"},
            }
            for name, labels in per_shard.items():
                if not values(scraped, name, shard=shard, **labels):
                    wanted.append(f"{name}{{shard={shard}, {labels}}}")
            for stage in ("resolveSource", "fetch", "package", "publish", "status"):
                name = "jaas_reconcile_stage_duration_seconds_count"
                if not values(scraped, name, shard=shard, stage=stage):
                    wanted.append(f"{name}{{shard={shard}, stage={stage}}}")
            for name in ("jaas_shard_owned_namespaces", "jaas_shard_owned_snippets"):
                if not any(v >= 1 for v in values(scraped, name, shard=shard)):
                    wanted.append(f"{name}{{shard={shard}}} >= 1")
        for name, labels in {
            "jaas_evaluations_total": {"result": "ok"},
            "jaas_eval_max_concurrent": {},
            "jaas_eval_in_flight": {},
            "jaas_source_downloads_total": {"result": "ok"},
            "jaas_source_download_bytes_total": {},
            "jaas_artifact_cache_lookups_total": {"result": "miss"},
            "jaas_source_fetch_total": {"result": "ok"},
            "jaas_artifact_server_requests_total": {"code": "200"},
        }.items():
            if not values(scraped, name, **labels):
                wanted.append(f"{name}{labels}")
        if not values(scraped, "jaas_artifact_server_requests_total", code="404"):
            wanted.append("jaas_artifact_server_requests_total{code=404}")
        return wanted

    deadline = time.monotonic() + 30
    scraped = samples(operator.metrics())
    while complete(scraped) and time.monotonic() < deadline:
        await asyncio.sleep(1)
        scraped = samples(operator.metrics())
    assert complete(scraped) == []
    # The leader's pool: two evaluators, none busy once everything is Ready.
    assert values(scraped, "jaas_eval_max_concurrent") == [operator.evaluators]
    assert sum(values(scraped, "jaas_source_download_bytes_total")) > 0
