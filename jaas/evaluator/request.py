"""The evaluator's work item and result, and their ``jaas.ipc`` frames.

A request frame carries the file names, sizes and variables in its JSON header
and the file contents, concatenated in header order, as its raw payload, so
Jsonnet sources travel without base64 or JSON escaping. Frames between the
pool and a worker::

    worker -> parent  {"type": "ready", "pid"}       once, after start-up
    parent -> worker  {"type": "libraries", ...}     payload: shared library files
    worker -> parent  {"type": "loaded", "aliases"}  one per ``libraries`` frame
    parent -> worker  {"type": "evaluate", ...}      payload: file contents
    worker -> parent  {"type": "result", ...}        payload: rendered JSON, consumer files
    worker -> parent  {"type": "error", "message", "retire", "reason"[, "missing"]}

A request names its file trees (the snippet's files, each library's files)
either inline, in its payload, or by digest: ``source_tree`` and
``library_trees`` hold the ``sha256:<hex>`` of trees stored in the pod's
artifact cache (``jaas.evaluator.trees``), which the worker reads itself, so
the bytes sent per evaluation do not grow with the size of a source or its
libraries. A worker that cannot find a tree answers with the digests it
lacks (``"missing"`` in its ``error`` frame, ``TreesMissing``) and the caller
sends the request again with the trees inline.

``libraries`` frames carry the operator-wide shared libraries (``--library-path``,
see ``jaas.evaluator.libraries``); the pool sends them once per worker, before
its first request, so requests never carry them. The worker keeps them and
adds them to every request's own libraries, which win on an alias both have.

A ``result`` frame is laid out the same way::

    header   {"type": "result", "seconds": float, "pid": int,
              "discarded_bytes": int,
              "rendered": <bytes of rendered.json>,
              "files": [[<consumer file name>, <size>], ...],
              "objects": <objects summary>}
    payload  rendered.json, then each consumer file, in header order

The consumer files (``kustomization.yaml``, ``objects.yaml``) and the objects
summary are computed in the evaluator from the value it parsed
(``jaas.storage.objects.consumer_files_for``), so the leader relays the frame
as it is and a shard only packs its bytes into the tarball.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jaas.api.models import JsonnetVariable
from jaas.ipc import FrameError, Header

EVALUATE = "evaluate"
READY = "ready"
RESULT = "result"
ERROR = "error"
LIBRARIES = "libraries"
LOADED = "loaded"

Files = Mapping[str, bytes]

#: Native stack of a worker's evaluation thread (bytes): room for about 150,000
#: nested Jsonnet calls, far beyond any sensible ``max_stack``; reserved address
#: space, only the pages a deep evaluation touches become resident.
DEFAULT_STACK_SIZE = 256 * 1024 * 1024


class TreesMissing(Exception):
    """The evaluator could not read file trees the request names by digest.

    Not a failure of the snippet: the caller sends the request again with
    the trees inline. ``digests`` lists the ``sha256:<hex>`` it lacked.
    """

    def __init__(self, digests: Sequence[str]) -> None:
        super().__init__(f"file trees not in the artifact cache: {', '.join(digests)}")
        self.digests = tuple(digests)


class EvaluatorBusy(Exception):
    """Every worker is busy and the request's flow, or the pool, has as many waiting as allowed.

    Not a failure of the snippet: the caller asks again later (backpressure).
    """


@dataclass(frozen=True)
class EvaluationRequest:
    """One Jsonnet evaluation.

    Attributes:
        entry_file: path of the file to evaluate, relative to the snippet root
            (``spec.entryFile``, default ``main.jsonnet``).
        files: the snippet's files, ``{relative path: content}``.
        tlas: top-level arguments (``spec.tlas``); ``code=True`` values are Jsonnet.
        external_variables: ``std.extVar`` values (operator and ``spec.externalVariables``).
        libraries: ``{alias: {relative path: content}}`` of the snippet's libraries.
        max_stack: Jsonnet call depth limit (JaaS ``--max-stack``, default 500);
            output nested as deep as this fails too, as in go-jsonnet.
        label: ``<namespace>/<name>`` of the snippet, for logs.
        max_output_bytes: largest manifested output the caller can use; a
            larger one is refused inside the evaluator process with
            ``ArtifactTooLarge`` and never sent (0: no limit).
        max_output_name: what that limit is, named in the refusal (e.g.
            ``--max-artifact-bytes``).
        discard_output: the caller only needs to know that the evaluation
            succeeds (``output: source``): the result comes back with empty
            ``rendered``, so no output of any size crosses the processes.
        source_tree: ``sha256:<hex>`` of ``files`` stored as a tree in the
            artifact cache (``jaas.evaluator.trees``); when set, the frame
            carries the digest instead of the files, and the worker reads them.
        library_trees: the same per library alias; an alias listed here
            travels by digest, any other inline.
    """

    entry_file: str
    files: Files
    tlas: Sequence[JsonnetVariable] = ()
    external_variables: Sequence[JsonnetVariable] = ()
    libraries: Mapping[str, Files] = field(default_factory=dict)
    max_stack: int = 500
    label: str = ""
    max_output_bytes: int = 0
    max_output_name: str = ""
    discard_output: bool = False
    source_tree: str = ""
    library_trees: Mapping[str, str] = field(default_factory=dict)

    def to_frame(self) -> tuple[Header, bytes]:
        """Return the ``(header, payload)`` of this request's ``evaluate`` frame.

        Trees named by digest (``source_tree``, ``library_trees``) are not in
        the payload; the header's ``trees`` maps ``""`` (the snippet's files)
        and library aliases to their digests.
        """
        contents: list[bytes] = []
        trees = {alias: d for alias, d in self.library_trees.items() if alias in self.libraries}
        if self.source_tree:
            trees[""] = self.source_tree
        header: Header = {
            "type": EVALUATE,
            "entry_file": self.entry_file,
            "max_stack": self.max_stack,
            "label": self.label,
            "max_output_bytes": self.max_output_bytes,
            "max_output_name": self.max_output_name,
            "discard_output": self.discard_output,
            "tlas": [[v.name, v.value, v.code] for v in self.tlas],
            "ext_vars": [[v.name, v.value, v.code] for v in self.external_variables],
            "files": [] if self.source_tree else pack_files(self.files, contents),
            "libraries": [
                [alias, pack_files(lib, contents)]
                for alias, lib in self.libraries.items()
                if alias not in trees
            ],
            "trees": trees,
        }
        return header, b"".join(contents)

    @classmethod
    def from_frame(cls, header: Header, payload: bytes) -> EvaluationRequest:
        """Rebuild a request from an ``evaluate`` frame.

        Raises:
            FrameError: the header is malformed or the sizes disagree with the payload.
        """
        try:
            view = memoryview(payload)
            offset, files = unpack_files(header["files"], view, 0)
            offset, libraries = _unpack_libraries(header["libraries"], view, offset)
            trees = {str(k): str(v) for k, v in (header.get("trees") or {}).items()}
            if offset != len(payload):
                raise FrameError(f"evaluate frame has {len(payload) - offset} stray payload bytes")
            return cls(
                entry_file=str(header["entry_file"]),
                files=files,
                tlas=tuple(_variables(header["tlas"])),
                external_variables=tuple(_variables(header["ext_vars"])),
                libraries=libraries,
                max_stack=int(header["max_stack"]),
                label=str(header.get("label", "")),
                max_output_bytes=int(header.get("max_output_bytes", 0)),
                max_output_name=str(header.get("max_output_name", "")),
                discard_output=bool(header.get("discard_output", False)),
                source_tree=str(trees.pop("", "")),
                library_trees=trees,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise FrameError(f"malformed evaluate frame: {err!r}") from err


@dataclass(frozen=True)
class EvaluationResult:
    """A successful evaluation.

    Attributes:
        rendered: the output in go-jsonnet's format (3-space indent, sorted keys,
            trailing newline), UTF-8.
        evaluation_seconds: wall-clock seconds the worker spent evaluating,
            manifesting and computing the consumer files (excludes queueing
            and transfer).
        worker_pid: process id of the worker that evaluated it.
        discarded_bytes: length of the output the worker did not send
            (``discard_output``); ``rendered`` is empty then.
        consumer_files: ``{file name: content}`` published beside
            ``rendered.json`` for Flux's kustomize-controller
            (``kustomization.yaml`` and, for a render of Kubernetes objects,
            ``objects.yaml``; see ``jaas.storage.objects``); empty when the
            output was discarded.
        objects_summary: what the render holds, for the Ready message
            (``RenderedObjects.summary()``, e.g. ``"3 Kubernetes objects"``);
            empty when the output was discarded.
    """

    rendered: bytes
    evaluation_seconds: float
    worker_pid: int
    discarded_bytes: int = 0
    consumer_files: Files = field(default_factory=dict)
    objects_summary: str = ""

    @property
    def size(self) -> int:
        """Bytes of the manifested output, whether it was sent or discarded."""
        return len(self.rendered) or self.discarded_bytes

    def to_frame(self) -> tuple[Header, bytes]:
        """Return the ``(header, payload)`` of this result's ``result`` frame (module docstring)."""
        contents: list[bytes] = [self.rendered]
        header: Header = {
            "type": RESULT,
            "seconds": self.evaluation_seconds,
            "pid": self.worker_pid,
            "discarded_bytes": self.discarded_bytes,
            "rendered": len(self.rendered),
            "files": pack_files(self.consumer_files, contents),
            "objects": self.objects_summary,
        }
        return header, b"".join(contents)

    @classmethod
    def from_frame(cls, header: Header, payload: bytes) -> EvaluationResult:
        """Rebuild a result from a ``result`` frame.

        Raises:
            FrameError: the header is malformed or the sizes disagree with the payload.
        """
        try:
            view = memoryview(payload)
            size = int(header["rendered"])
            if size < 0 or size > len(payload):
                raise FrameError("frame lists more bytes than its payload holds")
            # Without consumer files the payload is rendered.json: no copy.
            rendered = payload if size == len(payload) else bytes(view[:size])
            offset, files = unpack_files(header["files"], view, size)
            if offset != len(payload):
                raise FrameError(f"result frame has {len(payload) - offset} stray payload bytes")
            return cls(
                rendered,
                float(header["seconds"]),
                int(header["pid"]),
                int(header.get("discarded_bytes", 0)),
                files,
                str(header["objects"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise FrameError(f"malformed result frame: {err!r}") from err


def error_header(message: str, *, retire: bool = False, reason: str = "EvaluationFailed") -> Header:
    """Header of an ``error`` frame: the user-facing ``message`` and its Ready ``reason``.

    ``retire`` tells the pool the worker exits after sending it (its state is
    no longer trusted, e.g. after a panic) and must be replaced.
    """
    return {"type": ERROR, "message": message, "retire": retire, "reason": reason}


def libraries_frame(libraries: Mapping[str, Files]) -> tuple[Header, bytes]:
    """Return the ``(header, payload)`` of a ``libraries`` frame.

    Args:
        libraries: ``{alias: {relative path: content}}``, as
            ``jaas.evaluator.libraries.load_library_paths`` returns.

    Returns:
        The header lists aliases, paths and sizes; the payload is every
        content, concatenated in header order (as in an ``evaluate`` frame).
    """
    contents: list[bytes] = []
    header: Header = {
        "type": LIBRARIES,
        "libraries": [[alias, pack_files(lib, contents)] for alias, lib in libraries.items()],
    }
    return header, b"".join(contents)


def libraries_from_frame(header: Header, payload: bytes) -> dict[str, dict[str, bytes]]:
    """Rebuild ``{alias: {relative path: content}}`` from a ``libraries`` frame.

    Raises:
        FrameError: the header is malformed or the sizes disagree with the payload.
    """
    try:
        offset, libraries = _unpack_libraries(header["libraries"], memoryview(payload), 0)
    except (KeyError, TypeError, ValueError) as err:
        raise FrameError(f"malformed libraries frame: {err!r}") from err
    if offset != len(payload):
        raise FrameError(f"libraries frame has {len(payload) - offset} stray payload bytes")
    return libraries


def pack_files(files: Files, contents: list[bytes]) -> list[list[Any]]:
    """Append the contents of ``files`` to ``contents``; return ``[[path, size], ...]``."""
    listing: list[list[Any]] = []
    for path, content in files.items():
        listing.append([path, len(content)])
        contents.append(content)
    return listing


def unpack_files(listing: Any, view: memoryview, offset: int) -> tuple[int, dict[str, bytes]]:
    """Read the files ``pack_files`` listed from ``view`` at ``offset``; return the end and files.

    Raises:
        FrameError: the listing names more bytes than ``view`` holds.
        TypeError, ValueError: the listing is malformed.
    """
    files: dict[str, bytes] = {}
    for path, size in listing:
        end = offset + int(size)
        if size < 0 or end > len(view):
            raise FrameError("frame lists more bytes than its payload holds")
        files[str(path)] = bytes(view[offset:end])
        offset = end
    return offset, files


def _unpack_libraries(
    listing: Any, view: memoryview, offset: int
) -> tuple[int, dict[str, dict[str, bytes]]]:
    libraries: dict[str, dict[str, bytes]] = {}
    for alias, files in listing:
        offset, libraries[str(alias)] = unpack_files(files, view, offset)
    return offset, libraries


def _variables(items: Any) -> list[JsonnetVariable]:
    return [JsonnetVariable(str(name), str(value), bool(code)) for name, value, code in items]
