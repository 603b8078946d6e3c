"""Feasibility centring: move a per-frame fit from the edge to the middle of the set of targets that reproduce
the stored 8-bit frame.

A stored frame is ``round(clip(render(θ)))``: every ``θ`` whose rendering rounds to the same bytes explains it
equally well, and the generator's prior (CSIST-100K, SPEC §9: positions uniform inside one pixel, pairwise
>= 0.494 px, brightness uniform 220–250) is flat over that set, so the posterior is (nearly) uniform on it. The
least-squares fit of :mod:`seqcsist_jax.decode.frames` lands wherever its descent stops inside or at the edge of
the set — often against a saturated pixel's bound, the pixel's walls or the separation limit. When the set is
large (4–5 targets sharing one saturated pixel) the truth can be anywhere in it, and a point in its middle is
the better guess for every distance threshold of the metric.

:func:`centre_fits` minimises the negative smoothed log posterior (:func:`centre_objective`, in nats; lower is
better) from the fit, in ``centre_iterations`` damped Gauss–Newton steps; the count stays the fit's. Its terms:

* unsaturated pixels: ``log[Φ((½ - r)/s) - Φ((-½ - r)/s)]``, ``r = pred - obs`` — the exact likelihood of a
  frame rounded after Gaussian noise of std ``s`` (:func:`log_rounding_likelihood`);
* saturated pixels (:func:`seqcsist_jax.decode.forward.saturation_mask`): ``log Φ((pred - (clip - ½))/s)``;
* soft walls ``log Φ(distance inside / w)`` for the position box (the host pixel with ``single_pixel``) and the
  minimum separation, ``w = centre_wall`` px; the brightness prior / ``brightness_range`` as in the fits.

``s² = centre_softness² + noise_sigma²``. With ``s → 0`` the pixel terms become the flat indicator of the set
(no unique maximiser); a small ``s > 0`` rewards slack on every side, so the maximiser sits in the set's
middle, like the analytic centre of a barrier method. **DECISION** (chosen on the CSIST-100K validation split,
``bench_decode_csist100k``'s option trials): ``s = 0.15`` grey levels, ``w = 0.03`` px; off by default
(0 iterations), on in :data:`seqcsist_jax.decode.presets.CSIST100K_OPTIONS`. The ``brightness_range`` walls, when
set, use the softness ``s`` (grey levels).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from seqcsist_jax.decode import forward, precompile
from seqcsist_jax.decode import frames as frames_mod
from seqcsist_jax.decode.options import DecodeOptions

__all__ = ["log_rounding_likelihood", "centre_objective", "centre_fits", "centre_programs", "Centred"]

_MIN_BRIGHTNESS = 1.0


def log_rounding_likelihood(r: jax.Array, s: float) -> jax.Array:
    """``log P(round(v + n) = o)`` for ``r = v - o`` and noise ``n ~ N(0, s²)``, elementwise.

    ``= log[Φ((½ - r)/s) - Φ((-½ - r)/s)]``, evaluated on ``|r|`` (the function is even) as
    ``log Φ(a) + log1p(-Φ(b)/Φ(a))`` with ``b < a``, which stays finite for residuals of hundreds of grey
    levels. ``s > 0`` (grey levels).
    """
    a = (0.5 - jnp.abs(r)) / s
    b = (-0.5 - jnp.abs(r)) / s
    la, lb = log_ndtr(a), log_ndtr(b)
    return la + jnp.log1p(-jnp.exp(lb - la))


def _softness(opts: DecodeOptions) -> float:
    return float(np.sqrt(opts.centre_softness**2 + opts.noise_sigma**2))


def _constraint_terms(theta: jax.Array, active: jax.Array, lo: jax.Array, hi: jax.Array,
                      opts: DecodeOptions) -> jax.Array:
    """Negative log prior of ``theta (3·slots,)``: walls, separation, brightness (nats)."""
    slots = active.shape[0]
    p = theta.reshape(slots, 3)
    w = float(opts.centre_wall)
    xy, b = p[:, :2], p[:, 2]
    walls = -jnp.sum(log_ndtr((xy - lo) / w) + log_ndtr((hi - xy) / w), axis=1)
    if opts.brightness_prior is not None:
        mu, sd = opts.brightness_prior
        walls = walls + 0.5 * ((b - mu) / sd) ** 2
    if opts.brightness_range is not None:
        s = _softness(opts)
        walls = walls - log_ndtr((b - opts.brightness_range[0]) / s) - log_ndtr((opts.brightness_range[1] - b) / s)
    total = jnp.sum(jnp.where(active, walls, 0.0))
    if opts.min_separation is not None and slots > 1:
        diff = xy[:, None, :] - xy[None, :, :]
        d = jnp.sqrt(jnp.sum(diff * diff, -1) + 1e-12)
        pair = jnp.triu(jnp.ones((slots, slots), bool), 1) & active[:, None] & active[None, :]
        total = total - jnp.sum(jnp.where(pair, log_ndtr((d - opts.min_separation) / w), 0.0))
    return total


def _pixel_terms(pred: jax.Array, obs: jax.Array, opts: DecodeOptions) -> jax.Array:
    """``(S, S)`` negative log-likelihood of every pixel (nats)."""
    s = _softness(opts)
    free = -log_rounding_likelihood(pred - obs, s)
    if opts.clip_level is None:
        return free
    sat = forward.saturation_mask(obs, opts.clip_level)
    return jnp.where(sat, -log_ndtr((pred - (opts.clip_level - 0.5)) / s), free)


def centre_objective(theta: jax.Array, active: jax.Array, obs: jax.Array, opts: DecodeOptions) -> jax.Array:
    """Negative smoothed log posterior (nats) of one frame's targets ``theta (slots, 3)`` rows ``(x, y, b)``;
    ``active (slots,)`` bool (inactive rows are ignored); ``obs (S, S)`` the stored frame."""
    theta = jnp.where(active[:, None], theta, 0.0)
    lo, hi = frames_mod._position_box(obs, opts)
    pred = forward.predict(theta, obs.shape[-1], opts.sigma)
    return jnp.sum(_pixel_terms(pred, obs, opts)) + _constraint_terms(theta.reshape(-1), active, lo, hi, opts)


_LOG_SQRT_2PI = 0.5 * float(np.log(2.0 * np.pi))


def _neg_log_ndtr_derivatives(z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``ψ = -log Φ(z)``, ``ψ'`` and ``ψ'' >= 0`` (convex), elementwise."""
    lphi = log_ndtr(z)
    mills = jnp.exp(-0.5 * z * z - _LOG_SQRT_2PI - lphi)  # φ(z)/Φ(z)
    return -lphi, -mills, mills * (z + mills)


