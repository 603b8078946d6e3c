"""How much the tie order of the published CSO-mAP protocol can move a score.

Run from the repository root::

    python -m experiments.benchmarks.tie_order [--frames 2000] [--orders 20]

The published protocol ranks equal scores in an unspecified order (``np.argsort`` quicksort in the public code,
input order here). This scores the synthetic split of ``bench_metric`` (2–4 targets and ~10 detections per
frame) with its scores quantised to a step (none = continuous, 1 grey level as an 8-bit output would give, 10
levels), under ``--orders`` random input orders (detections shuffled within each frame and frames shuffled),
and reports the smallest and largest ``mAP`` (×100), their spread, and the tie-aware
``cso_map(..., ties="grouped")`` value, which does not depend on the order. Writes
``experiments/benchmarks/results/tie_order.{json,md}``.
"""

from __future__ import annotations

import json
import pathlib
import platform

import numpy as np

from experiments.arg_parser import ArgumentParser
from experiments.benchmarks.bench_metric import RESULTS, synthetic_split
from seqcsist_jax.fileio import atomic_write, atomic_write_json
from seqcsist_jax.metrics import cso_map


def shuffled(dets, tgts, rng):
    frame_order = rng.permutation(len(dets))
    return ([dets[i][rng.permutation(len(dets[i]))] for i in frame_order], [tgts[i] for i in frame_order])


def measure(frames: int, orders: int, step: float | None, seed: int = 0) -> dict:
    dets, tgts = synthetic_split(frames, seed)
    if step:
        dets = [np.column_stack([d[:, :2], np.round(d[:, 2] / step) * step]) for d in dets]
    rng = np.random.default_rng(seed + 1)
    values = [100 * cso_map(dets, tgts)["mAP"]]
    for _ in range(orders - 1):
        values.append(100 * cso_map(*shuffled(dets, tgts, rng))["mAP"])
    grouped = 100 * cso_map(dets, tgts, ties="grouped")["mAP"]
    scores = np.concatenate([d[:, 2] for d in dets])
    return {"score_step": step, "distinct_scores": int(np.unique(scores).size), "detections": int(scores.size),
            "mAP_min": min(values), "mAP_max": max(values), "spread": max(values) - min(values),
            "mAP_grouped": grouped}


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="synthetic frames scored (default 2000)")
    parser.add_argument("--orders", type=int, default=20, help="input orders of the detections tried (default 20)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS,
                        help="folder of tie_order.{json,md} (default: the README's, experiments/benchmarks/results)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [measure(args.frames, args.orders, step) for step in (None, 1.0, 10.0)]
    header = "| score step | distinct scores / detections | mAP min | mAP max | spread | tie-aware (grouped) |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['score_step'] or 'continuous'} | {r['distinct_scores']} / {r['detections']} | "
                     f"{r['mAP_min']:.3f} | {r['mAP_max']:.3f} | {r['spread']:.3f} | {r['mAP_grouped']:.3f} |")
    table = "\n".join(lines)
    print(table)
    meta = {"frames": args.frames, "orders": args.orders, "python": platform.python_version(),
            "numpy": np.__version__}
    atomic_write_json(args.out / "tie_order.json", {"meta": meta, "rows": rows})
    atomic_write(args.out / "tie_order.md", f"# CSO-mAP tie-order sensitivity\n\n{json.dumps(meta)}\n\n{table}\n")
    print(f"wrote {args.out / 'tie_order.md'} and .json")


if __name__ == "__main__":
    main()
