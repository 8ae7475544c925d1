"""HTTP serving of stored artifacts: ``GET``/``HEAD /<namespace>/<name>/<file>.tar.gz``.

As metio/jaas's storage server (jaas-reference §3.10): only paths ending in
``.tar.gz`` are served, there are no listings, and nothing outside the storage
root is reachable (traversal and symlinks that escape the root are 404).
Responses carry ``Content-Type: application/gzip``, an ``ETag``
(``<mtime ns hex>-<size hex>``, from aiohttp's ``FileResponse``) and support
``Range`` and conditional requests. Other methods on an artifact path get 405.

Every request is counted by status (``jaas_artifact_server_requests_total``)
and, with tracing on, recorded as a server span that continues the trace of
the W3C ``traceparent`` the client sent (a shard fetching a chained snippet's
artifact, or a Flux controller that propagates one).
"""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from opentelemetry import propagate, trace

from jaas.observability import metrics, tracing

#: Content type of served artifacts (Go's ``mime`` type for ``.gz``).
CONTENT_TYPE: Final = "application/gzip"
#: One path segment: no leading dot (so no ``.``, ``..`` or hidden files), no separators.
_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: The route; three segments, the last ending in ``.tar.gz``, so ``/metrics``,
#: ``/healthz`` and ``/readyz`` registered by the leader can never collide with it.
ROUTE: Final = r"/{namespace}/{name}/{file:[^/]+\.tar\.gz}"


def add_artifact_routes(app: web.Application, root: Path) -> None:
    """Register the artifact route on ``app``, serving files under ``root``.

    Register the leader's own routes (``/metrics``, ``/healthz``,
    ``/readyz``) before or after; the artifact route only matches
    three-segment paths ending in ``.tar.gz``.
    """
    base = Path(root).resolve()

    async def serve_artifact(request: web.Request) -> web.StreamResponse:
        segments = (
            request.match_info["namespace"],
            request.match_info["name"],
            request.match_info["file"],
        )
        if any(_SEGMENT.fullmatch(segment) is None for segment in segments):
            raise web.HTTPNotFound()
        loop = asyncio.get_running_loop()
        target = await loop.run_in_executor(None, resolve_artifact, base, *segments)
        if target is None:
            raise web.HTTPNotFound()
        return web.FileResponse(target, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE})

    app.router.add_get(ROUTE, serve_artifact, name="artifact")
    app.middlewares.append(_observe)


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request by status and trace it as a child of the client's ``traceparent``."""
    status = 500
    with tracing.tracer.start_as_current_span(
        f"{request.method} artifact",
        context=propagate.extract(request.headers),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "url.path": request.path},
    ) as span:
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as err:
            status = err.status
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.StatusCode.ERROR, f"HTTP {status}")
            metrics.ARTIFACT_SERVER_REQUESTS.labels(str(status)).inc()


def resolve_artifact(base: Path, namespace: str, name: str, file_name: str) -> Path | None:
    """The regular file ``base/namespace/name/file_name`` resolves to, if it stays inside ``base``.

    ``base`` must already be resolved. Returns None for a missing file, a
    directory or other non-regular file, or a symlink leading out of ``base``.
    """
    try:
        target = (base / namespace / name / file_name).resolve(strict=True)
        info = target.stat()
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(base) or not stat.S_ISREG(info.st_mode):
        return None
    return target