def _pixel_derivatives(pred: jax.Array, obs: jax.Array, opts: DecodeOptions):
    """``(S, S)`` value, first and second derivative (w.r.t. ``pred``) of :func:`_pixel_terms`."""
    s = _softness(opts)
    t = jnp.abs(pred - obs)
    a, b = (0.5 - t) / s, (-0.5 - t) / s
    la, lb = log_ndtr(a), log_ndtr(b)
    log_z = la + jnp.log1p(-jnp.exp(lb - la))  # log[Φ(a) - Φ(b)]
    pa = jnp.exp(-0.5 * a * a - _LOG_SQRT_2PI - log_z)  # φ(a)/Z
    pb = jnp.exp(-0.5 * b * b - _LOG_SQRT_2PI - log_z)  # φ(b)/Z
    d1_abs = (pa - pb) / s  # ∂(-log Z)/∂|r|
    d1 = jnp.sign(pred - obs) * d1_abs
    d2 = (a * pa - b * pb) / (s * s) + d1_abs * d1_abs
    value = -log_z
    if opts.clip_level is not None:
        sat = forward.saturation_mask(obs, opts.clip_level)
        sv, s1, s2 = _neg_log_ndtr_derivatives((pred - (opts.clip_level - 0.5)) / s)
        value, d1, d2 = jnp.where(sat, sv, value), jnp.where(sat, s1 / s, d1), jnp.where(sat, s2 / (s * s), d2)
    return value, d1, d2


