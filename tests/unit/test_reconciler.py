"""The reconcile pipeline over an in-memory API: reason precedence, tenancy, cycles, publishing.

These run in milliseconds and need no control plane, so the order of the
stages (and so which reason wins when a snippet has several problems) can be
changed with confidence; tests/e2e prove the same behaviours on a real
kube-apiserver.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from jaas import defaults
from jaas.api.constants import (
    FINALIZER,
    FLUX_SOURCE_API_VERSION,
    GROUP,
    LIBRARY_PLURAL,
    SOURCE_KIND_PLURALS,
    VERSION,
)
from jaas.api.reasons import Reason, ReasonError
from jaas.api.runbooks import runbook_suffix, with_runbook
from jaas.evaluator.request import EvaluationRequest, EvaluationResult, EvaluatorBusy
from jaas.evaluator.worker import evaluate as evaluate_in_process
from jaas.operator.events import EventRecorder
from jaas.operator.kube import KubeApiError, resource_path
from jaas.operator.publisher import Publisher, external_artifact_path
from jaas.operator.ratelimit import RateLimiter
from jaas.operator.reconciler import ReconcilerOptions, Result, SnippetReconciler, snippet_path
from jaas.operator.tenancy import TokenCache
from jaas.sources.extract import extract_tarball
from jaas.storage.local import LocalStore
from tests.unit.fakes import FakeApi, FakeClient, Obj

NS = "team-a"
SA = "tenant"
TENANT = f"ServiceAccount {NS}/{SA}"


class FakeFetcher:
    """Serves extracted artifacts by URL."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, bytes]] = {}
        self.flows: list[str] = []

    async def fetch_files(
        self, url: str, digest: str | None, path: str = "", *, flow: str = ""
    ) -> dict[str, bytes]:
        self.flows.append(flow)
        if url not in self.files:
            raise ReasonError(Reason.SOURCE_FETCH_FAILED, f"download {url}: HTTP 404")
        return dict(self.files[url])


class InProcessEvaluator:
    """Evaluates with rjsonnet in this process (the pool's isolation is tested elsewhere)."""

    def __init__(self) -> None:
        self.requests: list[EvaluationRequest] = []

    async def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        """The worker's own ``evaluate``: consumer files and caps as in the evaluator process."""
        self.requests.append(request)
        try:
            return evaluate_in_process(request)
        except RuntimeError as err:
            raise ReasonError(Reason.EVALUATION_FAILED, str(err)) from err


class CannedEvaluator(InProcessEvaluator):
    """Answers every request with one given result."""

    def __init__(self, result: EvaluationResult) -> None:
        super().__init__()
        self.result = result

    async def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        self.requests.append(request)
        return self.result


