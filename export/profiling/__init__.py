"""Profiling: FLOPs by the IVTP paper's convention, latency of engines against PyTorch, benchmarks and plots."""
