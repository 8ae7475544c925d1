"""A thin JSON client for the Kubernetes API on top of kubernetes_asyncio.

kubernetes_asyncio loads kubeconfigs and in-cluster credentials, builds the TLS
context, refreshes tokens and pools connections; we reuse all of that through
its ``ApiClient``. What we bypass is its model layer: custom resources are plain
dicts anyway, and its generic (de)serialisation is several times slower than
orjson on large lists and watch streams. Every method here speaks raw
resource paths (``/apis/<group>/<version>/namespaces/<ns>/<plural>/<name>``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration

#: An API object as the server sends it (parsed JSON).
Obj = dict[str, Any]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
#: Default total time for one non-watch request, in seconds.
DEFAULT_TIMEOUT = 30.0


class KubeApiError(Exception):
    """A non-2xx answer of the API server.

    ``status`` is the HTTP status, ``reason`` the ``Status.reason`` of the body
    (``NotFound``, ``Conflict``, ``Forbidden``, ``Invalid``, ``Expired``...),
    ``message`` its ``Status.message``.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        """True for 404 NotFound."""
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """True for 409 Conflict (stale resourceVersion or AlreadyExists)."""
        return self.status == 409

    @property
    def gone(self) -> bool:
        """True for 410 Gone (an expired resourceVersion)."""
        return self.status == 410

    @property
    def permanent(self) -> bool:
        """True for errors a retry cannot fix (RBAC, missing kind, invalid request).

        The classification follows metio/jaas ``internal/operator/reconciler.go``:
        Forbidden, NotFound of a whole resource type, Invalid, BadRequest and
        MethodNotSupported.
        """
        return self.status in (400, 403, 405, 422)


def _error_from(status: int, body: bytes) -> KubeApiError:
    try:
        doc = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    reason = str(doc.get("reason") or HTTPStatus(status).phrase.replace(" ", ""))
    message = str(doc.get("message") or body[:200].decode("utf-8", "replace"))
    return KubeApiError(status, reason, message)


def resource_path(
    group: str,
    version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """Build an API path: core group (``group == ""``) under /api, others under /apis."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name, safe='')}"
    if subresource is not None:
        base += f"/{subresource}"
    return base


@dataclass
class KubeClient:
    """JSON requests against one API server identity, sharing the ApiClient's session."""

    api: ApiClient

    @property
    def configuration(self) -> Configuration:
        """The kubernetes_asyncio configuration (host, TLS files, credentials)."""
        config: Configuration = self.api.configuration
        return config

    async def _headers(self, content_type: str | None, accept: str = JSON) -> dict[str, str]:
        headers: dict[str, str] = {"Accept": accept, "User-Agent": "jaas-py"}
        if content_type:
            headers["Content-Type"] = content_type
        await self.api.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    def _url(self, path: str, params: Mapping[str, Any] | None) -> str:
        url = str(self.configuration.host) + path
        if params:
            clean = {k: _param(v) for k, v in params.items() if v is not None}
            if clean:
                url += "?" + urlencode(clean)
        return url

    @property
    def _session(self) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession = self.api.rest_client.pool_manager
        return session

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = JSON,
        request_timeout: float = DEFAULT_TIMEOUT,
    ) -> Any:
        """Send one request and return the parsed JSON answer.

        ``body`` is a JSON-serialisable value (or ``bytes`` sent as is).

        Raises:
            KubeApiError: the server answered with a non-2xx status.
            aiohttp.ClientError, TimeoutError: the request did not complete.
        """
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = await self._headers(content_type if data is not None else None)
        async with self._session.request(
            method,
            self._url(path, params),
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=request_timeout),
        ) as resp:
            raw = await resp.read()
            if not 200 <= resp.status < 300:
                raise _error_from(resp.status, raw)
            return orjson.loads(raw) if raw else None

    async def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` (see ``request``)."""
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Any) -> Any:
        """POST ``body`` to the collection ``path``."""
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, patch: Any) -> Any:
        """Apply a JSON merge patch (RFC 7386) to ``path``."""
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> Any:
        """Apply a JSON patch (RFC 6902) to ``path``."""
        return await self.request("PATCH", path, body=ops, content_type=JSON_PATCH)

    async def delete(self, path: str) -> Any:
        """DELETE ``path``."""
        return await self.request("DELETE", path)

    @asynccontextmanager
    async def stream(
        self, path: str, params: Mapping[str, Any], *, read_timeout: float
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a streaming GET (a watch); the response is closed on exit.

        ``read_timeout`` bounds the silence between two chunks (seconds), so a
        half-dead connection is noticed.

        Raises:
            KubeApiError: the server refused the watch (e.g. 410 Gone, 403).
        """
        headers = await self._headers(None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
        async with self._session.get(
            self._url(path, params), headers=headers, timeout=timeout
        ) as resp:
            if resp.status != 200:
                raise _error_from(resp.status, await resp.read())
            yield resp

    async def close(self) -> None:
        """Close the underlying ApiClient and its connection pool."""
        await self.api.close()


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def connect(kubeconfig: str | None = None, *, qps_pool: int = 64) -> KubeClient:
    """Build a client from a kubeconfig, ``$KUBECONFIG``, ``~/.kube/config`` or in-cluster.

    Order as in client-go: an explicit path, then ``$KUBECONFIG``, then the
    in-cluster ServiceAccount when ``KUBERNETES_SERVICE_HOST`` is set, then
    ``~/.kube/config``. ``qps_pool`` bounds concurrent connections.

    Raises:
        kubernetes_asyncio.config.ConfigException: no usable configuration.
    """
    configuration = Configuration()
    configuration.connection_pool_maxsize = qps_pool
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if not path and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await kube_config.load_kube_config(config_file=path, client_configuration=configuration)
    return KubeClient(ApiClient(configuration))
