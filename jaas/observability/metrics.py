"""Prometheus metrics (``jaas_*``) shared by the leader and its shard workers.

prometheus_client's multiprocess mode aggregates the counters of every process
of one operator: the leader points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before any metric exists (``enable_multiprocess``), children inherit
it, and the leader's ``/metrics`` serves the sum. prometheus_client picks its
value class when it is first imported, so ``jaas.observability.multiproc``
(which does not import it) must run first. Without that variable (unit
tests, one-off tools) metrics are ordinary in-process metrics.

Names and labels of the first group follow metio/jaas
``internal/operator/metrics.go``; ``shard`` is ours.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import REGISTRY

from jaas.observability.multiproc import ENV

RECONCILE_TOTAL = Counter(
    "jaas_snippet_reconcile_total",
    "Reconciles of JsonnetSnippets by outcome (status True/False/Unknown; reason: the Ready "
    "reason, or how a reconcile without a Ready write ended) and by the shard.",
    ["namespace", "name", "status", "reason", "shard"],
)
RECONCILE_SECONDS = Histogram(
    "jaas_reconcile_duration_seconds",
    "Duration of one snippet reconcile, by shard and Ready reason.",
    ["shard", "reason"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RENDERED_BYTES = Histogram(
    "jaas_snippet_rendered_bytes",
    "Size of rendered.json on Synced.",
    ["shard"],
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 16 << 20, 64 << 20),
)
WORKQUEUE_DEPTH = Gauge(
    "jaas_workqueue_depth",
    "Snippets waiting for a reconcile in a shard or being reconciled.",
    ["shard"],
    multiprocess_mode="livesum",
)
OWNED_NAMESPACES = Gauge(
    "jaas_shard_owned_namespaces",
    "Namespaces with at least one JsonnetSnippet that a shard owns.",
    ["shard"],
    multiprocess_mode="livesum",
)
EVALUATIONS_TOTAL = Counter(
    "jaas_evaluations_total",
    "Evaluations by the evaluator pool, by result (ok, failed, timeout, busy: refused to queue, "
    "trees_missing: a file tree named by digest was not in the cache, sent again inline).",
    ["result"],
)
RENDER_CACHE_TOTAL = Counter(
    "jaas_render_cache_total",
    "Render cache lookups by result (hit: the render of the same inputs was reused, no "
    "evaluation; miss: evaluated; error: the cache could not be used).",
    ["result"],
)
EVALUATION_SECONDS = Histogram(
    "jaas_evaluation_duration_seconds",
    "Wall-clock time of one evaluation round trip in the pool.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVALUATOR_RESTARTS = Counter(
    "jaas_evaluator_restarts_total",
    "Evaluator processes replaced after a crash, a timeout kill or a memory-cap kill.",
)
SHARD_RESTARTS = Counter(
    "jaas_shard_restarts_total",
    "Shard worker processes restarted by the leader after they exited.",
    ["shard"],
)
SHARD_WEDGED = Counter(
    "jaas_shard_wedged_total",
    "Shard worker processes the leader killed because they stopped making progress "
    "(no heartbeat, a stopped watch or a reconcile stuck far past every bound).",
    ["shard"],
)
STAGE_SECONDS = Histogram(
    "jaas_reconcile_stage_duration_seconds",
    "Duration of one stage of a snippet reconcile (resolveSource, fetch, resolveLibraries, "
    "evaluate, package, publish, status), by shard.",
    ["shard", "stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WORKQUEUE_OLDEST_AGE = Gauge(
    "jaas_workqueue_oldest_item_age_seconds",
    "Seconds the snippet that has waited longest in a shard's work queue has been waiting.",
    ["shard"],
    multiprocess_mode="livemax",
)
OWNED_SNIPPETS = Gauge(
    "jaas_shard_owned_snippets",
    "JsonnetSnippets in the namespaces a shard owns.",
    ["shard"],
    multiprocess_mode="livesum",
)
EVAL_IN_FLIGHT = Gauge(
    "jaas_eval_in_flight",
    "Evaluations running in the evaluator pool now (metio/jaas: semaphore slots in use).",
    multiprocess_mode="livesum",
)
EVAL_MAX_CONCURRENT = Gauge(
    "jaas_eval_max_concurrent",
    "Evaluator processes in the pool: the most evaluations that run at once.",
    multiprocess_mode="livesum",
)
EVAL_UNAVAILABLE = Counter(
    "jaas_eval_unavailable_total",
    "Evaluations refused because every evaluator was busy and the wait queue was full "
    "(backpressure: the snippet is requeued).",
)
EVALUATOR_KILLS = Counter(
    "jaas_evaluator_kills_total",
    "Evaluator processes that ended mid-evaluation, by cause (timeout: killed at "
    "--evaluation-timeout; memory: over --evaluation-memory-limit; crash: anything else).",
    ["cause"],
)
ARTIFACT_CACHE_LOOKUPS = Counter(
    "jaas_artifact_cache_lookups_total",
    "Artifact cache lookups by digest, by result (hit, miss).",
    ["result"],
)
ARTIFACT_CACHE_BYTES = Gauge(
    "jaas_artifact_cache_bytes",
    "Bytes the content-addressed artifact cache holds on disk (as last measured).",
    multiprocess_mode="mostrecent",
)
ARTIFACT_CACHE_EVICTIONS = Counter(
    "jaas_artifact_cache_evictions_total",
    "Artifacts evicted from the cache to keep it under its size bound.",
)
SOURCE_DOWNLOADS = Counter(
    "jaas_source_downloads_total",
    "Downloads of Flux source artifacts (cache misses), by result (ok, failed).",
    ["result"],
)
SOURCE_DOWNLOAD_BYTES = Counter(
    "jaas_source_download_bytes_total",
    "Bytes of Flux source artifacts downloaded.",
)
API_REQUESTS = Counter(
    "jaas_kube_api_requests_total",
    "Requests to the Kubernetes API, by shard, verb and HTTP status code ('error': no response).",
    ["shard", "verb", "code"],
)
ARTIFACT_SERVER_REQUESTS = Counter(
    "jaas_artifact_server_requests_total",
    "Requests to the operator's artifact server, by HTTP status code.",
    ["code"],
)
STORAGE_SWEEP_FAILURES = Counter(
    "jaas_storage_sweep_failures_total",
    "Sweeps of abandoned temporary files in the artifact store that failed (metio/jaas).",
)
SOURCE_FETCHES = Counter(
    "jaas_source_fetch_total",
    "Flux source artifact resolutions by result (ok, not_ready, failed).",
    ["result"],
)

TOKEN_MINTS = Counter(
    "jaas_tenant_token_mints_total",
    "TokenRequest tokens minted for tenant ServiceAccounts, by namespace.",
    ["namespace"],
)
TOKEN_MINT_FAILURES = Counter(
    "jaas_tenant_token_mint_failures_total",
    "TokenRequests that failed, by namespace and ServiceAccount.",
    ["namespace", "serviceAccount"],
)
RATE_LIMITED = Counter(
    "jaas_snippet_rate_limited_total",
    "Reconciles deferred by the per-snippet re-render rate limit.",
    ["namespace", "name"],
)
FORCE_DROPS = Counter(
    "jaas_snippet_force_drop_total",
    "Finalizers dropped before the withdraw finished, by why.",
    ["namespace", "name", "reason"],
)


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a dead child (``livesum`` semantics)."""
    if os.environ.get(ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def exposition() -> bytes:
    """The Prometheus text exposition of every process of this operator."""
    if os.environ.get(ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
