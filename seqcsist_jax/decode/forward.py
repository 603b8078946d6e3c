"""The forward model the decoders fit: frames from continuous targets, censored residuals, normal equations.

A frame is ``Σ_k b_k · a(x_k) ⊗ a(y_k)`` (SPEC §2, :func:`seqcsist_jax.imaging.render`), with ``a(u)`` the
1-D pixel integrals of the Gaussian PSF. Its derivatives are analytic:
``∂a(u)[r]/∂u = (e^{-lo²} - e^{-hi²}) / (σ√2·√π)`` with ``lo, hi = (r ∓ ½ - u)/(σ√2)``, so a Gauss–Newton
step needs no automatic differentiation.

**Fitting 8-bit frames (DECISION, documented choice).** Stored frames are ``clip(round(render), 0, 255)``.

* Rounding is treated as additive noise, uniform on ±½ grey level (variance 1/12), so unsaturated pixels
  contribute the ordinary residual ``pred - obs``: the least-squares estimate is the maximum-likelihood one
  under the Gaussian approximation of that noise, and stays smooth (an exact interval likelihood would be
  flat inside every ±½ cell and give Gauss–Newton nothing to work with). Starting from that fit,
  :mod:`seqcsist_jax.decode.centre` (opt-in) then uses the interval likelihood, smoothed, to move the fit into
  the middle of the set of targets that reproduce the stored bytes.
* Clipping is treated as censoring: a pixel observed at ``clip_level`` (255) only says the true value is at
  least about 255, so its residual is ``min(pred - 255, 0)`` — zero (and a zero Jacobian row) once the
  prediction reaches the clip level, the ordinary residual below it. Predictions above 255 are therefore
  never penalised, while a prediction too low is. ``clip_level=None`` turns censoring off.

Everything here works on one frame (or one trajectory); the decoders ``jax.vmap`` it over the batch.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


__all__ = [
    "axis_profiles",
    "predict",
    "residuals",
    "saturation_mask",
    "saturated_frames",
    "frame_cost",
    "saturated_pixels",
    "jacobian_factors",
    "frame_normal_equations",
    "spd_solve",
    "spd_solve_many",
    "spd_logdet",
]

_SQRT2 = math.sqrt(2.0)
_SQRTPI = math.sqrt(math.pi)


def axis_profiles(u: jax.Array, size: int = 11, sigma: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """1-D pixel integrals and their derivatives, from ``size + 1`` shared pixel-edge evaluations.

    ``a`` equals :func:`imaging.pixel_integrals` to ~1e-7 absolute (float32): this form evaluates erf once per
    pixel edge instead of the tail-accurate three-branch form per pixel, which is ~7× cheaper inside the
    fitting loops; the lost relative precision far in the tails is < 1e-4 grey levels, far below the 8-bit
    quantisation the fit has to live with anyway.

    Args:
      u: ``(...)`` coordinates in pixels.

    Returns:
      ``a, da``, both ``(..., size)``: ``a[r]`` the fraction of the unit Gaussian in pixel ``r``,
      ``da = ∂a/∂u``.
    """
    u = jnp.asarray(u)
    s = sigma * _SQRT2
    edges = jnp.arange(size + 1, dtype=u.dtype) - 0.5
    z = (edges - u[..., None]) / s  # (..., size + 1)
    e = jax.scipy.special.erf(z)
    g = jnp.exp(-z * z)
    a = 0.5 * (e[..., 1:] - e[..., :-1])
    da = (g[..., :-1] - g[..., 1:]) / (s * _SQRTPI)
    return a, da


def predict(params: jax.Array, size: int = 11, sigma: float = 0.5) -> jax.Array:
    """Noise-free frames of ``params (..., K, 3)`` rows ``(x, y, b)`` → ``(..., size, size)``."""
    params = jnp.asarray(params)
    ax, _ = axis_profiles(params[..., 0], size, sigma)
    ay, _ = axis_profiles(params[..., 1], size, sigma)
    return jnp.einsum("...k,...kr,...kc->...rc", params[..., 2], ax, ay)


def saturation_mask(obs: jax.Array, clip_level: float | None) -> jax.Array:
    """``(..., S, S)`` bool: pixels stored at the clip level, i.e. within ½ grey level of it.

    A frame with any pixel above ``clip_level + ½`` evidently was not clipped there (unclipped float data), so
    none of its pixels counts as saturated.
    """
    if clip_level is None:
        return jnp.zeros(obs.shape, bool)
    clipped_frame = jnp.max(obs, axis=(-2, -1), keepdims=True) <= clip_level + 0.5
    return (obs >= clip_level - 0.5) & clipped_frame


def residuals(pred: jax.Array, obs: jax.Array, clip_level: float | None) -> tuple[jax.Array, jax.Array]:
    """Censored residuals ``pred - obs`` and the mask of pixels whose residual is live (not censored away).

    Args:
      pred, obs: ``(..., size, size)`` predicted and observed grey values.
      clip_level: saturation level of the stored frames (255), or ``None`` for unclipped data.

    Returns:
      ``r, live``: same shape; ``r = 0`` where the pixel is saturated (:func:`saturation_mask`) and
      ``pred >= clip_level``.
    """
    r = pred - obs
    if clip_level is None:
        return r, jnp.ones_like(r, dtype=bool)
    live = ~(saturation_mask(obs, clip_level) & (pred >= clip_level))
    return jnp.where(live, r, 0.0), live


def frame_cost(params: jax.Array, obs: jax.Array, clip_level: float | None, sigma: float = 0.5) -> jax.Array:
    """Censored sum of squared residuals of one frame (``params (K, 3)``, ``obs (S, S)``) → scalar."""
    r, _ = residuals(predict(params, obs.shape[-1], sigma), obs, clip_level)
    return jnp.sum(r * r)


def saturated_pixels(obs: jax.Array, clip_level: float | None, max_saturated: int) -> jax.Array:
    """Flat indices of up to ``max_saturated`` pixels of ``obs (S, S)`` at the clip level, ``-1`` padded.

    Censoring needs the Jacobian rows of these pixels only (see :func:`frame_normal_equations`). Frames with
    more saturated pixels than ``max_saturated`` treat the extra ones as ordinary (uncensored) pixels.
    """
    flat = obs.reshape(-1)
    if clip_level is None or max_saturated == 0:
        return jnp.full((max(max_saturated, 1),), -1, jnp.int32)
    sat = saturation_mask(obs, clip_level).reshape(-1)
    # Saturated pixels first (stable order by index), at most max_saturated of them.
    vals, idx = jax.lax.top_k(jnp.where(sat, 1.0, 0.0) - jnp.arange(flat.size) * 1e-4, max_saturated)
    return jnp.where(vals > 0.5, idx, -1).astype(jnp.int32)


def jacobian_factors(params: jax.Array, size: int = 11, sigma: float = 0.5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Separable Jacobian of one frame's prediction: ``∂pred[r, c]/∂θ_p = u[p, r] · v[p, c]``.

    Args:
      params: ``(K, 3)`` rows ``(x, y, b)``; ``θ = params.reshape(-1)`` (``P = 3K``).

    Returns:
      ``u (P, S)`` row factors, ``v (P, S)`` column factors, ``pred (S, S)`` the predicted frame.
    """
    k = params.shape[0]
    ax, dax = axis_profiles(params[:, 0], size, sigma)  # (K, S)
    ay, day = axis_profiles(params[:, 1], size, sigma)
    b = params[:, 2:3]
    u = jnp.stack([b * dax, b * ax, ax], axis=1).reshape(3 * k, size)  # row factors, params order
    v = jnp.stack([ay, day, ay], axis=1).reshape(3 * k, size)  # column factors
    # Broadcast-and-reduce instead of matmuls: under vmap XLA fuses these into vectorised loops, ~3× faster
    # on CPU than batches of tiny dot products.
    pred = jnp.sum((b * ax)[:, :, None] * ay[:, None, :], axis=0)
    return u, v, pred


