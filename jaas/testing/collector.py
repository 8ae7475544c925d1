"""A real OpenTelemetry Collector for the tests, and the spans it received.

``tools/otelcol/build.sh`` (``make otelcol``) builds ``jaas-otelcol`` with the
collector builder (ocb): the OTLP receiver (gRPC and HTTP) and the contrib
file exporter, nothing else; it records the binary's path in
``$JAAS_CACHE/otelcol.env`` (``OTELCOL=<path>``). :class:`Collector` runs it
with the OTLP receiver on free 127.0.0.1 ports and a ``file`` exporter writing
every batch it receives as one line of OTLP JSON (``ExportTraceServiceRequest``
in the protobuf JSON mapping of the OTLP specification, ids as lowercase hex,
enums as numbers, 64-bit integers as strings); :meth:`Collector.spans` reads
them back as :class:`Span` values.

The file exporter buffers its output and flushes it every ``flush_interval``
(the collector's default is 1 s; 10 ms here), so a span is on disk at most
that long after the collector accepted it: :meth:`Collector.wait_for_spans`
polls rather than reading once.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from jaas.testing.processes import ChildProcess, ChildProcessError, Stoppable, free_port, log_tail

#: Seconds to wait for both OTLP ports to accept connections, per attempt.
START_TIMEOUT = 60.0
#: Whole-start attempts when a port turns out to be taken meanwhile.
START_ATTEMPTS = 5
#: The file exporter's ``flush_interval`` (Go duration): how long a received
#: span may sit in its write buffer.
FLUSH_INTERVAL = "10ms"
#: Seconds :meth:`Collector.wait_for_spans` waits by default.
WAIT_TIMEOUT = 30.0
#: Spans listed in a :meth:`Collector.wait_for_spans` timeout message.
SUMMARY_SPANS = 40

_POLL = 0.05

#: OTLP ``Span.SpanKind`` numbers (``opentelemetry/proto/trace/v1/trace.proto``)
#: to the names the OpenTelemetry API uses (``SpanKind.SERVER`` …).
SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
#: OTLP ``Status.StatusCode`` numbers to the API's names.
STATUS_CODES = ("UNSET", "OK", "ERROR")

#: A decoded OTLP ``AnyValue``: str, bool, int, float, bytes, a list of them,
#: a dict of them (``kvlistValue``), or None (an empty value).
AttributeValue = Any


class CollectorError(ChildProcessError):
    """The collector could not be found or started, or its output could not be read."""


class SpanLink(NamedTuple):
    """A link of a span (OTLP ``Span.Link``).

    Attributes:
        trace_id: the linked span's trace id, 32 lowercase hex digits.
        span_id: the linked span's id, 16 lowercase hex digits.
        attributes: the link's attributes, decoded.
    """

    trace_id: str
    span_id: str
    attributes: dict[str, AttributeValue]


class SpanEvent(NamedTuple):
    """An event of a span (OTLP ``Span.Event``).

    Attributes:
        name: the event's name (``exception`` for a recorded exception).
        attributes: the event's attributes, decoded.
    """

    name: str
    attributes: dict[str, AttributeValue]


@dataclass(frozen=True)
class Span:
    """One span as the collector received it.

    Attributes:
        trace_id: 32 lowercase hex digits.
        span_id: 16 lowercase hex digits.
        parent_span_id: 16 lowercase hex digits, or ``""`` for a root span.
        name: the span's name.
        kind: ``INTERNAL``, ``SERVER``, ``CLIENT``, ``PRODUCER``, ``CONSUMER``
            or ``UNSPECIFIED`` (:data:`SPAN_KINDS`).
        start_ns: start time, nanoseconds since the Unix epoch.
        end_ns: end time, nanoseconds since the Unix epoch.
        attributes: the span's attributes, decoded (see :func:`decode_any_value`).
        status_code: ``UNSET``, ``OK`` or ``ERROR``.
        status_message: the status description (``""`` when none).
        links: the span's links.
        events: the span's events.
        resource: the attributes of the resource that sent it
            (``service.name`` …).
        scope: the instrumentation scope's name (the tracer's name).
    """

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, AttributeValue]
    status_code: str
    status_message: str
    links: tuple[SpanLink, ...]
    events: tuple[SpanEvent, ...]
    resource: dict[str, AttributeValue]
    scope: str

    @property
    def duration_ns(self) -> int:
        """``end_ns - start_ns``."""
        return self.end_ns - self.start_ns

    def summary(self) -> str:
        """One line naming the span, its ids, kind and status (for failure messages)."""
        parent = self.parent_span_id or "-"
        status = self.status_code + (f" {self.status_message!r}" if self.status_message else "")
        service = self.resource.get("service.name", "?")
        return (
            f"{self.name!r} trace={self.trace_id} span={self.span_id} parent={parent} "
            f"kind={self.kind} status={status} service={service}"
        )


# --------------------------------------------------------------------------- OTLP JSON


def _hex_id(value: Any) -> str:
    return str(value or "").lower()


def _int(value: Any) -> int:
    # proto3 JSON writes 64-bit integers as strings, accepts numbers too.
    return int(value) if value not in (None, "") else 0


def _float(value: Any) -> float:
    # proto3 JSON writes NaN and the infinities as the strings "NaN", "Infinity", "-Infinity".
    if isinstance(value, str):
        special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        return special[value] if value in special else float(value)
    return float(value)


def _enum(value: Any, names: tuple[str, ...], prefix: str) -> str:
    # proto3 JSON writes enums as numbers or as their names (SPAN_KIND_SERVER …).
    if isinstance(value, str) and not value.isdigit():
        return value.removeprefix(prefix)
    number = _int(value)
    return names[number] if 0 <= number < len(names) else str(number)


def decode_any_value(value: Mapping[str, Any] | None) -> AttributeValue:
    """Decode an OTLP ``AnyValue`` in the protobuf JSON mapping into a Python value.

    ``stringValue`` → str, ``boolValue`` → bool, ``intValue`` (a string in
    JSON) → int, ``doubleValue`` → float, ``bytesValue`` (base64) → bytes,
    ``arrayValue`` → list, ``kvlistValue`` → dict; an empty value → None
    (``opentelemetry/proto/common/v1/common.proto``).
    """
    if not value:
        return None
    if "stringValue" in value:
        return str(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return _int(value["intValue"])
    if "doubleValue" in value:
        return _float(value["doubleValue"])
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"])
    if "arrayValue" in value:
        return [decode_any_value(v) for v in (value["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in value:
        return decode_attributes((value["kvlistValue"] or {}).get("values", []))
    return None


def decode_attributes(attributes: list[Mapping[str, Any]] | None) -> dict[str, AttributeValue]:
    """Decode a list of OTLP ``KeyValue`` (JSON) into a dict, later keys winning."""
    return {str(kv["key"]): decode_any_value(kv.get("value")) for kv in attributes or []}


def parse_export_request(request: Mapping[str, Any]) -> list[Span]:
    """Return the spans of one OTLP JSON ``ExportTraceServiceRequest`` (``{"resourceSpans": …}``).

    Fields absent from the JSON take their protobuf defaults (proto3 JSON
    omits them): no parent is ``""``, no status is ``UNSET``.
    """
    spans: list[Span] = []
    for resource_spans in request.get("resourceSpans", []):
        resource = decode_attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans", []):
            scope = str((scope_spans.get("scope") or {}).get("name", ""))
            for raw in scope_spans.get("spans", []):
                status = raw.get("status") or {}
                spans.append(
                    Span(
                        trace_id=_hex_id(raw.get("traceId")),
                        span_id=_hex_id(raw.get("spanId")),
                        parent_span_id=_hex_id(raw.get("parentSpanId")),
                        name=str(raw.get("name", "")),
                        kind=_enum(raw.get("kind", 0), SPAN_KINDS, "SPAN_KIND_"),
                        start_ns=_int(raw.get("startTimeUnixNano")),
                        end_ns=_int(raw.get("endTimeUnixNano")),
                        attributes=decode_attributes(raw.get("attributes")),
                        status_code=_enum(status.get("code", 0), STATUS_CODES, "STATUS_CODE_"),
                        status_message=str(status.get("message", "")),
                        links=tuple(
                            SpanLink(
                                _hex_id(link.get("traceId")),
                                _hex_id(link.get("spanId")),
                                decode_attributes(link.get("attributes")),
                            )
                            for link in raw.get("links", [])
                        ),
                        events=tuple(
                            SpanEvent(
                                str(event.get("name", "")),
                                decode_attributes(event.get("attributes")),
                            )
                            for event in raw.get("events", [])
                        ),
                        resource=resource,
                        scope=scope,
                    )
                )
    return spans


def read_spans(path: Path) -> list[Span]:
    """Parse every complete line of a file exporter's OTLP JSON output, in file order.

    A last line without its newline is still being written and is left for
    the next call. A missing file holds no spans.

    Raises:
        CollectorError: a complete line is not JSON.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    spans: list[Span] = []
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as err:
            raise CollectorError(f"{path}:{number} is not OTLP JSON: {err}") from err
        spans.extend(parse_export_request(request))
    return spans


