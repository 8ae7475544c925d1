"""Watches and the per-snippet reconcile pipeline of a shard worker."""
