"""Typed views of JsonnetSnippet and JsonnetLibrary specs, parsed from API objects.

Field names and defaults follow metio/jaas ``api/v1/jsonnetsnippet_types.go``;
the CRD (``deploy/crds``) already enforces most rules at admission, so parsing
re-checks only what a stale or hand-edited object could still get wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from jaas.api.constants import FLUX_SOURCE_API_VERSION, SOURCE_KIND_PLURALS
from jaas.api.reasons import Reason, ReasonError

DEFAULT_ENTRY_FILE = "main.jsonnet"
_ENTRY_FILE_PATTERN = re.compile(r"^[A-Za-z0-9._/-]+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

OutputMode = Literal["rendered", "source"]


@dataclass(frozen=True)
class JsonnetVariable:
    """A TLA or external variable: ``value`` is a string, or Jsonnet code when ``code``."""

    name: str
    value: str = ""
    code: bool = False


@dataclass(frozen=True)
class SourceRef:
    """``spec.sourceRef``: a Flux source whose ``status.artifact`` holds the Jsonnet.

    ``namespace`` is ``None`` when the reference defaults to the owner's
    namespace; ``path`` keeps one subtree of the artifact and strips its prefix.
    """

    kind: str
    name: str
    api_version: str = FLUX_SOURCE_API_VERSION
    namespace: str | None = None
    path: str = ""

    def namespace_or(self, default: str) -> str:
        """The referenced namespace, ``default`` (the owner's) when unset."""
        return self.namespace or default


@dataclass(frozen=True)
class LibraryRef:
    """``spec.libraries[*]``: a JsonnetLibrary the snippet may import as ``import_path``."""

    name: str
    kind: str = "JsonnetLibrary"
    namespace: str | None = None
    import_path: str | None = None

    @property
    def alias(self) -> str:
        """The import alias: ``importPath`` or the library's name."""
        return self.import_path or self.name


@dataclass(frozen=True)
class SnippetSpec:
    """The parsed ``spec`` of a JsonnetSnippet (``interval`` in seconds, ``None`` if unset)."""

    entry_file: str = DEFAULT_ENTRY_FILE
    files: Mapping[str, str] = field(default_factory=dict)
    source_ref: SourceRef | None = None
    libraries: tuple[LibraryRef, ...] = ()
    tlas: tuple[JsonnetVariable, ...] = ()
    external_variables: tuple[JsonnetVariable, ...] = ()
    output: OutputMode = "rendered"
    suspend: bool = False
    history: int = 1
    interval: float | None = None
    service_account_name: str | None = None


def parse_duration(text: str) -> float:
    """Parse a Go ``time.Duration`` string (``"90s"``, ``"1h30m"``, ``"1.5h"``) into seconds.

    Raises:
        ValueError: ``text`` is not a Go duration.
    """
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def format_duration(seconds: float) -> str:
    """Format seconds as Go's ``time.Duration.String`` does: ``5s``, ``1.5s``, ``1m30s``, ``250ms``.

    JaaS builds messages and flag defaults from Go durations, so ours read the same.
    """
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_decimal(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_decimal(ns, 1_000_000)}ms"
    hours, ns = divmod(ns, 3_600_000_000_000)
    minutes, ns = divmod(ns, 60_000_000_000)
    text = f"{_decimal(ns, 1_000_000_000)}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _decimal(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{str(fraction).zfill(digits).rstrip('0')}"


def _invalid(message: str) -> ReasonError:
    return ReasonError(Reason.INVALID_SPEC, message)


def _variables(items: Any, field_name: str) -> tuple[JsonnetVariable, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise _invalid(f"spec.{field_name} must be a list")
    out: list[JsonnetVariable] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise _invalid(f"spec.{field_name} entries need a string name")
        name = item["name"]
        if name in seen:
            raise _invalid(f"spec.{field_name} names {name!r} twice")
        seen.add(name)
        value = item.get("value", "")
        code = bool(item.get("code", False))
        if not isinstance(value, str):
            raise _invalid(f"spec.{field_name}[{name}].value must be a string")
        if code and not value:
            raise _invalid(f"spec.{field_name}[{name}]: value must be non-empty when code is true")
        out.append(JsonnetVariable(name=name, value=value, code=code))
    return tuple(out)


def parse_source_ref(raw: Any) -> SourceRef | None:
    """Parse a ``sourceRef`` object (of a snippet or a library); ``None`` when absent.

    Raises:
        ReasonError: ``InvalidSpec`` for an unknown kind or an empty name.
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise _invalid("spec.sourceRef must be an object")
    kind, name = raw.get("kind"), raw.get("name")
    if kind not in SOURCE_KIND_PLURALS:
        allowed = ", ".join(SOURCE_KIND_PLURALS)
        raise _invalid(f"spec.sourceRef.kind {kind!r} is not one of {allowed}")
    if not isinstance(name, str) or not name:
        raise _invalid("spec.sourceRef.name must be a non-empty string")
    path = str(raw.get("path") or "").strip("/")
    return SourceRef(
        kind=kind,
        name=name,
        api_version=str(raw.get("apiVersion") or FLUX_SOURCE_API_VERSION),
        namespace=raw.get("namespace") or None,
        path=path,
    )


def _libraries(raw: Any) -> tuple[LibraryRef, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _invalid("spec.libraries must be a list")
    out = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise _invalid("spec.libraries entries need a string name")
        out.append(
            LibraryRef(
                name=item["name"],
                kind=str(item.get("kind") or "JsonnetLibrary"),
                namespace=item.get("namespace") or None,
                import_path=item.get("importPath") or None,
            )
        )
    return tuple(out)


def parse_snippet_spec(spec: Mapping[str, Any]) -> SnippetSpec:
    """Parse a JsonnetSnippet ``spec`` (as returned by the API server) into a ``SnippetSpec``.

    Raises:
        ReasonError: with reason ``InvalidSpec`` when a rule the CRD also checks
            does not hold (exactly one of files/sourceRef, entryFile shape,
            variable shapes, output enum, history and interval bounds).
    """
    files_raw = spec.get("files") or {}
    if not isinstance(files_raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files_raw.items()
    ):
        raise _invalid("spec.files must map file names to strings")
    source_ref = parse_source_ref(spec.get("sourceRef"))
    if bool(files_raw) == (source_ref is not None):
        raise _invalid("exactly one of spec.files or spec.sourceRef must be set")
    entry_file = spec.get("entryFile") or DEFAULT_ENTRY_FILE
    if (
        not isinstance(entry_file, str)
        or len(entry_file) > 255
        or not _ENTRY_FILE_PATTERN.fullmatch(entry_file)
        or ".." in entry_file
    ):
        raise _invalid(f"spec.entryFile {entry_file!r} must match [A-Za-z0-9._/-]+ without '..'")
    raw_output = spec.get("output") or "rendered"
    if raw_output not in ("rendered", "source"):
        raise _invalid(f"spec.output {raw_output!r} must be rendered or source")
    output: OutputMode = "source" if raw_output == "source" else "rendered"
    history = spec.get("history", 1)
    if not isinstance(history, int) or not 1 <= history <= 50:
        raise _invalid(f"spec.history {history!r} must be between 1 and 50")
    interval: float | None = None
    if spec.get("interval"):
        try:
            interval = parse_duration(str(spec["interval"]))
        except ValueError as err:
            raise _invalid(f"spec.interval: {err}") from err
        if not 30 <= interval <= 86400:
            raise _invalid("interval must be between 30s and 24h")
    sa = spec.get("serviceAccountName") or None
    return SnippetSpec(
        entry_file=entry_file,
        files=dict(files_raw),
        source_ref=source_ref,
        libraries=_libraries(spec.get("libraries")),
        tlas=_variables(spec.get("tlas"), "tlas"),
        external_variables=_variables(spec.get("externalVariables"), "externalVariables"),
        output=output,
        suspend=bool(spec.get("suspend", False)),
        history=history,
        interval=interval,
        service_account_name=sa if isinstance(sa, str) else None,
    )
