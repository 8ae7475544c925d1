"""Static checks of the hand-maintained CRDs in deploy/crds.

The apiserver-side behaviour is tested in tests/e2e/test_crd_validation.py;
these checks need no control plane. They pin the field inventory to metio/jaas
``config/crd/bases`` (field names, where defaults are, CEL messages), check that
the printer columns point at fields that exist, and that the CRDs agree with
the Python side (constants, reasons, the parsed-spec defaults).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jaas.api import constants
from jaas.api.models import DEFAULT_ENTRY_FILE, SnippetSpec, parse_snippet_spec
from jaas.api.reasons import Reason

Obj = dict[str, Any]

CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"
SNIPPET_FILE = CRD_DIR / "jaas.metio.wtf_jsonnetsnippets.yaml"
LIBRARY_FILE = CRD_DIR / "jaas.metio.wtf_jsonnetlibraries.yaml"


def load(path: Path) -> Obj:
    """The one YAML document in ``path``."""
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert len(documents) == 1, f"{path.name}: expected one document, got {len(documents)}"
    crd: Obj = documents[0]
    return crd


def schema(crd: Obj) -> Obj:
    """The openAPIV3Schema of the CRD's only version."""
    [version] = crd["spec"]["versions"]
    root: Obj = version["schema"]["openAPIV3Schema"]
    return root


