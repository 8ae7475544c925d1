"""Ready condition reasons (wire-stable) and the error type that carries one.

The reason strings are those of metio/jaas ``internal/operator/conditions.go``;
a user moving between JaaS and jaas-py sees the same values.
"""

from enum import StrEnum


class Reason(StrEnum):
    """A ``Ready`` condition reason of a JsonnetSnippet."""

    SYNCED = "Synced"
    PENDING = "Pending"
    SUSPENDED = "Suspended"
    INVALID_SPEC = "InvalidSpec"
    LIBRARY_NOT_FOUND = "LibraryNotFound"
    CROSS_NAMESPACE_REF_REJECTED = "CrossNamespaceRefRejected"
    EXTERNAL_VARIABLE_CONFLICT = "ExternalVariableConflict"
    SERVICE_ACCOUNT_MISSING = "ServiceAccountMissing"
    EVALUATION_FAILED = "EvaluationFailed"
    EVALUATION_TIMEOUT = "EvaluationTimeout"
    SOURCE_NOT_READY = "SourceNotReady"
    SOURCE_FETCH_FAILED = "SourceFetchFailed"
    SOURCE_REF_NOT_YET_SUPPORTED = "SourceRefNotYetSupported"
    DEPENDENCY_CYCLE = "DependencyCycle"
    ARTIFACT_TOO_LARGE = "ArtifactTooLarge"
    RBAC_DENIED = "RBACDenied"


class ReasonError(Exception):
    """A reconcile failure that becomes ``Ready=False`` with ``reason`` and ``message``.

    ``transient`` failures (network errors, a source that is not ready yet) are
    retried with exponential backoff; the others are re-checked at a fixed
    interval (JaaS: one minute), as metio/jaas ``internal/operator/reconciler.go``
    does.
    """

    def __init__(self, reason: Reason, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient

    def __repr__(self) -> str:
        return f"ReasonError({self.reason.value}, {self.message!r}, transient={self.transient})"
