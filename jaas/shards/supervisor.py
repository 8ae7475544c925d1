"""Starts a child process and restarts it whenever it exits, with capped backoff.

Used by the leader for its shard workers. A child that stayed up for
``healthy_after`` seconds restarts after ``min_backoff`` again; a crash loop
backs off exponentially up to ``max_backoff``. ``stop`` sends SIGTERM, waits
``grace`` seconds, then SIGKILLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence

from jaas.backoff import Backoff

log = logging.getLogger(__name__)


class Supervisor:
    """Keeps one child process (``argv``) running until ``stop``.

    ``on_exit(pid, returncode)`` runs after every exit (metrics, cleanup).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        on_exit: Callable[[int, int], None] | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        healthy_after: float = 60.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.on_exit = on_exit
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()

    @property
    def pid(self) -> int | None:
        """PID of the running child, if any."""
        return self.process.pid if self.process and self.process.returncode is None else None

    def start(self) -> None:
        """Start supervising (returns at once)."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        retries = Backoff(self.min_backoff, self.max_backoff).retries()
        while not self._stop.is_set():
            began = time.monotonic()
            self.process = await asyncio.create_subprocess_exec(*self.argv)
            self.started.set()
            log.info("%s started (pid %d)", self.name, self.process.pid)
            code = await self.process.wait()
            if self.on_exit is not None:
                self.on_exit(self.process.pid, code)
            if self._stop.is_set():
                return
            self.restarts += 1
            if time.monotonic() - began >= self.healthy_after:
                retries.reset()
            backoff = retries.next()
            log.warning(
                "%s (pid %d) exited with %d; restarting in %.1fs",
                self.name,
                self.process.pid,
                code,
                backoff,
            )
            await asyncio.sleep(backoff)

    def kill(self) -> None:
        """SIGKILL the running child (a wedged one ignores SIGTERM); it is restarted."""
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the child, SIGKILL it after ``grace`` seconds, stop restarting."""
        self._stop.set()
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                log.warning("%s did not stop within %ss; killing it", self.name, grace)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
