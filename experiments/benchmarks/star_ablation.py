"""Ablation of the star geometry prior (``geometry="star"``) on a subset of a SeqCSIST test split.

Run from the repository root::

    python -m experiments.benchmarks.star_ablation [--config targets_2_8] [--trajectories 150]

The free trajectory fit runs once (``decode_arrays(..., "trajectory")``, which also chooses the counts); every
variant then refits its paths with :func:`seqcsist_jax.decode.trajectory.fit_star` exactly as
``decode(..., geometry="star", ...)`` does internally, and is scored like the decoder's detections
(``P(count) · P(error <= score_radius)``). Variants: the candidate search (geometric ranking only, or screening
every direction subset by its image cost), hard vs soft (``star_stiffness``), the radius/drift priors, and a fit
started at the truth with the true directions (the model's ceiling). Writes
``experiments/benchmarks/results/star_ablation_{config}.{json,md}``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

from experiments.arg_parser import ArgumentParser
from experiments.benchmarks.bench_decode import CONFIGS, KEYS, RESULTS, load_split, machine, score
from seqcsist_jax.decode import decode_arrays, make_options, trajectory
from seqcsist_jax.decode.api import localisation_confidence
from experiments.cli import plain_text

VARIANTS: list[tuple[str, dict]] = [
    ("hard, 4 best subsets by geometric misfit, no screening", dict(star_screen=0, star_candidates=4)),
    ("hard, 8 best subsets by geometric misfit, no screening", dict(star_screen=0, star_candidates=8)),
    ("hard, every subset screened (3 it.), best 2 continue (default)", {}),
    ("soft, stiffness 0.003 px", dict(star_stiffness=0.003)),
    ("soft, stiffness 0.01 px", dict(star_stiffness=0.01)),
    ("hard, no radius/drift priors", dict(star_radius=(0.3, None), star_drift=(0.0007, None))),
    ("hard, started at the truth with the true directions (ceiling)", dict(_truth=True)),
]


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=plain_text(__doc__.split("\n\n")[0]))
    p.add_argument("--config", default="targets_2_8", choices=list(CONFIGS),
                   help="SeqCSIST builder config whose test split is regenerated and whose decoder "
                        "options are used (default %(default)s)")
    p.add_argument("--trajectories", type=int, default=150,
                   help="test-split trajectories decoded (the first N; default %(default)s)")
    p.add_argument("--base-seed", type=int, default=0,
                   help="the TFDS builder's base seed: the split is split_seed(base_seed, 'test') "
                        "(default %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="folder (created if missing) for star_ablation_<config>.json and .md "
                        "(default: experiments/benchmarks/results)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    data = load_split(args.config, args.trajectories, args.base_seed)
    frames, targets = data["frames"], data["targets"]
    n, t = frames.shape[:2]
    opts = dict(CONFIGS[args.config]["decoder"])
    t0 = time.perf_counter()
    dec = decode_arrays(frames, None, "trajectory", **opts)
    rows = [{"variant": "free trajectory fit (no prior)", **score(dec.to_lists(), targets),
             "seconds": time.perf_counter() - t0, "directions_right": None}]
    free = dec.trajectory
    true_count = (targets[..., 2] > 0).sum(-1)[:, 0]
    for name, variant in VARIANTS:
        variant = dict(variant)
        truth = variant.pop("_truth", False)
        o = make_options(**opts, geometry="star", **variant)
        t0 = time.perf_counter()
        if truth:
            params, _, var, dirs = trajectory.fit_star(frames, targets, true_count, o, directions=data["directions"])
            count, prob = true_count, np.ones(n)
        else:
            params, _, var, dirs = trajectory.fit_star(frames, free.params, free.count, o)
            count, prob = free.count, free.count_prob
        dt = time.perf_counter() - t0
        conf = localisation_confidence(np.where(np.isfinite(var), var, 1.0), o.score_radius)
        det = np.concatenate([params, (prob[:, None, None] * conf)[..., None]], -1)
        lists = [[det[i, j, : count[i]].astype(np.float64) for j in range(t)] for i in range(n)]
        # Two targets are ambiguous by construction ({u1, u2} around ref = {-u1, -u2} around ref + r(u1 + u2)).
        right = float(np.mean([set(dirs[i, : count[i]].tolist()) == set(data["directions"][i, : count[i]].tolist())
                               for i in range(n) if count[i] > 2]))
        rows.append({"variant": name, **score(lists, targets), "seconds": dt, "directions_right": right})
        print(f"{name}: {rows[-1]['mAP']:.2f} ({dt:.1f} s incl. compilation), directions right {right:.3f}",
              flush=True)
    note = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"star_ablation_{args.config}"
    stem.with_suffix(".json").write_text(json.dumps({"config": args.config, "trajectories": n, "rows": rows,
                                                     "machine": note}, indent=2, default=float) + "\n")
    lines = [f"# Star geometry ablation: `seqcsist/{args.config}`, first {n} test trajectories", "",
             f"`python -m experiments.benchmarks.star_ablation --config {args.config} --trajectories {n}` "
             "(scored frames 2..17; the free fit chooses the counts for every variant but the last).", "",
             "| variant | CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 | RMSE (px) | directions right (K > 2) "
             "| time (s, incl. compilation) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dr = "–" if r["directions_right"] is None else f"{r['directions_right']:.3f}"
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r[k]:.2f}" for k in KEYS)
                     + f" | {r['rmse']:.4f} | {dr} | {r['seconds']:.1f} |")
    lines += ["", "The free row's time is the whole decode (per-frame fits, free trajectory fit); the others the star "
              "refit alone.", "", f"Machine: {note}", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {stem.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
