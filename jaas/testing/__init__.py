"""Test infrastructure shipped with the package: a real control plane and a Flux-style publisher."""
