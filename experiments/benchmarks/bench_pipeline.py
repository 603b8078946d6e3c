"""Input-pipeline speed: building the TFDS dataset and feeding batches, side by side in one run.

Run from the repository root::

    python -m experiments.benchmarks.bench_pipeline [--data-dir DIR] [--seconds 2] [--batch-sizes 1 8 32]

Measures, in this process and on this machine:

* ``import seqcsist_jax`` and ``import tensorflow_datasets`` (fresh subprocesses, median of 5);
* building ``seqcsist/default`` (100,000 frames) and ``seqcsist/mini`` from scratch (the issue asks < 2 min for
  ``default`` on 2 cores);
* :class:`~seqcsist_jax.data.pipeline.TrajectoryLoader` throughput in frames/s (frames, 33×33 labels, targets,
  shuffled) over the ``default`` train split read through ``tfds.data_source`` (Parquet, no TensorFlow) and
  from memory, for several batch sizes, against a naive reference (one ``source[i]`` per trajectory, labels
  frame by frame, as a PyTorch ``Dataset.__getitem__`` would) and, when TensorFlow is installed, against
  ``tfds.load`` + ``tfds.as_numpy`` decoding the same examples without labels;
* the target of the issue: > 20,000 frames/s.

Writes ``bench_pipeline.{json,md}`` into ``--out`` (default ``experiments/benchmarks/results/``).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from experiments.arg_parser import ArgumentParser

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[2]
TARGET_FPS = 20_000
FRAMES = 20


def import_seconds(module: str, repeats: int = 5) -> float:
    """Median wall time of ``import module`` in a fresh interpreter."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def build_seconds(name: str, data_dir: str) -> float:
    import tensorflow_datasets as tfds

    import seqcsist_jax  # noqa: F401

    builder = tfds.builder(name, data_dir=data_dir)
    t = time.perf_counter()
    builder.download_and_prepare()
    return time.perf_counter() - t


def frames_per_second(make_iter, seconds: float, batch_trajectories: int) -> float:
    """Frames/s of an iterator factory, run for at least ``seconds`` (after one warm-up batch)."""
    it = make_iter()
    next(it)
    count, t0 = 0, time.perf_counter()
    while True:
        try:
            next(it)
        except StopIteration:
            it = make_iter()
            continue
        count += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and count >= 3:
            return count * batch_trajectories * FRAMES / elapsed


def naive_iter(source, batch_size: int, seed: int):
    """Reference loader: one example at a time, labels frame by frame."""
    from seqcsist_jax import imaging

    order = np.random.default_rng(seed).permutation(len(source))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        frames, labels, targets = [], [], []
        for i in order[start:start + batch_size]:
            ex = source[int(i)]
            frames.append(np.asarray(ex["frames"], np.float32))
            targets.append(np.asarray(ex["targets"], np.float32))
            labels.append(np.stack([imaging.targets_to_grid(t).astype(np.float32) for t in ex["targets"]]))
        yield {"frames": np.stack(frames), "labels": np.stack(labels), "targets": np.stack(targets)}