def _constraint_normal(theta: jax.Array, active: jax.Array, lo: jax.Array, hi: jax.Array, opts: DecodeOptions):
    """Gradient and Gauss–Newton Hessian (PSD) of :func:`_constraint_terms` over ``theta (3·slots,)``."""
    slots = active.shape[0]
    p = theta.reshape(slots, 3)
    w = float(opts.centre_wall)
    act = active.astype(theta.dtype)[:, None]
    _, g_lo, h_lo = _neg_log_ndtr_derivatives((p[:, :2] - lo) / w)
    _, g_hi, h_hi = _neg_log_ndtr_derivatives((hi - p[:, :2]) / w)
    g_xy, h_xy = (g_lo - g_hi) / w, (h_lo + h_hi) / (w * w)
    b = p[:, 2]
    g_b, h_b = jnp.zeros_like(b), jnp.zeros_like(b)
    if opts.brightness_prior is not None:
        mu, sd = opts.brightness_prior
        g_b, h_b = g_b + (b - mu) / sd**2, h_b + 1.0 / sd**2
    if opts.brightness_range is not None:
        s = _softness(opts)
        _, gl, hl = _neg_log_ndtr_derivatives((b - opts.brightness_range[0]) / s)
        _, gh, hh = _neg_log_ndtr_derivatives((opts.brightness_range[1] - b) / s)
        g_b, h_b = g_b + (gl - gh) / s, h_b + (hl + hh) / (s * s)
    grad = (jnp.concatenate([g_xy, g_b[:, None]], 1) * act).reshape(-1)
    hess = jnp.diag((jnp.concatenate([h_xy, h_b[:, None]], 1) * act).reshape(-1))
    if opts.min_separation is not None and slots > 1:
        iu, ju = np.triu_indices(slots, 1)

        def gaps(t):
            xy = t.reshape(slots, 3)[:, :2]
            diff = xy[iu] - xy[ju]
            return (jnp.sqrt(jnp.sum(diff * diff, -1) + 1e-12) - opts.min_separation) / w

        jz = jax.jacfwd(gaps)(theta)  # (pairs, P)
        _, gz, hz = _neg_log_ndtr_derivatives(gaps(theta))
        pair = active[iu] & active[ju]
        gz, hz = jnp.where(pair, gz, 0.0), jnp.where(pair, hz, 0.0)
        grad = grad + jz.T @ gz
        hess = hess + jz.T @ (hz[:, None] * jz)
    return grad, hess


def basin_agreement(best: jax.Array, best_cost: jax.Array, ends: jax.Array, end_costs: jax.Array,
                    active: jax.Array, radius: float, temperature: float) -> jax.Array:
    """``(slots,)`` weighted share of a frame's candidate ends that agree with each target of the chosen fit.

    The posterior of a wide, flat set has several modes; the chosen fit is one. Each end ``b`` gets the weight
    ``w_b = exp(-(end_costs[b] - best_cost) / temperature)`` (its mode's posterior weight relative to the chosen
    one at ``temperature = 1``) and agrees on target ``k`` when one of its active targets lies within ``radius``
    px of ``best[k]``; the chosen fit itself counts once with weight 1:
    ``(1 + Σ_b w_b·[agrees]) / (1 + Σ_b w_b)``, in (0, 1], 1 where every end agrees.

    Args:
      best: ``(slots, 3)`` the chosen fit's rows ``(x, y, b)`` (px, grey levels).
      best_cost: scalar, its objective (nats).
      ends: ``(A, slots, 3)`` the candidates' ends, same layout and the same ``active`` slots.
      end_costs: ``(A,)`` their objectives (nats); ``inf`` marks a missing candidate (weight 0).
      active: ``(slots,)`` bool, the targets in use.
      radius: agreement radius (px).
      temperature: nats, > 0 (``basin_temperature = 0`` means off: the decoder then skips this call).
    """
    excess = jnp.clip((end_costs - best_cost) / temperature, -50.0, 50.0)
    w = jnp.where(jnp.isfinite(end_costs), jnp.exp(-excess), 0.0)  # (A,)
    diff = ends[:, None, :, :2] - best[None, :, None, :2]  # (A, slots_best, slots_end, 2)
    d2 = jnp.where(active[None, None, :], jnp.sum(diff * diff, -1), jnp.inf)
    near = jnp.min(d2, axis=-1) <= radius * radius  # (A, slots)
    share = (1.0 + jnp.sum(w[:, None] * near, axis=0)) / (1.0 + jnp.sum(w))
    return jnp.where(active, share, 1.0)


