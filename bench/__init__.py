"""Benchmarks: each ``bench_*.py`` module has ``run(quick: bool) -> None`` that prints figures
and ratios against a baseline measured in the same process. Nothing here passes or fails on time."""