def frame_normal_equations(
    params: jax.Array,
    obs: jax.Array,
    clip_level: float | None,
    saturated: jax.Array | None = None,
    sigma: float = 0.5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gauss–Newton quantities ``JᵀJ``, ``Jᵀr`` and ``rᵀr`` of one frame, exploiting separability.

    Every Jacobian column is an outer product ``U ⊗ V`` of two ``size``-vectors
    (``∂/∂x_k = b_k a'(x_k) ⊗ a(y_k)``, ``∂/∂y_k = b_k a(x_k) ⊗ a'(y_k)``, ``∂/∂b_k = a(x_k) ⊗ a(y_k)``), so
    ``JᵀJ = (UUᵀ) ∘ (VVᵀ)`` over all pixels (``O(P²·S)`` instead of ``O(P²·S²)``); the rows of censored
    pixels (observed and predicted at the clip level, at most ``len(saturated)`` of them) are then
    subtracted.

    Args:
      params: ``(K, 3)`` rows ``(x, y, b)``; the parameter vector is ``params.reshape(-1)`` (``P = 3K``).
      obs: ``(S, S)`` observed grey values (float).
      clip_level: see :func:`residuals`.
      saturated: ``(C,)`` from :func:`saturated_pixels` (``None``: no censoring).

    Returns:
      ``JᵀJ (P, P)``, ``Jᵀr (P,)``, cost ``rᵀr`` (scalar).
    """
    size = obs.shape[-1]
    u, v, pred = jacobian_factors(params, size, sigma)
    r = pred - obs
    jtj = jnp.sum(u[:, None, :] * u[None, :, :], -1) * jnp.sum(v[:, None, :] * v[None, :, :], -1)
    if clip_level is not None and saturated is not None:
        valid = saturated >= 0
        sidx = jnp.where(valid, saturated, 0)
        rows, cols = sidx // size, sidx % size
        p_sat = pred.reshape(-1)[sidx]
        censored = valid & (p_sat >= clip_level)
        # Censored pixels: zero their residuals and remove their Jacobian rows from JᵀJ.
        keep = 1.0 - jnp.zeros(size * size, r.dtype).at[sidx].max(censored.astype(r.dtype))
        r = r * keep.reshape(size, size)
        jrows = u[:, rows] * v[:, cols] * censored[None, :].astype(u.dtype)  # (P, C)
        jtj = jtj - jnp.sum(jrows[:, None, :] * jrows[None, :, :], -1)
    rv = jnp.sum(r[None, :, :] * v[:, None, :], -1)  # (P, S): Σ_c r[row, c] v_p[c]
    jtr = jnp.sum(u * rv, -1)
    return jtj, jtr, jnp.sum(r * r)


def _cholesky_unrolled(a: jax.Array) -> list[list[jax.Array | None]]:
    """Lower Cholesky factor of one small SPD ``a (P, P)`` as nested lists of scalars (fully unrolled)."""
    n = a.shape[-1]
    low = [[None] * n for _ in range(n)]
    for j in range(n):
        s = a[j, j] - sum((low[j][q] ** 2 for q in range(j)), 0.0)
        d = jnp.sqrt(jnp.maximum(s, 1e-30))
        low[j][j] = d
        inv = 1.0 / d
        for i in range(j + 1, n):
            low[i][j] = (a[i, j] - sum((low[i][q] * low[j][q] for q in range(j)), 0.0)) * inv
    return low


def _cholesky_solve_unrolled(a: jax.Array, b: jax.Array) -> jax.Array:
    """Solves ``a x = b`` for one small SPD ``a (P, P)`` with a fully unrolled Cholesky factorisation.

    Batched by ``vmap`` this is far faster on CPU than LAPACK's per-matrix calls for ``P`` up to ~16 (the
    per-call overhead dominates such tiny systems); it is only used there (compile time grows as ``P³``).
    """
    n = a.shape[-1]
    low = _cholesky_unrolled(a)
    y = [None] * n
    for i in range(n):
        y[i] = (b[i] - sum((low[i][q] * y[q] for q in range(i)), 0.0)) / low[i][i]
    x = [None] * n
    for i in reversed(range(n)):
        x[i] = (y[i] - sum((low[q][i] * x[q] for q in range(i + 1, n)), 0.0)) / low[i][i]
    return jnp.stack(x)


#: Systems up to this size use the unrolled Cholesky (fast to run, compile time grows as P³); larger ones
#: LAPACK.
UNROLLED_MAX = 12


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a⁻¹ b`` for one symmetric positive-definite ``a (P, P)`` and ``b (P,)`` (vmap for batches)."""
    if a.shape[-1] <= UNROLLED_MAX:
        return _cholesky_solve_unrolled(a, b)
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a), b)


