"""A fixed-budget Levenberg–Marquardt loop for one small least-squares problem (``vmap`` it over a batch).

Fixed iteration count and no data-dependent control flow, so a batch of problems compiles once and runs in
lock step. Each iteration solves ``(JᵀJ + λ·diag(JᵀJ)) δ = -Jᵀr`` (Marquardt's scaling makes the damping
independent of the parameters' units: pixels for positions, grey levels for brightness), evaluates the cost
at the projected candidate and accepts it only if the cost drops; λ shrinks ×0.3 on success and grows ×10 on
failure, so a rejected step is retried with a shorter, more gradient-like one.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqcsist_jax.decode.forward import spd_solve

__all__ = ["LMResult", "levenberg_marquardt"]


class LMResult(NamedTuple):
    """Outcome of :func:`levenberg_marquardt` for one problem.

    Attributes:
      theta: ``(P,)`` final parameters.
      cost: final cost (scalar).
      jtj: ``(P, P)`` Gauss–Newton normal matrix at ``theta`` (the Fisher information up to the noise
        variance), for uncertainties.
    """

    theta: jax.Array
    cost: jax.Array
    jtj: jax.Array


def levenberg_marquardt(
    theta0: jax.Array,
    normal_fn: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    cost_fn: Callable[[jax.Array], jax.Array],
    project: Callable[[jax.Array], jax.Array],
    iterations: int,
    lam0: float = 1e-3,
) -> LMResult:
    """Minimises a sum of squares from ``theta0`` with ``iterations`` LM steps.

    Args:
      theta0: ``(P,)`` start.
      normal_fn: ``theta -> (JᵀJ (P, P), Jᵀr (P,), cost)``.
      cost_fn: ``theta -> cost`` (cheaper than ``normal_fn``; must agree with its cost).
      project: maps a candidate onto the feasible set (e.g. brightness floor); applied to every step.
      iterations: fixed number of iterations (each one ``normal_fn`` and one ``cost_fn`` call).
      lam0: initial damping.

    Returns:
      :class:`LMResult`.
    """
    p = theta0.shape[-1]
    eye = jnp.eye(p, dtype=theta0.dtype)

    def body(_, state):
        theta, lam = state
        jtj, jtr, cost = normal_fn(theta)
        damped = jtj + lam * jnp.diag(jnp.diag(jtj)) + 1e-9 * (jnp.trace(jtj) / p + 1.0) * eye
        cand = project(theta + spd_solve(damped, -jtr))
        better = cost_fn(cand) < cost
        theta = jnp.where(better, cand, theta)
        lam = jnp.clip(jnp.where(better, lam * 0.3, lam * 10.0), 1e-7, 1e7)
        return theta, lam

    theta, _ = jax.lax.fori_loop(0, iterations, body, (theta0, jnp.asarray(lam0, theta0.dtype)))
    jtj, _, cost = normal_fn(theta)
    return LMResult(theta, cost, jtj)
