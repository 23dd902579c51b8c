"""Benchmarks and profiling: side-by-side timings, FLOPs and % of peak, as JSON in results/."""