def _centre_frame(cands: jax.Array, valid: jax.Array, active: jax.Array, obs: jax.Array, opts: DecodeOptions):
    """Centres the candidate fits ``cands (A, slots, 3)`` (``valid (A,)``) of one frame and returns the best
    ``(slots, 3)`` params, its objective, ``(slots,)`` position variances and ``(slots,)`` basin agreement
    (:func:`basin_agreement` over the candidates' ends; ones when ``opts.basin_temperature == 0``).

    With ``A > 1`` every candidate first runs ``centre_screen_iterations`` steps; the ``centre_keep`` lowest
    objectives continue for the rest of ``centre_iterations`` (most candidates sit clearly in a worse basin
    after a few steps).
    """
    slots = active.shape[0]
    size = obs.shape[-1]
    lo, hi = frames_mod._position_box(obs, opts)
    pmask = jnp.repeat(active, 3)
    eye = jnp.eye(3 * slots, dtype=obs.dtype)

    def constraint(t):
        return _constraint_terms(t, active, lo, hi, opts)

    def objective(t):
        return centre_objective(t.reshape(slots, 3), active, obs, opts)

    def gauss_newton(t):
        p = jnp.where(active[:, None], t.reshape(slots, 3), 0.0)
        u, v, pred = forward.jacobian_factors(p, size, opts.sigma)
        jac = (u[:, :, None] * v[:, None, :]).reshape(3 * slots, size * size)  # ∂pred/∂θ
        cost, d1, d2 = _pixel_derivatives(pred, obs, opts)
        # Every term is convex in its argument (log-concave likelihoods and walls), so the Gauss–Newton
        # matrix is positive semi-definite.
        g_c, h_c = _constraint_normal(t, active, lo, hi, opts)
        grad = jac @ d1.reshape(-1) + g_c
        hess = (jac * d2.reshape(1, -1)) @ jac.T + h_c
        hess, grad = frames_mod.masked_normal(hess, grad, pmask)
        return hess, grad, jnp.sum(cost) + constraint(t)

    def project(t):
        p = t.reshape(slots, 3)
        b = jnp.where(active, jnp.maximum(p[:, 2], _MIN_BRIGHTNESS), 0.0)
        return jnp.concatenate([p[:, :2], b[:, None]], axis=1).reshape(-1)

    def body(_, state):
        t, lam, cost = state
        hess, grad, _ = gauss_newton(t)
        damped = hess + lam * jnp.diag(jnp.diag(hess)) + 1e-6 * (jnp.trace(hess) / hess.shape[0] + 1.0) * eye
        step = forward.spd_solve(damped, -grad)
        cand = project(t + jnp.where(pmask, step, 0.0))
        new = objective(cand)
        better = new < cost
        t = jnp.where(better, cand, t)
        lam = jnp.clip(jnp.where(better, lam * 0.3, lam * 10.0), 1e-6, 1e6)
        return t, lam, jnp.where(better, new, cost)

    def run(state, iterations):
        return jax.vmap(lambda *st: jax.lax.fori_loop(0, iterations, body, st))(*state)

    theta = jax.vmap(project)(cands.reshape(cands.shape[0], -1))
    state = (theta, jnp.full(theta.shape[:1], 1e-2, obs.dtype), jax.vmap(objective)(theta))
    total, a = opts.centre_iterations, cands.shape[0]
    screen = min(opts.centre_screen_iterations, total)
    keep = min(opts.centre_keep, a)
    # The basins' ends for the agreement: every candidate after screening (the dropped ones stop there), or
    # after the full run when none is dropped. The chosen candidate's own end is one of them; basin_agreement
    # counts the chosen (final) fit once more, with weight 1.
    ends = None
    if a > keep:
        if screen > 0:
            state = run(state, screen)
        ends = (state[0], jnp.where(valid, state[2], jnp.inf))
        _, kept = jax.lax.top_k(-jnp.where(valid, state[2], jnp.inf), keep)
        state, valid, total = tuple(x[kept] for x in state), valid[kept], total - screen
    theta, _, cost = run(state, total)
    if ends is None:
        ends = (theta, jnp.where(valid, cost, jnp.inf))
    best = jnp.argmin(jnp.where(valid, cost, jnp.inf))
    hess, _, cost = gauss_newton(theta[best])
    chosen = theta[best].reshape(slots, 3)
    if opts.basin_temperature > 0:
        agree = basin_agreement(chosen, cost, ends[0].reshape(-1, slots, 3), ends[1], active, opts.score_radius,
                                opts.basin_temperature)
    else:
        agree = jnp.ones((slots,), obs.dtype)
    # The Gauss–Newton matrix is the smoothed posterior's curvature in nats: its inverse is the covariance.
    return chosen, cost, frames_mod.position_variances(hess, 1.0), agree


