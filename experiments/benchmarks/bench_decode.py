"""Continuous decoding benchmark: CSO-mAP of every decoder on a SeqCSIST test split, and where errors arise.

Run from the repository root::

    python -m experiments.benchmarks.bench_decode [--config default|noise_5|targets_2_8|all]
        [--maps maps.npz] [--workdir RUN_DIR] [--trajectories 750] [--base-seed 0]

Data: the test split of ``seqcsist/<config>`` regenerated with the simulator exactly as the TFDS builder does
(``simulate_seqcsist(750, split_seed(base_seed, "test"), **config.simulation_options())``); scored frames
2..17 (12,000 frames for 750 trajectories).

Rows (per config):

* ``oracle grid``: the ground truth snapped to the 1/3-px label grid and decoded by the protocol — the
  ceiling of every published (grid-decoded) method;
* ``physics / {grid, peak, refine, trajectory}``: from the frames alone (grid/peak on the non-negative sparse
  least-squares map, refine/trajectory with the greedy physics starts);
* ``physics / trajectory+star``: the trajectory fit with the SeqCSIST generator's star geometry
  (``geometry="star"``, :data:`seqcsist_jax.decode.SEQCSIST_STAR_OPTIONS`: a simulator-specific prior, opt-in);
* ``oracle-map seeds / {refine, trajectory}``: seeded by the grid-snapped truth, i.e. what a perfect grid
  model's map adds as starts (``--no-oracle-seeds`` skips these rows);
* ``model / {grid, peak, refine, trajectory}``: with a model's maps (``--maps`` file with ``maps`` of shape
  ``(N, T, 33, 33)`` or ``(N, T-4, 33, 33)`` for the same split, or ``--workdir`` of a training run whose best
  checkpoint predicts them).

Columns: CSO-mAP and AP05…AP25 (×100), per-frame count accuracy, RMSE of matched pairs (Hungarian within
0.25 px), decoding time of the whole split after a warm-up call that compiles every shape (the compile time of
that first call is reported separately), frames per second.

Diagnostics (``refine``/``trajectory``): counts (accuracy, mAP when the true count is imposed), localisation
(RMSE, share of matched pairs within 0.05/0.10 px), clipping (mAP on frames with vs without clipped pixels),
optimiser basins (trajectories whose fit started at the truth reaches a lower cost than ours, and the mAP of
the truth-started fit, i.e. the model's ceiling; for ``trajectory+star`` started at the truth with the true
directions), and scores (mAP with constant scores).

Writes ``experiments/benchmarks/results/bench_decode.{json,md}``. Timings depend on the machine; the script
prints the load average so shared-machine runs can be recognised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from seqcsist_jax import imaging, metrics
from seqcsist_jax.data.simulate import simulate_seqcsist, split_seed
from seqcsist_jax.decode import (
    SEQCSIST_CONFIG_OPTIONS,
    SEQCSIST_STAR_OPTIONS,
    decode,
    decode_arrays,
    make_options,
    parse_option_items,
    trajectory,
)
from experiments.arg_parser import ArgumentParser

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25")

#: Simulation options of the TFDS configs used here (fallback when the builder cannot be imported) and the
#: decoder options that describe their acquisition (noise level, clipping, densest count).
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {"simulation": {}, "decoder": {}},
    "noise_5": {
        "simulation": {"noise_sigma": 5.0, "clip": False, "output": "float32"},
        "decoder": {"noise_sigma": 5.0, "clip_level": None},
    },
    "targets_2_8": {
        "simulation": {"min_targets": 2, "max_targets": 8, "max_targets_padded": 8},
        "decoder": dict(SEQCSIST_CONFIG_OPTIONS["targets_2_8"]),  # the dataset's preset: 8 targets, restarts
    },
}


def simulation_options(config: str) -> dict[str, Any]:
    """The TFDS builder's simulation options for ``config`` (or the fallback table above)."""
    try:
        from tfds_builders.seqcsist.seqcsist_dataset_builder import BUILDER_CONFIGS

        for cfg in BUILDER_CONFIGS:
            if cfg.name == config:
                return cfg.simulation_options()
    except Exception:  # noqa: BLE001 - TFDS missing or builder changed: the fallback is documented
        pass
    return dict(CONFIGS[config]["simulation"])


def load_split(config: str, num: int, base_seed: int) -> dict[str, np.ndarray]:
    return simulate_seqcsist(num, split_seed(base_seed, "test"), **simulation_options(config))


