"""Per-frame continuous fitting (the ``refine`` decoder and the starts of the ``trajectory`` decoder).

For every frame and every count ``K = 1..max_targets`` the decoder fits ``K`` targets ``(x, y, b)`` to the
8-bit frame by Levenberg–Marquardt on the forward model of :mod:`seqcsist_jax.decode.forward` (censored at
the clip level), plus the optional Gaussian brightness prior. Counts are grown greedily, each from the best
fit with one target fewer, from several starts:

* **add**: the ``K-1`` targets plus a new one where the matched filter of the residual peaks — the residual
  ``obs - pred`` correlated with the PSF of every 1/3-px grid point, normalised to signal-to-noise units (this
  is one step of matching pursuit on Φ);
* **split**: the ``K-1`` targets with the one nearest that peak replaced by two, 0.4 px apart along the
  direction to the peak, each with half its brightness (a ``K-1`` fit often sits between two close targets,
  where "add" starts in the wrong basin);
* **map**: the ``K`` strongest peaks of a model's label map (DeRefNet, ISTA, …), when maps are given.

* **layouts** (``single_pixel`` with ``layout_starts > 0``, ``K >= 3``): ``K`` targets spread inside the
  pixel that holds the frame's intensity centroid (:func:`pixel_layouts`). When 4–5 targets share one
  saturated pixel (CSIST-100K, SPEC §9) the greedy add/split chain often ends in a wrong basin; these starts
  do not depend on the ``K-1`` fit.

Known geometry can constrain the fits (CSIST-100K): ``single_pixel`` keeps every position inside the
centroid's pixel (a box projection after each step), ``min_separation`` adds a soft hinge penalty on pairs
closer than the generator allows (:func:`separation_residuals`), ``brightness_range`` boxes the brightnesses.

The best start (lowest cost) is kept for each ``K``. The count (``K = 0``, the empty model, included) is
chosen by a BIC-like criterion ``cost_K / s² + count_penalty · 3K`` (:func:`count_criterion`);
``s² = 1/12 + noise_sigma²`` is the per-pixel residual variance at the truth. Every fit also returns the
posterior position variance ``s²·diag((JᵀJ)⁻¹)`` of each target, used by the scores.

Compilation: a fit with ``K`` targets runs in a fixed number of *slots* (``K`` rounded up to 1, 2, 4, 8, …,
but never more than ``max_targets``: with ``max_targets = 5`` the ``K = 5`` fits run in 5 slots, 2.5× faster
than in 8);
unused slots have zero brightness, zero Jacobian columns and an identity block in ``JᵀJ``, so they never
move. Each slot count compiles once per chunk shape and serves every ``K`` up to it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import imaging
from seqcsist_jax.decode import forward, precompile
from seqcsist_jax.decode.lm import levenberg_marquardt
from seqcsist_jax.decode.options import DecodeOptions

__all__ = [
    "FrameFits",
    "fit_frames",
    "count_criterion",
    "frame_objective",
    "position_variances",
    "slots_for",
    "empty_cost",
    "fit_from_params",
    "pixel_layouts",
    "stage_programs",
    "separation_residuals",
    "balanced_chunk",
]

_MIN_BRIGHTNESS = 1.0
_SPLIT_HALF_DISTANCE = 0.2


class FrameFits(NamedTuple):
    """Per-frame fits for every count, padded over ``K``.

    Attributes:
      params: ``(F, Kmax, Kmax, 3)``: ``params[f, K-1, :K]`` are the ``K``-target fit's rows ``(x, y, b)``.
      cost: ``(F, Kmax + 1)`` final cost (censored squared residuals + prior term) of each count's fit;
        ``cost[:, 0]`` is the empty model's (``Σ obs²``); ``inf`` for counts above the frame's flux bound
        (``flux_count_bound``; their params are zero, their variances ``inf``, no alternatives).
      pos_var: ``(F, Kmax, Kmax)`` mean of the x and y posterior variances of each target (px²).
      alternatives: ``(F, Kmax, A, Kmax, 3)`` with ``A = centre_candidates > 1``: the ends of the ``A``
        lowest-cost starts of each count's fit that reached distinct basins (``alternatives[f, K-1, 0]`` is
        ``params[f, K-1]``); ``None`` when ``A == 1``.
      alternative_valid: ``(F, Kmax, A)`` bool, which alternatives exist (``None`` when ``A == 1``).
    """

    params: np.ndarray
    cost: np.ndarray
    pos_var: np.ndarray
    alternatives: np.ndarray | None = None
    alternative_valid: np.ndarray | None = None


def balanced_chunk(n: int, limit: int) -> int:
    """Items per jitted call for ``n`` items and at most ``limit`` per call: the fewest calls, split evenly.

    Every call is padded to this size (one compiled shape), so the padding is below the number of calls:
    10,000 images at ``limit = 4096`` run as 3 calls of 3,334 (2 padded) instead of 3 of 4,096 (2,288 padded,
    23% of the work wasted).
    """
    n, limit = max(1, int(n)), max(1, int(limit))
    calls = -(-n // limit)
    return -(-n // calls)


def slots_for(k: int) -> int:
    """Slots a ``k``-target fit runs in: ``k`` rounded up to a power of two (1, 2, 4, 8, …)."""
    return 1 << max(0, int(k) - 1).bit_length()


def _prior_terms(slots: int, opts: DecodeOptions, dtype) -> tuple[jax.Array, jax.Array]:
    """Prior precision (in cost units) and mean over a ``(slots·3,)`` parameter vector."""
    weight = np.zeros((slots, 3), np.float32)
    mean = np.zeros((slots, 3), np.float32)
    if opts.brightness_prior is not None:
        mu, sd = opts.brightness_prior
        weight[:, 2] = opts.noise_variance / sd**2
        mean[:, 2] = mu
    return jnp.asarray(weight.reshape(-1), dtype), jnp.asarray(mean.reshape(-1), dtype)


def masked_normal(jtj: jax.Array, jtr: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Freezes the parameters where ``mask`` is false: zero their rows/columns and put 1 on the diagonal."""
    m = mask.astype(jtj.dtype)
    return jtj * m[:, None] * m[None, :] + jnp.diag(1.0 - m), jtr * m


