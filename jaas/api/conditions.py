"""Kubernetes ``metav1.Condition`` bookkeeping for status writes.

Follows k8s.io/apimachinery ``meta.SetStatusCondition``: a condition's
``lastTransitionTime`` changes only when its ``status`` flips; reason, message
and observedGeneration are updated in place; other condition types are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

Condition = dict[str, Any]


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with second precision (``metav1.Time``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    """The condition of ``type_``, or ``None``."""
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def set_condition(
    conditions: Sequence[Condition] | None,
    *,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[Condition]:
    """Return a new conditions list with ``type_`` set, preserving the others' order.

    ``status`` True/False/None maps to ``"True"``/``"False"``/``"Unknown"``.
    ``lastTransitionTime`` is kept when the status does not change, else set
    to ``now``.
    """
    status_text = "Unknown" if status is None else "True" if status else "False"
    previous = find_condition(conditions, type_)
    transition = (
        previous["lastTransitionTime"]
        if previous is not None
        and previous.get("status") == status_text
        and previous.get("lastTransitionTime")
        else (now or now_rfc3339())
    )
    updated: Condition = {
        "type": type_,
        "status": status_text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        updated["observedGeneration"] = observed_generation
    out: list[Condition] = []
    replaced = False
    for cond in conditions or ():
        if cond.get("type") == type_:
            out.append(updated)
            replaced = True
        else:
            out.append(dict(cond))
    if not replaced:
        out.append(updated)
    return out


def is_ready(obj: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``obj.status.conditions`` has ``Ready=True``, and a short why-not.

    The why-not text follows metio/jaas ``internal/sources/sources.go``: no
    conditions, no Ready condition, or ``Ready=<status>/<reason>: <message>``.
    """
    conditions = (obj.get("status") or {}).get("conditions") or []
    if not conditions:
        return False, "it has no status conditions yet"
    ready = find_condition(conditions, "Ready")
    if ready is None:
        return False, "it has no Ready condition"
    if ready.get("status") == "True":
        return True, ""
    why = f"Ready={ready.get('status')}/{ready.get('reason', '')}"
    if ready.get("message"):
        why += f": {ready['message']}"
    return False, why
