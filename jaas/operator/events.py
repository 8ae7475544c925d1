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

        ``type_`` is ``Normal`` or ``Warning``; ``note`` is cut to the API's 1 KiB.
        """
        meta = regarding.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
                "namespace": namespace,
            },
            "eventTime": now,
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.reporting_instance,
            "action": action,
            "reason": reason,
            "type": type_,
            "note": note[:1024],
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
