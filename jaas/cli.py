"""The ``jaas`` command line: ``jaas operator``, ``jaas render`` (and the internal ``jaas shard``).

Exit codes follow metio/jaas: 0 ok, 1 runtime failure, 2 flag misuse.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from jaas import __version__, defaults
from jaas.api.models import format_duration
from jaas.evaluator.engines import ENGINES
from jaas.operator.ratelimit import parse_rate
from jaas.options import (
    OperatorOptions,
    duration_flag,
    format_quantity,
    parse_ext_vars,
    parse_quantity,
)
from jaas.render import add_render_parser
from jaas.render import main_from_args as render_main


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


def _namespaces(text: str) -> list[str]:
    return [ns.strip() for ns in text.split(",") if ns.strip()]


def _rate(text: str) -> str:
    parse_rate(text)
    return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``jaas`` subcommand."""
    parser = argparse.ArgumentParser(
        prog="jaas", description="Jsonnet-as-a-Service for Kubernetes (jaas-py)."
    )
    parser.add_argument("--version", action="version", version=f"jaas-py {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    op = sub.add_parser(
        "operator",
        help="reconcile JsonnetSnippets into Flux ExternalArtifacts",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Every default is the OperatorOptions default, shown in the flag's own syntax.
    d = OperatorOptions(storage_path="", storage_base_url="")
    op.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig path; unset: $KUBECONFIG, then in-cluster, then ~/.kube/config",
    )
    op.add_argument("--shards", type=_positive_int, default=d.shards, help="shard worker processes")
    op.add_argument(
        "--evaluators",
        type=_positive_int,
        default=d.evaluators,
        help="evaluator processes in the pool",
    )
    op.add_argument(
        "--evaluation-timeout",
        type=duration_flag,
        default=format_duration(d.evaluation_timeout),
        help=f"CPU time one evaluation may use (and {defaults.EVALUATION_WALL_CLOCK_FACTOR}x as "
        "much wall-clock time); the evaluator is killed at it",
    )
    op.add_argument(
        "--evaluation-memory-limit",
        type=parse_quantity,
        default=format_quantity(d.evaluation_memory_limit),
        help="address-space limit (RLIMIT_AS) of an evaluator process; 0 disables",
    )
    op.add_argument("--max-stack", type=int, default=d.max_stack, help="Jsonnet call depth limit")
    op.add_argument(
        "--engine",
        choices=sorted(ENGINES),
        default=d.engine,
        help="Jsonnet engine of the evaluator processes (docs/engines.md)",
    )
    op.add_argument(
        "--library-path",
        dest="library_paths",
        action="append",
        default=[],
        metavar="DIR",
        help="directory whose subdirectories are shared libraries, imported by their names "
        "(repeatable; the right-most wins for a name in several)",
    )
    op.add_argument(
        "--storage-path", required=True, help="directory where published artifacts are stored"
    )
    op.add_argument(
        "--storage-base-url",
        required=True,
        help="URL under which --storage-path is served, e.g. http://jaas-storage.jaas.svc:8082",
    )
    op.add_argument(
        "--storage-listen-address",
        default=d.storage_listen_address,
        help="address of the artifact server",
    )
    op.add_argument(
        "--storage-port", type=int, default=d.storage_port, help="port of the artifact server"
    )
    op.add_argument(
        "--management-listen-address",
        default=d.management_listen_address,
        help="address of the health server",
    )
    op.add_argument(
        "--management-port", type=int, default=d.management_port, help="/live, /ready and /start"
    )
    op.add_argument(
        "--metrics-bind-address",
        default=d.metrics_bind_address,
        help="host:port of /metrics; 0 disables",
    )
    op.add_argument(
        "--cache-path",
        default=d.cache_path,
        help="content-addressed cache of fetched source artifacts, file trees and renders "
        "(shared by every process of the operator)",
    )
    op.add_argument(
        "--cache-max-bytes",
        type=parse_quantity,
        default=format_quantity(d.cache_max_bytes),
        help="size bound of the artifact cache (LRU)",
    )
    op.add_argument(
        "--render-cache",
        type=_bool,
        default=d.render_cache,
        help="reuse the render of unchanged inputs instead of evaluating again",
    )
    op.add_argument(
        "--artifact-gc-grace",
        type=duration_flag,
        default=format_duration(d.artifact_gc_grace),
        help="how long a revision outside spec.history stays downloadable after being superseded",
    )
    op.add_argument(
        "--max-artifact-bytes",
        type=parse_quantity,
        default=format_quantity(d.max_artifact_bytes),
        help="cap on a published artifact's content (ArtifactTooLarge above it); 0 disables",
    )
    op.add_argument(
        "--storage-sweep-interval",
        type=duration_flag,
        default=format_duration(d.storage_sweep_interval),
        help="how often abandoned temporary files are removed from --storage-path; 0 disables",
    )
    op.add_argument(
        "--artifact-allow-loopback",
        type=_bool,
        nargs="?",
        const=True,
        default=d.artifact_allow_loopback,
        help="let artifact URLs point at loopback addresses (for tests on one machine)",
    )
    op.add_argument(
        "--default-service-account",
        default=d.default_service_account,
        help="ServiceAccount a snippet acts as when it names none (unset: it must name one)",
    )
    op.add_argument(
        "--no-cross-namespace-refs",
        type=_bool,
        default=d.no_cross_namespace_refs,
        help="reject sourceRefs and libraries in other namespaces",
    )
    op.add_argument(
        "--watch-namespaces",
        type=_namespaces,
        default=_namespaces(os.environ.get("JAAS_WATCH_NAMESPACES", "")),
        help="comma-separated namespaces to watch (default $JAAS_WATCH_NAMESPACES; "
        "empty: the whole cluster)",
    )
    op.add_argument(
        "--label-selector",
        default=d.label_selector,
        help="reconcile only snippets (and see only libraries) matching this label selector",
    )
    op.add_argument(
        "--concurrent-reconciles",
        type=_positive_int,
        default=d.concurrent_reconciles,
        help="snippets reconciled at once per shard",
    )
    op.add_argument(
        "--max-concurrent-downloads",
        type=_positive_int,
        default=d.max_concurrent_downloads,
        help="artifact downloads per shard at once; one namespace holds all but one at most",
    )
    op.add_argument(
        "--download-connect-timeout",
        type=duration_flag,
        default=format_duration(d.download_connect_timeout),
        help="longest wait to connect to an artifact server",
    )
    op.add_argument(
        "--download-first-byte-timeout",
        type=duration_flag,
        default=format_duration(d.download_first_byte_timeout),
        help="longest wait from an artifact request to the response headers",
    )
    op.add_argument(
        "--download-idle-timeout",
        type=duration_flag,
        default=format_duration(d.download_idle_timeout),
        help="longest pause between two reads of an artifact body",
    )
    op.add_argument(
        "--download-min-rate",
        type=parse_quantity,
        default=format_quantity(d.download_min_rate),
        help="bytes per second an artifact body must average after its first "
        f"{format_duration(defaults.DOWNLOAD_MIN_RATE_GRACE)}; 0 disables",
    )
    op.add_argument(
        "--shard-heartbeat-timeout",
        type=duration_flag,
        default=format_duration(d.shard_heartbeat_timeout),
        help="a ready shard whose event loop sends no heartbeat this long is restarted",
    )
    op.add_argument(
        "--shard-memory-limit",
        type=parse_quantity,
        default=format_quantity(d.shard_memory_limit),
        help="a shard whose resident memory passes this is restarted; 0 disables",
    )
    op.add_argument(
        "--leader-memory-limit",
        type=parse_quantity,
        default=format_quantity(d.leader_memory_limit),
        help="a leader whose resident memory passes this shuts down and exits 1 "
        "to be restarted; 0 disables",
    )
    op.add_argument(
        "--permanent-retry-interval",
        type=duration_flag,
        default=format_duration(d.permanent_retry_interval),
        help="how often a snippet with a permanent failure (RBACDenied, InvalidSpec, ...) "
        "is checked again",
    )
    op.add_argument(
        "--rerender-rate",
        type=_rate,
        default=d.rerender_rate,
        help="per-snippet re-render rate limit, N/period (s, min, hour); 0/s disables",
    )
    op.add_argument(
        "--rerender-burst",
        type=_positive_int,
        default=d.rerender_burst,
        help="per-snippet re-render burst",
    )
    op.add_argument(
        "--max-withdraw-wait",
        type=duration_flag,
        default=format_duration(d.max_withdraw_wait),
        help="how long a deleted snippet retries withdrawing its ExternalArtifact",
    )
    op.add_argument(
        "--ext-var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="operator-wide external variable (repeatable; also JAAS_EXT_VAR_<KEY>)",
    )
    op.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default=d.log_level
    )
    op.add_argument("--log-format", choices=["json", "text"], default=d.log_format)
    op.add_argument(
        "--shutdown-timeout",
        type=duration_flag,
        default=format_duration(d.shutdown_timeout),
        help="after SIGTERM, how long in-flight reconciles may take to finish",
    )
    op.add_argument(
        "--tracing-endpoint",
        default=d.tracing_endpoint,
        metavar="HOST:PORT",
        help="OTLP/gRPC collector for traces; '' leaves tracing to the OTEL_* environment "
        "(off unless OTEL_EXPORTER_OTLP_ENDPOINT is set)",
    )
    op.add_argument(
        "--tracing-insecure",
        type=_bool,
        default=d.tracing_insecure,
        help="plaintext gRPC to --tracing-endpoint instead of TLS",
    )
    op.add_argument(
        "--tracing-sample-ratio",
        type=_ratio,
        default=d.tracing_sample_ratio,
        help="fraction of reconciles traced, 0..1 (unset: OTEL_TRACES_SAMPLER, else all)",
    )
    op.add_argument(
        "--runtime-dir",
        default=d.runtime_dir,
        help="directory for the control socket and metrics files; unset: a new temp dir",
    )

    add_render_parser(sub)

    shard = sub.add_parser("shard", help=argparse.SUPPRESS)
    shard.add_argument("--shard-name", required=True)
    shard.add_argument("--members", required=True)
    shard.add_argument("--leader-socket", required=True)
    shard.add_argument("--options", required=True)
    shard.add_argument("--evaluator-fingerprint", default="")
    return parser


