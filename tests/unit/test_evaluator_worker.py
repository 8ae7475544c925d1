"""The evaluator process on its own: protocol, clean exit, CPU-limit backstop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from jaas.evaluator.request import (
    ERROR,
    LIBRARIES,
    LOADED,
    READY,
    RESULT,
    EvaluationRequest,
    libraries_frame,
)
from jaas.ipc import recv_frame, send_frame


class Worker:
    """A worker process started by hand with the pool's command line."""

    def __init__(self, *options: str) -> None:
        self.sock, child = socket.socketpair()
        with child:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jaas.evaluator.worker",
                    "--fd",
                    str(child.fileno()),
                    *options,
                ],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd="/",
            )

    def close(self) -> None:
        self.sock.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def worker() -> Iterator[Worker]:
    started = Worker("--parent-pid", str(os.getpid()), "--memory-limit", str(1024**3))
    yield started
    started.close()


def evaluate(worker: Worker, source: bytes) -> tuple[dict[str, object], bytes]:
    request = EvaluationRequest("main.jsonnet", {"main.jsonnet": source})
    send_frame(worker.sock, *request.to_frame())
    frame = recv_frame(worker.sock)
    assert frame is not None
    return frame


def test_ready_then_results_and_errors_then_clean_exit(worker: Worker) -> None:
    ready = recv_frame(worker.sock)
    assert ready == ({"type": READY, "pid": worker.process.pid}, b"")
    header, body = evaluate(worker, b"{a: [1, 2]}")
    assert header["type"] == RESULT
    assert header["pid"] == worker.process.pid
    assert body == b'{\n   "a": [\n      1,\n      2\n   ]\n}\n'
    header, body = evaluate(worker, b"{a: }")
    assert header == {
        "type": ERROR,
        "message": header["message"],
        "retire": False,
        "reason": "EvaluationFailed",
    }
    assert str(header["message"]).endswith("    main.jsonnet:1:5")
    # The same worker keeps serving after a Jsonnet error.
    assert evaluate(worker, b"true")[1] == b"true\n"
    worker.sock.shutdown(socket.SHUT_WR)
    assert worker.process.wait() == 0


def test_shared_libraries_are_kept_and_the_requests_own_alias_wins(worker: Worker) -> None:
    assert recv_frame(worker.sock) is not None
    send_frame(worker.sock, *libraries_frame({"shared": {"main.libsonnet": b"'shared'"}}))
    assert recv_frame(worker.sock) == ({"type": LOADED, "aliases": ["shared"]}, b"")
    send_frame(worker.sock, *libraries_frame({"util": {"main.libsonnet": b"'shared util'"}}))
    assert recv_frame(worker.sock) == ({"type": LOADED, "aliases": ["shared", "util"]}, b"")
    for _ in range(2):  # kept across requests, not consumed by the first
        header, body = evaluate(worker, b"[import 'shared', import 'util']")
        assert header["type"] == RESULT
        assert body == b'[\n   "shared",\n   "shared util"\n]\n'
    own = EvaluationRequest(
        "main.jsonnet",
        {"main.jsonnet": b"[import 'shared', import 'util']"},
        libraries={"util": {"main.libsonnet": b"'own util'"}},
    )
    send_frame(worker.sock, *own.to_frame())
    frame = recv_frame(worker.sock)
    assert frame is not None
    assert frame[0]["type"] == RESULT
    assert frame[1] == b'[\n   "shared",\n   "own util"\n]\n'


def test_malformed_libraries_frame_is_a_protocol_error(worker: Worker) -> None:
    assert recv_frame(worker.sock) is not None
    send_frame(worker.sock, {"type": LIBRARIES, "libraries": [["lib", [["a", 5]]]]}, b"")
    assert recv_frame(worker.sock) is None
    assert worker.process.wait() == 2


def test_panic_retires_the_worker(worker: Worker) -> None:
    assert recv_frame(worker.sock) is not None
    header, _ = evaluate(worker, b'std.sort([1, [error "foo"]])')
    assert header["type"] == ERROR
    assert header["retire"] is True
    assert worker.process.wait() == 1


def test_cpu_limit_stops_an_evaluation_nobody_kills() -> None:
    worker = Worker("--cpu-limit", "1")
    try:
        assert recv_frame(worker.sock) is not None
        request = EvaluationRequest(
            "main.jsonnet",
            {"main.jsonnet": b"std.foldl(function(a, b) a + b, std.range(1, 1000000000), 0)"},
        )
        send_frame(worker.sock, *request.to_frame())
        assert recv_frame(worker.sock) is None
        assert worker.process.wait() == -signal.SIGXCPU
    finally:
        worker.close()


def test_worker_exits_when_its_parent_is_gone() -> None:
    # --parent-pid names a process that is not our parent: the worker leaves.
    worker = Worker("--parent-pid", "1" if os.getpid() != 1 else "2")
    try:
        assert recv_frame(worker.sock) is None
        assert worker.process.wait() == 0
    finally:
        worker.close()
