"""Artifact URLs are guarded on every redirect hop (the operator runs with loopback allowed)."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio.client import ApiClient

from jaas.operator.kube import KubeClient
from jaas.testing.flux import FluxPublisher, make_tarball
from tests.e2e.helpers import create_snippet, ready, sha256, wait_reason

pytestmark = pytest.mark.usefixtures("operator")


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://0xa9fea9fe/latest/meta-data/",
        "http://0.0.0.7/x.tar.gz",
        "http://[::]:80/",
    ],
    ids=["metadata", "metadata-in-hex", "this-network", "unspecified"],
)
async def test_a_redirect_from_an_allowed_host_to_a_refused_one_is_not_followed(
    kube_client: KubeClient, kube: ApiClient, namespace: str, flux: FluxPublisher, target: str
) -> None:
    tarball = make_tarball({"main.jsonnet": "{}"})
    published = await flux.publish_tarball(kube, "Bucket", namespace, "b", tarball, sha256(tarball))
    path = published.url.removeprefix(flux.base_url + "/")
    flux.put_redirect(path, target)
    before = flux.requests[path]
    await create_snippet(kube_client, namespace, "s", sourceRef={"kind": "Bucket", "name": "b"})
    obj = await wait_reason(kube_client, namespace, "s", "SourceFetchFailed")
    message = ready(obj)["message"]
    assert "is forbidden" in message, message
    await asyncio.sleep(2)
    # A refusal is permanent: the redirecting URL was asked once, not retried with backoff.
    assert flux.requests[path] - before == 1