def without_descriptions(node: Any) -> Any:
    """``node`` with every ``description`` removed (they are prose, not contract)."""
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def walk(node: Obj, path: str = "") -> Iterator[tuple[str, Obj]]:
    """Yield ``(path, schema node)`` for every node; list items are ``<path>[]``."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def resolve(root: Obj, json_path: str) -> Obj:
    """The schema node a printer-column JSONPath selects.

    Supports the forms CRDs use here: ``.a.b`` and a filter on a list,
    ``.a[?(@.k=="v")].b``.
    """
    node = root
    for step in re.findall(r"\.([A-Za-z0-9_]+)(\[\?\(@\.[A-Za-z]+==\"[^\"]*\"\)\])?", json_path):
        name, list_filter = step
        node = node["properties"][name]
        if list_filter:
            assert node["type"] == "array", json_path
            node = node["items"]
    return node


@pytest.fixture(scope="module")
def snippet_crd() -> Obj:
    return load(SNIPPET_FILE)


@pytest.fixture(scope="module")
def library_crd() -> Obj:
    return load(LIBRARY_FILE)


@pytest.mark.parametrize(
    ("path", "kind", "plural", "singular", "short_name"),
    [
        (SNIPPET_FILE, constants.SNIPPET_KIND, constants.SNIPPET_PLURAL, "jsonnetsnippet", "jsnip"),
        (LIBRARY_FILE, constants.LIBRARY_KIND, constants.LIBRARY_PLURAL, "jsonnetlibrary", "jlib"),
    ],
)
def test_names_scope_and_single_version(
    path: Path, kind: str, plural: str, singular: str, short_name: str
) -> None:
    crd = load(path)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.{constants.GROUP}"
    spec = crd["spec"]
    assert spec["group"] == constants.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": singular,
        "shortNames": [short_name],
    }
    [version] = spec["versions"]
    assert version["name"] == constants.VERSION
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}
    assert set(schema(crd)["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert "required" not in schema(crd)  # as upstream: spec is optional


def test_snippet_spec_fields_are_those_of_jaas(snippet_crd: Obj) -> None:
    spec = schema(snippet_crd)["properties"]["spec"]
    assert set(spec["properties"]) == {
        "serviceAccountName",
        "entryFile",
        "files",
        "sourceRef",
        "libraries",
        "tlas",
        "externalVariables",
        "output",
        "suspend",
        "history",
        "interval",
    }
    assert "required" not in spec


def test_library_spec_fields_are_those_of_jaas(library_crd: Obj) -> None:
    spec = schema(library_crd)["properties"]["spec"]
    assert set(spec["properties"]) == {"files", "sourceRef"}
    assert "required" not in spec


def test_status_fields_are_those_of_jaas(snippet_crd: Obj) -> None:
    status = schema(snippet_crd)["properties"]["status"]
    assert set(status["properties"]) == {
        "observedGeneration",
        "conditions",
        "revision",
        "artifactURL",
        "lastSyncTime",
        "lastHandledReconcileAt",
        "history",
    }
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["required"] == [
        "lastTransitionTime",
        "message",
        "reason",
        "status",
        "type",
    ]
    assert status["properties"]["history"]["items"]["required"] == ["revision", "time"]


def test_defaults_are_exactly_where_jaas_has_them(snippet_crd: Obj, library_crd: Obj) -> None:
    """entryFile, output and history; the other defaults are the operator's, not the CRD's."""
    defaults = {
        path: node["default"] for path, node in walk(schema(snippet_crd)) if "default" in node
    }
    assert defaults == {
        "spec.entryFile": DEFAULT_ENTRY_FILE,
        "spec.output": "rendered",
        "spec.history": 1,
    }
    assert not [path for path, node in walk(schema(library_crd)) if "default" in node]


def test_crd_defaults_match_the_parsed_spec_defaults(snippet_crd: Obj) -> None:
    """An object the apiserver defaulted parses to the same values as one it did not."""
    spec = schema(snippet_crd)["properties"]["spec"]["properties"]
    defaulted = {
        "files": {"main.jsonnet": "{}"},
        "entryFile": spec["entryFile"]["default"],
        "output": spec["output"]["default"],
        "history": spec["history"]["default"],
    }
    assert parse_snippet_spec(defaulted) == parse_snippet_spec({"files": {"main.jsonnet": "{}"}})
    plain = SnippetSpec()
    assert (plain.entry_file, plain.output, plain.history) == (
        defaulted["entryFile"],
        defaulted["output"],
        defaulted["history"],
    )


def test_cel_rules_and_messages_are_those_of_jaas(snippet_crd: Obj, library_crd: Obj) -> None:
    xor = (
        "(has(self.files) && size(self.files) > 0 ? 1 : 0) + (has(self.sourceRef) ? 1 : 0) == 1",
        "exactly one of spec.files or spec.sourceRef must be set",
    )
    code = (
        "!(has(self.code) && self.code) || (has(self.value) && size(self.value) > 0)",
        "value must be non-empty when code is true",
    )
    expected = {
        "spec": [xor],
        "spec.entryFile": [("!self.contains('..')", "entryFile must not contain '..'")],
        "spec.interval": [
            (
                "duration(self) >= duration('30s') && duration(self) <= duration('24h')",
                "interval must be between 30s and 24h",
            )
        ],
        "spec.tlas[]": [code],
        "spec.externalVariables[]": [code],
    }

    def rules(crd: Obj) -> dict[str, list[tuple[str, str]]]:
        return {
            path: [(r["rule"], r["message"]) for r in node["x-kubernetes-validations"]]
            for path, node in walk(schema(crd))
            if "x-kubernetes-validations" in node
        }

    assert rules(snippet_crd) == expected
    assert rules(library_crd) == {"spec": [xor]}


def test_entry_file_pattern_matches_the_operator(snippet_crd: Obj) -> None:
    entry_file = schema(snippet_crd)["properties"]["spec"]["properties"]["entryFile"]
    assert (entry_file["pattern"], entry_file["minLength"], entry_file["maxLength"]) == (
        "^[A-Za-z0-9._/-]+$",
        1,
        255,
    )


def test_enums_match_the_constants(snippet_crd: Obj) -> None:
    spec = schema(snippet_crd)["properties"]["spec"]["properties"]
    assert spec["sourceRef"]["properties"]["kind"]["enum"] == list(constants.SOURCE_KIND_PLURALS)
    assert spec["libraries"]["items"]["properties"]["kind"]["enum"] == [constants.LIBRARY_KIND]
    assert spec["output"]["enum"] == ["rendered", "source"]


def test_library_shares_source_ref_and_status_with_snippet(
    snippet_crd: Obj, library_crd: Obj
) -> None:
    snippet_root, library_root = schema(snippet_crd), schema(library_crd)
    for path in (("spec", "files"), ("spec", "sourceRef"), ("status",)):
        s, lib = snippet_root, library_root
        for name in path:
            s, lib = s["properties"][name], lib["properties"][name]
        assert without_descriptions(s) == without_descriptions(lib), path


def test_tlas_and_external_variables_share_one_item_schema(snippet_crd: Obj) -> None:
    spec = schema(snippet_crd)["properties"]["spec"]["properties"]
    tlas, ext = without_descriptions(spec["tlas"]), without_descriptions(spec["externalVariables"])
    assert tlas == ext
    assert tlas["x-kubernetes-list-type"] == "map"
    assert tlas["x-kubernetes-list-map-keys"] == ["name"]
    assert tlas["items"]["required"] == ["name"]
    assert "x-kubernetes-list-type" not in spec["libraries"]  # atomic, as upstream


def test_snippet_printer_columns(snippet_crd: Obj) -> None:
    [version] = snippet_crd["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    assert [(c["name"], c["type"], c.get("priority", 0)) for c in columns] == [
        ("Ready", "string", 0),
        ("Reason", "string", 1),
        ("Revision", "string", 1),
        ("URL", "string", 0),
        ("Suspend", "boolean", 1),
        ("Age", "date", 0),
    ]
    root = schema(snippet_crd)
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        node = resolve(root, column["jsonPath"])
        assert node["type"] == column["type"], column
    assert f'@.type=="{constants.READY}"' in columns[0]["jsonPath"]


def test_library_printer_columns(library_crd: Obj) -> None:
    [version] = library_crd["spec"]["versions"]
    assert version["additionalPrinterColumns"] == [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_is_a_valid_condition_reason(snippet_crd: Obj, reason: Reason) -> None:
    """The operator can write every Reason into status.conditions without a 422."""
    node = resolve(schema(snippet_crd), '.status.conditions[?(@.type=="Ready")].reason')
    assert type(reason.value) is str
    assert re.fullmatch(node["pattern"], reason.value)
    assert node["minLength"] <= len(reason.value) <= node["maxLength"]


def test_ready_is_a_valid_condition_type(snippet_crd: Obj) -> None:
    node = resolve(schema(snippet_crd), '.status.conditions[?(@.type=="Ready")].type')
    assert re.fullmatch(node["pattern"], constants.READY)
