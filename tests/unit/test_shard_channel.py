"""The leader↔shard channel relays evaluation requests and results without unpacking them."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from jaas import ipc
from jaas.api.reasons import Reason, ReasonError
from jaas.evaluator.request import EvaluationRequest, EvaluationResult, EvaluatorBusy
from jaas.ipc import Header
from jaas.shards.channel import Evaluate, LeaderConnection, ShardEndpoint

RESULT = EvaluationResult(
    b'{\n   "kind": "ConfigMap"\n}\n',
    0.25,
    4242,
    0,
    {"kustomization.yaml": b"resources:\n- objects.yaml\n", "objects.yaml": b"---\n{}\n"},
    "1 Kubernetes object",
)
REQUEST = EvaluationRequest("main.jsonnet", {"main.jsonnet": b"{}"}, label="team-a/s")


@pytest_asyncio.fixture
async def socket_dir() -> AsyncIterator[Path]:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="jaas-channel-") as directory:
        yield Path(directory)


async def connected(socket_dir: Path, evaluate: Evaluate) -> tuple[ShardEndpoint, LeaderConnection]:
    endpoint = ShardEndpoint(
        socket_dir / "leader.sock", evaluate, on_ready=lambda _: None, on_gone=lambda _: None
    )
    await endpoint.start()
    shard = LeaderConnection(socket_dir / "leader.sock", "shard-0")
    await shard.connect()
    return endpoint, shard


async def test_the_workers_result_frame_reaches_the_shard_as_encoded(socket_dir: Path) -> None:
    relayed: list[tuple[Header, bytes]] = []

    async def evaluate(header: Header, payload: bytes) -> tuple[Header, bytes]:
        assert EvaluationRequest.from_frame(header, payload) == REQUEST
        frame = RESULT.to_frame()
        relayed.append(frame)
        return frame

    endpoint, shard = await connected(socket_dir, evaluate)
    try:
        assert await shard.evaluate(REQUEST) == RESULT
    finally:
        await shard.close()
        await endpoint.close()
    [(header, payload)] = relayed
    assert header["files"] == [["kustomization.yaml", 26], ["objects.yaml", 7]]
    assert payload == RESULT.rendered + b"resources:\n- objects.yaml\n---\n{}\n"


async def test_a_result_too_large_to_relay_is_artifact_too_large_for_the_shard(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ipc, "MAX_HEADER", 4000)
    # Fits the worker's frame, not the leader's header around it.
    header, payload = RESULT.to_frame()
    header["objects"] = "x" * (4000 - len(orjson.dumps(header)) + len(header["objects"]))
    assert len(orjson.dumps(header)) == ipc.MAX_HEADER

    async def evaluate(_header: Header, _payload: bytes) -> tuple[Header, bytes]:
        return header, payload

    endpoint, shard = await connected(socket_dir, evaluate)
    try:
        with pytest.raises(ReasonError) as info:
            await shard.evaluate(REQUEST)
        assert info.value.reason is Reason.ARTIFACT_TOO_LARGE
        assert not info.value.transient
        assert info.value.message.startswith(
            "the evaluation result cannot be relayed to the shard: frame too large"
        )
        # The channel still works.
        small = RESULT.to_frame()
        endpoint.evaluate = lambda _h, _p: _answer(small)
        assert await shard.evaluate(REQUEST) == RESULT
    finally:
        await shard.close()
        await endpoint.close()


async def _answer(frame: tuple[Header, bytes]) -> tuple[Header, bytes]:
    return frame


async def test_a_busy_pool_reaches_the_shard_as_busy_not_as_a_failure(socket_dir: Path) -> None:
    async def evaluate(header: Header, payload: bytes) -> tuple[Header, bytes]:
        raise EvaluatorBusy("all 2 evaluators are busy")

    endpoint, shard = await connected(socket_dir, evaluate)
    try:
        with pytest.raises(EvaluatorBusy, match="all 2 evaluators are busy"):
            await shard.evaluate(REQUEST)
    finally:
        await shard.close()
        await endpoint.close()