def _operator(args: argparse.Namespace) -> int:
    try:
        ext_vars = parse_ext_vars(args.ext_var, dict(os.environ))
    except ValueError as err:
        print(f"jaas: {err}", file=sys.stderr)
        return 2
    # Every operator flag is named after its OperatorOptions field.
    flags = {
        f.name: getattr(args, f.name) for f in fields(OperatorOptions) if hasattr(args, f.name)
    }
    options = OperatorOptions(**{**flags, "ext_vars": ext_vars})
    runtime = Path(options.runtime_dir or tempfile.mkdtemp(prefix="jaas-operator-"))
    # Must precede the first import of prometheus_client (see jaas.observability.multiproc).
    from jaas.observability import multiproc

    multiproc.enable(runtime / "metrics")
    from jaas.observability import logging as jaas_logging

    jaas_logging.setup("leader", level=options.log_level, fmt=options.log_format)
    from jaas.observability import tracing

    # Into the environment every child process inherits, before there is one.
    tracing.apply_tracing_flags(
        options.tracing_endpoint,
        insecure=options.tracing_insecure,
        sample_ratio=options.tracing_sample_ratio,
    )
    from jaas.shards import leader

    return leader.main(options, runtime)


def _shard(args: argparse.Namespace) -> int:
    from jaas.shards import worker

    options = OperatorOptions.from_json(json.loads(args.options))
    members = [m for m in args.members.split(",") if m]
    return worker.main(
        options,
        args.shard_name,
        members,
        Path(args.leader_socket),
        evaluator_fingerprint=args.evaluator_fingerprint,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaas`` command line; return the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "operator":
        return _operator(args)
    if args.command == "shard":
        return _shard(args)
    if args.command == "render":
        return render_main(args)
    return 2
