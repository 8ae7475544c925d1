"""OpenTelemetry tracing: per-process SDK set-up, context across processes, source links.

Every jaas process (the leader, each shard worker, each evaluator process)
calls :func:`setup_tracing` once after it has started, never before a fork:
the batch span processor's export thread does not survive one. Configuration
is the standard OpenTelemetry environment, which child processes inherit:

* ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``:
  tracing is on when either is set (and ``OTEL_SDK_DISABLED`` is not
  ``true``, ``OTEL_TRACES_EXPORTER`` not ``none``); off, no SDK is installed
  and every span is OpenTelemetry's non-recording no-op;
* ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``:
  ``grpc`` or ``http/protobuf`` (the specification's default);
* ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SERVICE_NAME``,
  ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*`` as the SDK reads them.

metio/jaas's ``--tracing-endpoint`` (OTLP/gRPC ``host:port``),
``--tracing-insecure`` and ``--tracing-sample-ratio`` are translated into
those variables by :func:`apply_tracing_flags` (``internal/observability``:
ratio ≤ 0 samples nothing, ≥ 1 everything). Unlike the reference the sampler
is parent-based, so the shard that starts a reconcile's trace decides for the
leader and the evaluator process that continue it.

Context travels between processes in message headers (:func:`inject`,
:func:`extract`) as W3C Trace Context (``traceparent``).

Evaluator processes run under a hard address-space limit and never load the
SDK or gRPC: an evaluator records its span as plain data
(:func:`evaluation_span`, in its answer to the leader) and the leader exports
it with the evaluator's own resource (:func:`export_relayed_span`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import uuid
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from jaas import __version__
from jaas.api.reasons import ReasonError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

#: ``service.name`` unless ``OTEL_SERVICE_NAME`` names another.
SERVICE_NAME: Final = "jaas-py"
#: The instrumentation scope of every jaas span.
TRACER_NAME: Final = "jaas"
#: Header key of the W3C Trace Context carrier in jaas process messages.
CONTEXT_KEY: Final = "trace_context"
#: Seconds to wait for the last spans to be exported at shutdown (JaaS: 5 s).
FLUSH_TIMEOUT: Final = 5.0
#: Characters of an error message kept in a span's status description.
STATUS_MESSAGE_CHARS: Final = 500
#: Process kinds, the ``jaas.process.kind`` resource attribute.
PROCESS_KINDS: Final = ("leader", "shard", "evaluator", "render")

_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOLS: Final = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")

_Header = TypeVar("_Header", bound=MutableMapping[str, Any])

tracer = trace.get_tracer(TRACER_NAME)
#: The span processor ``setup_tracing`` installed (exports relayed spans too).
_processor: Any = None


def apply_tracing_flags(
    endpoint: str,
    *,
    insecure: bool,
    sample_ratio: float | None,
    environ: MutableMapping[str, str] = os.environ,
) -> None:
    """Write metio/jaas's ``--tracing-*`` flags into ``environ`` as ``OTEL_*`` variables.

    Args:
        endpoint: OTLP/gRPC ``host:port`` (``""``: leave the environment's
            exporter settings alone).
        insecure: plaintext gRPC instead of TLS with the system roots.
        sample_ratio: fraction of new traces recorded; None leaves
            ``OTEL_TRACES_SAMPLER`` alone. Out of [0, 1] is clamped.
        environ: the environment to write (this process's).

    The leader calls this before it starts any child, so every process of
    the operator reads the same configuration.
    """
    if endpoint:
        scheme = "http" if insecure else "https"
        environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{scheme}://{endpoint}"
        environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "grpc"
        environ["OTEL_EXPORTER_OTLP_TRACES_INSECURE"] = "true" if insecure else "false"
    if sample_ratio is not None:
        if sample_ratio <= 0:
            environ["OTEL_TRACES_SAMPLER"] = "parentbased_always_off"
        elif sample_ratio >= 1:
            environ["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"
        else:
            environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            environ["OTEL_TRACES_SAMPLER_ARG"] = repr(sample_ratio)


def tracing_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``environ`` asks for spans to be exported (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in _ENDPOINTS)


def export_protocol(environ: Mapping[str, str] = os.environ) -> str:
    """The OTLP protocol to export with: ``grpc`` or ``http/protobuf``.

    Raises:
        ValueError: another value (``http/json`` has no Python exporter).
    """
    for name in _PROTOCOLS:
        value = environ.get(name, "").strip()
        if value:
            if value not in ("grpc", "http/protobuf"):
                raise ValueError(f"{name}={value!r}: jaas-py exports grpc or http/protobuf")
            return value
    return "http/protobuf"


def setup_tracing(
    kind: str, *, shard: str = "", environ: Mapping[str, str] = os.environ
) -> TracerProvider | None:
    """Install this process's tracer provider if ``environ`` enables tracing.

    Args:
        kind: one of :data:`PROCESS_KINDS` (resource ``jaas.process.kind``).
        shard: the shard identity of a shard worker (resource ``jaas.shard``).
        environ: the environment to read (this process's).

    Returns:
        The tracer provider installed, or None when tracing is off (the SDK
        is not even imported then).

    Raises:
        ValueError: an unsupported ``OTEL_EXPORTER_OTLP_*PROTOCOL``.
    """
    if not tracing_enabled(environ):
        return None
    protocol = export_protocol(environ)
    # The SDK is imported only when tracing is on: an evaluator process
    # without tracing never loads gRPC.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    attributes: dict[str, str | int] = {
        "service.instance.id": str(uuid.uuid4()),
        "service.version": __version__,
        "process.pid": os.getpid(),
        "jaas.process.kind": kind,
    }
    if shard:
        attributes["jaas.shard"] = shard
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = SERVICE_NAME
    exporter: SpanExporter
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        exporter = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        exporter = HttpExporter()
    global _processor
    provider = TracerProvider(resource=Resource.create(attributes))
    _processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(_processor)
    trace.set_tracer_provider(provider)
    log.debug("tracing: exporting spans over OTLP %s", protocol)
    return provider


def record_failure(span: trace.Span, reason: str, message: str, *, transient: bool) -> None:
    """Mark ``span`` failed with a Ready ``reason``: status Error, ``jaas.reason``, transience."""
    span.set_attribute("jaas.reason", reason)
    span.set_attribute("jaas.transient", transient)
    span.set_status(trace.StatusCode.ERROR, f"{reason}: {message}"[:STATUS_MESSAGE_CHARS])


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    links: Sequence[trace.Link] | None = None,
    context: otel_context.Context | None = None,
    expected: tuple[type[Exception], ...] = (),
) -> Iterator[trace.Span]:
    """Start span ``name`` as the current span; a failure inside sets its status Error.

    A :class:`~jaas.api.reasons.ReasonError` records its Ready reason
    (:func:`record_failure`); another exception its type and message, unless
    it is one of ``expected`` (an answer rather than a failure, such as
    backpressure). All are re-raised, and recorded as an exception event.
    ``context`` is the parent (from :func:`extract`), default the current
    context.
    """
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=dict(attributes) if attributes else None,
        links=links,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except ReasonError as err:
            record_failure(current, err.reason.value, err.message, transient=err.transient)
            raise
        except expected as err:
            current.set_attribute("jaas.outcome", type(err).__name__)
            raise
        except Exception as err:
            current.set_status(
                trace.StatusCode.ERROR, f"{type(err).__name__}: {err}"[:STATUS_MESSAGE_CHARS]
            )
            raise


def shutdown_tracing(provider: TracerProvider | None, timeout: float = FLUSH_TIMEOUT) -> None:
    """Export the spans still queued (waiting at most ``timeout`` seconds), then stop."""
    if provider is None:
        return
    try:
        provider.force_flush(int(timeout * 1000))
        provider.shutdown()
    except Exception as err:  # an exporter failing at exit must not change the exit status
        log.warning("tracing: flushing spans at shutdown failed: %r", err)


def inject(header: _Header) -> _Header:
    """Put the current trace context into a message ``header`` (in place); return it.

    Adds nothing when no span is recording, so messages cost nothing extra
    with tracing off.
    """
    if not trace.get_current_span().get_span_context().is_valid:
        return header
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if carrier:
        header[CONTEXT_KEY] = carrier
    return header


def extract(header: Mapping[str, Any]) -> otel_context.Context | None:
    """The trace context a message ``header`` carries, or None (start a new trace)."""
    carrier = header.get(CONTEXT_KEY)
    if not isinstance(carrier, dict):
        return None
    return propagate.extract({str(k): str(v) for k, v in carrier.items()})


def http_headers() -> dict[str, str]:
    """W3C ``traceparent`` (and ``tracestate``) headers for an outgoing HTTP request."""
    headers: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)
    return headers


def revision_link(kind: str, namespace: str, name: str, revision: str) -> trace.Link:
    """A link that every render caused by one Flux source revision shares.

    A source revision is not a span, so the link points at a span context
    derived from ``kind/namespace/name@revision`` (sha256: trace id from the
    first 16 bytes, span id from the next 8): every reconcile triggered by
    the same Git commit (or OCI digest) carries a link with the same trace
    id, and tracing backends that search by linked trace id find them all.
    The link's attributes name the source and revision.
    """
    digest = hashlib.sha256(f"{kind}/{namespace}/{name}@{revision}".encode()).digest()
    span_context = trace.SpanContext(
        trace_id=int.from_bytes(digest[:16], "big") or 1,
        span_id=int.from_bytes(digest[16:24], "big") or 1,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.Link(
        span_context,
        attributes={
            "flux.source.kind": kind,
            "flux.source.namespace": namespace,
            "flux.source.name": name,
            "flux.source.revision": revision,
        },
    )


def evaluation_span(
    header: Mapping[str, Any],
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, str | int | bool],
    failure: tuple[str, str] | None,
    process: Mapping[str, str | int],
) -> dict[str, Any] | None:
    """A finished span as plain data, for a process that exports none itself.

    Args:
        header: the request that carried the parent context (:func:`inject`).
        name: the span name.
        start_ns: wall-clock start, nanoseconds since the epoch.
        end_ns: wall-clock end, nanoseconds since the epoch.
        attributes: the span's attributes.
        failure: ``(reason, message)`` of a failure, or None.
        process: resource attributes of the recording process
            (``service.instance.id``, ``process.pid``, ``jaas.process.kind``).

    Returns:
        The span for :func:`export_relayed_span`, or None when the request
        carries no sampled context (tracing off, or this trace not sampled).
    """
    context = extract(header)
    parent = trace.get_current_span(context).get_span_context() if context else None
    if parent is None or not parent.is_valid or not parent.trace_flags.sampled:
        return None
    doc: dict[str, Any] = {
        "name": name,
        "trace_id": format(parent.trace_id, "032x"),
        "span_id": format(random.getrandbits(64) or 1, "016x"),
        "parent_span_id": format(parent.span_id, "016x"),
        "start_ns": start_ns,
        "end_ns": end_ns,
        "attributes": dict(attributes),
        "process": dict(process),
    }
    if failure is not None:
        reason, message = failure
        doc["attributes"] = {**doc["attributes"], "jaas.reason": reason, "jaas.transient": False}
        doc["error"] = f"{reason}: {message}"[:STATUS_MESSAGE_CHARS]
    return doc


def export_relayed_span(doc: Mapping[str, Any]) -> None:
    """Export a span :func:`evaluation_span` recorded in another process, as that process's.

    The span keeps its ids, times and attributes; its resource is this
    process's with the recording process's attributes in place of its own.
    Nothing happens when this process does not export spans. A malformed
    span is logged and dropped.
    """
    if _processor is None:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace.status import Status

    provider = trace.get_tracer_provider()
    try:
        trace_id = int(str(doc["trace_id"]), 16)
        flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        span = ReadableSpan(
            name=str(doc["name"]),
            context=trace.SpanContext(trace_id, int(str(doc["span_id"]), 16), False, flags),
            parent=trace.SpanContext(trace_id, int(str(doc["parent_span_id"]), 16), True, flags),
            resource=getattr(provider, "resource", Resource.get_empty()).merge(
                Resource(dict(doc["process"]))
            ),
            attributes=dict(doc["attributes"]),
            kind=trace.SpanKind.INTERNAL,
            status=(
                Status(trace.StatusCode.ERROR, str(doc["error"]))
                if doc.get("error")
                else Status(trace.StatusCode.UNSET)
            ),
            start_time=int(doc["start_ns"]),
            end_time=int(doc["end_ns"]),
            instrumentation_scope=InstrumentationScope(TRACER_NAME),
        )
    except (KeyError, TypeError, ValueError) as err:
        log.warning("tracing: dropped a malformed relayed span: %r", err)
        return
    _processor.on_end(span)


def trace_ids() -> dict[str, str]:
    """``{"trace_id", "span_id"}`` of the current span in hex, or ``{}`` without one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
