"""Resident memory of a process, from Linux ``/proc`` (bytes)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def resident_bytes(pid: int | str = "self") -> int:
    """Resident set size of ``pid`` (default: this process) in bytes; 0 if it is gone.

    Reads ``VmRSS`` from ``/proc/<pid>/status`` (kibibytes there).
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
