"""The quick run's test CSO-mAP over several seeds: mean ± spread instead of one number.

Run from the repository root (one command; runs the missing seeds one after another, then collects)::

    python -m experiments.benchmarks.quick_seeds [--seeds 0 1 2] [--workdir-prefix /tmp/q] [--note TEXT]
        [--collect-only] [--results-dir DIR] [--set optimizer.warmup_steps=70 ...] [--tag _warmup70]

Each seed is ``python -m experiments.train --config=derefnet_quick --workdir=<prefix><seed> --config.seed=<seed>``
(subprocess, so every seed starts from a fresh process exactly as a user runs it), plus ``--config.KEY=VALUE`` for
every ``--set KEY=VALUE`` (a recipe change measured over the same seeds). A seed whose workdir already
holds ``result.json`` is not retrained; its wall time comes from ``quick_seeds_wall.json`` that this script
wrote next to it (absent when the run was started by hand).

Writes ``experiments/benchmarks/results/quick_seeds{TAG}.{json,md}``: per seed the test CSO-mAP and AP05…AP25 (×100),
the best validation CSO-mAP and its step, and the wall time of the whole command (training + evaluation);
then mean, sample standard deviation and min–max over the seeds. Wall times depend on the machine and its load
(the load average at the start of each seed is recorded).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from seqcsist_jax.fileio import atomic_write, atomic_write_json
from seqcsist_jax.protocol import METRIC_KEYS
from experiments.arg_parser import ArgumentParser

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "benchmarks" / "results"
CONFIG = "derefnet_quick"
WALL_FILE = "quick_seeds_wall.json"


def train_command(seed: int, workdir: Path, overrides: list[str] = ()) -> list[str]:
    """The training command of one seed; ``overrides`` are ``KEY=VALUE`` config overrides."""
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0]:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. optimizer.warmup_steps=70")
    return [sys.executable, "-m", "experiments.train", f"--config={CONFIG}", f"--workdir={workdir}",
            f"--config.seed={seed}", *(f"--config.{item}" for item in overrides)]


def run_seed(seed: int, workdir: Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Trains and scores one seed in ``workdir`` unless it finished already; returns its wall-time record."""
    wall_path = workdir / WALL_FILE
    command = train_command(seed, workdir, overrides)
    if (workdir / "result.json").exists():
        return json.loads(wall_path.read_text()) if wall_path.exists() else {"wall_s": None, "load_avg": None}
    print(f"seed {seed}: {' '.join(command)}", flush=True)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    record = {"wall_s": time.perf_counter() - start, "load_avg": load}
    atomic_write_json(wall_path, record)
    return record


def collect(seed: int, workdir: Path, wall: dict[str, Any]) -> dict[str, Any]:
    """One row: test metrics (×100), best validation CSO-mAP (×100) and step, wall time."""
    path = workdir / "result.json"
    try:
        result = json.loads(path.read_text())
        test = result["test"]
        row = {"seed": seed, **{k: 100 * float(test[k]) for k in METRIC_KEYS}}
    except (OSError, KeyError, TypeError, ValueError) as e:
        keys = ", ".join(METRIC_KEYS)
        raise SystemExit(f"{path}: expected a finished run's result.json with test {keys} ({e!r})")
    best = result.get("best") or {}
    row["val_mAP"] = 100 * float(best["mAP"]) if "mAP" in best else None
    row["best_step"] = best.get("step", test.get("step"))  # the test split is scored with the best checkpoint
    row["steps"] = result.get("step")
    row.update(wall)
    row["workdir"] = str(workdir)
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, sample std (0 for one seed), min and max of every numeric column over the seeds."""
    summary = {}
    for key in (*METRIC_KEYS, "val_mAP", "wall_s"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            continue
        summary[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "n": len(values),
        }
    return summary


def to_markdown(rows: list[dict[str, Any]], summary: dict[str, dict[str, float]], note: str,
                overrides: list[str] = ()) -> str:
    keys = (*METRIC_KEYS, "val_mAP")
    extra = "".join(f" --config.{o}" for o in overrides)
    lines = [f"# Quick run over {len(rows)} seeds (`--config={CONFIG}{extra}`)", ""]
    if note:
        lines += [note, ""]
    lines += ["Test split, scored frames 2..17, grid decoding, ×100. "
              "Wall time: the whole command (train + evaluate).", ""]
    lines.append("| seed | " + " | ".join(keys) + " | wall (min) | load avg |")
    lines.append("|---|" + "---|" * (len(keys) + 2))
    for r in rows:
        wall = "–" if r.get("wall_s") is None else f"{r['wall_s'] / 60:.1f}"
        load = "–" if r.get("load_avg") is None else f"{r['load_avg']:.1f}"
        cells = ["–" if r.get(k) is None else f"{r[k]:.2f}" for k in keys]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {wall} | {load} |")
    cells = [f"{summary[k]['mean']:.2f} ± {summary[k]['std']:.2f}" if k in summary else "–" for k in keys]
    wall = f"{summary['wall_s']['mean'] / 60:.1f}" if "wall_s" in summary else "–"
    lines.append("| mean ± std | " + " | ".join(cells) + f" | {wall} | |")
    cells = [f"{summary[k]['min']:.2f}–{summary[k]['max']:.2f}" if k in summary else "–" for k in keys]
    lines.append("| min–max | " + " | ".join(cells) + " | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds, space-separated: seed s runs with --config.seed=s in "
                             "<prefix>s (default: 0 1 2)")
    parser.add_argument("--workdir-prefix", default="workdirs/quick_seed",
                        help="workdir of seed s is <prefix><s> (relative to the repository root)")
    parser.add_argument("--collect-only", action="store_true", help="do not train; only collect finished runs")
    parser.add_argument("--note", default="", help="free text stored with the results (machine, load)")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where quick_seeds.{json,md} go")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override of every seed's run (repeatable), e.g. optimizer.warmup_steps=70")
    parser.add_argument("--tag", default="", help="suffix of the results files, e.g. _warmup70")
    args = parser.parse_args(argv)
    for item in args.set:
        train_command(0, Path("."), [item])  # validates KEY=VALUE before any training starts

    rows = []
    for seed in args.seeds:
        workdir = (ROOT / f"{args.workdir_prefix}{seed}").resolve()
        if args.collect_only:
            wall_path = workdir / WALL_FILE
            wall = json.loads(wall_path.read_text()) if wall_path.exists() else {"wall_s": None, "load_avg": None}
        else:
            wall = run_seed(seed, workdir, args.set)
        rows.append(collect(seed, workdir, wall))
    summary = summarise(rows)
    out = {
        "config": CONFIG,
        "overrides": list(args.set),
        "seeds": args.seeds,
        "rows": rows,
        "summary": summary,
        "note": args.note,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    results = Path(args.results_dir)
    atomic_write_json(results / f"quick_seeds{args.tag}.json", out, indent=2)
    markdown = to_markdown(rows, summary, args.note, args.set)
    atomic_write(results / f"quick_seeds{args.tag}.md", markdown)
    print(markdown)
    return out


if __name__ == "__main__":
    main()
