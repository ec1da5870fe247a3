"""Benchmarks for nnflow (run them as scripts; see README.md)."""