def load_maps(path: Path, frames: np.ndarray) -> np.ndarray:
    with np.load(path) as f:
        key = "maps" if "maps" in f.files else f.files[0]
        maps = np.asarray(f[key], np.float32)
    if maps.shape[0] < frames.shape[0]:
        raise ValueError(f"{path}: {maps.shape[0]} trajectories of maps for {frames.shape[0]} trajectories")
    return maps[: frames.shape[0]]


def maps_from_workdir(workdir: Path, frames: np.ndarray, checkpoint: str = "best") -> np.ndarray:
    """Maps of a trained run's checkpoint for ``frames (N, T, 11, 11)``: ``(N, T', 33, 33)`` as the model
    outputs them (DeRefNet: centre frames 2..T-3, which :func:`decode` understands)."""
    from seqcsist_jax import evaluate as evaluation
    from seqcsist_jax.predictor import restore_run

    config, predictor, params, step = restore_run(workdir, checkpoint)
    print(f"model maps: {config.model.name} from {workdir} ({checkpoint} checkpoint, step {step})")
    return evaluation.predict_maps(predictor.predict, params, frames, batch_size=config.eval.batch_size,
                                   mesh=predictor.mesh)


def score(dets: list[list[np.ndarray]], targets: np.ndarray, frames_mask: np.ndarray | None = None) -> dict:
    """CSO-mAP (×100) and diagnostics over the scored frames (optionally only where ``frames_mask``)."""
    n, t = targets.shape[:2]
    flat_d = [d for traj in dets for d in traj]
    flat_t = list(targets.reshape(n * t, *targets.shape[2:]))
    idx = metrics.scored_frames(np.arange(n * t), frames_per_trajectory=t, layout="frames")
    if frames_mask is not None:
        idx = idx[frames_mask.reshape(-1)[idx]]
    d = [flat_d[i] for i in idx]
    g = [flat_t[i] for i in idx]
    r = metrics.cso_map(d, g)
    diag = metrics.detection_diagnostics(d, g)
    out = {k: 100.0 * r[k] for k in KEYS}
    out.update(count_accuracy=diag["count_accuracy"], rmse=diag["rmse"], frames=len(idx))
    return out


def _with_scores(dec, score_fn) -> list[list[np.ndarray]]:
    lists = dec.to_lists()
    for i, traj in enumerate(lists):
        for j, d in enumerate(traj):
            d[:, 3] = score_fn(i, j, d)
    return lists


