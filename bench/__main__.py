"""Run the benchmarks: ``python -m bench [NAME ...] [--quick]`` (``make bench`` runs them all)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import platform
import time

import bench


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. kinetics")
    parser.add_argument("--quick", action="store_true", help="smaller problem sizes")
    args = parser.parse_args()
    modules = sorted(m.name for m in pkgutil.iter_modules(bench.__path__)
                     if m.name.startswith("bench_"))
    if args.names:
        modules = [m for m in modules if m.removeprefix("bench_") in args.names or m in args.names]
    import os

    print(f"# rptdose benchmarks — {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    for name in modules:
        print(f"\n## {name.removeprefix('bench_')}")
        t0 = time.perf_counter()
        importlib.import_module(f"bench.{name}").run(quick=args.quick)
        print(f"(benchmark wall time {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
