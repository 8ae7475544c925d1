"""The Jsonnet engines an evaluator process can run, behind one interface.

``--engine`` picks one for the whole operator (default:
``jaas.defaults.ENGINE``):

- ``jrsonnet``: jaas-jrsonnet, our own PyO3 binding of the Rust
  jrsonnet 0.5.0-pre98 (``native/``, built by ``make native``). It releases
  the GIL while it evaluates, runs on a thread with a large stack of its own
  and takes file contents as bytes (``importbin`` of binary files works).
- ``rjsonnet``: PyPI ``rjsonnet`` 0.5.6 (jrsonnet 0.5.0-pre95, 2023), the
  engine jaas-py started with: no GIL release, text-only imports, ten std
  functions fewer; called with ``gc=False`` and ``rjsonnet.gc()`` afterwards
  (fast repeated calls, flat memory).
- ``go-jsonnet``: PyPI ``gojsonnet`` 0.22, the reference's own engine, for
  users who need its exact behaviour.

Every engine resolves imports through
:class:`~jaas.evaluator.importer.InMemoryImporter` and returns JSON text that
the worker re-manifests in go-jsonnet's format, so outputs differ only where
the engines compute different values (``docs/engines.md``). Modules are
imported when an engine is first used: a missing one fails as
:class:`EngineUnavailable` naming what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, Protocol

from jaas.evaluator.importer import ImportResolutionError, InMemoryImporter


class EngineUnavailable(RuntimeError):
    """The engine's module cannot be imported (the message says what to install)."""


@dataclass(frozen=True)
class Inputs:
    """Everything an engine evaluates besides the files.

    Attributes:
        entry_path: the entry file's virtual path (``InMemoryImporter.entry_path``).
        tla_vars: top-level arguments given as strings.
        tla_codes: top-level arguments given as Jsonnet code.
        ext_vars: external variables given as strings.
        ext_codes: external variables given as Jsonnet code.
        max_stack: the call depth limit (go-jsonnet's ``--max-stack``).
    """

    entry_path: str
    tla_vars: Mapping[str, str]
    tla_codes: Mapping[str, str]
    ext_vars: Mapping[str, str]
    ext_codes: Mapping[str, str]
    max_stack: int

    def keywords(self) -> dict[str, Any]:
        """The variables and ``max_stack`` as the keyword arguments every engine's call takes."""
        return {
            "tla_vars": dict(self.tla_vars),
            "tla_codes": dict(self.tla_codes),
            "ext_vars": dict(self.ext_vars),
            "ext_codes": dict(self.ext_codes),
            "max_stack": self.max_stack,
        }


class Engine(Protocol):
    """One Jsonnet implementation."""

    name: str

    def version(self) -> str:
        """The engine and its version, e.g. ``jaas-jrsonnet 0.1.0 (jrsonnet 0.5.0-pre98)``."""
        ...

    def evaluate(self, inputs: Inputs, importer: InMemoryImporter) -> str:
        """Evaluate ``inputs.entry_path``; return the value as JSON text.

        Raises:
            RuntimeError: a Jsonnet error, its message as the engine wrote it
                (stack frames name virtual paths; ``importer.user_facing``
                rewrites them), or an import the importer refused.
            BaseException: the engine panicked (a Rust panic is a
                ``pyo3_runtime.PanicException``, a BaseException).
        """
        ...


def _load(module: str, install: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise EngineUnavailable(f"the Python module {module} is not installed: {install}") from err


class Jrsonnet:
    """jaas-jrsonnet (``native/``), our own binding of jrsonnet 0.5.0-pre98: the default.

    Four jrsonnet crates are patched (``native/vendor/README.md``): runtime
    errors name their ``file:line:col`` as go-jsonnet's do, ``function(a)
    a`` takes a TLA ``a``, and ``std.log2`` / ``std.log10`` round as
    go-jsonnet's.
    """

    name = "jrsonnet"

    def __init__(self) -> None:
        self._module = _load("jaas_jrsonnet", "run `make native` to build and install it")

    def version(self) -> str:
        """See :meth:`Engine.version`."""
        return str(self._module.version())

    def evaluate(self, inputs: Inputs, importer: InMemoryImporter) -> str:
        """See :meth:`Engine.evaluate`."""
        return str(
            self._module.evaluate_file(
                inputs.entry_path, import_callback=importer.resolve, **inputs.keywords()
            )
        )


class Rjsonnet:
    """PyPI rjsonnet 0.5.6."""

    name = "rjsonnet"

    def __init__(self) -> None:
        self._module = _load("rjsonnet", "pip install 'rjsonnet==0.5.6'")
        # rjsonnet's stub lacks the ``gc`` keyword and ``rjsonnet.gc()`` (both exist in 0.5.6).
        self._evaluate_file: Callable[..., str] = self._module.evaluate_file
        self._collect_garbage: Callable[[], None] = self._module.gc

    def version(self) -> str:
        """See :meth:`Engine.version`."""
        return "rjsonnet 0.5.6 (jrsonnet 0.5.0-pre95)"

    def evaluate(self, inputs: Inputs, importer: InMemoryImporter) -> str:
        """See :meth:`Engine.evaluate`."""
        try:
            return self._evaluate_file(
                inputs.entry_path, import_callback=importer, gc=False, **inputs.keywords()
            )
        finally:
            # gc=False skips rjsonnet's per-call collection; without this call every
            # evaluation would leak its cyclic garbage (thread-local to this thread).
            self._collect_garbage()


class GoJsonnet:
    """PyPI gojsonnet 0.22, go-jsonnet's own C binding."""

    name = "go-jsonnet"

    def __init__(self) -> None:
        self._module = _load("_gojsonnet", "pip install 'gojsonnet==0.22.0'")

    def version(self) -> str:
        """See :meth:`Engine.version`."""
        return f"go-jsonnet {self._module.version}"

    def evaluate(self, inputs: Inputs, importer: InMemoryImporter) -> str:
        """See :meth:`Engine.evaluate`.

        go-jsonnet's ``evaluate_file`` reads the entry file from disk, so the
        entry comes from the importer and goes in as a snippet of that name.
        The binding mangles an exception raised inside its import callback,
        so the importer's own error is kept aside and raised instead.
        """
        refused: list[ImportResolutionError] = []

        def callback(base_dir: str, rel: str) -> tuple[str, bytes]:
            try:
                return importer.resolve(base_dir, rel)
            except ImportResolutionError as err:
                refused.append(err)
                raise

        path, source = importer.resolve(".", inputs.entry_path)
        try:
            text: Any = self._module.evaluate_snippet(
                path,
                source.decode("utf-8", errors="replace"),
                import_callback=callback,
                **inputs.keywords(),
            )
        except Exception:
            if refused:
                raise RuntimeError(str(refused[0])) from None
            raise
        return str(text)


#: Engine name → its class; ``--engine`` takes these names.
ENGINES: Final[dict[str, Callable[[], Engine]]] = {
    Jrsonnet.name: Jrsonnet,
    Rjsonnet.name: Rjsonnet,
    GoJsonnet.name: GoJsonnet,
}


def load_engine(name: str) -> Engine:
    """Return a ready engine called ``name`` (one of :data:`ENGINES`).

    Raises:
        ValueError: an unknown name.
        EngineUnavailable: its module is not installed.
    """
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}") from None
    return factory()
