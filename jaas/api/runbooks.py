"""Runbook links for Ready reasons: one page per reason under ``docs/runbooks/``.

metio/jaas (``internal/operator/reconciler.go``: ``RunbookBaseURL``,
``decorateMessage``, ``happyReasonsNoRunbook``) appends
`` (runbook: <base><reason-lowercased>/)`` to every failure message it writes
into a snippet's ``Ready`` condition, so ``kubectl describe`` points straight
at the page that says what the failure means, how to check it and how to fix
it; ``Synced``, ``Suspended`` and ``Pending`` are healthy or intentional states
and get no link. jaas-py does the same with its own pages,
``docs/runbooks/<reason-lowercased>.md`` in this repository, and, past JaaS,
never suffixes a message twice.
"""

from __future__ import annotations

from typing import Final

from jaas.api.reasons import Reason

#: Where the runbook pages are published: ``docs/runbooks/`` of the main branch.
RUNBOOK_BASE_URL: Final = "https://github.com/metio/jaas-py/blob/main/docs/runbooks/"

#: Reasons whose messages get no runbook link (JaaS ``happyReasonsNoRunbook``).
NO_RUNBOOK_LINK: Final = frozenset({Reason.SYNCED, Reason.SUSPENDED, Reason.PENDING})


def runbook_page(reason: Reason) -> str:
    """The file name of ``reason``'s page in ``docs/runbooks/``: ``<reason-lowercased>.md``.

    Example: ``Reason.EVALUATION_FAILED`` → ``"evaluationfailed.md"``.
    """
    return f"{reason.value.lower()}.md"


def runbook_url(reason: Reason) -> str:
    """The URL of ``reason``'s runbook page (every reason has one, failures or not).

    Example: ``Reason.RBAC_DENIED`` →
    ``"https://github.com/metio/jaas-py/blob/main/docs/runbooks/rbacdenied.md"``.
    """
    return RUNBOOK_BASE_URL + runbook_page(reason)


def runbook_suffix(reason: Reason) -> str:
    """What ``with_runbook`` appends for a failure ``reason``: `` (runbook: <url>)``."""
    return f" (runbook: {runbook_url(reason)})"


def with_runbook(reason: Reason, message: str) -> str:
    """``message`` with the runbook link of ``reason`` appended, as a Ready message.

    Failure reasons get `` (runbook: <runbook_url(reason)>)`` at the end
    (JaaS ``decorateMessage``, with this repository's pages); ``Synced``,
    ``Suspended`` and ``Pending`` return ``message`` unchanged. A message that
    already ends in its reason's suffix is returned as it is, so decorating
    twice (a retry that re-raises a decorated failure) never doubles the link.

    Args:
        reason: the Ready reason the message is written with.
        message: the condition message.

    Returns:
        The message to write into the condition.
    """
    if reason in NO_RUNBOOK_LINK:
        return message
    suffix = runbook_suffix(reason)
    if message.endswith(suffix):
        return message
    return message + suffix
