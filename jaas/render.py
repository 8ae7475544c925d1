"""``jaas render``: render a JsonnetSnippet manifest on this machine, as the operator would.

The snippet goes through the operator's own pipeline stages, the pure
functions ``jaas.operator.reconciler.SnippetReconciler`` calls, in its order:
``validate`` (``parse_snippet_spec``, ``check_external_variables``,
``check_aliases``), ``resolve source`` (``inline_source`` or
``artifact_source``, ``check_entry_file``), ``resolve libraries``,
``evaluate`` (``evaluation_request`` sent to an
:class:`~jaas.evaluator.pool.EvaluatorPool` of one killable worker, with the
operator's engine, timeout, memory limit and stack depth) and ``package``
(``package_output``). Identity, publishing and status writes, which need a
cluster, are not run, and neither is the dependency-cycle walk (the other
snippets are not there). A failure is the operator's ``ReasonError``: the
command prints ``<Reason>: <message>`` exactly as the Ready condition would
carry it, and exits 1.

What stands for the cluster's objects (read in memory, nothing leaves the
process):

- ``--source DIR`` is the artifact of ``spec.sourceRef``: the directory's
  regular files are packed into a tarball in memory and extracted with the
  operator's extractor (:func:`jaas.sources.extract.extract_tarball`), so
  ``spec.sourceRef.path`` narrows the tree and the safe-name rules and size
  caps are the operator's to the byte. Symlinks are never followed (an
  artifact's link entries are dropped by the extractor) and hidden files and
  directories are skipped (the extractor drops them);
- ``--library ALIAS=DIR`` gives the files of the ``spec.libraries`` entry
  whose alias (``importPath``, else the library's name) is ``ALIAS``: DIR is
  read like ``--source``;
- ``--library-path`` and ``--ext-var`` (and ``JAAS_EXT_VAR_*``) are the
  operator's flags of the same names.

``spec.suspend`` is ignored (the render shows what the snippet renders once
resumed); a manifest without ``metadata.namespace`` is in ``default``; the
ServiceAccount check passes as under ``--default-service-account``.

Output: for ``output: rendered`` the bytes of ``rendered.json`` on stdout;
for ``output: source`` nothing on stdout (the operator evaluates such a
snippet only to prove it renders, and publishes the source files). With
``--output FILE`` the tarball the operator would publish is written there
instead (``rendered.json``, ``kustomization.yaml`` and ``objects.yaml``, or
the source files).

Importing this module stays cheap (the ``jaas`` command builds every
subparser): the operator's modules, which import the Kubernetes client and
``prometheus_client``, are imported when a render starts.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gzip
import io
import os
import sys
import tarfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaas import defaults
from jaas.api.constants import (
    GROUP,
    LIBRARY_KIND,
    SNIPPET_KIND,
)
from jaas.api.models import format_duration
from jaas.api.reasons import Reason, ReasonError
from jaas.evaluator.engines import ENGINES
from jaas.options import duration_flag, format_quantity, parse_ext_vars, parse_quantity
from jaas.sources.extract import (
    MAX_DECOMPRESSED_BYTES,
    extract_tarball,
    normalise_path_prefix,
    safe_entry_name,
)

if TYPE_CHECKING:
    from jaas.api.models import SnippetSpec
    from jaas.evaluator.request import EvaluationResult
    from jaas.operator.reconciler import Evaluator
    from jaas.operator.sourcing import ResolvedSource
    from jaas.storage.package import Package

Obj = dict[str, Any]

#: Namespace of a manifest that names none (kubectl's default).
DEFAULT_NAMESPACE = "default"


class UsageError(Exception):
    """The command line or the manifest cannot be rendered as given (exit code 2)."""


@dataclass(frozen=True)
class RenderOptions:
    """The operator settings a render depends on, with the operator's defaults.

    Attributes:
        ext_vars: operator external variables (``--ext-var``), always strings;
            ``spec.externalVariables`` may not redefine them.
        shared_libraries: ``{alias: files}`` of ``--library-path``
            (``jaas.evaluator.libraries.load_library_paths``); the evaluator
            pool must hold the same ones. Only the aliases are used here
            (``spec.libraries`` may not shadow them).
        max_stack: ``--max-stack``.
        max_artifact_bytes: ``--max-artifact-bytes`` (0: no operator cap).
        no_cross_namespace_refs: ``--no-cross-namespace-refs``.
    """

    ext_vars: Mapping[str, str] = field(default_factory=dict)
    shared_libraries: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    max_stack: int = defaults.MAX_STACK
    max_artifact_bytes: int = defaults.MAX_ARTIFACT_BYTES
    no_cross_namespace_refs: bool = defaults.NO_CROSS_NAMESPACE_REFS


@dataclass(frozen=True)
class Rendered:
    """A successful render.

    Attributes:
        spec: the parsed ``spec``.
        result: the evaluator's result (``rendered`` is empty for ``output: source``).
        package: the tarball the operator would publish, with its revision.
        files: the snippet's files the evaluation used.
    """

    spec: SnippetSpec
    result: EvaluationResult
    package: Package
    files: Mapping[str, bytes]

    @property
    def stdout(self) -> bytes:
        """What ``jaas render`` prints: ``rendered.json``, or nothing for ``output: source``."""
        return self.result.rendered if self.spec.output == "rendered" else b""


def condition_of(err: ReasonError) -> tuple[str, str]:
    """The Ready ``(reason, message)`` the operator writes for ``err`` (the message shortened)."""
    from jaas.operator.reconciler import failure_message, shorten_message

    return err.reason.value, shorten_message(failure_message(err))


# --- local directories as artifacts ---------------------------------------------------


class SourceDirectory:
    """A local directory read as the operator reads a Flux artifact holding it.

    The regular files below ``root`` (hidden names, symlinks and names the
    extractor would drop are skipped while walking) are packed into a
    ``.tar.gz`` in memory, once, and every ``files(path)`` extracts it with
    :func:`jaas.sources.extract.extract_tarball`: the operator's path
    narrowing, name cleaning and caps. A walk stops once the files read pass
    the extractor's decompressed-size cap; the extractor then refuses the
    artifact with its own message.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._tarball: bytes | None = None
        self._files: dict[str, dict[str, bytes]] = {}
        # Renders read it from worker threads; each result is computed once.
        self._lock = threading.Lock()

    def tarball(self) -> bytes:
        """The ``.tar.gz`` of the directory (PAX, sorted, mode 0644, mtime 0).

        Raises:
            ReasonError: ``SourceFetchFailed`` when a file or directory cannot be read.
        """
        with self._lock:
            if self._tarball is None:
                self._tarball = _pack(_read_tree(self.root))
            return self._tarball

    def files(self, path: str = "") -> dict[str, bytes]:
        """``{relative path: content}`` below ``path`` (``sourceRef.path``), as the operator has it.

        Raises:
            ReasonError: ``SourceFetchFailed`` for a cap the files pass, or a
                file that cannot be read.
        """
        prefix = normalise_path_prefix(path)
        tarball = self.tarball()
        with self._lock:
            if prefix not in self._files:
                self._files[prefix] = extract_tarball(tarball, path=prefix)
            return dict(self._files[prefix])


