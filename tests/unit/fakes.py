"""An in-memory Kubernetes API for unit tests of the reconcile pipeline (never for e2e tests).

It keeps objects by path, applies JSON merge patches, answers TokenRequests for
the ServiceAccounts it knows, refuses (403) what an identity is denied, and
answers a plain 404 for resource types it is told are not served, like the
real API server. Each request is recorded as ``(identity, verb, path)``.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections.abc import Mapping
from typing import Any, cast

from jaas.operator.kube import Credentials, KubeApiError, KubeClient, describe_request

Obj = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeApi:
    """The shared state behind every ``FakeClient`` view."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.service_accounts: set[tuple[str, str]] = set()
        #: identity name -> (verb, resource) pairs it may not do; "*" for every identity.
        self.denied: dict[str, set[tuple[str, str]]] = {}
        self.not_served: set[str] = set()
        #: (verb, resource) -> HTTP status every such request fails with (e.g. 500).
        self.failing: dict[tuple[str, str], int] = {}
        self.calls: list[tuple[str, str, str]] = []
        #: Like etcd's request size limit: a write whose JSON body is larger fails with 500.
        self.max_request_bytes: int | None = None
        self.tokens_minted = 0
        self.revoked: set[str] = set()
        self._rv = itertools.count(1)
        self._token = itertools.count(1)

    def put(self, path: str, obj: Obj) -> Obj:
        """Store ``obj`` at its item path (as an admin would create it)."""
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._rv))
        meta.setdefault("uid", f"uid-{meta['resourceVersion']}")
        self.objects[path] = stored
        return copy.deepcopy(stored)

    def deny(self, identity: str, verb: str, resource: str) -> None:
        """Make ``identity`` (e.g. ``ServiceAccount ns/sa``) get 403 for ``verb resource``."""
        self.denied.setdefault(identity, set()).add((verb, resource))

    def allow(self, identity: str, verb: str, resource: str) -> None:
        """Undo ``deny``."""
        self.denied.get(identity, set()).discard((verb, resource))


class FakeClient:
    """A ``KubeClient`` look-alike over a ``FakeApi`` (cast it where a KubeClient is wanted)."""

    def __init__(self, api: FakeApi, credentials: Credentials | None = None) -> None:
        self.api = api
        self.credentials = credentials

    @property
    def identity(self) -> str | None:
        return None if self.credentials is None else self.credentials.name

    def with_credentials(self, credentials: Credentials) -> FakeClient:
        return FakeClient(self.api, credentials)

    def as_kube(self) -> KubeClient:
        return cast(KubeClient, self)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        await asyncio.sleep(0)
        for attempt in (1, 2):
            token = ""
            if self.credentials is not None:
                token = await self.credentials.authorization()
                if token.removeprefix("Bearer ") in self.api.revoked:
                    if attempt == 1:
                        self.credentials.invalidate(token)
                        continue
                    raise KubeApiError(401, "Unauthorized", "token revoked")
            return self._serve(method, path, body)
        raise AssertionError("unreachable")

    def _serve(self, method: str, path: str, body: Any) -> Any:
        who = self.identity or "operator"
        verb, resource = describe_request(method, path)
        self.api.calls.append((who, verb, path))

        def error(status: int, reason: str, message: str, *, served: bool = True) -> KubeApiError:
            return KubeApiError(
                status,
                reason,
                message,
                verb=verb,
                resource=resource,
                identity=self.identity,
                served=served,
            )

        if (verb, resource) in self.api.failing:
            raise error(self.api.failing[verb, resource], "InternalError", "etcd is unhappy")
        limit = self.api.max_request_bytes
        if limit is not None and body is not None and len(json.dumps(body)) > limit:
            raise error(500, "InternalError", "etcdserver: request is too large")
        if resource.partition("/")[0] in self.api.not_served:
            raise error(404, "NotFound", "404 page not found", served=False)
        for pair in self.api.denied.get(who, set()) | self.api.denied.get("*", set()):
            if pair == (verb, resource):
                raise error(403, "Forbidden", f"{who} cannot {verb} resource {resource}")
        if resource == "serviceaccounts/token":
            parts = path.split("/")
            ns, sa = parts[4], parts[6]
            if (ns, sa) not in self.api.service_accounts:
                raise error(404, "NotFound", f'serviceaccounts "{sa}" not found')
            self.api.tokens_minted += 1
            return {
                "status": {
                    "token": f"token-{next(self.api._token)}",
                    "expirationTimestamp": "2999-01-01T00:00:00Z",
                }
            }
        if method == "GET":
            obj = self.api.objects.get(path)
            if obj is None:
                raise error(404, "NotFound", f"{path} not found")
            return copy.deepcopy(obj)
        if method == "POST":
            name = body["metadata"]["name"]
            item = f"{path}/{name}"
            if item in self.api.objects:
                raise error(409, "AlreadyExists", f"{name} exists")
            return self.api.put(item, body)
        if method == "PATCH":
            is_status = path.endswith("/status")
            item = path.removesuffix("/status") if is_status else path
            obj = self.api.objects.get(item)
            if obj is None:
                raise error(404, "NotFound", f"{item} not found")
            if is_status:
                patched = merge_patch(obj, {"status": body.get("status")})
            else:
                patched = merge_patch(obj, {k: v for k, v in body.items() if k != "status"})
                if patched.get("spec") != obj.get("spec"):
                    patched["metadata"]["generation"] = obj["metadata"]["generation"] + 1
            patched["metadata"]["resourceVersion"] = str(next(self.api._rv))
            self.api.objects[item] = patched
            return copy.deepcopy(patched)
        if method == "DELETE":
            if self.api.objects.pop(path, None) is None:
                raise error(404, "NotFound", f"{path} not found")
            return {}
        raise AssertionError(f"unexpected {method} {path}")

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, patch: Any) -> Any:
        return await self.request("PATCH", path, body=patch)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)
