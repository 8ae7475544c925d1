"""Size of the reconcile traces in a collector's OTLP JSON output, in spans and bytes.

Reads the file :class:`jaas.testing.collector.Collector` has its ``file``
exporter write: one OTLP ``ExportTraceServiceRequest`` per line in the
protobuf JSON mapping of the OTLP specification (trace and span ids as hex).
A *reconcile trace* is a trace whose root span (no parent) is
``JsonnetSnippet.Reconcile`` (jaas/operator/reconciler.py); its spans come
from the shard, leader and evaluator processes, so from several resources.

For each reconcile trace it measures:

* spans: how many spans the trace has;
* JSON bytes: the sum, over the trace's spans, of the bytes each span object
  takes in the file: its compact JSON size computed from the parsed value
  (:func:`json_size`: numbers counted as written, strings as UTF-8 with JSON
  escapes, no whitespace). :func:`measure` computes every whole line the same
  way and counts the lines whose computed size equals their length, so the
  figures can be checked to be the bytes the exporter wrote. The resource and
  scope envelopes a request wraps the spans in are not counted (they are
  shared by all spans of one export);
* protobuf bytes, spans only: the sum of ``Span.ByteSize()``
  (``opentelemetry/proto/trace/v1/trace.proto``) of the trace's spans, built
  from the JSON with ``google.protobuf.json_format.ParseDict`` after turning
  the hex ids into the base64 that the protobuf JSON mapping expects;
* protobuf bytes, as a request: ``TracesData.ByteSize()`` of a message that
  holds only this trace's spans, grouped under their resources and scopes as
  the collector received them, i.e. the size of an ``ExportTraceServiceRequest``
  (same field layout) that carried this one trace.

    .venv/bin/python -m loadtests.trace_size <workdir>/otelcol/spans.jsonl
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# protobuf ships no type information; types-protobuf is not a dev dependency (yet).
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.proto.trace.v1 import trace_pb2

#: Name of the root span of every reconcile (jaas/operator/reconciler.py).
RECONCILE_SPAN = "JsonnetSnippet.Reconcile"

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class _RawFloat(float):
    """A JSON number parsed as float that remembers how it was written (``0.00004``)."""

    text: str

    def __new__(cls, text: str) -> _RawFloat:
        value = super().__new__(cls, text)
        value.text = text
        return value


def _loads(line: bytes) -> Any:
    return json.loads(line, parse_float=_RawFloat)


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (no whitespace), numbers as they were written.

    ``value`` comes from :func:`json.loads` with ``parse_float=_RawFloat``, so
    a float counts the characters of its original text (Go writes
    ``0.00004`` where Python would write ``4e-05``); strings count their
    UTF-8 bytes with JSON escapes (``json.dumps(ensure_ascii=False)``).
    """
    if isinstance(value, dict):
        items = [json_size(str(k)) + 1 + json_size(v) for k, v in value.items()]
        return 2 + sum(items) + max(len(items) - 1, 0)
    if isinstance(value, list):
        elements = [json_size(v) for v in value]
        return 2 + sum(elements) + max(len(elements) - 1, 0)
    if isinstance(value, _RawFloat):
        return len(value.text)
    return len(json.dumps(value, ensure_ascii=False).encode())


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _hex_to_base64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode() if value else ""


