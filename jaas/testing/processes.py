"""Child processes of the test infrastructure: free ports, logs, start and stop.

The control plane (:mod:`.controlplane`), the Flux controllers
(:mod:`.fluxcontrollers`) and the OCI registry (:mod:`.registry`) run as
children in their own sessions, each logging to a file; :class:`ChildProcess`
starts one and stops its whole process group. Ports come from
:func:`free_port`, which binds 127.0.0.1 port 0 as envtest does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

#: Seconds between SIGTERM and SIGKILL when stopping a process.
STOP_GRACE = 20.0
#: Log lines included in a start-failure message.
LOG_TAIL_LINES = 40

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


class ChildProcessError(RuntimeError):
    """A child process of the test infrastructure exited or did not get ready.

    Attributes:
        port_in_use: it exited because a port picked for it was taken meanwhile
            (a race with another process, worth a retry on other ports).
    """

    def __init__(self, message: str, *, port_in_use: bool = False) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago.

    Binds port 0 on 127.0.0.1 and closes the socket, as envtest does; a port is
    never handed out twice by one process. Another process can still take it
    before it is used, which callers handle by retrying when a child fails
    with :attr:`ChildProcessError.port_in_use`.
    """
    with _handed_out_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log file ("" if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Stoppable:
    """Something started that :meth:`stop` ends; ``with`` it to stop it on the way out."""

    def stop(self) -> None:
        """End what was started (idempotent)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ChildProcess:
    """A child process in its own session, its output appended to a log file.

    Args:
        name: what error messages call it (``etcd``, ``source-controller``).
        argv: the command line.
        log_path: file that receives stdout and stderr (parents created); each
            start appends a ``=== attempt N: <argv>`` line first.
        attempt: the number written in that line.
        env: the whole environment of the child; None inherits this process's.
        cwd: its working directory; None inherits this process's.
        error: the :class:`ChildProcessError` subclass :meth:`check_running` raises.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        attempt: int = 1,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        error: type[ChildProcessError] = ChildProcessError,
    ) -> None:
        self.name = name
        self.error = error
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes] = log_path.open("ab")
        try:
            log.write(f"=== attempt {attempt}: {' '.join(argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
                cwd=cwd,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id)."""
        return self.popen.pid

    def exited(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.popen.poll()

    def check_running(self) -> None:
        """Raise if the process has exited.

        Raises:
            ChildProcessError: (of the class given as ``error``) it exited; the
                message holds the tail of its log, ``port_in_use`` says whether
                the log says a port was taken.
        """
        code = self.popen.poll()
        if code is None:
            return
        tail = log_tail(self.log_path)
        message = f"{self.name} exited with status {code}; last lines of {self.log_path}:\n{tail}"
        raise self.error(message, port_in_use="address already in use" in tail)

    def restart(self, attempt: int) -> ChildProcess:
        """Start the same command again (same log, environment and directory); return it."""
        return ChildProcess(
            self.name,
            self.argv,
            self.log_path,
            attempt,
            env=self.env,
            cwd=self.cwd,
            error=self.error,
        )

    def kill(self) -> None:
        """SIGKILL the process group and reap the child."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL it."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            # The leader is gone; make sure nothing it spawned lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
