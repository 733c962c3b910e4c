"""Benchmark grids: scheme x task x attack x strength x seed, with an HTML/Markdown report.

    from pixmark.bench import run_bench
    report = run_bench("benchmarks/smoke.yaml", "runs/smoke", workers=2)

See :mod:`pixmark.bench.runner` (the grid, caching and resuming) and
:mod:`pixmark.bench.report` (tables, plots, image grids, detection at a fixed FPR).
"""

from pixmark.bench.report import write_bench_report
from pixmark.bench.runner import load_config, read_rows, run_bench

__all__ = ["load_config", "read_rows", "run_bench", "write_bench_report"]
