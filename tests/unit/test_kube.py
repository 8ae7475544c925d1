"""What the API client reports about a request and its errors."""

from __future__ import annotations

import pytest

from jaas.operator.kube import KubeApiError, _error_from, describe_request


@pytest.mark.parametrize(
    ("method", "path", "verb", "resource"),
    [
        (
            "GET",
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/a/gitrepositories/r",
            "get",
            "gitrepositories.source.toolkit.fluxcd.io",
        ),
        (
            "GET",
            "/apis/jaas.metio.wtf/v1/jsonnetsnippets",
            "list",
            "jsonnetsnippets.jaas.metio.wtf",
        ),
        (
            "GET",
            "/apis/jaas.metio.wtf/v1/jsonnetsnippets?watch=true",
            "watch",
            "jsonnetsnippets.jaas.metio.wtf",
        ),
        (
            "POST",
            "/api/v1/namespaces/a/serviceaccounts/sa/token",
            "create",
            "serviceaccounts/token",
        ),
        (
            "PATCH",
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/a/externalartifacts/x/status",
            "patch",
            "externalartifacts.source.toolkit.fluxcd.io/status",
        ),
        (
            "DELETE",
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/a/externalartifacts/x",
            "delete",
            "externalartifacts.source.toolkit.fluxcd.io",
        ),
    ],
)
def test_describe_request(method: str, path: str, verb: str, resource: str) -> None:
    assert describe_request(method, path) == (verb, resource)


def test_a_plain_404_means_the_resource_type_is_not_served() -> None:
    path = "/apis/source.toolkit.fluxcd.io/v1/namespaces/a/externalartifacts"
    err = _error_from(404, b"404 page not found", method="POST", path=path, identity=None)
    assert err.resource_not_served
    assert err.permanent
    assert not err.not_found
    status = b'{"kind":"Status","reason":"NotFound","message":"x not found","code":404}'
    missing = _error_from(
        404, status, method="GET", path=path + "/x", identity="ServiceAccount a/b"
    )
    assert missing.not_found
    assert not missing.permanent
    assert missing.identity == "ServiceAccount a/b"


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        (400, True),
        (401, False),
        (403, True),
        (405, True),
        (409, False),
        (422, True),
        (429, False),
        (500, False),
    ],
)
def test_permanent_errors(status: int, permanent: bool) -> None:
    assert KubeApiError(status, "R", "m").permanent is permanent