class Objects:
    """The watch cache, as the fake API's current state."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.api.objects.get(_path(kind, namespace, name))

    def authoritative(self, kind: str, namespace: str) -> bool:
        return True


def _path(kind: str, namespace: str, name: str) -> str:
    if kind == "JsonnetSnippet":
        return snippet_path(namespace, name)
    if kind == "JsonnetLibrary":
        return resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace, name)
    group, _, version = FLUX_SOURCE_API_VERSION.rpartition("/")
    return resource_path(group, version, SOURCE_KIND_PLURALS[kind], namespace, name)


class Harness:
    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.api = FakeApi()
        self.api.service_accounts.add((NS, SA))
        self.client = FakeClient(self.api)
        self.fetcher = FakeFetcher()
        self.evaluator = InProcessEvaluator()
        self.store = LocalStore(tmp_path / "store", durable=False)
        self.tokens = TokenCache(self.client.as_kube())
        self.limiter = RateLimiter(0, 1)
        base = ReconcilerOptions(
            shard="shard-0",
            no_cross_namespace_refs=True,
            max_stack=500,
            operator_ext_vars={"cluster": "unit"},
            default_service_account=None,
            shared_library_aliases=frozenset({"shared"}),
            max_artifact_bytes=0,
            max_withdraw_wait=3600.0,
        )
        self.reconciler = SnippetReconciler(
            self.client.as_kube(),
            objects=Objects(self.api),
            tokens=self.tokens,
            fetcher=self.fetcher,
            evaluator=self.evaluator,
            publisher=Publisher(self.store, "http://storage", gc_grace=0.0),
            recorder=EventRecorder(self.client.as_kube(), "shard-0"),
            limiter=self.limiter,
            options=replace(base, **options),
        )

    def snippet(self, name: str = "s", namespace: str = NS, **spec: Any) -> None:
        spec.setdefault("serviceAccountName", SA)
        if "sourceRef" not in spec:
            spec.setdefault("files", {"main.jsonnet": "{ a: 1 }"})
        self.api.put(
            snippet_path(namespace, name),
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "JsonnetSnippet",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            },
        )

    def update_spec(self, name: str = "s", namespace: str = NS, **spec: Any) -> None:
        """Change the snippet's spec as a user would (status kept, generation bumped)."""
        obj = self.api.objects[snippet_path(namespace, name)]
        obj["spec"] = {**obj["spec"], **spec}
        obj["metadata"]["generation"] += 1

    async def events(self) -> list[Obj]:
        await self.reconciler.flush_events()
        return [o for p, o in self.api.objects.items() if "/events/" in p]

    def library(self, name: str, namespace: str = NS, **spec: Any) -> None:
        self.api.put(
            _path("JsonnetLibrary", namespace, name),
            {"metadata": {"name": name, "namespace": namespace}, "spec": spec},
        )

    def source(
        self, kind: str, name: str, files: dict[str, bytes], namespace: str = NS, ready: bool = True
    ) -> None:
        url = f"http://sc/{kind}/{namespace}/{name}.tar.gz"
        self.fetcher.files[url] = files
        ready_condition = {"type": "Ready", "status": str(ready), "reason": "Succeeded"}
        self.api.put(
            _path(kind, namespace, name),
            {
                "metadata": {"name": name, "namespace": namespace},
                "spec": {},
                "status": {
                    "conditions": [ready_condition],
                    "artifact": {"url": url, "revision": "r1"},
                },
            },
        )

    def status(self, name: str = "s", namespace: str = NS) -> dict[str, Any]:
        obj = self.api.objects[snippet_path(namespace, name)]
        status: dict[str, Any] = obj.get("status") or {}
        return status

    def ready(self, name: str = "s", namespace: str = NS) -> dict[str, Any]:
        for cond in self.status(name, namespace).get("conditions") or []:
            if cond["type"] == "Ready":
                return dict(cond)
        return {}

    async def reconcile(self, name: str = "s", namespace: str = NS) -> Result | ReasonError:
        try:
            return await self.reconciler.reconcile((namespace, name))
        except ReasonError as err:
            return err

    async def reason(self, name: str = "s", namespace: str = NS) -> str:
        outcome = await self.reconcile(name, namespace)
        reason = outcome.reason.value if isinstance(outcome, ReasonError) else outcome.reason
        assert self.ready(name, namespace).get("reason") == reason, self.status(name, namespace)
        return reason

    def external_artifact(self, name: str = "s", namespace: str = NS) -> Obj | None:
        return self.api.objects.get(external_artifact_path(namespace, name))


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


async def test_a_good_snippet_is_published_as_the_tenant(h: Harness) -> None:
    h.snippet(files={"main.jsonnet": "{ a: std.extVar('cluster') }"})
    assert await h.reason() == "Synced"
    ea = h.external_artifact()
    assert ea is not None
    assert ea["status"]["artifact"]["revision"] == h.status()["revision"]
    rendered = b'{\n   "a": "unit"\n}\n'
    assert h.ready()["message"] == (
        f"Rendered {len(rendered)} bytes from 1 files: rendered.json is not Kubernetes "
        "objects ($.a: a string, not a Kubernetes object), a Kustomization of this "
        "artifact fails"
    )
    assert FINALIZER in h.api.objects[snippet_path(NS, "s")]["metadata"]["finalizers"]
    # ExternalArtifact writes are the tenant's; snippet writes and the mint are the operator's.
    assert {ident for ident, _, path in h.api.calls if "externalartifacts" in path} == {TENANT}
    assert {ident for ident, _, path in h.api.calls if "jsonnetsnippets" in path} == {"operator"}
    assert {ident for ident, _, path in h.api.calls if path.endswith("/token")} == {"operator"}
    stored = list((h.store.root / NS / "s").iterdir())
    assert [p.name for p in stored] == [ea["status"]["artifact"]["path"].rsplit("/", 1)[1]]


