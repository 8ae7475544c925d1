"""jrsonnet (Jsonnet in Rust) for jaas-py; see native/README.md."""

from collections.abc import Callable

#: Stack size in bytes of the thread each evaluation runs on.
STACK_SIZE: int
#: The jrsonnet release the module is built with.
JRSONNET_VERSION: str

class JsonnetError(RuntimeError):
    """A Jsonnet error: the error text, then one indented ``path:line:col`` line per frame."""

def evaluate_file(
    path: str,
    *,
    import_callback: Callable[[str, str], tuple[str, bytes | str]],
    tla_vars: dict[str, str] | None = None,
    tla_codes: dict[str, str] | None = None,
    ext_vars: dict[str, str] | None = None,
    ext_codes: dict[str, str] | None = None,
    max_stack: int = 500,
) -> str:
    """Evaluate ``path`` (loaded as ``import_callback(".", path)``) and return its JSON text."""

def version() -> str:
    """``jaas-jrsonnet <version> (jrsonnet <version>)``."""
