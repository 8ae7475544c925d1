"""Operator-wide shared libraries read from ``--library-path`` directories.

Reference behaviour: metio/jaas ``main.go`` (``ociLibraryAliasesFromPaths``,
``ociLibrariesFromPaths``, ``readOCILibraryFiles``) and jaas-reference §4.2 and
§4.6. In operator mode every **subdirectory** of every ``--library-path``
directory is a library alias named after the subdirectory; every
``.libsonnet``, ``.jsonnet`` and ``.json`` file below it, at any depth, is read
into memory once at start-up, keyed by its ``/``-separated path relative to the
subdirectory. Other extensions (``.txt``, ...) are not loaded, so ``importstr``
of them fails on this path, as in JaaS. When two ``--library-path``
directories hold the same alias, the **right-most** one wins and replaces the
alias as a whole (no file-level merge), like go-jsonnet's JPATH where the last
``-J`` wins. (metio/jaas ``main.go`` as read at commit ``01a8e7c`` keeps the
first one; its documentation and the reference say right-most, which
jaas-py follows.)

jaas-py is stricter than JaaS about what it reads, because JaaS would, for
example, follow a symlink in an image volume to ``/etc``:

* a ``--library-path`` that is missing or not a directory raises
  :class:`LibraryPathError` (JaaS skips it silently, which turns a typo into
  import errors in every snippet);
* names starting with ``.`` are skipped at every level (``.git``, the
  ``..data`` directory of a ConfigMap volume), as the artifact extractor does;
* a symlink is followed only while its target stays inside the directory it
  is scanned from: the ``--library-path`` for an alias, the alias's own
  directory for its files. Escaping, dangling and looping links are skipped
  with a warning; only regular files are read (never a FIFO or device);
* aliases must be one path segment of ``[A-Za-z0-9._-]`` (the rule for
  ``spec.libraries`` aliases) and file paths must be what
  :func:`jaas.sources.extract.safe_entry_name` keeps; other names are skipped
  with a warning;
* the files read may total at most ``MAX_LIBRARY_BYTES`` and the walk may look
  at most at ``MAX_LIBRARY_ENTRIES`` directory entries, so ``--library-path /``
  fails within a moment instead of reading the disk;
* an unreadable directory or file raises :class:`LibraryPathError` (JaaS skips
  it, which shows up later as a confusing import error).

An alias whose directory holds no loadable file is still an alias (it counts
for the shadowing check, and ``import "alias"`` reports the missing
``main.libsonnet``); JaaS leaves such an alias out of the loaded map but keeps
it in the alias list.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from jaas.sources.extract import safe_entry_name

logger = logging.getLogger(__name__)

MiB: Final = 1 << 20
#: File name endings that are loaded (JaaS ``readOCILibraryFiles``), case-sensitive.
LIBRARY_EXTENSIONS: Final = (".libsonnet", ".jsonnet", ".json")
#: Cap on the bytes of all loaded files together. Every evaluator worker keeps a
#: copy, so this also bounds what the libraries add to each worker's memory.
MAX_LIBRARY_BYTES: Final = 256 * MiB
#: Cap on the directory entries (files of any kind and directories) examined
#: across all library paths: bounds the walk of a wrong path such as ``/`` and
#: the size of the listing sent to each worker.
MAX_LIBRARY_ENTRIES: Final = 100_000

_ALIAS: Final = re.compile(r"[A-Za-z0-9._-]+")

StrPath = str | os.PathLike[str]


class LibraryPathError(ValueError):
    """A ``--library-path`` cannot be used; the message names the path and why."""


def library_path_aliases(
    paths: Sequence[StrPath], *, max_entries: int = MAX_LIBRARY_ENTRIES
) -> frozenset[str]:
    """Return the shared library aliases that ``load_library_paths`` would load.

    Only the top level of each path is listed (no file is read), with the same
    rules as :func:`load_library_paths`; shard processes use it to reject a
    ``spec.libraries`` alias that shadows a shared one (metio/jaas
    ``ociLibraryAliasesFromPaths``).

    Args:
        paths: the ``--library-path`` directories, in command-line order.
        max_entries: cap on the top-level entries examined.

    Returns:
        The alias names.

    Raises:
        LibraryPathError: a path is missing, not a directory or unreadable, or
            has more than ``max_entries`` entries.
    """
    return frozenset(_alias_directories(paths, _Budget(0, max_entries)))


def load_library_paths(
    paths: Sequence[StrPath],
    *,
    max_bytes: int = MAX_LIBRARY_BYTES,
    max_entries: int = MAX_LIBRARY_ENTRIES,
) -> dict[str, dict[str, bytes]]:
    """Read the shared libraries below ``paths`` into memory (see the module docstring).

    Only the winning directory of each alias is walked: the files of an alias
    that a later path replaces are neither read nor counted against the caps.

    Args:
        paths: the ``--library-path`` directories, in command-line order; the
            right-most one wins for an alias that several hold.
        max_bytes: cap on the total size of the loaded files, bytes.
        max_entries: cap on the directory entries examined.

    Returns:
        ``{alias: {path relative to the alias directory, "/"-separated: content}}``,
        aliases and paths in sorted order.

    Raises:
        LibraryPathError: a path is missing, not a directory, or unreadable; a
            file or directory below it cannot be read; or a cap is exceeded.
    """
    budget = _Budget(max_bytes, max_entries)
    libraries: dict[str, dict[str, bytes]] = {}
    for alias, place in sorted(_alias_directories(paths, budget).items()):
        libraries[alias] = _load_alias(place, budget)
        if not libraries[alias]:
            logger.info("shared library %s (%s) holds no loadable file", alias, place.shown)
    return libraries


@dataclass(frozen=True)
class _Place:
    """A directory as the operator named it (``shown``) and its resolved location."""

    shown: str
    real: Path


class _Budget:
    """The caps of one load, shared by every path."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.bytes_left = max_bytes
        self.max_bytes = max_bytes
        self.entries_left = max_entries
        self.max_entries = max_entries

    def entry(self, shown: str) -> None:
        """Count one directory entry.

        Raises:
            LibraryPathError: more than ``max_entries`` entries.
        """
        self.entries_left -= 1
        if self.entries_left < 0:
            raise LibraryPathError(
                f"--library-path directories hold more than {self.max_entries} files and "
                f"directories (stopped at {shown}); point --library-path at directories that "
                "hold only Jsonnet libraries"
            )

    def read(self, path: Path, shown: str) -> bytes:
        """Read a regular file within the remaining byte budget.

        Raises:
            LibraryPathError: the file cannot be read or exceeds the budget.
        """
        try:
            with path.open("rb") as handle:
                content = handle.read(self.bytes_left + 1)
        except OSError as err:
            raise LibraryPathError(f"cannot read shared library file {shown}: {err}") from err
        if len(content) > self.bytes_left:
            raise LibraryPathError(
                f"shared library files below --library-path exceed {_size(self.max_bytes)} "
                f"(reading {shown}); point --library-path at directories that hold only "
                "Jsonnet libraries"
            )
        self.bytes_left -= len(content)
        return content


