"""``experiments.benchmarks.bench_cpu_threads``: each case runs in its own (optionally pinned) process and reports
a finite, positive GFLOP/s (no timing assertion: the benchmark's result is the ratio it prints)."""

from __future__ import annotations

import os

import numpy as np

from experiments.benchmarks import bench_cpu_threads


def test_each_case_reports_positive_gflops_from_its_own_pinned_process():
    core = sorted(os.sched_getaffinity(0))[:1]
    (pinned,) = bench_cpu_threads._run([("matmul", core)], repeats=1)
    assert np.isfinite(pinned) and pinned > 0