@pytest.mark.parametrize(
    ("spec", "winner"),
    [
        # An unparseable spec cannot even say it is suspended.
        ({"suspend": True, "entryFile": "../x"}, "InvalidSpec"),
        # Suspended comes before every other check.
        ({"suspend": True, "serviceAccountName": "", "libraries": [{"name": "a/b"}]}, "Suspended"),
        (
            {"serviceAccountName": "", "externalVariables": [{"name": "cluster", "value": "x"}]},
            "ServiceAccountMissing",
        ),
        (
            {"externalVariables": [{"name": "cluster"}], "libraries": [{"name": "a/b"}]},
            "ExternalVariableConflict",
        ),
        ({"libraries": [{"name": "shared"}]}, "InvalidSpec"),
        (
            {
                "libraries": [{"name": "lib", "importPath": "x y"}],
                "sourceRef": {"kind": "ExternalArtifact", "name": "s"},
            },
            "InvalidSpec",
        ),
        # A cycle is found before any tenant work: the named ServiceAccount is never asked for.
        (
            {
                "serviceAccountName": "nobody",
                "sourceRef": {"kind": "ExternalArtifact", "name": "s"},
            },
            "DependencyCycle",
        ),
        (
            {
                "serviceAccountName": "nobody",
                "sourceRef": {"kind": "GitRepository", "name": "r", "namespace": "other"},
            },
            "ServiceAccountMissing",
        ),
        (
            {
                "sourceRef": {"kind": "GitRepository", "name": "r", "namespace": "other"},
                "libraries": [{"name": "missing"}],
            },
            "CrossNamespaceRefRejected",
        ),
        (
            {"files": {"main.jsonnet": "error 'no'"}, "libraries": [{"name": "missing"}]},
            "LibraryNotFound",
        ),
        ({"files": {"other.jsonnet": "{}"}}, "InvalidSpec"),
        ({"files": {"main.jsonnet": "{ a: error 'boom' }"}}, "EvaluationFailed"),
        ({"sourceRef": {"kind": "Bucket", "name": "absent"}}, "SourceFetchFailed"),
    ],
)
async def test_reason_precedence(h: Harness, spec: dict[str, Any], winner: str) -> None:
    h.snippet(**spec)
    assert await h.reason() == winner
    assert h.external_artifact() is None
    assert h.status()["observedGeneration"] == 1


async def test_default_service_account_is_used_when_the_snippet_names_none(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, default_service_account=SA)
    h.snippet(serviceAccountName="")
    assert await h.reason() == "Synced"
    assert h.tokens.mints == 1


async def test_failures_are_transient_or_permanent(h: Harness) -> None:
    h.source("GitRepository", "notready", {"main.jsonnet": b"{}"}, ready=False)
    h.snippet("a", sourceRef={"kind": "GitRepository", "name": "notready"})
    h.snippet("b", files={"main.jsonnet": "error 'x'"})
    a, b = await h.reconcile("a"), await h.reconcile("b")
    assert isinstance(a, ReasonError)
    assert a.reason is Reason.SOURCE_NOT_READY
    assert a.transient
    assert isinstance(b, ReasonError)
    assert b.reason is Reason.EVALUATION_FAILED
    assert not b.transient


@pytest.mark.parametrize("kind", ["GitRepository", "OCIRepository", "Bucket", "ExternalArtifact"])
async def test_a_source_the_tenant_may_not_read_is_rbac_denied_and_nothing_is_published(
    h: Harness, kind: str
) -> None:
    plural = SOURCE_KIND_PLURALS[kind]
    h.api.deny(TENANT, "get", f"{plural}.source.toolkit.fluxcd.io")
    h.source(kind, "src", {"main.jsonnet": b"{}"})
    h.snippet(sourceRef={"kind": kind, "name": "src"})
    assert await h.reason() == "RBACDenied"
    message = h.ready()["message"]
    assert "resolve source" in message
    assert f"may not get {plural}.source.toolkit.fluxcd.io" in message
    assert TENANT in message
    assert h.external_artifact() is None
    # The operator itself never read the source.
    assert not [c for c in h.api.calls if c[0] == "operator" and plural in c[2]]
    # Granting it heals the same snippet on the next reconcile.
    h.api.allow(TENANT, "get", f"{plural}.source.toolkit.fluxcd.io")
    assert await h.reason() == "Synced"