# --------------------------------------------------------------------------- the process


def env_file() -> Path:
    """Return the file ``tools/otelcol/build.sh`` writes (``$JAAS_CACHE/otelcol.env``)."""
    cache = os.environ.get("JAAS_CACHE") or str(Path.home() / ".cache" / "jaas-py")
    return Path(cache) / "otelcol.env"


def locate_collector() -> Path:
    """Find the ``otelcol`` binary built by ``make otelcol``.

    ``OTELCOL`` in the environment overrides the line of the same name in
    :func:`env_file`.

    Raises:
        CollectorError: nothing says where it is, or it is not executable; the
            message says to run ``make otelcol``.
    """
    path = env_file()
    binary = os.environ.get("OTELCOL", "")
    if not binary and path.is_file():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "OTELCOL":
                binary = value.strip()
    hint = "run `make otelcol` (tools/otelcol/build.sh) to build it"
    if not binary:
        raise CollectorError(
            f"the OpenTelemetry Collector is not built: OTELCOL is set neither in the "
            f"environment nor in {path}; {hint}"
        )
    if not os.access(binary, os.X_OK):
        raise CollectorError(f"{binary} is missing or not executable; {hint}")
    return Path(binary)


def collector_config(
    grpc_port: int, http_port: int, output: Path, flush_interval: str = FLUSH_INTERVAL
) -> dict[str, Any]:
    """Return the collector configuration :class:`Collector` runs (a YAML-able dict).

    One traces pipeline: ``otlp`` receiver on ``127.0.0.1:<grpc_port>`` (gRPC)
    and ``127.0.0.1:<http_port>`` (HTTP, ``/v1/traces``) → ``file`` exporter
    writing OTLP JSON lines to ``output`` (``format: json``), flushed every
    ``flush_interval``. The collector's own metrics are off
    (``service.telemetry.metrics.level: none``), so it opens no port 8888.
    """
    return {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                    "http": {"endpoint": f"127.0.0.1:{http_port}"},
                }
            }
        },
        "exporters": {
            "file": {"path": str(output), "format": "json", "flush_interval": flush_interval}
        },
        "service": {
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
        },
    }


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Collector(Stoppable):
    """``jaas-otelcol`` receiving OTLP on free loopback ports, writing spans to a file.

    Starting it writes ``config.yaml`` in ``workdir``, starts the binary
    (:func:`locate_collector` unless ``binary`` is given) with its log in
    ``workdir/otelcol.log``, and waits until both OTLP ports accept
    connections (the collector starts its exporters before its receivers, so
    the pipeline is whole by then). Spans land in ``workdir/spans.jsonl``.

    Args:
        workdir: directory for the configuration, the log and the output (created).
        binary: the collector executable; None finds it with :func:`locate_collector`.
        flush_interval: the file exporter's ``flush_interval`` (a Go duration).
        timeout: seconds to wait for the ports, per attempt.

    Raises:
        CollectorError: the binary is missing, the collector exited, or its
            ports did not accept within ``timeout``; the message holds its log.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: Path | None = None,
        flush_interval: str = FLUSH_INTERVAL,
        timeout: float = START_TIMEOUT,
    ) -> None:
        exe = binary if binary is not None else locate_collector()
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.output = workdir / "spans.jsonl"
        self.config_path = workdir / "config.yaml"
        self.log_path = workdir / "otelcol.log"
        last_error: ChildProcessError | None = None
        for attempt in range(1, START_ATTEMPTS + 1):
            self.grpc_port, self.http_port = free_port(), free_port()
            config = collector_config(self.grpc_port, self.http_port, self.output, flush_interval)
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            self._process = ChildProcess(
                "otelcol",
                [str(exe), f"--config={self.config_path}"],
                self.log_path,
                attempt,
                error=CollectorError,
            )
            try:
                self._wait_ready(timeout)
            except BaseException as exc:
                self._process.stop()
                if isinstance(exc, ChildProcessError) and exc.port_in_use:
                    last_error = exc
                    continue
                raise
            return
        raise CollectorError(
            f"gave up after {START_ATTEMPTS} attempts, ports kept being taken: {last_error}"
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._process.check_running()
            if _accepts(self.grpc_port) and _accepts(self.http_port):
                self._process.check_running()
                return
            time.sleep(_POLL)
        self._process.check_running()
        raise CollectorError(
            f"otelcol not accepting on ports {self.grpc_port} (gRPC) and {self.http_port} "
            f"(HTTP) within {timeout:.0f} s; last lines of {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    @property
    def grpc_endpoint(self) -> str:
        """``127.0.0.1:<port>`` of the OTLP/gRPC receiver (plaintext)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """``http://127.0.0.1:<port>``, the OTLP/HTTP base URL (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_traces_endpoint(self) -> str:
        """``http://127.0.0.1:<port>/v1/traces``, the OTLP/HTTP traces URL."""
        return f"{self.http_endpoint}/v1/traces"

    @property
    def running(self) -> bool:
        """Whether the collector process is still running."""
        return self._process.exited() is None

    def spans(self) -> list[Span]:
        """Every span written so far, in the order the collector wrote them.

        Raises:
            CollectorError: the output holds a line that is not JSON.
        """
        return read_spans(self.output)

    def wait_for_spans(
        self, predicate: Callable[[list[Span]], object], timeout: float = WAIT_TIMEOUT
    ) -> list[Span]:
        """Poll :meth:`spans` until ``predicate(spans)`` is truthy; return those spans.

        Args:
            predicate: called with every span received so far.
            timeout: seconds to wait.

        Raises:
            AssertionError: ``timeout`` passed; the message lists what was seen.
            CollectorError: the collector exited meanwhile.
        """
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            self._process.check_running()
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL)
        lines = [span.summary() for span in spans[-SUMMARY_SPANS:]]
        more = len(spans) - len(lines)
        listing = "\n".join(([f"({more} earlier spans not shown)"] if more else []) + lines)
        raise AssertionError(
            f"the collector did not receive the expected spans within {timeout:.0f} s; "
            f"{len(spans)} span(s) received:\n{listing or '(none)'}"
        )

    def trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace received so far, ordered by start time."""
        wanted = trace_id.lower()
        return sorted(
            (span for span in self.spans() if span.trace_id == wanted), key=lambda s: s.start_ns
        )

    def children(self, span: Span) -> list[Span]:
        """The spans received so far whose parent is ``span``, ordered by start time."""
        return [s for s in self.trace(span.trace_id) if s.parent_span_id == span.span_id]

    def stop(self) -> None:
        """Stop the collector (SIGTERM: it flushes the file exporter and exits)."""
        self._process.stop()
