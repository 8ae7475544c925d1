"""Tenant identities: TokenRequest tokens of a snippet's ServiceAccount, cached.

Every tenant-side API call of a reconcile (reading the snippet's source, its
libraries and their sources; writing and deleting its ExternalArtifact) is
made as the snippet's ServiceAccount, never as the operator, so a tenant
reaches exactly what its RBAC allows. As in metio/jaas
``internal/operator/token.go`` and ``clientcache.go``:

* the ServiceAccount is ``spec.serviceAccountName``, else the operator's
  ``--default-service-account``; neither is ``ServiceAccountMissing``, and so
  (past JaaS, which only checks for an empty name) is a named ServiceAccount
  that does not exist;
* a token is minted with ``serviceaccounts/token`` create (TokenRequest) for
  ``TOKEN_TTL`` seconds, cached per (namespace, ServiceAccount), renewed
  ``TOKEN_REFRESH_MARGIN`` before it expires (at most a third of its life),
  minted once per key however many reconciles ask at the same moment, and
  re-minted once when the API server answers 401 to it;
* requests go through a view of the operator's ``KubeClient`` that shares
  its connection pool (``KubeClient.with_credentials``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from jaas import defaults
from jaas.api.reasons import Reason, ReasonError
from jaas.observability import metrics
from jaas.operator.kube import KubeApiError, KubeClient, resource_path

log = logging.getLogger(__name__)

TenantKey = tuple[str, str]  # (namespace, ServiceAccount name)


@dataclass(frozen=True)
class _Token:
    value: str
    #: Wall-clock seconds since the epoch after which the token is renewed.
    refresh_at: float


def service_account_of(
    namespace: str, spec_name: str | None, default: str | None
) -> tuple[str, str]:
    """The (namespace, name) of the ServiceAccount a snippet acts as.

    Raises:
        ReasonError: ``ServiceAccountMissing`` when the snippet names none and
            the operator has no ``--default-service-account``.
    """
    name = spec_name or default
    if not name:
        raise ReasonError(
            Reason.SERVICE_ACCOUNT_MISSING,
            "spec.serviceAccountName is empty and the operator has no "
            "--default-service-account; name the ServiceAccount the snippet acts as",
        )
    return namespace, name


class TokenCache:
    """Mints and caches ServiceAccount tokens with the operator's identity.

    Args:
        client: the operator's client (needs ``serviceaccounts/token`` create).
        ttl: token lifetime asked for, seconds.
        refresh_margin: renew this many seconds before expiry (at most a third
            of the lifetime the API server granted).
        mint_timeout: seconds one TokenRequest may take.
        clock: wall-clock time in seconds (tests inject their own).

    Counters: ``mints`` (TokenRequests that returned a token), ``failures``.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        ttl: float = defaults.TOKEN_TTL,
        refresh_margin: float = defaults.TOKEN_REFRESH_MARGIN,
        mint_timeout: float = defaults.TOKEN_MINT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.refresh_margin = refresh_margin
        self.mint_timeout = mint_timeout
        self.clock = clock
        self._tokens: dict[TenantKey, _Token] = {}
        self._minting: dict[TenantKey, asyncio.Future[str]] = {}
        self.mints = 0
        self.failures = 0

    async def token(self, namespace: str, service_account: str) -> str:
        """A valid token of ``namespace/service_account``, minted if none is cached.

        Concurrent callers of one key share a single TokenRequest.

        Raises:
            ReasonError: ``ServiceAccountMissing`` (the ServiceAccount does not
                exist) or ``RBACDenied`` (the operator may not mint its tokens),
                both permanent.
            KubeApiError, aiohttp.ClientError, TimeoutError: a transient failure.
        """
        key = (namespace, service_account)
        cached = self._tokens.get(key)
        if cached is not None and self.clock() < cached.refresh_at:
            return cached.value
        pending = self._minting.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._mint(key))
            self._minting[key] = pending
            pending.add_done_callback(lambda done: self._minted(key, done))
        return await asyncio.shield(pending)

    def invalidate(self, namespace: str, service_account: str, token: str) -> None:
        """Forget ``token`` (the API server refused it); the next call mints a new one."""
        key = (namespace, service_account)
        cached = self._tokens.get(key)
        if cached is not None and cached.value == token:
            del self._tokens[key]

    def forget(self, namespace: str, service_account: str) -> None:
        """Drop the cached token of a key (e.g. its last snippet was deleted)."""
        self._tokens.pop((namespace, service_account), None)

    def __len__(self) -> int:
        """Cached tokens."""
        return len(self._tokens)

    async def _mint(self, key: TenantKey) -> str:
        namespace, name = key
        path = resource_path("", "v1", "serviceaccounts", namespace, name, "token")
        try:
            async with asyncio.timeout(self.mint_timeout):
                answer = await self.client.create(
                    path,
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenRequest",
                        "spec": {"expirationSeconds": int(self.ttl)},
                    },
                )
            status = answer["status"]
            token = str(status["token"])
            expires = _parse_time(str(status["expirationTimestamp"]))
        except KubeApiError as err:
            self._failed(key)
            if err.not_found:
                raise ReasonError(
                    Reason.SERVICE_ACCOUNT_MISSING,
                    f"ServiceAccount {namespace}/{name} does not exist; create it or change "
                    "spec.serviceAccountName",
                ) from err
            if err.permanent:
                raise ReasonError(
                    Reason.RBAC_DENIED,
                    f"identity: the operator may not mint tokens of ServiceAccount "
                    f"{namespace}/{name} (it needs create on serviceaccounts/token): "
                    f"{err.message}",
                ) from err
            raise
        except (KeyError, TypeError, ValueError) as err:
            self._failed(key)
            raise RuntimeError(
                f"the TokenRequest for ServiceAccount {namespace}/{name} returned no "
                f"usable token ({err!r})"
            ) from err
        except BaseException:
            self._failed(key)
            raise
        now = self.clock()
        lifetime = max(expires - now, 0.0)
        margin = min(self.refresh_margin, lifetime / 3)
        self._tokens[key] = _Token(token, expires - margin)
        self.mints += 1
        metrics.TOKEN_MINTS.labels(namespace).inc()
        log.debug("minted a token for ServiceAccount %s/%s", namespace, name)
        return token

    def _minted(self, key: TenantKey, done: asyncio.Future[str]) -> None:
        self._minting.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so it is never reported as unhandled

    def _failed(self, key: TenantKey) -> None:
        self.failures += 1
        metrics.TOKEN_MINT_FAILURES.labels(*key).inc()


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class ServiceAccountCredentials:
    """``Credentials`` of one ServiceAccount, backed by a ``TokenCache``."""

    tokens: TokenCache
    namespace: str
    service_account: str

    @property
    def name(self) -> str:
        """``ServiceAccount <namespace>/<name>``."""
        return f"ServiceAccount {self.namespace}/{self.service_account}"

    async def authorization(self) -> str:
        """``Bearer <token>`` (see ``TokenCache.token`` for what it raises)."""
        return "Bearer " + await self.tokens.token(self.namespace, self.service_account)

    def invalidate(self, authorization: str) -> None:
        """Forget the token the API server refused."""
        self.tokens.invalidate(
            self.namespace, self.service_account, authorization.removeprefix("Bearer ")
        )


async def tenant_client(
    client: KubeClient, tokens: TokenCache, namespace: str, service_account: str
) -> KubeClient:
    """A view of ``client`` acting as ``namespace/service_account``, its token already minted.

    Minting up front makes a missing ServiceAccount ``ServiceAccountMissing``
    before any tenant read, whatever stage would first need the token.

    Raises:
        As ``TokenCache.token``.
    """
    await tokens.token(namespace, service_account)
    return client.with_credentials(ServiceAccountCredentials(tokens, namespace, service_account))