def _position_box(obs: jax.Array, opts: DecodeOptions) -> tuple[jax.Array, jax.Array]:
    """``(2,)`` lower and upper bounds of every target position in one frame's fit.

    The frame (slightly beyond it) by default; with ``opts.single_pixel`` the pixel holding the intensity
    centroid (the group's brightness-weighted centre lies inside the pixel that holds every target; clipping
    flattens the peak but keeps its centre).
    """
    size = obs.shape[-1]
    if not opts.single_pixel:
        return jnp.full((2,), -1.0, obs.dtype), jnp.full((2,), float(size), obs.dtype)
    centre = jnp.round(_centroid_start(obs, 1)[0, :2])
    return centre - 0.5, centre + 0.5


def separation_residuals(theta: jax.Array, active: jax.Array, opts: DecodeOptions) -> jax.Array:
    """``(slots²,)`` residuals of the minimum-separation prior: ``s·max(0, d_min - d_ij)/w`` per active pair.

    ``d_min = opts.min_separation``, ``w = opts.separation_width``: a pair closer than the generator allows
    costs ``s²·((d_min - d)/w)²`` (zero at or beyond ``d_min``), in the units of the data cost. ``theta``
    ``(3·slots,)`` rows ``(x, y, b)``; ``active (slots,)``.
    """
    slots = active.shape[0]
    xy = theta.reshape(slots, 3)[:, :2]
    diff = xy[:, None, :] - xy[None, :, :]
    d = jnp.sqrt(jnp.sum(diff * diff, -1) + 1e-12)
    upper = jnp.triu(jnp.ones((slots, slots), bool), 1) & active[:, None] & active[None, :]
    scale = float(np.sqrt(opts.noise_variance)) / opts.separation_width
    return (scale * jnp.where(upper, jnp.maximum(opts.min_separation - d, 0.0), 0.0)).reshape(-1)


def frame_objective(obs: jax.Array, active: jax.Array, opts: DecodeOptions):
    """``normal_fn``, ``cost_fn`` and ``project`` of one frame's fit over ``theta (3·slots,)``.

    Args:
      obs: ``(S, S)`` observed frame.
      active: ``(slots,)`` bool, the slots holding targets (inactive slots have brightness 0 and stay fixed).
    """
    slots = active.shape[0]
    sat = forward.saturated_pixels(obs, opts.clip_level, opts.max_saturated)
    pw, pm = _prior_terms(slots, opts, obs.dtype)
    pmask = jnp.repeat(active, 3)
    pw = pw * pmask

    sep = opts.min_separation is not None and slots > 1

    def normal_fn(theta):
        jtj, jtr, cost = forward.frame_normal_equations(
            theta.reshape(slots, 3), obs, opts.clip_level, sat, opts.sigma
        )
        if sep:
            r = separation_residuals(theta, active, opts)
            jac = jax.jacfwd(separation_residuals)(theta, active, opts)
            jtj, jtr, cost = jtj + jac.T @ jac, jtr + jac.T @ r, cost + jnp.sum(r * r)
        dev = theta - pm
        jtj, jtr = masked_normal(jtj + jnp.diag(pw), jtr + pw * dev, pmask)
        return jtj, jtr, cost + jnp.sum(pw * dev * dev)

    def cost_fn(theta):
        dev = theta - pm
        data = forward.frame_cost(theta.reshape(slots, 3), obs, opts.clip_level, opts.sigma)
        if sep:
            data = data + jnp.sum(separation_residuals(theta, active, opts) ** 2)
        return data + jnp.sum(pw * dev * dev)

    lo_xy, hi_xy = _position_box(obs, opts)
    b_lo, b_hi = opts.brightness_range if opts.brightness_range is not None else (_MIN_BRIGHTNESS, jnp.inf)

    def project(theta):
        p = theta.reshape(slots, 3)
        xy = jnp.clip(p[:, :2], lo_xy, hi_xy)
        b = jnp.where(active, jnp.clip(p[:, 2], b_lo, b_hi), 0.0)
        return jnp.concatenate([xy, b[:, None]], axis=1).reshape(-1)

    return normal_fn, cost_fn, project


