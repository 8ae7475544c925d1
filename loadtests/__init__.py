"""Load tests and benchmarks: they print figures and never assert durations."""
