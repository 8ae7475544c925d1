"""The JaaS v1 CRDs as a real kube-apiserver enforces them.

Every OpenAPI and CEL rule of ``deploy/crds`` is exercised by creating an object
that breaks it and asserting the 422 ``Invalid`` answer names the field and the
rule's message; valid objects are created and read back to check the defaults
the apiserver fills in and that no field is pruned. The rules and messages are
those of metio/jaas ``api/v1/*.go`` (controller-gen markers), so a manifest is
accepted or refused exactly as by JaaS.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from jaas.api.constants import (
    API_VERSION,
    GROUP,
    LIBRARY_KIND,
    LIBRARY_PLURAL,
    SNIPPET_KIND,
    SNIPPET_PLURAL,
    VERSION,
)
from jaas.operator.kube import KubeClient
from jaas.testing.operator import OperatorProcess
from tests.e2e.helpers import wait_reason

Obj = dict[str, Any]

#: Accept header asking the apiserver for the server-side printed Table (what kubectl get shows).
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io"

INLINE: Obj = {"main.jsonnet": "{ hello: 'world' }"}
GIT_SOURCE: Obj = {"kind": "GitRepository", "name": "repo"}

SPEC_XOR = "exactly one of spec.files or spec.sourceRef must be set"
ENTRY_FILE_DOTS = "entryFile must not contain '..'"
INTERVAL_BOUNDS = "interval must be between 30s and 24h"
CODE_NEEDS_VALUE = "value must be non-empty when code is true"


def snippet(name: str, spec: Obj | None) -> Obj:
    """A JsonnetSnippet manifest; ``spec=None`` leaves ``spec`` out entirely."""
    body: Obj = {"apiVersion": API_VERSION, "kind": SNIPPET_KIND, "metadata": {"name": name}}
    if spec is not None:
        body["spec"] = spec
    return body


def library(name: str, spec: Obj) -> Obj:
    """A JsonnetLibrary manifest."""
    return {
        "apiVersion": API_VERSION,
        "kind": LIBRARY_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


async def create(kube: client.ApiClient, namespace: str, plural: str, body: Obj) -> Obj:
    """Create ``body`` through the real API and return the stored object."""
    api = client.CustomObjectsApi(kube)
    created: Obj = await api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, copy.deepcopy(body)
    )
    return created


async def rejection(kube: client.ApiClient, namespace: str, plural: str, body: Obj) -> Obj:
    """Create ``body``, expect a 422 Invalid answer, and return its Status object."""
    with pytest.raises(ApiException) as info:
        await create(kube, namespace, plural, body)
    return invalid(info.value)


def invalid(error: ApiException) -> Obj:
    """The Status of a 422 ``Invalid`` answer (fails on any other answer)."""
    assert error.status == 422, error.body
    assert error.body is not None
    status: Obj = json.loads(error.body)
    assert status["reason"] == "Invalid", status
    return status


def assert_cause(status: Obj, field: str, fragment: str) -> None:
    """Assert one cause of a 422 Status is on ``field`` and its message contains ``fragment``.

    The top-level ``message`` repeats every cause as ``<field>: <message>``, so it
    is checked too: it is what ``kubectl apply`` prints.
    """
    causes = status["details"]["causes"]
    assert any(c.get("field") == field and fragment in c.get("message", "") for c in causes), (
        f"no cause on {field!r} containing {fragment!r}: {causes}"
    )
    assert field in status["message"], status["message"]
    assert fragment in status["message"], status["message"]


async def table(kube: client.ApiClient, namespace: str, plural: str) -> Obj:
    """The server-side printed Table of ``plural`` in ``namespace``, as ``kubectl get`` shows it."""
    data: Obj = await kube.call_api(
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}",
        "GET",
        header_params={"Accept": TABLE_ACCEPT},
        response_types_map={200: "object"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )
    return data


# ---------------------------------------------------------------------------
# JsonnetSnippet: rejected specs. Each row: test id, spec, field, message part.
# ---------------------------------------------------------------------------

LONG_NAME = "a" * 254

SNIPPET_REJECTIONS: list[tuple[str, Obj, str, str]] = [
    # spec-level CEL: files XOR sourceRef, an empty files map counting as unset
    ("files-and-sourceRef", {"files": INLINE, "sourceRef": GIT_SOURCE}, "spec", SPEC_XOR),
    ("neither-files-nor-sourceRef", {}, "spec", SPEC_XOR),
    ("empty-files-only", {"files": {}}, "spec", SPEC_XOR),
    ("neither-with-other-fields", {"entryFile": "x.jsonnet", "suspend": True}, "spec", SPEC_XOR),
    # entryFile: CEL (any '..' substring, not only a path segment), pattern, length
    (
        "entryFile-parent-segment",
        {"files": INLINE, "entryFile": "a/../main.jsonnet"},
        "spec.entryFile",
        ENTRY_FILE_DOTS,
    ),
    (
        "entryFile-leading-dotdot",
        {"files": INLINE, "entryFile": "../main.jsonnet"},
        "spec.entryFile",
        ENTRY_FILE_DOTS,
    ),
    (
        "entryFile-dotdot-inside-name",
        {"files": INLINE, "entryFile": "main..jsonnet"},
        "spec.entryFile",
        ENTRY_FILE_DOTS,
    ),
    (
        "entryFile-space",
        {"files": INLINE, "entryFile": "main file.jsonnet"},
        "spec.entryFile",
        "should match '^[A-Za-z0-9._/-]+$'",
    ),
    (
        "entryFile-backslash",
        {"files": INLINE, "entryFile": "dir\\main.jsonnet"},
        "spec.entryFile",
        "should match '^[A-Za-z0-9._/-]+$'",
    ),
    (
        "entryFile-non-ascii",
        {"files": INLINE, "entryFile": "mäin.jsonnet"},
        "spec.entryFile",
        "should match '^[A-Za-z0-9._/-]+$'",
    ),
    (
        "entryFile-empty",
        {"files": INLINE, "entryFile": ""},
        "spec.entryFile",
        "should be at least 1 chars long",
    ),
    (
        "entryFile-256-chars",
        {"files": INLINE, "entryFile": "a" * 251 + ".json"},
        "spec.entryFile",
        "may not be more than 255 bytes",
    ),
    # interval: CEL 30s..24h
    ("interval-10s", {"files": INLINE, "interval": "10s"}, "spec.interval", INTERVAL_BOUNDS),
    ("interval-29s", {"files": INLINE, "interval": "29s"}, "spec.interval", INTERVAL_BOUNDS),
    ("interval-25h", {"files": INLINE, "interval": "25h"}, "spec.interval", INTERVAL_BOUNDS),
    ("interval-24h1s", {"files": INLINE, "interval": "24h0m1s"}, "spec.interval", INTERVAL_BOUNDS),
    # history: 1..50
    (
        "history-0",
        {"files": INLINE, "history": 0},
        "spec.history",
        "should be greater than or equal to 1",
    ),
    (
        "history-51",
        {"files": INLINE, "history": 51},
        "spec.history",
        "should be less than or equal to 50",
    ),
    (
        "history-negative",
        {"files": INLINE, "history": -1},
        "spec.history",
        "should be greater than or equal to 1",
    ),
    # output: enum
    (
        "output-yaml",
        {"files": INLINE, "output": "yaml"},
        "spec.output",
        'Unsupported value: "yaml"',
    ),
    (
        "output-capitalised",
        {"files": INLINE, "output": "Rendered"},
        "spec.output",
        'Unsupported value: "Rendered"',
    ),
    # sourceRef: kind enum and required, name required and non-empty
    (
        "sourceRef-kind-HelmChart",
        {"sourceRef": {"kind": "HelmChart", "name": "chart"}},
        "spec.sourceRef.kind",
        'Unsupported value: "HelmChart"',
    ),
    (
        "sourceRef-kind-missing",
        {"sourceRef": {"name": "repo"}},
        "spec.sourceRef.kind",
        "Required value",
    ),
    (
        "sourceRef-name-missing",
        {"sourceRef": {"kind": "Bucket"}},
        "spec.sourceRef.name",
        "Required value",
    ),
    (
        "sourceRef-name-empty",
        {"sourceRef": {"kind": "Bucket", "name": ""}},
        "spec.sourceRef.name",
        "should be at least 1 chars long",
    ),
    # libraries: kind enum and required, name required and non-empty
    (
        "library-kind-wrong",
        {"files": INLINE, "libraries": [{"kind": "ConfigMap", "name": "lib"}]},
        "spec.libraries[0].kind",
        'Unsupported value: "ConfigMap"',
    ),
    (
        "library-kind-missing",
        {"files": INLINE, "libraries": [{"name": "lib"}]},
        "spec.libraries[0].kind",
        "Required value",
    ),
    (
        "library-name-missing",
        {"files": INLINE, "libraries": [{"kind": "JsonnetLibrary"}]},
        "spec.libraries[0].name",
        "Required value",
    ),
    (
        "library-name-empty",
        {
            "files": INLINE,
            "libraries": [
                {"kind": "JsonnetLibrary", "name": "ok"},
                {"kind": "JsonnetLibrary", "name": ""},
            ],
        },
        "spec.libraries[1].name",
        "should be at least 1 chars long",
    ),
    # tlas / externalVariables: item CEL, map-list key uniqueness, name bounds
    (
        "tla-code-without-value",
        {"files": INLINE, "tlas": [{"name": "x", "code": True}]},
        "spec.tlas[0]",
        CODE_NEEDS_VALUE,
    ),
    (
        "tla-code-empty-value",
        {"files": INLINE, "tlas": [{"name": "x", "code": True, "value": ""}]},
        "spec.tlas[0]",
        CODE_NEEDS_VALUE,
    ),
    (
        "extvar-code-empty-value",
        {
            "files": INLINE,
            "externalVariables": [
                {"name": "a", "value": "1"},
                {"name": "b", "code": True, "value": ""},
            ],
        },
        "spec.externalVariables[1]",
        CODE_NEEDS_VALUE,
    ),
    (
        "tla-duplicate-name",
        {"files": INLINE, "tlas": [{"name": "env", "value": "a"}, {"name": "env", "value": "b"}]},
        "spec.tlas[1]",
        "Duplicate value",
    ),
    (
        "extvar-duplicate-name",
        {"files": INLINE, "externalVariables": [{"name": "env"}, {"name": "env", "value": "b"}]},
        "spec.externalVariables[1]",
        "Duplicate value",
    ),
    (
        "tla-name-missing",
        {"files": INLINE, "tlas": [{"value": "a"}]},
        "spec.tlas[0].name",
        "Required value",
    ),
    (
        "tla-name-empty",
        {"files": INLINE, "tlas": [{"name": "", "value": "a"}]},
        "spec.tlas[0].name",
        "should be at least 1 chars long",
    ),
    (
        "extvar-name-254-chars",
        {"files": INLINE, "externalVariables": [{"name": LONG_NAME}]},
        "spec.externalVariables[0].name",
        "may not be more than 253 bytes",
    ),
]


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        pytest.param(spec, field, fragment, id=case)
        for case, spec, field, fragment in SNIPPET_REJECTIONS
    ],
)
async def test_snippet_rule_rejects(
    kube: client.ApiClient, namespace: str, spec: Obj, field: str, fragment: str
) -> None:
    status = await rejection(kube, namespace, SNIPPET_PLURAL, snippet("bad", spec))
    assert_cause(status, field, fragment)
    # Nothing was stored.
    listed = await client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, SNIPPET_PLURAL
    )
    assert listed["items"] == []


async def test_snippet_interval_that_is_not_a_duration_is_rejected(
    kube: client.ApiClient, namespace: str
) -> None:
    status = await rejection(
        kube, namespace, SNIPPET_PLURAL, snippet("bad", {"files": INLINE, "interval": "hourly"})
    )
    # The CEL rule fails to convert the string; the apiserver names the rule it was evaluating.
    assert_cause(status, "spec.interval", INTERVAL_BOUNDS)


async def test_snippet_reports_every_broken_cel_rule_at_once(
    kube: client.ApiClient, namespace: str
) -> None:
    spec = {
        "files": {},
        "entryFile": "../x",
        "interval": "1s",
        "tlas": [{"name": "t", "code": True}],
    }
    status = await rejection(kube, namespace, SNIPPET_PLURAL, snippet("bad", spec))
    assert_cause(status, "spec", SPEC_XOR)
    assert_cause(status, "spec.entryFile", ENTRY_FILE_DOTS)
    assert_cause(status, "spec.interval", INTERVAL_BOUNDS)
    assert_cause(status, "spec.tlas[0]", CODE_NEEDS_VALUE)


async def test_snippet_schema_errors_come_before_cel_rules(
    kube: client.ApiClient, namespace: str
) -> None:
    """The apiserver evaluates CEL rules only on an object that passes the OpenAPI schema."""
    spec = {"files": {}, "entryFile": "../x", "history": 99, "output": "yaml"}
    status = await rejection(kube, namespace, SNIPPET_PLURAL, snippet("bad", spec))
    assert_cause(status, "spec.history", "should be less than or equal to 50")
    assert_cause(status, "spec.output", 'Unsupported value: "yaml"')
    assert "some validation rules were not checked" in status["message"]
    assert SPEC_XOR not in status["message"]
    assert ENTRY_FILE_DOTS not in status["message"]


# ---------------------------------------------------------------------------
# JsonnetSnippet: accepted specs, defaults, no pruning.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"interval": "30s"}, id="interval-30s"),
        pytest.param({"interval": "24h"}, id="interval-24h"),
        pytest.param({"interval": "1h30m"}, id="interval-1h30m"),
        pytest.param({"interval": "86400s"}, id="interval-86400s"),
        pytest.param({"history": 1}, id="history-1"),
        pytest.param({"history": 50}, id="history-50"),
        pytest.param({"output": "source"}, id="output-source"),
        pytest.param({"entryFile": "dashboards/node-1_v2.jsonnet"}, id="entryFile-nested"),
        pytest.param({"entryFile": "./main.jsonnet"}, id="entryFile-dot-slash"),
        pytest.param({"entryFile": "a" * 250 + ".json"}, id="entryFile-255-chars"),
        pytest.param({"tlas": [{"name": "n", "code": True, "value": "3"}]}, id="tla-code"),
        pytest.param({"tlas": [{"name": "n", "code": False}]}, id="tla-string-no-value"),
        pytest.param({"externalVariables": [{"name": "a" * 253, "value": ""}]}, id="extvar-253"),
        pytest.param(
            {"tlas": [{"name": "env", "value": "a"}], "externalVariables": [{"name": "env"}]},
            id="same-name-in-tlas-and-extvars",
        ),
        pytest.param({"suspend": True}, id="suspend"),
    ],
)
async def test_snippet_valid_spec_is_accepted(
    kube: client.ApiClient, namespace: str, extra: Obj
) -> None:
    created = await create(
        kube, namespace, SNIPPET_PLURAL, snippet("ok", {"files": INLINE, **extra})
    )
    for key, value in extra.items():
        assert created["spec"][key] == value


@pytest.mark.parametrize("kind", ["GitRepository", "OCIRepository", "Bucket", "ExternalArtifact"])
async def test_snippet_accepts_every_flux_source_kind(
    kube: client.ApiClient, namespace: str, kind: str
) -> None:
    created = await create(
        kube, namespace, SNIPPET_PLURAL, snippet("ok", {"sourceRef": {"kind": kind, "name": "src"}})
    )
    assert created["spec"]["sourceRef"] == {"kind": kind, "name": "src"}


async def test_snippet_inline_defaults(kube: client.ApiClient, namespace: str) -> None:
    created = await create(kube, namespace, SNIPPET_PLURAL, snippet("inline", {"files": INLINE}))
    assert created["spec"] == {
        "files": INLINE,
        "entryFile": "main.jsonnet",
        "output": "rendered",
        "history": 1,
    }
    assert "status" not in created


async def test_snippet_source_ref_defaults_match_upstream(
    kube: client.ApiClient, namespace: str
) -> None:
    """Only entryFile, output and history are defaulted by the apiserver, as in JaaS.

    sourceRef.apiVersion, libraries[].apiVersion / importPath and the variables'
    ``code`` have no CRD default upstream (the operator defaults them), so they
    stay unset in the stored object.
    """
    spec = {
        "sourceRef": {"kind": "OCIRepository", "name": "manifests"},
        "libraries": [{"kind": "JsonnetLibrary", "name": "grafonnet"}],
        "tlas": [{"name": "cluster", "value": "prod"}],
        "externalVariables": [{"name": "region"}],
    }
    created = await create(kube, namespace, SNIPPET_PLURAL, snippet("from-oci", spec))
    assert created["spec"] == {
        **spec,
        "entryFile": "main.jsonnet",
        "output": "rendered",
        "history": 1,
    }


async def test_snippet_explicit_values_are_kept_over_defaults(
    kube: client.ApiClient, namespace: str
) -> None:
    spec = {"files": INLINE, "entryFile": "app.jsonnet", "output": "source", "history": 7}
    created = await create(kube, namespace, SNIPPET_PLURAL, snippet("explicit", spec))
    assert created["spec"] == spec


async def test_snippet_every_field_round_trips_unpruned(
    kube: client.ApiClient, namespace: str
) -> None:
    """A spec using every field is stored verbatim: no field is unknown to the schema."""
    spec = {
        "serviceAccountName": "renderer",
        "entryFile": "env/prod.jsonnet",
        "sourceRef": {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "name": "config",
            "namespace": "flux-system",
            "path": "jsonnet/app",
        },
        "libraries": [
            {
                "apiVersion": "jaas.metio.wtf/v1",
                "kind": "JsonnetLibrary",
                "name": "k8s-libsonnet",
                "namespace": "shared",
                "importPath": "k",
            },
        ],
        "tlas": [{"name": "replicas", "value": "3", "code": True}],
        "externalVariables": [{"name": "cluster", "value": "eu-1", "code": False}],
        "output": "source",
        "suspend": False,
        "history": 5,
        "interval": "10m",
    }
    created = await create(kube, namespace, SNIPPET_PLURAL, snippet("full", spec))
    assert created["spec"] == spec
    fetched = await client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, SNIPPET_PLURAL, "full"
    )
    assert fetched["spec"] == spec


async def test_snippet_unknown_field_is_pruned(kube: client.ApiClient, namespace: str) -> None:
    created = await create(
        kube, namespace, SNIPPET_PLURAL, snippet("extra", {"files": INLINE, "engine": "go"})
    )
    assert "engine" not in created["spec"]


async def test_snippet_without_spec_is_accepted_like_upstream(
    kube: client.ApiClient, namespace: str
) -> None:
    """JaaS does not mark ``spec`` required, so the files/sourceRef rule only runs when it exists.

    The operator, not admission, reports such an object (Ready=False, InvalidSpec).
    """
    created = await create(kube, namespace, SNIPPET_PLURAL, snippet("bare", None))
    assert "spec" not in created


async def replace_latest(
    kube: client.ApiClient, namespace: str, name: str, change: Obj, *, status: bool = False
) -> Obj:
    """PUT the latest version of a snippet with ``change`` merged in; retry lost races.

    The session's operator may write the snippet (finalizer, status) at any
    moment, which makes a PUT of an older resourceVersion a 409 Conflict.
    """
    api = client.CustomObjectsApi(kube)
    for _ in range(20):
        latest: Obj = await api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, SNIPPET_PLURAL, name
        )
        body = {**latest, **copy.deepcopy(change)}
        replace = (
            api.replace_namespaced_custom_object_status
            if status
            else api.replace_namespaced_custom_object
        )
        try:
            stored: Obj = await replace(GROUP, VERSION, namespace, SNIPPET_PLURAL, name, body)
            return stored
        except ApiException as err:
            if err.status != 409:
                raise
    raise AssertionError(f"could not update {namespace}/{name}: every attempt conflicted")


async def test_snippet_update_is_validated_too(kube: client.ApiClient, namespace: str) -> None:
    await create(kube, namespace, SNIPPET_PLURAL, snippet("edit", {"files": INLINE}))
    with pytest.raises(ApiException) as info:
        await replace_latest(
            kube, namespace, "edit", {"spec": {"files": INLINE, "sourceRef": GIT_SOURCE}}
        )
    assert_cause(invalid(info.value), "spec", SPEC_XOR)


# ---------------------------------------------------------------------------
# JsonnetSnippet: status subresource.
# ---------------------------------------------------------------------------

FULL_STATUS: Obj = {
    "observedGeneration": 1,
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Synced",
            "message": "published sha256:ab",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 1,
        }
    ],
    "revision": "sha256:" + "ab" * 32,
    "artifactURL": "http://jaas.example:8080/ns/snip/sha256-" + "cd" * 32 + ".tar.gz",
    "lastSyncTime": "2026-01-02T03:04:05Z",
    "lastHandledReconcileAt": "2026-01-02T03:00:00Z",
    "history": [
        {"revision": "sha256:" + "ab" * 32, "time": "2026-01-02T03:04:05Z"},
        {"revision": "sha256:" + "ef" * 32, "time": "2026-01-01T00:00:00Z"},
    ],
}


async def write_status(kube: client.ApiClient, namespace: str, obj: Obj, status: Obj) -> Obj:
    """Replace ``obj``'s status through the status subresource and return the stored object."""
    return await replace_latest(
        kube, namespace, obj["metadata"]["name"], {"status": status}, status=True
    )


