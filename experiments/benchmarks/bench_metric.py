"""CSO-mAP speed: vectorised :func:`seqcsist_jax.metrics.cso_map` vs a per-frame loop of the same protocol.

Run from the repository root::

    python -m experiments.benchmarks.bench_metric [--frames 12000] [--repeats 5]

Synthetic test split: 12,000 scored frames (750 trajectories × 16) with 2–4 targets each and about 10
detections per frame (grid-snapped hits around each target plus scattered false alarms, continuous scores).
It also times decoding 12,000 33×33 maps with :func:`grids_to_detections` against a per-frame loop.
Both implementations score the same inputs in the same process; the script checks they agree, prints both
times and their ratio, and writes ``experiments/benchmarks/results/bench_metric.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from seqcsist_jax.metrics import DEFAULT_THRESHOLDS, ap_key, cso_map, grids_to_detections
from experiments.arg_parser import ArgumentParser
from experiments.cli import plain_text

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_split(frames: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-frame ``(M, 3)`` detections and zero-padded ``(4, 3)`` targets, like decoded DeRefNet output."""
    rng = np.random.default_rng(seed)
    dets, tgts = [], []
    for _ in range(frames):
        k = rng.integers(2, 5)
        xy = rng.uniform(1, 9, size=(k, 2))
        t = np.zeros((4, 3))
        t[:k, :2], t[:k, 2] = xy, rng.uniform(220, 250, k)
        hits = np.repeat(xy, rng.integers(1, 4, size=k), axis=0)
        hits = np.round((hits + rng.normal(0, 0.12, hits.shape)) * 3) / 3  # snapped to the 1/3-px grid
        clutter = np.round(rng.uniform(0, 10, size=(rng.integers(3, 7), 2)) * 3) / 3
        pos = np.concatenate([hits, clutter])
        score = np.concatenate([rng.uniform(70, 250, len(hits)), rng.uniform(70, 120, len(clutter))])
        dets.append(np.column_stack([pos, score]))
        tgts.append(t)
    return dets, tgts


def synthetic_grids(frames: int, seed: int = 1) -> np.ndarray:
    """``(frames, 33, 33)`` float32 maps: background noise plus 3 bright 3×3 blobs per frame."""
    rng = np.random.default_rng(seed)
    grids = rng.normal(0, 20, (frames, 33, 33)).astype(np.float32)
    for _ in range(3):
        i, j = rng.integers(3, 30, (2, frames))
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                grids[np.arange(frames), i + di, j + dj] += rng.uniform(40, 200, frames).astype(np.float32)
    return grids


def loop_grid_decode(grids: np.ndarray, threshold: float = 70.0) -> list[np.ndarray]:
    """Per-frame decoding: zero cells below the threshold, one detection per remaining non-zero cell."""
    out = []
    for g in grids:
        g = np.where(g < threshold, 0, g)
        rows = [((r - 1) / 3, (c - 1) / 3, float(g[r, c])) for r, c in zip(*np.nonzero(g))]
        out.append(np.array(rows, dtype=np.float64).reshape(-1, 3))
    return out


def loop_cso_map(detections, targets, thresholds=DEFAULT_THRESHOLDS) -> dict[str, float]:
    """Straightforward per-frame implementation of the public protocol (stable ties, as the library)."""
    out = {}
    for thr in thresholds:
        all_scores, all_tp, num_gt = [], [], 0
        for det, tgt in zip(detections, targets):
            det = np.asarray(det, dtype=np.float64).reshape(-1, 3)
            gt = np.asarray(tgt, dtype=np.float64).reshape(-1, 3)
            gt = gt[gt[:, 2] != 0, :2]
            num_gt += len(gt)
            tp = np.zeros(len(det))
            if len(gt) and len(det):
                d = np.linalg.norm(det[:, None, :2] - gt[None, :, :], axis=2)
                nearest, dmin = d.argmin(axis=1), d.min(axis=1)
                taken = np.zeros(len(gt), dtype=bool)
                for i in np.argsort(-det[:, 2], kind="stable"):
                    if dmin[i] <= thr and not taken[nearest[i]]:
                        taken[nearest[i]] = True
                        tp[i] = 1
            all_scores.append(det[:, 2])
            all_tp.append(tp)
        scores, tp = np.concatenate(all_scores), np.concatenate(all_tp)
        order = np.argsort(-scores, kind="stable")
        ctp = np.cumsum(tp[order])
        cfp = np.cumsum(1 - tp[order])
        rec = ctp / max(num_gt, 1)
        prec = ctp / np.maximum(ctp + cfp, 1)
        mrec = np.concatenate([[0.0], rec, [1.0]])
        mpre = np.concatenate([[0.0], prec, [0.0]])
        for i in range(len(mpre) - 1, 0, -1):
            mpre[i - 1] = max(mpre[i - 1], mpre[i])
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        out[ap_key(thr)] = float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])) if num_gt else 0.0
    out["mAP"] = float(np.mean([out[ap_key(t)] for t in thresholds]))
    return out


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}, load average {load}"
    )


