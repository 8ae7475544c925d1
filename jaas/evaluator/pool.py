"""A pool of evaluator processes, driven from an asyncio process.

rjsonnet holds the GIL for a whole evaluation, cannot be interrupted and can
crash on user input, so every evaluation runs in a worker process
(``jaas.evaluator.worker``), one evaluation at a time per worker; requests wait
for a free worker. Workers are fresh interpreters started as asyncio
subprocesses and talk ``jaas.ipc`` frames over a socketpair (never forked from
the event-loop process). The pool

* enforces the timeout in the worker's own CPU time (so load elsewhere on the
  machine does not turn a good program into a timeout), with a wall-clock
  backstop of ``WALL_CLOCK_FACTOR`` × the timeout, by SIGKILL of the worker,
  and raises ``EvaluationTimeout`` with JaaS's text ``evaluation exceeded
  <duration>``; the time a request waits for a free worker is not counted;
* caps each worker's address space (``RLIMIT_AS``): a runaway evaluation aborts
  its worker instead of the node running out of memory;
* reports a worker that dies (SIGSEGV on deep recursion or deep data, SIGABRT
  at the memory cap, SIGKILL by the OOM killer, a Rust panic) as
  ``EvaluationFailed`` with a plain message, and a Jsonnet error as
  ``EvaluationFailed`` with rjsonnet's message (``file:line:col`` as the user
  names the file);
* replaces a dead or killed worker at once, in the background, so the pool stays
  warm and other requests do not notice;
* hands the operator-wide shared libraries (``--library-path``) to every worker
  once, right after it reports ready (replacements included), so requests do
  not carry them.
* hands free workers out fairly between flows (by default the namespace of the
  request's ``label``): waiting requests queue per flow and a worker that
  becomes free, or a replacement that becomes ready, goes to the flow whose
  fair turn it is (start-time fair queueing, ``jaas.fairqueue``, after
  kube-apiserver's API Priority and Fairness), so one namespace's backlog of
  slow programs delays another namespace's evaluation by about one
  evaluation, not by the whole backlog.

Unlike JaaS (metio/jaas ``internal/eval/eval.go``), whose timed-out goroutines
keep running, a timed-out evaluation here really stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping

from opentelemetry import trace

import jaas
from jaas import defaults
from jaas.api.models import format_duration
from jaas.api.reasons import Reason, ReasonError
from jaas.backoff import Backoff
from jaas.child import python_module_argv
from jaas.evaluator.request import (
    DEFAULT_STACK_SIZE,
    ERROR,
    LOADED,
    READY,
    RESULT,
    EvaluationRequest,
    EvaluationResult,
    EvaluatorBusy,
    TreesMissing,
    libraries_frame,
)
from jaas.fairqueue import FairQueue
from jaas.ipc import FrameError, Header, encode_frame, read_frame, write_frame
from jaas.observability import metrics, tracing
from jaas.observability.memory import cpu_seconds, peak_resident_bytes
from jaas.observability.multiproc import ENV as MULTIPROC_ENV

logger = logging.getLogger(__name__)

# The operator's defaults (jaas.defaults); the memory limit is explained there.
DEFAULT_TIMEOUT = defaults.EVALUATION_TIMEOUT
DEFAULT_MEMORY_LIMIT = defaults.EVALUATION_MEMORY_LIMIT
DEFAULT_MAX_STACK = defaults.MAX_STACK
#: How long a new worker may take to report ready, seconds.
STARTUP_TIMEOUT = 60.0
#: Bytes of each worker's stderr kept to explain a crash.
_STDERR_TAIL = 8192
#: Seconds between two samples of a busy worker's CPU time.
CPU_POLL_SECONDS = 0.05
#: An evaluation gets this many times its CPU-time limit in wall-clock time.
WALL_CLOCK_FACTOR = defaults.EVALUATION_WALL_CLOCK_FACTOR
#: Back-off between failed attempts to start a replacement worker, seconds.
_RESPAWN_BACKOFF = Backoff(0.1, 5.0, factor=4.0)


#: What an engine writes to stderr when an allocation fails at ``RLIMIT_AS``:
#: Rust's allocator (jrsonnet), Python, and the Go runtime (go-jsonnet).
OUT_OF_MEMORY_SIGNS = (
    "memory allocation of",
    "MemoryError",
    "runtime: cannot allocate memory",
    "runtime: out of memory",
)
#: Read buffer of a worker's socket (asyncio's default, 64 KiB, made a 6 MiB
#: result frame take 6.5 ms to read instead of 2.5 ms).
READ_BUFFER_BYTES = 16 * 1024 * 1024
_OUT_OF_MEMORY_BYTES = tuple(sign.encode() for sign in OUT_OF_MEMORY_SIGNS)
_LONGEST_SIGN = max(len(sign) for sign in _OUT_OF_MEMORY_BYTES)


#: Seconds a worker told to stop (its socket closed) may take to exit before
#: it is killed: an idle one exits at once, one that is busy retiring finishes.
REAP_GRACE = 5.0


class _Overrun(Exception):
    """An evaluation passed its CPU-time or wall-clock limit."""


def label_namespace(label: str) -> str:
    """The namespace part of a request label ``"<namespace>/<name>"``: the default flow.

    A label without ``/`` is its own flow; every request without a label
    (``""``) shares the flow ``""``.
    """
    return label.partition("/")[0]


def format_bytes(size: int) -> str:
    """Format a byte count with binary units (``1 GiB``, ``1.5 GiB``, ``512 MiB``)."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size} B"