async def test_status_is_a_subresource(kube: client.ApiClient, namespace: str) -> None:
    body = snippet("status", {"files": INLINE})
    body["status"] = FULL_STATUS
    created = await create(kube, namespace, SNIPPET_PLURAL, body)
    # A status sent with the main resource is dropped...
    assert "status" not in created
    # ...and written through /status, every field is kept, without a new generation.
    stored = await write_status(kube, namespace, created, FULL_STATUS)
    assert stored["status"] == FULL_STATUS
    assert stored["metadata"]["generation"] == created["metadata"]["generation"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"reason": "not valid!"}, "status.conditions[0].reason", id="reason-pattern"),
        pytest.param({"reason": ""}, "status.conditions[0].reason", id="reason-empty"),
        pytest.param({"status": "Maybe"}, "status.conditions[0].status", id="status-enum"),
        pytest.param(
            {"lastTransitionTime": None}, "status.conditions[0].lastTransitionTime", id="no-time"
        ),
    ],
)
async def test_status_condition_follows_metav1_condition(
    kube: client.ApiClient, namespace: str, change: Obj, field: str
) -> None:
    created = await create(kube, namespace, SNIPPET_PLURAL, snippet("cond", {"files": INLINE}))
    status = copy.deepcopy(FULL_STATUS)
    condition = status["conditions"][0]
    for key, value in change.items():
        if value is None:
            del condition[key]
        else:
            condition[key] = value
    with pytest.raises(ApiException) as info:
        await write_status(kube, namespace, created, status)
    causes = invalid(info.value)["details"]["causes"]
    assert any(c.get("field") == field for c in causes), causes