def main() -> None:
    parser = ArgumentParser(
        description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=12_000,
                        help="synthetic frames scored, and 33×33 maps decoded (default %(default)s: "
                             "750 trajectories × 16)")
    parser.add_argument("--repeats", type=int, default=5, help="best-of repeats for the vectorised version")
    parser.add_argument("--loop-repeats", type=int, default=2,
                        help="best-of repeats for the per-frame loops (CSO-mAP and grid decoding; "
                             "default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder (created if missing) for bench_metric.json and bench_metric.md "
                             "(default: experiments/benchmarks/results)")
    args = parser.parse_args()

    dets, tgts = synthetic_split(args.frames)
    n_det = sum(len(d) for d in dets)
    fast = cso_map(dets, tgts)
    slow = loop_cso_map(dets, tgts)
    max_diff = max(abs(fast[k] - slow[k]) for k in slow)
    if max_diff > 1e-12:
        raise SystemExit(f"vectorised and loop CSO-mAP disagree: max |Δ| = {max_diff:.3g}")

    t_fast = best_time(lambda: cso_map(dets, tgts), args.repeats)
    t_slow = best_time(lambda: loop_cso_map(dets, tgts), args.loop_repeats)

    grids = synthetic_grids(args.frames)
    decoded = grids_to_detections(grids)
    if not all(np.array_equal(a, b) for a, b in zip(decoded, loop_grid_decode(grids))):
        raise SystemExit("vectorised and loop grid decoding disagree")
    g_fast = best_time(lambda: grids_to_detections(grids), args.repeats)
    g_slow = best_time(lambda: loop_grid_decode(grids), args.loop_repeats)
    n_grid_det = sum(len(d) for d in decoded)
    result = {
        "frames": args.frames,
        "detections": n_det,
        "thresholds": list(DEFAULT_THRESHOLDS),
        "vectorised_s": t_fast,
        "loop_s": t_slow,
        "speedup": t_slow / t_fast,
        "max_abs_diff": max_diff,
        "grid_decode": {
            "detections": n_grid_det,
            "vectorised_s": g_fast,
            "loop_s": g_slow,
            "speedup": g_slow / g_fast,
        },
        "mAP": fast["mAP"],
        "machine": machine(),
        "note": "best of repeats; timed side by side in one process; machine may be shared",
    }
    print(
        f"CSO-mAP on {args.frames} frames, {n_det} detections: vectorised {t_fast * 1e3:.1f} ms, "
        f"per-frame loop {t_slow * 1e3:.1f} ms, speedup ×{result['speedup']:.1f} (|Δ| = {max_diff:.1e})"
    )
    print(
        f"Decoding {args.frames} 33×33 maps ({n_grid_det} detections): grids_to_detections "
        f"{g_fast * 1e3:.1f} ms, per-frame loop {g_slow * 1e3:.1f} ms, speedup ×{g_slow / g_fast:.1f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_metric.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench_metric.md").write_text(
        "# CSO-mAP benchmark\n\n"
        "`python -m experiments.benchmarks.bench_metric`\n\n"
        f"| task | detections | vectorised (ms) | per-frame loop (ms) | speedup |\n|---|---|---|---|---|\n"
        f"| CSO-mAP {args.frames} frames | {n_det} | {t_fast * 1e3:.1f} | {t_slow * 1e3:.1f} "
        f"| ×{result['speedup']:.1f} |\n"
        f"| decode {args.frames} maps | {n_grid_det} | {g_fast * 1e3:.1f} | {g_slow * 1e3:.1f} "
        f"| ×{g_slow / g_fast:.1f} |\n\n"
        f"Both give mAP = {fast['mAP']:.6f} (max |Δ| over AP05…AP25, mAP = {max_diff:.1e}).\n\n"
        f"Machine: {result['machine']}. {result['note']}.\n"
    )
    print(f"wrote {args.out / 'bench_metric.md'} and .json")


if __name__ == "__main__":
    main()
