"""Benchmark, profiling, kernel labs and acceptance studies: developer tools, not part of the engine."""
