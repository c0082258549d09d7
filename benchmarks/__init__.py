"""Benchmarks: scripts that measure, not tests (timings on shared machines go here and into BENCHMARKS*.md, never
into pass/fail tests). Run from the repository root as `python -m benchmarks.<name> --help`."""