def position_variances(jtj: jax.Array, noise_variance: float, per_target: int = 3) -> jax.Array:
    """Mean x/y posterior variance ``s²·diag((JᵀJ)⁻¹)`` per target (parameters ``(x, y, …)`` per target).

    The inverse is taken after Jacobi scaling (unit diagonal) with ``1e-6`` added to that diagonal, so a
    singular or nearly singular ``JᵀJ`` gives a large finite variance; elsewhere the result is within about
    ``1e-6·κ`` (relative, ``κ`` the scaled matrix's condition number) of the exact inverse.

    Args:
      jtj: ``(P, P)`` normal matrix (with frozen parameters as identity blocks).
      per_target: parameters per target, positions first.

    Returns:
      ``(P / per_target,)`` px², finite (singular directions give a large variance, not inf/NaN).
    """
    p = jtj.shape[-1]
    eye = jnp.eye(p, dtype=jtj.dtype)
    scale = jnp.sqrt(jnp.clip(jnp.diag(jtj), 1e-12, None))
    # Jacobi scaling: positions (px) and brightness (grey levels) differ by orders of magnitude.
    scaled = jtj / (scale[:, None] * scale[None, :]) + 1e-6 * eye
    inv_diag = jnp.diag(forward.spd_solve_many(scaled, eye)) / scale**2
    var = noise_variance * inv_diag.reshape(-1, per_target)
    out = 0.5 * (var[:, 0] + var[:, 1])
    return jnp.where(jnp.isfinite(out) & (out > 0), out, 1e6)


def _fit_one(start: jax.Array, active: jax.Array, obs: jax.Array, opts: DecodeOptions,
             iterations: int | None = None):
    slots = start.shape[0]
    normal_fn, cost_fn, project = frame_objective(obs, active, opts)
    its = opts.frame_iterations if iterations is None else iterations
    res = levenberg_marquardt(project(start.reshape(-1)), normal_fn, cost_fn, project, its)
    return res.theta.reshape(slots, 3), res.cost, res.jtj


def start_rank(cost: jax.Array, jtj: jax.Array, opts: DecodeOptions) -> jax.Array:
    """``(M,)`` rank key of the ends of ``M`` starts of one fit (lower is better): ``cost/s²``, plus
    ``evidence_weight · log det JᵀJ`` when that option is set (weight 1: minus twice the log of the basin's
    Laplace-approximated posterior mass, so a broad basin beats a slightly lower but sharp one)."""
    key = cost / opts.noise_variance
    if opts.evidence_weight:
        key = key + opts.evidence_weight * jax.vmap(forward.spd_logdet)(jtj)
    return key


#: Two start ends whose costs differ by less than this (relative) are taken as the same basin.
_SAME_BASIN = 1e-4


