"""Resident memory (bytes) and CPU time (seconds) of a process, from Linux ``/proc``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def resident_bytes(pid: int | str = "self") -> int:
    """Resident set size of ``pid`` (default: this process) in bytes; 0 if it is gone.

    Reads ``VmRSS`` from ``/proc/<pid>/status`` (kibibytes there).
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User plus system CPU time ``pid`` has used, all its threads, in seconds; None if gone.

    Reads ``utime`` and ``stime`` (fields 14 and 15, in clock ticks) from
    ``/proc/<pid>/stat``; the command name before them may hold spaces, so
    fields are counted after its closing parenthesis.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state): utime is field 14, stime field 15.
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return None
