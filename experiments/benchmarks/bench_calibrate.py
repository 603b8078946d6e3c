"""Calibrated forward model for continuous decoding: mismatched data, uncalibrated vs calibrated vs matched.

Run from the repository root::

    python -m experiments.benchmarks.bench_calibrate [--trajectories 40] [--calib-trajectories 40]
        [--default-trajectories 500] [--methods trajectory] [--base-seed 0]

Data: target tracks of the SeqCSIST simulator (``seqcsist/default`` motion model); the test split
(``split_seed(base_seed, "test")``, first ``--trajectories``) is decoded, the calibration uses the train split
(``split_seed(base_seed, "train")``, first ``--calib-trajectories``: other tracks, other noise). Frames are
rendered with :func:`seqcsist_jax.decode.imaging_params.render_frames` under the case's true imaging
parameters and stored as 8-bit (rounded, clipped at 255). Cases (mismatches against the SPEC §2 model):

* ``sigma0.58_shift``: PSF σ 0.58 px and a (¼, ¼) px label→pixel shift (the issue's example);
* ``sigma0.45_shift``: σ 0.45 px, same shift (a sharper PSF: more clipped pixels);
* ``noise3_bg10_shift``: σ 0.5, (¼, ¼) shift, background 10 grey levels and Gaussian noise σ = 3;
* ``noise3_bg10_sigma0.58_shift``: all of it (σ 0.58 as well). Its matched data (σ 0.5) carry more information
  than the σ 0.58 frames, so calibrated decoding is compared with the true parameters there (the matched-data
  gap is the cost of the blur, not of calibration).

Rows per case (``--methods``, default ``trajectory``; scored frames 2..17):

* ``uncalibrated``: decoded with the default model (what decoding assumes without calibration);
* ``calibrated``: decoded with ``calibrate(train frames, train labels)``;
* ``true params``: the same frames decoded with the true parameters (oracle calibration);
* ``matched data``: the same test tracks rendered with the default σ/offset/gain (same background and noise)
  and decoded with the true parameters, i.e. data that matches the decoder's model.

Also: the calibrated parameters of ``seqcsist/default`` (``--default-trajectories`` of its train split, as the
TFDS builder generates it: must come out as σ 0.5, offset 0, gain 1, background 0) and the calibration time.
Targets (issue 14): |σ error| < 0.005, |offset error| < 0.01 px, calibrated CSO-mAP within 1 point of
matched data. Writes ``experiments/benchmarks/results/bench_calibrate.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments.arg_parser import ArgumentParser
from experiments.benchmarks.bench_decode import KEYS, machine, score
from seqcsist_jax.data.simulate import simulate_seqcsist, split_seed
from seqcsist_jax.decode import ImagingParams, calibrate, decode
from seqcsist_jax.decode.imaging_params import render_frames
from seqcsist_jax.fileio import atomic_write, atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"

CASES: dict[str, ImagingParams] = {
    "sigma0.58_shift": ImagingParams(sigma=0.58, offset=(0.25, 0.25)),
    "sigma0.45_shift": ImagingParams(sigma=0.45, offset=(0.25, 0.25)),
    "noise3_bg10_shift": ImagingParams(offset=(0.25, 0.25), background=10.0, noise_std=3.0),
    "noise3_bg10_sigma0.58_shift": ImagingParams(sigma=0.58, offset=(0.25, 0.25), background=10.0,
                                                 noise_std=3.0),
}
SIGMA_TOL, OFFSET_TOL, MAP_TOL = 0.005, 0.01, 1.0


def matched(params: ImagingParams) -> ImagingParams:
    """The default model with the case's background and noise (the data the decoder's model matches)."""
    return ImagingParams(background=params.background, noise_std=params.noise_std)


def param_errors(est: ImagingParams, true: ImagingParams) -> dict[str, float]:
    return {
        "sigma": est.sigma - true.sigma,
        "offset_x": est.offset[0] - true.offset[0],
        "offset_y": est.offset[1] - true.offset[1],
        "gain": est.gain - true.gain,
        "background": est.background - true.background,
        "noise_std": est.noise_std - true.noise_std,
    }


def run_case(name: str, true: ImagingParams, test: dict, train: dict, args: argparse.Namespace) -> dict:
    seed = args.base_seed
    frames = render_frames(test["targets"], true, rng=np.random.default_rng([seed, 1]))
    train_frames = render_frames(train["targets"], true, rng=np.random.default_rng([seed, 2]))
    matched_frames = render_frames(test["targets"], matched(true), rng=np.random.default_rng([seed, 1]))
    t0 = time.perf_counter()
    est = calibrate(train_frames, train["targets"])
    calib_s = time.perf_counter() - t0
    errs = param_errors(est, true)
    print(f"[{name}] true  {true}")
    print(f"[{name}] calib {est}  ({calib_s:.1f} s, {train_frames.shape[0] * 20} frames)")
    rows = []
    runs: list[tuple[str, np.ndarray, ImagingParams | None]] = [
        ("uncalibrated", frames, None), ("calibrated", frames, est), ("true params", frames, true),
        ("matched data", matched_frames, matched(true)),
    ]
    for method in args.methods:
        for label, fr, im in runs:
            t0 = time.perf_counter()
            res = score(decode(fr, method=method, imaging=im), test["targets"])
            row = {"case": name, "decoding": label, "method": method, **res,
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"[{name}] {label:13s} {method:10s} mAP {row['mAP']:6.2f}  "
                  + "  ".join(f"{k} {row[k]:6.2f}" for k in KEYS[1:])
                  + f"  count {row['count_accuracy']:.3f}  rmse {row['rmse']:.4f}  ({row['seconds']:.1f} s)")
    by = {(r["method"], r["decoding"]): r for r in rows}
    checks = {
        "sigma_within_0.005": abs(errs["sigma"]) < SIGMA_TOL,
        "offset_within_0.01": max(abs(errs["offset_x"]), abs(errs["offset_y"])) < OFFSET_TOL,
    }
    if "trajectory" in args.methods:
        cal = by[("trajectory", "calibrated")]["mAP"]
        for ref in ("matched data", "true params"):
            key = f"trajectory_within_1_of_{ref.replace(' ', '_')}"
            checks[key] = by[("trajectory", ref)]["mAP"] - cal < MAP_TOL
    print(f"[{name}] checks: {checks}")
    return {"case": name, "true": true.to_dict(), "calibrated": est.to_dict(), "errors": errs,
            "calibration_seconds": calib_s, "calibration_frames": int(train_frames.shape[0] * 20),
            "rows": rows, "checks": checks}


def markdown(res: dict) -> str:
    a = res["args"]
    lines = [
        "# Calibrated forward model (issue 14)", "",
        f"`python -m experiments.benchmarks.bench_calibrate` — {a['trajectories']} test trajectories "
        f"({a['trajectories'] * 16} scored frames), calibration on {a['calib_trajectories']} train "
        f"trajectories ({a['calib_trajectories'] * 20} frames), base seed {a['base_seed']}; 8-bit frames.",
        "",
        "## Recovered parameters", "",
        "| case | | σ (px) | dx (px) | dy (px) | gain | background | noise std | calib. time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        for label, p in (("true", c["true"]), ("calibrated", c["calibrated"])):
            t = f"{c['calibration_seconds']:.1f}" if label == "calibrated" else ""
            lines.append(f"| {c['case']} | {label} | {p['sigma']:.4f} | {p['offset'][0]:+.4f} | "
                         f"{p['offset'][1]:+.4f} | {p['gain']:.4f} | {p['background']:.3f} | "
                         f"{p['noise_std']:.3f} | {t} |")
    d = res["default"]
    p = d["calibrated"]
    lines.append(f"| seqcsist/default ({d['frames']} train frames) | calibrated | {p['sigma']:.4f} | "
                 f"{p['offset'][0]:+.4f} | {p['offset'][1]:+.4f} | {p['gain']:.4f} | {p['background']:.3f} | "
                 f"{p['noise_std']:.3f} | {d['seconds']:.1f} |")
    lines += ["", "## Decoding", "",
              "| case | decoding | method | CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 | count acc. "
              "| RMSE (px) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in res["cases"]:
        for r in c["rows"]:
            lines.append(f"| {r['case']} | {r['decoding']} | {r['method']} | "
                         + " | ".join(f"{r[k]:.2f}" for k in KEYS)
                         + f" | {r['count_accuracy']:.3f} | {r['rmse']:.4f} |")
    lines += ["", "## Checks (issue 14 targets)", ""]
    for c in res["cases"]:
        marks = ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in c["checks"].items())
        lines.append(f"- {c['case']}: {marks}")
    lines += [f"- seqcsist/default comes out as the defaults (σ ±0.005, offset ±0.01, gain ±0.005, "
              f"background ±0.05): {'✓' if d['is_default'] else '✗'}", "",
              f"Total {res['seconds']:.0f} s. Machine: {res['machine']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trajectories", type=int, default=40,
                   help="test-split trajectories decoded per case (the first N; 16 scored frames each; "
                        "default %(default)s)")
    p.add_argument("--calib-trajectories", type=int, default=40,
                   help="train-split trajectories (20 frames each) that calibrate() fits the imaging "
                        "parameters on (the first N; default %(default)s)")
    p.add_argument("--default-trajectories", type=int, default=500,
                   help="train-split trajectories of seqcsist/default for the check that calibration "
                        "recovers the default model (default %(default)s)")
    p.add_argument("--methods", nargs="+", default=["trajectory"],
                   choices=["grid", "peak", "refine", "trajectory"],
                   help="decoders run on every case, space-separated (default: trajectory; the mAP checks "
                        "need trajectory)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES),
                   help="imaging mismatches to run, space-separated, from: %(choices)s (default: all)")
    p.add_argument("--base-seed", type=int, default=0,
                   help="the TFDS builder's base seed: tracks come from split_seed(base_seed, 'test' / "
                        "'train') (default %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="folder (created if missing) for bench_calibrate.json and bench_calibrate.md "
                        "(default: experiments/benchmarks/results)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    test = simulate_seqcsist(args.trajectories, split_seed(args.base_seed, "test"))
    train = simulate_seqcsist(args.calib_trajectories, split_seed(args.base_seed, "train"))
    cases = [run_case(name, CASES[name], test, train, args) for name in args.cases]

    default = simulate_seqcsist(args.default_trajectories, split_seed(args.base_seed, "train"))
    t0 = time.perf_counter()
    est = calibrate(default["frames"], default["targets"])
    dt = time.perf_counter() - t0
    is_default = (abs(est.sigma - 0.5) < SIGMA_TOL and max(map(abs, est.offset)) < OFFSET_TOL
                  and abs(est.gain - 1.0) < 0.005 and abs(est.background) < 0.05)
    print(f"[seqcsist/default] {est}  ({dt:.1f} s, {default['frames'].shape[0] * 20} frames); "
          f"defaults: {is_default}")
    res: dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cases": cases,
        "default": {"calibrated": est.to_dict(), "seconds": dt,
                    "frames": int(default["frames"].shape[0] * 20),
                    "is_default": bool(is_default)},
        "seconds": time.perf_counter() - start,
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "bench_calibrate.json", res, indent=1, default=float)
    atomic_write(args.out / "bench_calibrate.md", markdown(res))
    print(markdown(res))
    print(f"wrote {args.out / 'bench_calibrate.md'} and .json")


if __name__ == "__main__":
    main()