@pytest.mark.parametrize(
    ("verb", "resource", "setup"),
    [
        ("create", "externalartifacts.source.toolkit.fluxcd.io", "new"),
        ("patch", "externalartifacts.source.toolkit.fluxcd.io/status", "new"),
        ("patch", "externalartifacts.source.toolkit.fluxcd.io", "foreign"),
    ],
)
async def test_publishing_without_a_verb_is_rbac_denied_at_publish(
    h: Harness, verb: str, resource: str, setup: str
) -> None:
    h.api.deny(TENANT, verb, resource)
    if setup == "foreign":
        h.api.put(
            external_artifact_path(NS, "s"),
            {"metadata": {"name": "s", "namespace": NS}, "spec": {"sourceRef": {"kind": "X"}}},
        )
    h.snippet()
    assert await h.reason() == "RBACDenied"
    message = h.ready()["message"]
    assert message.startswith(f"RBAC denied at publish: {TENANT} may not {verb} {resource}")
    assert "revision" not in h.status()


async def test_a_missing_external_artifact_crd_names_the_crd(h: Harness) -> None:
    h.api.not_served.add("externalartifacts.source.toolkit.fluxcd.io")
    h.snippet()
    assert await h.reason() == "RBACDenied"
    assert "does not serve externalartifacts.source.toolkit.fluxcd.io" in h.ready()["message"]
    assert "install its CustomResourceDefinition" in h.ready()["message"]


async def test_a_named_service_account_that_does_not_exist_is_missing(h: Harness) -> None:
    h.snippet(serviceAccountName="ghost")
    assert await h.reason() == "ServiceAccountMissing"
    assert "ServiceAccount team-a/ghost does not exist" in h.ready()["message"]


async def test_concurrent_reconciles_mint_one_token_per_service_account(h: Harness) -> None:
    for i in range(10):
        h.snippet(f"s{i}")
    results = await asyncio.gather(*(h.reconcile(f"s{i}") for i in range(10)))
    assert all(isinstance(r, Result) and r.reason == "Synced" for r in results)
    assert h.api.tokens_minted == 1


async def test_a_revoked_token_is_minted_again_once(h: Harness) -> None:
    h.snippet("a")
    assert await h.reason("a") == "Synced"
    h.api.revoked.add("token-1")
    h.snippet("b")
    assert await h.reason("b") == "Synced"
    assert h.api.tokens_minted == 2


async def test_cross_namespace_failures_read_the_same_whatever_the_cause(tmp_path: Path) -> None:
    h = Harness(tmp_path, no_cross_namespace_refs=False)
    grant = ("get", "gitrepositories.source.toolkit.fluxcd.io")
    h.source("GitRepository", "repo", {"main.jsonnet": b"{}"}, namespace="other")
    h.snippet("denied", sourceRef={"kind": "GitRepository", "name": "repo", "namespace": "other"})
    h.snippet("absent", sourceRef={"kind": "GitRepository", "name": "repo", "namespace": "nope"})
    h.api.deny(TENANT, *grant)
    assert await h.reason("denied") == "RBACDenied"
    h.api.allow(TENANT, *grant)
    assert await h.reason("absent") == "SourceFetchFailed"
    denied, absent = h.ready("denied")["message"], h.ready("absent")["message"]
    for message in (denied, absent):
        assert "Forbidden" not in message
        assert "not found" not in message
        assert "http://" not in message
    # The reasons differ; what the messages say about the namespaces does not.
    denied = denied.removesuffix(runbook_suffix(Reason.RBAC_DENIED))
    absent = absent.removesuffix(runbook_suffix(Reason.SOURCE_FETCH_FAILED))
    assert denied.replace("'other'", "'X'") == absent.replace("'nope'", "'X'")
    # With access granted the cross-namespace source works.
    assert await h.reason("denied") == "Synced"


