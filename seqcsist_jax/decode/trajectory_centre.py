"""Trajectory fits refined on the exact 8-bit rounding likelihood of all their frames.

The least-squares trajectory fit (:mod:`seqcsist_jax.decode.trajectory`) treats rounding as Gaussian noise of
variance 1/12. Noise-free 8-bit frames say more: every pixel's value lies within ±½ grey level of the stored
byte, clipped pixels at or above the clip level. :func:`centre_trajectories` refines a trajectory fit on that
likelihood, smoothed by ``centre_softness`` exactly as CSIST-100K's per-frame centring
(:mod:`seqcsist_jax.decode.centre`, whose pixel terms it reuses), over the same polynomial paths and shared
layout, plus the brightness prior once per target. Damped Gauss–Newton: every pixel term is convex in the
predicted value, so ``Jᵀ diag(ψ'') J`` is positive semi-definite.

On ``seqcsist/targets_2_8``'s validation split it moves the restarted fit 82.37 → 83.92 CSO-mAP (20 steps,
``centre_softness`` 0.1), and started from every distinct restart end as well (``trajectory_centre_starts=9``,
the lowest objective wins) to 85.43: the ``targets_2_8`` preset
(``experiments/benchmarks/results/trajectory_basins_targets_2_8.md``);
``DecodeOptions.trajectory_centre_iterations`` turns it on (0, off, by default).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax.decode import centre, forward
from seqcsist_jax.decode.frames import slots_for
from seqcsist_jax.decode.options import DecodeOptions

__all__ = ["centre_trajectories", "trajectory_rounding_objective"]


def _model(obs: jax.Array, active: jax.Array, local: jax.Array, reparam: jax.Array, opts: DecodeOptions):
    """``positions``, ``objective`` and Gauss–Newton ``normal`` of one trajectory over ``theta (P,)``."""
    slots = active.shape[0]
    pk = local.shape[-1]
    size = obs.shape[-1]
    owner = (jnp.repeat(active, pk).astype(obs.dtype) @ jnp.abs(reparam)) > 0
    prior = opts.brightness_prior

    def positions(theta):  # (T, slots, 3)
        return jnp.einsum("tap,kp->tka", local, (reparam @ theta).reshape(slots, pk)) * active[None, :, None]

    def preds(theta):  # (T, S, S)
        return jax.vmap(lambda q: forward.predict(q, size, opts.sigma))(positions(theta))

    def brightness(theta):  # (slots,): constant in time
        return positions(theta)[0, :, 2]

    def prior_terms(theta):
        if prior is None:
            return jnp.zeros(slots, obs.dtype)
        return jnp.where(active, 0.5 * ((brightness(theta) - prior[0]) / prior[1]) ** 2, 0.0)

    def objective(theta):
        pix = jax.vmap(lambda q, o: centre._pixel_terms(q, o, opts))(preds(theta), obs)
        return jnp.sum(pix) + jnp.sum(prior_terms(theta))

    def normal(theta):
        jac = jax.jacfwd(lambda z: preds(z).reshape(-1))(theta)  # (T·S², P)
        _, d1, d2 = jax.vmap(lambda q, o: centre._pixel_derivatives(q, o, opts))(preds(theta), obs)
        grad = jac.T @ d1.reshape(-1)
        hess = (jac * d2.reshape(-1, 1)).T @ jac
        if prior is not None:
            jb = jax.jacfwd(brightness)(theta)
            wb = jnp.where(active, 1.0 / prior[1] ** 2, 0.0)
            grad = grad + jb.T @ (wb * (brightness(theta) - prior[0]))
            hess = hess + (jb * wb[:, None]).T @ jb
        mask = owner[:, None] & owner[None, :]
        # Parameters of inactive slots stay fixed: identity rows, zero gradient.
        return jnp.where(mask, hess, 0.0) + jnp.diag(jnp.where(owner, 0.0, 1.0)), jnp.where(owner, grad, 0.0)

    return positions, objective, normal


def trajectory_rounding_objective(frames: np.ndarray, theta: np.ndarray, count: np.ndarray,
                                  opts: DecodeOptions) -> np.ndarray:
    """``(N,)`` negative smoothed log posterior (nats) of trajectory coefficients ``theta (N, P)`` (the shared
    layout of :func:`seqcsist_jax.decode.trajectory.path_coefficients`) for ``frames (N, T, S, S)``."""
    from seqcsist_jax.decode import trajectory

    frames = np.asarray(frames, np.float32)
    opts = trajectory._fit_degree(opts, frames.shape[1])
    local, reparam = trajectory._maps(frames.shape[1], opts)
    slots = slots_for(opts.max_targets)

    @jax.jit
    def run(obs, th, k):
        return jax.vmap(lambda o, x, kk: _model(o, jnp.arange(slots) < kk, local, reparam, opts)[1](x))(obs, th, k)

    return np.asarray(run(jnp.asarray(frames), jnp.asarray(theta, jnp.float32), jnp.asarray(count, jnp.int32)))


@functools.partial(jax.jit, static_argnames=("opts", "iterations"))
def _centre_batch(obs: jax.Array, theta: jax.Array, count: jax.Array, local: jax.Array, reparam: jax.Array,
                  opts: DecodeOptions, iterations: int):
    from seqcsist_jax.decode import trajectory

    slots = reparam.shape[0] // local.shape[-1]
    p_dim = reparam.shape[1]

    def one(o, th, k):
        active = jnp.arange(slots) < k
        positions, objective, normal = _model(o, active, local, reparam, opts)

        def body(_, state):
            x, lam, cost = state
            hess, grad = normal(x)
            damped = hess + lam * jnp.diag(jnp.diag(hess)) + 1e-6 * jnp.eye(p_dim, dtype=hess.dtype)
            cand = x + jnp.linalg.solve(damped, -grad)
            new = objective(cand)
            better = new < cost  # a step is kept only if it lowers the objective (also rejects NaN)
            return (jnp.where(better, cand, x), jnp.clip(jnp.where(better, lam * 0.3, lam * 10.0), 1e-6, 1e6),
                    jnp.where(better, new, cost))

        x, _, cost = jax.lax.fori_loop(0, iterations, body, (th, jnp.asarray(1e-2, o.dtype), objective(th)))
        hess, _ = normal(x)
        # The Gauss–Newton matrix is in nats already: undo _position_variances' noise-variance scaling.
        var = trajectory._position_variances(hess * opts.noise_variance, reparam, local, opts)
        return positions(x), cost, var

    return jax.vmap(one)(obs, theta, count)


def centre_trajectories(
    frames: np.ndarray, params: np.ndarray, count: np.ndarray, opts: DecodeOptions, iterations: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refines trajectory fits on the smoothed rounding likelihood of all their frames.

    Args:
      frames: ``(N, T, S, S)`` stored grey values.
      params: ``(N, T, ≥K, 3)`` per-frame rows ``(x, y, b)`` of polynomial paths (a trajectory fit); the start
        is their coefficients (:func:`seqcsist_jax.decode.trajectory.path_coefficients`).
      count: ``(N,)`` targets per trajectory (kept).
      opts: decoder options (``centre_softness``, ``noise_sigma``, ``clip_level``, ``brightness_prior``,
        ``degree``, ``shared_from``, ``chunk``).
      iterations: damped Gauss–Newton steps (default ``opts.trajectory_centre_iterations``).
      progress: tqdm bar over chunks.

    Returns:
      ``params (N, T, Kmax, 3)``, ``objective (N,)`` (nats, never above the start's) and position variances
      ``(N, T, Kmax)`` (px², from the objective's Gauss–Newton curvature).
    """
    from seqcsist_jax.decode import trajectory

    frames = np.asarray(frames, np.float32)
    n, t = frames.shape[:2]
    opts = trajectory._fit_degree(opts, t)
    iterations = opts.trajectory_centre_iterations if iterations is None else int(iterations)
    kmax = opts.max_targets
    slots = slots_for(kmax)
    count = np.asarray(count, np.int32)
    theta = trajectory.path_coefficients(params, count, slots, opts)
    local, reparam = trajectory._maps(t, opts)
    chunk = max(1, min(n, max(1, opts.chunk // t)))
    desc = f"trajectory (rounding likelihood, {iterations} steps)" if progress else None
    out_p, out_c, out_v = trajectory._over_chunks(
        lambda f, th, k: _centre_batch(f, th, k, local, reparam, opts, iterations), n, chunk, (frames, theta, count),
        desc)
    active = np.arange(kmax)[None, None, :] < count[:, None, None]
    params_out = np.where(active[..., None], out_p[:, :, :kmax], 0.0)
    var_out = np.where(active, out_v[:, :, :kmax], np.inf)
    return params_out, out_c.astype(np.float64), var_out