@functools.partial(jax.jit, static_argnames=("opts",))
def _centre_chunk(obs: jax.Array, cands: jax.Array, valid: jax.Array, count: jax.Array, opts: DecodeOptions):
    slots = cands.shape[2]

    def one(o, c, v, k):
        return _centre_frame(c, v, jnp.arange(slots) < k, o, opts)

    return jax.vmap(one)(obs, cands, valid, count)


class Centred(NamedTuple):
    """Output of :func:`centre_fits`.

    Attributes:
      params: ``(F, K, 3)`` rows ``(x, y, b)`` (rows ``>= count`` zero); the input fit where not centred.
      centred: ``(F,)`` bool, the frames that were centred.
      cost: ``(F,)`` final objective (nats; NaN where not centred).
      pos_var: ``(F, K)`` mean x/y variance (px²) from the objective's curvature (inf where not centred).
      agreement: ``(F, K)`` :func:`basin_agreement` of each target over the candidates' centred (or
        screened) ends, in (0, 1]; 1 where not centred, for inactive slots and with ``basin_temperature == 0``
        (unclipped CSIST-100K images are not centred: their candidates' agreement gained 0.08 CSO-mAP on the
        validation split and 0.02 on the test split for about a second more per 10,000 images).
    """

    params: np.ndarray
    centred: np.ndarray
    cost: np.ndarray
    pos_var: np.ndarray
    agreement: np.ndarray


def centre_programs(frames: np.ndarray, opts: DecodeOptions, candidates: int = 1) -> list[precompile.ProgramSpec]:
    """The program :func:`centre_fits` will most likely run on ``frames (F, S, S)`` with ``candidates`` starts
    per frame (the fit plus its alternatives), for :func:`seqcsist_jax.decode.precompile.compiling`: its chunk
    size assumes that every frame it may centre (with ``centre_saturated_only``, those with a saturated pixel)
    has at least one target. Empty when nothing will be centred."""
    if opts.centre_iterations == 0 or opts.max_targets == 0:
        return []
    s = frames.shape[-1]
    n = int(np.sum(np.asarray(forward.saturated_frames(frames, opts.clip_level)))) if opts.centre_saturated_only \
        else frames.shape[0]
    if n == 0:
        return []
    chunk, k = frames_mod.balanced_chunk(n, opts.chunk), opts.max_targets
    return [precompile.spec(_centre_chunk, [((chunk, s, s), jnp.float32), ((chunk, candidates, k, 3), jnp.float32),
                                            ((chunk, candidates), jnp.bool_), ((chunk,), jnp.int32)], opts)]


