"""The leader process of ``jaas operator``.

It owns everything that is per pod rather than per shard (design.md §3):

* the evaluator pool, which every shard evaluates through (``ShardEndpoint``);
* one supervised shard worker process per shard identity;
* the HTTP servers: artifacts (``--storage-port``), health
  (``--management-port``: ``/livez``, ``/readyz``, ``/startupz`` as
  Kubernetes' own components name them, and metio/jaas's ``/live``,
  ``/ready``, ``/start`` from ``internal/handler/health.go``) and Prometheus
  metrics (``/metrics``, the sum over every process of the operator).

Readiness means every shard has synced its watches. SIGTERM or SIGINT shut it
down in order: readiness turns false at once, the shards stop taking work and
finish their in-flight reconciles within ``--shutdown-timeout`` (evaluating
through the still running pool), then the pool, the control socket and the
HTTP servers stop and the last spans are exported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from jaas import defaults
from jaas.api.reasons import Reason, ReasonError
from jaas.child import python_module_argv
from jaas.evaluator.libraries import LibraryPathError, load_library_paths
from jaas.evaluator.pool import EvaluatorPool
from jaas.evaluator.rendercache import evaluator_fingerprint
from jaas.evaluator.request import EvaluatorBusy, TreesMissing
from jaas.ipc import Header
from jaas.observability import metrics, tracing
from jaas.observability.memory import resident_bytes
from jaas.options import OperatorOptions
from jaas.shards.assignment import local_shard_names
from jaas.shards.channel import ShardEndpoint
from jaas.shards.supervisor import Supervisor
from jaas.storage.local import LocalStore
from jaas.storage.server import add_artifact_routes

log = logging.getLogger(__name__)

#: Health endpoints on the management port: Kubernetes' names first, then
#: metio/jaas's (and ``/healthz``, which earlier jaas-py releases served).
HEALTH_PATHS: Final = {
    "live": ("/livez", "/live", "/healthz"),
    "ready": ("/readyz", "/ready"),
    "start": ("/startupz", "/start"),
}
#: Seconds a shard may take past ``--shutdown-timeout`` to close its clients and exit.
SHARD_EXIT_MARGIN: Final = 10.0


def _json(status: str, code: int = 200) -> web.Response:
    return web.json_response({"status": status}, status=code)


class Leader:
    """Runs one operator pod's worth of processes until told to stop."""

    def __init__(
        self,
        options: OperatorOptions,
        runtime_dir: Path,
        shared_libraries: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> None:
        self.options = options
        self.runtime_dir = runtime_dir
        self.shard_names = local_shard_names(options.shards)
        self.pool = EvaluatorPool(
            size=options.evaluators,
            timeout=options.evaluation_timeout,
            memory_limit=options.evaluation_memory_limit or None,
            max_stack=options.max_stack,
            shared_libraries=shared_libraries,
            engine=options.engine,
            cache_path=options.cache_path,
        )
        #: What about the pool shapes a render (``jaas.evaluator.rendercache``).
        self.evaluator_fingerprint = evaluator_fingerprint(
            options.engine, shared_libraries or {}, self.pool.max_stack
        )
        self.endpoint = ShardEndpoint(
            runtime_dir / "leader.sock",
            self._evaluate,
            on_ready=self._shard_ready,
            on_gone=self._shard_gone,
            on_heartbeat=self._shard_heartbeat,
        )
        #: shard -> (loop time of its last heartbeat, the progress it reported)
        self.heartbeats: dict[str, tuple[float, Header]] = {}
        #: shard -> why it was found wedged (cleared when its replacement is ready)
        self.wedged: dict[str, str] = {}
        self.ready_shards: set[str] = set()
        self._restarts_seen = 0
        self._background: list[asyncio.Task[None]] = []
        self.supervisors: dict[str, Supervisor] = {}
        self.started = False
        self.draining = False
        self._runners: list[web.AppRunner] = []
        self.stop_requested = asyncio.Event()
        #: What ``run`` returns: 1 after the leader stopped itself (``over_memory_limit``).
        self.exit_code = 0

    async def _sweep_storage(self) -> None:
        """Remove temporary files that a killed shard left in the store (JaaS sweeper)."""
        store = LocalStore(Path(self.options.storage_path))
        while True:
            await asyncio.sleep(self.options.storage_sweep_interval)
            try:
                removed = await asyncio.to_thread(store.sweep)
            except OSError as err:
                metrics.STORAGE_SWEEP_FAILURES.inc()
                log.warning("storage sweep failed: %s", err)
            else:
                if removed:
                    log.info("storage sweep removed %d abandoned temporary files", removed)

    async def _evaluate(self, header: Header, payload: bytes) -> tuple[Header, bytes]:
        """Evaluate a shard's encoded request; return the worker's result frame, relayed as is."""
        started = time.perf_counter()
        result = "failed"
        try:
            evaluated = await self.pool.evaluate_frame(header, payload)
            result = "ok"
            return evaluated
        except EvaluatorBusy:
            result = "busy"
            metrics.EVAL_UNAVAILABLE.inc()
            raise
        except TreesMissing:
            result = "trees_missing"
            raise
        except ReasonError as err:
            if err.reason is Reason.EVALUATION_TIMEOUT:
                result = "timeout"
            raise
        finally:
            metrics.EVALUATIONS_TOTAL.labels(result).inc()
            metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)
            restarts = self.pool.restarts
            if restarts > self._restarts_seen:
                metrics.EVALUATOR_RESTARTS.inc(restarts - self._restarts_seen)
                self._restarts_seen = restarts

    def _shard_ready(self, shard: str) -> None:
        self.wedged.pop(shard, None)
        self.heartbeats[shard] = (asyncio.get_running_loop().time(), {})
        self.ready_shards.add(shard)
        log.info("%s is ready (%d/%d)", shard, len(self.ready_shards), len(self.shard_names))

    def _shard_gone(self, shard: str) -> None:
        self.ready_shards.discard(shard)
        self.heartbeats.pop(shard, None)

    def _shard_heartbeat(self, shard: str, progress: Header) -> None:
        self.heartbeats[shard] = (asyncio.get_running_loop().time(), progress)

    def wedged_because(self, shard: str, now: float) -> str | None:
        """Why a ready shard counts as wedged at loop time ``now``, or None if it is live."""
        last = self.heartbeats.get(shard)
        if shard not in self.ready_shards or last is None:
            return None
        seen, progress = last
        silent = now - seen
        if silent > self.options.shard_heartbeat_timeout:
            return f"no heartbeat from its event loop for {silent:.0f}s"
        if progress.get("watching") is False:
            return "a watch of its informers stopped"
        rss = int(progress.get("rss_bytes") or 0)
        limit = self.options.shard_memory_limit
        if limit and rss > limit:
            return (
                f"resident memory {rss >> 20} MiB is over --shard-memory-limit ({limit >> 20} MiB)"
            )
        running = float(progress.get("oldest_in_flight") or 0)
        if running > defaults.SHARD_STUCK_RECONCILE:
            return f"a reconcile has been running for {running:.0f}s"
        return None

    def over_memory_limit(self, rss: int) -> str | None:
        """Why the leader, resident with ``rss`` bytes, must stop itself, or None."""
        limit = self.options.leader_memory_limit
        if limit and rss > limit:
            return (
                f"leader resident memory {rss >> 20} MiB is over --leader-memory-limit "
                f"({limit >> 20} MiB)"
            )
        return None

    async def _watchdog(self) -> None:
        """Restart every shard that is wedged (``wedged_because``); it is not ready meanwhile.

        Also watches the leader's own resident memory: over
        ``--leader-memory-limit`` it shuts down as on SIGTERM and ``run``
        returns 1, for the kubelet (or any supervisor) to start it again.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(defaults.SHARD_HEARTBEAT_INTERVAL)
            over = self.over_memory_limit(resident_bytes())
            if over is not None:
                log.error("%s; shutting down to be restarted", over)
                self.exit_code = 1
                self.stop_requested.set()
                return
            for shard, sup in self.supervisors.items():
                why = self.wedged_because(shard, loop.time())
                if why is None:
                    continue
                log.error("%s (pid %s) is wedged: %s; restarting it", shard, sup.pid, why)
                self.wedged[shard] = why
                self.ready_shards.discard(shard)
                self.heartbeats.pop(shard, None)
                metrics.SHARD_WEDGED.labels(shard).inc()
                sup.kill()

    @property
    def ready(self) -> bool:
        """All shards have synced their informers and we are not shutting down."""
        return not self.draining and self.ready_shards >= set(self.shard_names)

    def shard_argv(self, shard: str) -> list[str]:
        """Command line of one shard worker process."""
        return python_module_argv(
            "jaas",
            "shard",
            "--shard-name",
            shard,
            "--members",
            ",".join(self.shard_names),
            "--leader-socket",
            str(self.endpoint.socket_path),
            "--options",
            json.dumps(self.options.to_json()),
            "--evaluator-fingerprint",
            self.evaluator_fingerprint,
        )

    def _on_shard_exit(self, shard: str) -> Any:
        def on_exit(pid: int, code: int) -> None:
            metrics.mark_process_dead(pid)
            if not self.draining:
                metrics.SHARD_RESTARTS.labels(shard).inc()

        return on_exit

    # --- HTTP -----------------------------------------------------------------------------

    async def _live(self, _request: web.Request) -> web.Response:
        return _json("ok")

    async def _ready(self, _request: web.Request) -> web.Response:
        return _json("ok") if self.ready else _json("not_ready", 503)

    async def _start(self, _request: web.Request) -> web.Response:
        return _json("ok") if self.started else _json("not_started", 503)

    async def _shards(self, _request: web.Request) -> web.Response:
        """The shard processes: identity, PID, readiness and restart count."""
        return web.json_response(
            [
                {
                    "name": name,
                    "pid": sup.pid,
                    "ready": name in self.ready_shards,
                    "restarts": sup.restarts,
                    "wedged": self.wedged.get(name),
                    "progress": self.heartbeats.get(name, (0.0, {}))[1],
                }
                for name, sup in self.supervisors.items()
            ]
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.exposition)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _serve(self, app: web.Application, host: str, port: int) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runners.append(runner)

    async def start_http(self) -> None:
        """Bind the storage, management and metrics servers.

        Raises:
            OSError: a port is taken.
        """
        storage = web.Application()
        add_artifact_routes(storage, Path(self.options.storage_path))
        await self._serve(storage, self.options.storage_listen_address, self.options.storage_port)
        management = web.Application()
        for paths, handler in (
            (HEALTH_PATHS["live"], self._live),
            (HEALTH_PATHS["ready"], self._ready),
            (HEALTH_PATHS["start"], self._start),
        ):
            for path in paths:
                management.router.add_get(path, handler)
        management.router.add_get("/shards", self._shards)
        await self._serve(
            management, self.options.management_listen_address, self.options.management_port
        )
        if self.options.metrics_bind_address not in ("", "0"):
            host, _, port = self.options.metrics_bind_address.rpartition(":")
            app = web.Application()
            app.router.add_get("/metrics", self._metrics)
            await self._serve(app, host or "0.0.0.0", int(port))

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, wait for SIGTERM/SIGINT, shut down; return the exit code.

        The exit code is 0, or 1 when the leader stopped itself over
        ``--leader-memory-limit``.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.pool.start()
        metrics.EVAL_MAX_CONCURRENT.set(self.pool.size)
        await self.endpoint.start()
        try:
            await self.start_http()
            for shard in self.shard_names:
                # Present from the start, so that increase() sees the first restart.
                metrics.SHARD_RESTARTS.labels(shard)
                metrics.SHARD_WEDGED.labels(shard)
                sup = Supervisor(shard, self.shard_argv(shard), on_exit=self._on_shard_exit(shard))
                self.supervisors[shard] = sup
                sup.start()
            self._background.append(asyncio.create_task(self._watchdog()))
            if self.options.storage_sweep_interval > 0:
                self._background.append(asyncio.create_task(self._sweep_storage()))
            self.started = True
            log.info(
                "operator started: %d shards, %d evaluators, artifacts at %s",
                len(self.shard_names),
                self.options.evaluators,
                self.options.storage_base_url,
            )
            await self.stop_requested.wait()
            log.info("shutting down")
        finally:
            await self.shutdown()
        return self.exit_code

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: stop being ready now, then shut down (``run`` returns)."""
        self.draining = True
        self.stop_requested.set()

    async def shutdown(self) -> None:
        """Stop shards, the pool, the control socket and the HTTP servers."""
        self.draining = True
        for task in self._background:
            task.cancel()
        # A shard gets --shutdown-timeout for its reconciles, then its own clean-up.
        grace = self.options.shutdown_timeout + SHARD_EXIT_MARGIN
        await asyncio.gather(*(sup.stop(grace) for sup in self.supervisors.values()))
        await self.endpoint.close()
        await self.pool.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()


def main(options: OperatorOptions, runtime_dir: Path) -> int:
    """Process entry point of ``jaas operator`` (after logging and metrics are set up).

    ``runtime_dir`` holds the control socket; it is removed on exit unless it
    was given with ``--runtime-dir``.
    """
    import uvloop

    Path(options.storage_path).mkdir(parents=True, exist_ok=True)
    try:
        libraries = load_library_paths(options.library_paths)
    except LibraryPathError as err:
        log.error("cannot load --library-path: %s", err)
        return 1
    if libraries:
        log.info("shared libraries from --library-path: %s", ", ".join(sorted(libraries)))
    provider = tracing.setup_tracing("leader")
    try:
        return uvloop.run(Leader(options, runtime_dir, libraries).run())
    finally:
        tracing.shutdown_tracing(provider)
        if options.runtime_dir is None:
            shutil.rmtree(runtime_dir, ignore_errors=True)
