"""The hostile corpus: tarball, HTTP, URL, digest and Jsonnet attacks, each ending in its reason.

Every case is a snippet that first renders a good artifact (``Synced``), then
meets its attack: the expected Ready reason is written for the new
generation or source revision, the last good artifact stays published and
downloadable, and no message carries the URL credentials or query some cases
use. Meanwhile a neighbouring tenant's snippet, updated during the attacks,
converges. All cases run at once against the session operator; the servers
are on loopback (the suite runs in a loopback-only network namespace).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from jaas.api.conditions import find_condition
from jaas.operator.kube import KubeClient, resource_path
from jaas.testing.flux import FluxPublisher, make_tarball
from tests.e2e.conftest import FIGURES
from tests.e2e.helpers import (
    HostileServer,
    create_namespace,
    create_snippet,
    download,
    snippet_path,
    untar,
)
from tests.unit.test_sources_extract import entry, header, pax, targz

pytestmark = pytest.mark.usefixtures("operator")

GOOD = "{ good: true }"
GOOD_RENDERED = b'{\n   "good": true\n}\n'
SECRET_URL_PARTS = ("S3cr3t", "T0K3N")
#: The 5 s wall-clock evaluation timeout can stop these before their own bound.
RACES_THE_CLOCK = frozenset({"EvaluationTimeout"})


@dataclass
class Attack:
    """One case: how it attacks, and the reason it must end in."""

    name: str
    reason: str
    #: tarball bytes to publish as the source's next revision
    tarball: bytes | None = None
    #: status.artifact fields to write over the good ones (url, digest)
    artifact: dict[str, str] | None = None
    #: a redirect from the source's artifact URL to this target
    redirect: str | None = None
    #: the snippet's next main.jsonnet (inline cases)
    program: str | None = None
    #: a fragment the Ready message must hold
    says: str = ""
    #: other reasons that count as its end: for programs stopped either by the
    #: memory or depth bound or by the wall-clock timeout, whichever a busy
    #: machine reaches first
    or_else: frozenset[str] = frozenset()


def gzip_bomb() -> bytes:
    """513 MiB of zeros in a tar entry, gzip-compressed to about half a megabyte."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(header(b"main.jsonnet", 513 << 20))]
    parts += [compressor.compress(chunk) for _ in range(513)]
    parts.append(compressor.flush())
    return b"".join(parts)


