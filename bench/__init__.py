"""Benchmarks: each prints a table with its baseline measured in the same run (the ratio is the figure)."""
