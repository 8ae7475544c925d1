"""An informer survives an unexpected exception in its watch: it re-lists and watches on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

from jaas.operator.informer import Event, Informer
from jaas.operator.kube import KubeClient


class FlakyWatchClient:
    """Lists one object; the first watch raises a RuntimeError, later ones stay open."""

    def __init__(self) -> None:
        self.lists = 0
        self.watches = 0
        self.second_watch = asyncio.Event()

    async def request(self, method: str, path: str, **_: Any) -> Any:
        self.lists += 1
        item = {"metadata": {"namespace": "ns", "name": "a", "resourceVersion": "1"}}
        return {"items": [item], "metadata": {"resourceVersion": "1"}}

    @contextlib.asynccontextmanager
    async def stream(self, path: str, params: Any, **_: Any) -> AsyncIterator[Any]:
        self.watches += 1
        if self.watches == 1:
            raise RuntimeError("File descriptor 32 is used by transport")
        self.second_watch.set()
        await asyncio.Event().wait()
        yield None  # pragma: no cover - never reached


async def test_an_unexpected_watch_error_relists_and_watches_again() -> None:
    client = FlakyWatchClient()
    events: list[Event] = []
    informer = Informer(cast(KubeClient, client), "/apis/x/v1/things", events.append)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(client.second_watch.wait(), 10)
        assert not task.done()
        assert client.lists == 2  # listed again after the unexpected failure
        assert informer.stats["errors"] == 1
        assert informer.get("ns", "a") is not None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
