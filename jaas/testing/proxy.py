"""A TCP proxy that tests can break on purpose: drop every connection, or stall them.

It forwards bytes unchanged (TLS passes through end to end), so a client that
talks to the API server through it sees exactly what a flaky network would
show: connections reset mid-stream (``drop``) or streams that go silent while
staying open (``stall`` / ``resume``).
"""

from __future__ import annotations

import asyncio
import contextlib


class ChaosProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> ChaosProxy:
        """Listen on a free loopback port (``self.port``)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))

    def drop(self) -> int:
        """Abort every open connection (both directions); return how many were cut."""
        writers = list(self._writers)
        for writer in writers:
            writer.transport.abort()
        self._writers.clear()
        return len(writers) // 2

    def stall(self) -> None:
        """Stop forwarding bytes; connections stay open but go silent."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward bytes again."""
        self._flowing.set()

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        self.resume()
        if self._server is not None:
            self._server.close()
        self.drop()