def tar_of(members: list[tarfile.TarInfo], content: bytes = b"{}") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            if info.type == tarfile.REGTYPE:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return gzip.compress(buffer.getvalue(), mtime=0)


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def tarball_attacks() -> list[Attack]:
    good = make_tarball({"main.jsonnet": GOOD})
    fail = "SourceFetchFailed"
    return [
        Attack("not-gzip", fail, tarball=b"this is not a gzip stream", says="gzip"),
        Attack("empty-body", fail, tarball=b"", says="empty"),
        Attack("truncated-gzip", fail, tarball=good[: len(good) // 2]),
        Attack("gzip-of-garbage", fail, tarball=gzip.compress(b"\x01" * 4096, mtime=0)),
        Attack("bad-checksum", fail, tarball=targz(header(b"main.jsonnet", 0, checksum_delta=7))),
        Attack("gzip-bomb", fail, tarball=gzip_bomb()),
        Attack(
            "entry-over-16-mib",
            fail,
            tarball=make_tarball({"main.jsonnet": GOOD, "big.json": bytes(17 << 20)}),
            says="per-entry cap",
        ),
        Attack(
            "extracts-over-64-mib",
            fail,
            tarball=make_tarball(
                {"main.jsonnet": GOOD, **{f"part{n}.json": bytes(15 << 20) for n in range(5)}}
            ),
            says="more than",
        ),
        Attack(
            "ten-thousand-and-one-files",
            fail,
            tarball=make_tarball({f"f{n}.json": b"" for n in range(10_001)}),
            says="10000 files",
        ),
        Attack(
            "a-mebibyte-of-names",
            fail,
            tarball=make_tarball({f"{'d' * 590}/{n:05}.json": b"" for n in range(2000)}),
            says="bytes of file names",
        ),
        Attack(
            "duplicate-entries",
            fail,
            tarball=targz(entry(b"main.jsonnet", b"{}"), entry(b"main.jsonnet", b"{}")),
            says="duplicate",
        ),
        Attack(
            "gnu-sparse",
            fail,
            tarball=targz(pax({"GNU.sparse.major": "1"}), entry(b"main.jsonnet", b"{}")),
            says="sparse",
        ),
        Attack(
            "nul-in-pax-path",
            fail,
            tarball=targz(pax({"path": "main\x00.jsonnet"}), entry(b"x", b"{}")),
            says="NUL",
        ),
        Attack(
            "huge-extended-header",
            fail,
            tarball=targz(header(b"PaxHeaders/x", (1 << 20) + 1, b"x")),
            says="extended header",
        ),
        Attack(
            "data-after-end-block",
            fail,
            tarball=targz(bytes(512), entry(b"main.jsonnet", b"{}"), end=False),
            says="corrupt",
        ),
        # Names consumers would drop are dropped: nothing usable is left.
        Attack("traversal-only", "InvalidSpec", tarball=tar_of([member("../main.jsonnet")])),
        Attack("absolute-only", "InvalidSpec", tarball=tar_of([member("/main.jsonnet")])),
        Attack("hidden-only", "InvalidSpec", tarball=tar_of([member(".main.jsonnet")])),
        Attack(
            "symlink-entry-file",
            "InvalidSpec",
            tarball=tar_of([member("main.jsonnet", tarfile.SYMTYPE, "/etc/passwd")]),
        ),
        Attack(
            "hardlink-entry-file",
            "InvalidSpec",
            tarball=tar_of([member("main.jsonnet", tarfile.LNKTYPE, "other")]),
        ),
        Attack(
            "device-entry-file",
            "InvalidSpec",
            tarball=tar_of([member("main.jsonnet", tarfile.CHRTYPE)]),
        ),
        Attack(
            "entry-file-is-a-directory",
            "InvalidSpec",
            tarball=tar_of([member("main.jsonnet", tarfile.DIRTYPE), member("x.json")]),
        ),
        Attack(
            "import-escapes-the-tree",
            "EvaluationFailed",
            tarball=make_tarball({"main.jsonnet": "import '../../../../etc/passwd'"}),
        ),
        Attack(
            "binary-entry-file",
            "EvaluationFailed",
            tarball=make_tarball({"main.jsonnet": b"\xff\xfe\x00\x01{"}),
        ),
    ]


def http_attacks(hostile: str) -> list[Attack]:
    fail = "SourceFetchFailed"
    return [
        Attack("http-404", fail, redirect=f"{hostile}/status/404", says="HTTP 404"),
        Attack("http-403", fail, redirect=f"{hostile}/status/403", says="HTTP 403"),
        Attack("http-410", fail, redirect=f"{hostile}/status/410", says="HTTP 410"),
        Attack("http-500", fail, redirect=f"{hostile}/status/500", says="HTTP 500"),
        Attack("http-503", fail, redirect=f"{hostile}/status/503", says="HTTP 503"),
        Attack("http-429", fail, redirect=f"{hostile}/status/429", says="HTTP 429"),
        Attack("redirect-loop", fail, redirect=f"{hostile}/loop", says="redirects"),
        Attack("redirect-to-ftp", fail, redirect="ftp://example.com/a.tar.gz", says="ftp"),
        Attack(
            "redirect-to-metadata",
            fail,
            redirect="http://169.254.169.254/latest/meta-data",
            says="169.254.169.254",
        ),
        Attack("redirect-to-unspecified", fail, redirect="http://0.0.0.0:9/a", says="0.0.0.0"),
        Attack("redirect-to-ipv6-unspecified", fail, redirect="http://[::]:9/a"),
        Attack("redirect-to-multicast", fail, redirect="http://224.0.0.1/a"),
        Attack("redirect-to-link-local-v6", fail, redirect="http://[fe80::1]/a"),
        Attack(
            "redirect-chain-to-metadata",
            fail,
            redirect=f"{hostile}/to?target=http://169.254.169.254/",
            says="169.254.169.254",
        ),
        Attack(
            "credentials-and-token-404",
            fail,
            redirect=hostile.replace("http://", "http://admin:S3cr3t@") + "/status/404?token=T0K3N",
            says="HTTP 404",
        ),
        Attack("trickle", fail, redirect=f"{hostile}/trickle", says="--download-min-rate"),
        Attack("lying-content-length", fail, redirect=f"{hostile}/lying-length"),
    ]


def url_attacks() -> list[Attack]:
    fail = "SourceFetchFailed"
    return [
        Attack("url-ftp", fail, artifact={"url": "ftp://example.com/a.tar.gz"}),
        Attack("url-file", fail, artifact={"url": "file:///etc/passwd"}),
        Attack("url-metadata", fail, artifact={"url": "http://169.254.169.254/latest/"}),
        Attack("url-metadata-hex", fail, artifact={"url": "http://0xa9fea9fe/"}),
        Attack("url-metadata-decimal", fail, artifact={"url": "http://2852039166/"}),
        Attack("url-metadata-octal", fail, artifact={"url": "http://0251.0376.0251.0376/"}),
        Attack("url-metadata-mapped-v6", fail, artifact={"url": "http://[::ffff:a9fe:a9fe]/"}),
        Attack("url-unspecified", fail, artifact={"url": "http://0.0.0.0/"}),
        Attack("url-zero-network", fail, artifact={"url": "http://0.1.2.3/"}),
        Attack("url-multicast", fail, artifact={"url": "http://239.1.2.3/"}),
        Attack("url-not-a-url", fail, artifact={"url": "not a url"}),
        Attack("url-without-host", fail, artifact={"url": "http:///a.tar.gz"}),
    ]


def digest_attacks(other_digest: str) -> list[Attack]:
    fail = "SourceFetchFailed"
    return [
        Attack("digest-mismatch", fail, artifact={"digest": other_digest}, says="mismatch"),
        Attack("digest-malformed", fail, artifact={"digest": "sha256:xyz"}, says="malformed"),
        Attack(
            "digest-too-short", fail, artifact={"digest": "sha256:" + "0" * 63}, says="malformed"
        ),
        Attack("digest-md5", fail, artifact={"digest": "md5:" + "0" * 32}, says="unsupported"),
        Attack("digest-crc32", fail, artifact={"digest": "crc32:0a1b2c3d"}, says="unsupported"),
    ]


def jsonnet_attacks() -> list[Attack]:
    fail = "EvaluationFailed"
    return [
        Attack("runtime-error", fail, program="{ a: error 'boom' }", says="boom"),
        Attack("syntax-error", fail, program="{ a: }", says="main.jsonnet:1"),
        Attack(
            "unbounded-recursion",
            fail,
            program="local f(x) = f(x + 1); f(0)",
            or_else=RACES_THE_CLOCK,
        ),
        Attack(
            "endless-loop",
            "EvaluationTimeout",
            # About 10^12 additions in constant memory: it never finishes on its own.
            program="std.foldl(function(acc, x) acc + std.foldl(function(a, y) a + y, "
            "std.range(0, 1000000), 0), std.range(0, 1000000), 0)",
        ),
        Attack(
            "memory-bomb",
            fail,
            program="std.length(std.makeArray(1000000000, function(i) i))",
            or_else=RACES_THE_CLOCK,
        ),
        Attack(
            "output-over-max-artifact-bytes",
            "ArtifactTooLarge",
            program="std.join('', std.makeArray(2048, function(i) std.repeat('x', 1024)))",
            says="--max-artifact-bytes",
        ),
        Attack("missing-import", fail, program="import 'nowhere.libsonnet'"),
        Attack("importstr-traversal", fail, program="importstr '../../../etc/passwd'"),
        Attack("undefined-ext-var", fail, program="std.extVar('undefined')"),
        Attack("function-without-tla", fail, program="function(x) x"),
        Attack(
            "ten-thousand-nested-arrays",
            fail,
            program="[" * 10_000 + "]" * 10_000,
            or_else=RACES_THE_CLOCK,
        ),
        Attack(
            "long-multibyte-error",
            fail,
            program="error std.join('', std.makeArray(2000, function(i) '✓'))",
        ),
    ]


def bucket_path(namespace: str, name: str, status: bool = False) -> str:
    path = resource_path("source.toolkit.fluxcd.io", "v1", "buckets", namespace, name)
    return path + "/status" if status else path


async def attack(
    client: KubeClient, kube: ApiClient, flux: FluxPublisher, namespace: str, case: Attack
) -> Callable[[], Awaitable[None]]:
    """Make the case's snippet Synced on a good artifact; return what launches its attack."""
    name = case.name
    if case.program is not None:
        await create_snippet(client, namespace, name, files={"main.jsonnet": GOOD})

        async def launch_inline() -> None:
            await client.merge_patch(
                snippet_path(namespace, name), {"spec": {"files": {"main.jsonnet": case.program}}}
            )

        return launch_inline
    good = make_tarball({"main.jsonnet": GOOD})
    published = await flux.publish_tarball(kube, "Bucket", namespace, name, good, "good")
    await create_snippet(client, namespace, name, sourceRef={"kind": "Bucket", "name": name})

    async def launch_source() -> None:
        if case.tarball is not None:
            await flux.publish_tarball(
                kube, "Bucket", namespace, name, case.tarball, "hostile", filename="hostile.tar.gz"
            )
        elif case.redirect is not None:
            # A digest nothing is cached under, so the artifact must be downloaded.
            fresh = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
            flux.put_redirect(published.path, case.redirect)
            await bump_revision(client, namespace, name, {"digest": fresh})
        else:
            await bump_revision(client, namespace, name, dict(case.artifact or {}))

    return launch_source


async def bump_revision(
    client: KubeClient, namespace: str, name: str, artifact: dict[str, str]
) -> None:
    """Write a new artifact revision (with ``artifact`` fields) into the Bucket's status."""
    current = await client.get(bucket_path(namespace, name))
    fields = {**current["status"]["artifact"], "revision": "hostile", **artifact}
    await client.merge_patch(bucket_path(namespace, name, True), {"status": {"artifact": fields}})


def verdict(obj: dict[str, Any], case: Attack, good_url: str) -> str | None:
    """Why ``obj`` does not (yet) show the case's expected end, or None when it does."""
    status = obj.get("status") or {}
    ready = find_condition(status.get("conditions"), "Ready") or {}
    if ready.get("reason") != case.reason and ready.get("reason") not in case.or_else:
        return f"reason {ready.get('reason')!r}"
    message = str(ready.get("message"))
    if case.says and case.says not in message:
        return f"message {message[:300]!r} lacks {case.says!r}"
    if any(secret in message for secret in SECRET_URL_PARTS):
        return f"message leaks URL credentials or query: {message[:300]!r}"
    if status.get("artifactURL") != good_url:
        return f"artifactURL moved to {status.get('artifactURL')!r}"
    return None


async def test_every_attack_ends_in_its_reason_and_keeps_the_last_good_artifact(
    kube_client: KubeClient, kube: ApiClient, flux: FluxPublisher, hostile: HostileServer
) -> None:
    client = kube_client
    namespace = await create_namespace(client, "corpus")
    neighbour = await create_namespace(client, "corpus-neighbour")
    other = hashlib.sha256(b"other bytes").hexdigest()
    cases = [
        *tarball_attacks(),
        *http_attacks(hostile.base),
        *url_attacks(),
        *digest_attacks(f"sha256:{other}"),
        *jsonnet_attacks(),
    ]
    assert len(cases) >= 60
    assert len({c.name for c in cases}) == len(cases)
    launches = [await attack(client, kube, flux, namespace, case) for case in cases]
    good_urls = await wait_all_synced(client, namespace, [c.name for c in cases])
    await create_snippet(client, neighbour, "n", files={"main.jsonnet": "{ v: 1 }"})
    await asyncio.gather(*(launch() for launch in launches))
    started = time.monotonic()
    await client.merge_patch(
        snippet_path(neighbour, "n"), {"spec": {"files": {"main.jsonnet": "{ v: 2 }"}}}
    )
    neighbour_latency = await wait_neighbour(client, neighbour, started)
    FIGURES.append(
        f"hostile corpus: {len(cases)} cases; neighbour create→Ready during the attacks: "
        f"{neighbour_latency:.2f} s"
    )
    pending = {c.name: c for c in cases}
    why: dict[str, str] = {}
    deadline = time.monotonic() + 150
    while pending and time.monotonic() < deadline:
        for name, case in list(pending.items()):
            obj = await client.get(snippet_path(namespace, name))
            problem = verdict(obj, case, good_urls[name])
            if problem is None:
                del pending[name]
            else:
                why[name] = problem
        await asyncio.sleep(1.0)
    assert not pending, "\n".join(f"{name}: {why.get(name)}" for name in sorted(pending))
    reasons: dict[str, int] = {}
    for case in cases:
        reasons[case.reason] = reasons.get(case.reason, 0) + 1
    FIGURES.append(f"hostile corpus reasons: {dict(sorted(reasons.items()))}")
    # The last good artifacts are still served, byte for byte.
    for name in ("gzip-bomb", "redirect-to-metadata", "digest-mismatch", "memory-bomb"):
        assert untar(await download(good_urls[name]))["rendered.json"] == GOOD_RENDERED


async def wait_all_synced(client: KubeClient, namespace: str, names: list[str]) -> dict[str, str]:
    """Wait until every named snippet is Synced; return their artifact URLs."""
    deadline = time.monotonic() + 120
    urls: dict[str, str] = {}
    while time.monotonic() < deadline:
        items = (await client.get(snippet_path(namespace)))["items"]
        for item in items:
            status = item.get("status") or {}
            ready = find_condition(status.get("conditions"), "Ready") or {}
            if ready.get("reason") == "Synced":
                urls[item["metadata"]["name"]] = status["artifactURL"]
        if len(urls) == len(names):
            return urls
        await asyncio.sleep(0.5)
    raise AssertionError(f"not Synced before the attacks: {sorted(set(names) - set(urls))}")


async def wait_neighbour(client: KubeClient, namespace: str, started: float) -> float:
    """Seconds until the neighbour renders its second generation."""
    deadline = started + 60
    while time.monotonic() < deadline:
        obj = await client.get(snippet_path(namespace, "n"))
        status = obj.get("status") or {}
        ready = find_condition(status.get("conditions"), "Ready") or {}
        if ready.get("reason") == "Synced" and status.get("observedGeneration") == 2:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"the neighbour did not converge: {obj.get('status')}")
