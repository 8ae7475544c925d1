"""Logging, Prometheus metrics and OpenTelemetry tracing for every process."""
