"""List-and-watch of one resource type into an in-memory store (a reflector).

Semantics follow client-go's reflector: a paginated LIST fills the store and
yields the resourceVersion to WATCH from; BOOKMARK events advance it; an
expired resourceVersion (410 Gone, as an HTTP status or as an ERROR event)
triggers a fresh LIST whose differences against the store are delivered as
events; dropped connections and read time-outs reconnect from the last seen
resourceVersion with capped exponential backoff. kubernetes_asyncio's own
``Watch`` re-raises 410 instead of re-listing, hence this module.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import aiohttp
import orjson

from jaas.backoff import Backoff
from jaas.operator.kube import KubeApiError, KubeClient, Obj

log = logging.getLogger(__name__)

Key = tuple[str, str]


class EventType(StrEnum):
    """What happened to an object."""

    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Event:
    """One change: ``old`` is the previous stored object (``None`` for ADDED)."""

    type: EventType
    key: Key
    old: Obj | None
    new: Obj | None


Handler = Callable[[Event], None]
Filter = Callable[[Obj], bool]


def object_key(obj: Obj) -> Key:
    """``(namespace, name)`` of an object (namespace ``""`` for cluster-scoped)."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _resource_version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    """Keeps ``store`` in sync with the API server for one resource collection.

    ``path`` is the collection path (e.g. ``/apis/jaas.metio.wtf/v1/jsonnetsnippets``);
    ``handler`` is called synchronously on the event loop for every change;
    ``accept`` filters which objects are stored at all (e.g. a shard's
    namespaces); ``params`` are added to every LIST and WATCH (e.g.
    ``labelSelector``, applied by the API server). ``page_size`` is the LIST
    page size, ``watch_timeout`` the
    server-side watch duration (seconds; each watch asks for a random value
    between it and twice it, as client-go does, so watches do not renew in
    lockstep), ``read_timeout`` the longest silence tolerated on a watch before
    it is treated as half-dead (default: the watch duration plus a minute; an
    idle collection gets neither events nor bookmarks).
    """

    def __init__(
        self,
        client: KubeClient,
        path: str,
        handler: Handler,
        *,
        accept: Filter | None = None,
        params: Mapping[str, str] | None = None,
        page_size: int = 500,
        watch_timeout: int = 300,
        read_timeout: float | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.client = client
        self.path = path
        self.handler = handler
        self.accept = accept or (lambda _obj: True)
        #: Extra LIST/WATCH parameters applied server-side (``labelSelector``).
        self.params = dict(params or {})
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.read_timeout = read_timeout if read_timeout is not None else 2 * watch_timeout + 60
        self.max_backoff = max_backoff
        self.store: dict[Key, Obj] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        #: Counters for metrics and tests: lists, watches opened, 410s seen, errors.
        self.stats = {"lists": 0, "watches": 0, "expired": 0, "errors": 0}

    def get(self, namespace: str, name: str) -> Obj | None:
        """The stored object, or ``None``."""
        return self.store.get((namespace, name))

    def values(self) -> Iterable[Obj]:
        """All stored objects."""
        return self.store.values()

    def _emit(self, event: Event) -> None:
        try:
            self.handler(event)
        except Exception:
            log.exception("informer handler failed", extra={"path": self.path})

    def _apply(self, type_: EventType, obj: Obj) -> None:
        key = object_key(obj)
        old = self.store.get(key)
        if type_ is EventType.DELETED or not self.accept(obj):
            if old is not None:
                del self.store[key]
                self._emit(Event(EventType.DELETED, key, old, None))
            return
        self.store[key] = obj
        if old is None:
            self._emit(Event(EventType.ADDED, key, None, obj))
        elif _resource_version(old) != _resource_version(obj):
            self._emit(Event(EventType.MODIFIED, key, old, obj))

    def refilter(self) -> None:
        """Drop stored objects that ``accept`` no longer takes (after an ownership change).

        Objects newly accepted are picked up by the next ``resync`` LIST.
        """
        for obj in list(self.store.values()):
            if not self.accept(obj):
                self._apply(EventType.DELETED, obj)

    async def _list(self) -> None:
        items: dict[Key, Obj] = {}
        cont: str | None = None
        while True:
            page = await self.client.request(
                "GET", self.path, params={**self.params, "limit": self.page_size, "continue": cont}
            )
            for obj in page.get("items") or []:
                items[object_key(obj)] = obj
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or None
            if not cont:
                self.resource_version = str(meta.get("resourceVersion") or "")
                break
        self.stats["lists"] += 1
        for key in [k for k in self.store if k not in items]:
            self._apply(EventType.DELETED, self.store[key])
        for obj in items.values():
            self._apply(EventType.ADDED, obj)
        self.synced.set()

    async def _watch(self) -> None:
        params = {
            **self.params,
            "watch": True,
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": random.randint(self.watch_timeout, 2 * self.watch_timeout),
        }
        self.stats["watches"] += 1
        async with self.client.stream(self.path, params, read_timeout=self.read_timeout) as resp:
            async for line in _lines(resp):
                event = orjson.loads(line)
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    code = int(obj.get("code") or 0)
                    raise KubeApiError(code, str(obj.get("reason")), str(obj.get("message")))
                rv = _resource_version(obj)
                if rv:
                    self.resource_version = rv
                if etype in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(EventType(etype), obj)

    async def run(self) -> None:
        """List, then watch forever; returns only when cancelled."""
        retries = Backoff(0.5, self.max_backoff, jitter=0.5).retries()
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                retries.reset()  # a watch that ends normally (timeoutSeconds) is healthy
            except asyncio.CancelledError:
                raise
            except KubeApiError as err:
                if err.gone:
                    self.stats["expired"] += 1
                    log.info("watch expired, re-listing", extra={"path": self.path})
                    need_list = True
                    continue
                self.stats["errors"] += 1
                if err.resource_not_served and need_list and not self.synced.is_set():
                    # The resource type is not served (e.g. Flux is not installed
                    # yet): count as synced and empty, and keep trying, so the
                    # watch engages by itself once the CRD appears.
                    log.warning(
                        "%s is not served; retrying until its CRD is installed",
                        self.path,
                        extra={"path": self.path},
                    )
                    self.synced.set()
                else:
                    log.warning("watch failed: %s", err, extra={"path": self.path})
                need_list = need_list or err.status >= 500
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
                self.stats["errors"] += 1
                log.info(
                    "watch interrupted (%s), reconnecting",
                    type(err).__name__,
                    extra={"path": self.path},
                )
            except Exception:
                # Anything else (an event-loop transport bug, say) must not end
                # the watch for good: log it, re-list and keep going.
                self.stats["errors"] += 1
                log.exception("watch failed unexpectedly; re-listing", extra={"path": self.path})
                need_list = True
            await asyncio.sleep(retries.next())


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Split a watch body into lines without a per-line size limit.

    aiohttp's ``readline`` caps a line at its read buffer; a watch event of a
    large object (etcd allows 1.5 MiB, more with compression) must not break
    the stream.
    """
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if end > start:
                yield bytes(buf[start:end])
            start = end + 1
        del buf[:start]
    if buf.strip():
        yield bytes(buf)
