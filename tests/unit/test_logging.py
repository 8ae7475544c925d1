"""Log records as JSON (or text): level, snippet fields, reason, and the current trace."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from jaas.observability import logging as jaas_logging


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's handler, writing into a buffer; restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)


def use(buffer: io.StringIO) -> None:
    logging.getLogger().handlers[0].setStream(buffer)  # type: ignore[attr-defined]


def test_a_reconcile_line_carries_the_snippet_fields_and_its_trace(
    captured: io.StringIO,
) -> None:
    jaas_logging.setup("shard-1", level="info", fmt="json")
    use(captured)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("JsonnetSnippet.Reconcile") as span:
        logging.getLogger("jaas.operator.reconciler").warning(
            "reconcile of %s/%s failed",
            "team-a",
            "web",
            extra={"namespace": "team-a", "snippet": "web", "shard": "shard-1", "reason": "X"},
        )
        context = span.get_span_context()
    record = json.loads(captured.getvalue())
    assert record["level"] == "warning"
    assert record["msg"] == "reconcile of team-a/web failed"
    assert record["logger"] == "jaas.operator.reconciler"
    assert record["role"] == "shard-1"
    assert (record["namespace"], record["name"], record["shard"], record["reason"]) == (
        "team-a",
        "web",
        "shard-1",
        "X",
    )
    assert record["trace_id"] == format(context.trace_id, "032x")
    assert record["span_id"] == format(context.span_id, "016x")


def test_outside_a_span_there_are_no_trace_ids(captured: io.StringIO) -> None:
    jaas_logging.setup("leader", level="info", fmt="json")
    use(captured)
    logging.getLogger("jaas").info("operator started")
    record = json.loads(captured.getvalue())
    assert "trace_id" not in record
    assert "span_id" not in record


def test_text_format_and_level(captured: io.StringIO) -> None:
    jaas_logging.setup("leader", level="warning", fmt="text")
    use(captured)
    logging.getLogger("jaas.x").info("not shown")
    logging.getLogger("jaas.x").error("shown")
    (line,) = captured.getvalue().splitlines()
    assert line.endswith(" ERROR leader jaas.x: shown")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        jaas_logging.setup("leader", fmt="xml")
