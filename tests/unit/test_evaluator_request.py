"""Evaluation requests and results survive their ``jaas.ipc`` frames unchanged."""

from __future__ import annotations

import socket

import pytest

from jaas.api.models import JsonnetVariable
from jaas.evaluator.request import (
    ERROR,
    EVALUATE,
    LIBRARIES,
    RESULT,
    EvaluationRequest,
    EvaluationResult,
    error_header,
    libraries_frame,
    libraries_from_frame,
)
from jaas.ipc import FrameError, Header, recv_frame, send_frame


def through_socket(header: Header, payload: bytes) -> tuple[Header, bytes]:
    left, right = socket.socketpair()
    with left, right:
        send_frame(left, header, payload)
        frame = recv_frame(right)
    assert frame is not None
    return frame


def test_request_round_trip_keeps_files_libraries_and_variables() -> None:
    request = EvaluationRequest(
        entry_file="env/main.jsonnet",
        files={
            "env/main.jsonnet": b"{}",
            "empty.libsonnet": b"",
            "ünï/cödé.libsonnet": "'é'".encode(),
            "blob.bin": bytes(range(256)),
        },
        tlas=(JsonnetVariable("env", "prod"), JsonnetVariable("n", "[1, 2]", code=True)),
        external_variables=(JsonnetVariable("cluster", "eu-1"), JsonnetVariable("x", "{}", True)),
        libraries={"grafonnet": {"main.libsonnet": b"{a: 1}"}, "empty": {}},
        max_stack=321,
        label="team-a/dashboards",
    )
    header, payload = request.to_frame()
    assert header["type"] == EVALUATE
    # File contents travel raw in the payload, not in the JSON header.
    assert len(payload) == 2 + 0 + len("'é'".encode()) + 256 + len(b"{a: 1}")
    assert EvaluationRequest.from_frame(*through_socket(header, payload)) == request


def test_result_round_trip() -> None:
    result = EvaluationResult(b'{\n   "a": 1\n}\n', 0.125, 4242)
    assert EvaluationResult.from_frame(*through_socket(*result.to_frame())) == result
    discarded = EvaluationResult(b"", 0.5, 7, discarded_bytes=1003)
    assert EvaluationResult.from_frame(*through_socket(*discarded.to_frame())) == discarded


def test_result_frame_carries_consumer_files_raw_after_the_output() -> None:
    rendered = b'{\n   "kind": "ConfigMap"\n}\n'
    files = {"kustomization.yaml": b"resources:\n- objects.yaml\n", "objects.yaml": b"---\n{}\n"}
    result = EvaluationResult(rendered, 0.25, 99, 0, files, "1 Kubernetes object")
    header, payload = result.to_frame()
    assert header == {
        "type": RESULT,
        "seconds": 0.25,
        "pid": 99,
        "discarded_bytes": 0,
        "rendered": len(rendered),
        "files": [["kustomization.yaml", 26], ["objects.yaml", 7]],
        "objects": "1 Kubernetes object",
    }
    assert payload == rendered + files["kustomization.yaml"] + files["objects.yaml"]
    assert EvaluationResult.from_frame(*through_socket(header, payload)) == result
    with pytest.raises(FrameError, match="more bytes than its payload"):
        EvaluationResult.from_frame(header, payload[:-1])
    with pytest.raises(FrameError, match="stray payload bytes"):
        EvaluationResult.from_frame(header, payload + b"x")
    with pytest.raises(FrameError, match="more bytes than its payload"):
        EvaluationResult.from_frame({**header, "rendered": len(payload) + 1}, payload)
    with pytest.raises(FrameError, match="malformed result frame"):
        EvaluationResult.from_frame({**header, "files": None}, payload)


def test_error_header() -> None:
    assert error_header("boom", retire=True) == {
        "type": ERROR,
        "message": "boom",
        "retire": True,
        "reason": "EvaluationFailed",
    }
    assert error_header("big", reason="ArtifactTooLarge")["reason"] == "ArtifactTooLarge"


def test_truncated_payload_is_a_frame_error() -> None:
    header, payload = EvaluationRequest("main.jsonnet", {"main.jsonnet": b"{a: 1}"}).to_frame()
    with pytest.raises(FrameError, match="more bytes than its payload"):
        EvaluationRequest.from_frame(header, payload[:-1])
    with pytest.raises(FrameError, match="stray payload bytes"):
        EvaluationRequest.from_frame(header, payload + b"x")
    with pytest.raises(FrameError, match="malformed evaluate frame"):
        EvaluationRequest.from_frame({"type": EVALUATE}, payload)


def test_libraries_frame_round_trip() -> None:
    libraries = {
        "examplonet": {"main.libsonnet": b"{a: 1}", "sub/x.json": b"[]"},
        "empty": {},
        "bin": {"blob.json": bytes(range(256))},
    }
    header, payload = libraries_frame(libraries)
    assert header["type"] == LIBRARIES
    assert len(payload) == len(b"{a: 1}") + 2 + 256
    assert libraries_from_frame(*through_socket(header, payload)) == libraries


def test_malformed_libraries_frame_is_a_frame_error() -> None:
    header, payload = libraries_frame({"lib": {"main.libsonnet": b"{}"}})
    with pytest.raises(FrameError, match="more bytes than its payload"):
        libraries_from_frame(header, payload[:-1])
    with pytest.raises(FrameError, match="stray payload bytes"):
        libraries_from_frame(header, payload + b"x")
    with pytest.raises(FrameError, match="malformed libraries frame"):
        libraries_from_frame({"type": LIBRARIES}, payload)