async def test_cross_namespace_references_are_refused_before_any_api_call(h: Harness) -> None:
    h.snippet("lib", libraries=[{"name": "l", "namespace": "other"}])
    h.library("l", namespace=NS, sourceRef={"kind": "Bucket", "name": "b", "namespace": "other"})
    h.snippet("libsrc", libraries=[{"name": "l"}])
    assert await h.reason("lib") == "CrossNamespaceRefRejected"
    assert await h.reason("libsrc") == "CrossNamespaceRefRejected"
    assert "library 'l'" in h.ready("libsrc")["message"]
    assert not [c for c in h.api.calls if "/namespaces/other/" in c[2]]


@pytest.mark.parametrize("shape", ["self", "two", "three", "library"])
async def test_dependency_cycles_name_their_path(h: Harness, shape: str) -> None:
    def via_ea(name: str) -> dict[str, Any]:
        return {"sourceRef": {"kind": "ExternalArtifact", "name": name}}

    if shape == "self":
        h.snippet("a", **via_ea("a"))
        expected = f"{NS}/a → {NS}/a"
    elif shape == "two":
        h.snippet("a", **via_ea("b"))
        h.snippet("b", **via_ea("a"))
        expected = f"{NS}/a → {NS}/b → {NS}/a"
    elif shape == "three":
        h.snippet("a", **via_ea("b"))
        h.snippet("b", **via_ea("c"))
        h.snippet("c", **via_ea("a"))
        expected = f"{NS}/a → {NS}/b → {NS}/c → {NS}/a"
    else:
        h.library("lib", sourceRef={"kind": "ExternalArtifact", "name": "a"})
        h.snippet("a", libraries=[{"name": "lib"}])
        expected = f"{NS}/a → library {NS}/lib → {NS}/a"
    assert await h.reason("a") == "DependencyCycle"
    assert expected in h.ready("a")["message"]
    assert h.external_artifact("a") is None


async def test_chained_snippets_read_the_upstream_artifact(h: Harness) -> None:
    template = b"function(env='dev') { env: env }"
    h.snippet("base", output="source", files={"main.jsonnet": template.decode()})
    assert await h.reason("base") == "Synced"
    ea = h.external_artifact("base")
    assert ea is not None
    assert (h.store.root / ea["status"]["artifact"]["path"]).is_file()
    h.fetcher.files[ea["status"]["artifact"]["url"]] = {"main.jsonnet": template}
    h.snippet(
        "derived",
        sourceRef={"kind": "ExternalArtifact", "name": "base"},
        tlas=[{"name": "env", "value": "prod"}],
    )
    assert await h.reason("derived") == "Synced"
    request = h.evaluator.requests[-1]
    assert request.files == {"main.jsonnet": template}
    assert [(v.name, v.value) for v in request.tlas] == [("env", "prod")]


async def test_artifact_too_large(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_artifact_bytes=10)
    h.snippet(files={"main.jsonnet": "{ text: 'more than ten bytes' }"})
    assert await h.reason() == "ArtifactTooLarge"
    assert h.ready()["message"] == with_runbook(
        Reason.ARTIFACT_TOO_LARGE,
        "rendered.json would be 37 bytes, over the 10-byte limit (--max-artifact-bytes); "
        "refused in the evaluator, nothing published",
    )


async def test_a_file_for_kustomize_over_the_per_file_cap_is_refused_naming_that_limit(
    tmp_path: Path,
) -> None:
    # rendered.json (8.7 MB) is under --max-artifact-bytes; objects.yaml, where
    # U+2713 takes 6 bytes instead of 3, is over the 16 MiB consumers extract.
    h = Harness(tmp_path, max_artifact_bytes=10 * 1024 * 1024)
    program = (
        "{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'x'}, "
        "data: {v: std.repeat('\u2713', 2900000)}}"
    )
    h.snippet(files={"main.jsonnet": program})
    assert await h.reason() == "ArtifactTooLarge"
    assert h.ready()["message"] == with_runbook(
        Reason.ARTIFACT_TOO_LARGE,
        "objects.yaml (written beside rendered.json for kustomize) would be 17400183 bytes, "
        "over the 16777216-byte per-file limit consumers can extract; refused in the "
        "evaluator, nothing published",
    )
    assert h.external_artifact() is None