def distinct_ends(rank: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """Indices ``(count,)`` of the lowest ``rank`` entries (``(M,)``, ``inf`` = invalid) after dropping ends
    whose rank is within :data:`_SAME_BASIN` (relative) of a better one, and ``(count,)`` bool validity."""
    order = jnp.argsort(rank)
    r = rank[order]
    prev = jnp.concatenate([jnp.full((1,), -jnp.inf, r.dtype), r[:-1]])
    dup = (r - prev) <= _SAME_BASIN * jnp.maximum(jnp.abs(r), 1.0)
    key = jnp.where(dup | ~jnp.isfinite(r), jnp.inf, r)
    neg, pos = jax.lax.top_k(-key, min(count, rank.shape[0]))
    idx, ok = order[pos], jnp.isfinite(neg)
    if count > rank.shape[0]:
        pad = count - rank.shape[0]
        idx = jnp.concatenate([idx, jnp.zeros((pad,), idx.dtype)])
        ok = jnp.concatenate([ok, jnp.zeros((pad,), bool)])
    return idx, ok


def _fit_starts(starts: jax.Array, valid: jax.Array, active: jax.Array, obs: jax.Array, opts: DecodeOptions):
    """Best fit over ``starts (M, slots, 3)`` (invalid ones ignored): ``params, cost, jtj`` of the winner, and
    the ``opts.centre_candidates`` best distinct ends ``(A, slots, 3)`` with their ``(A,)`` validity.

    "Best" is the lowest :func:`start_rank` (the lowest cost unless ``evidence_weight`` is set). With
    ``opts.screen_iterations > 0`` and more than ``screen_keep`` starts, every start first runs that many LM
    iterations and only the ``screen_keep`` best continue for the rest of ``frame_iterations`` (most starts
    are clearly in a worse basin after a few steps; this halves the cost of the many-start stages).
    """
    m = starts.shape[0]
    screen, keep_n = opts.screen_iterations, opts.screen_keep
    if 0 < screen < opts.frame_iterations and m > keep_n:
        params, cost, jtj = jax.vmap(lambda st: _fit_one(st, active, obs, opts, screen))(starts)
        rank = jnp.where(valid, start_rank(cost, jtj, opts), jnp.inf)
        _, keep = jax.lax.top_k(-rank, keep_n)
        starts, valid = params[keep], valid[keep]
        rest = opts.frame_iterations - screen
        params, cost, jtj = jax.vmap(lambda st: _fit_one(st, active, obs, opts, rest))(starts)
    else:
        params, cost, jtj = jax.vmap(lambda st: _fit_one(st, active, obs, opts))(starts)
    rank = jnp.where(valid, start_rank(cost, jtj, opts), jnp.inf)
    best = jnp.argmin(rank)
    if opts.centre_candidates > 1:
        idx, ok = distinct_ends(rank, opts.centre_candidates)
        alts, alt_ok = params[idx], ok
    else:
        alts, alt_ok = params[best][None], jnp.ones((1,), bool)
    return params[best], cost[best], jtj[best], alts, alt_ok


@functools.lru_cache(maxsize=4)
def _grid_filter(size: int, c: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    coords = imaging.grid_coordinates(c, size)
    a = imaging.pixel_integrals(coords, size, sigma).astype(np.float32)  # (n, S)
    return a, coords.astype(np.float32)


def _matched_filter_peak(resid: jax.Array, opts: DecodeOptions) -> jax.Array:
    """``(3,)`` start ``(x, y, b)`` of a new target: the grid point whose PSF best matches the residual."""
    size = resid.shape[-1]
    a_np, coords_np = _grid_filter(size, opts.c, opts.sigma)
    a, coords = jnp.asarray(a_np), jnp.asarray(coords_np)
    t = jnp.sum(resid[:, None, :] * a[None, :, :], -1)  # (S, n): Σ_c R[r, c] a_j[c]
    mf = jnp.sum(a[:, :, None] * t[None, :, :], 1)  # (n, n): Σ_r a_i[r] t[r, j]
    energy = jnp.sum(a * a, -1)
    norm = energy[:, None] * energy[None, :]
    idx = jnp.argmax(mf / jnp.sqrt(norm))
    i, j = idx // coords.shape[0], idx % coords.shape[0]
    b = jnp.maximum(mf[i, j] / norm[i, j], 20.0)
    return jnp.stack([coords[i], coords[j], b])


def _grow_starts(prev: jax.Array, k: jax.Array, obs: jax.Array, opts: DecodeOptions) -> jax.Array:
    """``(2, slots, 3)`` starts with ``k`` active slots from a fit with ``k-1`` active: add and split."""
    slots = prev.shape[0]
    r, _ = forward.residuals(forward.predict(prev, obs.shape[-1], opts.sigma), obs, opts.clip_level)
    new = _matched_filter_peak(-r, opts)
    slot = k - 1
    add = prev.at[slot].set(new)
    old_active = jnp.arange(slots) < slot
    d2 = jnp.where(old_active, jnp.sum((prev[:, :2] - new[None, :2]) ** 2, -1), jnp.inf)
    j = jnp.argmin(d2)
    delta = new[:2] - prev[j, :2]
    length = jnp.sqrt(jnp.sum(delta**2))
    unit = jnp.where(length > 1e-3, delta / jnp.maximum(length, 1e-3), jnp.array([1.0, 0.0], prev.dtype))
    shift = jnp.concatenate([unit * _SPLIT_HALF_DISTANCE, -0.5 * prev[j, 2:]])
    mirror = jnp.concatenate([-unit * _SPLIT_HALF_DISTANCE, -0.5 * prev[j, 2:]])
    split = prev.at[j].set(prev[j] + mirror).at[slot].set(prev[j] + shift)
    return jnp.stack([add, split])


#: Half-width of the square the layouts fill and their minimum spacing (px): a little inside the pixel and
#: a little below CSIST-100K's 0.494 px minimum distance, so every layout is a plausible configuration.
_LAYOUT_HALF_WIDTH = 0.4
_LAYOUT_SPACING = 0.4


def _spaced(xy: np.ndarray, spacing: float) -> np.ndarray:
    """``(M,)`` bool: candidates ``xy (M, k, 2)`` whose every pair is at least ``spacing`` apart.

    Pair by pair on the survivors of the previous pairs (at 5 targets fewer than 1 in 10,000 candidates pass,
    so this is about 20× faster than all pairs of all candidates: a fresh process's first decode is 0.45 s
    shorter); each distance is computed exactly as ``sqrt(dx² + dy²)``, so the same candidates pass.
    """
    keep = np.arange(xy.shape[0])
    k = xy.shape[1]
    for i in range(k):
        for j in range(i + 1, k):
            d = np.sqrt(((xy[keep, i] - xy[keep, j]) ** 2).sum(-1))
            keep = keep[d >= spacing]
    out = np.zeros(xy.shape[0], bool)
    out[keep] = True
    return out


@functools.lru_cache(maxsize=8)
def pixel_layouts(max_targets: int, layouts: int, seed: int = 0) -> np.ndarray:
    """``(max_targets + 1, layouts, max_targets, 2)`` offsets from a pixel's centre: ``[K, l, :K]`` is the ``l``-th
    layout of ``K`` targets, spread inside ``[-0.4, 0.4]²`` with pairwise distance ``>= 0.4`` px (rows
    ``>= K`` zero). Deterministic (rejection sampling from ``seed``); among many candidates each new layout
    is the one farthest (sorted-coordinate distance) from those already chosen, so the starts differ."""
    rng = np.random.default_rng(seed)
    out = np.zeros((max_targets + 1, layouts, max_targets, 2), np.float32)
    for k in range(1, max_targets + 1):
        cands_arr = np.zeros((0, k, 2))
        for _ in range(50):  # batches of candidates until 32 are accepted
            xy = rng.uniform(-_LAYOUT_HALF_WIDTH, _LAYOUT_HALF_WIDTH, size=(20_000, k, 2))
            cands_arr = np.concatenate([cands_arr, xy[_spaced(xy, _LAYOUT_SPACING)]])[:32]
            if len(cands_arr) == 32:
                break
        if not len(cands_arr):
            raise RuntimeError(f"no layout of {k} targets with spacing {_LAYOUT_SPACING} px found")
        chosen = [0]
        for _ in range(1, layouts):
            # Configuration distance: each target to the nearest target of a chosen layout.
            d = np.sqrt(((cands_arr[:, None, :, None] - cands_arr[None, chosen][:, :, None]) ** 2).sum(-1))
            spread = d.min(-1).mean(-1).min(-1)  # (candidates,)
            chosen.append(int(np.argmax(spread)))
        out[k, :, :k] = cands_arr[chosen]
    return out


def _layout_starts(prev: jax.Array, k: jax.Array, obs: jax.Array, opts: DecodeOptions) -> jax.Array:
    """``(layout_starts, slots, 3)`` starts with ``k`` targets laid out inside the centroid's pixel, each with
    the mean brightness of the ``k-1``-target fit."""
    slots = prev.shape[0]
    table = pixel_layouts(opts.max_targets, opts.layout_starts)[:, :, :slots]
    table = jnp.asarray(np.pad(table, ((0, 0), (0, 0), (0, slots - table.shape[2]), (0, 0))))
    lo, hi = _position_box(obs, opts)
    centre = 0.5 * (lo + hi)
    old = jnp.arange(slots) < k - 1
    b = jnp.sum(jnp.where(old, prev[:, 2], 0.0)) / jnp.maximum(k - 1, 1)
    xy = centre + table[k]  # (L, slots, 2)
    active = (jnp.arange(slots) < k)[None, :, None]
    return jnp.where(active, jnp.concatenate([xy, jnp.broadcast_to(b, xy.shape[:2])[..., None]], -1), 0.0)


def _centroid_start(obs: jax.Array, slots: int) -> jax.Array:
    """``(slots, 3)`` with slot 0 at the intensity centroid holding the total intensity."""
    size = obs.shape[-1]
    w = jnp.maximum(obs, 0.0)
    total = jnp.maximum(jnp.sum(w), 1.0)
    grid = jnp.arange(size, dtype=obs.dtype)
    x = jnp.sum(w.sum(1) * grid) / total
    y = jnp.sum(w.sum(0) * grid) / total
    return jnp.zeros((slots, 3), obs.dtype).at[0].set(jnp.stack([x, y, total]))


@functools.partial(jax.jit, static_argnames=("opts",))
def _stage(obs: jax.Array, prev: jax.Array, seeds: jax.Array, seed_count: jax.Array, k: jax.Array,
           opts: DecodeOptions):
    """Fits ``k`` targets (traced) in ``prev.shape[1]`` slots to a chunk of frames.

    ``obs (F, S, S)``; ``prev (F, slots, 3)``: the ``k-1``-target fits; ``seeds (F, M, 3)`` map seeds with
    ``seed_count (F,)`` valid rows. Returns the best ``(F, slots, 3)`` params, ``(F,)`` costs, ``(F, slots)``
    position variances, and the ``(F, A, slots, 3)`` distinct alternatives with ``(F, A)`` validity
    (:func:`_fit_starts`).
    """
    slots = prev.shape[1]
    active = jnp.arange(slots) < k

    def one(o, p, s, n):
        grown = _grow_starts(p, k, o, opts)
        first = _centroid_start(o, slots)[None]
        starts = jnp.where(k == 1, jnp.concatenate([first, first]), grown)
        valid = jnp.array([True, False]) | (k > 1)
        if opts.single_pixel and opts.layout_starts and slots >= 3:  # (static: no wasted starts for K < 3)
            starts = jnp.concatenate([starts, _layout_starts(p, k, o, opts)])
            valid = jnp.concatenate([valid, jnp.full((opts.layout_starts,), True) & (k >= 3)])
        if s.shape[0]:  # map seeds: the k strongest peaks (rows sorted by brightness)
            m = s.shape[0]
            seed = jnp.zeros((slots, 3), o.dtype).at[: min(m, slots)].set(s[:slots])
            seed = jnp.where(active[:, None], seed, 0.0)
            starts = jnp.concatenate([starts, seed[None]])
            valid = jnp.concatenate([valid, (n >= k)[None]])
        params, cost, jtj, alts, alt_ok = _fit_starts(starts, valid, active, o, opts)
        return params, cost, position_variances(jtj, opts.noise_variance), alts, alt_ok

    return jax.vmap(one)(obs, prev, seeds, seed_count)


def count_criterion(
    cost: np.ndarray, params_per_target: int, opts: DecodeOptions, penalty: float
) -> np.ndarray:
    """``(..., Kmax+1)`` BIC-like criterion ``cost_K/s² + penalty·params_per_target·K``, ``K = 0..Kmax``.

    ``cost (..., Kmax+1)`` indexed by ``K``; counts outside ``[min_targets, max_targets]`` get ``+inf``.
    """
    ks = np.arange(cost.shape[-1])
    crit = np.asarray(cost, np.float64) / opts.noise_variance + penalty * params_per_target * ks
    return np.where((ks >= opts.min_targets) & (ks <= opts.max_targets), crit, np.inf)


def empty_cost(frames: np.ndarray, opts: DecodeOptions) -> np.ndarray:
    """``(...)`` cost of the model without targets: ``Σ obs²`` (no pixel is censored)."""
    f = np.asarray(frames, np.float64)
    return np.sum(f * f, axis=(-2, -1))


def flux_count_upper(frames: np.ndarray, opts: DecodeOptions) -> np.ndarray:
    """``(F,)`` int: the most targets each frame's flux allows (``opts.max_targets`` where there is no bound).

    With ``opts.flux_count_bound = b`` (and ``single_pixel``), a frame ``(S, S)`` without a saturated pixel
    holds at most ``⌊(Σ pixels + S²/2 + 4·noise_sigma·S) / (b · m)⌋`` targets: each target puts ``≥ b·m`` grey
    levels into the frame, ``m`` the smallest PSF mass inside the frame for a target within 1 px of the
    brightest pixel (every target's pixel is the brightest or next to it: a target gives its own pixel at
    least as much as any neighbour), and the stored bytes lose at most ½ per pixel to rounding. Bounds are at
    least 1 and ``min_targets``. Saturated frames (and every frame when the option is off) get ``max_targets``.
    """
    frames = np.asarray(frames, np.float64)
    f, s = frames.shape[0], frames.shape[-1]
    kmax = opts.max_targets
    if opts.flux_count_bound is None or f == 0:
        return np.full(f, kmax, np.int64)
    brightest = frames.reshape(f, -1).argmax(-1)
    px, py = brightest // s, brightest % s

    def inside(p: np.ndarray) -> np.ndarray:  # smallest in-frame PSF mass along one axis for |x - p| <= 1
        lo, hi = np.clip(p - 1.0, -0.5, s - 0.5), np.clip(p + 1.0, -0.5, s - 0.5)
        return np.minimum(imaging.pixel_integrals(lo, s, opts.sigma).sum(-1),
                          imaging.pixel_integrals(hi, s, opts.sigma).sum(-1))

    flux = frames.reshape(f, -1).sum(-1) + 0.5 * s * s + 4.0 * opts.noise_sigma * s
    bound = np.floor(flux / (opts.flux_count_bound * inside(px) * inside(py)))
    saturated = np.asarray(forward.saturated_frames(frames, opts.clip_level))
    return np.where(saturated, kmax, np.clip(bound, max(1, opts.min_targets), kmax)).astype(np.int64)


def _pad_chunk(x: np.ndarray, lo: int, hi: int, chunk: int) -> jax.Array:
    block = x[lo:hi]
    if hi - lo < chunk:
        block = np.concatenate([block, np.repeat(block[-1:], chunk - (hi - lo), axis=0)])
    return jnp.asarray(block)


def fit_frames(
    frames: np.ndarray,
    opts: DecodeOptions,
    seeds: np.ndarray | None = None,
    seed_count: np.ndarray | None = None,
    progress: bool = False,
    count_upper: np.ndarray | None = None,
) -> FrameFits:
    """Fits ``K = 1..max_targets`` targets to every frame.

    Args:
      frames: ``(F, S, S)`` grey values (uint8 or float).
      opts: decoder options.
      seeds: optional ``(F, M, 3)`` start rows ``(x, y, b)`` from a model's map, strongest first; rows beyond
        ``seed_count`` are ignored.
      seed_count: ``(F,)`` valid seed rows per frame.
      progress: show a tqdm bar over chunks.
      count_upper: :func:`flux_count_upper` of ``frames`` when the caller has it already (``decode_arrays``
        also sizes the programs it compiles ahead from it); computed here otherwise.

    Returns:
      :class:`FrameFits`.
    """
    frames = np.asarray(frames, np.float32)
    f = frames.shape[0]
    kmax = opts.max_targets
    if seeds is None or seeds.shape[1] == 0:
        seeds = np.zeros((f, 0, 3), np.float32)
        seed_count = np.zeros(f, np.int32)
    seeds = np.asarray(seeds, np.float32)[:, : slots_for(kmax)]
    seed_count = np.minimum(np.asarray(seed_count, np.int32), seeds.shape[1])
    if opts.flux_count_bound is None:
        return _fit_frames_in_order(frames, opts, seeds, seed_count, progress, np.full(f, kmax, np.int64))
    # Fitted in bound order (largest first), so that a chunk stops at its largest bound; undone at the end.
    upper = flux_count_upper(frames, opts) if count_upper is None else np.asarray(count_upper, np.int64)
    order = np.argsort(-upper, kind="stable")
    fits = _fit_frames_in_order(frames[order], opts, seeds[order], seed_count[order], progress, upper[order])
    inverse = np.argsort(order)
    return FrameFits(*(None if a is None else a[inverse] for a in fits))


def _fit_frames_in_order(frames: np.ndarray, opts: DecodeOptions, seeds: np.ndarray, seed_count: np.ndarray,
                         progress: bool, upper: np.ndarray) -> FrameFits:
    """:func:`fit_frames` of counts ``1..upper[f]`` per frame (higher counts: cost ``inf``); a chunk runs up to
    its largest ``upper``."""
    f = frames.shape[0]
    kmax = opts.max_targets
    params = np.zeros((f, kmax, kmax, 3), np.float32)
    cost = np.full((f, kmax + 1), np.inf, np.float32)
    cost[:, 0] = empty_cost(frames, opts)
    pos_var = np.full((f, kmax, kmax), np.inf, np.float32)
    n_alt = opts.centre_candidates
    alts = np.zeros((f, kmax, n_alt, kmax, 3), np.float32) if n_alt > 1 else None
    alt_ok = np.zeros((f, kmax, n_alt), bool) if n_alt > 1 else None
    chunk = balanced_chunk(f, opts.chunk)
    starts = range(0, f, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="refine", unit="chunk")
    for lo in starts:
        hi = min(lo + chunk, f)
        obs, sc = _pad_chunk(frames, lo, hi, chunk), _pad_chunk(seed_count, lo, hi, chunk)
        prev = jnp.zeros((chunk, 1, 3), jnp.float32)
        for k in range(1, int(upper[lo:hi].max()) + 1):
            # K = 5 of max 5 runs in 5 slots, not 8 (2.5× faster); uniform_slots: every K >= 3 in kmax slots.
            slots = _stage_slots(k, opts)
            if prev.shape[1] < slots:
                prev = jnp.pad(prev, ((0, 0), (0, slots - prev.shape[1]), (0, 0)))
            sd, kk = _pad_chunk(seeds[:, :slots], lo, hi, chunk), jnp.int32(k)
            precompile.ready(_stage, obs, prev, sd, sc, kk, opts)
            prev, c, v, a, ok = _stage(obs, prev, sd, sc, kk, opts)
            run = upper[lo:hi] >= k  # frames whose flux allows k targets (the rest keep the empty defaults)
            params[lo:hi, k - 1, :k] = np.where(run[:, None, None], np.asarray(prev)[: hi - lo, :k], 0.0)
            if alts is not None:
                alts[lo:hi, k - 1, :, :k] = np.where(run[:, None, None, None],
                                                     np.asarray(a)[: hi - lo, :, :k], 0.0)
                alt_ok[lo:hi, k - 1] = np.asarray(ok)[: hi - lo] & run[:, None]
            cost[lo:hi, k] = np.where(run, np.asarray(c)[: hi - lo], np.inf)
            pos_var[lo:hi, k - 1, :k] = np.where(run[:, None], np.asarray(v)[: hi - lo, :k], np.inf)
    return FrameFits(params, cost, pos_var, alts, alt_ok)


def _stage_slots(k: int, opts: DecodeOptions) -> int:
    """Slots the ``k``-target stage runs in (:func:`slots_for`, at most ``max_targets``; ``uniform_slots``:
    every ``k >= 3`` in ``max_targets``)."""
    return opts.max_targets if opts.uniform_slots and k > 2 else min(slots_for(k), opts.max_targets)


def stage_programs(frames: np.ndarray, opts: DecodeOptions, seed_rows: int = 0,
                   count_upper: np.ndarray | None = None) -> list[precompile.ProgramSpec]:
    """The stage programs :func:`fit_frames` will run on ``frames (F, S, S)`` with ``seed_rows`` map seed rows
    per frame (``seeds.shape[1]``), in the order it first calls them: one per slot count, at its chunk size
    (for :func:`seqcsist_jax.decode.precompile.compiling`). ``count_upper``: :func:`flux_count_upper` of
    ``frames`` if already computed."""
    f, s = frames.shape[0], frames.shape[-1]
    if f == 0:
        return []
    kmax = opts.max_targets
    if opts.flux_count_bound is None:
        top = kmax
    else:
        top = int(np.max(flux_count_upper(np.asarray(frames, np.float32), opts) if count_upper is None
                         else count_upper))
    chunk = balanced_chunk(f, opts.chunk)
    rows = min(int(seed_rows), slots_for(kmax))
    specs: list[precompile.ProgramSpec] = []
    for slots in dict.fromkeys(_stage_slots(k, opts) for k in range(1, top + 1)):
        specs.append(precompile.spec(_stage, [((chunk, s, s), jnp.float32), ((chunk, slots, 3), jnp.float32),
                                              ((chunk, min(rows, slots), 3), jnp.float32),
                                              ((chunk,), jnp.int32), ((), jnp.int32)], opts))
    return specs


@functools.partial(jax.jit, static_argnames=("opts",))
def _fit_started(obs: jax.Array, start: jax.Array, count: jax.Array, opts: DecodeOptions):
    slots = start.shape[1]

    def one(o, s, k):
        active = jnp.arange(slots) < k
        p, c, jtj = _fit_one(jnp.where(active[:, None], s, 0.0), active, o, opts)
        return p, c, position_variances(jtj, opts.noise_variance)

    return jax.vmap(one)(obs, start, count)


def fit_from_params(
    frames: np.ndarray, params: np.ndarray, count: np.ndarray, opts: DecodeOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame fits started from given targets (e.g. the truth, to measure the model's ceiling).

    Args:
      frames: ``(F, S, S)`` grey values.
      params: ``(F, K, 3)`` start rows ``(x, y, b)``; rows ``>= count`` ignored.
      count: ``(F,)`` targets per frame (``<= K``).
      opts: decoder options (``frame_iterations`` LM steps, the same objective as :func:`fit_frames`).

    Returns:
      ``params (F, K, 3)``, ``cost (F,)``, ``pos_var (F, K)`` of the fits (rows ``>= count`` zero / inf).
    """
    frames = np.asarray(frames, np.float32)
    params = np.asarray(params, np.float32)
    count = np.asarray(count, np.int32)
    f, k = params.shape[:2]
    slots = slots_for(max(k, 1))
    start = np.zeros((f, slots, 3), np.float32)
    start[:, :k] = params
    out_p = np.zeros((f, k, 3), np.float32)
    out_c = np.zeros(f, np.float64)
    out_v = np.full((f, k), np.inf, np.float32)
    chunk = balanced_chunk(f, opts.chunk)
    for lo in range(0, f, chunk):
        hi = min(lo + chunk, f)
        p, c, v = _fit_started(_pad_chunk(frames, lo, hi, chunk), _pad_chunk(start, lo, hi, chunk),
                               _pad_chunk(count, lo, hi, chunk), opts)
        out_p[lo:hi] = np.asarray(p)[: hi - lo, :k]
        out_c[lo:hi] = np.asarray(c)[: hi - lo]
        out_v[lo:hi] = np.asarray(v)[: hi - lo, :k]
    active = np.arange(k)[None, :] < count[:, None]
    return np.where(active[..., None], out_p, 0.0), out_c, np.where(active, out_v, np.inf)
