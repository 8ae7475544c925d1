"""Event notes and names that the events.k8s.io/v1 validation accepts, whatever the input."""

import re

from hypothesis import given
from hypothesis import strategies as st

from jaas.operator.events import NAME_MAX_LENGTH, NOTE_MAX_BYTES, cut_utf8, event_name

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def test_a_note_of_multibyte_characters_is_cut_by_bytes() -> None:
    note = "✓" * 2000  # 2,000 characters, 6,000 bytes
    cut = cut_utf8(note, NOTE_MAX_BYTES)
    assert len(cut.encode()) <= NOTE_MAX_BYTES
    assert cut.endswith("…")
    assert set(cut[:-1]) == {"✓"}
    assert cut_utf8("short", NOTE_MAX_BYTES) == "short"


@given(st.text(max_size=3000))
def test_every_cut_note_fits_and_is_a_prefix(note: str) -> None:
    cut = cut_utf8(note, NOTE_MAX_BYTES)
    assert len(cut.encode()) <= NOTE_MAX_BYTES
    assert cut == note or note.startswith(cut[:-1])


def test_a_long_snippet_name_gives_a_valid_event_name() -> None:
    long = "a" * 230 + "-" + "b" * 9 + "." + "c" * 12  # 253 characters, valid
    name = event_name(long)
    assert len(name) <= NAME_MAX_LENGTH
    assert DNS_SUBDOMAIN.fullmatch(name)
    assert name.startswith("a" * 230)
    assert event_name("app") != event_name("app")


@given(
    st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", fullmatch=True).filter(
        lambda n: ".." not in n and ".-" not in n and "-." not in n
    )
)
def test_every_valid_object_name_gives_a_valid_event_name(name: str) -> None:
    derived = event_name(name)
    assert len(derived) <= NAME_MAX_LENGTH
    assert DNS_SUBDOMAIN.fullmatch(derived)
