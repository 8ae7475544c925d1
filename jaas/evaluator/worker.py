"""The evaluator process: evaluates Jsonnet requests received on an inherited socket.

Run by ``EvaluatorPool`` as ``python -m jaas.evaluator.worker --fd N --engine E
...``. A Jsonnet engine (``jaas.evaluator.engines``) cannot be interrupted, and
some inputs crash one (SIGSEGV, SIGABRT at the memory cap, Rust panics), so
evaluation lives in this separate, expendable process with a plain blocking
loop: no event loop, no Python signal handler (only a signal's default action
or SIGKILL can stop an evaluation, and the pool relies on that). Each request
is evaluated in a fresh thread with a large stack (legitimate deep recursion
then behaves as in go-jsonnet), then checked and
re-serialised in go-jsonnet's format here, so the CPU cost stays out of the
parent. From the same parsed value the worker also computes the files
published beside ``rendered.json`` for Flux's kustomize-controller
(``jaas.storage.objects``) and sends them with the result: parsing a render
again would cost a shard memory and event-loop time in proportion to its size.
Whatever the caller could not publish (``rendered.json`` over the request's
``max_output_bytes``, a file over the 16 MiB a consumer extracts, a result
that does not fit one frame) is refused here as ``ArtifactTooLarge``, so the
leader and the shard never hold it.

File trees a request names by digest are read from the pod's artifact cache
(``--cache-path``, ``jaas.evaluator.trees``); the last ones used stay decoded
in memory.

Operator-wide shared libraries (``--library-path``) arrive once, in
``libraries`` frames the pool sends right after ``ready``; the worker keeps
them for its lifetime and adds them to every request's libraries (the
request's own alias wins), so requests never carry them.

Limits applied at start-up: ``RLIMIT_AS`` (an allocation beyond it aborts the
process), a per-evaluation ``RLIMIT_CPU`` backstop in case the parent cannot
kill us, and death with the parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import math
import os
import resource
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jaas import defaults
from jaas.api.reasons import Reason, ReasonError
from jaas.evaluator.engines import Engine, EngineUnavailable, Inputs, load_engine
from jaas.evaluator.importer import InMemoryImporter, user_facing
from jaas.evaluator.manifest import OutputError, manifest_json, parse_output
from jaas.evaluator.request import (
    DEFAULT_STACK_SIZE,
    EVALUATE,
    LIBRARIES,
    LOADED,
    READY,
    EvaluationRequest,
    EvaluationResult,
    Files,
    error_header,
    libraries_from_frame,
)
from jaas.evaluator.trees import DEFAULT_MEMORY_BYTES, TreeStore, resolve_trees
from jaas.ipc import RELAY_HEADROOM, FrameError, Header, recv_frame, send_frame
from jaas.observability import tracing
from jaas.observability.memory import reset_peak_resident, virtual_bytes
from jaas.sources.cache import ArtifactCache
from jaas.sources.extract import MAX_ENTRY_BYTES, MAX_EXTRACTED_BYTES
from jaas.storage.objects import consumer_files_for

# Python frames below the parser/manifester when they start, plus slack.
_RECURSION_HEADROOM = 100
_MAX_RECURSION_LIMIT = 1_000_000
_PR_SET_PDEATHSIG = 1

#: This process's engine (``--engine``), loaded once by :func:`engine`.
_engine: Engine | None = None


def engine(name: str = defaults.ENGINE) -> Engine:
    """The process's engine: the first call loads ``name``, later calls return it.

    Raises:
        ValueError: an unknown engine name.
        EngineUnavailable: its module is not installed.
    """
    global _engine
    if _engine is None:
        _engine = load_engine(name)
    return _engine


@dataclass
class _Outcome:
    """What one evaluation produced: a result, or a user-facing error message and its reason."""

    result: EvaluationResult | None = None
    message: str = ""
    retire: bool = False
    reason: Reason = Reason.EVALUATION_FAILED


def evaluate(request: EvaluationRequest, using: Engine | None = None) -> EvaluationResult:
    """Evaluate a request in the calling thread and return the result to send.

    ``using`` is the engine (default: this process's, :func:`engine`).

    Returns:
        The output in go-jsonnet's format (UTF-8, trailing newline) with the
        consumer files and objects summary computed from the parsed value
        (``jaas.storage.objects.consumer_files_for``), this process's pid
        and the seconds spent; with ``request.discard_output`` only the
        output's length (``discarded_bytes``), no output and no files.

    Raises:
        RuntimeError: the engine reported a Jsonnet error (message as it wrote it).
        OutputError: the output is not valid JSON or nests deeper than ``max_stack``.
        ReasonError: ``ArtifactTooLarge``: the output is over
            ``request.max_output_bytes`` (checked before the consumer files
            are computed), or a file to send is over the 16 MiB per-file
            limit consumers can extract (all of them over 64 MiB).
        BaseException: the engine panicked (``pyo3_runtime.PanicException``).
    """
    started = time.perf_counter()
    importer = InMemoryImporter(request.files, request.libraries)
    inputs = Inputs(
        entry_path=importer.entry_path(request.entry_file),
        tla_vars={v.name: v.value for v in request.tlas if not v.code},
        tla_codes={v.name: v.value for v in request.tlas if v.code},
        ext_vars={v.name: v.value for v in request.external_variables if not v.code},
        ext_codes={v.name: v.value for v in request.external_variables if v.code},
        max_stack=request.max_stack,
    )
    text = (using or engine()).evaluate(inputs, importer)
    # The parser and the manifester recurse once per nesting level: allow
    # max_stack levels, as go-jsonnet does, and no more.
    limit = min(_MAX_RECURSION_LIMIT, max(1000, request.max_stack + _RECURSION_HEADROOM))
    sys.setrecursionlimit(limit)
    value = parse_output(text, max_depth=request.max_stack)
    del text
    rendered = manifest_json(value, max_depth=request.max_stack).encode("utf-8")
    cap = request.max_output_bytes
    if cap and len(rendered) > cap:
        # Refused here, so the leader and the shard never hold the output.
        raise ReasonError(
            Reason.ARTIFACT_TOO_LARGE,
            f"rendered.json would be {len(rendered)} bytes, over the {cap}-byte limit"
            + (f" ({request.max_output_name})" if request.max_output_name else ""),
        )
    if request.discard_output:
        seconds = time.perf_counter() - started
        return EvaluationResult(b"", seconds, os.getpid(), discarded_bytes=len(rendered))
    files, found = consumer_files_for(value)
    del value
    _check_consumer_files(rendered, files)
    seconds = time.perf_counter() - started
    return EvaluationResult(rendered, seconds, os.getpid(), 0, files, found.summary())


def _check_consumer_files(rendered: bytes, files: Mapping[str, bytes]) -> None:
    """Refuse files ``jaas.storage.package.package_rendered`` would refuse beside ``rendered``.

    Raises:
        ReasonError: ``ArtifactTooLarge`` for a file over ``MAX_ENTRY_BYTES``
            or all of them, ``rendered`` included, over ``MAX_EXTRACTED_BYTES``.
    """
    total = len(rendered)
    for name, content in files.items():
        if len(content) > MAX_ENTRY_BYTES:
            raise ReasonError(
                Reason.ARTIFACT_TOO_LARGE,
                f"{name} (written beside rendered.json for kustomize) would be "
                f"{len(content)} bytes, over the {MAX_ENTRY_BYTES}-byte per-file limit "
                "consumers can extract",
            )
        total += len(content)
    if total > MAX_EXTRACTED_BYTES:
        raise ReasonError(
            Reason.ARTIFACT_TOO_LARGE,
            f"rendered.json and the files written beside it for kustomize would be {total} "
            f"bytes, over the {MAX_EXTRACTED_BYTES}-byte limit consumers can extract",
        )


def _evaluate_outcome(request: EvaluationRequest) -> _Outcome:
    """Run ``evaluate`` and turn every way it can end into an ``_Outcome``."""
    entry = request.entry_file
    try:
        result = evaluate(request)
    except ReasonError as err:
        return _Outcome(message=err.message, reason=err.reason)
    except OutputError as err:
        return _Outcome(message=str(err))
    except RuntimeError as err:
        return _Outcome(message=user_facing(str(err)))
    except MemoryError:
        return _Outcome(
            message=f"the evaluation of {entry} ran out of memory (the evaluator's memory limit)",
            retire=True,
        )
    except RecursionError:
        return _Outcome(message=f"the output of {entry} nests arrays and objects too deeply")
    except Exception as err:
        traceback.print_exc()
        return _Outcome(
            message=f"internal error while evaluating {entry}: {type(err).__name__}: {err}",
            retire=True,
        )
    except BaseException as err:
        # pyo3_runtime.PanicException derives from BaseException: a Rust panic
        # inside rjsonnet (e.g. std.sort([1, [error "foo"]])). Its state may be
        # damaged, so the worker retires after reporting it.
        kind = type(err).__name__
        detail = str(err) or kind
        return _Outcome(
            message=(
                f"the Jsonnet evaluator failed on {entry} with an internal error "
                f"({kind}: {detail}); this input triggers a bug in {engine().version()}"
            ),
            retire=True,
        )
    return _Outcome(result=result)


def _run_in_thread(request: EvaluationRequest) -> _Outcome:
    """Evaluate on a fresh thread (with the large stack set at start-up) and wait."""
    outcome: list[_Outcome] = []
    thread = threading.Thread(
        target=lambda: outcome.append(_evaluate_outcome(request)),
        name="jsonnet-evaluation",
    )
    try:
        thread.start()
    except RuntimeError as err:
        return _Outcome(
            message=(
                f"the evaluator could not start its evaluation thread ({err}); "
                "the memory limit is too small for the evaluation stack"
            ),
            retire=True,
        )
    thread.join()
    return outcome[0]


def with_shared_libraries(
    request: EvaluationRequest, shared: Mapping[str, Files]
) -> EvaluationRequest:
    """Return ``request`` with the shared libraries added to its own.

    The merged map holds ``shared`` first, then the request's libraries, which
    replace a shared alias of the same name as a whole (JaaS merges its
    ``--library-path`` libraries after the CR libraries and lets the CR win,
    metio/jaas ``internal/operator/reconciler.go``; the operator rejects such a
    collision earlier as ``InvalidSpec``). Resolution then treats shared and
    own aliases alike (see ``jaas.evaluator.importer``).
    """
    if not shared:
        return request
    return dataclasses.replace(request, libraries={**shared, **request.libraries})


def _limit_cpu(seconds: int) -> None:
    """Let this process use at most ``seconds`` more CPU seconds (0 = no limit).

    Exceeding the soft limit sends SIGXCPU, whose default action ends the
    process: a backstop for the parent's wall-clock SIGKILL.
    """
    if seconds <= 0:
        resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (used + seconds, resource.RLIM_INFINITY))


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the parent exits; exit if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid and os.getppid() != parent_pid:
        sys.exit(0)


class AddressSpace:
    """Whether this worker still has room for another evaluation under its ``RLIMIT_AS``.

    An evaluation needs a transient share of address space (the evaluation
    thread's stack, the engine's own large-stack thread, their arenas) on top
    of what the process keeps between evaluations, measured by the start-up
    self-test as ``VmPeak - VmSize``. The heap an evaluation leaves behind
    (freed but not returned to the system) stays counted, so after a
    memory-hungry render the next, harmless one could fail for lack of room:
    one tenant's input failing another's. A worker whose kept address space
    plus that transient share leaves less than :data:`HEADROOM` of the limit
    for the next program's own data retires after answering, and the pool
    starts a fresh one.
    """

    #: Address space (bytes) the next evaluation's program needs at least.
    HEADROOM = 64 * 1024 * 1024

    def __init__(self, limit: int, measure: Callable[[], tuple[int, int]] = virtual_bytes) -> None:
        """``limit``: ``RLIMIT_AS`` bytes (0: none); ``measure``: ``(VmSize, VmPeak)`` now."""
        self.measure = measure
        size, peak = measure()
        self.limit = limit
        self.transient = max(peak - size, 0)

    def exhausted(self) -> bool:
        """Whether the next evaluation might not find the room it needs (never without a limit)."""
        if not self.limit:
            return False
        size, _ = self.measure()
        return size + self.transient + self.HEADROOM > self.limit


def serve(
    sock: socket.socket,
    cpu_limit: int = 0,
    trees: TreeStore | None = None,
    memory_limit: int = 0,
) -> int:
    """Answer ``evaluate`` frames on ``sock`` until it closes; return the exit status.

    ``trees`` reads the file trees a request names by digest (see
    ``jaas.evaluator.trees``); a request naming a tree it cannot read (or any
    tree, without a store) is answered with an ``error`` frame whose
    ``missing`` lists those digests.

    Sends one ``ready`` frame first, after a tiny self-test evaluation (which
    also warms the engine up). A ``libraries`` frame adds (or replaces, per
    alias) shared libraries for all later requests and is answered with a
    ``loaded`` frame listing every shared alias held. Returns 0 when the
    parent closes the socket, 1 after an evaluation that retires the worker,
    2 on a protocol error (an unknown frame or a malformed ``libraries``
    frame) and 3 when the self-test fails (e.g. the memory limit leaves no
    room for the evaluation thread's stack).
    """
    self_test = _run_in_thread(EvaluationRequest("main.jsonnet", {"main.jsonnet": b"{}"}))
    if self_test.result is None:
        print(f"jaas evaluator: self-test failed: {self_test.message}", file=sys.stderr)
        return 3
    room = AddressSpace(memory_limit)
    send_frame(sock, {"type": READY, "pid": os.getpid()})
    shared: dict[str, Files] = {}
    while True:
        frame = recv_frame(sock)
        if frame is None:
            return 0
        header, payload = frame
        if header.get("type") == LIBRARIES:
            try:
                shared.update(libraries_from_frame(header, payload))
            except FrameError as err:
                print(f"jaas evaluator: {err}", file=sys.stderr)
                return 2
            del payload
            send_frame(sock, {"type": LOADED, "aliases": sorted(shared)})
            continue
        if header.get("type") != EVALUATE:
            print(f"jaas evaluator: unexpected frame {header.get('type')!r}", file=sys.stderr)
            return 2
        try:
            request = EvaluationRequest.from_frame(header, payload)
        except FrameError as err:
            send_frame(sock, error_header(f"malformed evaluation request: {err}"))
            continue
        del payload
        source, libraries, missing = resolve_trees(
            trees, request.source_tree, request.library_trees
        )
        if missing:
            reply = error_header(f"file trees not in the artifact cache: {', '.join(missing)}")
            send_frame(sock, {**reply, "missing": missing})
            continue
        request = dataclasses.replace(
            request,
            files=request.files if source is None else source,
            libraries={**request.libraries, **libraries},
        )
        request = with_shared_libraries(request, shared)
        reset_peak_resident()
        started = time.time_ns()
        _limit_cpu(cpu_limit)
        outcome = _run_in_thread(request)
        _limit_cpu(0)
        span = _evaluation_span(header, request, outcome, started)
        del request
        retire = outcome.retire or room.exhausted()
        if outcome.result is None:
            reply = error_header(outcome.message, retire=retire, reason=outcome.reason.value)
            send_frame(sock, {**reply, **span})
        else:
            send_result(sock, outcome.result, retire=retire, extra=span)
        del outcome  # the output is not kept while waiting for the next request
        if retire:
            return 1


#: Resource attributes of this evaluator process in the spans it records.
_PROCESS: dict[str, str | int] = {
    "service.instance.id": str(uuid.uuid4()),
    "process.pid": os.getpid(),
    "jaas.process.kind": "evaluator",
}


def _evaluation_span(
    header: Header, request: EvaluationRequest, outcome: _Outcome, started: int
) -> Header:
    """``{"span": ...}`` for the answer: this evaluation's span, which the leader exports.

    Empty when the request carries no sampled trace context. The evaluator
    itself loads no tracing SDK (see :mod:`jaas.observability.tracing`).
    """
    attributes: dict[str, str | int | bool] = {
        "jaas.entryFile": request.entry_file,
        "jaas.evaluator.engine": engine().name,
    }
    if outcome.result is not None:
        attributes["jaas.eval.renderedBytes"] = outcome.result.size
    failure = None if outcome.result is not None else (outcome.reason.value, outcome.message)
    span = tracing.evaluation_span(
        header, "jsonnet.evaluate", started, time.time_ns(), attributes, failure, _PROCESS
    )
    return {} if span is None else {"span": span}


def send_result(
    sock: socket.socket,
    result: EvaluationResult,
    *,
    retire: bool = False,
    extra: Header | None = None,
) -> None:
    """Send ``result``'s frame, or ``ArtifactTooLarge`` if it cannot be relayed as one frame.

    The header keeps ``RELAY_HEADROOM`` free for the leader, which forwards
    the frame to the shard inside its own; the check happens before anything
    is written, so neither the leader nor the shard ever buffers such a frame.
    ``retire`` tells the pool that this worker exits after the frame;
    ``extra`` adds header fields (the evaluation's span).
    """
    header, payload = result.to_frame()
    header.update(extra or {})
    if retire:
        header["retire"] = True
    try:
        send_frame(sock, header, payload, headroom=RELAY_HEADROOM)
    except FrameError as err:
        message = f"the evaluation result cannot be sent from the evaluator: {err}"
        reply = error_header(message, reason=Reason.ARTIFACT_TOO_LARGE.value, retire=retire)
        send_frame(sock, reply)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: apply the limits, then ``serve`` on the inherited socket."""
    parser = argparse.ArgumentParser(prog="python -m jaas.evaluator.worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket fd")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit if this parent is gone")
    parser.add_argument("--memory-limit", type=int, default=0, help="RLIMIT_AS bytes, 0 = none")
    parser.add_argument("--cpu-limit", type=int, default=0, help="CPU seconds per evaluation")
    parser.add_argument("--stack-size", type=int, default=DEFAULT_STACK_SIZE, help="bytes")
    parser.add_argument("--engine", default=defaults.ENGINE, help="Jsonnet engine")
    parser.add_argument("--cache-path", default="", help="artifact cache holding file trees")
    parser.add_argument(
        "--tree-memory-bytes",
        type=int,
        default=DEFAULT_MEMORY_BYTES,
        help="decoded file trees kept in memory (bytes)",
    )
    args = parser.parse_args(argv)

    # Ctrl-C in a terminal signals the whole process group; the parent decides
    # when workers stop. SIG_IGN is not a Python handler: SIGTERM/SIGKILL keep
    # their default actions.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(args.parent_pid)
    if args.memory_limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory_limit, args.memory_limit))
    threading.stack_size(args.stack_size)
    try:
        engine(args.engine)
    except (ValueError, EngineUnavailable) as err:
        print(f"jaas evaluator: {err}", file=sys.stderr)
        return 4
    trees = None
    if args.cache_path:
        # Only read (and verified) here; the shards write the trees.
        trees = TreeStore(ArtifactCache(Path(args.cache_path)), args.tree_memory_bytes)
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    try:
        return serve(sock, args.cpu_limit, trees, args.memory_limit)
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
