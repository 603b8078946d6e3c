"""Classical sparse recovery: ISTA as the public toolkit runs it, and FISTA — batched and jitted.

Both solve the LASSO ``min_x ½‖y - Φx‖² + λ‖x‖₁`` for every frame ``y`` (121 raw grey values) independently:

* start ``x⁰ = Φ⁺ y`` (Moore–Penrose pseudo-inverse, the public ``np.linalg.pinv(A) @ y``);
* step ``1/L`` with ``L = ‖Φ‖₂²`` (largest singular value squared), threshold ``λ/L``, ``λ = 1``;
* ISTA: ``x ← soft(x + Φᵀ(y - Φx)/L, λ/L)``; FISTA (Beck & Teboulle 2009) applies the same proximal step at the
  extrapolated point ``z = x_k + ((t_{k-1} - 1)/t_k)(x_k - x_{k-1})``;
* stop a frame when ``‖x_new - x‖₂ < tol`` (1e-4) or after ``max_iter`` (3,000) updates.

The public ``tools/ista.py`` solves one frame per Python call in float64 NumPy and, when the tolerance is met,
returns the iterate *before* the last update; :func:`ista` reproduces that (``x`` is frozen at the value it had
when its own test fired). :func:`fista` returns the newest iterate. Here all frames of a batch advance together
in one ``lax.while_loop`` (two thin matmuls per iteration, ``(N, n)·Φᵀ`` then ``·Φ``), each frame freezing
when it converges, so the batch result equals a per-frame loop. On SeqCSIST frames the tolerance is practically
never met (the columns of Φ are highly coherent), so every frame runs the full 3,000 iterations.

Precision: the solver runs in the dtype of ``y`` (float32 in the training/evaluation pipeline). Φ is
well-conditioned (σ_max/σ_min ≈ 12.6), so float32 and float64 agree to ~5e-3 grey levels after 3,000
iterations on frames whose peaks are ~200, far below the 70 detection threshold's sensitivity. Call
:func:`ista` under ``jax.enable_x64()`` with float64 inputs for the public code's arithmetic.

The Flax wrapper :class:`SparseSolver` has no parameters; the ``ista`` and ``fista`` methods are evaluated
without training (``config.model.trainable = False``).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import check_inputs, frame_vectors, per_trajectory_mse, soft_threshold

ALGORITHMS = ("ista", "fista")


def _check(y: jax.Array, phi: jax.Array, lam: float, max_iter: int, tol: float) -> None:
    if y.ndim != 2 or y.shape[1] != phi.shape[0]:
        raise ValueError(f"y must be (N, {phi.shape[0]}) to match phi {phi.shape}, got {y.shape}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def _setup(y: jax.Array, phi: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Casts to a common float dtype; returns ``y, Φ, x⁰ = Φ⁺y (N, n), L = ‖Φ‖₂²``."""
    dtype = jnp.result_type(y.dtype, phi.dtype, jnp.float32)
    y = jnp.asarray(y, dtype)
    phi = jnp.asarray(phi, dtype)
    u, s, vt = jnp.linalg.svd(phi, full_matrices=False)
    # Φ⁺ = V S⁻¹ Uᵀ with NumPy's default cutoff (rcond = 1e-15·σ_max); Φ has full row rank in practice.
    s_inv = jnp.where(s > 1e-15 * s[0], 1.0 / s, 0.0)
    x0 = ((y @ u) * s_inv) @ vt  # (N, n) = y Φ⁺ᵀ
    lipschitz = s[0] ** 2
    return y, phi, x0, lipschitz


def lipschitz_constant(phi: jax.Array | np.ndarray) -> float:
    """``‖Φ‖₂²``, the Lipschitz constant of the gradient of ``½‖y - Φx‖²`` (8.587 for SeqCSIST's Φ)."""
    return float(np.linalg.norm(np.asarray(phi, np.float64), ord=2) ** 2)


@functools.partial(jax.jit, static_argnames=("lam", "max_iter", "tol"))
def ista(
    y: jax.Array, phi: jax.Array, *, lam: float = 1.0, max_iter: int = 3000, tol: float = 1e-4
) -> tuple[jax.Array, jax.Array]:
    """ISTA on a batch of frames, exactly as the public ``tools/ista.py`` runs it per frame.

    Args:
      y: ``(N, m)`` frames as row vectors (raw grey values).
      phi: ``(m, n)`` measurement matrix Φ.
      lam: ℓ1 weight λ (the public code uses 1).
      max_iter: maximum number of updates per frame.
      tol: stop a frame when the ℓ2 norm of its update is below ``tol``.

    Returns:
      ``x (N, n)`` the estimates and ``iterations (N,)`` int32, the updates each frame computed (including
      the one whose norm met the tolerance).
    """
    _check(y, phi, lam, max_iter, tol)
    y, phi, x0, lipschitz = _setup(y, phi)
    y_phi = (y @ phi) / lipschitz  # Φᵀy / L, fixed
    thr = lam / lipschitz

    def update(x):
        return soft_threshold(x + y_phi - ((x @ phi.T) @ phi) / lipschitz, thr)

    def cond(state):
        it, _, active, _ = state
        return (it < max_iter) & jnp.any(active)

    def body(state):
        it, x, active, count = state
        x_new = update(x)
        moving = active & (jnp.linalg.norm(x_new - x, axis=-1) >= tol)
        # A frame whose update met the tolerance keeps its previous iterate (the public code returns x, not x_new).
        x = jnp.where(moving[:, None], x_new, x)
        return it + 1, x, moving, count + active.astype(jnp.int32)

    n = y.shape[0]
    state = (jnp.int32(0), x0, jnp.ones((n,), bool), jnp.zeros((n,), jnp.int32))
    _, x, _, count = jax.lax.while_loop(cond, body, state)
    return x, count