def _read_tree(root: Path) -> dict[str, bytes]:
    """The regular files below ``root`` whose names the extractor keeps, by relative name."""
    files: dict[str, bytes] = {}
    total = 0
    pending: list[tuple[str, Path]] = [("", root)]
    while pending:
        prefix, directory = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as err:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED, f"cannot list {directory}: {err}"
            ) from err
        for entry in entries:
            name = prefix + entry.name
            if entry.name.startswith(".") or entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append((name + "/", Path(entry.path)))
                continue
            if not entry.is_file(follow_symlinks=False) or safe_entry_name(name) != name:
                continue
            try:
                content = Path(entry.path).read_bytes()
            except OSError as err:
                raise ReasonError(
                    Reason.SOURCE_FETCH_FAILED, f"cannot read {entry.path}: {err}"
                ) from err
            files[name] = content
            total += len(content)
            if total > MAX_DECOMPRESSED_BYTES:
                return files
    return files


def _pack(files: Mapping[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


# --- the manifest ---------------------------------------------------------------------


def load_manifest(text: str, origin: str = "the manifest") -> Obj:
    """The one JsonnetSnippet of a YAML (or JSON) manifest.

    Every document counts, and so does every item of a ``List`` (``kind``
    ending in ``List`` with ``items``); other kinds are ignored.

    Raises:
        UsageError: the text is not YAML, or holds no JsonnetSnippet or more than one.
    """
    import yaml

    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as err:
        raise UsageError(f"{origin} is not valid YAML: {err}") from err
    objects: list[Any] = []
    for doc in documents:
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List"):
            objects.extend(doc.get("items") or [])
        else:
            objects.append(doc)
    snippets = [
        obj
        for obj in objects
        if isinstance(obj, dict)
        and obj.get("kind") == SNIPPET_KIND
        and str(obj.get("apiVersion", "")).partition("/")[0] == GROUP
    ]
    if len(snippets) != 1:
        names = ", ".join(_name_of(s) for s in snippets)
        found = f"{len(snippets)} ({names})" if snippets else "none"
        raise UsageError(
            f"{origin} must hold exactly one {GROUP} {SNIPPET_KIND} to render; it holds {found}"
        )
    snippet: Obj = copy.deepcopy(snippets[0])
    return snippet


def _name_of(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or DEFAULT_NAMESPACE}/{meta.get('name') or '?'}"


def _as_snippet(manifest: Mapping[str, Any]) -> Obj:
    """The manifest as the operator's cache would hand it over (namespace set, suspend off)."""
    obj: Obj = copy.deepcopy(dict(manifest))
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise UsageError("the JsonnetSnippet has no metadata.name")
    meta.setdefault("namespace", DEFAULT_NAMESPACE)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        spec.pop("suspend", None)
    return obj


# --- rendering ------------------------------------------------------------------------


class Renderer:
    """Renders JsonnetSnippets through the operator's stages with one evaluator and settings.

    Call :meth:`render` any number of times, also concurrently.

    Args:
        evaluator: a started ``EvaluatorPool`` (or anything with its ``evaluate``),
            built with the same engine, ``max_stack`` and shared libraries as ``options``.
        options: the operator settings; default the operator's defaults.
    """

    def __init__(self, evaluator: Evaluator, options: RenderOptions | None = None) -> None:
        self.evaluator = evaluator
        self.options = options or RenderOptions()

    async def render(
        self,
        manifest: Mapping[str, Any],
        *,
        source: SourceDirectory | None = None,
        libraries: Mapping[str, SourceDirectory] | None = None,
    ) -> Rendered:
        """Render one JsonnetSnippet (see the module docstring).

        Args:
            manifest: the JsonnetSnippet object (``load_manifest``).
            source: the files of ``spec.sourceRef``'s artifact,
                ``spec.sourceRef.path`` not yet applied.
            libraries: ``{alias: files}`` of ``spec.libraries``.

        Returns:
            The result and the package the operator would publish.

        Raises:
            ReasonError: every failure the operator reports as a Ready reason
                (``condition_of`` gives the condition's reason and message).
            UsageError: ``source`` or ``libraries`` do not match the manifest.
        """
        from jaas.api.models import parse_snippet_spec
        from jaas.operator.libraries import check_aliases
        from jaas.operator.reconciler import (
            check_entry_file,
            check_external_variables,
            evaluate_request,
            evaluation_request,
            package_output,
        )

        opts = self.options
        obj = _as_snippet(manifest)
        meta = obj["metadata"]
        namespace = str(meta["namespace"])
        # The stages of SnippetReconciler, in its order, with what needs no cluster.
        spec = parse_snippet_spec(obj.get("spec") or {})
        check_external_variables(spec, opts.ext_vars)
        check_aliases(spec.libraries, frozenset(opts.shared_libraries))
        resolved = await asyncio.to_thread(self._source, spec, namespace, source)
        check_entry_file(spec.entry_file, resolved)
        resolved_libraries = await asyncio.to_thread(
            self._libraries, spec, namespace, dict(libraries or {})
        )
        request = evaluation_request(
            spec,
            resolved.files,
            resolved_libraries,
            label=f"{namespace}/{meta['name']}",
            operator_ext_vars=opts.ext_vars,
            max_stack=opts.max_stack,
            max_artifact_bytes=opts.max_artifact_bytes,
        )
        result = await evaluate_request(self.evaluator.evaluate, request)
        package = await asyncio.to_thread(
            package_output,
            spec,
            resolved.files,
            result,
            max_artifact_bytes=opts.max_artifact_bytes,
        )
        return Rendered(spec, result, package, resolved.files)

    def _source(
        self, spec: SnippetSpec, namespace: str, source: SourceDirectory | None
    ) -> ResolvedSource:
        """``resolve source``: inline files, or ``source`` standing in for ``spec.sourceRef``."""
        from jaas.operator.sourcing import artifact_source, check_namespace, inline_source

        ref = spec.source_ref
        if ref is None:
            if source is not None:
                raise UsageError("--source is given, but the snippet has inline spec.files")
            return inline_source(spec.files)
        ref_namespace = ref.namespace_or(namespace)
        if source is None:
            raise UsageError(
                f"spec.sourceRef names {ref.kind} {ref_namespace}/{ref.name}: "
                "give its artifact's files with --source DIR"
            )
        stage = "resolve source"
        ident = f"{ref.kind} {ref_namespace}/{ref.name}"
        check_namespace(
            ref_namespace,
            namespace,
            f"{stage}: {ident}",
            no_cross_namespace_refs=self.options.no_cross_namespace_refs,
        )
        try:
            files = source.files(ref.path)
        except ReasonError as err:
            raise ReasonError(err.reason, f"{stage}: {ident}: {err.message}") from err
        return artifact_source(files, ref, ref_namespace, f"local@{source.root}", stage=stage)

    def _libraries(
        self, spec: SnippetSpec, namespace: str, given: dict[str, SourceDirectory]
    ) -> dict[str, dict[str, bytes]]:
        """``resolve libraries``: each ``--library ALIAS=DIR`` for the entry of that alias."""
        from jaas.operator.libraries import STAGE
        from jaas.operator.sourcing import check_namespace

        aliases = {lib.alias: lib for lib in spec.libraries}
        unknown = sorted(set(given) - set(aliases))
        if unknown:
            raise UsageError(
                f"--library {', '.join(unknown)}: spec.libraries has no such import path "
                f"(it has: {', '.join(sorted(aliases)) or 'none'})"
            )
        out: dict[str, dict[str, bytes]] = {}
        for alias, lib in aliases.items():
            lib_namespace = lib.namespace or namespace
            ident = f"{LIBRARY_KIND} {lib_namespace}/{lib.name}"
            if alias not in given:
                raise UsageError(
                    f"spec.libraries lists {ident} as import path {alias!r}: "
                    f"give its files with --library {alias}=DIR"
                )
            check_namespace(
                lib_namespace,
                namespace,
                f"{STAGE}: {ident}",
                no_cross_namespace_refs=self.options.no_cross_namespace_refs,
            )
            try:
                files = given[alias].files()
            except ReasonError as err:
                raise ReasonError(err.reason, f"{STAGE}: {ident}: {err.message}") from err
            if not files:
                raise ReasonError(
                    Reason.INVALID_SPEC,
                    f"{STAGE}: {ident}: {given[alias].root} holds no usable files",
                )
            out[alias] = files
        return out


async def render(
    manifest: Mapping[str, Any],
    *,
    evaluator: Evaluator,
    source: SourceDirectory | None = None,
    libraries: Mapping[str, SourceDirectory] | None = None,
    options: RenderOptions | None = None,
) -> Rendered:
    """Render one JsonnetSnippet with a ``Renderer`` of its own (see ``Renderer.render``).

    Raises:
        ReasonError: every failure the operator reports as a Ready reason.
        UsageError: ``source`` or ``libraries`` do not match the manifest.
    """
    return await Renderer(evaluator, options).render(manifest, source=source, libraries=libraries)


# --- the command line -----------------------------------------------------------------


def _assignment(flag: str) -> Any:
    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} must be NAME=DIR")
        return key, value

    return parse


def add_render_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``render`` to the ``jaas`` subcommands (``sub``: ``add_subparsers()``'s result).

    Defaults are the operator's (``jaas.defaults``), shown in the flags' syntax.
    """
    parser: argparse.ArgumentParser = sub.add_parser(
        "render",
        help="render a JsonnetSnippet manifest locally, exactly as the operator would",
        description="Render the JsonnetSnippet of MANIFEST with the operator's validation, "
        "engine and packaging; print rendered.json (nothing for output: source), or write "
        "the artifact tarball with --output. A failure prints '<Reason>: <message>' as the "
        "Ready condition would carry it and exits 1. See docs/render.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("manifest", metavar="MANIFEST", help="YAML file ('-': standard input)")
    parser.add_argument(
        "--source",
        metavar="DIR",
        default=None,
        help="directory holding the files of spec.sourceRef's artifact (its path applies)",
    )
    parser.add_argument(
        "--library",
        dest="libraries",
        action="append",
        type=_assignment("--library"),
        default=[],
        metavar="NAME=DIR",
        help="files of the spec.libraries entry imported as NAME (importPath, else its name); "
        "repeatable",
    )
    parser.add_argument(
        "--library-path",
        dest="library_paths",
        action="append",
        default=[],
        metavar="DIR",
        help="the operator's shared libraries (as `jaas operator --library-path`); repeatable",
    )
    parser.add_argument(
        "--engine", choices=sorted(ENGINES), default=defaults.ENGINE, help="Jsonnet engine"
    )
    parser.add_argument(
        "--max-stack", type=int, default=defaults.MAX_STACK, help="Jsonnet call depth limit"
    )
    parser.add_argument(
        "--evaluation-timeout",
        type=duration_flag,
        default=format_duration(defaults.EVALUATION_TIMEOUT),
        help="CPU time the evaluation may use; 0 disables",
    )
    parser.add_argument(
        "--evaluation-memory-limit",
        type=parse_quantity,
        default=format_quantity(defaults.EVALUATION_MEMORY_LIMIT),
        help="address-space limit of the evaluator process; 0 disables",
    )
    parser.add_argument(
        "--max-artifact-bytes",
        type=parse_quantity,
        default=format_quantity(defaults.MAX_ARTIFACT_BYTES),
        help="the operator's cap on a published artifact's content; 0 disables",
    )
    parser.add_argument(
        "--ext-var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="operator external variable (repeatable; also JAAS_EXT_VAR_<KEY>)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE.tar.gz",
        default=None,
        help="write the artifact the operator would publish here instead of printing",
    )
    return parser


def _directory(text: str, flag: str) -> SourceDirectory:
    if not Path(text).is_dir():
        raise UsageError(f"{flag} {text}: not a directory")
    return SourceDirectory(text)


def main_from_args(args: argparse.Namespace) -> int:
    """Run ``jaas render`` with parsed arguments; return the exit code.

    0: rendered (stdout or ``--output``); 1: the operator would fail it
    (``<Reason>: <message>`` on stderr), the evaluator could not start or
    ``--output`` cannot be written; 2: a usage error (``jaas render: error: ...``).
    """
    import asyncio

    from jaas.evaluator.libraries import LibraryPathError, load_library_paths
    from jaas.observability import tracing

    try:
        try:
            ext_vars = parse_ext_vars(args.ext_var, dict(os.environ))
            shared = load_library_paths(args.library_paths)
        except (ValueError, LibraryPathError) as err:
            raise UsageError(str(err)) from err
        libraries: dict[str, SourceDirectory] = {}
        for alias, directory in args.libraries:
            if alias in libraries:
                raise UsageError(f"--library {alias} is given twice")
            libraries[alias] = _directory(directory, f"--library {alias}=")
        source = None if args.source is None else _directory(args.source, "--source")
        try:
            if args.manifest == "-":
                text = sys.stdin.read()
            else:
                text = Path(args.manifest).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read {args.manifest}: {err}") from err
        manifest = load_manifest(text, args.manifest)
        options = RenderOptions(
            ext_vars=ext_vars,
            shared_libraries=shared,
            max_stack=args.max_stack,
            max_artifact_bytes=args.max_artifact_bytes,
        )
        # With OTEL_EXPORTER_OTLP_* set, a render is one trace like a reconcile's.
        provider = tracing.setup_tracing("render")
        try:
            with tracing.span("jaas.render", attributes={"jaas.manifest": args.manifest}):
                rendered = asyncio.run(_render_once(args, manifest, source, libraries, options))
        finally:
            tracing.shutdown_tracing(provider)
    except UsageError as err:
        print(f"jaas render: error: {err}", file=sys.stderr)
        return 2
    except _Failed as failed:
        print(failed.line, file=sys.stderr)
        return 1
    if args.output is not None:
        try:
            Path(args.output).write_bytes(rendered.package.data)
        except OSError as err:
            print(f"jaas render: cannot write {args.output}: {err}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.buffer.write(rendered.stdout)
    sys.stdout.buffer.flush()
    if rendered.spec.output == "source":
        print(
            "jaas render: output: source publishes the source files, not a render; "
            "nothing printed (--output FILE.tar.gz writes the artifact)",
            file=sys.stderr,
        )
    return 0


class _Failed(Exception):
    """A render that ends with exit code 1; ``line`` is what stderr gets."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


async def _render_once(
    args: argparse.Namespace,
    manifest: Obj,
    source: SourceDirectory | None,
    libraries: Mapping[str, SourceDirectory],
    options: RenderOptions,
) -> Rendered:
    """Render in a pool of one evaluator, built like the operator's (``jaas.shards.leader``)."""
    from jaas.evaluator.pool import EvaluatorPool

    pool = EvaluatorPool(
        1,
        timeout=args.evaluation_timeout,
        memory_limit=args.evaluation_memory_limit or None,
        max_stack=args.max_stack,
        shared_libraries=options.shared_libraries,
        engine=args.engine,
    )
    try:
        await pool.start()
    except Exception as err:
        raise _Failed(f"jaas render: cannot start the {args.engine} evaluator: {err}") from err
    try:
        return await render(
            manifest, evaluator=pool, source=source, libraries=libraries, options=options
        )
    except ReasonError as err:
        reason, message = condition_of(err)
        raise _Failed(f"{reason}: {message}") from err
    finally:
        await pool.close()
