"""One trace per reconcile, exported to a real OpenTelemetry Collector.

A traced operator (``--tracing-endpoint``, metio/jaas's flag, to the
collector's OTLP/gRPC port) on a control plane of its own, so that no other
operator reconciles its snippets; sources are served by the Flux-style
publisher, which records the ``traceparent`` of every download. The tests read
the spans back from the collector's file exporter and check the tree a real
reconcile leaves across the shard, leader and evaluator processes, the
evaluate span of a timed-out and of a failed evaluation, the link from a
re-render to its source revision, and the trace id in the operator's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client

from jaas.observability.tracing import revision_link
from jaas.operator.kube import KubeClient
from jaas.testing.collector import Collector, Span
from jaas.testing.controlplane import ControlPlane, api_client_from_kubeconfig, default_crd_dirs
from jaas.testing.flux import FluxPublisher, make_tarball
from jaas.testing.operator import OperatorProcess
from tests.e2e.conftest import OPERATOR_ARGS
from tests.e2e.helpers import create_namespace, create_snippet, wait_reason

#: Short batch delay, so spans reach the collector within a test's patience.
TRACING_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
EVALUATION_TIMEOUT = 2.0
#: The stages of a render, each a child span of the reconcile's root.
STAGES = (
    "snippet.resolveSource",
    "snippet.resolveLibraries",
    "snippet.evaluate",
    "snippet.package",
    "snippet.publish",
    "snippet.status",
)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane.start(tmp_path_factory.mktemp("tracing-plane"), default_crd_dirs()) as up:
        yield up


@pytest.fixture(scope="module")
def traced(
    plane: ControlPlane, collector: Collector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        plane.kubeconfig,
        tmp_path_factory.mktemp("traced-operator"),
        evaluation_timeout=EVALUATION_TIMEOUT,
        extra_args=[
            *OPERATOR_ARGS,
            "--tracing-endpoint",
            collector.grpc_endpoint,
            "--tracing-insecure",
            "true",
            "--tracing-sample-ratio",
            "1",
        ],
        env=TRACING_ENV,
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest_asyncio.fixture
async def api(plane: ControlPlane) -> AsyncIterator[client.ApiClient]:
    api = await api_client_from_kubeconfig(plane.kubeconfig)
    yield api
    await api.close()


@pytest_asyncio.fixture
async def flux() -> AsyncIterator[FluxPublisher]:
    async with FluxPublisher() as publisher:
        yield publisher


def roots(spans: list[Span], namespace: str, name: str) -> list[Span]:
    """The ``JsonnetSnippet.Reconcile`` spans of one snippet, in arrival order."""
    return [
        s
        for s in spans
        if s.name == "JsonnetSnippet.Reconcile"
        and s.attributes.get("jaas.namespace") == namespace
        and s.attributes.get("jaas.name") == name
    ]


def only(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"expected one {name} span, got {[s.summary() for s in found]}"
    return found[0]


def wait_for_trace(
    collector: Collector,
    namespace: str,
    name: str,
    root_matches: Callable[[Span], bool],
    complete: Callable[[list[Span]], bool],
) -> tuple[Span, list[Span]]:
    """The first reconcile root of ``namespace/name`` that passes both checks, and its trace.

    ``root_matches`` checks the root span, ``complete`` the spans of its trace
    received so far (the evaluator process exports its own a little later).
    """
    found: list[tuple[Span, list[Span]]] = []

    def ready(spans: list[Span]) -> bool:
        for root in roots(spans, namespace, name):
            if root_matches(root):
                tree = [s for s in spans if s.trace_id == root.trace_id]
                if complete(tree):
                    found.append((root, tree))
                    return True
        return False

    collector.wait_for_spans(ready, timeout=60)
    return found[0]


def log_records(path: Path) -> list[dict[str, Any]]:
    """The JSON log records of an operator's log (other lines skipped)."""
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def has(*names: str) -> Callable[[list[Span]], bool]:
    return lambda tree: all(any(s.name == n for s in tree) for n in names)


