"""Structured logging: one JSON object per line (or plain text) on stderr.

Every record carries the process role (``leader``, ``shard-0``...) and any
``extra`` fields the caller passed (``namespace``, ``snippet``, ``shard``,
``reason``); the snippet's name is written as ``name`` (a log record's own
``name`` is its logger, written as ``logger``). The current OpenTelemetry
trace and span ids (``trace_id``, ``span_id``, hex as in W3C Trace Context)
are added whenever a span is current, so logs and traces of one reconcile
can be joined. ``--log-format text`` writes plain lines instead.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from jaas.observability.tracing import trace_ids

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


#: ``extra`` keys written under another name.
_FIELD_NAMES = {"snippet": "name"}


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON objects."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` with time, level, logger, role, msg, extras, trace ids."""
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "role": self.role,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[_FIELD_NAMES.get(key, key)] = value
        doc.update(trace_ids())
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup(role: str, *, level: str = "info", fmt: str = "json") -> None:
    """Configure the root logger of this process (``fmt``: ``json`` or ``text``).

    Raises:
        ValueError: unknown level or format.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
