"""Continuous decoding (``refine``) on CSIST-100K-style single images: CSO-mAP, time, and where the error goes.

``python -m experiments.benchmarks.bench_decode_csist100k`` decodes a test split of 10,000 images (every image
scored; the metric's distance thresholds do not depend on the brightness threshold 50, which only applies to
grid maps) with

* ``refine, max 4``: the old default count range (silently capped at 4 targets before the count-cap warning);
* ``refine, max 5``: the dataset's count range;
* ``least squares, single-pixel``: max 5 plus the dataset's known geometry (:data:`LEAST_SQUARES`, the previous
  preset): positions kept inside the centroid's pixel, spread-out multi-starts inside it, the minimum-separation
  prior; the least-squares fit is the answer;
* ``refine, CSIST100K_OPTIONS``: the preset (:data:`PRESET`): the least-squares fits find the basins, the chosen
  count's 5 best basins are centred in the set of targets that reproduce the stored bytes
  (:mod:`seqcsist_jax.decode.centre`) and the lowest centring objective wins; each target's score is multiplied
  by its agreement with the other basins' ends (``basin_temperature``);
* ``..., thorough``: the preset with the full LM budget (12 steps, no screening) and 8 candidates: slower.

Each timed call is the first call of its options in the process, so it includes compilation; the preset runs
first (its time is a fresh process's: nothing of it compiled before) and then once more, which times it without
compilation (``warm_seconds``); side by side with it, compiled, the preset without the flux count bound
(``flux_count_bound=None``: the same results, all counts fitted), and in fresh processes that alternate with the
preset's, the preset without background compilation (``SEQCSIST_COMPILE_THREADS=0``, see
:mod:`seqcsist_jax.decode.precompile`: the same results, each program compiled when first called). Diagnostics of
the preset row: AP by true count, clipped vs unclipped images, optimiser basins (images whose fit started at the
truth — 12 LM steps from the truth, then the same centring — reaches a lower centring objective than ours), the
CSO-mAP of that truth-started fit (an oracle start, not a ceiling that the data alone allow), and the share of
images whose fit is a *byte-identical alternative*: it renders (``imaging.render`` + ``imaging.quantize``, the
generator's pipeline) to exactly the stored image and meets every generator constraint (brightness 220–250,
inside the host pixel, pairwise >= 0.494 px), yet puts a target >= 0.1 px from the truth: the stored image
cannot tell the two apart. Three more oracle rows bound what a better search, a better score or a better
choice of basin could gain: a *perfect optimiser* of the same objective (per image, the truth-started fit where
its objective is lower than ours), our detections *perfectly ranked* (scored by their true error), and the *best
of our centred basins* (:func:`best_basin_oracle`: per image, of the decoded fit and the other basins its starts
reached, the one nearest the truth: whether the search reaches the truth's basin at all). A last row measures
the metric rather than the decoder (:func:`hedged_detections`): the same detections plus second guesses ranked
after all of them, which the VOC area AP can only reward. Option trials (``--ablation-images``,
2,000 by default) run the preset with one change each (:data:`ABLATION`) on the first images of the
**validation** split, where the preset's values were chosen (the test split is only reported).

Data: the ``csist100k/default`` test split (``seqcsist_jax.data.csist100k``); ``--standin`` uses the simpler generator
of :mod:`experiments.benchmarks.csist100k_standin` (the first results were measured on it).
Writes ``experiments/benchmarks/results/bench_decode_csist100k.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from seqcsist_jax import fileio, metrics
from seqcsist_jax.decode import (CSIST100K_OPTIONS, CountCapWarning, centre, decode_arrays, frames,
                                 localisation_confidence, make_options)
from experiments.arg_parser import ArgumentParser
from experiments.cli import plain_text

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25")

#: The preset (SPEC §9's geometry, centring, count by the lowest cost).
PRESET: dict[str, Any] = dict(CSIST100K_OPTIONS)
#: The previous preset: CSIST-100K's geometry (1–5 targets inside one pixel, pairwise >= 0.52·1.9σ apart) with
#: the least-squares fit as the answer (BIC count penalty, full LM budget, no centring).
LEAST_SQUARES: dict[str, Any] = dict(max_targets=5, single_pixel=True, layout_starts=6, min_separation=0.494,
                                     uniform_slots=True)
#: The preset with the full LM budget and more candidates: slower, slightly more accurate.
THOROUGH: dict[str, Any] = dict(CSIST100K_OPTIONS, frame_iterations=12, screen_iterations=0, centre_candidates=8)

#: Option trials on the first ``--ablation-images`` validation images (each against the preset on the same
#: images).
ABLATION: list[tuple[str, dict[str, Any]]] = [
    ("no centring (centre_iterations=0)", dict(centre_iterations=0, centre_candidates=1)),
    ("scores without the basin agreement (basin_temperature=0)", dict(basin_temperature=0.0)),
    ("BIC count penalty (count_penalty=4.8)", dict(count_penalty=4.8)),
    ("centre the best basin only (centre_candidates=1)", dict(centre_candidates=1)),
    ("centre unclipped frames too (centre_saturated_only=False)", dict(centre_saturated_only=False)),
    ("sharper rounding likelihood (centre_softness=0.1)", dict(centre_softness=0.1)),
    ("softer rounding likelihood (centre_softness=0.2)", dict(centre_softness=0.2)),
    ("harder walls (centre_wall=0.02)", dict(centre_wall=0.02)),
    ("softer walls (centre_wall=0.05)", dict(centre_wall=0.05)),
    ("full LM budget (frame_iterations=12, no screening)", dict(frame_iterations=12, screen_iterations=0)),
    ("both: centre unclipped frames too and the full LM budget",
     dict(centre_saturated_only=False, frame_iterations=12, screen_iterations=0)),
    ("no flux count bound (flux_count_bound=None; up to 4,096 images are one call, which stops only at its "
     "largest bound)",
     dict(flux_count_bound=None)),
]

#: Published CSIST-100K results (c = 3) and grid ceilings of a perfect detector (SPEC §9).
PUBLISHED = [
    ("DISTA-Net (c=3)", 46.74, 0.38, 7.54, 42.44, 86.18, 97.14),
    ("FOCUS+ (c=3)", 46.53, 0.40, 7.40, 42.20, 85.60, 97.00),
    ("DSCSNet (c=3)", 46.36, None, None, None, None, None),
    ("grid ceiling c=3", 58.8, None, None, None, None, None),
    ("grid ceiling c=5", 79.6, None, None, None, None, None),
    ("grid ceiling c=7", 87.7, None, None, None, None, None),
]


def load_test_split(num: int, seed: int, standin: bool = False,
                    split: str = "test") -> tuple[dict[str, np.ndarray], str]:
    """``images (N, 11, 11)``, ``targets (N, 5, 3)``, ``num_targets``, ``clipped`` (bool per image): the first
    ``num`` images of a ``csist100k/default`` split (built on first use), or of the stand-in generator (whose
    ``validation`` images use ``seed + 1``)."""
    if standin:
        from experiments.benchmarks.csist100k_standin import generate

        seed = seed + (split == "validation")
        d = generate(num, seed)
        d["clipped"] = d["clipped_pixels"] > 0
        return d, f"stand-in generator (experiments/benchmarks/csist100k_standin.py, seed {seed})"
    from seqcsist_jax.data import csist100k

    arrays = csist100k.load_csist100k_arrays("csist100k/default", split)
    images = np.asarray(arrays["image"])[:num]
    targets = np.asarray(arrays["targets"], np.float32)[:num]
    counts = (targets[..., 2] > 0).sum(-1)
    clipped = images.reshape(len(images), -1).max(-1) >= 255
    return {"images": images, "targets": targets, "num_targets": counts, "clipped": clipped}, \
        f"csist100k/default {split} split (TFDS)"


def score(dets: list[np.ndarray], targets: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    idx = np.arange(len(dets)) if mask is None else np.flatnonzero(mask)
    r = metrics.cso_map([dets[i] for i in idx], list(targets[idx]))
    return {k: 100.0 * r[k] for k in KEYS}


def run(options: dict[str, Any], data: dict[str, np.ndarray]) -> tuple[Any, float, float, int]:
    """Decodes every image; returns the result, wall seconds, CPU seconds (all threads) and warnings."""
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CountCapWarning)
        dec = decode_arrays(data["images"][:, None], method="refine", **options)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    flagged = sum(1 for w in caught if issubclass(w.category, CountCapWarning))
    return dec, seconds, cpu, flagged


def _matched_max_distance(p: np.ndarray, q: np.ndarray) -> float:
    from scipy.optimize import linear_sum_assignment

    d = np.sqrt(((p[:, None, :2] - q[None, :, :2]) ** 2).sum(-1))
    r, c = linear_sum_assignment(d)
    return float(d[r, c].max()) if len(r) else 0.0


def byte_identical_distances(dec, data: dict[str, np.ndarray]) -> np.ndarray:
    """``(N,)`` the (optimally matched) largest target distance to the truth of each fit that has the true count,
    renders to exactly the stored 8-bit image and meets every generator constraint (brightness in 220–250,
    inside the truth's host pixel, pairwise >= 0.494 px); NaN for the other fits. Rendered once for every
    threshold of :func:`byte_identical_alternatives`."""
    from seqcsist_jax import imaging

    targets, tc, images = data["targets"], data["num_targets"], data["images"]
    out = np.full(len(tc), np.nan)
    ok = np.flatnonzero(dec.count[:, 0] == tc)
    p = dec.detections[ok, 0, :, :3].astype(np.float64)
    p = np.where((np.arange(p.shape[1]) < tc[ok][:, None])[..., None], p, 0.0)
    same = np.all(np.asarray(imaging.quantize(np.asarray(imaging.render(p, size=11, sigma=0.5)), clip=True))
                  == images[ok], axis=(1, 2))
    for j, i in enumerate(ok):
        k = tc[i]
        q, t = p[j, :k], targets[i, :k].astype(np.float64)
        host = np.floor(t[0, :2] + 0.5)
        d = np.sqrt(((q[:, None, :2] - q[None, :, :2]) ** 2).sum(-1)) + 9.0 * np.eye(k)
        valid = (same[j] and np.all((q[:, 2] >= 220) & (q[:, 2] <= 250)) and d.min() >= 0.52 * 1.9 * 0.5
                 and np.all((q[:, :2] >= host - 0.5) & (q[:, :2] < host + 0.5)))
        if valid:
            out[i] = _matched_max_distance(q, t)
    return out


def byte_identical_alternatives(dec, data: dict[str, np.ndarray], far: float = 0.1,
                                distances: np.ndarray | None = None) -> np.ndarray:
    """``(N,)`` bool: the fit has the true count, renders to exactly the stored 8-bit image, meets every
    generator constraint (brightness in 220–250, inside the truth's host pixel, pairwise >= 0.494 px) and still
    has a target ``>= far`` px from its (optimally matched) true target. ``distances``:
    :func:`byte_identical_distances` of ``dec`` when already computed."""
    d = byte_identical_distances(dec, data) if distances is None else distances
    return np.where(np.isnan(d), False, d >= far)


def objective_values(images: np.ndarray, params: np.ndarray, count: np.ndarray, opts) -> np.ndarray:
    """``(N,)`` centring objective (:func:`seqcsist_jax.decode.centre.centre_objective`, nats) of each image's
    fit ``params (N, K, 3)`` with ``count`` targets."""
    import jax
    import jax.numpy as jnp

    k = params.shape[1]
    fn = jax.jit(jax.vmap(lambda p, a, o: centre.centre_objective(p, a, o, opts)))
    active = np.arange(k)[None, :] < np.asarray(count)[:, None]
    return np.asarray(fn(jnp.asarray(params, jnp.float32), jnp.asarray(active), jnp.asarray(images, jnp.float32)))


def rank_after(primary: list[np.ndarray], extra: list[np.ndarray]) -> list[np.ndarray]:
    """Appends ``extra[i]`` to ``primary[i]`` with its scores shifted below every primary score of the split, so
    the pooled ranking visits all primary detections first. Under the VOC area AP (monotone precision envelope)
    this cannot lower any AP: the primary part of the PR curve is unchanged, the envelope over it can only rise
    and the appended part only adds recall.

    Args:
      primary: one ``(M_i, 4)`` array per frame, rows ``(x, y, brightness, score)``.
      extra: as many ``(E_i, 4)`` arrays, same layout; their scores only order them among themselves (the shift
        is one constant for the split).

    Returns:
      One ``(M_i + E_i, 4)`` float64 array per frame: ``primary[i]`` unchanged, then ``extra[i]``.
    """
    low = min((float(d[:, -1].min()) for d in primary if len(d)), default=0.0)
    top = max((float(e[:, -1].max()) for e in extra if len(e)), default=0.0)
    out = []
    for d, e in zip(primary, extra, strict=True):
        e = np.array(e, np.float64, copy=True)
        if len(e):
            e[:, -1] += low - top - 1.0
        out.append(np.concatenate([d, e]) if len(e) else d)
    return out


def other_basins(dec, data: dict[str, np.ndarray], options: dict[str, Any]):
    """The least-squares fits of every count and the other basins of each image's decoded count, centred.

    Returns ``(fits, centred, obj)``: ``fits`` the :class:`seqcsist_jax.decode.frames.FrameFits` of the images,
    ``centred`` a list of ``A`` arrays ``(N, K, 3)`` (the decoded count's alternative start ends after the first,
    which is the decoded fit's own basin, each centred like the preset's fit; empty with ``centre_candidates=1``)
    and ``obj (N, A)`` their centring objectives (nats; ``inf`` where the alternative is missing).
    """
    opts = make_options(**options)
    images = data["images"]
    n = len(images)
    fits = frames.fit_frames(images, opts)
    count = dec.count[:, 0]
    idx = np.maximum(count - 1, 0)
    centred, obj = [], np.full((n, 0), np.inf, np.float32)
    if fits.alternatives is not None:  # None with centre_candidates=1
        alts = fits.alternatives[np.arange(n), idx, 1:]  # (n, A-1, K, 3); [:, :, 0] is the decoded fit's basin
        ok = fits.alternative_valid[np.arange(n), idx, 1:]
        centred = [centre.centre_fits(images, alts[:, a], count, opts).params for a in range(alts.shape[1])]
        obj = np.stack([np.where(ok[:, a], objective_values(images, c, count, opts), np.inf)
                        for a, c in enumerate(centred)], 1)
    return fits, centred, obj


def best_basin_oracle(dec, data: dict[str, np.ndarray], options: dict[str, Any], basin_fits=None,
                      distinct: float = 0.02) -> tuple[list[np.ndarray], np.ndarray]:
    """An oracle of basin choice: per image, of the decoded fit and the other centred basins of its count
    (:func:`other_basins`), the one whose Hungarian-matched largest target distance to the truth is smallest
    (the decoded fit on ties, where the count is wrong, and over basins within ``distinct`` px of it, matched
    largest distance: those are the same basin). Each of its targets takes the score of the nearest
    decoded target, so the split-wide ranking stays the decoder's.

    Returns the per-image ``(M, 4)`` detections and ``(N,)`` bool, the images where another basin was chosen.
    """
    _, centred, obj = other_basins(dec, data, options) if basin_fits is None else basin_fits
    out, switched = [], np.zeros(len(data["images"]), bool)
    for i, d in enumerate(dec.to_lists()):
        mine = d[0]
        k, t = len(mine), data["targets"][i, : data["num_targets"][i], :2].astype(np.float64)
        best, best_err = mine[:, :3], _matched_max_distance(mine[:, :2], t) if k == len(t) else np.inf
        for a, c in enumerate(centred):
            if k and k == len(t) and np.isfinite(obj[i, a]):
                q = c[i, :k].astype(np.float64)
                e = _matched_max_distance(q[:, :2], t)
                if e < best_err - 1e-9 and _matched_max_distance(q[:, :2], mine[:, :2]) > distinct:
                    best, best_err, switched[i] = q, e, True
        if not k:
            out.append(mine)
            continue
        near = np.sqrt(((best[:, None, :2] - mine[None, :, :2]) ** 2).sum(-1)).argmin(1)
        out.append(np.concatenate([best, mine[near, 3:4]], 1))
    return out, switched


def hedged_detections(dec, data: dict[str, np.ndarray], options: dict[str, Any], basins: int = 4,
                      distinct: float = 0.02, basin_fits=None) -> tuple[list[np.ndarray], float]:
    """A metric-sensitivity probe, not a better estimate: each image's decoded detections unchanged, then
    (ranked after every decoded detection of the split, :func:`rank_after`) second guesses — the targets of
    the chosen count's other basins (up to ``basins``, each centred like the preset's fit, in order of their
    centring objective; a basin counts when its Hungarian-matched largest target distance to the decoded fit
    and to every basin kept before it exceeds ``distinct`` px), then the targets of the neighbouring counts'
    least-squares fits; of all these, only targets farther than ``distinct`` px from every decoded target of
    the image are kept. Second guesses of equal rank share a score across images (ties ranked in input order,
    the protocol's rule).

    Args:
      dec: the :class:`~seqcsist_jax.decode.Decoded` of ``decode_arrays(images[:, None], method="refine",
        **options)`` (one frame per image).
      data: ``images (N, 11, 11)`` and ``num_targets (N,)``.
      options: the decoder options ``dec`` was decoded with.
      basin_fits: :func:`other_basins`'s result for ``dec`` when already computed.

    Returns:
      The per-image ``(M, 4)`` detections (decoded rows first) and all detections (decoded and second guesses)
      per true target.
    """
    opts = make_options(**options)
    n = len(data["images"])
    fits, centred, obj = other_basins(dec, data, options) if basin_fits is None else basin_fits
    count = dec.count[:, 0]
    primary = [d[0] for d in dec.to_lists()]
    extra = []
    for i in range(n):
        k = int(count[i])
        mine = dec.detections[i, 0, :k, :3].astype(np.float64)
        kept, rows = [mine], []
        for rank, a in enumerate(np.argsort(obj[i], kind="stable")):
            if len(kept) > basins or not np.isfinite(obj[i, a]):
                break
            q = centred[a][i, :k].astype(np.float64)
            if min(_matched_max_distance(p, q) for p in kept) > distinct:
                kept.append(q)
                rows.append(np.concatenate([q, np.full((k, 1), -1.0 - rank)], 1))
        for step, kk in enumerate((k + 1, k - 1)):
            if 1 <= kk <= opts.max_targets and np.isfinite(fits.cost[i, kk]):  # (inf: above the flux bound)
                q = fits.params[i, kk - 1, :kk].astype(np.float64)
                rows.append(np.concatenate([q, np.full((kk, 1), -10.0 - step)], 1))
        e = np.concatenate(rows) if rows else np.zeros((0, 4))
        if k and len(e):
            e = e[np.sqrt(((e[:, None, :2] - mine[None, :, :2]) ** 2).sum(-1)).min(1) > distinct]
        extra.append(e)
    out = rank_after(primary, extra)
    return out, sum(len(d) for d in out) / max(int(data["num_targets"].sum()), 1)


def diagnostics(dec, data: dict[str, np.ndarray], options: dict[str, Any]) -> dict[str, Any]:
    targets, tc = data["targets"], data["num_targets"]
    dets = [d[0] for d in dec.to_lists()]
    out: dict[str, Any] = {"count_accuracy": float(np.mean(dec.count[:, 0] == tc))}
    exact_distances = byte_identical_distances(dec, data)  # rendered once for the three thresholds below
    alt = byte_identical_alternatives(dec, data, distances=exact_distances)
    out["byte_identical_alternative_share"] = float(np.mean(alt))
    out["byte_identical_alternative_share_by_count"] = {int(k): float(np.mean(alt[tc == k])) for k in np.unique(tc)}
    out["mAP_by_true_count"] = {int(k): score(dets, targets, tc == k)["mAP"] for k in np.unique(tc)}
    out["mAP_clipped"] = score(dets, targets, data["clipped"])["mAP"]
    out["mAP_unclipped"] = score(dets, targets, ~data["clipped"])["mAP"]
    out["clipped_share"] = float(np.mean(data["clipped"]))
    opts = make_options(**options)
    # The truth-started fit runs the same pipeline: 12 LM steps from the truth, then the same centring.
    lm_opts = make_options(opts, frame_iterations=12)
    p, _, var = frames.fit_from_params(data["images"], targets, tc, lm_opts)
    slots = opts.max_targets
    start = np.zeros((len(tc), slots, 3), np.float32)
    start[:, : p.shape[1]] = p
    centred = centre.centre_fits(data["images"], start, tc, opts)
    p = centred.params
    var_full = np.full((len(tc), slots), np.inf, np.float32)
    var_full[:, : var.shape[1]] = var
    var = np.where(centred.centred[:, None], centred.pos_var, var_full)
    cost = objective_values(data["images"], p, tc, opts)
    ours_p = np.zeros((len(tc), slots, 3), np.float32)
    ours_p[:, :, :] = dec.detections[:, 0, :, :3]
    ours = objective_values(data["images"], ours_p, dec.count[:, 0], opts)
    # Only centred (clipped) images: elsewhere both fits are plain least squares and the objective says little.
    lower = (cost < ours - 1e-3) & (dec.count[:, 0] == tc) & data["clipped"]
    out["truth_start_lower_cost_share"] = float(np.mean(lower))
    out["truth_start_lower_cost_share_by_count"] = {int(k): float(np.mean(lower[tc == k])) for k in np.unique(tc)}
    sc = localisation_confidence(var, opts.score_radius)
    truth = [np.concatenate([p[i, : tc[i]], sc[i, : tc[i], None]], 1) for i in range(len(tc))]
    out["truth_start"] = score(truth, targets)
    out["truth_start_by_true_count"] = {int(k): score(truth, targets, tc == k)["mAP"] for k in np.unique(tc)}
    # What a perfect optimiser of the same objective would score: per image the truth-started fit where its
    # objective is lower than ours (every basin our starts missed is found, nothing else changes).
    out["optimiser_ceiling"] = score([truth[i] if lower[i] else dets[i] for i in range(len(tc))], targets)
    # What a perfect ranking of our detections would score (each ranked by its true error: an oracle).
    oracle = []
    for i, d in enumerate(dets):
        t = targets[i, : tc[i], :2].astype(np.float64)
        err = np.sqrt(((d[:, None, :2] - t[None]) ** 2).sum(-1)).min(1) if len(d) and len(t) else np.zeros(len(d))
        oracle.append(np.concatenate([d[:, :-1], -err[:, None]], 1))
    out["oracle_ranking"] = score(oracle, targets)
    out["byte_identical_alternative_share_005"] = float(np.mean(byte_identical_alternatives(
        dec, data, far=0.05, distances=exact_distances)))
    basin_fits = other_basins(dec, data, options)
    # Whether the search finds the truth's basin at all: the best of our centred basins, chosen by the truth.
    best, switched = best_basin_oracle(dec, data, options, basin_fits)
    exact = ~np.isnan(exact_distances)  # the decoded fit reproduces the image and is feasible
    out["best_basin"] = {**score(best, targets), "switched_share": float(np.mean(switched)),
                         "switched_decoded_exact_share": float(np.mean(exact[switched])) if switched.any()
                         else 0.0}
    hedged, per_target = hedged_detections(dec, data, options, basin_fits=basin_fits)
    out["hedged"] = {**score(hedged, targets), "detections_per_target": per_target}
    return out


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"Python {platform.python_version()}, load average {load}")


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Continuous decoding on CSIST-100K-style single images", "",
             f"`{res.get('command', 'python -m experiments.benchmarks.bench_decode_csist100k')}` — {res['images']} test images, "
             f"every image scored. Data: {res['data']}.", "",
             "| method | images | CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 | count acc. | flagged at cap "
             "| wall s incl. compile | CPU s (all threads) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = ("flagged at cap: images whose chosen count equals max_targets (the decoder warns; for CSIST-100K, 5 is "
             "the dataset's own maximum, so these are expected).")
    for r in res["rows"]:
        lines.append(f"| {r['name']} | {r['images']} | {r['mAP']:.2f} | {r['AP05']:.2f} | {r['AP10']:.2f} | {r['AP15']:.2f} "
                     f"| {r['AP20']:.2f} | {r['AP25']:.2f} | {r['count_accuracy']:.4f} | {r['at_cap']} "
                     f"| {r['seconds']:.1f} | {r['cpu_seconds']:.1f} |")
    t = res["diagnostics"]["truth_start"]
    lines.append(f"| fit started at the truth (oracle start: 12 LM steps, then the same centring) | {res['images']} | "
                 f"{t['mAP']:.2f} | "
                 f"{t['AP05']:.2f} | {t['AP10']:.2f} | {t['AP15']:.2f} | {t['AP20']:.2f} | {t['AP25']:.2f} "
                 "| – | – | – | – |")
    d = res["diagnostics"]
    for key, label in (("optimiser_ceiling", "perfect optimiser of the same objective (oracle: lower centring "
                                             "objective of ours and the truth-started fit, per image)"),
                       ("oracle_ranking", "our detections, perfectly ranked (oracle: scored by their true error)"),
                       ("best_basin", "the best of our centred basins (oracle: per image, of the decoded fit and the "
                                      "other basins its count's starts reached, each centred, the one nearest the "
                                      "truth; another basin in "
                                      f"{100 * d.get('best_basin', {}).get('switched_share', 0):.1f}% of the images)"),
                       ("hedged", "metric sensitivity, not an estimate: the same detections plus second guesses "
                                  "ranked after all of them (other basins, neighbouring counts; "
                                  f"{d.get('hedged', {}).get('detections_per_target', 0):.2f} detections per target)")):
        if key in d:
            t = d[key]
            lines.append(f"| {label} | {res['images']} | {t['mAP']:.2f} | {t['AP05']:.2f} | {t['AP10']:.2f} "
                         f"| {t['AP15']:.2f} | {t['AP20']:.2f} | {t['AP25']:.2f} | – | – | – | – |")
    if "hedged" in d:
        lines.append("| (the metric-sensitivity row appends detections ranked after every decoded one; the VOC area AP "
                     "cannot fall when detections are appended below all others, so it measures the metric, not "
                     "the decoder) | | | | | | | | | | | |")
    if res["images"] < 2000:
        lines.append(f"| (only {res['images']} images: compilation dominates the times and a sample this small can "
                     "reorder rows that differ by a few tenths) | | | | | | | | | | | |")
    for name, *vals in PUBLISHED:
        cells = " | ".join("–" if v is None else f"{v:.2f}" for v in vals)
        lines.append(f"| published: {name} | 10000 | {cells} | – | – | – | – |")
    d = res["diagnostics"]
    warm = [r for r in res["rows"] if "warm_seconds" in r]
    if warm:
        r = warm[0]
        fresh = res.get("fresh_seconds") or [r["seconds"]]
        spread = (f" In {len(fresh)} fresh processes (this row's and {len(fresh) - 1} more) it took "
                  f"{', '.join(f'{x:.1f}' for x in fresh)} s: median {float(np.median(fresh)):.1f} s."
                  if len(fresh) > 1 else "")
        if "warm_seconds_without_flux_bound" in r:
            reps = r["warm_seconds_repeats"]
            spread += (f" Compiled, side by side in this process: the preset {', '.join(f'{x:.1f}' for x in reps)} s "
                       f"(before and after), without the flux count bound (`flux_count_bound=None`, the same "
                       f"results) {r['warm_seconds_without_flux_bound']:.1f} s: "
                       f"{float(np.mean(reps)) / r['warm_seconds_without_flux_bound']:.2f}× its time.")
        serial = res.get("fresh_seconds_without_background_compile") or []
        if serial:
            spread += (f" Without background compilation (`SEQCSIST_COMPILE_THREADS=0`: each program compiles when "
                       f"first called, nothing else running meanwhile; the same results), in {len(serial)} fresh "
                       f"processes alternating with those: {', '.join(f'{x:.1f}' for x in serial)} s: median "
                       f"{float(np.median(serial)):.1f} s (the preset's median is "
                       f"{float(np.median(fresh)) / float(np.median(serial)):.2f}× that).")
        lines += ["", f"`{r['name']}` ran first in a fresh process: its {r['seconds']:.1f} s wall includes compiling "
                      f"every program it uses; the same call again in the same process, already compiled, took "
                      f"{r['warm_seconds']:.1f} s ({r['warm_cpu_seconds']:.1f} CPU s).{spread} The other rows ran "
                      "after it in the same process."]
    lines += ["", f"Diagnostics of `{res['diagnosed']}`:", "",
              "| true count | " + " | ".join(str(k) for k in d["mAP_by_true_count"]) + " |",
              "|---|" + "---|" * len(d["mAP_by_true_count"]),
              "| CSO-mAP | " + " | ".join(f"{v:.2f}" for v in d["mAP_by_true_count"].values()) + " |",
              "| truth-started CSO-mAP | " + " | ".join(
                  f"{v:.2f}" for v in d["truth_start_by_true_count"].values()) + " |",
              "| truth start reaches a lower objective | " + " | ".join(
                  f"{100 * v:.1f}%" for v in d["truth_start_lower_cost_share_by_count"].values()) + " |",
              "| byte-identical alternative (fit >= 0.1 px off) | " + " | ".join(
                  f"{100 * v:.1f}%" for v in d["byte_identical_alternative_share_by_count"].values()) + " |",
              "", f"- clipped images ({100 * d['clipped_share']:.1f}%): CSO-mAP {d['mAP_clipped']:.2f}; "
              f"unclipped: {d['mAP_unclipped']:.2f}",
              f"- images whose truth-started fit reaches a lower centring objective, as a share of all images "
              f"(only clipped images count: only their fits are centred; our starts missed a better basin): "
              f"{100 * d['truth_start_lower_cost_share']:.2f}%",
              f"- byte-identical alternatives (the fit renders to exactly the stored image, meets every generator "
              f"constraint, and has a target >= 0.1 px off): {100 * d['byte_identical_alternative_share']:.2f}% "
              "of the images: the stored image cannot tell that fit from the truth (a lower bound on the ambiguous "
              "images; no decoder can be sure of them at the 0.05 and 0.10 px thresholds)"]
    if "byte_identical_alternative_share_005" in d:
        lines.append(f"- the same with a target >= 0.05 px off: {100 * d['byte_identical_alternative_share_005']:.2f}% "
                     "of the images (at the 0.05 px threshold the stored image cannot tell that fit from the truth)")
    if "best_basin" in d:
        b = d["best_basin"]
        lines.append(f"- the best of our centred basins (oracle row above) differs from the decoded fit in "
                     f"{100 * b['switched_share']:.2f}% of the images: there the search found a basin nearer the truth "
                     f"and the objective preferred another; in {100 * b['switched_decoded_exact_share']:.1f}% of "
                     "those the decoded fit itself renders to exactly the stored image and meets every generator "
                     "constraint, so the image gives no reason to prefer the basin nearer the truth")
    if res.get("ablation"):
        lines += ["", f"Option trials (`CSIST100K_OPTIONS` plus one change, first {res['ablation'][0]['images']} "
                  f"images of the {res.get('ablation_data', 'validation split')}"
                  + ("" if "stand-in" in res.get("ablation_data", "") else ", where the preset was chosen") + "; "
                  "wall s incl. compile" + ("; a sample this small can reorder options that differ by a "
                  "few tenths: compare on 2,000 images or more" if res["ablation"][0]["images"] < 2000 else "")
                  + "):", "",
                  "| options | CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 | wall s |", "|---|---|---|---|---|---|---|---|"]
        for r in res["ablation"]:
            lines.append(f"| {r['name']} | {r['mAP']:.2f} | {r['AP05']:.2f} | {r['AP10']:.2f} | {r['AP15']:.2f} "
                         f"| {r['AP20']:.2f} | {r['AP25']:.2f} | {r['seconds']:.1f} |")
    lines += ["", notes, "",
              f"Machine: {res['machine']} (shared; timings under that load).", ""]
    return "\n".join(lines)


def fresh_process_seconds(args: argparse.Namespace, background_compile: bool = True) -> float:
    """Wall seconds of the preset on the same images in a new Python process (compilation included), with the
    decoder's background compilation (:mod:`seqcsist_jax.decode.precompile`) or without it
    (``SEQCSIST_COMPILE_THREADS=0``: every program compiles when first called)."""
    cmd = [sys.executable, "-m", "experiments.benchmarks.bench_decode_csist100k", "--time-preset-only",
           "--images", str(args.images), "--seed", str(args.seed)] + (["--standin"] if args.standin else [])
    env = {k: v for k, v in os.environ.items() if k != "SEQCSIST_COMPILE_THREADS"}
    if not background_compile:
        env["SEQCSIST_COMPILE_THREADS"] = "0"
    out = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, env=env)
    if out.returncode:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: the fresh-process timing ({' '.join(cmd[1:])}) failed: {tail}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=plain_text(__doc__.split("\n\n")[0]),
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       epilog="Without --standin the TFDS dataset csist100k/default is built on first use "
                              "(about a minute; in $TFDS_DATA_DIR, else ~/tensorflow_datasets). The "
                              "defaults take about 10 minutes on 2 cores.")
    p.add_argument("--images", type=int, default=10_000, help="test images decoded (the first N of the test split)")
    p.add_argument("--seed", type=int, default=100_000,
                   help="seed of the --standin generator (its option-trial images use seed + 1)")
    p.add_argument("--skip-baselines", action="store_true", help="only the CSIST100K_OPTIONS row (and its diagnostics)")
    p.add_argument("--baseline-images", type=int, default=10_000, help="images of the other rows (max 4, max 5, least squares, thorough)")
    p.add_argument("--ablation-images", type=int, default=2000,
                   help="images of the option trials, from the validation split (with --standin: the stand-in "
                        "generator at --seed + 1; 0: skip them)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="folder of the results files (the default is the committed results folder: a run "
                        "replaces the files the README quotes; pass another folder to keep them)")
    p.add_argument("--tag", default="", help="suffix of the results files, e.g. _tfds")
    p.add_argument("--standin", action="store_true", help="use the stand-in generator instead of csist100k/default")
    p.add_argument("--fresh-runs", type=int, default=2,
                   help="N more fresh processes that time the preset alone, after the first run's own (the machine's "
                        "load varies: the report gives all fresh-process times and their median), and N + 1 "
                        "fresh processes of the preset without background compilation, alternating with them "
                        "(0: none of either)")
    p.add_argument("--time-preset-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    data, source = load_test_split(args.images, args.seed, args.standin)
    if args.time_preset_only:  # one fresh-process sample for --fresh-runs
        _, seconds, cpu, _ = run(PRESET, data)
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu}))
        return
    # The preset runs first, so its time is that of a fresh process (every program compiled by this call).
    variants = [("refine, CSIST100K_OPTIONS (centred)", PRESET)]
    if not args.skip_baselines:
        variants += [("refine, max 4 (old default)", {}), ("refine, max 5", dict(max_targets=5)),
                     ("least squares, single-pixel (previous preset)", LEAST_SQUARES),
                     ("CSIST100K_OPTIONS, thorough (12 LM steps, no screening, 8 candidates)", THOROUGH)]
    trials = f"{len(ABLATION) + 1} option trials on {args.ablation_images} validation images" \
        if args.ablation_images else "no option trials"
    print(f"{source}: {len(data['images'])} images. The preset first (in this fresh process, then compiled, side by "
          f"side), its diagnostics, {len(variants) - 1} other rows, "
          f"{2 * args.fresh_runs + bool(args.fresh_runs)} fresh-process timings, {trials}; each step prints a line "
          "when it finishes (the defaults take about 10 minutes on 2 cores).", flush=True)
    rows = []
    for name, options in variants:
        sub = data if options is PRESET else {k: v[: args.baseline_images] for k, v in data.items()}
        dec, seconds, cpu, flagged = run(options, sub)
        at_cap = int(dec.at_cap.sum())
        row = {"name": name, "options": options, "images": len(sub["images"]),
               **score([d[0] for d in dec.to_lists()], sub["targets"]),
               "count_accuracy": float(np.mean(dec.count[:, 0] == sub["num_targets"])), "at_cap": at_cap,
               "warned": bool(flagged), "seconds": seconds, "cpu_seconds": cpu}
        if options is PRESET:  # the same call again: the time without compilation
            _, row["warm_seconds"], row["warm_cpu_seconds"], _ = run(options, sub)
            # Side by side, compiled: the preset without the flux count bound (one call to compile it, then
            # timed), then the preset once more.
            unbounded = {**PRESET, "flux_count_bound": None}
            run(unbounded, sub)
            _, row["warm_seconds_without_flux_bound"], _, _ = run(unbounded, sub)
            _, again, _, _ = run(options, sub)
            row["warm_seconds_repeats"] = [row["warm_seconds"], again]
        rows.append(row)
        print(f"{name:70s} mAP {row['mAP']:6.2f}  AP05 {row['AP05']:6.2f}  count {row['count_accuracy']:.4f}  "
              f"at cap {at_cap}  {seconds:6.1f} s wall, {cpu:6.1f} s CPU (incl. compile)"
              + (f"; again {row['warm_seconds']:.1f} s (without the flux count bound "
                 f"{row['warm_seconds_without_flux_bound']:.1f} s)" if "warm_seconds" in row else ""), flush=True)
        if options is PRESET:
            diagnosed, diag = name, diagnostics(dec, data, options)
            print("diagnostics of the preset (truth-started fits, byte-identical alternatives) done", flush=True)
    # Side by side: fresh processes of the preset alternate with the preset without background compilation (the
    # machine's speed drifts; alternating spreads the drift over both).
    fresh, serial = [rows[0]["seconds"]], []
    for i in range(args.fresh_runs):
        serial.append(fresh_process_seconds(args, background_compile=False))
        fresh.append(fresh_process_seconds(args))
        print(f"fresh-process timing {i + 1} of {args.fresh_runs}: preset {fresh[-1]:.1f} s, without background "
              f"compilation {serial[-1]:.1f} s", flush=True)
    if args.fresh_runs:
        serial.append(fresh_process_seconds(args, background_compile=False))
        print(f"preset in fresh processes: {', '.join(f'{x:.1f}' for x in fresh)} s; without background "
              f"compilation: {', '.join(f'{x:.1f}' for x in serial)} s", flush=True)
    ablation = []
    ablation_source = None
    if args.ablation_images:
        sub, ablation_source = load_test_split(args.ablation_images, args.seed, args.standin, split="validation")
        for name, extra in [("preset (CSIST100K_OPTIONS)", {})] + ABLATION:
            dec, seconds, _, _ = run({**PRESET, **extra}, sub)
            ablation.append({"name": name, "options": extra, "images": len(sub["images"]),
                             **score([d[0] for d in dec.to_lists()], sub["targets"]), "seconds": seconds})
            print(f"ablation: {name:60s} mAP {ablation[-1]['mAP']:6.2f}", flush=True)
    res = {"data": source, "images": len(data["images"]), "rows": rows, "diagnostics": diag, "diagnosed": diagnosed,
           "ablation": ablation, "ablation_data": ablation_source, "machine": machine(), "fresh_seconds": fresh,
           "fresh_seconds_without_background_compile": serial,
           "command": " ".join(["python -m experiments.benchmarks.bench_decode_csist100k", *(argv if argv is not None
                                                                                           else sys.argv[1:])])}
    args.out.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(args.out / f"bench_decode_csist100k{args.tag}.json", res, indent=2, default=float)
    fileio.atomic_write(args.out / f"bench_decode_csist100k{args.tag}.md", markdown(res))
    print(markdown(res))
    print(f"wrote {args.out / f'bench_decode_csist100k{args.tag}.md'} and .json")


if __name__ == "__main__":
    main()