async def test_a_reconcile_is_one_trace_across_shard_leader_and_evaluator(
    traced: OperatorProcess, collector: Collector, api: client.ApiClient, flux: FluxPublisher
) -> None:
    admin = KubeClient(api)
    ns = await create_namespace(admin, "traced")
    published = await flux.publish_tarball(
        api,
        "GitRepository",
        ns,
        "repo",
        make_tarball({"main.jsonnet": "{ traced: true }"}),
        "main@sha1:" + "1" * 40,
    )
    await create_snippet(admin, ns, "one", sourceRef={"kind": "GitRepository", "name": "repo"})
    await wait_reason(admin, ns, "one", "Synced")

    root, tree = wait_for_trace(
        collector,
        ns,
        "one",
        lambda r: r.attributes.get("jaas.reason") == "Synced",
        has(*STAGES, "source.fetch", "GET", "evaluator.evaluate", "jsonnet.evaluate"),
    )
    # The root: who, which generation, which shard, why.
    assert root.parent_span_id == ""
    assert root.status_code == "UNSET"
    assert root.attributes["jaas.generation"] == 1
    assert root.attributes["jaas.shard"] in {"shard-0", "shard-1"}
    assert "created" in str(root.attributes["jaas.trigger"]).split(",")
    assert root.resource["service.name"] == "jaas-py"
    assert root.resource["jaas.process.kind"] == "shard"
    assert root.resource["jaas.shard"] == root.attributes["jaas.shard"]
    # Every stage is a child of the root.
    for stage in STAGES:
        assert only(tree, stage).parent_span_id == root.span_id, stage
    # The fetch: a cache miss of the artifact's digest, downloaded by one GET.
    fetch = only(tree, "source.fetch")
    assert fetch.parent_span_id == only(tree, "snippet.resolveSource").span_id
    assert fetch.attributes["jaas.cache.hit"] is False
    assert fetch.attributes["jaas.artifact.digest"] == published.digest
    assert fetch.attributes["jaas.artifact.bytes"] == published.size
    get = only(tree, "GET")
    assert get.parent_span_id == fetch.span_id
    assert get.kind == "CLIENT"
    assert get.attributes["http.response.status_code"] == 200
    # The artifact server saw the GET span as the parent of its request.
    (traceparent,) = flux.traceparents[published.path]
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert (version, trace_id, parent_id) == ("00", root.trace_id, get.span_id)
    assert int(flags, 16) & 0x01  # sampled
    # The evaluation: supervised by the leader, run by an evaluator process.
    supervised = only(tree, "evaluator.evaluate")
    assert supervised.parent_span_id == only(tree, "snippet.evaluate").span_id
    assert supervised.resource["jaas.process.kind"] == "leader"
    assert supervised.kind == "SERVER"
    assert isinstance(supervised.attributes["jaas.evaluator.pid"], int)
    assert "jaas.evaluator.killed" not in supervised.attributes
    run = only(tree, "jsonnet.evaluate")
    assert run.parent_span_id == supervised.span_id
    assert run.resource["jaas.process.kind"] == "evaluator"
    assert run.resource["process.pid"] == supervised.attributes["jaas.evaluator.pid"]
    assert run.attributes["jaas.eval.renderedBytes"] == len(b'{\n   "traced": true\n}\n')
    # Three processes, three service instances.
    kinds = {s.resource["service.instance.id"]: s.resource["jaas.process.kind"] for s in tree}
    assert sorted(kinds.values()) == ["evaluator", "leader", "shard"]

    # The reconcile's log line carries its trace and span ids.
    lines = log_records(traced.log_path)
    rendered = [
        line
        for line in lines
        if line.get("namespace") == ns and line.get("name") == "one" and "rendered" in line["msg"]
    ]
    assert rendered, "no 'rendered' log line for the snippet"
    assert rendered[-1]["trace_id"] == root.trace_id
    assert rendered[-1]["span_id"] == root.span_id
    assert rendered[-1]["shard"] == root.attributes["jaas.shard"]
    assert rendered[-1]["level"] == "info"


async def test_a_timed_out_evaluation_has_an_evaluate_span_with_its_kill(
    traced: OperatorProcess, collector: Collector, api: client.ApiClient
) -> None:
    admin = KubeClient(api)
    ns = await create_namespace(admin, "traced-timeout")
    endless = "std.foldl(function(a, b) a + b, std.range(1, 1000000000), 0)"
    await create_snippet(admin, ns, "endless", files={"main.jsonnet": endless})
    await wait_reason(admin, ns, "endless", "EvaluationTimeout", timeout=60)

    root, tree = wait_for_trace(
        collector,
        ns,
        "endless",
        lambda r: r.attributes.get("jaas.reason") == "EvaluationTimeout",
        has("evaluator.evaluate", "snippet.status"),
    )
    assert root.status_code == "ERROR"
    assert root.status_message.startswith("EvaluationTimeout: evaluation exceeded 2s")
    supervised = only(tree, "evaluator.evaluate")
    assert supervised.status_code == "ERROR"
    assert supervised.status_message.startswith("EvaluationTimeout: ")
    assert supervised.attributes["jaas.evaluator.killed"] is True
    assert supervised.attributes["jaas.evaluator.killCause"] == "timeout"
    assert supervised.attributes["jaas.evaluator.exit"] == "SIGKILL"
    assert float(supervised.attributes["jaas.eval.cpuSeconds"]) > EVALUATION_TIMEOUT
    assert int(supervised.attributes["jaas.evaluator.peakRssBytes"]) > 0
    # The evaluator process was killed: it never exported a span of its own.
    assert not [s for s in tree if s.name == "jsonnet.evaluate"]
    assert only(tree, "snippet.evaluate").status_code == "ERROR"


