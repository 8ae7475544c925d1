"""Runbook pages and links: every Ready reason has its page, every link leads somewhere.

As metio/jaas (a unit test requires ``docs/runbooks/<reason-lowercase>.md``
for every reason; ``decorateMessage`` appends the link to failure messages
but not to ``Synced``, ``Suspended``, ``Pending``), with this repository's
pages and URLs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jaas.api.reasons import Reason
from jaas.api.runbooks import runbook_page, runbook_suffix, runbook_url, with_runbook
from jaas.operator.reconciler import MAX_MESSAGE, SHORT_MESSAGE, shorten_message

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
INDEX = RUNBOOKS / "README.md"
#: Where a runbook URL points, as a path of this repository.
REPOSITORY_BLOB = "https://github.com/metio/jaas-py/blob/main/"
HEALTHY = {Reason.SYNCED, Reason.SUSPENDED, Reason.PENDING}
FAILURES = [r for r in Reason if r not in HEALTHY]
FAILURE_SECTIONS = ["## What it means", "## How to check", "## How to fix"]
STATE_SECTIONS = ["## What it means", "## When to act"]

_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
#: A code span may go on over a line break, not over a blank line (CommonMark).
_CODE_SPAN = re.compile(r"`(?:[^`\n]|\n(?![ \t]*\n))*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def markdown_links(text: str) -> list[str]:
    """Targets of the inline links of a Markdown text, code blocks and code spans left out."""
    prose = _CODE_SPAN.sub("", _FENCE.sub("", text))
    return _LINK.findall(prose)


def local_targets(page: Path) -> list[tuple[str, Path]]:
    """``(link, resolved file)`` of every link of ``page`` into this repository."""
    out = []
    for link in markdown_links(page.read_text()):
        if _EXTERNAL.match(link) or link.startswith("#"):
            continue
        out.append((link, (page.parent / link.partition("#")[0]).resolve()))
    return out


def headings(page: Path) -> list[str]:
    """The level-2 headings of ``page``, in order (code blocks left out)."""
    text = _FENCE.sub("", page.read_text())
    return [line.rstrip() for line in text.splitlines() if line.startswith("## ")]


def test_markdown_links_skip_code() -> None:
    text = (
        'see [a](a.md) and `[b](b.md)`\n```\n[c](c.md)\n```\n[d](https://x/d.md "t")\n'
        "`a span\ngoing on [e](e.md)` and [f](f.md)\n"
    )
    assert markdown_links(text) == ["a.md", "https://x/d.md", "f.md"]


@pytest.mark.parametrize("reason", FAILURES, ids=str)
def test_failure_reason_page_has_the_three_sections(reason: Reason) -> None:
    page = RUNBOOKS / runbook_page(reason)
    assert page.is_file(), f"no runbook page {page.relative_to(ROOT)} for {reason.value}"
    assert page.read_text().splitlines()[0] == f"# {reason.value}"
    found = [h for h in headings(page) if h in FAILURE_SECTIONS]
    assert found == FAILURE_SECTIONS


@pytest.mark.parametrize("reason", sorted(HEALTHY), ids=str)
def test_healthy_state_page_says_what_it_means_and_when_to_act(reason: Reason) -> None:
    page = RUNBOOKS / runbook_page(reason)
    assert page.is_file(), f"no runbook page {page.relative_to(ROOT)} for {reason.value}"
    assert page.read_text().splitlines()[0] == f"# {reason.value}"
    found = [h for h in headings(page) if h in STATE_SECTIONS]
    assert found == STATE_SECTIONS


def test_page_names_are_the_lowercased_reasons() -> None:
    assert runbook_page(Reason.EVALUATION_FAILED) == "evaluationfailed.md"
    assert runbook_page(Reason.CROSS_NAMESPACE_REF_REJECTED) == "crossnamespacerefrejected.md"
    assert len({runbook_page(r) for r in Reason}) == len(Reason) == 16


def test_with_runbook_appends_the_link_to_a_failure_message() -> None:
    assert with_runbook(Reason.EVALUATION_FAILED, "boom") == (
        "boom (runbook: https://github.com/metio/jaas-py/blob/main/docs/runbooks/"
        "evaluationfailed.md)"
    )


@pytest.mark.parametrize("reason", FAILURES, ids=str)
def test_every_failure_message_links_its_own_page(reason: Reason) -> None:
    message = with_runbook(reason, "it failed")
    assert message.startswith("it failed (runbook: ")
    assert message.endswith(f"/docs/runbooks/{reason.value.lower()}.md)")
    assert message == "it failed" + runbook_suffix(reason)


@pytest.mark.parametrize("reason", sorted(HEALTHY), ids=str)
def test_healthy_messages_stay_unchanged(reason: Reason) -> None:
    message = "spec.suspend is true; pause until the operator unsets it"
    assert with_runbook(reason, message) == message


@pytest.mark.parametrize("reason", list(Reason), ids=str)
def test_with_runbook_is_idempotent(reason: Reason) -> None:
    once = with_runbook(reason, "message")
    assert with_runbook(reason, once) == once


def test_only_a_trailing_suffix_of_the_same_reason_counts_as_decorated() -> None:
    suffix = runbook_suffix(Reason.EVALUATION_FAILED)
    inside = f"quoted{suffix} then more"
    assert with_runbook(Reason.EVALUATION_FAILED, inside) == inside + suffix
    other = "x" + runbook_suffix(Reason.SOURCE_FETCH_FAILED)
    assert with_runbook(Reason.EVALUATION_FAILED, other) == other + suffix
    assert with_runbook(Reason.EVALUATION_FAILED, "") == suffix


@pytest.mark.parametrize("reason", list(Reason), ids=str)
def test_runbook_url_points_at_the_page_in_this_repository(reason: Reason) -> None:
    url = runbook_url(reason)
    assert url.startswith(REPOSITORY_BLOB)
    assert (ROOT / url.removeprefix(REPOSITORY_BLOB)).is_file()


@pytest.mark.parametrize("limit", [MAX_MESSAGE, SHORT_MESSAGE])
@pytest.mark.parametrize("reason", FAILURES, ids=str)
def test_link_survives_the_status_message_cut(reason: Reason, limit: int) -> None:
    """A long diagnostic cut for the condition keeps its tail, and so the link."""
    cut = shorten_message(with_runbook(reason, "frame\n" * 5000), limit)
    assert len(cut) <= limit
    assert cut.endswith(runbook_suffix(reason))


def test_index_links_every_page_and_every_indexed_page_exists() -> None:
    linked = {target for _, target in local_targets(INDEX)}
    pages = {p.resolve() for p in RUNBOOKS.glob("*.md") if p != INDEX}
    missing_pages = sorted(
        str(t.relative_to(ROOT)) for t in linked if t.suffix == ".md" and not t.is_file()
    )
    assert not missing_pages, f"the index links pages that do not exist: {missing_pages}"
    unindexed = sorted(p.name for p in pages - linked)
    assert not unindexed, f"pages missing from docs/runbooks/README.md: {unindexed}"
    assert {RUNBOOKS / runbook_page(r) for r in Reason} <= linked


def test_every_relative_link_in_the_runbooks_resolves() -> None:
    broken = [
        f"{page.name}: {link}"
        for page in sorted(RUNBOOKS.glob("*.md"))
        for link, target in local_targets(page)
        if not target.exists()
    ]
    assert not broken, f"broken links: {broken}"


def test_reason_label_matchers_in_the_runbooks_name_real_reasons() -> None:
    values = {r.value for r in Reason}
    unknown = [
        f"{page.name}: {name}"
        for page in sorted(RUNBOOKS.glob("*.md"))
        for name in re.findall(r'reason="([^"]*)"', page.read_text())
        if name not in values
    ]
    assert not unknown, f"reason matchers naming no Ready reason: {unknown}"