async def test_status_conditions_are_unique_by_type(kube: client.ApiClient, namespace: str) -> None:
    created = await create(kube, namespace, SNIPPET_PLURAL, snippet("dup", {"files": INLINE}))
    status = copy.deepcopy(FULL_STATUS)
    status["conditions"].append(dict(status["conditions"][0], status="False", reason="Pending"))
    with pytest.raises(ApiException) as info:
        await write_status(kube, namespace, created, status)
    assert_cause(invalid(info.value), "status.conditions[1]", "Duplicate value")


async def test_status_history_entry_needs_revision_and_time(
    kube: client.ApiClient, namespace: str
) -> None:
    created = await create(kube, namespace, SNIPPET_PLURAL, snippet("hist", {"files": INLINE}))
    status = dict(FULL_STATUS, history=[{"revision": "sha256:" + "ab" * 32}])
    with pytest.raises(ApiException) as info:
        await write_status(kube, namespace, created, status)
    assert_cause(invalid(info.value), "status.history[0].time", "Required value")


# ---------------------------------------------------------------------------
# JsonnetSnippet: printer columns and discovery.
# ---------------------------------------------------------------------------


async def test_snippet_printer_columns(
    kube: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    created = await create(
        kube, namespace, SNIPPET_PLURAL, snippet("printed", {"files": INLINE, "suspend": True})
    )
    # The session's operator (running for every test that shares its control
    # plane) writes Suspended once; our status goes after it, or the
    # operator's write could land on top of it.
    await wait_reason(KubeClient(kube), namespace, "printed", "Suspended")
    await write_status(kube, namespace, created, FULL_STATUS)

    printed = await table(kube, namespace, SNIPPET_PLURAL)
    assert printed["kind"] == "Table"
    columns = [(c["name"], c["type"], c.get("priority", 0)) for c in printed["columnDefinitions"]]
    assert columns == [
        ("Name", "string", 0),
        ("Ready", "string", 0),
        ("Reason", "string", 1),
        ("Revision", "string", 1),
        ("URL", "string", 0),
        ("Suspend", "boolean", 1),
        ("Age", "date", 0),
    ]
    [row] = printed["rows"]
    cells = row["cells"]
    assert cells[:6] == [
        "printed",
        "True",
        "Synced",
        FULL_STATUS["revision"],
        FULL_STATUS["artifactURL"],
        True,
    ]
    assert isinstance(cells[6], str)
    assert cells[6]


async def test_snippet_printer_columns_before_first_reconcile(
    kube: client.ApiClient, namespace: str
) -> None:
    await create(kube, namespace, SNIPPET_PLURAL, snippet("fresh", {"files": INLINE}))
    printed = await table(kube, namespace, SNIPPET_PLURAL)
    [row] = printed["rows"]
    # No status yet: the status columns are empty, Suspend is unset.
    assert row["cells"][:6] == ["fresh", None, None, None, None, None]


async def test_discovery_lists_kinds_short_names_and_status(kube: client.ApiClient) -> None:
    resources = await client.CustomObjectsApi(kube).get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in resources.resources}
    assert set(by_name) == {
        SNIPPET_PLURAL,
        f"{SNIPPET_PLURAL}/status",
        LIBRARY_PLURAL,
        f"{LIBRARY_PLURAL}/status",
    }
    snippets = by_name[SNIPPET_PLURAL]
    assert snippets.kind == SNIPPET_KIND
    assert snippets.namespaced is True
    assert snippets.short_names == ["jsnip"]
    assert snippets.singular_name == "jsonnetsnippet"
    assert not snippets.categories
    libraries = by_name[LIBRARY_PLURAL]
    assert libraries.kind == LIBRARY_KIND
    assert libraries.namespaced is True
    assert libraries.short_names == ["jlib"]
    assert not libraries.categories


