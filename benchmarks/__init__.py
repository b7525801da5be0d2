"""Benchmarks: scripts that measure and write docs/benchmarks.md (see run_all.py)."""
