"""Tracing configuration, context propagation and span status, without a collector.

Spans are recorded by an in-memory exporter on a provider of the test's own
(the global provider is left alone: it can be set once per process).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jaas.api.reasons import Reason, ReasonError
from jaas.evaluator.request import EvaluatorBusy
from jaas.observability import tracing


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans of ``tracing.span`` recorded in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("jaas"))
    yield exporter
    provider.shutdown()


def test_the_reference_flags_become_the_standard_environment() -> None:
    env: dict[str, str] = {}
    tracing.apply_tracing_flags("collector:4317", insecure=True, sample_ratio=0.25, environ=env)
    assert env == {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    secure: dict[str, str] = {}
    tracing.apply_tracing_flags("c:4317", insecure=False, sample_ratio=None, environ=secure)
    assert secure["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "https://c:4317"
    assert "OTEL_TRACES_SAMPLER" not in secure
    for ratio, sampler in ((0.0, "parentbased_always_off"), (1.0, "parentbased_always_on")):
        sampled: dict[str, str] = {}
        tracing.apply_tracing_flags("", insecure=False, sample_ratio=ratio, environ=sampled)
        assert sampled == {"OTEL_TRACES_SAMPLER": sampler}


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_off_unless_an_endpoint_is_configured(
    env: dict[str, str], enabled: bool
) -> None:
    assert tracing.tracing_enabled(env) is enabled
    if not enabled:
        assert tracing.setup_tracing("leader", environ=env) is None


def test_the_protocol_follows_the_specification() -> None:
    assert tracing.export_protocol({}) == "http/protobuf"
    assert tracing.export_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    both = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert tracing.export_protocol(both) == "http/protobuf"
    with pytest.raises(ValueError, match="http/json"):
        tracing.export_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_context_travels_in_a_header_and_continues_the_trace(
    exported: InMemorySpanExporter,
) -> None:
    assert tracing.inject({"type": "evaluate"}) == {"type": "evaluate"}  # nothing current
    with tracing.span("sender") as sender:
        header: dict[str, Any] = tracing.inject({"type": "evaluate"})
    assert set(header) == {"type", tracing.CONTEXT_KEY}
    assert header[tracing.CONTEXT_KEY]["traceparent"].startswith("00-")
    with tracing.span("receiver", context=tracing.extract(header)) as receiver:
        pass
    assert receiver.get_span_context().trace_id == sender.get_span_context().trace_id
    (_, received) = exported.get_finished_spans()
    assert received.parent is not None
    assert received.parent.span_id == sender.get_span_context().span_id
    assert tracing.extract({"type": "evaluate"}) is None


def test_a_failure_sets_error_status_with_the_ready_reason(
    exported: InMemorySpanExporter,
) -> None:
    with (
        pytest.raises(ReasonError),
        tracing.span("snippet.evaluate"),
    ):
        raise ReasonError(Reason.EVALUATION_FAILED, "main.jsonnet:3:6 boom")
    with pytest.raises(OSError, match="disk full"), tracing.span("snippet.publish"):
        raise OSError("disk full")
    with (
        pytest.raises(EvaluatorBusy),
        tracing.span("evaluator.evaluate", expected=(EvaluatorBusy,)),
    ):
        raise EvaluatorBusy("all busy")
    failed, broken, busy = exported.get_finished_spans()
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert failed.status.description == "EvaluationFailed: main.jsonnet:3:6 boom"
    assert failed.attributes is not None
    assert failed.attributes["jaas.reason"] == "EvaluationFailed"
    assert failed.attributes["jaas.transient"] is False
    assert broken.status.status_code is trace.StatusCode.ERROR
    assert broken.status.description == "OSError: disk full"
    assert busy.status.status_code is trace.StatusCode.UNSET
    assert busy.attributes is not None
    assert busy.attributes["jaas.outcome"] == "EvaluatorBusy"


def test_every_render_of_one_revision_links_to_the_same_context() -> None:
    one = tracing.revision_link("GitRepository", "ns", "repo", "main@sha1:1")
    again = tracing.revision_link("GitRepository", "ns", "repo", "main@sha1:1")
    other = tracing.revision_link("GitRepository", "ns", "repo", "main@sha1:2")
    assert one.context == again.context
    assert one.context.trace_id != other.context.trace_id
    assert one.context.is_valid
    assert dict(one.attributes or {}) == {
        "flux.source.kind": "GitRepository",
        "flux.source.namespace": "ns",
        "flux.source.name": "repo",
        "flux.source.revision": "main@sha1:1",
    }


def test_trace_ids_are_empty_outside_a_span() -> None:
    token = otel_context.attach(otel_context.Context())
    try:
        assert tracing.trace_ids() == {}
        assert tracing.http_headers() == {}
    finally:
        otel_context.detach(token)


def test_an_evaluator_span_travels_as_data_and_is_exported_as_the_evaluators(
    exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    process: dict[str, str | int] = {
        "service.instance.id": "e-1",
        "process.pid": 4242,
        "jaas.process.kind": "evaluator",
    }
    assert tracing.evaluation_span({}, "jsonnet.evaluate", 1, 2, {}, None, process) is None
    with tracing.span("evaluator.evaluate") as parent:
        header: dict[str, Any] = tracing.inject({"type": "evaluate"})
    doc = tracing.evaluation_span(
        header,
        "jsonnet.evaluate",
        1_000,
        2_000,
        {"jaas.entryFile": "main.jsonnet"},
        ("EvaluationFailed", "main.jsonnet:1:1 boom"),
        process,
    )
    assert doc is not None
    assert doc["trace_id"] == format(parent.get_span_context().trace_id, "032x")
    assert doc["parent_span_id"] == format(parent.get_span_context().span_id, "016x")
    relay = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "_processor", SimpleSpanProcessor(relay))
    tracing.export_relayed_span(doc)
    tracing.export_relayed_span({"name": "broken"})  # malformed: dropped, not raised
    (span,) = relay.get_finished_spans()
    assert span.name == "jsonnet.evaluate"
    assert format(span.context.span_id, "016x") == doc["span_id"]
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert (span.start_time, span.end_time) == (1_000, 2_000)
    assert span.resource.attributes["jaas.process.kind"] == "evaluator"
    assert span.resource.attributes["process.pid"] == 4242
    assert span.status.status_code is trace.StatusCode.ERROR
    assert span.status.description == "EvaluationFailed: main.jsonnet:1:1 boom"
    assert span.attributes is not None
    assert span.attributes["jaas.reason"] == "EvaluationFailed"
