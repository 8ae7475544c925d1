"""Every default of ``jaas operator``, defined once (seconds, bytes, counts).

``jaas.options.OperatorOptions`` takes its field defaults from here and the
CLI prints them from the options, so a flag's default, the options object
and the modules that use the value can never disagree. Where JaaS (metio/jaas
``internal/cliflags``) has the same setting the value is JaaS's.
"""

from typing import Final

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

# --- evaluation -----------------------------------------------------------------------
#: ``--evaluation-timeout`` (JaaS: 5s, wall clock): CPU seconds an evaluation may
#: use; the evaluator process is killed at it.
EVALUATION_TIMEOUT: Final = 5.0
#: An evaluation is also killed after this many times ``--evaluation-timeout`` of
#: wall-clock time (a program that blocks, or an evaluator starved of CPU).
EVALUATION_WALL_CLOCK_FACTOR: Final = 4
#: ``--evaluation-memory-limit``: RLIMIT_AS of one evaluator process. RLIMIT_AS
#: counts virtual memory: about 100 MiB for the interpreter and rjsonnet, the
#: 256 MiB evaluation-thread stack (reserved, mostly untouched), and the
#: evaluation's heap. 2 GiB leaves about 1.6 GiB of heap: kube-prometheus peaks
#: at 190-320 MB RSS and the worst measured workload (google bench.02) at
#: 640 MB, while a runaway evaluation is stopped long before it can starve a
#: node. Lower it (and the pool size) to fit tight pod memory limits.
EVALUATION_MEMORY_LIMIT: Final = 2 * GiB
#: ``--max-stack`` (JaaS: 500): Jsonnet call depth limit.
MAX_STACK: Final = 500
#: Requests that may wait for a free evaluator, over all namespaces and per
#: namespace; beyond either the pool answers "busy" and the shard requeues the
#: snippet after ``EVALUATOR_BUSY_REQUEUE`` seconds instead of queueing it.
EVALUATION_QUEUE_LIMIT: Final = 256
EVALUATION_QUEUE_LIMIT_PER_NAMESPACE: Final = 16
EVALUATOR_BUSY_REQUEUE: Final = 1.0
#: ``--engine``: the Jsonnet engine of every evaluator process
#: (``jaas.evaluator.engines``).
ENGINE: Final = "jrsonnet"

# --- servers --------------------------------------------------------------------------
STORAGE_LISTEN_ADDRESS: Final = "0.0.0.0"
STORAGE_PORT: Final = 8082
MANAGEMENT_LISTEN_ADDRESS: Final = "127.0.0.1"
MANAGEMENT_PORT: Final = 8081
METRICS_BIND_ADDRESS: Final = ":8083"

# --- sources and storage --------------------------------------------------------------
#: ``--cache-max-bytes``: size bound of the pod's artifact cache (compressed bytes).
CACHE_MAX_BYTES: Final = 1 * GiB
#: ``--artifact-gc-grace`` (JaaS: 5m): how long a superseded revision stays served.
ARTIFACT_GC_GRACE: Final = 300.0
#: ``--storage-sweep-interval`` (JaaS: 10m).
STORAGE_SWEEP_INTERVAL: Final = 600.0
# --- artifact downloads (JaaS internal/sources: 4 at once, 64 MiB, 30 s connect, 300 s) ---
#: ``--max-concurrent-downloads``: artifact downloads one shard runs at once; one
#: namespace holds at most all but one of them.
MAX_CONCURRENT_DOWNLOADS: Final = 4
#: Cap on a downloaded (compressed) artifact.
MAX_DOWNLOAD_BYTES: Final = 64 * MiB
#: Whole attempt, connect to last byte (JaaS's only read bound).
DOWNLOAD_TIMEOUT: Final = 300.0
#: ``--download-connect-timeout`` (JaaS: 30s). A Service in the cluster connects in ms.
DOWNLOAD_CONNECT_TIMEOUT: Final = 10.0
#: ``--download-first-byte-timeout``: request sent to response headers (keep it
#: at most the idle timeout, which bounds every read, the headers' included).
DOWNLOAD_FIRST_BYTE_TIMEOUT: Final = 15.0
#: ``--download-idle-timeout``: longest pause between two reads of the body.
DOWNLOAD_IDLE_TIMEOUT: Final = 20.0
#: ``--download-min-rate`` (bytes/s): the body's average rate once
#: ``DOWNLOAD_MIN_RATE_GRACE`` seconds of it have passed; 0 disables. A
#: source-controller behind a Service serves hundreds of MiB/s.
DOWNLOAD_MIN_RATE: Final = 64 * KiB
DOWNLOAD_MIN_RATE_GRACE: Final = 5.0
#: Tries of a transient download failure, and the nominal wait before the second.
DOWNLOAD_ATTEMPTS: Final = 3
DOWNLOAD_RETRY_BACKOFF: Final = 0.5
#: Longest wait (seconds) for another source's in-flight download of the same
#: digest before downloading from one's own URL: a fill shared by digest is
#: shared only while it is quick and only if it succeeds.
SHARED_DOWNLOAD_WAIT: Final = 5.0
#: ``--max-artifact-bytes`` (JaaS: 0, off): cap on a published artifact's content.
MAX_ARTIFACT_BYTES: Final = 0

