"""Kubernetes objects found in rendered values, and the files kustomize is given for them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from jaas.evaluator.manifest import manifest_json, parse_output
from jaas.storage.objects import (
    KUSTOMIZATION_FILE_NAME,
    NO_OBJECTS_RESOURCE,
    OBJECTS_FILE_NAME,
    consumer_files_for,
    find_objects,
)


def cm(name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, **extra}


def names(value: Any) -> list[str]:
    found = find_objects(value)
    assert found.problems == (), found.problems
    return [obj["metadata"]["name"] for obj in found.objects]


def test_every_shape_jsonnet_tools_render_is_found() -> None:
    assert names(cm("one")) == ["one"]
    assert names({"apiVersion": "v1", "kind": "List", "items": [cm("a"), cm("b")]}) == ["a", "b"]
    assert names({"apiVersion": "v1", "kind": "ConfigMapList", "items": [cm("l")]}) == ["l"]
    assert names([cm("a"), [cm("b"), None], cm("c")]) == ["a", "b", "c"]
    # Tanka / kubecfg: objects whose values are objects, nested, walked in key order.
    tanka = {"z": {"deploy": cm("z1")}, "a": {"svc": cm("a1"), "more": [cm("a2")]}, "n": None}
    assert names(tanka) == ["a2", "a1", "z1"]
    nested_lists = {"apiVersion": "v1", "kind": "List", "items": [{"x": cm("deep")}]}
    assert names(nested_lists) == ["deep"]


def test_an_explicit_empty_list_is_applicable_and_an_empty_object_is_not() -> None:
    assert find_objects([]).applicable
    assert find_objects({"apiVersion": "v1", "kind": "List", "items": []}).applicable
    assert not find_objects({}).applicable
    assert not find_objects(None).applicable
    assert find_objects({}).problems == ()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"kind": "ConfigMap", "metadata": {"name": "x"}}, "$: an object without apiVersion"),
        ({"apiVersion": "v1", "kind": "ConfigMap"}, "$: an object without metadata.name"),
        (
            {"apiVersion": "", "metadata": {"name": 3}},
            "$: an object without apiVersion and kind and metadata.name",
        ),
        ({"title": "a dashboard", "panels": []}, "$.title: a string, not a Kubernetes object"),
        ([cm("ok"), 7], "$[1]: a number, not a Kubernetes object"),
        ({"app": {"my key": True}}, '$.app["my key"]: a boolean, not a Kubernetes object'),
        ("text", "$: a string, not a Kubernetes object"),
    ],
)
def test_anything_that_is_not_an_object_is_a_problem_with_its_path(
    value: Any, problem: str
) -> None:
    found = find_objects(value)
    assert problem in found.problems
    assert not found.applicable
    assert "a Kustomization of this artifact fails" in found.summary()


def test_problems_in_the_summary_are_capped() -> None:
    found = find_objects([1, 2, 3, 4, 5])
    assert len(found.problems) == 5
    assert "not a Kubernetes object (and 2 more)), a Kustomization" in found.summary()


def test_a_render_nested_beyond_the_recursion_limit_is_walked_without_a_crash() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    files, found = consumer_files_for(deep)
    assert not found.applicable
    assert found.problems == ()
    assert NO_OBJECTS_RESOURCE.encode() in files[KUSTOMIZATION_FILE_NAME]
    walked = find_objects(json.loads(b"[" * 500 + b"]" * 500))
    assert walked.objects == ()
    assert walked.problems == ()


def test_an_object_too_deep_to_write_out_is_a_problem_not_a_crash() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = {"d": deep}
    files, found = consumer_files_for(cm("deep", data=deep))
    assert found.problems == ("$: nested too deeply to read as Kubernetes objects",)
    assert sorted(files) == [KUSTOMIZATION_FILE_NAME]
    comment = b"# rendered.json is not Kubernetes objects ($: nested too deeply"
    assert comment in files[KUSTOMIZATION_FILE_NAME]


def test_objects_yaml_is_a_yaml_stream_of_the_objects_in_ascii() -> None:
    objects = [cm("a", data={"k": "✓ line\u2028break\x85"}), cm("b")]
    files, found = consumer_files_for({"apiVersion": "v1", "kind": "List", "items": objects})
    assert found.applicable
    assert found.summary() == "2 Kubernetes objects"
    stream = files[OBJECTS_FILE_NAME]
    assert stream.isascii()
    assert list(yaml.safe_load_all(stream)) == objects
    kustomization = yaml.safe_load(files[KUSTOMIZATION_FILE_NAME])
    assert kustomization == {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [OBJECTS_FILE_NAME],
    }


def test_the_evaluators_value_gives_the_files_of_rendered_json_parsed_again() -> None:
    # The evaluator parses every number as a float; rendered.json parsed again
    # has ints where go-jsonnet wrote integers. Both must give the same bytes.
    text = json.dumps(
        [
            cm(
                "numbers",
                data={"n": [1, -0.0, 1e20, 0.1, 1e-7, 2.5, 1e300, 2**53 + 2, -3]},
                spec={"replicas": 3, "ratio": 0.5, "name": "✓ \u2028", "on": True, "x": None},
            ),
            {"kind": "List", "apiVersion": "v1", "items": [cm("in-list")]},
        ]
    )
    value = parse_output(text)
    rendered = manifest_json(value).encode()
    files, found = consumer_files_for(value)
    again, found_again = consumer_files_for(json.loads(rendered))
    assert files == again
    assert found.summary() == found_again.summary() == "2 Kubernetes objects"
    first = files[OBJECTS_FILE_NAME].split(b"\n---\n")[1]
    assert b'"n":[1,0,100000000000000000000,0.1,1e-07,2.5,' in first
    assert b'"replicas":3,' in first


def test_without_objects_the_kustomization_names_a_missing_file_and_says_why() -> None:
    files, found = consumer_files_for({"title": "dashboard"})
    assert sorted(files) == [KUSTOMIZATION_FILE_NAME]
    text = files[KUSTOMIZATION_FILE_NAME].decode()
    assert "# rendered.json is not Kubernetes objects ($.title: a string" in text
    assert f"# {found.summary()}\n" in text
    assert yaml.safe_load(text)["resources"] == [NO_OBJECTS_RESOURCE]
    empty, _ = consumer_files_for([])
    assert yaml.safe_load(empty[KUSTOMIZATION_FILE_NAME])["resources"] == []