def _pair_errors(dets: list[list[np.ndarray]], targets: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    errs = []
    sc = metrics.scored_frame_indices(targets.shape[1])
    for i, traj in enumerate(dets):
        for j in sc:
            tg = targets[i, j][targets[i, j, :, 2] > 0]
            d = traj[j]
            if len(d) and len(tg):
                dist = np.sqrt(((d[:, None, :2] - tg[None, :, :2]) ** 2).sum(-1))
                r, c = linear_sum_assignment(dist)
                errs.append(dist[r, c][dist[r, c] <= 0.25])
    return np.concatenate(errs) if errs else np.zeros(0)


def timed(fn, warm_fn) -> tuple[Any, float, float]:
    """Runs ``warm_fn`` (compiles every shape) then ``fn``; returns (result, first-call s, timed s)."""
    t0 = time.perf_counter()
    warm_fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = fn()
    return out, first, time.perf_counter() - t0


def diagnostics(method: str, dec, data: dict, frames: np.ndarray, opts: dict) -> dict:
    """Where the errors of a refine/trajectory decode come from."""
    targets = data["targets"]
    n, t = targets.shape[:2]
    dets = dec.to_lists()
    out: dict[str, Any] = {}
    true_count = (targets[..., 2] > 0).sum(-1)
    out["count_accuracy_frames"] = float(np.mean(dec.count == true_count))
    wrong = dec.count != true_count
    out["frames_wrong_count"] = int(wrong[:, 2:18].sum())
    errs = _pair_errors(dets, targets)
    out["matched_within_0.05"] = float(np.mean(errs <= 0.05)) if errs.size else float("nan")
    out["matched_within_0.10"] = float(np.mean(errs <= 0.10)) if errs.size else float("nan")
    out["rmse_matched"] = float(np.sqrt(np.mean(errs**2))) if errs.size else float("nan")
    if data["frames"].dtype == np.uint8:  # float configs (noise_*) are stored unclipped
        clipped = data["clipped_pixels"] > 0
        out["mAP_clipped_frames"] = score(dets, targets, clipped)["mAP"] if clipped[:, 2:18].any() else None
        out["mAP_unclipped_frames"] = (score(dets, targets, ~clipped)["mAP"]
                                       if (~clipped[:, 2:18]).any() else None)
        out["clipped_frame_share"] = float(clipped[:, 2:18].mean())
    out["mAP_constant_scores"] = score(_with_scores(dec, lambda i, j, d: 1.0), targets)["mAP"]
    out["mAP_brightness_scores"] = score(_with_scores(dec, lambda i, j, d: d[:, 2]), targets)["mAP"]
    # Counts imposed: only frames/trajectories whose count is right keep detections, others none (so the mAP
    # of the right-count subset shows what counting costs).
    right = ~wrong
    out["mAP_right_count_frames"] = score(dets, targets, right)["mAP"] if right[:, 2:18].any() else None
    if method in ("trajectory", "trajectory+star"):
        o = make_options(**opts)
        if method == "trajectory+star":
            params, cost, _, _ = trajectory.fit_star(frames, targets, true_count[:, 0], o,
                                                     directions=data["directions"])
        else:
            params, cost = trajectory.fit_from_paths(frames, targets, true_count[:, 0], o)
        ours = dec.trajectory.cost
        right_traj = dec.trajectory.count == true_count[:, 0]
        better = (cost < ours - 1.0) & right_traj
        out["trajectories_wrong_count"] = int((~right_traj).sum())
        out["trajectories_in_wrong_basin"] = int(better.sum())
        det = np.concatenate([params, np.ones(params.shape[:-1] + (1,))], -1)
        truth_start = [[det[i, j, : true_count[i, j]] for j in range(t)] for i in range(n)]
        out["mAP_truth_start"] = score(truth_start, targets)["mAP"]
    return out


def parse_decode_options(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (``--decode-option``) → decoder options (:func:`seqcsist_jax.decode.parse_option_items`:
    Python literals or strings; unknown keys and invalid values refused in one line)."""
    try:
        return parse_option_items(items, "--decode-option")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run_config(config: str, args: argparse.Namespace) -> dict:
    data = load_split(config, args.trajectories, args.base_seed)
    frames, targets = data["frames"], data["targets"]
    n, t = frames.shape[:2]
    opts = {**CONFIGS[config]["decoder"], **args.decode_options}
    warm_n = min(n, args.warm_trajectories)
    warm = frames[:warm_n]
    rows: list[dict] = []
    diags: dict[str, Any] = {}
    clipped = int((data["clipped_pixels"] > 0).sum()) if frames.dtype == np.uint8 else 0
    print(f"[{config}] {n} trajectories, {n * t} frames ({frames.dtype}), {clipped} clipped frames")

    oracle = imaging.targets_to_grid(targets).astype(np.float32)
    dets, first, dt = timed(lambda: decode(frames, oracle, "grid"), lambda: None)
    rows.append({"source": "oracle", "method": "grid", **score(dets, targets), "seconds": dt,
                 "first_call_s": dt})

    sources: list[tuple[str, np.ndarray | None]] = [("physics", None)]
    if not args.no_oracle_seeds:
        sources.append(("oracle-map seeds", oracle))
    if args.maps is not None:
        sources.append(("model", load_maps(args.maps, frames)))
    elif args.workdir is not None:
        sources.append(("model", maps_from_workdir(args.workdir, frames)))
    for source, maps in sources:
        for method in args.methods:
            if source == "oracle-map seeds" and method in ("grid", "peak"):
                continue  # the oracle grid row above is this map's protocol score
            wmaps = None if maps is None else maps[:warm_n]
            if method in ("grid", "peak"):
                res, first, dt = timed(lambda: decode(frames, maps, method, **opts),
                                       lambda: decode(warm, wmaps, method, **opts))
                dec = None
            else:
                mopts, base = dict(opts), method
                if method == "trajectory+star":
                    mopts, base = {**opts, **SEQCSIST_STAR_OPTIONS}, "trajectory"
                dec, first, dt = timed(lambda: decode_arrays(frames, maps, base, **mopts),
                                       lambda: decode_arrays(warm, wmaps, base, **mopts))
                res = dec.to_lists()
            row = {"source": source, "method": method, **score(res, targets), "seconds": dt,
                   "first_call_s": first}
            rows.append(row)
            print(f"[{config}] {source:8s} {method:10s} mAP {row['mAP']:6.2f}  AP05 {row['AP05']:6.2f}  "
                  f"count {row['count_accuracy']:.3f}  rmse {row['rmse']:.4f}  {dt:6.1f} s "
                  f"(first call {first:.1f} s)")
            if dec is not None and not args.no_diagnostics and source != "oracle-map seeds":
                diags[f"{source}/{method}"] = diagnostics(method, dec, data, frames, mopts)
                print(f"[{config}]   diagnostics: {json.dumps(diags[f'{source}/{method}'], default=float)}")
    return {"config": config, "trajectories": n, "scored_frames": n * 16, "decoder_options": opts,
            "rows": rows, "diagnostics": diags}


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"Python {platform.python_version()}, load average {load}")


def markdown(results: list[dict], note: str, command: str = "--config all") -> str:
    lines = ["# Continuous decoding benchmark", "",
             f"`python -m experiments.benchmarks.bench_decode {command}` "
             "(test split, scored frames 2..17).", ""]
    for res in results:
        lines += [f"## `seqcsist/{res['config']}` ({res['trajectories']} trajectories, "
                  f"{res['scored_frames']} scored frames)", "",
                  "| source | decode | CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 | count acc. | RMSE (px) "
                  "| time (s) | frames/s | first call (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            fps = res["trajectories"] * 20 / r["seconds"] if r["seconds"] > 0 else float("inf")
            lines.append(
                f"| {r['source']} | {r['method']} | {r['mAP']:.2f} | {r['AP05']:.2f} | {r['AP10']:.2f} | "
                f"{r['AP15']:.2f} | {r['AP20']:.2f} | {r['AP25']:.2f} | {r['count_accuracy']:.3f} | "
                f"{r['rmse']:.4f} | {r['seconds']:.1f} | {fps:,.0f} | {r['first_call_s']:.1f} |")
        if res["diagnostics"]:
            lines += ["", "Diagnostics:", ""]
            for k, v in res["diagnostics"].items():
                items = ", ".join(f"{a} = {b:.4g}" if isinstance(b, float) else f"{a} = {b}"
                                  for a, b in v.items())
                lines.append(f"- `{k}`: {items}")
        lines.append("")
    lines += [f"Machine: {note}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="default", choices=[*CONFIGS, "all"],
                   help="SeqCSIST builder config whose test split is regenerated (targets_2_8 uses its preset: "
                        "8 targets, 8 trajectory restarts, the rounding-likelihood refit from each restart end)")
    p.add_argument("--maps", type=Path, default=None, help=".npz with 'maps' (N, T or T-4, 33, 33)")
    p.add_argument("--workdir", type=Path, default=None, help="training run directory: maps from its best checkpoint")
    p.add_argument("--trajectories", type=int, default=750, help="test trajectories (the split has 750)")
    p.add_argument("--base-seed", type=int, default=0, help="the TFDS builder's base seed")
    p.add_argument("--methods", nargs="+", default=["grid", "peak", "refine", "trajectory", "trajectory+star"],
                   choices=["grid", "peak", "refine", "trajectory", "trajectory+star"],
                   help="decoders run for every map source, space-separated (grid and peak are skipped for "
                        "the oracle-map seeds)")
    p.add_argument("--warm-trajectories", type=int, default=206,
                   help="trajectories of the warm-up call (>= one chunk so it compiles every shape)")
    p.add_argument("--no-diagnostics", action="store_true",
                   help="skip the error diagnostics (clipping, basins, truth-started fits)")
    p.add_argument("--no-oracle-seeds", action="store_true",
                   help="skip the refine/trajectory rows seeded by the grid-snapped truth (ideal model map)")
    p.add_argument("--decode-option", action="append", default=[], metavar="KEY=VALUE",
                   help="override a decoder option of every row (repeatable), e.g. trajectory_restarts=0 for "
                        "targets_2_8 without its preset's restarts")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="results folder; the default is the committed one (use --tag or another folder to keep "
                        "its files)")
    p.add_argument("--tag", default="", help="suffix of the result files (bench_decode{tag}.json/md)")
    args = p.parse_args(argv)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    args.decode_options = parse_decode_options(args.decode_option)
    configs = list(CONFIGS) if args.config == "all" else [args.config]
    results = [run_config(c, args) for c in configs]
    note = f"{machine()}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bench_decode{args.tag}.json").write_text(
        json.dumps({"results": results, "machine": note}, indent=2, default=float) + "\n")
    (args.out / f"bench_decode{args.tag}.md").write_text(markdown(results, note, command))
    print(markdown(results, note, command))
    print(f"wrote {args.out / f'bench_decode{args.tag}.md'} and .json")


if __name__ == "__main__":
    main()
