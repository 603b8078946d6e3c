"""Trajectory fitting: every target's path is a polynomial in time, its brightness constant, over all frames.

A SeqCSIST trajectory moves almost rigidly (SPEC §3): the reference point follows a line, parabola or circle
arc at 0.04 px/frame, each target keeps its direction and drifts outward by < 0.0014 px/frame, brightness is
fixed. Per target the model is ``x_k(t) = Σ_d cx_{k,d} P_d(τ_t)``, ``y_k(t)`` likewise, ``b_k`` constant,
with ``P_d`` the Legendre polynomials of ``τ_t = (t - (T-1)/2) / ((T-1)/2) ∈ [-1, 1]`` (well conditioned) —
so ``2(D+1)+1`` unknowns per target are fitted to all ``T·S²`` pixels at once. A single frame leaves 2–4
targets 0.42 px apart poorly determined (8-bit rounding, clipping); twenty frames pin them down.

The targets move with one reference point, so the coefficients of degree ``>= shared_from`` can be common to
the whole group (:func:`shared_reparametrisation`): the default ``shared_from = 2`` shares the curvature and
keeps each target's own offset and velocity (its outward drift), which lowers the noise of the fitted
positions (validation split, CSO-mAP: ``default`` 99.8 → 100.0, ``noise_5`` 69.7 → 76.2, ``targets_2_8``
79.8 → 82.4; sharing the velocity too, ``shared_from = 1``, gives 81.8 on ``noise_5`` but 75.4 on
``targets_2_8``).

Starts (robustness matters: a 0.1 px start error costs 5–10 CSO-mAP points when the optimiser falls into the
wrong basin) come from the per-frame fits (:mod:`seqcsist_jax.decode.frames`) for the candidate count ``K``:

1. the group's centre path ``c(t)``: the per-frame one-target fit (the brightness-weighted centroid of the
   group), smoothed by a degree-``D`` polynomial fit;
2. for each of ``templates`` frames spread over the trajectory, its ``K``-target fit as a rigid template of
   offsets ``q = p - c(τ)``; every frame's ``K``-target fit is then associated with the template (the
   permutation with the least squared offset distance; greedy nearest matching above 4 targets) and each
   target's offset is the median over frames — robust to the frames whose fit fell into a wrong basin;
3. start path ``p_k(t) = c(t) + median offset``, brightness the median of the associated fits.

Each start is refined by Levenberg–Marquardt on the censored forward model of all frames; the lowest cost
wins. With ``trajectory_restarts = R > 0`` (the ``targets_2_8`` preset: 8) the chosen count's fit is refined
again from itself and ``R`` copies whose target offsets are jittered by ``restart_jitter`` px
(:func:`jittered_starts`, one fixed pattern); the lowest cost wins. Dense clipped groups of 5–8 targets leave
the first fit often in a wrong basin that a nearby start escapes (validation split of ``targets_2_8``: 79.7 → 82.4
CSO-mAP); the ``trajectory_basins`` benchmark shows that even a perfect optimiser of this objective stays below
90 there (wrong configurations with a *lower* cost than the near-truth one). ``trajectory_centre_iterations``
refines the result on the exact rounding likelihood (:mod:`seqcsist_jax.decode.trajectory_centre`), and with
``trajectory_centre_starts > 1`` also every distinct restart end (:func:`distinct_ends`), keeping the lowest
rounding objective: that objective ranks the near-truth basin first more often than the least-squares cost does.

Counts per trajectory: the per-frame counts vote; the most-voted count is fitted, and a runner-up (the next most
voted, else the neighbouring count) too where the per-frame counts disagree (``runner_up="split"``;
``"always"``/``"never"``); the BIC-like criterion ``cost/s² + trajectory_count_penalty · p·K`` (``p`` the
target's own coefficients) picks one and the count probability is its ``exp(-crit/2)`` share among the fitted
candidates (after the restarts, with the chosen count's lowered cost).

Star geometry (``geometry="star"``, opt-in, **DECISION**: SPEC §3's generator only): after the free fit has
chosen the count, :func:`fit_star` refits every trajectory with target ``k`` at ``ref(t) + (r0_k + v_k·t)·u_k``
(:func:`star_reparametrisation`; ``ref`` a shared degree-``degree`` path, ``u_k`` distinct generator
directions, Gaussian priors on ``r0_k`` and ``v_k``, constant brightness; ``star_stiffness`` turns the hard
parametrisation into a soft prior with per-target deviations). For fixed directions the map from the star
parameters to the per-target coefficients is linear, so the same ``_objective`` and Levenberg–Marquardt loop
fit it. Direction subsets come from :func:`star_candidates` (the free fit's mean positions matched to every
injective choice of directions) and are screened by their image cost (``star_screen``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax.decode import forward
from seqcsist_jax.decode.frames import (
    FrameFits,
    _MIN_BRIGHTNESS,
    _prior_terms,
    masked_normal,
    slots_for,
)
from seqcsist_jax.decode.lm import levenberg_marquardt
from seqcsist_jax.decode.options import DecodeOptions

__all__ = [
    "DISTINCT_END_PX",
    "TrajectoryFits",
    "distinct_ends",
    "jittered_starts",
    "path_coefficients",
    "path_costs",
    "fit_star",
    "fit_trajectories",
    "fit_from_paths",
    "legendre_basis",
    "shared_reparametrisation",
    "star_candidates",
    "star_reparametrisation",
    "template_frames",
]


class TrajectoryFits(NamedTuple):
    """Trajectory fits, one count per trajectory.

    Attributes:
      params: ``(N, T, Kmax, 3)`` per-frame rows ``(x, y, b)`` of the chosen fit, zero padded.
      count: ``(N,)`` chosen number of targets.
      cost: ``(N,)`` final cost of the chosen fit.
      pos_var: ``(N, T, Kmax)`` posterior mean x/y variance per target and frame (px²).
      count_prob: ``(N,)`` posterior probability of the chosen count among the fitted candidates.
      candidates: ``(N, C)`` counts fitted, ``crit``: ``(N, C)`` their criteria.
    """

    params: np.ndarray
    count: np.ndarray
    cost: np.ndarray
    pos_var: np.ndarray
    count_prob: np.ndarray
    candidates: np.ndarray
    crit: np.ndarray


def legendre_basis(num_frames: int, degree: int) -> np.ndarray:
    """``(T, D+1)`` Legendre polynomials ``P_0..P_D`` at ``τ_t = (t - (T-1)/2)/((T-1)/2)``."""
    half = max((num_frames - 1) / 2.0, 1.0)
    tau = (np.arange(num_frames) - (num_frames - 1) / 2.0) / half
    return np.polynomial.legendre.legvander(tau, degree)


def template_frames(num_frames: int, templates: int) -> np.ndarray:
    """Frames used as rigid templates: up to ``templates`` distinct frames evenly spread over ``[2, T-3]``
    (away from the ends; over all ``T`` frames when ``T < 6``). Sorted; fewer than ``templates`` when the range
    holds fewer distinct frames (rounding merges them)."""
    lo, hi = (2, num_frames - 3) if num_frames >= 6 else (0, num_frames - 1)
    spots = np.linspace(lo, hi, templates + 2)[1:-1] if templates > 1 else np.array([(lo + hi) / 2])
    return np.unique(np.round(spots).astype(int))


def _local_map(basis: np.ndarray) -> np.ndarray:
    """``(T, 3, 2D+3)``: per frame, d(x, y, b)/d(target's coefficients)."""
    t, d1 = basis.shape
    e = np.zeros((t, 3, 2 * d1 + 1), np.float32)
    e[:, 0, :d1] = basis
    e[:, 1, d1 : 2 * d1] = basis
    e[:, 2, 2 * d1] = 1.0
    return e


def shared_reparametrisation(slots: int, degree: int, shared_from: int) -> np.ndarray:
    """``R (slots·Pk, P)``: per-target coefficients ``= R @ θ`` for a group sharing its high-order terms.

    ``θ`` holds, per target, the Legendre coefficients of degree ``< shared_from`` of ``x`` and ``y`` and the
    brightness, then the coefficients of degree ``shared_from..D`` of ``x`` and ``y`` common to the whole
    group. ``shared_from > D`` gives the identity (independent paths); ``shared_from = 2`` shares the
    curvature; ``shared_from = 1`` shares the velocity too (a rigidly translating group).
    """
    d1 = degree + 1
    s = min(max(shared_from, 0), d1)
    pk = 2 * d1 + 1
    own = 2 * s + 1
    shared = 2 * (d1 - s)
    r = np.zeros((slots, pk, slots * own + shared), np.float32)
    for k in range(slots):
        base = k * own
        for d in range(s):
            r[k, d, base + d] = 1.0  # x_d
            r[k, d1 + d, base + s + d] = 1.0  # y_d
        r[k, 2 * d1, base + 2 * s] = 1.0  # brightness
        for j, d in enumerate(range(s, d1)):
            r[k, d, slots * own + j] = 1.0
            r[k, d1 + d, slots * own + (d1 - s) + j] = 1.0
    return r.reshape(slots * pk, slots * own + shared)


def _reduce(starts: np.ndarray, count: np.ndarray, degree: int, shared_from: int) -> np.ndarray:
    """Per-target start coefficients ``(N, S, slots, Pk)`` → ``(N, S, P)`` in the shared layout."""
    n, ns, slots, pk = starts.shape
    d1 = degree + 1
    s = min(max(shared_from, 0), d1)
    own = np.concatenate([starts[..., :s], starts[..., d1 : d1 + s], starts[..., 2 * d1 :]], -1)
    active = (np.arange(slots)[None, :] < count[:, None]).astype(np.float64)[:, None, :, None]
    weight = active / np.maximum(active.sum(2, keepdims=True), 1.0)
    hx = (starts[..., s:d1] * weight).sum(2)
    hy = (starts[..., d1 + s : 2 * d1] * weight).sum(2)
    return np.concatenate([own.reshape(n, ns, -1), hx, hy], -1).astype(np.float32)


def _objective(
    obs: jax.Array, active: jax.Array, local: jax.Array, reparam: jax.Array, opts: DecodeOptions,
    extra_prior: tuple[jax.Array, jax.Array] | None = None,
):
    """``normal_fn``, ``cost_fn``, ``project``, ``positions`` of one trajectory over ``theta (P,)``.

    ``theta`` is in the (possibly shared) layout of ``reparam (slots·Pk, P)``; per-target coefficients are
    ``reparam @ theta``. ``extra_prior``: ``(weight, mean)`` ``(P,)`` of further Gaussian priors on
    ``theta`` (cost units; the star geometry's radius, drift and deviation priors).
    """
    t_frames = obs.shape[0]
    slots = active.shape[0]
    pk = local.shape[-1]
    sat = jax.vmap(lambda o: forward.saturated_pixels(o, opts.clip_level, opts.max_saturated))(obs)
    # The brightness prior applies once to each target's one constant brightness (not once per frame).
    pw1, pm1 = _prior_terms(1, opts, obs.dtype)  # brightness entries at index 2
    is_b = jnp.zeros((slots, pk), bool).at[:, pk - 1].set(True).reshape(-1)
    bright = jnp.einsum("e,ep->p", is_b.astype(obs.dtype), reparam) > 0  # brightness entries of theta
    owner = jnp.einsum("e,ep->p", jnp.repeat(active, pk).astype(obs.dtype), jnp.abs(reparam)) > 0
    pw = jnp.where(bright & owner, pw1[2], 0.0)
    pm = jnp.where(bright, pm1[2], 0.0)
    if extra_prior is not None:
        pw = pw + jnp.where(owner, extra_prior[0], 0.0)
        pm = pm + extra_prior[1]
    # Frozen: the parameters of inactive slots (and shared terms of an empty group).
    pmask = owner

    def expanded(theta):
        return (reparam @ theta).reshape(slots, pk)

    def positions(theta):  # (T, slots, 3)
        return jnp.einsum("tap,kp->tka", local, expanded(theta))

    def normal_fn(theta):
        m, g, c = jax.vmap(
            lambda p, o, s: forward.frame_normal_equations(p, o, opts.clip_level, s, opts.sigma)
        )(positions(theta), obs, sat)
        m = m.reshape(t_frames, slots, 3, slots, 3)
        g = g.reshape(t_frames, slots, 3)
        jtj = jnp.einsum("tap,tkalb,tbq->kplq", local, m, local).reshape(slots * pk, slots * pk)
        jtr = jnp.einsum("tap,tka->kp", local, g).reshape(-1)
        jtj = reparam.T @ jtj @ reparam
        jtr = reparam.T @ jtr
        dev = theta - pm
        jtj, jtr = masked_normal(jtj + jnp.diag(pw), jtr + pw * dev, pmask)
        return jtj, jtr, jnp.sum(c) + jnp.sum(pw * dev * dev)

    def cost_fn(theta):
        frame_cost = functools.partial(forward.frame_cost, clip_level=opts.clip_level, sigma=opts.sigma)
        c = jax.vmap(frame_cost)(positions(theta), obs)
        dev = theta - pm
        return jnp.sum(c) + jnp.sum(pw * dev * dev)

    def project(theta):
        return jnp.where(bright, jnp.where(owner, jnp.maximum(theta, _MIN_BRIGHTNESS), 0.0), theta)

    return normal_fn, cost_fn, project, positions


@functools.partial(jax.jit, static_argnames=("opts", "keep_ends"))
def _fit_batch(obs: jax.Array, starts: jax.Array, count: jax.Array, local: jax.Array, reparam: jax.Array,
               opts: DecodeOptions, keep_ends: bool = False):
    """``obs (B, T, S, S)``, ``starts (B, M, P)``, ``count (B,)`` → best fit per trajectory: positions
    ``(B, T, slots, 3)``, cost ``(B,)``, variances ``(B, T, slots)``; with ``keep_ends`` also every start's
    end ``(B, M, T, slots, 3)`` and cost ``(B, M)``."""
    pk = local.shape[-1]
    slots = reparam.shape[0] // pk

    def one(o, st, k):
        active = jnp.arange(slots) < k
        normal_fn, cost_fn, project, positions = _objective(o, active, local, reparam, opts)

        def fit(s):
            res = levenberg_marquardt(project(s), normal_fn, cost_fn, project, opts.trajectory_iterations)
            return res.theta, res.cost, res.jtj

        thetas, costs, jtjs = jax.vmap(fit)(st)
        best = jnp.argmin(costs)
        out = (positions(thetas[best]), costs[best], _position_variances(jtjs[best], reparam, local, opts))
        return out + (jax.vmap(positions)(thetas), costs) if keep_ends else out

    return jax.vmap(one)(obs, starts, count)


def _position_variances(jtj: jax.Array, reparam: jax.Array, local: jax.Array, opts: DecodeOptions) -> jax.Array:
    """``(T, slots)`` posterior x/y variance of every target from the normal matrix of ``theta``."""
    pk = local.shape[-1]
    slots = reparam.shape[0] // pk
    # Posterior covariance of the coefficients → per-frame position variances.
    scale = jnp.sqrt(jnp.clip(jnp.diag(jtj), 1e-12, None))
    eye = jnp.eye(jtj.shape[0], dtype=jtj.dtype)
    cov = forward.spd_solve_many(jtj / (scale[:, None] * scale[None, :]) + 1e-6 * eye, eye)
    cov = opts.noise_variance * cov / (scale[:, None] * scale[None, :])
    cov = (reparam @ cov @ reparam.T).reshape(slots, pk, slots, pk)
    block = jnp.einsum("kpkq->kpq", cov)  # (slots, Pk, Pk) per-target blocks
    var = jnp.einsum("tap,kpq,taq->tka", local[:, :2], block, local[:, :2]).mean(-1)  # (T, slots)
    return jnp.where(jnp.isfinite(var) & (var > 0), var, 1e6)


def _associate(q: np.ndarray, ref: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Permutation of each frame's targets that best matches the template.

    Args:
      q: ``(N, T, s, 2)`` per-frame offsets; ``ref``: ``(N, s, 2)`` template offsets; ``active``: ``(N, s)``.

    Returns:
      ``(N, T, s)`` index into ``q``'s target axis for every template target.
    """
    n, t, s, _ = q.shape
    big = 1e3
    qm = np.where(active[:, None, :, None], q, big)
    rm = np.where(active[:, :, None], ref, big)
    if s <= 4:
        perms = np.array(list(itertools.permutations(range(s))))  # (P, s)
        d = np.sum((qm[:, :, perms, :] - rm[:, None, None, :, :]) ** 2, axis=(-1, -2))  # (N, T, P)
        return perms[np.argmin(d, axis=-1)]
    out = np.zeros((n, t, s), np.int64)
    d = np.sum((qm[:, :, None, :, :] - rm[:, None, :, None, :]) ** 2, -1)  # (N, T, ref s, q s)
    taken = np.zeros((n, t, s), bool)
    for _ in range(s):  # greedy: globally closest remaining pair first
        dd = np.where(taken[:, :, None, :], np.inf, d)
        flat = np.argmin(dd.reshape(n, t, -1), axis=-1)
        i, j = flat // s, flat % s
        out[np.arange(n)[:, None], np.arange(t)[None], i] = j
        taken[np.arange(n)[:, None], np.arange(t)[None], j] = True
        d[np.arange(n)[:, None], np.arange(t)[None], i, :] = np.inf
    return out


def _starts(
    fits_params: np.ndarray, count: np.ndarray, slots: int, basis: np.ndarray, templates: np.ndarray
) -> np.ndarray:
    """``(N, len(templates), slots, 2D+3)`` start coefficients for counts ``count (N,)``."""
    n, t = fits_params.shape[:2]
    d1 = basis.shape[1]
    pinv = np.linalg.pinv(basis)  # (D+1, T)
    centre = fits_params[:, :, 0, 0, :2].astype(np.float64)  # one-target fit, (N, T, 2)
    centre_coef = np.einsum("dt,ntc->ncd", pinv, centre)  # (N, 2, D+1)
    centre_smooth = np.einsum("td,ncd->ntc", basis, centre_coef)
    kk = np.clip(count - 1, 0, fits_params.shape[2] - 1)
    per_k = fits_params[np.arange(n), :, kk].astype(np.float64)  # (N, T, Kmax, 3)
    per_k = np.pad(per_k, ((0, 0), (0, 0), (0, max(0, slots - per_k.shape[2])), (0, 0)))[:, :, :slots]
    active = np.arange(slots)[None, :] < count[:, None]
    q = per_k[..., :2] - centre_smooth[:, :, None, :]
    out = np.zeros((n, len(templates), slots, 2 * d1 + 1), np.float32)
    for i, tau in enumerate(templates):
        perm = _associate(q, q[:, tau], active)
        aligned = np.take_along_axis(per_k, perm[..., None], axis=2)  # (N, T, s, 3)
        offset = np.median(aligned[..., :2] - centre_smooth[:, :, None, :], axis=1)  # (N, s, 2)
        bright = np.median(aligned[..., 2], axis=1)
        out[:, i, :, 0] = centre_coef[:, None, 0, 0] + offset[..., 0]
        out[:, i, :, 1:d1] = centre_coef[:, None, 0, 1:]
        out[:, i, :, d1] = centre_coef[:, None, 1, 0] + offset[..., 1]
        out[:, i, :, d1 + 1 : 2 * d1] = centre_coef[:, None, 1, 1:]
        out[:, i, :, 2 * d1] = bright
        out[:, i] *= active[:, :, None]
    return out


def path_coefficients(paths: np.ndarray, count: np.ndarray, slots: int, opts: DecodeOptions) -> np.ndarray:
    """``θ (N, P)`` of the trajectory fit (shared layout) closest to ``paths (N, T, K, 3)``: each target's
    least-squares Legendre polynomial of degree ``opts.degree`` in time, its mean brightness (shared
    coefficients: the mean over the ``count (N,)`` active targets). Polynomial paths are reproduced exactly."""
    paths = np.asarray(paths, np.float64)
    n, t = paths.shape[:2]
    basis = legendre_basis(t, opts.degree)
    d1 = basis.shape[1]
    pinv = np.linalg.pinv(basis)  # (D+1, T)
    paths = paths[:, :, :slots]
    paths = np.pad(paths, ((0, 0), (0, 0), (0, slots - paths.shape[2]), (0, 0)))
    coef = np.zeros((n, 1, slots, 2 * d1 + 1), np.float32)
    coef[:, 0, :, :d1] = np.einsum("dt,ntk->nkd", pinv, paths[..., 0])
    coef[:, 0, :, d1 : 2 * d1] = np.einsum("dt,ntk->nkd", pinv, paths[..., 1])
    coef[:, 0, :, 2 * d1] = paths[..., 2].mean(1)
    return _reduce(coef, np.asarray(count), opts.degree, opts.shared_from)[:, 0]


def jittered_starts(theta: np.ndarray, count: np.ndarray, slots: int, opts: DecodeOptions) -> np.ndarray:
    """``(N, 1 + R, P)``: ``theta (N, P)`` and ``R = opts.trajectory_restarts`` copies with every active
    target's offset (degree-0 x/y coefficient) moved by N(0, ``opts.restart_jitter``²) px.

    The jitter pattern ``(R, slots, 2)`` is one draw of ``numpy.random.default_rng(opts.restart_seed)``
    shared by every trajectory, so a trajectory's starts do not depend on the batch it is decoded in.
    """
    restarts = opts.trajectory_restarts
    own = 2 * min(max(opts.shared_from, 0), opts.degree + 1) + 1
    s = (own - 1) // 2  # x coefficients of a target come first, then its y coefficients
    pattern = np.random.default_rng(opts.restart_seed).normal(0.0, opts.restart_jitter, (restarts, slots, 2))
    active = (np.arange(slots)[None, :] < np.asarray(count)[:, None]).astype(np.float32)
    out = np.repeat(np.asarray(theta, np.float32)[:, None], 1 + restarts, 1)
    cols = own * np.arange(slots)
    out[:, 1:, cols] += pattern[None, :, :, 0] * active[:, None, :]
    out[:, 1:, cols + s] += pattern[None, :, :, 1] * active[:, None, :]
    return out


def _maps(num_frames: int, opts: DecodeOptions) -> tuple[jax.Array, jax.Array]:
    """``local (T, 3, Pk)`` and ``reparam (slots·Pk, P)`` of the trajectory model for ``opts``."""
    local = jnp.asarray(_local_map(legendre_basis(num_frames, opts.degree)))
    reparam = jnp.asarray(shared_reparametrisation(slots_for(opts.max_targets), opts.degree, opts.shared_from))
    return local, reparam


def _over_chunks(call, n: int, chunk: int, arrays: tuple[np.ndarray, ...],
                progress_desc: str | None = None) -> tuple[np.ndarray, ...]:
    """``call(*chunk_of_each_array)`` over ``n`` trajectories in equal chunks (the last one padded by repeating its
    last trajectory, so every call has one shape and compiles once); its outputs concatenated, padding dropped."""
    rng = range(0, n, chunk)
    if progress_desc:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc=progress_desc, unit="chunk")
    parts = []
    for lo in rng:
        idx = np.minimum(np.arange(lo, lo + chunk), n - 1)
        out = call(*(jnp.asarray(a[idx]) for a in arrays))
        parts.append(tuple(np.asarray(o)[: min(chunk, n - lo)] for o in out))
    return tuple(np.concatenate(x) for x in zip(*parts))


def _fit_chunks(frames: np.ndarray, starts: np.ndarray, count: np.ndarray, opts: DecodeOptions,
                progress_desc: str | None = None, chunk: int | None = None,
                keep_ends: bool = False) -> tuple[np.ndarray, ...]:
    """:func:`_fit_batch` over ``starts (N, M, P)`` in equal padded chunks (``chunk`` trajectories, default
    ``opts.chunk // T`` capped at ``N``): params ``(N, T, slots, 3)``, cost ``(N,)``, variances ``(N, T, slots)``;
    with ``keep_ends`` also every start's end ``(N, M, T, slots, 3)`` and cost ``(N, M)``."""
    n, t = frames.shape[:2]
    local, reparam = _maps(t, opts)
    chunk = chunk or max(1, min(n, max(1, opts.chunk // t)))
    out = _over_chunks(lambda f, st, k: _fit_batch(f, st, k, local, reparam, opts, keep_ends), n, chunk,
                       (frames, starts, count), progress_desc)
    return (out[0], out[1].astype(np.float64)) + out[2:]


#: Restart ends closer than this (px, largest coordinate difference over frames and targets) are one basin.
DISTINCT_END_PX = 0.02


def distinct_ends(ends: np.ndarray, costs: np.ndarray, count: np.ndarray, limit: int) -> np.ndarray:
    """``(N, limit)`` indices into the ``M`` ends of each trajectory: its distinct ends, lowest cost first (ties by
    index), at most ``limit``; unused entries are ``-1``. An end is the same basin as a kept one when the largest
    ``|Δx|`` or ``|Δy|`` over all frames and active slots is ``<=`` :data:`DISTINCT_END_PX` px, compared slot by
    slot (restarts keep their start's slot order, so no matching is needed); brightness is not compared.

    Args:
      ends: ``(N, M, T, slots, 3)`` rows ``(x, y, b)`` of every start's end (slots ``>= count`` ignored).
      costs: ``(N, M)`` their costs.
      count: ``(N,)`` targets per trajectory.
      limit: at most this many per trajectory (``>= 1``).
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    n, m = costs.shape
    out = np.full((n, limit), -1, np.int64)
    xy = np.asarray(ends)[..., :2]
    for i in range(n):
        k = int(count[i])
        kept: list[int] = []
        for e in np.argsort(costs[i], kind="stable"):
            if len(kept) == limit:
                break
            if all(np.max(np.abs(xy[i, e, :, :k] - xy[i, j, :, :k]), initial=0.0) > DISTINCT_END_PX for j in kept):
                kept.append(int(e))
        out[i, : len(kept)] = kept
    return out


def path_costs(frames: np.ndarray, params: np.ndarray, count: np.ndarray, opts: DecodeOptions) -> np.ndarray:
    """``(N,)`` least-squares cost (the trajectory fit's objective: censored squared residuals of every frame plus
    the brightness prior) of the polynomial paths ``params (N, T, ≥K, 3)`` with ``count (N,)`` targets."""
    frames = np.asarray(frames, np.float32)
    n, t = frames.shape[:2]
    opts = _fit_degree(opts, t)
    slots = slots_for(opts.max_targets)
    count = np.asarray(count, np.int32)
    theta = path_coefficients(params, count, slots, opts)
    local, reparam = _maps(t, opts)
    return np.asarray(_path_costs(jnp.asarray(frames), jnp.asarray(theta), jnp.asarray(count), local, reparam, opts),
                      np.float64)


@functools.partial(jax.jit, static_argnames=("opts",))
def _path_costs(obs, theta, count, local, reparam, opts):
    slots = reparam.shape[0] // local.shape[-1]

    def one(o, th, k):
        return _objective(o, jnp.arange(slots) < k, local, reparam, opts)[1](th)

    return jax.vmap(one)(obs, theta, count)


def _fit_degree(opts: DecodeOptions, num_frames: int) -> DecodeOptions:
    """Caps the path degree at ``T - 1`` (a short sequence cannot determine more coefficients)."""
    return dataclasses.replace(opts, degree=min(opts.degree, max(num_frames - 1, 0)))


def _vote_candidates(frame_counts: np.ndarray, opts: DecodeOptions, num: int) -> np.ndarray:
    """``(N, num)`` counts to fit: the most voted per-frame count, then runners-up (or neighbours)."""
    n = frame_counts.shape[0]
    kmax = opts.max_targets
    ks = np.arange(kmax + 1)
    votes = np.stack([(frame_counts == k).sum(1) for k in ks], 1).astype(np.float64)
    allowed = (ks >= opts.min_targets) & (ks <= kmax)
    votes = np.where(allowed, votes, -np.inf)
    first = np.argmax(votes, 1)
    out = [first]
    if num > 1:
        # Runner-up: most votes among the others; ties (e.g. no other votes) go to the nearer count,
        # then to the larger one (a missed close target is likelier than a spurious one).
        dist = np.abs(ks[None, :] - first[:, None])
        key = votes * 1000.0 - dist * 10.0 + ks[None, :] * 0.1
        key[np.arange(n), first] = -np.inf
        key = np.where(allowed, key, -np.inf)
        second = np.argmax(key, 1)
        ok = np.isfinite(key[np.arange(n), second])
        out.append(np.where(ok, second, first))
    return np.stack(out, 1).astype(np.int32)


def fit_trajectories(
    frames: np.ndarray,
    frame_fits: FrameFits,
    frame_counts: np.ndarray,
    opts: DecodeOptions,
    progress: bool = False,
) -> TrajectoryFits:
    """Fits every trajectory with the polynomial-path model.

    Args:
      frames: ``(N, T, S, S)`` grey values.
      frame_fits: :func:`seqcsist_jax.decode.frames.fit_frames` of the ``N·T`` frames (trajectory-major).
      frame_counts: ``(N, T)`` per-frame chosen counts (the votes).
      opts: decoder options (``degree``, ``templates``, ``trajectory_iterations``,
        ``trajectory_count_penalty``, ``runner_up``).
      progress: tqdm bar over chunks.

    Returns:
      :class:`TrajectoryFits`.
    """
    frames = np.asarray(frames, np.float32)
    n, t = frames.shape[:2]
    opts = _fit_degree(opts, t)
    kmax = opts.max_targets
    slots = slots_for(kmax)
    basis = legendre_basis(t, opts.degree)
    templates = template_frames(t, opts.templates)
    fp = frame_fits.params.reshape(n, t, kmax, kmax, 3)
    cands = _vote_candidates(frame_counts, opts, 1 if opts.runner_up == "never" else 2)
    num_c = cands.shape[1]
    all_params = np.zeros((num_c, n, t, slots, 3), np.float32)
    all_cost = np.full((num_c, n), np.inf)
    all_var = np.zeros((num_c, n, t, slots), np.float32)
    chunk = max(1, min(n, max(1, opts.chunk // t)))
    for ci in range(num_c):
        todo = np.arange(n)
        if ci > 0:
            todo = np.flatnonzero(cands[:, ci] != cands[:, 0])
            if opts.runner_up == "split":  # only where the per-frame counts disagree
                todo = todo[np.any(frame_counts[todo] != cands[todo, :1], axis=1)]
        if todo.size == 0:
            continue
        starts = _reduce(_starts(fp[todo], cands[todo, ci], slots, basis, templates), cands[todo, ci],
                         opts.degree, opts.shared_from)
        desc = f"trajectory (candidate {ci + 1}/{num_c})" if progress else None
        # One chunk size for every candidate (the runner-up subset too), so each shape compiles once.
        p, c, v = _fit_chunks(frames[todo], starts, cands[todo, ci], opts, desc, chunk=chunk)
        all_params[ci, todo], all_cost[ci, todo], all_var[ci, todo] = p, c, v
    # Parameters per target for the criterion: its own coefficients (shared terms add a constant).
    own = 2 * min(max(opts.shared_from, 0), opts.degree + 1) + 1
    crit = all_cost.T / opts.noise_variance + opts.trajectory_count_penalty * own * cands
    best = np.argmin(crit, 1)
    rel = crit - crit[np.arange(n), best][:, None]
    weights = np.exp(-0.5 * rel)  # candidates not fitted have cost inf → weight 0
    count_prob = 1.0 / weights.sum(1)
    params = all_params[best, np.arange(n)][:, :, :kmax]
    var = all_var[best, np.arange(n)][:, :, :kmax]
    count = cands[np.arange(n), best]
    mask = np.arange(kmax)[None, None, :] < count[:, None, None]
    params = np.where(mask[..., None], params, 0.0)
    var = np.where(mask, var, np.inf)
    cost = all_cost[best, np.arange(n)]
    # The rounding-likelihood refit from several restart ends: they need the restarts' ends.
    multi_start = opts.trajectory_centre_starts > 1 and opts.trajectory_centre_iterations > 0
    kept_ends: list[np.ndarray] = []
    if opts.trajectory_restarts > 0 and opts.geometry != "star":  # the star fit replaces these paths anyway
        # Dense clipped groups: the chosen fit's basin is often not the best one near it (trajectory_basins
        # benchmark); jittered copies of its solution, refined, find lower costs (never higher: it is a start).
        starts = jittered_starts(path_coefficients(params, count, slots, opts), count, slots, opts)
        rp, rc, rv, *kept_ends = _fit_chunks(
            frames, starts, count, opts, f"trajectory ({opts.trajectory_restarts} restarts)" if progress else None,
            keep_ends=multi_start)
        better = rc < cost
        params = np.where(better[:, None, None, None], rp[:, :, :kmax], params)
        var = np.where(better[:, None, None], rv[:, :, :kmax], var)
        params = np.where(mask[..., None], params, 0.0)
        var = np.where(mask, var, np.inf)
        cost = np.where(better, rc, cost)
        crit[np.arange(n), best] = cost / opts.noise_variance + opts.trajectory_count_penalty * own * count
        weights = np.exp(-0.5 * (crit - crit[np.arange(n), best][:, None]))
        count_prob = 1.0 / weights.sum(1)
    if opts.trajectory_centre_iterations > 0 and opts.geometry != "star":
        from seqcsist_jax.decode.trajectory_centre import centre_trajectories

        if kept_ends:
            params, var = _centre_from_ends(frames, params, count, kept_ends[0], kept_ends[1], opts, progress)
        else:
            params, _, var = centre_trajectories(frames, params, count, opts, progress=progress)
        cost = path_costs(frames, params, count, opts)  # the least-squares cost of the returned paths
    if opts.geometry == "star":  # the free fit chose the count; the star fit replaces its paths
        params, cost, var, _ = fit_star(frames, params, count, opts, progress=progress)
    return TrajectoryFits(params, count, cost, var, count_prob, cands, crit)


def _centre_from_ends(frames: np.ndarray, params: np.ndarray, count: np.ndarray, ends: np.ndarray,
                      end_costs: np.ndarray, opts: DecodeOptions, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """The rounding-likelihood refit (:func:`~seqcsist_jax.decode.trajectory_centre.centre_trajectories`) from
    the chosen fit ``params (N, T, Kmax, 3)`` and up to ``trajectory_centre_starts - 1`` further distinct
    restart ends (``ends (N, M, T, slots, 3)``, ``end_costs (N, M)``; :func:`distinct_ends`); per trajectory the
    lowest rounding objective wins. The least-squares cost picks the restarts' best end, but on dense clipped
    groups the near-truth basin often has a higher least-squares cost and a lower rounding objective
    (``trajectory_basins`` benchmark). Returns params ``(N, T, Kmax, 3)`` and position variances ``(N, T, Kmax)``."""
    from seqcsist_jax.decode.trajectory_centre import centre_trajectories

    n, kmax = len(count), opts.max_targets
    # Entry 0 of distinct_ends is the restarts' lowest-cost end, which the chosen fit is (or stands in for).
    extra = distinct_ends(ends, end_costs, count, opts.trajectory_centre_starts)[:, 1:]
    traj, slot = np.nonzero(extra >= 0)
    starts = np.concatenate([params, ends[traj, extra[traj, slot], :, :kmax]])
    owner = np.concatenate([np.arange(n), traj])
    p, obj, v = centre_trajectories(frames[owner], starts, count[owner], opts, progress=progress)
    best = np.arange(n)
    for j in range(n, len(owner)):  # ties keep the chosen fit
        if obj[j] < obj[best[owner[j]]]:
            best[owner[j]] = j
    return p[best], v[best]


def fit_from_paths(
    frames: np.ndarray, paths: np.ndarray, count: np.ndarray, opts: DecodeOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Trajectory fits started from given per-frame paths (e.g. the truth, for diagnosing optimiser basins).

    Args:
      frames: ``(N, T, S, S)`` grey values.
      paths: ``(N, T, K, 3)`` rows ``(x, y, b)``; the start is their least-squares polynomial fit in time.
      count: ``(N,)`` targets per trajectory (rows ``>= count`` ignored).
      opts: decoder options.

    Returns:
      ``params (N, T, Kmax, 3)`` and ``cost (N,)`` of the fits.
    """
    frames = np.asarray(frames, np.float32)
    opts = _fit_degree(opts, frames.shape[1])
    count = np.asarray(count, np.int32)
    starts = path_coefficients(paths, count, slots_for(opts.max_targets), opts)[:, None]
    params, cost, _ = _fit_chunks(frames, starts, count, opts)
    return params[:, :, : opts.max_targets], cost


# ---------------------------------------------------------------------------------------------------------------
# Star geometry (opt-in, SPEC §3's SeqCSIST motion model): DecodeOptions.geometry = "star"


def star_direction_vectors(num_directions: int) -> np.ndarray:
    """``(D, 2)`` unit vectors ``(Δx, Δy)`` of the generator's first ``D`` directions (4 axis, 8 compass)."""
    from seqcsist_jax.data.simulate import DIRECTION_VECTORS

    return np.asarray(DIRECTION_VECTORS[:num_directions], np.float64)


def _star_sizes(slots: int, degree: int, soft: bool) -> tuple[int, int, int]:
    """``(base, dev0, P)``: index of slot 0's ``(r0, v, b)``, of slot 0's deviation block, and the size of θ."""
    d1 = degree + 1
    base = 2 * d1
    dev0 = base + 3 * slots
    return base, dev0, dev0 + (2 * d1 * slots if soft else 0)


def _star_templates(slots: int, degree: int, num_frames: int, soft: bool) -> tuple[np.ndarray, np.ndarray]:
    """``A (slots·Pk, P)`` and ``B (slots, 2, slots·Pk, P)``: the star map is ``A + Σ_k Σ_a u_k[a]·B[k, a]``."""
    d1 = degree + 1
    pk = 2 * d1 + 1
    h = max((num_frames - 1) / 2.0, 0.0)
    base, dev0, p = _star_sizes(slots, degree, soft)
    a = np.zeros((slots, pk, p), np.float32)
    b = np.zeros((slots, 2, slots, pk, p), np.float32)
    eye = np.eye(d1, dtype=np.float32)
    for k in range(slots):
        a[k, :d1, :d1] = eye
        a[k, d1 : 2 * d1, d1 : 2 * d1] = eye
        a[k, 2 * d1, base + 3 * k + 2] = 1.0  # brightness
        for axis in range(2):
            row = axis * d1
            b[k, axis, k, row, base + 3 * k] = 1.0  # r0 → P0
            b[k, axis, k, row, base + 3 * k + 1] = h  # v → P0
            if d1 > 1:
                b[k, axis, k, row + 1, base + 3 * k + 1] = h  # v → P1
        if soft:
            a[k, : 2 * d1, dev0 + 2 * d1 * k : dev0 + 2 * d1 * (k + 1)] = np.eye(2 * d1, dtype=np.float32)
    return a.reshape(slots * pk, p), b.reshape(slots, 2, slots * pk, p)


def _star_units(directions: np.ndarray, num_directions: int) -> np.ndarray:
    """``(..., slots, 2)`` unit vectors of direction indices (zero for ``-1``, an empty slot)."""
    units = star_direction_vectors(num_directions)
    directions = np.asarray(directions)
    return np.where((directions >= 0)[..., None], units[np.maximum(directions, 0)], 0.0)


def star_reparametrisation(
    directions: np.ndarray, degree: int, num_frames: int, soft: bool = False, num_directions: int = 8
) -> np.ndarray:
    """``R (slots·Pk, P)``: per-target Legendre coefficients ``= R @ θ`` of the star geometry.

    Target ``k`` (direction index ``directions[k]``, ``-1`` for an empty slot) sits at
    ``ref(t) + (r0_k + v_k·t)·u_k``: ``θ = [ref_x (D+1), ref_y (D+1), (r0_k, v_k, b_k) per slot]`` and, with
    ``soft``, each slot's own Legendre deviation ``(dx (D+1), dy (D+1))`` appended. Frame ``t`` is
    ``(τ+1)·h`` with ``h = (T-1)/2``, so ``r0 + v·t`` has Legendre coefficients ``(r0 + v·h, v·h)``. For fixed
    directions the map is linear: the same Levenberg–Marquardt machinery fits it.
    """
    directions = np.asarray(directions)
    a, b = _star_templates(directions.shape[0], degree, num_frames, soft)
    u = _star_units(directions, num_directions).astype(np.float32)
    return a + np.einsum("ka,kaep->ep", u, b)


def _star_prior(slots: int, degree: int, opts: DecodeOptions) -> tuple[np.ndarray, np.ndarray]:
    """``(weight, mean)`` ``(P,)`` of the radius, drift and (soft) deviation priors, in cost units."""
    soft = opts.star_stiffness is not None
    base, dev0, p = _star_sizes(slots, degree, soft)
    weight = np.zeros(p, np.float32)
    mean = np.zeros(p, np.float32)
    for offset, (mu, sd) in enumerate((opts.star_radius, opts.star_drift)):
        idx = base + 3 * np.arange(slots) + offset
        mean[idx] = mu
        if sd is not None:
            weight[idx] = opts.noise_variance / sd**2
    if soft:
        weight[dev0:] = opts.noise_variance / opts.star_stiffness**2
    return weight, mean


def _star_starts(coef: np.ndarray, bright: np.ndarray, units: np.ndarray, count: np.ndarray, degree: int,
                 h: float, opts: DecodeOptions) -> np.ndarray:
    """``θ (N, M, P)`` starts: the reference path from the free fit's coefficients ``coef (N, slots, 2, D+1)``
    given each candidate's directions ``units (N, M, slots, 2)``, radius and drift at their prior means,
    brightness ``bright (N, slots)``; empty slots zero."""
    n, m, slots = units.shape[:3]
    d1 = degree + 1
    base, _, p = _star_sizes(slots, degree, opts.star_stiffness is not None)
    r0, v = opts.star_radius[0], opts.star_drift[0]
    radial = np.zeros(d1)
    radial[0] = r0 + v * h
    if d1 > 1:
        radial[1] = v * h
    active = (np.arange(slots)[None, :] < count[:, None]).astype(np.float64)  # (N, slots)
    ref = coef[:, None] - units[..., None] * radial  # (N, M, slots, 2, D+1)
    ref = np.einsum("nmkcd,nk->nmcd", ref, active) / np.maximum(active.sum(1), 1.0)[:, None, None, None]
    theta = np.zeros((n, m, p), np.float32)
    theta[..., :d1], theta[..., d1 : 2 * d1] = ref[:, :, 0], ref[:, :, 1]
    theta[..., base : base + 3 * slots : 3] = (r0 * active)[:, None]
    theta[..., base + 1 : base + 3 * slots : 3] = (v * active)[:, None]
    theta[..., base + 2 : base + 3 * slots : 3] = (bright * active)[:, None]
    return theta


@functools.lru_cache(maxsize=None)
def _grouped_permutations(num_directions: int, k: int) -> np.ndarray:
    """``(C(D, K), K!, K)``: every ordered choice of ``K`` distinct directions, grouped by the chosen subset."""
    perms = np.array(list(itertools.permutations(range(num_directions), k)), np.int64).reshape(-1, k)
    mask = (1 << perms).sum(1)
    order = np.argsort(mask, kind="stable")
    return perms[order].reshape(-1, math.factorial(k), k)


def star_candidates(paths: np.ndarray, count: np.ndarray, opts: DecodeOptions, num: int | None = None) -> np.ndarray:
    """``(N, num, K)`` direction indices (``-1`` padding) of the best direction subsets per trajectory.

    The targets' mean positions ``p̄_k`` over the frames of a free fit ``paths (N, T, ≥K, 3)`` are matched to
    ``ref + r̄·u_{σ(k)}`` (``r̄`` the prior mean radius over the trajectory) for every injective assignment
    ``σ`` of targets to directions, with the least-squares ``ref``; the ``num`` direction subsets with the
    least misfit come first (each with its best assignment). Fewer subsets than ``num`` repeat the best.
    """
    num = opts.star_candidates if num is None else num
    n, t = paths.shape[:2]
    ndir = opts.star_direction_count
    units = star_direction_vectors(ndir)
    radius = opts.star_radius[0] + opts.star_drift[0] * max((t - 1) / 2.0, 0.0)
    kmax = int(count.max(initial=0))
    out = np.full((n, num, max(kmax, 1)), -1, np.int64)
    pbar = paths[..., :2].astype(np.float64).mean(1)  # (N, ≥K, 2)
    for k in np.unique(count):
        k = int(k)
        if k < 1:
            continue
        rows = np.flatnonzero(count == k)
        groups = _grouped_permutations(ndir, k)  # (G, K!, K)
        flat = groups.reshape(-1, k)
        usum = units[flat].sum(1)  # (P, 2)
        spread = radius**2 * np.sum(usum * usum, -1) / k  # (P,)
        for lo in range(0, rows.size, 64):
            sel = rows[lo : lo + 64]
            centred = pbar[sel, :k] - pbar[sel, :k].mean(1, keepdims=True)
            b = np.einsum("nkc,dc->nkd", centred, units)  # (n, K, D)
            score = np.zeros((sel.size, flat.shape[0]))
            for j in range(k):
                score += b[:, j][:, flat[:, j]]
            cost = (-2.0 * radius * score - spread[None]).reshape(sel.size, groups.shape[0], -1)
            within = np.argmin(cost, -1)  # (n, G)
            sub = np.take_along_axis(cost, within[..., None], -1)[..., 0]
            top = np.argsort(sub, 1, kind="stable")[:, :num]
            if top.shape[1] < num:
                top = np.concatenate([top, np.repeat(top[:, :1], num - top.shape[1], 1)], 1)
            best = np.take_along_axis(within, top, 1)  # (n, num)
            out[sel, :, :k] = groups[top, best]
    return out


@functools.partial(jax.jit, static_argnames=("opts",))
def _fit_star_batch(obs: jax.Array, starts: jax.Array, units: jax.Array, count: jax.Array, local: jax.Array,
                    templates: tuple[jax.Array, jax.Array], prior_w: jax.Array, prior_m: jax.Array,
                    opts: DecodeOptions):
    """``obs (B, T, S, S)``, ``starts (B, M, P)``, ``units (B, M, slots, 2)`` → best fit per trajectory."""
    slots = units.shape[2]
    base_map, unit_maps = templates

    def one(o, st, u, k):
        active = jnp.arange(slots) < k
        rps = base_map + jnp.einsum("mka,kaep->mep", u, unit_maps)  # (M, slots·Pk, P)

        def fit(s, rp):
            normal_fn, cost_fn, project, _ = _objective(o, active, local, rp, opts, (prior_w, prior_m))
            res = levenberg_marquardt(project(s), normal_fn, cost_fn, project, opts.trajectory_iterations)
            return res.theta, res.cost, res.jtj

        if opts.star_screen_iterations and st.shape[0] > opts.star_candidates:
            # Screening: every subset a few iterations, the best star_candidates continue.
            def short(s, rp):
                normal_fn, cost_fn, project, _ = _objective(o, active, local, rp, opts, (prior_w, prior_m))
                res = levenberg_marquardt(project(s), normal_fn, cost_fn, project, opts.star_screen_iterations)
                return res.theta, res.cost

            theta, cost = jax.vmap(short)(st, rps)
            keep = jnp.argsort(cost)[: opts.star_candidates]
            st, rps = theta[keep], rps[keep]
        else:
            keep = jnp.arange(st.shape[0])
        theta, cost, jtj = jax.vmap(fit)(st, rps)
        best = jnp.argmin(cost)
        rp = rps[best]
        _, _, _, positions = _objective(o, active, local, rp, opts, (prior_w, prior_m))
        return positions(theta[best]), cost[best], _position_variances(jtj[best], rp, local, opts), keep[best]

    return jax.vmap(one)(obs, starts, units, count)


def fit_star(
    frames: np.ndarray, paths: np.ndarray, count: np.ndarray, opts: DecodeOptions,
    directions: np.ndarray | None = None, progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Star-geometry fits (``geometry="star"``) of every trajectory, started from per-frame paths.

    Args:
      frames: ``(N, T, S, S)`` grey values.
      paths: ``(N, T, ≥K, 3)`` rows ``(x, y, b)`` of a fit (the free trajectory fit) or the truth.
      count: ``(N,)`` targets per trajectory (kept).
      opts: decoder options (``star_*``, ``degree``, ``trajectory_iterations``).
      directions: ``(N, K)`` direction of each path's target (e.g. the generator's), or ``None``: the
        ``star_candidates`` best subsets of :func:`star_candidates` are fitted and the lowest cost wins.

    Returns:
      ``params (N, T, Kmax, 3)``, ``cost (N,)``, ``pos_var (N, T, Kmax)`` and the chosen directions
      ``(N, Kmax)`` (``-1`` padding).
    """
    frames = np.asarray(frames, np.float32)
    n, t = frames.shape[:2]
    opts = _fit_degree(opts, t)
    kmax = opts.max_targets
    slots = slots_for(kmax)
    count = np.asarray(count, np.int64)
    soft = opts.star_stiffness is not None
    basis = legendre_basis(t, opts.degree)
    h = max((t - 1) / 2.0, 0.0)
    local = jnp.asarray(_local_map(basis))
    paths = np.asarray(paths, np.float64)[:, :, :slots]
    paths = np.pad(paths, ((0, 0), (0, 0), (0, slots - paths.shape[2]), (0, 0)))
    if directions is None:
        screened = opts.star_screen if opts.star_screen_iterations else 0
        # No more candidates than the data's counts have subsets (C(8, 8) = 1, C(4, 2) = 6, ...).
        subsets = max([math.comb(opts.star_direction_count, int(k)) for k in np.unique(count)] + [1])
        cand = star_candidates(paths, count, opts, min(max(opts.star_candidates, screened), subsets))
    else:
        cand = np.asarray(directions, np.int64)[:, None, :]
    m = cand.shape[1]
    dirs = np.full((n, m, slots), -1, np.int64)
    dirs[:, :, : min(cand.shape[2], slots)] = cand[:, :, :slots]
    dirs = np.where(np.arange(slots)[None, None, :] < count[:, None, None], dirs, -1)
    coef = np.einsum("dt,ntkc->nkcd", np.linalg.pinv(basis), paths[..., :2])  # (N, slots, 2, D+1)
    bright = paths[..., 2].mean(1)  # (N, slots)
    units = _star_units(dirs, opts.star_direction_count)  # (N, M, slots, 2)
    starts = _star_starts(coef, bright, units, count, opts.degree, h, opts)
    units = units.astype(np.float32)
    templates = tuple(jnp.asarray(a) for a in _star_templates(slots, opts.degree, t, soft))
    prior_w, prior_m = (jnp.asarray(a) for a in _star_prior(slots, opts.degree, opts))
    # Each call fits chunk·m small problems (m up to 70 screened subsets, then star_candidates of them).
    chunk = max(1, min(n, (8 * opts.chunk) // (t * m)))
    params = np.zeros((n, t, slots, 3), np.float32)
    cost = np.zeros(n)
    var = np.zeros((n, t, slots), np.float32)
    chosen = np.zeros(n, np.int64)
    rng = range(0, n, chunk)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc="trajectory (star)", unit="chunk")
    for lo in rng:
        hi = min(lo + chunk, n)
        pad = chunk - (hi - lo)

        def padded(x):
            x = x[lo:hi]
            return jnp.asarray(np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x)

        pp, c, v, b = _fit_star_batch(padded(frames), padded(starts), padded(units),
                                      padded(count.astype(np.int32)), local, templates, prior_w, prior_m, opts)
        params[lo:hi] = np.asarray(pp)[: hi - lo]
        cost[lo:hi] = np.asarray(c)[: hi - lo]
        var[lo:hi] = np.asarray(v)[: hi - lo]
        chosen[lo:hi] = np.asarray(b)[: hi - lo]
    mask = np.arange(slots)[None, :] < count[:, None]
    params = np.where(mask[:, None, :, None], params, 0.0)[:, :, :kmax]
    var = np.where(mask[:, None, :], var, np.inf)[:, :, :kmax]
    return params, cost, var, dirs[np.arange(n), chosen][:, :kmax]