def proto_json(span: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of an OTLP JSON span that ``json_format.ParseDict`` reads correctly.

    The OTLP JSON encoding writes ``traceId``, ``spanId``, ``parentSpanId``
    (and the ids of links) as hex, where the protobuf JSON mapping of
    ``bytes`` fields is base64 (OTLP specification, "JSON Protobuf
    Encoding"); everything else is the standard mapping already.
    """
    copy = dict(span)
    for key in _ID_FIELDS:
        if key in copy:
            copy[key] = _hex_to_base64(str(copy[key]))
    if "links" in copy:
        copy["links"] = [
            {**link, **{k: _hex_to_base64(str(link[k])) for k in _ID_FIELDS if k in link}}
            for link in copy["links"]
        ]
    return copy


@dataclass
class TraceSize:
    """One trace's size.

    Attributes:
        trace_id: 32 lowercase hex digits.
        spans: number of spans.
        json_bytes: compact OTLP JSON bytes of its span objects (no envelopes).
        proto_span_bytes: sum of the protobuf ``Span.ByteSize()`` of its spans.
        proto_request_bytes: protobuf ``TracesData.ByteSize()`` of the trace
            alone, with its resource and scope envelopes.
        names: span name -> how many spans of the trace have it.
    """

    trace_id: str
    spans: int = 0
    json_bytes: int = 0
    proto_span_bytes: int = 0
    proto_request_bytes: int = 0
    names: Counter[str] = field(default_factory=Counter)


@dataclass
class TraceFigures:
    """What one collector output file holds.

    Attributes:
        requests: export requests (lines) in the file.
        file_bytes: size of the file in bytes (newlines included).
        exact_lines: lines whose :func:`json_size` equals their length (when
            equal to ``requests``, ``json_bytes`` are the bytes the exporter
            wrote).
        spans: every span in the file.
        other_traces: traces without a ``JsonnetSnippet.Reconcile`` root span.
        reconciles: the reconcile traces, in order of first appearance.
    """

    requests: int = 0
    file_bytes: int = 0
    exact_lines: int = 0
    spans: int = 0
    other_traces: int = 0
    reconciles: list[TraceSize] = field(default_factory=list)

    def representative(self) -> TraceSize | None:
        """The reconcile trace of median JSON size (None without any)."""
        if not self.reconciles:
            return None
        ordered = sorted(self.reconciles, key=lambda t: t.json_bytes)
        return ordered[len(ordered) // 2]

    def summary(self) -> list[str]:
        """Lines describing the figures (spans received, spans per trace, sizes)."""
        lines = [
            f"spans received: {self.spans} in {self.requests} export requests "
            f"({self.file_bytes} B of OTLP JSON; computed JSON size exact for "
            f"{self.exact_lines}/{self.requests} lines)",
        ]
        if not self.reconciles:
            return [*lines, "no reconcile trace received"]

        def spread(values: list[int]) -> str:
            return f"median {statistics.median(values):g} (min {min(values)}, max {max(values)})"

        lines += [
            f"reconcile traces: {len(self.reconciles)}, other traces: {self.other_traces}",
            f"spans per reconcile trace: {spread([t.spans for t in self.reconciles])}",
            "one reconcile trace, OTLP JSON bytes of its spans: "
            + spread([t.json_bytes for t in self.reconciles]),
            "one reconcile trace, protobuf bytes of its spans: "
            + spread([t.proto_span_bytes for t in self.reconciles]),
            "one reconcile trace, protobuf bytes as a TracesData of its own: "
            + spread([t.proto_request_bytes for t in self.reconciles]),
        ]
        totals: Counter[str] = Counter()
        for size in self.reconciles:
            totals.update(size.names)
        lines.append(
            "spans by name over the reconcile traces: "
            + ", ".join(f"{name} {n}" for name, n in sorted(totals.items()))
        )
        rep = self.representative()
        if rep is not None:
            names = ", ".join(f"{name} ×{n}" for name, n in sorted(rep.names.items()))
            lines.append(
                f"median-size trace {rep.trace_id}: {rep.spans} spans, {rep.json_bytes} B JSON, "
                f"{rep.proto_span_bytes} B protobuf spans, {rep.proto_request_bytes} B "
                f"TracesData: {names}"
            )
        return lines


def measure(path: Path) -> TraceFigures:
    """Measure the traces in a file exporter's OTLP JSON lines at ``path``.

    A last line without a newline (still being written) is ignored.

    Raises:
        ValueError: a line is not JSON, or a span does not parse as an OTLP ``Span``
            (``json_format.ParseError`` is a ``ValueError``).
        OSError: the file cannot be read.
    """
    data = path.read_bytes()
    figures = TraceFigures(file_bytes=len(data))
    sizes: dict[str, TraceSize] = {}
    roots: set[str] = set()
    # trace id -> (resource JSON, scope JSON) -> its spans, for the TracesData.
    grouped: dict[str, dict[tuple[bytes, bytes], list[trace_pb2.Span]]] = defaultdict(
        lambda: defaultdict(list)
    )
    envelopes: dict[tuple[bytes, bytes], tuple[dict[str, Any], dict[str, Any]]] = {}
    for line in data.split(b"\n")[:-1]:
        if not line.strip():
            continue
        request = _loads(line)
        figures.requests += 1
        figures.exact_lines += json_size(request) == len(line)
        for resource_spans in request.get("resourceSpans", []):
            # The envelopes: resource (and schemaUrl) without the spans, scope likewise.
            resource = {k: v for k, v in resource_spans.items() if k != "scopeSpans"}
            for scope_spans in resource_spans.get("scopeSpans", []):
                scope = {k: v for k, v in scope_spans.items() if k != "spans"}
                key = (_compact(resource), _compact(scope))
                envelopes[key] = (resource, scope)
                for raw in scope_spans.get("spans", []):
                    trace_id = str(raw.get("traceId", "")).lower()
                    message = json_format.ParseDict(proto_json(raw), trace_pb2.Span())
                    size = sizes.setdefault(trace_id, TraceSize(trace_id))
                    size.spans += 1
                    size.json_bytes += json_size(raw)
                    size.proto_span_bytes += message.ByteSize()
                    size.names[str(raw.get("name", ""))] += 1
                    grouped[trace_id][key].append(message)
                    figures.spans += 1
                    if not raw.get("parentSpanId") and raw.get("name") == RECONCILE_SPAN:
                        roots.add(trace_id)
    for trace_id, size in sizes.items():
        if trace_id not in roots:
            figures.other_traces += 1
            continue
        data_message = trace_pb2.TracesData()
        for key, spans in grouped[trace_id].items():
            resource, scope = envelopes[key]
            resource_spans = json_format.ParseDict(
                {**resource, "scopeSpans": [scope]}, data_message.resource_spans.add()
            )
            resource_spans.scope_spans[0].spans.extend(spans)
        size.proto_request_bytes = data_message.ByteSize()
        figures.reconciles.append(size)
    return figures


def main() -> None:
    """Command line entry point: print the figures of one collector output file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("spans", type=Path, help="the collector's OTLP JSON lines (spans.jsonl)")
    args = parser.parse_args()
    print("\n".join(measure(args.spans).summary()))


if __name__ == "__main__":
    main()
