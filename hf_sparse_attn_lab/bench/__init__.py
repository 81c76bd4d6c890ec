"""Benchmarks (scripts, not tests): every timing follows a correctness check."""