def _exit_description(returncode: int) -> str:
    """``SIGKILL``-style signal name of a negative ``returncode``, else ``exit N``."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


@dataclasses.dataclass(eq=False)
class _Worker:
    """One evaluator process and the parent's end of its socket."""

    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stderr_tail: bytearray = dataclasses.field(default_factory=bytearray)
    #: An allocation failure was reported on stderr (``OUT_OF_MEMORY_SIGNS``),
    #: seen as it was written: the tail kept may no longer hold it (a Go
    #: runtime dump follows its first line).
    out_of_memory: bool = False
    stderr_task: asyncio.Task[None] | None = None
    monitor_task: asyncio.Task[None] | None = None
    busy: bool = False
    retired: bool = False
    #: Of the evaluation in progress: CPU seconds used and peak resident
    #: bytes, as last sampled (the worker resets its peak before each one).
    cpu_used: float = 0.0
    peak_rss: int = 0

    def sample(self, cpu_before: float) -> None:
        """Update ``cpu_used`` and ``peak_rss`` from ``/proc`` (unchanged if the worker is gone)."""
        cpu = cpu_seconds(self.pid)
        if cpu is not None:
            self.cpu_used = cpu - cpu_before
        self.peak_rss = max(self.peak_rss, peak_resident_bytes(self.pid))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and not self.retired

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class EvaluatorPool:
    """Evaluates ``EvaluationRequest``s in ``size`` killable worker processes.

    Args:
        size: number of worker processes (each evaluates one request at a time).
        timeout: CPU seconds the worker may use for one evaluation, from
            sending the request to the result (queueing for a worker
            excluded), and ``WALL_CLOCK_FACTOR`` times as many wall-clock
            seconds; ``0`` or ``None`` disables both (JaaS
            ``--evaluation-timeout``, default 5s, wall clock there).
        memory_limit: ``RLIMIT_AS`` of each worker in bytes, ``None`` or ``0``
            for no limit; see ``DEFAULT_MEMORY_LIMIT``.
        max_stack: Jsonnet stack depth for every evaluation (JaaS
            ``--max-stack``; ``0`` means the default, 500); it replaces the
            request's own ``max_stack``.
        stack_size: native stack of the evaluation thread, bytes.
        shared_libraries: ``{alias: {relative path: content}}`` available to
            every evaluation besides the request's own libraries, which win on
            the same alias (JaaS ``--library-path``; see
            ``jaas.evaluator.libraries.load_library_paths``). The pool keeps
            them encoded, one frame per alias, and sends them to each worker
            after its ``ready`` frame, before its first request; the caller
            need not keep its mapping. Every worker holds a copy, so they count
            against ``memory_limit``.
        flow: maps a request's ``label`` (``""`` when it has none) to the flow
            it waits in when every worker is busy; waiting requests get free
            workers by fair turns between flows (``jaas.fairqueue``), first
            come, first served within one. The default, ``label_namespace``,
            makes each namespace a flow; ``None`` puts every request in one flow (plain FIFO).
        engine: the Jsonnet engine of every worker (``jaas.evaluator.engines``).
        max_waiting: requests that may wait for a worker, over all flows; one
            more is refused with ``EvaluatorBusy`` (backpressure: the caller
            retries later); 0 for no limit.
        max_waiting_per_flow: the same per flow (namespace), so that one
            namespace's backlog does not take every place in the queue.
        cache_path: the pod's artifact cache directory, where workers read
            the file trees requests name by digest (``jaas.evaluator.trees``);
            ``None``: requests must carry their trees inline.

    Raises:
        ValueError: ``size`` below 1, negative ``max_stack``, or a shared
            library too large for one ``jaas.ipc`` frame.

    Counters for metrics: ``evaluations`` (requests sent to a worker),
    ``failures`` (Jsonnet errors, invalid output, rjsonnet panics), ``crashes`` (worker
    deaths while evaluating, timeouts excluded), ``timeouts`` and ``restarts``
    (replacement workers started).

    Use ``async with EvaluatorPool(...) as pool`` or ``start()``/``close()``.
    """

    def __init__(
        self,
        size: int,
        timeout: float | None = DEFAULT_TIMEOUT,
        memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
        max_stack: int = DEFAULT_MAX_STACK,
        *,
        stack_size: int = DEFAULT_STACK_SIZE,
        shared_libraries: Mapping[str, Mapping[str, bytes]] | None = None,
        flow: Callable[[str], Hashable] | None = label_namespace,
        engine: str = defaults.ENGINE,
        max_waiting: int = defaults.EVALUATION_QUEUE_LIMIT,
        max_waiting_per_flow: int = defaults.EVALUATION_QUEUE_LIMIT_PER_NAMESPACE,
        cache_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"evaluator pool size must be at least 1, got {size}")
        if max_stack < 0:
            raise ValueError(f"max stack must not be negative, got {max_stack}")
        self.size = size
        self.timeout = timeout if timeout and timeout > 0 else None
        self.memory_limit = memory_limit
        self.max_stack = max_stack or DEFAULT_MAX_STACK
        self.stack_size = stack_size
        #: The Jsonnet engine of every worker (``jaas.evaluator.engines``).
        self.engine = engine
        #: Requests allowed to wait for a worker, in all and per flow (0: no limit).
        self.max_waiting = max_waiting
        self.max_waiting_per_flow = max_waiting_per_flow
        self.cache_path = None if cache_path is None else os.fspath(cache_path)
        #: Requests refused with ``EvaluatorBusy``.
        self.refused = 0
        #: Aliases of the shared libraries every worker holds.
        self.shared_aliases = frozenset(shared_libraries or ())
        self._library_frames = self._encode_libraries(shared_libraries or {})
        self.evaluations = 0
        self.failures = 0
        self.crashes = 0
        self.timeouts = 0
        self.restarts = 0
        self._workers: set[_Worker] = set()
        self._flow = flow
        # Live workers not evaluating, oldest first; empty while anyone waits.
        self._idle: deque[_Worker] = deque()
        # Requests waiting for a worker, one FIFO per flow.
        self._waiters: FairQueue[Hashable, asyncio.Future[_Worker]] = FairQueue()
        self._respawns: set[asyncio.Task[None]] = set()
        #: Workers that retired themselves, given time to exit (``_retire``).
        self._reaping: set[asyncio.Task[int]] = set()
        self._started = False
        self._closed = False

    async def __aenter__(self) -> EvaluatorPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._closed

    @property
    def busy(self) -> int:
        """Workers evaluating a request right now."""
        return sum(1 for w in self._workers if w.busy)

    @property
    def idle(self) -> int:
        """Workers waiting for a request."""
        return sum(1 for w in self._workers if w.alive and not w.busy)

    @property
    def waiting(self) -> int:
        """Requests waiting for a free worker, over all flows."""
        return len(self._waiters)

    def waiting_by_flow(self) -> dict[Hashable, int]:
        """Requests waiting for a free worker per flow, in the order flows will be served."""
        return {flow: self._waiters.depth(flow) for flow in self._waiters.flows()}

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers."""
        return sorted(w.pid for w in self._workers if w.alive)

    async def start(self) -> None:
        """Start ``size`` workers and wait until each has reported ready.

        Raises:
            RuntimeError: a worker did not start (its stderr is in the message).
        """
        if self._started:
            return
        self._started = True
        results = await asyncio.gather(
            *(self._spawn() for _ in range(self.size)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for result in results:
            if isinstance(result, _Worker):
                self._adopt(result)
        if errors:
            await self.close()
            raise RuntimeError(f"evaluator workers failed to start: {errors[0]}") from errors[0]

    async def close(self) -> None:
        """Stop every worker and wait for them; pending ``evaluate`` calls fail.

        An idle worker is told to stop by closing its socket and exits on its
        own (its span already went out with its last answer), or is killed after
        ``REAP_GRACE`` seconds; a busy one is killed at once.
        """
        self._closed = True
        for task in self._respawns:
            task.cancel()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.pop()
            if not waiter.done():
                waiter.set_exception(RuntimeError("the evaluator pool is closed"))
        workers = list(self._workers)
        for worker in workers:
            worker.retired = True
            if worker.busy:
                worker.kill()
            worker.writer.close()
        await asyncio.gather(
            *(self._reap(worker) for worker in workers), *self._reaping, return_exceptions=True
        )
        for worker in workers:
            for helper in (worker.monitor_task, worker.stderr_task):
                if helper is not None:
                    helper.cancel()
        self._workers.clear()
        await asyncio.gather(*self._respawns, return_exceptions=True)

    async def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        """Evaluate ``request`` in a free worker (waiting for one) and return the result.

        Raises:
            ReasonError: ``EvaluationFailed`` for a Jsonnet error, invalid
                output or a crashed worker; ``EvaluationTimeout`` when the
                evaluation exceeded the timeout (the worker is killed);
                ``ArtifactTooLarge`` when the worker refused an output the
                caller could not publish (see ``jaas.evaluator.worker``).
            TreesMissing: the worker could not read a tree the request names
                by digest (send it again with the trees inline).
            RuntimeError: the pool is not started or is closed.
            FrameError: the worker sent a malformed ``result`` frame.
        """
        header, payload = request.to_frame()
        return EvaluationResult.from_frame(*await self.evaluate_frame(header, payload))

    async def evaluate_frame(self, header: Header, payload: bytes) -> tuple[Header, bytes]:
        """Evaluate an already encoded request and return the encoded result.

        Takes what ``EvaluationRequest.to_frame`` returns and returns the
        worker's ``result`` frame as received (``EvaluationResult.from_frame``
        decodes it). The leader relays shard requests and results this way, so
        neither the files nor the output and its consumer files are unpacked
        and packed again in between. The pool's ``max_stack`` replaces the
        request's. While every worker is busy the request waits in the flow of
        its ``label`` header. Raises ``ReasonError`` and ``RuntimeError`` as
        ``evaluate``.
        """
        if not self._started or self._closed:
            raise RuntimeError("the evaluator pool is not running")
        parent = None if trace.get_current_span().get_span_context().is_valid else header
        with tracing.span(
            "evaluator.evaluate",
            kind=trace.SpanKind.SERVER if parent else trace.SpanKind.INTERNAL,
            context=tracing.extract(parent) if parent else None,
            attributes={"jaas.evaluator.engine": self.engine},
            expected=(EvaluatorBusy, TreesMissing),
        ) as span:
            return await self._evaluate_traced(header, payload, span)

    async def _evaluate_traced(
        self, header: Header, payload: bytes, span: trace.Span
    ) -> tuple[Header, bytes]:
        """``evaluate_frame`` inside its span, which records the worker's side of the evaluation.

        The span carries the worker's PID, the time spent waiting for it,
        the CPU time and peak resident memory of the evaluation, and for a
        worker that did not survive its exit status or signal; the worker's
        own span (when it survives) is its child.
        """
        entry_file = str(header.get("entry_file", ""))
        label = str(header.get("label") or "")
        flow = None if self._flow is None else self._flow(label)
        label = label or entry_file
        span.set_attribute("jaas.entryFile", entry_file)
        waiting = time.perf_counter()
        worker = await self._acquire(flow)
        span.set_attribute("jaas.eval.queueSeconds", round(time.perf_counter() - waiting, 6))
        span.set_attribute("jaas.evaluator.pid", worker.pid)
        header = tracing.inject({**header, "max_stack": self.max_stack})
        self.evaluations += 1
        metrics.EVAL_IN_FLIGHT.inc()
        try:
            try:
                write_frame(worker.writer, header, payload)
                del payload
                await worker.writer.drain()
                frame = await self._reply(worker)
            except _Overrun as overrun:
                self.timeouts += 1
                self._retire(worker)
                self._record_kill(span, worker, "timeout", "SIGKILL")
                logger.warning(
                    "evaluation of %s in worker %d: %s; killed it", label, worker.pid, overrun
                )
                raise ReasonError(Reason.EVALUATION_TIMEOUT, str(overrun)) from None
            except (FrameError, OSError):
                frame = None
            except BaseException:
                # Cancelled (or worse) mid-evaluation: the worker cannot be interrupted.
                self._retire(worker)
                raise
            finally:
                span.set_attribute("jaas.eval.cpuSeconds", round(worker.cpu_used, 3))
                if worker.peak_rss:
                    span.set_attribute("jaas.evaluator.peakRssBytes", worker.peak_rss)
        finally:
            metrics.EVAL_IN_FLIGHT.dec()
        if frame is None:
            if self._closed:
                raise RuntimeError("the evaluator pool was closed during the evaluation")
            raise await self._crashed(worker, entry_file, label, span)
        reply, body = frame
        relayed = reply.pop("span", None)
        if isinstance(relayed, dict):
            tracing.export_relayed_span(relayed)  # the evaluator's own span
        kind = reply.get("type")
        if kind == RESULT:
            if reply.get("retire"):
                self._retire(worker, exiting=True)  # out of room for another evaluation
            else:
                self._release(worker)
            return reply, body
        if kind == ERROR:
            if reply.get("retire"):
                self._retire(worker, exiting=True)
            else:
                self._release(worker)
            missing = reply.get("missing")
            if missing:
                raise TreesMissing([str(digest) for digest in missing])
            self.failures += 1
            try:
                reason = Reason(str(reply.get("reason") or Reason.EVALUATION_FAILED.value))
            except ValueError:
                reason = Reason.EVALUATION_FAILED
            raise ReasonError(reason, str(reply.get("message", "")))
        self._retire(worker)
        raise RuntimeError(f"evaluator worker {worker.pid} sent an unexpected {kind!r} frame")

    async def _reply(self, worker: _Worker) -> tuple[Header, bytes] | None:
        """The worker's answer, watched against the evaluation's time limits.

        The limit is ``timeout`` seconds of the worker's own CPU time (all its
        threads, from ``/proc``), sampled every :data:`CPU_POLL_SECONDS`, so
        a busy machine slows an evaluation down without failing it; a worker
        that uses no CPU (blocked, or starved) is stopped after
        :data:`WALL_CLOCK_FACTOR` × ``timeout`` of wall-clock time.

        Raises:
            _Overrun: a limit was passed (the message is the Ready message).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        cpu_before = cpu_seconds(worker.pid) or 0.0
        worker.cpu_used, worker.peak_rss = 0.0, 0
        reading = asyncio.ensure_future(read_frame(worker.reader))
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=CPU_POLL_SECONDS)
                worker.sample(cpu_before)
                if done:
                    return reading.result()
                if self.timeout is None:
                    continue
                if worker.cpu_used > self.timeout:
                    raise _Overrun(self._timeout_message())
                if loop.time() - started > self.timeout * WALL_CLOCK_FACTOR:
                    raise _Overrun(
                        f"{self._timeout_message()}: no result after "
                        f"{format_duration(self.timeout * WALL_CLOCK_FACTOR)} of wall-clock "
                        f"time ({WALL_CLOCK_FACTOR} × --evaluation-timeout)"
                    )
        finally:
            reading.cancel()

    # -- workers -----------------------------------------------------------------

    @staticmethod
    def _encode_libraries(libraries: Mapping[str, Mapping[str, bytes]]) -> tuple[bytes, ...]:
        """Encode one ``libraries`` frame per alias, in sorted alias order, once for all workers."""
        frames: list[bytes] = []
        for alias in sorted(libraries):
            try:
                frames.append(encode_frame(*libraries_frame({alias: libraries[alias]})))
            except FrameError as err:
                raise ValueError(
                    f"shared library {alias} is too large to send to the evaluator workers: {err}"
                ) from err
        return tuple(frames)

    def _worker_command(self, fd: int) -> list[str]:
        command = python_module_argv(
            "jaas.evaluator.worker",
            "--fd",
            str(fd),
            "--parent-pid",
            str(os.getpid()),
            "--stack-size",
            str(self.stack_size),
            "--engine",
            self.engine,
        )
        if self.cache_path:
            command += ["--cache-path", self.cache_path]
        if self.memory_limit:
            command += ["--memory-limit", str(self.memory_limit)]
        if self.timeout:
            # RLIMIT_CPU backstop, should this process fail to kill a worker.
            command += ["--cpu-limit", str(int(self.timeout) + 2)]
        return command

    @staticmethod
    def _worker_environment() -> dict[str, str]:
        env = dict(os.environ)
        # One malloc arena: the GIL serialises allocation anyway, and each extra
        # arena reserves 64 MiB of address space against RLIMIT_AS.
        env.setdefault("MALLOC_ARENA_MAX", "1")
        # An evaluator's metrics are counted by this process; it keeps none of
        # its own in the operator's multiprocess directory.
        env.pop(MULTIPROC_ENV, None)
        # Import the same jaas as this process, installed or not.
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(jaas.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p
        )
        return env

    async def _spawn(self) -> _Worker:
        """Start one worker, wait for its ``ready`` frame and give it the shared libraries.

        Raises:
            RuntimeError: the worker did not get that far within
                ``STARTUP_TIMEOUT`` (its stderr is in the message).
        """
        parent_end, child_end = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._worker_command(child_end.fileno()),
                pass_fds=(child_end.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                cwd="/",
                env=self._worker_environment(),
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        reader, writer = await asyncio.open_unix_connection(
            sock=parent_end, limit=READ_BUFFER_BYTES
        )
        worker = _Worker(process, reader, writer)
        worker.stderr_task = asyncio.create_task(self._read_stderr(worker))
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                frame = await self._handshake(worker)
        except BaseException as err:
            worker.kill()
            writer.close()
            if isinstance(err, Exception):
                await process.wait()
                raise RuntimeError(
                    f"evaluator worker {process.pid} did not start: {err!r}"
                ) from err
            raise
        if frame is None or frame[0].get("type") != (LOADED if self._library_frames else READY):
            writer.close()
            await self._reap(worker)
            await self._drain_stderr(worker)
            raise RuntimeError(
                f"evaluator worker {process.pid} exited during start-up "
                f"(status {process.returncode}): {self._stderr_text(worker)}"
            )
        return worker

    async def _handshake(self, worker: _Worker) -> tuple[Header, bytes] | None:
        """Wait for ``ready``, then send the shared libraries, each acknowledged by ``loaded``.

        Returns the last frame received (``ready``, or ``loaded`` after the
        last library), an unexpected frame, or None if the worker closed the
        socket (or died while libraries were being written).
        """
        frame = await read_frame(worker.reader)
        expected = READY
        for encoded in self._library_frames:
            if frame is None or frame[0].get("type") != expected:
                return frame
            try:
                worker.writer.write(encoded)
                await worker.writer.drain()
            except OSError:
                return None
            frame = await read_frame(worker.reader)
            expected = LOADED
        return frame

    def _adopt(self, worker: _Worker) -> None:
        self._workers.add(worker)
        worker.monitor_task = asyncio.create_task(self._monitor(worker))
        self._dispatch(worker)

    def _dispatch(self, worker: _Worker) -> None:
        """Hand a free live ``worker`` to the waiter of the next flow, or keep it idle."""
        while self._waiters:
            waiter = self._waiters.pop()
            if not waiter.done():
                worker.busy = True
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    async def _acquire(self, flow: Hashable) -> _Worker:
        """Take an idle worker, or wait in ``flow``'s queue until one is handed over.

        Raises:
            RuntimeError: the pool is closed (or was closed while waiting).
            EvaluatorBusy: no worker is idle and ``max_waiting`` requests, or
                ``max_waiting_per_flow`` of ``flow``, already wait.
        """
        if self._closed:
            raise RuntimeError("the evaluator pool is closed")
        if not self._waiters:
            while self._idle:
                worker = self._idle.popleft()
                if worker.alive:
                    worker.busy = True
                    self._waiters.charge(flow)  # a turn, though nobody had to wait
                    return worker
        if (self.max_waiting and len(self._waiters) >= self.max_waiting) or (
            self.max_waiting_per_flow and self._waiters.depth(flow) >= self.max_waiting_per_flow
        ):
            self.refused += 1
            raise EvaluatorBusy(
                f"all {self.size} evaluators are busy and {self._waiters.depth(flow)} requests "
                f"of this namespace ({len(self._waiters)} in all) are already waiting"
            )
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiters.push(flow, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if not waiter.done() or waiter.cancelled():
                self._waiters.remove(flow, waiter)
            elif waiter.exception() is None:
                self._release(waiter.result())  # handed a worker, then cancelled
            raise

    def _release(self, worker: _Worker) -> None:
        worker.busy = False
        if self._closed or worker.retired:
            return
        if worker.process.returncode is not None:
            self._retire(worker)  # died while nobody was reading from it
            return
        self._dispatch(worker)

    def _retire(self, worker: _Worker, *, exiting: bool = False) -> None:
        """Kill ``worker`` (if still running) and start a replacement once.

        ``exiting``: the worker said it retires and exits by itself; it is
        given ``REAP_GRACE`` seconds to exit cleanly before it is killed.
        """
        worker.busy = False
        if worker.retired:
            return
        worker.retired = True
        if exiting:
            reaping = asyncio.create_task(self._reap(worker))
            self._reaping.add(reaping)
            reaping.add_done_callback(self._reaping.discard)
        else:
            worker.kill()
        worker.writer.close()
        self._workers.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        if not self._closed:
            task = asyncio.create_task(self._respawn())
            self._respawns.add(task)
            task.add_done_callback(self._respawns.discard)

    async def _respawn(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                worker = await self._spawn()
            except Exception as err:
                delay = _RESPAWN_BACKOFF.delay(attempt)
                attempt += 1
                logger.error("cannot start an evaluator worker (retrying in %ss): %s", delay, err)
                await asyncio.sleep(delay)
                continue
            if self.closed:  # closed while this worker was starting
                worker.kill()
                await worker.process.wait()
                return
            self.restarts += 1
            self._adopt(worker)
            return

    async def _monitor(self, worker: _Worker) -> None:
        """Replace a worker that dies while idle (e.g. killed by the OOM killer)."""
        returncode = await worker.process.wait()
        if not worker.busy and not worker.retired and not self._closed:
            logger.warning("idle evaluator worker %d exited (%s)", worker.pid, returncode)
            self._retire(worker)

    async def _read_stderr(self, worker: _Worker) -> None:
        """Keep the tail of a worker's stderr for crash messages; log it at debug level."""
        stream = worker.process.stderr
        if stream is None:
            return
        while chunk := await stream.read(65536):
            worker.stderr_tail += chunk
            window = worker.stderr_tail[-(len(chunk) + _LONGEST_SIGN) :]
            worker.out_of_memory |= any(sign in window for sign in _OUT_OF_MEMORY_BYTES)
            del worker.stderr_tail[:-_STDERR_TAIL]
            if logger.isEnabledFor(logging.DEBUG):
                for line in chunk.decode("utf-8", "replace").splitlines():
                    logger.debug("evaluator worker %d: %s", worker.pid, line)

    @staticmethod
    async def _reap(worker: _Worker) -> int:
        """Wait for a worker that closed its socket to exit (killing it if it lingers)."""
        try:
            async with asyncio.timeout(REAP_GRACE):
                return await worker.process.wait()
        except TimeoutError:
            worker.kill()
            return await worker.process.wait()

    @staticmethod
    async def _drain_stderr(worker: _Worker) -> None:
        if worker.stderr_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(worker.stderr_task)

    @staticmethod
    def _stderr_text(worker: _Worker) -> str:
        return worker.stderr_tail.decode("utf-8", "replace").strip()[-2000:]

    # -- messages ----------------------------------------------------------------

    def _timeout_message(self) -> str:
        return f"evaluation exceeded {format_duration(self.timeout or 0.0)}"

    @staticmethod
    def _record_kill(span: trace.Span, worker: _Worker, cause: str, how: str) -> None:
        """Count a worker lost mid-evaluation and say on ``span`` how it ended."""
        metrics.EVALUATOR_KILLS.labels(cause).inc()
        span.set_attribute("jaas.evaluator.killed", True)
        span.set_attribute("jaas.evaluator.killCause", cause)
        span.set_attribute("jaas.evaluator.exit", how)

    async def _crashed(
        self, worker: _Worker, entry_file: str, label: str, span: trace.Span
    ) -> ReasonError:
        """Classify a worker that closed its socket mid-evaluation and replace it."""
        returncode = await self._reap(worker)
        await self._drain_stderr(worker)
        self._retire(worker)
        stderr = self._stderr_text(worker)
        how = _exit_description(returncode)
        if returncode == -signal.SIGXCPU:
            self.timeouts += 1
            self._record_kill(span, worker, "timeout", how)
            return ReasonError(Reason.EVALUATION_TIMEOUT, self._timeout_message())
        self.crashes += 1
        self._record_kill(span, worker, "memory" if worker.out_of_memory else "crash", how)
        message = self._crash_message(returncode, worker.out_of_memory, entry_file)
        logger.warning(
            "evaluator worker %d died evaluating %s: %s; stderr: %s",
            worker.pid,
            label,
            message,
            stderr[-500:],
        )
        return ReasonError(Reason.EVALUATION_FAILED, message)

    def _crash_message(self, returncode: int, out_of_memory: bool, entry_file: str) -> str:
        if returncode >= 0:
            return (
                f"the evaluator process exited unexpectedly (status {returncode}) "
                f"while evaluating {entry_file}"
            )
        signum = -returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        if self.memory_limit and (signum == signal.SIGABRT and out_of_memory):
            return (
                f"the evaluator process exceeded the memory limit of "
                f"{format_bytes(self.memory_limit)} while evaluating {entry_file}"
            )
        if signum in (signal.SIGSEGV, signal.SIGBUS):
            return (
                f"the evaluator process crashed ({name}) while evaluating {entry_file}; "
                "deep recursion or deeply nested data can do this"
            )
        if signum == signal.SIGKILL:
            return (
                f"the evaluator process was killed (SIGKILL) while evaluating {entry_file}, "
                "probably by the out-of-memory killer"
            )
        return f"the evaluator process crashed ({name}) while evaluating {entry_file}"
