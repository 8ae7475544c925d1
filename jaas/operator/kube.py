"""A thin JSON client for the Kubernetes API on top of kubernetes_asyncio.

kubernetes_asyncio loads kubeconfigs and in-cluster credentials, builds the TLS
context, refreshes tokens and pools connections; we reuse all of that through
its ``ApiClient``. What we bypass is its model layer: custom resources are plain
dicts anyway, and its generic (de)serialisation is several times slower than
orjson on large lists and watch streams. Every method here speaks raw
resource paths (``/apis/<group>/<version>/namespaces/<ns>/<plural>/<name>``).
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration

from jaas.observability import metrics

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
    ``message`` its ``Status.message``. ``verb`` and ``resource`` say what was
    asked (``get``, ``gitrepositories.source.toolkit.fluxcd.io``), ``identity``
    who asked (``None``: the operator itself), for messages that tell a user
    which permission is missing.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        verb: str = "",
        resource: str = "",
        identity: str | None = None,
        served: bool = True,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.verb = verb
        self.resource = resource
        self.identity = identity
        self.served = served

    @property
    def not_found(self) -> bool:
        """True for 404 NotFound of an object (the resource type is served)."""
        return self.status == 404 and self.served

    @property
    def resource_not_served(self) -> bool:
        """True when the API server does not serve the resource type at all (CRD missing).

        The API server answers such a path with a plain-text 404, not a
        ``Status`` object (controller-runtime reports it as a NoMatch error).
        """
        return self.status == 404 and not self.served

    @property
    def unauthorized(self) -> bool:
        """True for 401: the credentials were not accepted (e.g. an expired token)."""
        return self.status == 401

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

        The classification follows metio/jaas ``internal/operator/reconciler.go``
        (``isPermanentAPIError``): Forbidden, a resource type that is not
        served (NoMatch), Invalid, BadRequest and MethodNotSupported.
        """
        return self.status in (400, 403, 405, 422) or self.resource_not_served


_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def describe_request(method: str, path: str) -> tuple[str, str]:
    """The Kubernetes verb and resource of a request, for messages.

    ``("GET", "/apis/source.toolkit.fluxcd.io/v1/namespaces/a/gitrepositories/r")``
    gives ``("get", "gitrepositories.source.toolkit.fluxcd.io")``; a
    subresource is appended (``externalartifacts.source.toolkit.fluxcd.io/status``);
    a GET of a collection is ``list``, with ``watch=true`` ``watch``.
    """
    bare, _, query = path.partition("?")
    parts = [p for p in bare.split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"]:
        group, rest = (parts[1] if len(parts) > 1 else ""), parts[3:]
    else:
        return _VERBS.get(method, method.lower()), bare
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    plural = rest[0] if rest else ""
    resource = f"{plural}.{group}" if group else plural
    if len(rest) >= 3:
        resource += "/" + rest[2]
    verb = _VERBS.get(method, method.lower())
    if method == "GET" and len(rest) == 1:
        verb = "watch" if "watch=true" in query else "list"
    return verb, resource


def _error_from(
    status: int, body: bytes, *, method: str, path: str, identity: str | None
) -> KubeApiError:
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    served = isinstance(doc, dict) and doc.get("kind") == "Status"
    if not isinstance(doc, dict):
        doc = {}
    reason = str(doc.get("reason") or HTTPStatus(status).phrase.replace(" ", ""))
    message = str(doc.get("message") or body[:200].decode("utf-8", "replace").strip())
    verb, resource = describe_request(method, path)
    return KubeApiError(
        status,
        reason,
        message,
        verb=verb,
        resource=resource,
        identity=identity,
        served=served or status != 404,
    )


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


class Credentials(Protocol):
    """A per-request identity: the bearer token a request is sent with.

    ``jaas.operator.tenancy.ServiceAccountCredentials`` is the implementation
    (TokenRequest tokens of a tenant's ServiceAccount).
    """

    @property
    def name(self) -> str:
        """Who the requests are made as, for messages (``ServiceAccount team-a/deployer``)."""
        ...

    async def authorization(self) -> str:
        """The ``Authorization`` header value (``Bearer <token>``).

        Raises:
            Exception: whatever obtaining the token raises (the caller maps it).
        """
        ...

    def invalidate(self, authorization: str) -> None:
        """Forget ``authorization`` after the API server answered 401 to it."""
        ...


class _AnonymousSession:
    """One aiohttp session that carries no client certificate, shared by every identity view.

    A client certificate would authenticate the connection before any bearer
    token is looked at (kube-apiserver tries x509 first), so requests made as
    a tenant must not share the operator's certificate-bearing connections:
    this is client-go's ``AnonymousClientConfig`` plus the tenant's token, as
    metio/jaas ``internal/operator/clientcache.go`` builds it. TLS
    verification is always on for it.
    """

    def __init__(self, configuration: Configuration, pool_size: int) -> None:
        self._configuration = configuration
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            config = self._configuration
            context: ssl.SSLContext | bool = False
            if str(config.host).startswith("https"):
                context = ssl.create_default_context(cafile=config.ssl_ca_cert)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size, ssl=context),
                trust_env=False,
                read_bufsize=2**21,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass
class KubeClient:
    """JSON requests against one API server, as the operator or as another identity.

    ``with_credentials`` returns a view that sends every request with those
    credentials instead of the operator's; all views share the connection
    pools (the operator's, and one without a client certificate for every
    other identity), so a thousand tenants cost no more connections than one.
    A view retries a request once with fresh credentials when the API server
    answers 401 (metio/jaas ``internal/operator/authretry.go``: a ServiceAccount
    that was deleted and recreated invalidates its tokens).
    """

    api: ApiClient
    credentials: Credentials | None = None
    #: The ``shard`` label of ``jaas_kube_api_requests_total`` (the process's shard).
    shard: str = ""
    _anonymous: _AnonymousSession | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._anonymous is None:
            pool = int(self.configuration.connection_pool_maxsize or 64)
            self._anonymous = _AnonymousSession(self.configuration, pool)

    @property
    def configuration(self) -> Configuration:
        """The kubernetes_asyncio configuration (host, TLS files, credentials)."""
        config: Configuration = self.api.configuration
        return config

    @property
    def identity(self) -> str | None:
        """Who requests are made as (``None``: the operator's own identity)."""
        return None if self.credentials is None else self.credentials.name

    def with_credentials(self, credentials: Credentials) -> KubeClient:
        """A view of this client that makes every request with ``credentials``."""
        return dataclasses.replace(self, credentials=credentials)

    async def _headers(self, content_type: str | None, accept: str = JSON) -> dict[str, str]:
        headers: dict[str, str] = {"Accept": accept, "User-Agent": "jaas-py"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.credentials is not None:
            headers["Authorization"] = await self.credentials.authorization()
        else:
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
        if self.credentials is not None and self._anonymous is not None:
            return self._anonymous.get()
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
            Exception: whatever the credentials raise when asked for a token.
        """
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
        url = self._url(path, params)
        for attempt in (1, 2):
            headers = await self._headers(content_type if data is not None else None)
            status_label = "error"
            try:
                async with self._session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=request_timeout),
                ) as resp:
                    status_label = str(resp.status)
                    raw = await resp.read()
                    status = resp.status
            finally:
                metrics.API_REQUESTS.labels(self.shard, method, status_label).inc()
            if 200 <= status < 300:
                return orjson.loads(raw) if raw else None
            if status == 401 and self.credentials is not None and attempt == 1:
                self.credentials.invalidate(headers["Authorization"])
                continue
            raise _error_from(status, raw, method=method, path=path, identity=self.identity)
        raise AssertionError("unreachable")  # pragma: no cover

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
            metrics.API_REQUESTS.labels(self.shard, "WATCH", str(resp.status)).inc()
            if resp.status != 200:
                raise _error_from(
                    resp.status,
                    await resp.read(),
                    method="GET",
                    path=path + "?watch=true",
                    identity=self.identity,
                )
            yield resp

    async def close(self) -> None:
        """Close the connection pools (of this client and of all its views)."""
        if self._anonymous is not None:
            await self._anonymous.close()
        await self.api.close()


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def connect(
    kubeconfig: str | None = None, *, qps_pool: int = 64, shard: str = ""
) -> KubeClient:
    """Build a client from a kubeconfig, ``$KUBECONFIG``, ``~/.kube/config`` or in-cluster.

    Order as in client-go: an explicit path, then ``$KUBECONFIG``, then the
    in-cluster ServiceAccount when ``KUBERNETES_SERVICE_HOST`` is set, then
    ``~/.kube/config``. ``qps_pool`` bounds concurrent connections; ``shard``
    labels the client's request metrics.

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
    return KubeClient(ApiClient(configuration), shard=shard)
