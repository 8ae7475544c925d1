"""A shard's watch cache: informers for snippets, libraries and the Flux source kinds.

It watches with the operator's identity (as metio/jaas's manager cache does)
and keeps the objects a shard needs: everything in the namespaces it owns,
plus the objects of other namespaces that one of its snippets references
(``accept`` says which), so a cross-namespace reference is re-rendered when
its target changes even though another shard owns that namespace.

Scope narrowing is applied by the API server, as ``jaas operator`` flags
(metio/jaas ``--watch-namespaces``, ``--label-selector``): with watch
namespaces every kind is listed and watched per namespace instead of
cluster-wide; a label selector filters JsonnetSnippets and JsonnetLibraries
(not Flux sources, as in JaaS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

from jaas.api.constants import (
    FLUX_SOURCE_GROUP,
    FLUX_SOURCE_VERSION,
    GROUP,
    LIBRARY_KIND,
    LIBRARY_PLURAL,
    SNIPPET_KIND,
    SNIPPET_PLURAL,
    SOURCE_KIND_PLURALS,
    VERSION,
)
from jaas.operator.informer import Event, Informer
from jaas.operator.kube import KubeClient, Obj, resource_path

log = logging.getLogger(__name__)

#: Every kind the cache watches: ``kind -> (group, version, plural)``.
WATCHED_KINDS: dict[str, tuple[str, str, str]] = {
    SNIPPET_KIND: (GROUP, VERSION, SNIPPET_PLURAL),
    LIBRARY_KIND: (GROUP, VERSION, LIBRARY_PLURAL),
    **{
        kind: (FLUX_SOURCE_GROUP, FLUX_SOURCE_VERSION, plural)
        for kind, plural in SOURCE_KIND_PLURALS.items()
    },
}
_SELECTED_KINDS = (SNIPPET_KIND, LIBRARY_KIND)

#: ``accept(kind, obj)``: whether the cache keeps ``obj``.
Accept = Callable[[str, Obj], bool]
#: ``on_event(kind, event)``: called on the event loop for every change of a kept object.
OnEvent = Callable[[str, Event], None]


class ObjectCache:
    """Informers of every watched kind, filtered by ``accept``, reporting to ``on_event``.

    Args:
        client: the operator's client (watches use its identity).
        accept: which objects to keep (see module docstring).
        on_event: called for every ADDED / MODIFIED / DELETED of a kept object.
        namespaces: watch only these namespaces (empty: cluster-wide).
        label_selector: server-side filter of snippets and libraries ("" : none).
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        accept: Accept,
        on_event: OnEvent,
        namespaces: Sequence[str] = (),
        label_selector: str = "",
    ) -> None:
        self.namespaces = tuple(namespaces)
        self.label_selector = label_selector
        self._informers: dict[str, dict[str | None, Informer]] = {}
        for kind, (group, version, plural) in WATCHED_KINDS.items():
            params = {"labelSelector": label_selector} if label_selector else None
            if kind not in _SELECTED_KINDS:
                params = None
            self._informers[kind] = {
                ns: Informer(
                    client,
                    resource_path(group, version, plural, ns),
                    _bind_event(on_event, kind),
                    accept=_bind_accept(accept, kind),
                    params=params,
                )
                for ns in (self.namespaces or (None,))
            }
        self._tasks: list[asyncio.Task[None]] = []

    def _informer(self, kind: str, namespace: str) -> Informer | None:
        by_namespace = self._informers[kind]
        return by_namespace.get(namespace if self.namespaces else None)

    def informers(self) -> Iterator[Informer]:
        """Every informer, for start-up, metrics and tests."""
        for by_namespace in self._informers.values():
            yield from by_namespace.values()

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The cached object, or ``None`` (not cached is not "does not exist": see ``complete``)."""
        informer = self._informer(kind, namespace)
        return informer.get(namespace, name) if informer is not None else None

    def values(self, kind: str) -> Iterator[Obj]:
        """Every cached object of ``kind``."""
        for informer in self._informers[kind].values():
            yield from informer.values()

    def keys(self, kind: str) -> Iterator[tuple[str, str]]:
        """``(namespace, name)`` of every cached object of ``kind``."""
        for informer in self._informers[kind].values():
            yield from informer.store

    def complete(self, kind: str, namespace: str) -> bool:
        """Whether a miss for ``kind`` in ``namespace`` means the object does not exist.

        True when that namespace is watched, its informer has synced and no
        label selector hides objects of ``kind``; the caller must also know
        that ``accept`` keeps every object of the namespace (an owned one).
        """
        if self.label_selector and kind in _SELECTED_KINDS:
            return False
        informer = self._informer(kind, namespace)
        return informer is not None and informer.synced.is_set()

    def refilter(self) -> None:
        """Drop cached objects ``accept`` no longer keeps (after an ownership change)."""
        for informer in self.informers():
            informer.refilter()

    async def start(self, sync_timeout: float) -> None:
        """Start every informer and wait, at most ``sync_timeout`` seconds, for their first LIST.

        Snippets must have synced before this returns (their absence would
        look like deletions); other kinds that have not synced yet keep
        trying in the background (their CRD may be missing).
        """
        informers = list(self.informers())
        self._tasks = [asyncio.create_task(inf.run()) for inf in informers]
        try:
            async with asyncio.timeout(sync_timeout):
                await asyncio.gather(*(inf.synced.wait() for inf in informers))
        except TimeoutError:
            missing = [inf.path for inf in informers if not inf.synced.is_set()]
            log.warning("informers not synced after %ss: %s", sync_timeout, missing)
            await asyncio.gather(*(i.synced.wait() for i in self._informers[SNIPPET_KIND].values()))

    def watching(self) -> bool:
        """Whether every informer's list-and-watch loop is still running (after ``start``)."""
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    async def stop(self) -> None:
        """Stop every watch."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []


def _bind_event(on_event: OnEvent, kind: str) -> Callable[[Event], None]:
    return lambda event: on_event(kind, event)


def _bind_accept(accept: Accept, kind: str) -> Callable[[Obj], bool]:
    return lambda obj: accept(kind, obj)
