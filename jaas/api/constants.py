"""Wire-stable names of the JaaS v1 API and of the Flux source API it consumes.

Source: metio/jaas ``api/v1/*.go`` and fluxcd/source-controller ``api/v1``.
"""

from typing import Final

GROUP: Final = "jaas.metio.wtf"
VERSION: Final = "v1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
SNIPPET_KIND: Final = "JsonnetSnippet"
SNIPPET_PLURAL: Final = "jsonnetsnippets"
LIBRARY_KIND: Final = "JsonnetLibrary"
LIBRARY_PLURAL: Final = "jsonnetlibraries"

#: Finalizer JaaS puts on every managed snippet (``jaas.metio.wtf/finalizer``).
FINALIZER: Final = f"{GROUP}/finalizer"
#: Flux's "reconcile now" annotation; its value is copied to ``status.lastHandledReconcileAt``.
REQUESTED_AT_ANNOTATION: Final = "reconcile.fluxcd.io/requestedAt"

FLUX_SOURCE_GROUP: Final = "source.toolkit.fluxcd.io"
FLUX_SOURCE_VERSION: Final = "v1"
FLUX_SOURCE_API_VERSION: Final = f"{FLUX_SOURCE_GROUP}/{FLUX_SOURCE_VERSION}"
EXTERNAL_ARTIFACT_KIND: Final = "ExternalArtifact"
EXTERNAL_ARTIFACT_PLURAL: Final = "externalartifacts"

#: Flux source kinds a ``spec.sourceRef`` may name, with their resource plurals.
SOURCE_KIND_PLURALS: Final[dict[str, str]] = {
    "GitRepository": "gitrepositories",
    "OCIRepository": "ocirepositories",
    "Bucket": "buckets",
    EXTERNAL_ARTIFACT_KIND: EXTERNAL_ARTIFACT_PLURAL,
}

#: Condition type JaaS owns on snippets and ExternalArtifacts.
READY: Final = "Ready"
#: Reason JaaS writes on its ExternalArtifacts' Ready=True condition.
EXTERNAL_ARTIFACT_READY_REASON: Final = "Succeeded"
