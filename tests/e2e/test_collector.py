"""The ``collector`` fixture against the real OpenTelemetry Collector (jaas-otelcol).

A span tree made with the OpenTelemetry Python SDK is exported over OTLP/gRPC
and over OTLP/HTTP (protobuf) to the collector, which writes it as OTLP JSON
with its file exporter; :class:`jaas.testing.collector.Collector` must read back
exactly what was sent: ids, parents, names, kinds, times, attributes, status,
events, links, resource and scope.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from jaas.testing.collector import Collector, CollectorError, Span, SpanLink, locate_collector

SCOPE = "jaas.tests.collector"
#: A fixed start (2026-01-01T00:00:00Z in ns) so that times compare exactly.
T0 = 1_767_225_600_000_000_000
MS = 1_000_000


def _hex(context: trace.SpanContext) -> tuple[str, str]:
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


@dataclass(frozen=True)
class Sent:
    """Ids (lowercase hex) of the spans :func:`_export_tree` made."""

    instance: str
    trace_id: str
    trigger: tuple[str, str]
    reconcile: str
    fetch: str
    evaluate: str
    imports: str


def _export_tree(exporter: SpanExporter, service: str) -> Sent:
    """Make and export, through a TracerProvider of its own, this tree (plus a linked trace).

    trigger (own trace)            <- linked from reconcile
    reconcile SERVER   [0, 100] ms
      fetch CLIENT OK  [10, 30] ms
      evaluate ERROR   [40, 90] ms, exception event
        import         [50, 60] ms
    """
    instance = uuid.uuid4().hex
    resource = Resource.create({"service.name": service, "service.instance.id": instance})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer(SCOPE)
    try:
        trigger = tracer.start_span("trigger", start_time=T0 - 5 * MS)
        trigger.end(end_time=T0 - MS)
        reconcile = tracer.start_span(
            "reconcile",
            kind=trace.SpanKind.SERVER,
            start_time=T0,
            attributes={
                "jaas.snippet": "team-a/app",
                "jaas.generation": 3,
                "jaas.ratio": 0.25,
                "jaas.suspended": False,
                "jaas.files": ["main.jsonnet", "lib.libsonnet"],
                "jaas.sizes": [1, 2, 3],
            },
            links=[trace.Link(trigger.get_span_context(), {"jaas.link": "cause"})],
        )
        in_reconcile = trace.set_span_in_context(reconcile)
        fetch = tracer.start_span(
            "fetch",
            context=in_reconcile,
            kind=trace.SpanKind.CLIENT,
            start_time=T0 + 10 * MS,
            attributes={"url.full": "http://127.0.0.1/a.tar.gz"},
        )
        fetch.set_status(trace.Status(trace.StatusCode.OK))
        fetch.end(end_time=T0 + 30 * MS)
        evaluate = tracer.start_span("evaluate", context=in_reconcile, start_time=T0 + 40 * MS)
        imports = tracer.start_span(
            "import", context=trace.set_span_in_context(evaluate), start_time=T0 + 50 * MS
        )
        imports.end(end_time=T0 + 60 * MS)
        evaluate.record_exception(ValueError("boom"), timestamp=T0 + 85 * MS)
        evaluate.set_status(trace.Status(trace.StatusCode.ERROR, "evaluation failed"))
        evaluate.end(end_time=T0 + 90 * MS)
        reconcile.end(end_time=T0 + 100 * MS)
        assert provider.force_flush(), "the exporter did not flush within its timeout"
    finally:
        provider.shutdown()
    trace_id, reconcile_id = _hex(reconcile.get_span_context())
    return Sent(
        instance=instance,
        trace_id=trace_id,
        trigger=_hex(trigger.get_span_context()),
        reconcile=reconcile_id,
        fetch=_hex(fetch.get_span_context())[1],
        evaluate=_hex(evaluate.get_span_context())[1],
        imports=_hex(imports.get_span_context())[1],
    )


def _exporter(collector: Collector, protocol: str) -> SpanExporter:
    if protocol == "grpc":
        return GrpcSpanExporter(endpoint=collector.grpc_endpoint, insecure=True)
    return HttpSpanExporter(endpoint=collector.http_traces_endpoint)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_span_tree_comes_back_through_the_file_exporter(
    collector: Collector, protocol: str
) -> None:
    service = f"collector-test-{protocol.replace('/', '-')}"
    sent = _export_tree(_exporter(collector, protocol), service)

    def mine(spans: list[Span]) -> list[Span]:
        return [s for s in spans if s.resource.get("service.instance.id") == sent.instance]

    spans = mine(collector.wait_for_spans(lambda spans: len(mine(spans)) >= 5))
    by_name = {s.name: s for s in spans}
    assert sorted(by_name) == ["evaluate", "fetch", "import", "reconcile", "trigger"]
    assert len(spans) == 5

    reconcile, fetch, evaluate = by_name["reconcile"], by_name["fetch"], by_name["evaluate"]
    # Ids are the SDK's, in lowercase hex; the tree's parent links are intact.
    assert (reconcile.trace_id, reconcile.span_id, reconcile.parent_span_id) == (
        sent.trace_id,
        sent.reconcile,
        "",
    )
    assert (fetch.span_id, fetch.parent_span_id) == (sent.fetch, sent.reconcile)
    assert (evaluate.span_id, evaluate.parent_span_id) == (sent.evaluate, sent.reconcile)
    assert (by_name["import"].span_id, by_name["import"].parent_span_id) == (
        sent.imports,
        sent.evaluate,
    )
    assert (by_name["trigger"].trace_id, by_name["trigger"].span_id) == sent.trigger
    assert by_name["trigger"].trace_id != sent.trace_id

    assert [s.name for s in collector.trace(sent.trace_id)] == [
        "reconcile",
        "fetch",
        "evaluate",
        "import",
    ]
    assert [s.name for s in collector.children(reconcile)] == ["fetch", "evaluate"]
    assert [s.name for s in collector.children(evaluate)] == ["import"]
    assert collector.children(fetch) == []

    assert [(s.kind, s.start_ns, s.end_ns) for s in (reconcile, fetch, evaluate)] == [
        ("SERVER", T0, T0 + 100 * MS),
        ("CLIENT", T0 + 10 * MS, T0 + 30 * MS),
        ("INTERNAL", T0 + 40 * MS, T0 + 90 * MS),
    ]
    assert evaluate.duration_ns == 50 * MS
    assert reconcile.attributes == {
        "jaas.snippet": "team-a/app",
        "jaas.generation": 3,
        "jaas.ratio": 0.25,
        "jaas.suspended": False,
        "jaas.files": ["main.jsonnet", "lib.libsonnet"],
        "jaas.sizes": [1, 2, 3],
    }
    assert fetch.attributes == {"url.full": "http://127.0.0.1/a.tar.gz"}

    assert (reconcile.status_code, reconcile.status_message) == ("UNSET", "")
    assert (fetch.status_code, fetch.status_message) == ("OK", "")
    assert (evaluate.status_code, evaluate.status_message) == ("ERROR", "evaluation failed")
    [event] = evaluate.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "boom"
    assert "ValueError: boom" in event.attributes["exception.stacktrace"]

    assert reconcile.links == (SpanLink(*sent.trigger, {"jaas.link": "cause"}),)
    assert fetch.links == ()

    for span in spans:
        assert span.scope == SCOPE
        assert span.resource["service.name"] == service
        assert span.resource["telemetry.sdk.language"] == "python"


def test_wait_for_spans_reports_what_it_saw(collector: Collector) -> None:
    sent = _export_tree(_exporter(collector, "grpc"), "collector-test-timeout")
    collector.wait_for_spans(lambda spans: any(s.span_id == sent.fetch for s in spans))

    with pytest.raises(AssertionError, match="did not receive the expected spans") as failure:
        collector.wait_for_spans(lambda spans: False, timeout=0)
    message = str(failure.value)
    assert f"'fetch' trace={sent.trace_id} span={sent.fetch} parent={sent.reconcile}" in message
    assert "status=ERROR 'evaluation failed' service=collector-test-timeout" in message


def test_missing_binary_names_the_make_target(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTELCOL", str(tmp_path / "absent" / "otelcol"))
    with pytest.raises(CollectorError, match="make otelcol"):
        locate_collector()
    monkeypatch.delenv("OTELCOL")
    monkeypatch.setenv("JAAS_CACHE", str(tmp_path))
    with pytest.raises(CollectorError, match=r"otelcol\.env; run `make otelcol`"):
        locate_collector()
