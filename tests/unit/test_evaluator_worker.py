"""The evaluator process on its own: protocol, consumer files, caps, clean exit, CPU backstop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from jaas.api.reasons import Reason, ReasonError
from jaas.evaluator.request import (
    ERROR,
    LIBRARIES,
    LOADED,
    READY,
    RESULT,
    EvaluationRequest,
    EvaluationResult,
    libraries_frame,
)
from jaas.evaluator.worker import evaluate as evaluate_here
from jaas.evaluator.worker import send_result
from jaas.ipc import MAX_HEADER, RELAY_HEADROOM, recv_frame, send_frame
from jaas.storage.objects import KUSTOMIZATION_FILE_NAME, NO_OBJECTS_RESOURCE, OBJECTS_FILE_NAME

MiB = 1 << 20


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
    # rjsonnet: these tests also show how a worker reports and retires after its panics.
    started = Worker(
        "--parent-pid", str(os.getpid()), "--memory-limit", str(1024**3), "--engine", "rjsonnet"
    )
    yield started
    started.close()


def evaluate(
    worker: Worker, source: bytes, *, max_output_bytes: int = 0, discard_output: bool = False
) -> tuple[dict[str, object], bytes]:
    request = EvaluationRequest(
        "main.jsonnet",
        {"main.jsonnet": source},
        max_output_bytes=max_output_bytes,
        discard_output=discard_output,
    )
    send_frame(worker.sock, *request.to_frame())
    frame = recv_frame(worker.sock)
    assert frame is not None
    return frame


def rendered(frame: tuple[dict[str, object], bytes]) -> bytes:
    assert frame[0]["type"] == RESULT, frame[0]
    return EvaluationResult.from_frame(*frame).rendered


def test_ready_then_results_and_errors_then_clean_exit(worker: Worker) -> None:
    ready = recv_frame(worker.sock)
    assert ready == ({"type": READY, "pid": worker.process.pid}, b"")
    frame = evaluate(worker, b"{a: [1, 2]}")
    assert frame[0]["pid"] == worker.process.pid
    assert rendered(frame) == b'{\n   "a": [\n      1,\n      2\n   ]\n}\n'
    header, _ = evaluate(worker, b"{a: }")
    assert header == {
        "type": ERROR,
        "message": header["message"],
        "retire": False,
        "reason": "EvaluationFailed",
    }
    assert str(header["message"]).endswith("    main.jsonnet:1:5")
    # The same worker keeps serving after a Jsonnet error.
    assert rendered(evaluate(worker, b"true")) == b"true\n"
    worker.sock.shutdown(socket.SHUT_WR)
    assert worker.process.wait() == 0


def test_a_render_of_objects_comes_with_objects_yaml_and_its_kustomization(
    worker: Worker,
) -> None:
    assert recv_frame(worker.sock) is not None
    program = (
        b"{apiVersion: 'v1', kind: 'List', items: [{apiVersion: 'v1', kind: 'ConfigMap', "
        b"metadata: {name: 'cm-' + i}, data: {n: '1'}, replicas: 2} for i in ['a', 'b']]}"
    )
    header, payload = evaluate(worker, program)
    result = EvaluationResult.from_frame(header, payload)
    # The frame lists the files after rendered.json; the payload is their bytes, raw.
    assert header["rendered"] == len(result.rendered)
    assert header["files"] == [
        [name, len(content)] for name, content in result.consumer_files.items()
    ]
    assert payload == result.rendered + b"".join(result.consumer_files.values())
    assert result.objects_summary == "2 Kubernetes objects"
    assert sorted(result.consumer_files) == [KUSTOMIZATION_FILE_NAME, OBJECTS_FILE_NAME]
    objects = list(yaml.safe_load_all(result.consumer_files[OBJECTS_FILE_NAME]))
    assert [o["metadata"]["name"] for o in objects] == ["cm-a", "cm-b"]
    assert objects[0]["replicas"] == 2  # an integer, as in rendered.json, not 2.0
    assert b'"replicas":2}' in result.consumer_files[OBJECTS_FILE_NAME]
    kustomization = yaml.safe_load(result.consumer_files[KUSTOMIZATION_FILE_NAME])
    assert kustomization["resources"] == [OBJECTS_FILE_NAME]


def test_a_dashboard_render_comes_with_a_kustomization_that_fails(worker: Worker) -> None:
    assert recv_frame(worker.sock) is not None
    result = EvaluationResult.from_frame(*evaluate(worker, b"{title: 'board', panels: []}"))
    assert result.rendered == b'{\n   "panels": [ ],\n   "title": "board"\n}\n'
    assert sorted(result.consumer_files) == [KUSTOMIZATION_FILE_NAME]
    assert result.objects_summary == (
        "rendered.json is not Kubernetes objects ($.title: a string, not a Kubernetes "
        "object), a Kustomization of this artifact fails"
    )
    kustomization = result.consumer_files[KUSTOMIZATION_FILE_NAME].decode()
    assert f"# {result.objects_summary}\n" in kustomization
    assert yaml.safe_load(kustomization)["resources"] == [NO_OBJECTS_RESOURCE]


def test_a_discarded_output_comes_without_output_or_files(worker: Worker) -> None:
    assert recv_frame(worker.sock) is not None
    header, payload = evaluate(worker, b"{apiVersion: 'v1'}", discard_output=True)
    assert payload == b""
    result = EvaluationResult.from_frame(header, payload)
    assert (result.rendered, result.consumer_files, result.objects_summary) == (b"", {}, "")
    assert result.size == len(b'{\n   "apiVersion": "v1"\n}\n')


def test_an_output_over_the_cap_is_refused_before_its_files_are_computed(
    worker: Worker,
) -> None:
    assert recv_frame(worker.sock) is not None
    header, payload = evaluate(worker, b"[1, 2]", max_output_bytes=5)
    assert (header, payload) == (
        {
            "type": ERROR,
            "message": "rendered.json would be 15 bytes, over the 5-byte limit",
            "retire": False,
            "reason": "ArtifactTooLarge",
        },
        b"",
    )
    # The worker goes on serving.
    assert rendered(evaluate(worker, b"[1, 2]", max_output_bytes=15)) == b"[\n   1,\n   2\n]\n"


def test_a_consumer_file_over_the_per_file_cap_is_refused_in_the_evaluator() -> None:
    # rendered.json holds U+2713 as 3 UTF-8 bytes, objects.yaml as the 6 of \u2713.
    source = (
        b"{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'x'}, "
        b"data: {v: std.repeat('\xe2\x9c\x93', 2900000)}}"
    )
    request = EvaluationRequest("main.jsonnet", {"main.jsonnet": source}, max_output_bytes=16 * MiB)
    with pytest.raises(ReasonError) as info:
        evaluate_here(request)
    assert info.value.reason is Reason.ARTIFACT_TOO_LARGE
    assert info.value.message == (
        "objects.yaml (written beside rendered.json for kustomize) would be 17400183 bytes, "
        "over the 16777216-byte per-file limit consumers can extract"
    )


def test_a_result_too_large_for_a_relayed_frame_is_refused_before_it_is_sent() -> None:
    summary = "x" * (MAX_HEADER - RELAY_HEADROOM)  # the header around it tips it over
    result = EvaluationResult(b"1\n", 0.0, 1, 0, {"kustomization.yaml": b"k"}, summary)
    left, right = socket.socketpair()
    with left, right:
        send_result(left, result)
        frame = recv_frame(right)
    assert frame is not None
    header, payload = frame
    assert header["type"] == ERROR
    assert header["reason"] == "ArtifactTooLarge"
    assert str(header["message"]).startswith(
        "the evaluation result cannot be sent from the evaluator: frame too large"
    )
    assert payload == b""


def test_shared_libraries_are_kept_and_the_requests_own_alias_wins(worker: Worker) -> None:
    assert recv_frame(worker.sock) is not None
    send_frame(worker.sock, *libraries_frame({"shared": {"main.libsonnet": b"'shared'"}}))
    assert recv_frame(worker.sock) == ({"type": LOADED, "aliases": ["shared"]}, b"")
    send_frame(worker.sock, *libraries_frame({"util": {"main.libsonnet": b"'shared util'"}}))
    assert recv_frame(worker.sock) == ({"type": LOADED, "aliases": ["shared", "util"]}, b"")
    for _ in range(2):  # kept across requests, not consumed by the first
        frame = evaluate(worker, b"[import 'shared', import 'util']")
        assert rendered(frame) == b'[\n   "shared",\n   "shared util"\n]\n'
    own = EvaluationRequest(
        "main.jsonnet",
        {"main.jsonnet": b"[import 'shared', import 'util']"},
        libraries={"util": {"main.libsonnet": b"'own util'"}},
    )
    send_frame(worker.sock, *own.to_frame())
    reply = recv_frame(worker.sock)
    assert reply is not None
    assert rendered(reply) == b'[\n   "shared",\n   "own util"\n]\n'


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


@pytest.mark.parametrize(("engine", "says"), [("v8", "unknown engine 'v8'"), ("go-jsonnet", None)])
def test_a_worker_starts_only_with_an_engine_it_can_load(engine: str, says: str | None) -> None:
    started = Worker("--engine", engine)
    try:
        if says is None:
            frame = recv_frame(started.sock)
            assert frame is not None
            assert frame[0]["type"] == "ready"
            return
        assert started.process.wait(timeout=60) == 4
        assert started.process.stderr is not None
        assert says in started.process.stderr.read().decode()
        assert recv_frame(started.sock) is None  # it never said ready
    finally:
        started.close()