@functools.partial(jax.jit, static_argnames=("lam", "max_iter", "tol"))
def fista(
    y: jax.Array, phi: jax.Array, *, lam: float = 1.0, max_iter: int = 3000, tol: float = 1e-4
) -> tuple[jax.Array, jax.Array]:
    """FISTA with the same start, step, threshold and stopping rule as :func:`ista`.

    ``t₀ = 1``, ``t_{k+1} = (1 + √(1 + 4t_k²))/2``; a frame stops when ``‖x_{k+1} - x_k‖ < tol`` and returns
    ``x_{k+1}``. Arguments and returns as :func:`ista`.
    """
    _check(y, phi, lam, max_iter, tol)
    y, phi, x0, lipschitz = _setup(y, phi)
    y_phi = (y @ phi) / lipschitz
    thr = lam / lipschitz

    def cond(state):
        it, *_, active, _ = state
        return (it < max_iter) & jnp.any(active)

    def body(state):
        it, x, z, t, active, count = state
        x_new = soft_threshold(z + y_phi - ((z @ phi.T) @ phi) / lipschitz, thr)
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        z_new = x_new + ((t - 1.0) / t_new) * (x_new - x)
        keep = active[:, None]
        moving = active & (jnp.linalg.norm(x_new - x, axis=-1) >= tol)
        return (
            it + 1,
            jnp.where(keep, x_new, x),
            jnp.where(keep, z_new, z),
            t_new,
            moving,
            count + active.astype(jnp.int32),
        )

    n = y.shape[0]
    one = jnp.ones((), y.dtype)
    state = (jnp.int32(0), x0, x0, one, jnp.ones((n,), bool), jnp.zeros((n,), jnp.int32))
    _, x, _, _, _, count = jax.lax.while_loop(cond, body, state)
    return x, count


def solve(y: jax.Array, phi: jax.Array, algorithm: str = "ista", **options) -> tuple[jax.Array, jax.Array]:
    """Dispatches to :func:`ista` or :func:`fista` by name."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    return (ista if algorithm == "ista" else fista)(y, phi, **options)


def flops_per_frame(num_iterations: float, m: int = 121, n: int = 1089) -> float:
    """Analytic FLOPs of one frame: the ``Φ⁺y`` start plus ``num_iterations`` updates.

    An update is two matrix-vector products (``4·m·n``) plus about ``8·n`` element-wise operations (gradient
    step, soft threshold, update norm). XLA's cost analysis counts a ``while_loop`` body once, so it cannot
    report this; the SVD behind Φ⁺ and L is computed once per call, not per frame, and is left out.
    """
    return 2.0 * m * n + num_iterations * (4.0 * m * n + 8.0 * n)


class SparseSolver(nn.Module):
    """ISTA/FISTA as a parameter-free module with the methods' call signature.

    Attributes:
      algorithm: ``"ista"`` or ``"fista"``.
      lam, max_iter, tol: see :func:`ista`.
    """

    algorithm: str = "ista"
    lam: float = 1.0
    max_iter: int = 3000
    tol: float = 1e-4

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)``, ``iterations (B, T)``, ``frame_index (T,)``.

        ``q`` is accepted for the common signature and ignored (the solvers start from ``Φ⁺y``).
        """
        b, t, _, side = check_inputs(frames, phi, None)
        x, count = solve(
            frame_vectors(frames), phi, self.algorithm, lam=self.lam, max_iter=self.max_iter, tol=self.tol
        )
        return {
            "output": x.astype(jnp.float32).reshape(b, t, side, side),
            "iterations": count.reshape(b, t),
            "frame_index": np.arange(t),
        }


def reconstruction_loss(outputs: dict, labels: jax.Array) -> tuple[jax.Array, dict]:
    """MSE to the label maps (reported only: the solvers are not trained)."""
    mse = jnp.mean(per_trajectory_mse(outputs["output"], labels))
    return mse, {"mse": mse}


def _builder(algorithm: str):
    def build(model_config, loss_config) -> methods.Method:
        del loss_config
        model = SparseSolver(
            algorithm=algorithm,
            lam=float(model_config.get("lam", 1.0)),
            max_iter=int(model_config.get("max_iter", 3000)),
            tol=float(model_config.get("tol", 1e-4)),
        )
        return methods.Method(algorithm, model, reconstruction_loss)

    return build


build_ista = _builder("ista")
build_fista = _builder("fista")
