"""A shard worker process: reconciles the snippets of the namespaces it owns.

Started by the leader as ``jaas shard ...``; runs asyncio on uvloop, connects
to the leader's control socket (evaluations go through it), watches the API
and reconciles. It exits when the leader goes away, and on SIGTERM after
letting in-flight reconciles finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import uvloop

from jaas.observability import logging as jaas_logging
from jaas.operator.controller import ShardController
from jaas.operator.events import EventRecorder
from jaas.operator.kube import connect
from jaas.operator.publisher import Publisher
from jaas.operator.reconciler import ReconcilerOptions, SnippetReconciler
from jaas.options import OperatorOptions
from jaas.shards.assignment import RingAssignment
from jaas.shards.channel import LeaderConnection
from jaas.sources.cache import ArtifactCache
from jaas.sources.fetch import ArtifactFetcher
from jaas.storage.local import LocalStore

log = logging.getLogger(__name__)


async def run_shard(
    options: OperatorOptions, shard: str, members: list[str], leader_socket: Path
) -> int:
    """Run one shard until SIGTERM or until the leader goes away; return the exit code."""
    leader = LeaderConnection(leader_socket, shard)
    await leader.connect()
    client = await connect(options.kubeconfig)
    cache = ArtifactCache(Path(options.cache_path), options.cache_max_bytes)
    fetcher = ArtifactFetcher(cache)
    store = LocalStore(Path(options.storage_path))
    assignment = RingAssignment(shard, members)
    reconciler_options = ReconcilerOptions(
        shard=shard,
        no_cross_namespace_refs=options.no_cross_namespace_refs,
        max_stack=options.max_stack,
        operator_ext_vars=options.ext_vars,
    )

    def make_reconciler(controller: ShardController) -> SnippetReconciler:
        return SnippetReconciler(
            client,
            get_snippet=controller.cached_snippet,
            get_source=controller.get_source,
            get_library=controller.get_library,
            fetcher=fetcher,
            evaluator=leader,
            publisher=Publisher(
                client,
                store,
                options.storage_base_url,
                gc_grace=options.artifact_gc_grace,
                cached=controller.cached_external_artifact,
            ),
            recorder=EventRecorder(client, shard),
            options=reconciler_options,
        )

    controller = ShardController(
        client, assignment, make_reconciler, concurrency=options.concurrent_reconciles
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await controller.start()
        await leader.send_ready()
        log.info("shard %s of %s started", shard, members)
        lost = asyncio.create_task(leader.lost.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
        code = 0 if stop.is_set() else 1
        if not stop.is_set():
            log.error("the leader process went away; shard %s exits", shard)
        lost.cancel()
        stopped.cancel()
    finally:
        await controller.stop()
        with contextlib.suppress(Exception):
            await fetcher.close()
        cache.close()
        await leader.close()
        await client.close()
    return code


def main(options: OperatorOptions, shard: str, members: list[str], leader_socket: Path) -> int:
    """Process entry point of ``jaas shard``."""
    jaas_logging.setup(shard, level=options.log_level, fmt=options.log_format)
    return uvloop.run(run_shard(options, shard, members, leader_socket))
