"""Import resolution of the in-memory importer (JaaS rules) through real rjsonnet."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import rjsonnet

from jaas.evaluator.importer import (
    ImportResolutionError,
    InMemoryImporter,
    clean_path,
    user_facing,
)
from jaas.evaluator.request import EvaluationRequest
from jaas.evaluator.worker import with_shared_libraries

Files = Mapping[str, bytes]


def evaluate(
    files: Files,
    libraries: Mapping[str, Files] | None = None,
    entry: str = "main.jsonnet",
    **options: Any,
) -> Any:
    importer = InMemoryImporter(files, libraries)
    text = rjsonnet.evaluate_file(importer.entry_path(entry), import_callback=importer, **options)
    return json.loads(text)


def evaluation_error(
    files: Files, libraries: Mapping[str, Files] | None = None, entry: str = "main.jsonnet"
) -> str:
    with pytest.raises(RuntimeError) as caught:
        evaluate(files, libraries, entry)
    return user_facing(str(caught.value))


def test_sibling_and_dot_slash_imports() -> None:
    files = {
        "main.jsonnet": b'{a: import "a.libsonnet", b: import "./b.libsonnet"}',
        "a.libsonnet": b'"a"',
        "b.libsonnet": b'"b"',
    }
    assert evaluate(files) == {"a": "a", "b": "b"}


def test_imports_across_directories_resolve_relative_to_the_importing_file() -> None:
    files = {
        "main.jsonnet": b'import "lib/x/one.libsonnet"',
        "lib/x/one.libsonnet": b'{one: 1, two: import "../two.libsonnet", three: import "y.txt"}',
        "lib/two.libsonnet": b'{two: import "../top.libsonnet"}',
        "lib/x/y.txt": b'"three"',
        "top.libsonnet": b'"top"',
    }
    assert evaluate(files) == {"one": 1, "two": {"two": "top"}, "three": "three"}


def test_entry_file_in_a_subdirectory_imports_its_siblings() -> None:
    files = {
        "env/prod/main.jsonnet": b'import "values.libsonnet"',
        "env/prod/values.libsonnet": b'"prod"',
        "values.libsonnet": b'"root"',
    }
    assert evaluate(files, entry="env/prod/main.jsonnet") == "prod"


def test_importstr_returns_the_text() -> None:
    files = {"main.jsonnet": b'importstr "data/notes.txt"', "data/notes.txt": "ünïcode\n".encode()}
    assert evaluate(files) == "ünïcode\n"


def test_bare_alias_loads_the_librarys_main_libsonnet() -> None:
    files = {"main.jsonnet": b'(import "grafonnet").name'}
    libraries = {
        "grafonnet": {
            "main.libsonnet": b'{name: import "name.libsonnet"}',
            "name.libsonnet": b'"graf"',
        }
    }
    assert evaluate(files, libraries) == "graf"


def test_sibling_file_wins_over_a_bare_alias() -> None:
    files = {"main.jsonnet": b'import "util"', "util": b'"sibling"'}
    libraries = {"util": {"main.libsonnet": b'"library"'}}
    assert evaluate(files, libraries) == "sibling"


def test_alias_slash_file_loads_that_library_file() -> None:
    files = {"main.jsonnet": b'import "util/strings.libsonnet"'}
    libraries = {
        "util": {"strings.libsonnet": b'{s: import "inner/x.libsonnet"}', "inner/x.libsonnet": b"1"}
    }
    assert evaluate(files, libraries) == {"s": 1}


def test_library_files_import_relative_to_their_own_library() -> None:
    # The library's "helper.libsonnet" wins over the snippet's file of the same name.
    files = {"main.jsonnet": b'import "lib/a.libsonnet"', "helper.libsonnet": b'"snippet"'}
    libraries = {
        "lib": {"a.libsonnet": b'import "helper.libsonnet"', "helper.libsonnet": b'"library"'}
    }
    assert evaluate(files, libraries) == "library"


def test_alias_slash_file_is_authoritative_when_missing() -> None:
    # Step 4 would find the snippet's own lib/x.libsonnet, but the alias decides.
    files = {
        "sub/main.jsonnet": b'import "lib/x.libsonnet"',
        "lib/x.libsonnet": b'"snippet"',
    }
    libraries = {"lib": {"main.libsonnet": b"{}"}}
    message = evaluation_error(files, libraries, entry="sub/main.jsonnet")
    assert message.startswith(
        'cannot import "lib/x.libsonnet" (from sub/): library lib has no file x.libsonnet'
    )


def test_missing_main_libsonnet_is_an_error() -> None:
    message = evaluation_error({"main.jsonnet": b'import "util"'}, {"util": {"x.libsonnet": b"1"}})
    assert message.startswith('cannot import "util" (from the snippet\'s top directory): ')
    assert "library util has no main.libsonnet" in message


def test_vendor_paths_are_searched_in_the_snippet_then_libraries_by_sorted_alias() -> None:
    vendor = "github.com/grafana/grafonnet/gen/grafonnet-latest/main.libsonnet"
    files = {"main.jsonnet": f'import "{vendor}"'.encode()}
    libraries = {
        "zeta": {vendor: b'"zeta"'},
        "alpha": {
            vendor: b'{from: "alpha", dep: import "../../jsonnetfile.json"}',
            "github.com/grafana/grafonnet/jsonnetfile.json": b"{}",
        },
    }
    assert evaluate(files, libraries) == {"from": "alpha", "dep": {}}
    files_with_own_copy = {**files, vendor: b'"snippet"'}
    assert evaluate(files_with_own_copy, libraries) == "snippet"


def test_relative_imports_cannot_climb_above_their_root() -> None:
    files = {"main.jsonnet": b'import "../secret.libsonnet"'}
    message = evaluation_error(files)
    assert message.startswith('cannot import "../secret.libsonnet"')
    assert "matches no file of the snippet or of its libraries" in message
    libraries = {"lib": {"sub/a.libsonnet": b'import "../../main.jsonnet"'}}
    message = evaluation_error({"main.jsonnet": b'import "lib/sub/a.libsonnet"'}, libraries)
    assert message.startswith('cannot import "../../main.jsonnet" (from lib/sub/)')


def test_snippet_paths_named_like_an_alias_do_not_cross_wire() -> None:
    # The snippet's grafonnet/x.libsonnet and library grafonnet's x.libsonnet
    # each import their own sibling y.libsonnet.
    files = {
        "main.jsonnet": b'{own: import "grafonnet/x.libsonnet", lib: import "grafonnet"}',
        "grafonnet/x.libsonnet": b'import "y.libsonnet"',
        "grafonnet/y.libsonnet": b'"snippet y"',
    }
    libraries = {
        "grafonnet": {
            "main.libsonnet": b'import "x.libsonnet"',
            "x.libsonnet": b'import "y.libsonnet"',
            "y.libsonnet": b'"library y"',
        }
    }
    assert evaluate(files, libraries) == {"own": "snippet y", "lib": "library y"}


def test_imports_in_code_variables_resolve_from_the_snippet_root() -> None:
    files = {
        "sub/main.jsonnet": b'function(t) {ext: std.extVar("e"), tla: t}',
        "values.libsonnet": b'"root values"',
    }
    result = evaluate(
        files,
        entry="sub/main.jsonnet",
        ext_codes={"e": 'import "values.libsonnet"'},
        tla_codes={"t": '(import "values.libsonnet") + "!"'},
    )
    assert result == {"ext": "root values", "tla": "root values!"}


def test_non_utf8_content_is_a_clear_error() -> None:
    files = {"main.jsonnet": b'importstr "blob.bin"', "blob.bin": b"ok\xff\x00"}
    message = evaluation_error(files)
    assert message.startswith("blob.bin is not valid UTF-8 text (byte 2)")


def test_missing_entry_file() -> None:
    message = evaluation_error({"other.jsonnet": b"{}"})
    assert message == "entry file main.jsonnet is not among the snippet's files"


def test_errors_name_snippet_and_library_files_as_the_user_does() -> None:
    files = {"main.jsonnet": b'local u = import "util/bad.libsonnet";\n\n{\n  v: u.f,\n}'}
    libraries = {"util": {"bad.libsonnet": b'{\n  f: error "lib boom",\n}'}}
    message = evaluation_error(files, libraries)
    assert message.splitlines()[0] == "runtime error: lib boom"
    assert "    util/bad.libsonnet:2:6-" in message
    assert "    main.jsonnet:4:8-10:   field <f> access" in message
    assert "/snippet/" not in message
    assert "/lib/" not in message


def test_syntax_errors_name_the_file_line_and_column() -> None:
    files = {
        "main.jsonnet": b'import "sub/broken.libsonnet"',
        "sub/broken.libsonnet": b"{\n  a: ,\n}",
    }
    message = evaluation_error(files)
    assert message.startswith("syntax error:")
    assert message.splitlines()[1:] == [
        "    sub/broken.libsonnet:2:6",
        '    main.jsonnet:1:1-31: import "sub/broken.libsonnet"',
    ]


def test_importer_raises_its_own_error_type_when_called_directly() -> None:
    importer = InMemoryImporter({"main.jsonnet": b"{}"})
    assert importer(".", importer.entry_path("main.jsonnet")) == ("/snippet/main.jsonnet", "{}")
    with pytest.raises(ImportResolutionError, match="matches no file"):
        importer("/snippet", "nope.libsonnet")


def test_user_facing_keeps_the_first_and_last_ten_frames() -> None:
    frames = [f"    /snippet/main.jsonnet:{n}:1-2: function <f> call" for n in range(1, 501)]
    message = user_facing("stack overflow\n" + "\n".join(frames))
    lines = message.splitlines()
    assert lines[0] == "stack overflow"
    assert lines[1] == "    main.jsonnet:1:1-2: function <f> call"
    assert lines[10] == "    main.jsonnet:10:1-2: function <f> call"
    assert lines[11] == "    ..."
    assert lines[12] == "    main.jsonnet:491:1-2: function <f> call"
    assert lines[-1] == "    main.jsonnet:500:1-2: function <f> call"
    assert len(lines) == 22
    short = "runtime error: x\n    /lib/a/b.libsonnet:1:1: error statement"
    assert user_facing(short) == "runtime error: x\n    a/b.libsonnet:1:1: error statement"


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("", "."),
        ("a//b/./c", "a/b/c"),
        ("a/../../b", "../b"),
        ("./x", "x"),
        ("x/..", "."),
        ("/../a", "/a"),
        ("//a/b/", "/a/b"),
        ("../../a/b/../c", "../../a/c"),
    ],
)
def test_clean_path_matches_go_path_clean(path: str, cleaned: str) -> None:
    assert clean_path(path) == cleaned


def test_shared_libraries_join_the_vendor_search_in_one_sorted_alias_order() -> None:
    vendor = "github.com/example/lib/main.libsonnet"
    request = EvaluationRequest(
        "main.jsonnet",
        {"main.jsonnet": f'[import "{vendor}", import "own/x.libsonnet"]'.encode()},
        libraries={"own": {"x.libsonnet": b'"own"', vendor: b'"own vendor copy"'}},
    )
    shared = {"alpha": {vendor: b'"shared alpha"'}, "zeta": {vendor: b'"shared zeta"'}}
    merged = with_shared_libraries(request, shared)
    assert list(merged.libraries) == ["alpha", "zeta", "own"]
    assert evaluate(merged.files, merged.libraries) == ["shared alpha", "own"]
    assert with_shared_libraries(request, {}) is request
