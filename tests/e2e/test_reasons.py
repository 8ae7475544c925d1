"""Ready reasons from real causes on the session's operator (the rest are in the other modules).

Every Ready reason JaaS writes has at least one end-to-end test reaching it;
tests/unit/test_reason_coverage.py checks that none is forgotten.
"""

from __future__ import annotations

import json

import pytest

from jaas.api.constants import GROUP, LIBRARY_PLURAL, VERSION
from jaas.api.reasons import Reason
from jaas.api.runbooks import runbook_suffix
from jaas.operator.kube import KubeClient, resource_path
from jaas.testing.operator import OperatorProcess
from tests.e2e.helpers import create_snippet, download, ready, untar, wait_reason

pytestmark = pytest.mark.usefixtures("operator")


async def create_library(client: KubeClient, namespace: str, name: str, **spec: object) -> None:
    await client.create(
        resource_path(GROUP, VERSION, LIBRARY_PLURAL, namespace),
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "JsonnetLibrary",
            "metadata": {"name": name},
            "spec": spec,
        },
    )


async def test_an_entry_file_that_is_not_among_the_files_is_invalid_spec(
    kube_client: KubeClient, namespace: str
) -> None:
    await create_snippet(kube_client, namespace, "s", files={"other.jsonnet": "{}"})
    obj = await wait_reason(kube_client, namespace, "s", "InvalidSpec")
    assert "entry file 'main.jsonnet' is not among the 1 files of inline" in ready(obj)["message"]


@pytest.mark.parametrize("where", ["sourceRef", "library", "library-sourceRef"])
async def test_cross_namespace_references_are_refused_by_default(
    kube_client: KubeClient, namespace: str, where: str
) -> None:
    files = {"main.jsonnet": "{}"}
    if where == "sourceRef":
        spec: dict[str, object] = {
            "sourceRef": {"kind": "GitRepository", "name": "r", "namespace": "kube-system"}
        }
    elif where == "library":
        spec = {
            "files": files,
            "libraries": [{"kind": "JsonnetLibrary", "name": "l", "namespace": "kube-system"}],
        }
    else:
        await create_library(
            kube_client,
            namespace,
            "l",
            sourceRef={"kind": "Bucket", "name": "b", "namespace": "kube-system"},
        )
        spec = {"files": files, "libraries": [{"kind": "JsonnetLibrary", "name": "l"}]}
    await create_snippet(kube_client, namespace, "s", **spec)
    obj = await wait_reason(kube_client, namespace, "s", "CrossNamespaceRefRejected")
    message = ready(obj)["message"]
    assert "'kube-system'" in message
    assert "--no-cross-namespace-refs" in message


async def test_operator_external_variables_reach_every_evaluation_and_cannot_be_redefined(
    kube_client: KubeClient, namespace: str
) -> None:
    program = "{ cluster: std.extVar('jaas_cluster'), region: std.extVar('jaas_region') }"
    await create_snippet(kube_client, namespace, "uses", files={"main.jsonnet": program})
    obj = await wait_reason(kube_client, namespace, "uses", "Synced")
    rendered = json.loads(untar(await download(obj["status"]["artifactURL"]))["rendered.json"])
    # --ext-var beats JAAS_EXT_VAR_jaas_cluster; jaas_region comes from the environment.
    assert rendered == {"cluster": "e2e-flag", "region": "eu-env"}
    await create_snippet(
        kube_client,
        namespace,
        "redefines",
        files={"main.jsonnet": program},
        externalVariables=[{"name": "jaas_region", "value": "mine"}, {"name": "x", "value": "1"}],
    )
    obj = await wait_reason(kube_client, namespace, "redefines", "ExternalVariableConflict")
    assert ready(obj)["message"].endswith(
        ": jaas_region" + runbook_suffix(Reason.EXTERNAL_VARIABLE_CONFLICT)
    )


async def test_a_named_service_account_that_does_not_exist_is_missing(
    kube_client: KubeClient, namespace: str
) -> None:
    await create_snippet(
        kube_client, namespace, "s", serviceAccountName="ghost", files={"main.jsonnet": "{}"}
    )
    obj = await wait_reason(kube_client, namespace, "s", "ServiceAccountMissing")
    assert f"ServiceAccount {namespace}/ghost does not exist" in ready(obj)["message"]


async def test_an_output_over_max_artifact_bytes_is_too_large(
    operator: OperatorProcess, kube_client: KubeClient, namespace: str
) -> None:
    await create_snippet(kube_client, namespace, "s", files={"main.jsonnet": "{ a: 1 }"})
    good = await wait_reason(kube_client, namespace, "s", "Synced")
    big = "{ data: std.join('', std.makeArray(1100, function(i) std.repeat('x', 1000))) }"
    await kube_client.merge_patch(
        f"{resource_path(GROUP, VERSION, 'jsonnetsnippets', namespace, 's')}",
        {"spec": {"files": {"main.jsonnet": big}}},
    )
    obj = await wait_reason(kube_client, namespace, "s", "ArtifactTooLarge", generation=2)
    assert "over the 1048576-byte limit (--max-artifact-bytes)" in ready(obj)["message"]
    assert obj["status"]["artifactURL"] == good["status"]["artifactURL"]
