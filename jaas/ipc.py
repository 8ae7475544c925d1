"""Length-prefixed message frames between jaas processes.

A frame is a JSON header (a dict, encoded with orjson) plus an optional raw
byte payload, so that large bodies (Jsonnet files, rendered JSON) travel
without base64 or JSON escaping::

    !II  header length, payload length   (8 bytes, big endian)
    header bytes                          (orjson-encoded dict)
    payload bytes

The same framing is used over asyncio streams (leader and shard workers) and
over blocking sockets (evaluator processes, which never run an event loop).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import orjson

_PREFIX = struct.Struct("!II")
#: Upper bound for one header (bytes); a larger one means a corrupt stream.
MAX_HEADER = 16 * 1024 * 1024
#: Upper bound for one payload (bytes).
MAX_PAYLOAD = 1024 * 1024 * 1024
#: Header bytes the sender of a frame that will be relayed inside another
#: frame's header leaves free below ``MAX_HEADER`` (an evaluator's ``result``,
#: which the leader wraps in its own header for a shard).
RELAY_HEADROOM = 4096

Header = dict[str, Any]


class FrameError(Exception):
    """The peer sent something that is not a valid frame, or closed mid-frame."""


def _encode_prefix_and_header(header: Header, payload_size: int, headroom: int) -> bytes:
    head = orjson.dumps(header)
    if len(head) > MAX_HEADER - headroom or payload_size > MAX_PAYLOAD:
        raise FrameError(
            f"frame too large: header {len(head)} B (at most {MAX_HEADER - headroom} B), "
            f"payload {payload_size} B (at most {MAX_PAYLOAD} B)"
        )
    return _PREFIX.pack(len(head), payload_size) + head


def encode_frame(header: Header, payload: bytes = b"", *, headroom: int = 0) -> bytes:
    """Return the wire bytes of one frame.

    Args:
        header: the frame's header (JSON-serialisable).
        payload: the frame's raw body.
        headroom: header bytes to leave free below ``MAX_HEADER`` (see
            ``RELAY_HEADROOM``).

    Raises:
        FrameError: the header exceeds ``MAX_HEADER - headroom`` or the
            payload ``MAX_PAYLOAD``.
    """
    return _encode_prefix_and_header(header, len(payload), headroom) + payload


def _decode_lengths(prefix: bytes) -> tuple[int, int]:
    head_len, payload_len = _PREFIX.unpack(prefix)
    if head_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
        raise FrameError(f"frame too large: header {head_len} B, payload {payload_len} B")
    return head_len, payload_len


def _decode_header(head: bytes) -> Header:
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError as err:
        raise FrameError(f"frame header is not JSON: {err}") from err
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    return header


def decode_frame(data: bytes) -> tuple[Header, bytes]:
    """Split the bytes of exactly one frame (``encode_frame``'s output) into header and payload.

    Used for frames kept at rest (file trees and render results in the
    artifact cache, ``jaas.evaluator.trees``) rather than read from a stream.

    Raises:
        FrameError: ``data`` is shorter or longer than the frame it starts
            with, or the frame is malformed.
    """
    if len(data) < _PREFIX.size:
        raise FrameError("data ends inside a frame prefix")
    head_len, payload_len = _decode_lengths(data[: _PREFIX.size])
    end = _PREFIX.size + head_len + payload_len
    if len(data) != end:
        raise FrameError(f"frame of {end} bytes stored as {len(data)} bytes")
    header = _decode_header(data[_PREFIX.size : _PREFIX.size + head_len])
    return header, data[_PREFIX.size + head_len :]


async def read_frame(reader: asyncio.StreamReader) -> tuple[Header, bytes] | None:
    """Read one frame from an asyncio stream; ``None`` on a clean end of stream.

    Raises:
        FrameError: the stream ended inside a frame or the frame is malformed.
    """
    try:
        prefix = await reader.readexactly(_PREFIX.size)
    except asyncio.IncompleteReadError as err:
        if not err.partial:
            return None
        raise FrameError("stream ended inside a frame prefix") from err
    head_len, payload_len = _decode_lengths(prefix)
    try:
        head = await reader.readexactly(head_len)
        payload = await reader.readexactly(payload_len) if payload_len else b""
    except asyncio.IncompleteReadError as err:
        raise FrameError("stream ended inside a frame") from err
    return _decode_header(head), payload


def write_frame(writer: asyncio.StreamWriter, header: Header, payload: bytes = b"") -> None:
    """Queue one frame on an asyncio stream (call ``await writer.drain()`` to flow-control)."""
    writer.write(encode_frame(header, payload))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    view = bytearray(size)
    got = 0
    while got < size:
        n = sock.recv_into(memoryview(view)[got:], size - got)
        if n == 0:
            if got == 0:
                raise EOFError
            raise FrameError("socket closed inside a frame")
        got += n
    return bytes(view)


def recv_frame(sock: socket.socket) -> tuple[Header, bytes] | None:
    """Read one frame from a blocking socket; ``None`` on a clean end of stream.

    Raises:
        FrameError: the socket closed inside a frame or the frame is malformed.
    """
    try:
        prefix = _recv_exactly(sock, _PREFIX.size)
    except EOFError:
        return None
    head_len, payload_len = _decode_lengths(prefix)
    try:
        head = _recv_exactly(sock, head_len)
        payload = _recv_exactly(sock, payload_len) if payload_len else b""
    except EOFError as err:
        raise FrameError("socket closed inside a frame") from err
    return _decode_header(head), payload


def send_frame(
    sock: socket.socket, header: Header, payload: bytes = b"", *, headroom: int = 0
) -> None:
    """Write one frame to a blocking socket (the payload is sent without a copy).

    Raises:
        FrameError: as ``encode_frame``, before anything is written.
    """
    sock.sendall(_encode_prefix_and_header(header, len(payload), headroom))
    if payload:
        sock.sendall(payload)
