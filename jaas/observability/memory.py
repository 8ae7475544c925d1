"""Resident memory (bytes) and CPU time (seconds) of a process, from Linux ``/proc``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _status_bytes(pid: int | str, field: str) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def virtual_bytes(pid: int | str = "self") -> tuple[int, int]:
    """``(size, peak)`` of ``pid``'s address space in bytes; ``(0, 0)`` if it is gone.

    ``VmSize`` and ``VmPeak`` of ``/proc/<pid>/status``: what ``RLIMIT_AS`` limits.
    """
    return _status_bytes(pid, "VmSize:"), _status_bytes(pid, "VmPeak:")


def resident_bytes(pid: int | str = "self") -> int:
    """Resident set size of ``pid`` (default: this process) in bytes; 0 if it is gone.

    Reads ``VmRSS`` from ``/proc/<pid>/status`` (kibibytes there).
    """
    return _status_bytes(pid, "VmRSS:")


def peak_resident_bytes(pid: int | str = "self") -> int:
    """Peak resident set size of ``pid`` in bytes; 0 if it is gone.

    The peak since the process started or since it last called
    :func:`reset_peak_resident` (``VmHWM`` of ``/proc/<pid>/status``).
    """
    return _status_bytes(pid, "VmHWM:")


def reset_peak_resident() -> bool:
    """Reset this process's peak resident set size to its current one; False if refused.

    Writes ``5`` to ``/proc/self/clear_refs`` (Linux 4.0+, proc(5)).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


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
