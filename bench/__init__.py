"""Benchmarks: `python -m bench.warehouse_bench` (see its docstring)."""
