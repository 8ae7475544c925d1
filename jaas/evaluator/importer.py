"""In-memory import resolution for rjsonnet, with JaaS's rules and user-facing paths.

A snippet's files and its libraries' files live in memory, keyed by
slash-separated relative paths. rjsonnet is given virtual absolute paths for
them (``/snippet/<path>`` and ``/lib/<alias>/<path>``) and always uses
``evaluate_file``: ``evaluate_snippet`` resolves imports against the process's
working directory. rjsonnet hands the callback the directory of the importing
file, which names the root (snippet or library) and the directory within it.

Resolution follows metio/jaas ``internal/eval/importer.go`` (``InMemoryImporter``),
which mirrors ``jsonnet -J vendor``. For ``import "P"`` from a file in directory D
of root R:

1. ``D/P`` cleaned, in R, unless it climbs above R (``./x``, ``../x``, siblings);
2. ``P`` without a slash that is a library alias: that library's ``main.libsonnet``
   (missing is an error);
3. ``A/F`` where ``A`` is a library alias: ``F`` in that library (missing is an
   error);
4. ``P`` cleaned, in the snippet's files, then in every library in sorted alias
   order (jsonnet-bundler vendor paths such as ``github.com/...``).

Operator-wide shared libraries (``--library-path``, loaded by
``jaas.evaluator.libraries``) are library aliases like any other: the worker
adds them to each request's ``libraries`` before building the importer, with
the request's own (``spec.libraries``) alias replacing a shared one of the
same name as a whole (JaaS merges them after the CR libraries and the CR
wins; the operator rejects such a collision earlier as ``InvalidSpec``). So a
bare shared alias loads its ``main.libsonnet`` (2), ``alias/file`` reads that
shared library (3), and the vendor search (4) covers shared and own libraries
together, in one sorted alias order, which is how ``jsonnet -J`` treats every
JPATH directory. Files inside a shared library import relative to that
library, as for any library (1).

Imports inside TLAs and external variables given as code resolve from the
snippet's root. Errors shown to users name files as the user knows them:
``main.jsonnet:3:7`` for a snippet file, ``<alias>/x.libsonnet:1:2`` for a
library file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Virtual directory holding the snippet's own files.
SNIPPET_ROOT = "/snippet"
#: Virtual directory holding one directory per library alias.
LIBRARY_ROOT = "/lib"
#: Stack frames kept in error messages (go-jsonnet's default trace size).
MAX_FRAMES = 20
#: File a bare library alias import loads (JaaS ``defaultLibraryEntryFile``).
LIBRARY_ENTRY_FILE = "main.libsonnet"

_SNIPPET_PREFIX = SNIPPET_ROOT + "/"
_LIBRARY_PREFIX = LIBRARY_ROOT + "/"
# rjsonnet prints one stack frame per line, indented, starting with the file's
# path; syntax errors print the location the same way.
_FRAME_PATH = re.compile(r"^(\s+)/(?:snippet|lib)/", re.MULTILINE)
_CALLBACK_WRAPPER = re.compile(r"import_callback error: ImportResolutionError: ")

Files = Mapping[str, bytes]


class ImportResolutionError(Exception):
    """An import that cannot be served; the message names files as the user does."""


def clean_path(path: str) -> str:
    """Return the shortest equivalent of a slash-separated path, as Go's ``path.Clean``.

    Repeated slashes and ``.`` elements go, ``x/..`` pairs cancel, ``..`` at the
    start of a rooted path is dropped; an empty result is ``"."``.
    """
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
        else:
            parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def user_facing(message: str, max_frames: int = MAX_FRAMES) -> str:
    """Rewrite an rjsonnet error message to name files as the user knows them.

    ``/snippet/main.jsonnet:3:7`` becomes ``main.jsonnet:3:7`` and
    ``/lib/<alias>/x.libsonnet:1:2`` becomes ``<alias>/x.libsonnet:1:2`` in
    stack-frame lines; rjsonnet's wrapper around this module's own import
    errors is dropped. rjsonnet prints every frame (it ignores ``max_trace``),
    so a stack overflow would print ``max_stack`` lines: like go-jsonnet's
    error formatter, only the first and last ``max_frames // 2`` frames are
    kept, with a ``...`` line between them.
    """
    message = _FRAME_PATH.sub(r"\1", _CALLBACK_WRAPPER.sub("", message))
    lines = message.split("\n")
    first_frame = len(lines)
    while first_frame > 1 and lines[first_frame - 1].startswith("    "):
        first_frame -= 1
    frames = lines[first_frame:]
    if max_frames > 0 and len(frames) > max_frames:
        above = max_frames // 2
        below = max_frames - above
        frames = [*frames[:above], "    ...", *frames[len(frames) - below :]]
        message = "\n".join(lines[:first_frame] + frames)
    return message


class InMemoryImporter:
    """The ``import_callback`` of every engine, over the snippet's files and its libraries.

    Args:
        files: the snippet's files, ``{relative path: content}``.
        libraries: ``{alias: {relative path within the library: content}}``:
            the snippet's own libraries and the shared ones, already merged
            (``jaas.evaluator.worker.with_shared_libraries``).

    :meth:`resolve` ``(base_dir, rel) -> (virtual path, bytes)`` serves
    engines that take bytes (jaas-jrsonnet, go-jsonnet: ``importbin`` of
    binary files works). Calling the instance, ``importer(base_dir, rel) ->
    (virtual path, text)``, serves rjsonnet, whose callback must return
    ``str``: it raises ``ImportResolutionError`` for content that is not UTF-8.
    Both raise ``ImportResolutionError`` when nothing matches.
    """

    def __init__(self, files: Files, libraries: Mapping[str, Files] | None = None) -> None:
        self._files = files
        self._libraries: Mapping[str, Files] = libraries or {}
        self._aliases = sorted(self._libraries)
        self._decoded: dict[str, str] = {}

    @staticmethod
    def entry_path(entry_file: str) -> str:
        """The virtual path to pass to ``rjsonnet.evaluate_file`` for a snippet file."""
        return _SNIPPET_PREFIX + clean_path(entry_file)

    def __call__(self, base_dir: str, rel: str) -> tuple[str, str]:
        """Resolve ``rel`` imported from a file in ``base_dir`` to UTF-8 text (rjsonnet).

        Raises:
            ImportResolutionError: nothing matches, or the file is not UTF-8.
        """
        virtual, content = self.resolve(base_dir, rel)
        text = self._decoded.get(virtual)
        if text is None:
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ImportResolutionError(
                    f"{self.user_path(virtual)} is not valid UTF-8 text (byte "
                    f"{err.start}); import and importstr need UTF-8, and this engine "
                    "cannot importbin binary files"
                ) from None
            self._decoded[virtual] = text
        return virtual, text

    def resolve(self, base_dir: str, rel: str) -> tuple[str, bytes]:
        """Resolve ``rel`` imported from a file in ``base_dir``; see the module docstring.

        The entry file is asked for as ``(".", <its virtual path>)``.

        Returns:
            The file's virtual path and its content.

        Raises:
            ImportResolutionError: nothing matches.
        """
        if rel.startswith(_SNIPPET_PREFIX) and not self._is_virtual(base_dir):
            # The entry file: rjsonnet asks for it as ("." , the path it was given).
            path = rel[len(_SNIPPET_PREFIX) :]
            if path not in self._files:
                raise ImportResolutionError(f"entry file {path} is not among the snippet's files")
            return self._load(None, path)
        alias, directory = self._location(base_dir)
        where = self._where(alias, directory)

        # 1. Relative to the importing file's directory, within its own root.
        relative = clean_path(f"{directory or '.'}/{rel}")
        inside = relative != ".." and not relative.startswith("../")
        if inside and relative in self._root(alias):
            return self._load(alias, relative)

        slash = rel.find("/")
        if slash < 0:
            # 2. A bare library alias: that library's main.libsonnet.
            if rel in self._libraries:
                if LIBRARY_ENTRY_FILE not in self._libraries[rel]:
                    raise ImportResolutionError(
                        f'cannot import "{rel}" (from {where}): '
                        f"library {rel} has no {LIBRARY_ENTRY_FILE}"
                    )
                return self._load(rel, LIBRARY_ENTRY_FILE)
        else:
            # 3. alias/file: authoritative when the head is a library alias.
            head, within = rel[:slash], clean_path(rel[slash + 1 :])
            if head in self._libraries:
                if within not in self._libraries[head]:
                    raise ImportResolutionError(
                        f'cannot import "{rel}" (from {where}): library {head} has no file {within}'
                    )
                return self._load(head, within)

        # 4. Vendor search: the snippet's files, then every library by alias.
        vendor = clean_path(rel)
        if vendor in self._files:
            return self._load(None, vendor)
        for name in self._aliases:
            if vendor in self._libraries[name]:
                return self._load(name, vendor)
        raise ImportResolutionError(
            f'cannot import "{rel}" (from {where}): it matches no file of the snippet '
            "or of its libraries"
        )

    @staticmethod
    def _is_virtual(directory: str) -> bool:
        return (
            directory == SNIPPET_ROOT
            or directory.startswith(_SNIPPET_PREFIX)
            or directory.startswith(_LIBRARY_PREFIX)
        )

    @staticmethod
    def _location(directory: str) -> tuple[str | None, str]:
        """Map rjsonnet's base directory to (alias or None for the snippet, dir within)."""
        if directory.startswith(_SNIPPET_PREFIX):
            return None, directory[len(_SNIPPET_PREFIX) :]
        if directory.startswith(_LIBRARY_PREFIX):
            alias, _, within = directory[len(_LIBRARY_PREFIX) :].partition("/")
            return alias, within
        # The snippet root itself, or the working directory rjsonnet passes for
        # imports inside TLA / external variable code: the snippet's root.
        return None, ""

    def _root(self, alias: str | None) -> Files:
        if alias is None:
            return self._files
        return self._libraries.get(alias, {})

    @staticmethod
    def _user_name(alias: str | None, path: str) -> str:
        return path if alias is None else f"{alias}/{path}"

    @classmethod
    def _where(cls, alias: str | None, directory: str) -> str:
        """The importing file's directory as the user knows it, for messages."""
        if alias is None and not directory:
            return "the snippet's top directory"
        return cls._user_name(alias, directory).rstrip("/") + "/"

    def _load(self, alias: str | None, path: str) -> tuple[str, bytes]:
        virtual = _SNIPPET_PREFIX + path if alias is None else f"{_LIBRARY_PREFIX}{alias}/{path}"
        return virtual, self._root(alias)[path]

    @staticmethod
    def user_path(virtual: str) -> str:
        """A virtual path as the user names the file (``main.jsonnet``, ``<alias>/x.libsonnet``)."""
        if virtual.startswith(_SNIPPET_PREFIX):
            return virtual[len(_SNIPPET_PREFIX) :]
        return virtual.removeprefix(_LIBRARY_PREFIX)
