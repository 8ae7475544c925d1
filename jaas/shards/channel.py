"""The control channel between the leader and its shard workers (a Unix socket).

Frames (``jaas.ipc``) flow both ways over one connection per shard:

shard → leader
    ``{"op": "hello", "shard": name, "pid": pid}`` first, then
    ``{"op": "ready"}`` once its informers have synced,
    ``{"op": "heartbeat", ...progress}`` every couple of seconds from its event loop, and
    ``{"op": "evaluate", "id": n, "request": {...}}`` + payload for each evaluation.
leader → shard
    ``{"op": "result", "id": n, "ok": true, "result": {...}}`` + payload, or
    ``{"op": "result", "id": n, "ok": false, "reason": ..., "message": ...}``, or
    ``{"op": "result", "id": n, "ok": false, "busy": true, "message": ...}`` when
    the pool refused to queue the request (``EvaluatorBusy``: ask again later), or
    ``{"op": "result", "id": n, "ok": false, "missing": [digest, ...]}`` when
    the evaluator could not read file trees named by digest (``TreesMissing``:
    send them inline).

An evaluation's request and result cross the leader without being unpacked:
the shard's ``evaluate`` frame carries an ``EvaluationRequest.to_frame``
header and payload, which the pool sends to a worker as they are, and the
worker's ``result`` frame (``EvaluationResult.to_frame``: rendered.json and
the files published beside it) comes back as the ``result`` header and the
payload. Frame size limits (``jaas.ipc``) are checked before anything is
written or buffered: a request or result over them is ``ArtifactTooLarge``.

Evaluation thus stays in the leader's evaluator pool (design.md §3): a shard
never runs rjsonnet itself, and the pool is shared by every shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from jaas.api.reasons import Reason, ReasonError
from jaas.evaluator.request import (
    EvaluationRequest,
    EvaluationResult,
    EvaluatorBusy,
    TreesMissing,
)
from jaas.ipc import FrameError, Header, read_frame, write_frame
from jaas.observability import tracing

log = logging.getLogger(__name__)

#: Evaluates an encoded request (``EvaluationRequest.to_frame`` output) and
#: returns the encoded result (``EvaluationResult.to_frame`` output), e.g.
#: ``EvaluatorPool.evaluate_frame``: the leader relays both without unpacking them.
Evaluate = Callable[[Header, bytes], Awaitable[tuple[Header, bytes]]]


class LeaderConnection:
    """The shard side: evaluates through the leader; ``lost`` is set when the leader goes away."""

    def __init__(self, socket_path: Path, shard: str) -> None:
        self.socket_path = socket_path
        self.shard = shard
        self.lost = asyncio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[Header, bytes]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Connect and say hello.

        Raises:
            OSError: the leader socket is not there.
        """
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        self._writer = writer
        write_frame(writer, {"op": "hello", "shard": self.shard, "pid": os.getpid()})
        await writer.drain()
        self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (frame := await read_frame(reader)) is not None:
                header, payload = frame
                future = self._pending.pop(int(header.get("id") or 0), None)
                if future is not None and not future.done():
                    future.set_result((header, payload))
        except (FrameError, OSError) as err:
            log.error("leader channel broken: %s", err)
        finally:
            self.lost.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the leader process went away"))
            self._pending.clear()

    async def send_heartbeat(self, progress: Header) -> None:
        """Report that this shard's event loop runs, with its reconcile ``progress``."""
        if self._writer is not None and not self.lost.is_set():
            write_frame(self._writer, {"op": "heartbeat", **progress})
            await self._writer.drain()

    async def send_ready(self) -> None:
        """Tell the leader this shard's informers have synced."""
        if self._writer is not None:
            write_frame(self._writer, {"op": "ready"})
            await self._writer.drain()

    async def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        """Evaluate ``request`` in the leader's pool.

        Raises:
            ReasonError: EvaluationFailed / EvaluationTimeout / ArtifactTooLarge
                from the pool; ArtifactTooLarge when the request exceeds the
                frame limits (``jaas.ipc``).
            EvaluatorBusy: the pool refused to queue the request (ask later).
            TreesMissing: the evaluator lacks trees named by digest (send inline).
            ConnectionError: the leader went away (a transient failure).
            FrameError: the result frame is malformed (a bug, not user input).
        """
        if self._writer is None or self.lost.is_set():
            raise ConnectionError("not connected to the leader process")
        request_id = next(self._ids)
        future: asyncio.Future[tuple[Header, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        req_header, payload = request.to_frame()
        # The leader's evaluate span (and the evaluator's) continue this trace.
        tracing.inject(req_header)
        try:
            write_frame(
                self._writer, {"op": "evaluate", "id": request_id, "request": req_header}, payload
            )
        except FrameError as err:
            # Checked before anything is written: the request is refused, not buffered.
            del self._pending[request_id]
            raise ReasonError(
                Reason.ARTIFACT_TOO_LARGE,
                f"the snippet's files and libraries ({len(payload)} bytes) do not fit one "
                f"evaluation request: {err}",
            ) from err
        await self._writer.drain()
        header, body = await future
        if header.get("ok"):
            return EvaluationResult.from_frame(header["result"], body)
        if header.get("busy"):
            raise EvaluatorBusy(str(header.get("message") or "every evaluator is busy"))
        if header.get("missing"):
            raise TreesMissing([str(digest) for digest in header["missing"]])
        raise ReasonError(
            Reason(str(header.get("reason") or Reason.EVALUATION_FAILED)),
            str(header.get("message") or "evaluation failed"),
            transient=bool(header.get("transient")),
        )

    async def close(self) -> None:
        """Close the connection."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


class ShardEndpoint:
    """The leader side: serves evaluations for every connected shard.

    ``on_ready(shard)`` and ``on_gone(shard)`` let the leader track readiness,
    ``on_heartbeat(shard, header)`` its liveness.
    """

    def __init__(
        self,
        socket_path: Path,
        evaluate: Evaluate,
        *,
        on_ready: Callable[[str], None],
        on_gone: Callable[[str], None],
        on_heartbeat: Callable[[str, Header], None] = lambda _shard, _header: None,
    ) -> None:
        self.socket_path = socket_path
        self.evaluate = evaluate
        self.on_ready = on_ready
        self.on_gone = on_gone
        self.on_heartbeat = on_heartbeat
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on the socket path (replacing a stale socket file)."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, str(self.socket_path))
        self.socket_path.chmod(0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        shard = "?"
        try:
            first = await read_frame(reader)
            if first is None or first[0].get("op") != "hello":
                return
            shard = str(first[0].get("shard"))
            while (frame := await read_frame(reader)) is not None:
                header, payload = frame
                op = header.get("op")
                if op == "ready":
                    self.on_ready(shard)
                elif op == "heartbeat":
                    self.on_heartbeat(shard, header)
                elif op == "evaluate":
                    task = asyncio.create_task(self._evaluate(writer, header, payload))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except (FrameError, OSError) as err:
            log.warning("channel of %s broken: %s", shard, err)
        finally:
            self.on_gone(shard)
            writer.close()

    async def _evaluate(self, writer: asyncio.StreamWriter, header: Header, payload: bytes) -> None:
        request_id = header.get("id")
        try:
            request = header.get("request")
            if not isinstance(request, dict):
                raise ReasonError(Reason.EVALUATION_FAILED, "malformed evaluate frame")
            res_header, body = await self.evaluate(request, payload)
            reply = {"op": "result", "id": request_id, "ok": True, "result": res_header}
            try:
                write_frame(writer, reply, body)
            except FrameError as err:
                # Checked before anything is buffered. The worker leaves
                # ipc.RELAY_HEADROOM for this header, so this is a backstop.
                raise ReasonError(
                    Reason.ARTIFACT_TOO_LARGE,
                    f"the evaluation result cannot be relayed to the shard: {err}",
                ) from err
        except EvaluatorBusy as err:
            reply = {"op": "result", "id": request_id, "ok": False, "busy": True}
            write_frame(writer, {**reply, "message": str(err)})
        except TreesMissing as err:
            reply = {"op": "result", "id": request_id, "ok": False}
            write_frame(writer, {**reply, "missing": list(err.digests)})
        except ReasonError as err:
            write_frame(
                writer,
                {
                    "op": "result",
                    "id": request_id,
                    "ok": False,
                    "reason": err.reason.value,
                    "message": err.message,
                    "transient": err.transient,
                },
            )
        except Exception as err:
            log.exception("evaluation request failed")
            write_frame(
                writer,
                {
                    "op": "result",
                    "id": request_id,
                    "ok": False,
                    "reason": Reason.EVALUATION_FAILED.value,
                    "message": f"internal error in the evaluator pool: {err}",
                    "transient": True,
                },
            )
        with contextlib.suppress(OSError):
            await writer.drain()

    async def close(self) -> None:
        """Stop listening and cancel outstanding evaluations."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
