"""Benchmarking: the timing runner (runner.py) and the report writers (report.py).

    from specdecode import Settings, SpeculativeDecoder
    from specdecode.bench import bench_report, run_benchmark
    dec = SpeculativeDecoder.from_settings(Settings(target=..., draft=..., k=5))
    report = bench_report(run_benchmark(dec, ["Explain speculative decoding."]))
    print(report["speedup"], report["acceptance_rate"])

What it does not: load models or prompts (api.py and data.py do).
"""

from __future__ import annotations

from .report import bench_report, compare_report
from .runner import BenchResult, Combo, SweepResult, run_benchmark, run_sweep

__all__ = ["BenchResult", "Combo", "SweepResult", "bench_report", "compare_report", "run_benchmark", "run_sweep"]