async def test_a_failed_evaluation_sets_error_status_with_the_ready_reason(
    traced: OperatorProcess, collector: Collector, api: client.ApiClient
) -> None:
    admin = KubeClient(api)
    ns = await create_namespace(admin, "traced-failure")
    program = "{\n  a: 1,\n  b: error 'boom',\n}\n"
    await create_snippet(admin, ns, "broken", files={"main.jsonnet": program})
    await wait_reason(admin, ns, "broken", "EvaluationFailed")

    root, tree = wait_for_trace(
        collector,
        ns,
        "broken",
        lambda r: r.attributes.get("jaas.reason") == "EvaluationFailed",
        has("jsonnet.evaluate", "snippet.status"),
    )
    for span in (
        root,
        only(tree, "snippet.evaluate"),
        only(tree, "evaluator.evaluate"),
        only(tree, "jsonnet.evaluate"),
    ):
        assert span.status_code == "ERROR", span.summary()
        assert span.status_message.startswith("EvaluationFailed: "), span.summary()
        assert span.attributes["jaas.reason"] == "EvaluationFailed"
    assert "main.jsonnet:3:" in only(tree, "jsonnet.evaluate").status_message
    assert not [s for s in tree if s.name in ("snippet.package", "snippet.publish")]


async def test_renders_caused_by_one_source_revision_link_to_it(
    traced: OperatorProcess, collector: Collector, api: client.ApiClient, flux: FluxPublisher
) -> None:
    admin = KubeClient(api)
    ns = await create_namespace(admin, "traced-revision")

    async def publish(value: int, revision: str) -> None:
        await flux.publish_tarball(
            api,
            "GitRepository",
            ns,
            "shared",
            make_tarball({"main.jsonnet": f"{{ v: {value} }}"}),
            revision,
        )

    await publish(1, "main@sha1:" + "a" * 40)
    for name in ("left", "right"):
        await create_snippet(admin, ns, name, sourceRef={"kind": "GitRepository", "name": "shared"})
    for name in ("left", "right"):
        await wait_reason(admin, ns, name, "Synced")
    commit = "main@sha1:" + "b" * 40
    await publish(2, commit)

    expected = revision_link("GitRepository", ns, "shared", commit).context
    linked = []
    for name in ("left", "right"):
        root, _ = wait_for_trace(
            collector,
            ns,
            name,
            lambda r: r.attributes.get("jaas.source.revision") == commit,
            has("snippet.status"),
        )
        assert "source" in str(root.attributes["jaas.trigger"]).split(",")
        (link,) = root.links
        assert link.attributes["flux.source.revision"] == commit
        assert link.attributes["flux.source.kind"] == "GitRepository"
        assert link.attributes["flux.source.name"] == "shared"
        linked.append(link)
    # Both renders of the commit point at one span context: found together.
    assert {(link.trace_id, link.span_id) for link in linked} == {
        (format(expected.trace_id, "032x"), format(expected.span_id, "016x"))
    }
    assert linked[0].trace_id != ""


