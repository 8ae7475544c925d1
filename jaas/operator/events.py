"""Kubernetes Events (``events.k8s.io/v1``) for Ready transitions of snippets.

As metio/jaas does, an Event is recorded whenever the Ready condition changes
status or reason: ``Normal`` for ``Synced``, ``Warning`` otherwise, with
``reason`` and ``action`` set to the Ready reason. Recording is best effort: a
failure is logged and never fails a reconcile.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from jaas.operator.kube import KubeClient

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "jaas.metio.wtf/jaas-operator"
#: events.k8s.io/v1 validation (k8s.io/kubernetes pkg/apis/core/validation/events.go):
#: ``note`` at most 1 KiB of UTF-8 (bytes, not characters), names a DNS subdomain.
NOTE_MAX_BYTES = 1024
NAME_MAX_LENGTH = 253
_NAME_SUFFIX_LENGTH = 16


def cut_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character.

    A cut text ends with "…" (within the limit) so a reader sees it was cut.
    """
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    ellipsis = "…".encode()
    return encoded[: limit - len(ellipsis)].decode("utf-8", "ignore") + "…"


def event_name(object_name: str) -> str:
    """A fresh Event name for an object: ``<name>.<16 hex>``, a valid DNS subdomain.

    A long object name (a snippet name may be 253 characters) is shortened so
    the whole fits 253 characters, and the kept part ends alphanumeric.
    """
    keep = NAME_MAX_LENGTH - _NAME_SUFFIX_LENGTH - 1
    prefix = object_name[:keep].rstrip(".-")
    suffix = uuid.uuid4().hex[:_NAME_SUFFIX_LENGTH]
    return f"{prefix}.{suffix}" if prefix else suffix


class EventRecorder:
    """Posts Events about objects, as ``reporting_instance`` (e.g. the shard identity)."""

    def __init__(self, client: KubeClient, reporting_instance: str) -> None:
        self.client = client
        self.reporting_instance = reporting_instance
        #: Events that could not be recorded.
        self.failures = 0

    async def record(
        self, regarding: dict[str, Any], *, type_: str, reason: str, note: str, action: str
    ) -> None:
        """Create one Event about ``regarding`` (an API object with apiVersion, kind, metadata).

        ``type_`` is ``Normal`` or ``Warning``; ``note`` is cut to the API's
        1 KiB of UTF-8 (``cut_utf8``) and the Event's name derived with
        ``event_name``, so neither a long message nor a long name is refused.
        """
        meta = regarding.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": event_name(str(meta.get("name") or "")),
                "namespace": namespace,
            },
            "eventTime": now,
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.reporting_instance,
            "action": action,
            "reason": reason,
            "type": type_,
            "note": cut_utf8(note, NOTE_MAX_BYTES),
            "regarding": {
                "apiVersion": regarding.get("apiVersion"),
                "kind": regarding.get("kind"),
                "namespace": namespace,
                "name": meta.get("name"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
        }
        try:
            await self.client.create(f"/apis/events.k8s.io/v1/namespaces/{namespace}/events", event)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # best effort: an Event never fails a reconcile
            self.failures += 1
            log.warning("could not record event %s: %s", reason, err)