# --- reconciling ----------------------------------------------------------------------
#: ``--concurrent-reconciles``: snippets one shard reconciles at once.
CONCURRENT_RECONCILES: Final = 8
#: ``--permanent-retry-interval`` (JaaS: one minute, fixed): re-check of a permanent failure.
PERMANENT_RETRY_INTERVAL: Final = 60.0
#: First and longest delay of the per-snippet backoff after transient failures
#: (client-go's item exponential limiter: 5 ms to 1000 s; ours starts at 1 s).
RETRY_BACKOFF_INITIAL: Final = 1.0
RETRY_BACKOFF_MAX: Final = 960.0
#: ``--rerender-rate`` (JaaS: 60/min) and ``--rerender-burst`` (JaaS: 120).
RERENDER_RATE: Final = "60/min"
RERENDER_BURST: Final = 120
#: ``--max-withdraw-wait`` (JaaS: 1h): how long a deletion retries withdrawing.
MAX_WITHDRAW_WAIT: Final = 3600.0
#: ``--no-cross-namespace-refs`` (JaaS: true).
NO_CROSS_NAMESPACE_REFS: Final = True

# --- shard liveness -----------------------------------------------------------------
#: How often a shard's event loop reports its heartbeat and progress to the leader.
SHARD_HEARTBEAT_INTERVAL: Final = 2.0
#: ``--shard-heartbeat-timeout``: a ready shard silent this long is wedged and restarted.
SHARD_HEARTBEAT_TIMEOUT: Final = 30.0
#: ``--shard-memory-limit``: a shard whose resident memory passes this is
#: restarted (it holds ~85 MiB, ~120 MiB with 2,000 snippets, plus the sources
#: of its reconciles in flight, each at most 64 MiB extracted).
SHARD_MEMORY_LIMIT: Final = 2 * GiB
#: ``--leader-memory-limit``: a leader whose resident memory passes this shuts
#: down gracefully and exits 1 for its supervisor (the kubelet) to restart it.
#: It holds ~42 MiB whatever the render size, plus the requests and results of
#: the evaluations in flight (each at most 64 MiB of sources and the 16 MiB
#: output cap).
LEADER_MEMORY_LIMIT: Final = 1 * GiB
#: A reconcile running this long means a wedged shard (every stage has its own,
#: far shorter bound: downloads 300 s, evaluations the evaluation timeout).
SHARD_STUCK_RECONCILE: Final = 900.0

# --- shutdown and observability -------------------------------------------------------
#: ``--shutdown-timeout``: after SIGTERM, how long in-flight reconciles may take to
#: finish before they are cancelled (controller-runtime's graceful shutdown
#: timeout; metio/jaas gives its manager 25 s).
SHUTDOWN_TIMEOUT: Final = 25.0

# --- tenant identity (JaaS internal/operator/token.go) --------------------------------
#: Lifetime requested for tenant ServiceAccount tokens.
TOKEN_TTL: Final = 3600.0
#: Tokens are renewed this long before they expire (at most a third of their life).
TOKEN_REFRESH_MARGIN: Final = 300.0
#: Longest wait for one TokenRequest.
TOKEN_MINT_TIMEOUT: Final = 30.0
