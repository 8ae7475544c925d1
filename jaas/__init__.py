"""jaas-py: Jsonnet-as-a-Service for Kubernetes.

Renders `JsonnetSnippet` objects (API group ``jaas.metio.wtf/v1``) with rjsonnet
and publishes the result as Flux ``ExternalArtifact`` objects, reconciling in
shard worker processes chosen by namespace hash. API-compatible with the Go
reference implementation, JaaS (github.com/metio/jaas).
"""

__version__ = "0.1.0"
