"""Published artifacts: deterministic packaging, the local store and its HTTP server."""