async def test_a_render_of_objects_is_published_with_the_evaluators_files_for_kustomize(
    h: Harness,
) -> None:
    program = (
        "[{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: n}, data: {replicas: '2'}}"
        " for n in ['a', 'b']]"
    )
    h.snippet(files={"main.jsonnet": program})
    assert await h.reason() == "Synced"
    ea = h.external_artifact()
    assert ea is not None
    tarball = (h.store.root / ea["status"]["artifact"]["path"]).read_bytes()
    files = extract_tarball(tarball)
    assert sorted(files) == ["kustomization.yaml", "objects.yaml", "rendered.json"]
    assert h.ready()["message"] == (
        f"Rendered {len(files['rendered.json'])} bytes from 1 files: 2 Kubernetes objects"
    )
    assert files["objects.yaml"].count(b"---\n") == 2


async def test_the_package_stage_publishes_what_the_evaluator_sent_without_parsing_it(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    consumer_files = {"kustomization.yaml": b"resources: []\n"}
    canned = EvaluationResult(b"not JSON at all", 0.0, 0, 0, consumer_files, "as sent")
    h.reconciler.evaluator = CannedEvaluator(canned)
    h.snippet()
    assert await h.reason() == "Synced"
    assert h.ready()["message"] == "Rendered 15 bytes from 1 files: as sent"
    ea = h.external_artifact()
    assert ea is not None
    tarball = (h.store.root / ea["status"]["artifact"]["path"]).read_bytes()
    assert extract_tarball(tarball) == {"rendered.json": b"not JSON at all", **consumer_files}


async def test_a_failure_keeps_the_last_good_artifact(h: Harness) -> None:
    h.snippet()
    assert await h.reason() == "Synced"
    good = dict(h.status())
    ea_before = h.external_artifact()
    h.update_spec(files={"main.jsonnet": "{ a: error 'broken' }"})
    assert await h.reason() == "EvaluationFailed"
    assert h.status()["observedGeneration"] == 2
    assert h.status()["revision"] == good["revision"]
    assert h.status()["artifactURL"] == good["artifactURL"]
    assert h.external_artifact() == ea_before


async def test_rate_limited_reconciles_are_deferred_without_touching_ready(h: Harness) -> None:
    h.reconciler.limiter = RateLimiter(1 / 60, 1, clock=lambda: 0.0)
    h.snippet()
    assert await h.reason() == "Synced"
    before = h.ready()
    result = await h.reconcile()
    assert isinstance(result, Result)
    assert result.reason == "RateLimited"
    assert result.requeue_after == pytest.approx(60)
    assert h.ready() == before


async def test_deletion_withdraws_as_the_tenant_and_a_refusal_is_forced(h: Harness) -> None:
    h.snippet()
    assert await h.reason() == "Synced"
    obj = h.api.objects[snippet_path(NS, "s")]
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    h.api.deny(TENANT, "delete", "externalartifacts.source.toolkit.fluxcd.io")
    result = await h.reconcile()
    assert isinstance(result, Result)
    assert result.reason == "Deleted"
    assert FINALIZER not in h.api.objects[snippet_path(NS, "s")]["metadata"]["finalizers"]
    assert h.ready()["reason"] == "RBACDenied"
    assert "withdraw" in h.ready()["message"]
    assert h.external_artifact() is not None  # could not be deleted
    assert not (h.store.root / NS / "s").exists()  # but the files are gone
    assert any(e["reason"] == "WithdrawForced" for e in await h.events())


@pytest.mark.parametrize("started", ["2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z"])
async def test_a_withdraw_that_keeps_failing_gives_up_after_max_withdraw_wait(
    h: Harness, started: str
) -> None:
    h.snippet()
    assert await h.reason() == "Synced"
    h.api.objects[snippet_path(NS, "s")]["metadata"]["deletionTimestamp"] = started
    h.api.failing["delete", "externalartifacts.source.toolkit.fluxcd.io"] = 500
    if started.startswith("2000"):  # past --max-withdraw-wait: forced, files deleted
        assert isinstance(await h.reconcile(), Result)
        finalizers = h.api.objects[snippet_path(NS, "s")]["metadata"]["finalizers"]
        assert FINALIZER not in finalizers
        assert not (h.store.root / NS / "s").exists()
        notes = [e["note"] for e in await h.events() if e["reason"] == "WithdrawForced"]
        assert len(notes) == 1
        assert "withdraw_timed_out" in notes[0]
    else:  # still within it: a transient failure, retried with backoff
        with pytest.raises(KubeApiError):
            await h.reconciler.reconcile((NS, "s"))
        assert FINALIZER in h.api.objects[snippet_path(NS, "s")]["metadata"]["finalizers"]
        assert (h.store.root / NS / "s").exists()


async def test_a_synced_snippet_with_an_interval_asks_to_render_again_after_it(
    h: Harness,
) -> None:
    h.snippet("every", interval="10m")
    h.snippet("once")
    every, once = await h.reconcile("every"), await h.reconcile("once")
    assert isinstance(every, Result)
    assert isinstance(once, Result)
    assert every.requeue_after is not None
    assert 570 <= every.requeue_after <= 630  # 10m ± 5 % jitter (Flux)
    assert once.requeue_after is None


async def test_downloads_are_charged_to_the_namespace_the_work_is_for(tmp_path: Path) -> None:
    h = Harness(tmp_path, no_cross_namespace_refs=False)
    h.source("GitRepository", "shared", {"main.jsonnet": b"{}"}, namespace="other")
    h.snippet("mine", sourceRef={"kind": "GitRepository", "name": "shared", "namespace": "other"})
    assert await h.reason("mine") == "Synced"
    assert h.fetcher.flows == [NS]  # the snippet's namespace, not the source's


async def test_an_unexpected_failure_leaves_no_stale_ready_true(h: Harness) -> None:
    h.source("GitRepository", "repo", {"main.jsonnet": b"{ a: 1 }"})
    h.snippet(sourceRef={"kind": "GitRepository", "name": "repo"})
    assert await h.reason() == "Synced"
    published = h.status()["artifactURL"]

    async def broken(*args: object, **kwargs: object) -> dict[str, bytes]:
        raise RuntimeError("a bug in a library")

    h.fetcher.fetch_files = broken  # type: ignore[method-assign]
    h.update_spec(entryFile="main.jsonnet")
    with pytest.raises(RuntimeError, match="a bug"):
        await h.reconcile()  # raised on, so the controller retries with backoff
    assert h.ready()["status"] == "Unknown"
    assert h.ready()["reason"] == "ProgressingWithRetry"
    assert h.ready()["message"] == (
        "reconcile failed, retrying with backoff: RuntimeError: a bug in a library"
    )
    assert h.status()["observedGeneration"] == 2
    assert h.status()["artifactURL"] == published  # the last good artifact stays


async def test_a_status_too_large_for_etcd_is_written_with_a_short_message(h: Harness) -> None:
    h.snippet(files={"main.jsonnet": "error std.join('', std.makeArray(3000, function(i) 'x'))"})
    h.api.max_request_bytes = 2000
    assert await h.reason() == "EvaluationFailed"
    message = h.ready()["message"]
    assert len(message) <= 512
    assert "characters cut" in message


class BusyEvaluator(InProcessEvaluator):
    """Refuses every request, as a pool whose queue is full does."""

    async def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        self.requests.append(request)
        raise EvaluatorBusy("all 2 evaluators are busy")


async def test_a_busy_pool_requeues_the_snippet_without_failing_it(h: Harness) -> None:
    h.snippet(files={"main.jsonnet": "{a: 1}"})
    assert await h.reason() == "Synced"
    synced = h.status()
    h.reconciler.evaluator = BusyEvaluator()

    # A re-render of the same generation keeps its status.
    outcome = await h.reconcile()
    assert isinstance(outcome, Result)
    assert outcome.reason == "EvaluatorBusy"
    assert outcome.requeue_after == defaults.EVALUATOR_BUSY_REQUEUE
    assert h.status() == synced

    # A new generation is Progressing, not the old generation's Ready=True.
    h.update_spec(files={"main.jsonnet": "{a: 2}"})
    outcome = await h.reconcile()
    assert isinstance(outcome, Result)
    assert outcome.reason == "EvaluatorBusy"
    status = h.status()
    assert status["observedGeneration"] == synced["observedGeneration"] + 1
    assert h.ready()["status"] == "Unknown"
    assert h.ready()["reason"] == "Progressing"
    assert h.ready()["message"] == "waiting for a free evaluator: all 2 evaluators are busy"
    assert status["revision"] == synced["revision"]  # the last good artifact stays