def tf_iter(name: str, data_dir: str, batch_size: int, seed: int):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    ds = tfds.load(name, split="train", data_dir=data_dir, download=False)
    ds = ds.shuffle(4096, seed=seed).batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: a fresh temporary folder)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per throughput entry")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32],
                        help="loader batch sizes to measure, in trajectories of 20 frames, space-separated "
                             "(default: 1 8 32)")
    parser.add_argument("--no-tf", action="store_true", help="skip the tfds.load comparison")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder (created if missing) for bench_pipeline.json and .md "
                             "(default: experiments/benchmarks/results, the README's numbers)")
    args = parser.parse_args(argv)

    results: dict = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "note": "shared machine; numbers are noisy"},
    }
    print("imports (median of 5 fresh interpreters):")
    results["import_s"] = {m: import_seconds(m) for m in ("seqcsist_jax", "tensorflow_datasets")}
    for m, s in results["import_s"].items():
        print(f"  import {m:<20} {s * 1e3:8.1f} ms")

    tmp = tempfile.TemporaryDirectory(prefix="bench_pipeline_")
    data_dir = args.data_dir or tmp.name
    print(f"building into {data_dir}:")
    results["build_s"] = {}
    for name in ("seqcsist/mini", "seqcsist/default"):
        results["build_s"][name] = build_seconds(name, data_dir)
        print(f"  {name:<18} {results['build_s'][name]:6.2f} s  (issue: < 120 s for default)")

    from seqcsist_jax.data.pipeline import TrajectoryLoader, load_split_arrays, make_source

    tfds_source = make_source("seqcsist/default", split="train", data_dir=data_dir, build_if_missing=False)
    memory_source = make_source(load_split_arrays("seqcsist/default", "train", data_dir=data_dir,
                                                  build_if_missing=False))
    have_tf = not args.no_tf and importlib.util.find_spec("tensorflow") is not None

    rows = []
    for bs in args.batch_sizes:
        def loader_iter(source, bs=bs):
            return iter(TrajectoryLoader(source, batch_size=bs, shuffle=True, seed=0, process_index=0,
                                         process_count=1))

        row = {"batch_size": bs}
        row["data_source"] = frames_per_second(lambda: loader_iter(tfds_source), args.seconds, bs)
        row["in_memory"] = frames_per_second(lambda: loader_iter(memory_source), args.seconds, bs)
        row["naive"] = frames_per_second(lambda bs=bs: naive_iter(tfds_source, bs, 0), args.seconds, bs)
        if have_tf:
            row["tf_load_no_labels"] = frames_per_second(
                lambda bs=bs: tf_iter("seqcsist/default", data_dir, bs, 0), args.seconds, bs)
        row["data_source_vs_naive"] = row["data_source"] / row["naive"]
        row["data_source_vs_target"] = row["data_source"] / TARGET_FPS
        rows.append(row)
    results["throughput_frames_per_s"] = rows

    header = ["batch", "data_source", "in-memory", "naive ref", "ds/naive", "ds/20k target"]
    if have_tf:
        header.insert(4, "tfds.load (no labels)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    print("\nTrajectoryLoader throughput, frames/s (frames + 33×33 labels + targets, shuffled):")
    for r in rows:
        cells = [str(r["batch_size"]), f"{r['data_source']:,.0f}", f"{r['in_memory']:,.0f}", f"{r['naive']:,.0f}",
                 f"{r['data_source_vs_naive']:.1f}×", f"{r['data_source_vs_target']:.1f}×"]
        if have_tf:
            cells.insert(4, f"{r['tf_load_no_labels']:,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)

    from seqcsist_jax.fileio import atomic_write, atomic_write_json

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "bench_pipeline.json", results, indent=2)
    md = [
        "# Input pipeline benchmark",
        "",
        f"Command: `python -m experiments.benchmarks.bench_pipeline` on {results['machine']['platform']}, "
        f"{results['machine']['cpus']} CPUs ({results['machine']['note']}).",
        "",
        "| import | ms |", "|---|---|",
        *[f"| `import {m}` | {s * 1e3:.1f} |" for m, s in results["import_s"].items()],
        "",
        "| build (from scratch) | s |", "|---|---|",
        *[f"| `{n}` | {s:.2f} |" for n, s in results["build_s"].items()],
        "",
        "Throughput of `TrajectoryLoader` over the `default` train split (frames/s; each frame comes with its "
        "33×33 label map and targets; shuffled). `naive ref` reads one trajectory at a time and builds labels "
        "frame by frame; `tfds.load` decodes the same Parquet files through tf.data without labels.",
        "",
        table,
        "",
    ]
    atomic_write(args.out / "bench_pipeline.md", "\n".join(md))
    print(f"\nwrote {args.out / 'bench_pipeline.json'} and .md")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
