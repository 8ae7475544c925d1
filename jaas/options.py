"""Operator settings: the ``jaas operator`` flags, their defaults and their parsing.

Flag names and defaults follow metio/jaas ``internal/cliflags`` where JaaS has
the same setting (``--evaluation-timeout 5s``, ``--max-stack 500``,
``--storage-port 8082``, ``--no-cross-namespace-refs`` true, ``--ext-var``);
the sharding and process flags are ours.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

from jaas import defaults
from jaas.api.models import parse_duration

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T)?i?B?$")
_FACTORS = {
    None: 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def parse_quantity(text: str) -> int:
    """Parse a byte quantity (``"2Gi"``, ``"512Mi"``, ``"1G"``, ``"1048576"``) into bytes.

    Raises:
        ValueError: not a quantity.
    """
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(f"invalid quantity {text!r} (e.g. 512Mi, 2Gi)")
    return int(float(m.group(1)) * _FACTORS[m.group(2)])


def parse_ext_vars(flags: list[str], environ: dict[str, str]) -> dict[str, str]:
    """Merge ``JAAS_EXT_VAR_<NAME>`` environment variables and ``--ext-var KEY=VALUE`` flags.

    Flags win on a conflict (metio/jaas ``internal/handler``).

    Raises:
        ValueError: a flag without ``=`` or with an empty key.
    """
    out = {
        k.removeprefix("JAAS_EXT_VAR_"): v
        for k, v in environ.items()
        if k.startswith("JAAS_EXT_VAR_") and k != "JAAS_EXT_VAR_"
    }
    for flag in flags:
        key, sep, value = flag.partition("=")
        if not sep or not key:
            raise ValueError(f"--ext-var {flag!r} must be KEY=VALUE")
        out[key] = value
    return out


@dataclass
class OperatorOptions:
    """Everything the leader and its shards need to know (durations in seconds, sizes in bytes).

    Field defaults come from ``jaas.defaults``; the CLI shows them from here.
    """

    storage_path: str
    storage_base_url: str
    kubeconfig: str | None = None
    shards: int = field(default_factory=lambda: os.cpu_count() or 1)
    evaluators: int = field(default_factory=lambda: os.cpu_count() or 1)
    evaluation_timeout: float = defaults.EVALUATION_TIMEOUT
    evaluation_memory_limit: int = defaults.EVALUATION_MEMORY_LIMIT
    max_stack: int = defaults.MAX_STACK
    engine: str = defaults.ENGINE
    #: Artifacts are fetched by Flux controllers in other pods, so listen on every interface.
    storage_listen_address: str = defaults.STORAGE_LISTEN_ADDRESS
    storage_port: int = defaults.STORAGE_PORT
    management_listen_address: str = defaults.MANAGEMENT_LISTEN_ADDRESS
    management_port: int = defaults.MANAGEMENT_PORT
    metrics_bind_address: str = defaults.METRICS_BIND_ADDRESS
    cache_path: str = field(
        default_factory=lambda: os.path.join(tempfile.gettempdir(), "jaas-cache")
    )
    cache_max_bytes: int = defaults.CACHE_MAX_BYTES
    render_cache: bool = True
    no_cross_namespace_refs: bool = defaults.NO_CROSS_NAMESPACE_REFS
    concurrent_reconciles: int = defaults.CONCURRENT_RECONCILES
    max_concurrent_downloads: int = defaults.MAX_CONCURRENT_DOWNLOADS
    download_connect_timeout: float = defaults.DOWNLOAD_CONNECT_TIMEOUT
    download_first_byte_timeout: float = defaults.DOWNLOAD_FIRST_BYTE_TIMEOUT
    download_idle_timeout: float = defaults.DOWNLOAD_IDLE_TIMEOUT
    download_min_rate: int = defaults.DOWNLOAD_MIN_RATE
    shard_heartbeat_timeout: float = defaults.SHARD_HEARTBEAT_TIMEOUT
    shard_memory_limit: int = defaults.SHARD_MEMORY_LIMIT
    leader_memory_limit: int = defaults.LEADER_MEMORY_LIMIT
    permanent_retry_interval: float = defaults.PERMANENT_RETRY_INTERVAL
    artifact_gc_grace: float = defaults.ARTIFACT_GC_GRACE
    storage_sweep_interval: float = defaults.STORAGE_SWEEP_INTERVAL
    max_artifact_bytes: int = defaults.MAX_ARTIFACT_BYTES
    max_withdraw_wait: float = defaults.MAX_WITHDRAW_WAIT
    rerender_rate: str = defaults.RERENDER_RATE
    rerender_burst: int = defaults.RERENDER_BURST
    default_service_account: str | None = None
    #: Serve and fetch artifacts on loopback addresses (tests only; never on by default).
    artifact_allow_loopback: bool = False
    watch_namespaces: list[str] = field(default_factory=list)
    label_selector: str = ""
    library_paths: list[str] = field(default_factory=list)
    ext_vars: dict[str, str] = field(default_factory=dict)
    log_level: str = "info"
    log_format: str = "json"
    shutdown_timeout: float = defaults.SHUTDOWN_TIMEOUT
    #: metio/jaas ``--tracing-*``; the ``OTEL_*`` environment configures the rest.
    tracing_endpoint: str = ""
    tracing_insecure: bool = False
    tracing_sample_ratio: float | None = None
    runtime_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable copy (the leader hands it to its shard processes)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> OperatorOptions:
        """Rebuild options from ``to_json`` output."""
        return cls(**doc)


def format_quantity(size: int) -> str:
    """Bytes as the shortest exact Kubernetes quantity: ``2Gi``, ``512Mi``, ``1000``."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        factor = _FACTORS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def duration_flag(text: str) -> float:
    """Parse a Go duration flag (``5s``, ``1m30s``) into seconds; ``0`` disables.

    Raises:
        ValueError: not a duration, or negative.
    """
    seconds = parse_duration(text)
    if seconds < 0:
        raise ValueError(f"duration {text!r} must not be negative")
    return seconds