@pytest.mark.parametrize("plural", [SNIPPET_PLURAL, LIBRARY_PLURAL])
async def test_crd_has_one_served_storage_version(kube: client.ApiClient, plural: str) -> None:
    crd = await client.ApiextensionsV1Api(kube).read_custom_resource_definition(f"{plural}.{GROUP}")
    assert crd.spec.scope == "Namespaced"
    assert [(v.name, v.served, v.storage) for v in crd.spec.versions] == [(VERSION, True, True)]
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert crd.status.accepted_names.short_names == (
        ["jsnip"] if plural == SNIPPET_PLURAL else ["jlib"]
    )


# ---------------------------------------------------------------------------
# JsonnetLibrary.
# ---------------------------------------------------------------------------

LIBRARY_REJECTIONS: list[tuple[str, Obj, str, str]] = [
    ("files-and-sourceRef", {"files": INLINE, "sourceRef": GIT_SOURCE}, "spec", SPEC_XOR),
    ("neither", {}, "spec", SPEC_XOR),
    ("empty-files-only", {"files": {}}, "spec", SPEC_XOR),
    (
        "empty-files-and-sourceRef-missing-name",
        {"files": {}, "sourceRef": {"kind": "Bucket"}},
        "spec.sourceRef.name",
        "Required value",
    ),
    (
        "sourceRef-kind-HelmChart",
        {"sourceRef": {"kind": "HelmChart", "name": "c"}},
        "spec.sourceRef.kind",
        'Unsupported value: "HelmChart"',
    ),
    (
        "sourceRef-name-empty",
        {"sourceRef": {"kind": "GitRepository", "name": ""}},
        "spec.sourceRef.name",
        "should be at least 1 chars long",
    ),
]


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        pytest.param(spec, field, fragment, id=case)
        for case, spec, field, fragment in LIBRARY_REJECTIONS
    ],
)
async def test_library_rule_rejects(
    kube: client.ApiClient, namespace: str, spec: Obj, field: str, fragment: str
) -> None:
    status = await rejection(kube, namespace, LIBRARY_PLURAL, library("bad", spec))
    assert_cause(status, field, fragment)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"files": {"lib.libsonnet": "{ x: 1 }"}}, id="files"),
        pytest.param({"sourceRef": {"kind": "OCIRepository", "name": "lib"}}, id="sourceRef"),
        pytest.param(
            {"files": {}, "sourceRef": {"kind": "Bucket", "name": "lib"}},
            id="empty-files-with-sourceRef",
        ),
        pytest.param(
            {
                "sourceRef": {
                    "apiVersion": "source.toolkit.fluxcd.io/v1",
                    "kind": "ExternalArtifact",
                    "name": "lib",
                    "namespace": "shared",
                    "path": "vendor/lib",
                }
            },
            id="sourceRef-every-field",
        ),
    ],
)
async def test_library_valid_spec_is_stored_verbatim(
    kube: client.ApiClient, namespace: str, spec: Obj
) -> None:
    created = await create(kube, namespace, LIBRARY_PLURAL, library("lib", spec))
    # No defaults on a library: what was sent is what is stored.
    assert created["spec"] == spec


async def test_library_has_only_spec_files_and_source_ref(
    kube: client.ApiClient, namespace: str
) -> None:
    spec = {"files": {"a.libsonnet": "{}"}, "entryFile": "a.libsonnet", "importPath": "a"}
    created = await create(kube, namespace, LIBRARY_PLURAL, library("pruned", spec))
    assert created["spec"] == {"files": {"a.libsonnet": "{}"}}


async def test_library_printer_columns(kube: client.ApiClient, namespace: str) -> None:
    await create(kube, namespace, LIBRARY_PLURAL, library("lib", {"files": INLINE}))
    printed = await table(kube, namespace, LIBRARY_PLURAL)
    assert [c["name"] for c in printed["columnDefinitions"]] == ["Name", "Age"]
    [row] = printed["rows"]
    assert row["cells"][0] == "lib"