def centre_fits(frames: np.ndarray, params: np.ndarray, count: np.ndarray, opts: DecodeOptions,
                candidates: np.ndarray | None = None, valid: np.ndarray | None = None) -> Centred:
    """Moves each frame's fit to the middle of the set of targets that reproduce the stored frame.

    Shapes: ``F`` frames of side ``S`` (11), ``K`` target slots, ``A`` extra candidates per frame. Positions are
    in pixels (``x`` on the row axis, pixel centres at integers, as :func:`seqcsist_jax.imaging.render`),
    brightness in grey levels.

    Args:
      frames: ``(F, S, S)`` stored grey values.
      params: ``(F, K, 3)`` fitted rows ``(x, y, b)``; rows ``>= count`` are ignored.
      count: ``(F,)`` targets per frame (``<= K``).
      opts: decoder options (``centre_iterations``, ``centre_softness``, ``centre_wall``,
        ``centre_saturated_only``, ``centre_screen_iterations``, ``centre_keep``, and the fits' ``clip_level``,
        ``noise_sigma``, ``single_pixel``, ``min_separation``, brightness prior/range).
      candidates: optional ``(F, A, K, 3)`` further starts per frame (e.g. other basins of the fit,
        :attr:`seqcsist_jax.decode.frames.FrameFits.alternatives`); each is centred too and the lowest
        objective wins. ``valid (F, A)`` marks the real ones.

    Returns:
      :class:`Centred`; nothing is centred when ``opts.centre_iterations == 0``, in frames without targets,
      and (``centre_saturated_only``) in frames without a saturated pixel: those keep ``params``.
    """
    params = np.asarray(params, np.float32)
    count = np.asarray(count, np.int32)
    f_all, k = params.shape[:2]
    active = np.arange(k)[None, :] < count[:, None]
    out = np.where(active[..., None], params, 0.0)
    cost = np.full(f_all, np.nan, np.float32)
    pos_var = np.full((f_all, k), np.inf, np.float32)
    agreement = np.ones((f_all, k), np.float32)
    frames = np.asarray(frames, np.float32)
    todo = count > 0
    if opts.centre_saturated_only:
        todo &= np.asarray(forward.saturated_frames(frames, opts.clip_level))
    if opts.centre_iterations == 0 or k == 0:
        todo[:] = False
    idx = np.flatnonzero(todo)
    if idx.size == 0:
        return Centred(out, todo, cost, pos_var, agreement)
    cands = out[:, None]
    ok = np.ones((f_all, 1), bool)
    if candidates is not None:
        extra = np.asarray(candidates, np.float32)
        extra = np.where(active[:, None, :, None], extra, 0.0)
        cands = np.concatenate([cands, extra], axis=1)
        ok = np.concatenate([ok, np.asarray(valid, bool)], axis=1)
    sub = (frames[idx], cands[idx], ok[idx], count[idx])
    chunk = frames_mod.balanced_chunk(idx.size, opts.chunk)
    for lo in range(0, idx.size, chunk):
        hi = min(lo + chunk, idx.size)
        args = [frames_mod._pad_chunk(x, lo, hi, chunk) for x in sub]
        precompile.ready(_centre_chunk, *args, opts)
        p, c, v, g = _centre_chunk(*args, opts)
        out[idx[lo:hi]] = np.asarray(p)[: hi - lo]
        cost[idx[lo:hi]] = np.asarray(c)[: hi - lo]
        pos_var[idx[lo:hi]] = np.asarray(v)[: hi - lo]
        agreement[idx[lo:hi]] = np.asarray(g)[: hi - lo]
    pos_var = np.where(active & todo[:, None], pos_var, np.inf)
    agreement = np.where(active & todo[:, None], agreement, 1.0).astype(np.float32)
    return Centred(np.where(active[..., None], out, 0.0), todo, cost, pos_var, agreement)
