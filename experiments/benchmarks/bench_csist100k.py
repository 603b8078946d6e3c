"""CSIST-100K data: generator cost per target count, and building `csist100k` next to `seqcsist`, in one run.

Run from the repository root::

    python -m experiments.benchmarks.bench_csist100k [--data-dir DIR] [--images 16000] [--note TEXT] [--out DIR]

Measures, in this process and on this machine, one after another:

* :func:`seqcsist_jax.data.csist100k.simulate_csist100k` with exactly ``k`` targets per image, k = 1..5
  (``--images`` each, the per-count share of the `default` train split): whole-configuration rejection makes
  five targets (acceptance ≈ 1.4e-4) the dominant cost; the ratio to k = 1 is printed;
* building ``csist100k/default`` (100,000 images) and ``seqcsist/default`` (100,000 frames) from scratch into a
  fresh data_dir, and their ratio;
* :func:`~seqcsist_jax.data.csist100k.load_csist100k_arrays` of the train and test splits.

Writes ``bench_csist100k.{json,md}`` into ``--out`` (default ``experiments/benchmarks/results/``).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from experiments.arg_parser import ArgumentParser

RESULTS = Path(__file__).resolve().parent / "results"


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m experiments.benchmarks.bench_csist100k")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir to build into (default: a fresh temp dir)")
    p.add_argument("--images", type=int, default=16000, help="images per target count for the generator rows")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="folder (created if missing) for bench_csist100k.json and .md "
                        "(default: experiments/benchmarks/results, the README's numbers)")
    args = p.parse_args(argv)

    import tensorflow_datasets as tfds

    import seqcsist_jax  # noqa: F401  (registers both builders)
    from seqcsist_jax.data.csist100k import load_csist100k_arrays, simulate_csist100k

    results: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                     "load_average_start": os.getloadavg()[0], "note": args.note, "generator": {}}
    simulate_csist100k(10, 0)  # imports and JAX/scipy warm-up outside the timings
    for k in range(1, 6):
        s = _seconds(lambda k=k: simulate_csist100k(args.images, 1000 + k, min_targets=k, max_targets=k))
        results["generator"][k] = s
        print(f"generator, {k} target(s), {args.images} images: {s:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or tmp
        builds = {}
        for name in ("csist100k/default", "seqcsist/default"):
            builder = tfds.builder(name, data_dir=data_dir)
            builds[name] = _seconds(builder.download_and_prepare)
            print(f"build {name}: {builds[name]:.1f} s")
        results["build_seconds"] = builds
        results["load_seconds"] = {
            split: _seconds(lambda split=split: load_csist100k_arrays("csist100k/default", split,
                                                                      data_dir=data_dir, build_if_missing=False))
            for split in ("train", "test")
        }
        print(f"load_csist100k_arrays: {results['load_seconds']}")
    results["load_average_end"] = os.getloadavg()[0]

    gen = results["generator"]
    ratio = builds["csist100k/default"] / builds["seqcsist/default"]
    md = [
        "# CSIST-100K data: generator and build",
        "",
        f"`python -m experiments.benchmarks.bench_csist100k` on {results['cpus']} CPUs, load average "
        f"{results['load_average_start']:.1f} → {results['load_average_end']:.1f}. {args.note}".rstrip(),
        "",
        f"| targets per image | generate {args.images:,} images (s) | × the 1-target time |",
        "|---|---|---|",
        *[f"| {k} | {gen[k]:.2f} | {gen[k] / gen[1]:.1f} |" for k in range(1, 6)],
        "",
        "| build from scratch | seconds |",
        "|---|---|",
        *[f"| `{name}` | {s:.1f} |" for name, s in builds.items()],
        f"| ratio csist100k / seqcsist | {ratio:.1f} |",
        "",
        "| `load_csist100k_arrays('csist100k/default', split)` | seconds |",
        "|---|---|",
        *[f"| {split} | {s:.2f} |" for split, s in results["load_seconds"].items()],
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    from seqcsist_jax.fileio import atomic_write, atomic_write_json

    atomic_write_json(args.out / "bench_csist100k.json", results)
    atomic_write(args.out / "bench_csist100k.md", "\n".join(md).encode("utf-8"))
    print("\n".join(md))
    print(f"wrote {args.out / 'bench_csist100k.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
