"""Benchmarks: speed targets and reference models live here, not in timed unit tests (see docs/benchmarks.md)."""