def _size(count: int) -> str:
    if count >= MiB and count % MiB == 0:
        return f"{count // MiB} MiB"
    return f"{count} bytes"


def _alias_directories(paths: Sequence[StrPath], budget: _Budget) -> dict[str, _Place]:
    """Map every alias to the directory that provides it; the right-most path wins."""
    aliases: dict[str, _Place] = {}
    for path in paths:
        shown = os.fspath(path)
        try:
            root = Path(path).resolve(strict=True)
        except OSError as err:
            raise LibraryPathError(f"--library-path {shown} does not exist: {err}") from err
        if not root.is_dir():
            raise LibraryPathError(f"--library-path {shown} is not a directory")
        for entry in _entries(root, shown):
            budget.entry(os.path.join(shown, entry.name))
            if entry.name.startswith("."):
                continue
            alias_shown = os.path.join(shown, entry.name)
            followed = _follow(entry, root, alias_shown)
            if followed is None or not stat.S_ISDIR(followed[1].st_mode):
                continue  # files beside the libraries are not libraries
            if followed[0] == root:
                logger.warning("skipping %s: the symlink loops back to %s", alias_shown, shown)
                continue
            if not _ALIAS.fullmatch(entry.name):
                logger.warning(
                    "skipping %s: a shared library alias must be one path segment of "
                    "[A-Za-z0-9._-]",
                    alias_shown,
                )
                continue
            if entry.name in aliases:
                logger.info(
                    "shared library %s: %s replaces %s",
                    entry.name,
                    alias_shown,
                    aliases[entry.name].shown,
                )
            aliases[entry.name] = _Place(alias_shown, followed[0])
    return aliases


def _load_alias(place: _Place, budget: _Budget) -> dict[str, bytes]:
    """Read the loadable files below one alias directory, keyed by relative path."""
    files: dict[str, bytes] = {}
    # (real directory, relative prefix, real directories from the alias root down).
    pending: list[tuple[Path, str, tuple[Path, ...]]] = [(place.real, "", (place.real,))]
    while pending:
        directory, prefix, ancestors = pending.pop()
        for entry in _entries(directory, os.path.join(place.shown, prefix)):
            relative = prefix + entry.name
            shown = os.path.join(place.shown, relative)
            budget.entry(shown)
            if entry.name.startswith("."):
                continue
            followed = _follow(entry, place.real, shown)
            if followed is None:
                continue
            real, status = followed
            if stat.S_ISDIR(status.st_mode):
                if real in ancestors:
                    logger.warning("skipping %s: the symlink loops back to %s", shown, real)
                    continue
                pending.append((real, relative + "/", (*ancestors, real)))
            elif stat.S_ISREG(status.st_mode) and entry.name.endswith(LIBRARY_EXTENSIONS):
                if safe_entry_name(relative) != relative:
                    logger.warning(
                        "skipping %s: shared library file paths may only use [A-Za-z0-9._/-]",
                        shown,
                    )
                    continue
                files[relative] = budget.read(real, shown)
    return dict(sorted(files.items()))


def _entries(directory: Path, shown: str) -> list[os.DirEntry[str]]:
    """List a directory, sorted by name (so warnings and errors are deterministic)."""
    try:
        with os.scandir(directory) as scan:
            return sorted(scan, key=lambda entry: entry.name)
    except OSError as err:
        raise LibraryPathError(f"cannot list {shown}: {err}") from err


def _follow(
    entry: os.DirEntry[str], boundary: Path, shown: str
) -> tuple[Path, os.stat_result] | None:
    """Return the real path and status of ``entry``, or None when it is not to be read.

    A symlink is followed only if its target exists and lies inside
    ``boundary`` (a resolved directory); otherwise it is skipped with a warning.
    """
    try:
        if not entry.is_symlink():
            return Path(entry.path), entry.stat(follow_symlinks=False)
        real = Path(os.path.realpath(entry.path, strict=True))
        if not real.is_relative_to(boundary):
            logger.warning(
                "skipping %s: the symlink leads outside %s, to %s", shown, boundary, real
            )
            return None
        return real, real.stat()
    except OSError as err:
        if entry.is_symlink():
            logger.warning("skipping %s: the symlink cannot be followed (%s)", shown, err)
            return None
        raise LibraryPathError(f"cannot inspect {shown}: {err}") from err
