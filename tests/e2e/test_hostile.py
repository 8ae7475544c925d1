"""Hostile inputs against the session operator: each ends in its reason and harms no neighbour.

Every server here is on loopback (the suite runs in a loopback-only network
namespace). Latencies are printed at the end of the session, never asserted.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from kubernetes_asyncio.client import ApiClient

from jaas.api.reasons import Reason
from jaas.api.runbooks import runbook_suffix, with_runbook
from jaas.operator.kube import KubeApiError, KubeClient
from jaas.operator.reconciler import MAX_MESSAGE, SHORT_MESSAGE
from jaas.shards.assignment import HashRing
from jaas.testing.flux import FluxPublisher, make_tarball
from jaas.testing.operator import OperatorProcess
from tests.e2e.conftest import FIGURES
from tests.e2e.helpers import (
    HostileServer,
    create_namespace,
    create_snippet,
    download,
    ready,
    snippet_path,
    untar,
    wait_reason,
)

pytestmark = pytest.mark.usefixtures("operator")


async def test_a_source_with_another_tenants_digest_on_a_slow_server_harms_only_itself(
    kube_client: KubeClient,
    kube: ApiClient,
    flux: FluxPublisher,
    hostile: HostileServer,
    operator: OperatorProcess,
) -> None:
    client = kube_client
    attacker = await create_namespace(client, "hostile-attacker")
    victim = await create_namespace(client, "hostile-victim")
    tarball = make_tarball({"main.jsonnet": "{ owner: 'victim' }"})
    # The attacker's source claims the victim's digest, but its URL (with
    # credentials and a token in the query) leads to a server that never finishes.
    published = await flux.publish_tarball(kube, "Bucket", attacker, "stolen", tarball, "r1")
    slow = hostile.base.replace("http://", "http://admin:S3cr3t@") + "/trickle?token=T0K3N"
    flux.put_redirect(published.path, slow)
    await create_snippet(client, attacker, "a", sourceRef={"kind": "Bucket", "name": "stolen"})
    await asyncio.wait_for(hostile.requested.wait(), 30)  # its download is under way
    await flux.publish_tarball(kube, "Bucket", victim, "own", tarball, "r1")
    started = time.monotonic()
    await create_snippet(client, victim, "v", sourceRef={"kind": "Bucket", "name": "own"})
    synced = await wait_reason(client, victim, "v", "Synced", timeout=60)
    latency = time.monotonic() - started
    FIGURES.append(
        f"hostile: victim create→Ready beside a same-digest source on a trickling server: "
        f"{latency:.2f} s"
    )
    rendered = untar(await download(synced["status"]["artifactURL"]))["rendered.json"]
    assert rendered == b'{\n   "owner": "victim"\n}\n'
    assert ready(synced)["status"] == "True"
    # The victim's own server was asked for the artifact.
    assert flux.requests[f"bucket/{victim}/own/{published.path.rsplit('/', 1)[1]}"] >= 1


async def test_a_long_name_and_a_long_multibyte_error_still_get_their_warning_event(
    kube_client: KubeClient,
) -> None:
    client = kube_client
    ns = await create_namespace(client, "hostile-events")
    name = "n" * 200 + "-" + "x" * 39  # 240 characters
    program = "error std.join('', std.makeArray(2000, function(i) '✓'))"
    await create_snippet(client, ns, name, files={"main.jsonnet": program})
    failed = await wait_reason(client, ns, name, "EvaluationFailed")
    assert "✓✓✓" in ready(failed)["message"]

    async def warning() -> dict[str, object] | None:
        events = await client.get(f"/apis/events.k8s.io/v1/namespaces/{ns}/events")
        for event in events["items"]:
            if event["regarding"]["name"] == name and event["reason"] == "EvaluationFailed":
                return dict(event)
        return None

    deadline = time.monotonic() + 30
    event = await warning()
    while event is None and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        event = await warning()
    assert event is not None, "no EvaluationFailed event was recorded"
    assert event["type"] == "Warning"
    note = str(event["note"])
    assert "✓" in note
    assert len(note.encode()) <= 1024


def same_shard(base: str, other_hint: str) -> str:
    """A namespace name starting with ``other_hint`` on the same session shard as ``base``."""
    ring = HashRing(["shard-0", "shard-1"])
    for n in range(1000):
        candidate = f"{other_hint}-{n}"
        if ring.owner(candidate) == ring.owner(base):
            return candidate
    raise AssertionError("no namespace on the same shard")


async def test_trickling_servers_delay_only_their_tenant_and_fail_with_a_clean_reason(
    kube_client: KubeClient,
    kube: ApiClient,
    flux: FluxPublisher,
    hostile: HostileServer,
) -> None:
    client = kube_client
    slow_ns = await create_namespace(client, "hostile-trickle")
    neighbour = await create_namespace(client, same_shard(slow_ns, "hostile-neighbour"))
    # Eight sources (more than the shard's four download slots) on a server that
    # sends one byte a second, each with its own digest, behind credentials and a token.
    slow = hostile.base.replace("http://", "http://admin:S3cr3t@") + "/trickle?token=T0K3N"
    for i in range(8):
        published = await flux.publish_tarball(
            kube,
            "Bucket",
            slow_ns,
            f"slow-{i}",
            make_tarball({"main.jsonnet": f"{{ i: {i} }}"}),
            "r1",
        )
        flux.put_redirect(published.path, slow)
        await create_snippet(
            client, slow_ns, f"s{i}", sourceRef={"kind": "Bucket", "name": f"slow-{i}"}
        )
    await asyncio.wait_for(hostile.requested.wait(), 30)
    await flux.publish_tarball(
        kube, "Bucket", neighbour, "fine", make_tarball({"main.jsonnet": "{ ok: true }"}), "r1"
    )
    started = time.monotonic()
    await create_snippet(client, neighbour, "n", sourceRef={"kind": "Bucket", "name": "fine"})
    await wait_reason(client, neighbour, "n", "Synced", timeout=60)
    latency = time.monotonic() - started
    FIGURES.append(
        f"hostile: neighbour create→Ready on the same shard as 8 trickling sources: {latency:.2f} s"
    )
    failed = await wait_reason(client, slow_ns, "s0", "SourceFetchFailed", timeout=120)
    message = ready(failed)["message"]
    assert "--download-min-rate" in message
    assert "S3cr3t" not in message
    assert "T0K3N" not in message
    assert "admin" not in message


async def test_a_tarball_of_file_names_fails_cleanly_and_keeps_the_last_good_artifact(
    kube_client: KubeClient, kube: ApiClient, flux: FluxPublisher
) -> None:
    client = kube_client
    ns = await create_namespace(client, "hostile-names")
    await flux.publish_tarball(
        kube, "Bucket", ns, "src", make_tarball({"main.jsonnet": "{ good: true }"}), "r1"
    )
    await create_snippet(client, ns, "s", sourceRef={"kind": "Bucket", "name": "src"})
    good = await wait_reason(client, ns, "s", "Synced")
    # 12,000 files with 200-character names: 2.4 MB of names, a few hundred KB of gzip.
    bomb = make_tarball({f"{'d' * 190}/{n:06}.json": b"" for n in range(12_000)})
    await flux.publish_tarball(kube, "Bucket", ns, "src", bomb, "r2")
    failed = await wait_reason(client, ns, "s", "SourceFetchFailed")
    assert "more than 10000 files" in ready(failed)["message"]
    assert ready(failed)["status"] == "False"
    assert failed["status"]["artifactURL"] == good["status"]["artifactURL"]
    rendered = untar(await download(failed["status"]["artifactURL"]))["rendered.json"]
    assert rendered == b'{\n   "good": true\n}\n'


async def test_a_render_over_the_file_limit_is_refused_in_the_evaluator(
    kube_client: KubeClient,
) -> None:
    client = kube_client
    ns = await create_namespace(client, "hostile-render")
    # 17 MiB of output: over the 16 MiB a consumer extracts (and --max-artifact-bytes).
    program = "std.join('', std.makeArray(17 * 1024, function(i) std.repeat('x', 1024)))"
    await create_snippet(client, ns, "big", files={"main.jsonnet": program})
    failed = await wait_reason(client, ns, "big", "ArtifactTooLarge")
    message = ready(failed)["message"]
    assert message == with_runbook(
        Reason.ARTIFACT_TOO_LARGE,
        "rendered.json would be 17825795 bytes, over the 1048576-byte limit "
        "(--max-artifact-bytes); refused in the evaluator, nothing published",
    )


async def largest_creatable_padding(client: KubeClient, namespace: str, name_length: int) -> int:
    """The most bytes of padding a snippet named with ``name_length`` characters can carry.

    Bisects creates against the real API server: past etcd's request limit a
    create is refused ("request is too large"). Every probe that is created is
    deleted again.
    """
    low, high = 1024 * 1024, 2 * 1024 * 1024  # etcd's limit (1.5 MiB) lies between
    probe = 0
    while high - low > 32:
        middle = (low + high) // 2
        probe += 1
        name = f"p{probe:0{name_length - 1}d}"
        try:
            await create_snippet(client, namespace, name, files=padded("{}", middle))
        except KubeApiError as err:
            if "too large" not in err.message.lower():
                raise
            high = middle
        else:
            low = middle
            await client.delete(snippet_path(namespace, name))
    return low


def padded(program: str, padding: int) -> dict[str, str]:
    """Inline files: ``main.jsonnet`` holding ``program`` and a comment of ``padding`` bytes."""
    return {"main.jsonnet": program, "padding.jsonnet": "// " + "p" * padding}


async def test_a_failing_snippet_at_etcds_size_limit_still_gets_its_status(
    kube_client: KubeClient,
) -> None:
    client = kube_client
    ns = await create_namespace(client, "hostile-etcd-limit")
    padding = await largest_creatable_padding(client, ns, name_length=6)
    # 2.5 KB below the limit: room for the finalizer and a short status, not for
    # a status carrying the error's full 4,096-character message.
    program = "error 'broken: ' + std.repeat('x', 20000)"
    await create_snippet(client, ns, "broken", files=padded(program, padding - 2500))
    failed = await wait_reason(client, ns, "broken", "EvaluationFailed")
    condition = ready(failed)
    assert condition["status"] == "False"
    assert condition["observedGeneration"] == failed["metadata"]["generation"]
    assert failed["status"]["observedGeneration"] == failed["metadata"]["generation"]
    message = condition["message"]
    assert message.startswith("runtime error: broken: xxx"), message
    # The span's end differs by engine (rjsonnet: 1:1-43, jaas-jrsonnet: 1:1-5).
    runbook = re.escape(runbook_suffix(Reason.EVALUATION_FAILED))
    assert re.search(rf"\n    main\.jsonnet:1:1-\d+: error statement{runbook}$", message), message
    # The status with the full message was refused; the fallback cut it short.
    assert len(message) <= SHORT_MESSAGE < MAX_MESSAGE