@pytest.mark.parametrize(
    ("protocol", "endpoint"),
    [("grpc", "grpc_endpoint"), ("http/protobuf", "http_endpoint")],
)
def test_each_process_exports_over_the_protocol_the_environment_names(
    collector: Collector, tmp_path: Path, protocol: str, endpoint: str
) -> None:
    # The standard OTEL_* variables alone configure it (no --tracing-endpoint).
    address = getattr(collector, endpoint)
    url = address if address.startswith("http") else f"http://{address}"
    marker = f"probe-{protocol.replace('/', '-')}"
    program = (
        "from jaas.observability import tracing\n"
        "provider = tracing.setup_tracing('shard', shard='shard-9')\n"
        f"with tracing.span({marker!r}):\n"
        "    pass\n"
        "tracing.shutdown_tracing(provider)\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "OTEL_EXPORTER_OTLP_ENDPOINT": url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_SERVICE_NAME": "jaas-probe",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=e2e",
    }
    subprocess.run([sys.executable, "-c", program], env=env, check=True, cwd=tmp_path)
    spans = collector.wait_for_spans(lambda spans: any(s.name == marker for s in spans))
    (probe,) = [s for s in spans if s.name == marker]
    assert probe.resource["service.name"] == "jaas-probe"
    assert probe.resource["deployment.environment"] == "e2e"
    assert probe.resource["jaas.process.kind"] == "shard"
    assert probe.resource["jaas.shard"] == "shard-9"
    assert probe.scope == "jaas"


def test_sampling_nothing_exports_nothing(collector: Collector, tmp_path: Path) -> None:
    program = (
        "from jaas.observability import tracing\n"
        "import os\n"
        "tracing.apply_tracing_flags(os.environ['ENDPOINT'], insecure=True, sample_ratio=0.0)\n"
        "provider = tracing.setup_tracing('leader')\n"
        "with tracing.span('unsampled'):\n"
        "    pass\n"
        "with tracing.span('flushed'):\n"
        "    pass\n"
        "tracing.shutdown_tracing(provider)\n"
        "tracing.apply_tracing_flags(os.environ['ENDPOINT'], insecure=True, sample_ratio=1.0)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "ENDPOINT": collector.grpc_endpoint}
    subprocess.run([sys.executable, "-c", program], env=env, check=True, cwd=tmp_path)
    # A second process with everything sampled: once its span arrived, the
    # first process's spans would have too.
    sampled = program.replace("sample_ratio=0.0", "sample_ratio=1.0").replace(
        "'flushed'", "'sampled-marker'"
    )
    subprocess.run([sys.executable, "-c", sampled], env=env, check=True, cwd=tmp_path)
    spans = collector.wait_for_spans(lambda spans: any(s.name == "sampled-marker" for s in spans))
    names = [s.name for s in spans]
    assert "flushed" not in names
    assert names.count("unsampled") == 1  # the sampled process's, not the first one's


def management(proc: OperatorProcess, path: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of ``GET <management port><path>``."""
    url = f"http://127.0.0.1:{proc.management_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_sigterm_turns_unready_finishes_in_flight_reconciles_and_flushes_spans(
    traced: OperatorProcess, collector: Collector, api: client.ApiClient
) -> None:
    # Runs last in this module: it stops the traced operator.
    for path in ("/livez", "/readyz", "/startupz", "/live", "/ready", "/start", "/healthz"):
        assert management(traced, path) == (200, {"status": "ok"}), path
    admin = KubeClient(api)
    ns = await create_namespace(admin, "traced-shutdown")
    # About a second of CPU: in flight when SIGTERM arrives, within the 2 s timeout.
    slow = "std.foldl(function(a, b) a + b, std.range(1, 4000000), 0)"
    await create_snippet(admin, ns, "in-flight", files={"main.jsonnet": slow})
    deadline = time.monotonic() + 30
    while not [v for v in in_flight(traced.metrics()) if v > 0]:
        assert time.monotonic() < deadline, "the evaluation never started"
        await asyncio.sleep(0.02)
    assert traced.process is not None
    leader = traced.process
    leader.send_signal(signal.SIGTERM)
    # Readiness turns false at once; the process is still alive.
    assert management(traced, "/readyz") == (503, {"status": "not_ready"})
    assert management(traced, "/livez") == (200, {"status": "ok"})
    code = await asyncio.to_thread(leader.wait, 60)
    assert code == 0
    # The reconcile that was in flight finished before the shard exited ...
    await wait_reason(admin, ns, "in-flight", "Synced", timeout=5)
    # ... and its spans, from all three processes, were exported on the way out.
    _, tree = wait_for_trace(
        collector,
        ns,
        "in-flight",
        lambda r: r.attributes.get("jaas.reason") == "Synced",
        has("snippet.status", "evaluator.evaluate", "jsonnet.evaluate"),
    )
    assert {s.resource["jaas.process.kind"] for s in tree} == {"shard", "leader", "evaluator"}


def in_flight(exposition: str) -> list[float]:
    """``jaas_eval_in_flight`` sample values of a Prometheus exposition."""
    return [
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("jaas_eval_in_flight")
    ]