def spd_logdet(a: jax.Array) -> jax.Array:
    """``log det a`` of one symmetric positive-definite ``a (P, P)`` (vmap for batches), from its Cholesky
    factor (unrolled up to :data:`UNROLLED_MAX`, LAPACK beyond)."""
    n = a.shape[-1]
    if n <= UNROLLED_MAX:
        low = _cholesky_unrolled(a)
        return 2.0 * sum(jnp.log(low[i][i]) for i in range(n))
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(a))))


def spd_solve_many(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a⁻¹ b`` for ``a (P, P)`` SPD and ``b (P, Q)``: LAPACK (one factorisation, Q right-hand sides)."""
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a), b)


def saturated_frames(frames: Any, clip_level: float | None = 255.0) -> np.ndarray:
    """``frames.shape[:-2]`` bool (``(N, T)`` for ``(N, T, S, S)``, ``(N,)`` for single images ``(N, S, S)``):
    frames with a pixel stored at ``clip_level`` (within ½ grey level), by the rule of :func:`saturation_mask`
    (a frame with a pixel above ``clip_level + ½`` was not clipped). ``clip_level=None``: nothing is
    saturated."""
    arr = np.asarray(frames, np.float32)
    if clip_level is None:
        return np.zeros(arr.shape[:-2], bool)
    peak = arr.max(axis=(-2, -1))
    return (peak >= clip_level - 0.5) & (peak <= clip_level + 0.5)
