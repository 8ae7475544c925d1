"""Flux source artifacts: download, digest check, safe extraction, shared cache."""
