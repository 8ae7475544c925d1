"""Every Ready reason JaaS writes is reached by an end-to-end test from a real cause.

JaaS defines 16 reasons; ``Pending`` and ``SourceRefNotYetSupported`` are
never written (jaas-reference §2). The other 14 must each appear as the
expected reason of a ``wait_reason`` call, or as a parametrized value that a
``wait_reason`` call uses, in tests/e2e.
"""

from __future__ import annotations

import re
from pathlib import Path

from jaas.api.reasons import Reason

E2E = Path(__file__).resolve().parents[1] / "e2e"
NEVER_WRITTEN = {Reason.PENDING, Reason.SOURCE_REF_NOT_YET_SUPPORTED}
_WAIT = re.compile(r"wait_reason\((?:[^()]|\([^()]*\))*\)", re.DOTALL)
_LITERAL = re.compile(r'"([A-Za-z]+)"')


def reasons_waited_for() -> set[str]:
    found: set[str] = set()
    for path in E2E.glob("test_*.py"):
        text = path.read_text()
        for call in _WAIT.findall(text):
            found |= set(_LITERAL.findall(call))
    return found


def test_every_written_reason_has_an_end_to_end_test() -> None:
    expected = {r.value for r in Reason} - {r.value for r in NEVER_WRITTEN}
    assert len(expected) == 14
    missing = expected - reasons_waited_for()
    assert not missing, f"no e2e test waits for: {sorted(missing)}"
