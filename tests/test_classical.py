"""Classical ISTA/FISTA: convergence to known sparse solutions and batched = per-frame loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from seqcsist_jax import imaging, methods
from seqcsist_jax.baselines import classical
from seqcsist_jax.data.simulate import simulate_seqcsist


def loop_reference(y, phi, pinv, lip, algorithm: str, lam: float, max_iter: int, tol: float):
    """A plain float64 single-frame loop, written from the public ``tools/ista.py`` description (and FISTA's
    textbook form), independent of the batched solver. ``pinv`` = Φ⁺ and ``lip`` = ‖Φ‖₂² (NumPy)."""
    x = pinv @ y
    soft = lambda v: np.sign(v) * np.maximum(np.abs(v) - lam / lip, 0.0)
    z, t = x.copy(), 1.0
    for it in range(max_iter):
        point = x if algorithm == "ista" else z
        x_new = soft(point + phi.T @ (y - phi @ point) / lip)
        done = np.linalg.norm(x - x_new) < tol
        if algorithm == "ista":
            if done:
                return x, it + 1  # the public code returns the iterate before the last update
            x = x_new
        else:
            t_new = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
            z = x_new + ((t - 1.0) / t_new) * (x_new - x)
            x, t = x_new, t_new
            if done:
                return x, it + 1
    return x, max_iter


def sparse_frame(c: int, cells: list[tuple[int, int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noise-free frame ``Φ·vec(label)`` of targets sitting exactly on grid points, its Φ and the LASSO solution.

    For well-separated targets the λ = 1 LASSO solution keeps the support and shrinks each value by λ/‖φ_k‖²
    (KKT conditions with negligible overlap between the targets' columns).
    """
    phi = imaging.measurement_matrix(c=c)
    side = 11 * c
    label = np.zeros((side, side))
    for i, j, b in cells:
        label[i, j] = b
    norms = np.sum(phi**2, axis=0).reshape(side, side)
    solution = np.where(label > 0, label - 1.0 / norms, 0.0)
    return phi @ label.ravel(), phi, solution


def test_ista_converges_to_sparse_solution():
    # Pixel-centred grid (c = 1): ISTA converges within tens of iterations.
    y, phi, solution = sparse_frame(1, [(2, 2, 230.0), (8, 7, 240.0), (3, 9, 225.0)])
    with jax.enable_x64(True):
        x, iterations = classical.ista(jnp.asarray(y[None]), jnp.asarray(phi))
    assert int(iterations[0]) < 3000  # stopped by the tolerance
    np.testing.assert_allclose(np.asarray(x[0]).reshape(solution.shape), solution, atol=2e-3)


def test_fista_converges_on_the_seqcsist_grid():
    # The 1/3-px grid (c = 3) is highly coherent: ISTA needs far more than 3,000 iterations there, FISTA ~10³.
    y, phi, solution = sparse_frame(3, [(6, 6, 230.0), (24, 21, 240.0), (9, 27, 225.0)])
    x, iterations = classical.fista(jnp.asarray(y[None], jnp.float32), jnp.asarray(phi, jnp.float32), tol=1e-3)
    assert int(iterations[0]) < 3000
    x = np.asarray(x[0]).reshape(solution.shape)
    np.testing.assert_array_equal(np.argwhere(x > 70), np.argwhere(solution > 0))
    np.testing.assert_allclose(x, solution, atol=0.05)


@pytest.mark.parametrize("algorithm", ["ista", "fista"])
def test_batched_solver_matches_single_frame_loop(algorithm):
    phi = imaging.measurement_matrix()
    frames = simulate_seqcsist(1, 3, frames_per_trajectory=6)["frames"].reshape(-1, 121).astype(np.float64)
    # A zero frame (stops after one update), a dimmer frame (stops earlier) and full frames (stop later or never).
    y = np.concatenate([frames, np.zeros((1, 121)), 0.4 * frames[:1]])
    options = dict(lam=1.0, max_iter=150, tol=0.4)
    with jax.enable_x64(True):
        x, iterations = classical.solve(jnp.asarray(y), jnp.asarray(phi), algorithm, **options)
    pinv, lip = np.linalg.pinv(phi), np.linalg.norm(phi, ord=2) ** 2
    expected = [loop_reference(row, phi, pinv, lip, algorithm, **options) for row in y]
    counts = np.array([e[1] for e in expected])
    assert len(set(counts.tolist())) >= 3, counts  # the frames really stop at different iterations
    np.testing.assert_array_equal(np.asarray(iterations), counts)
    np.testing.assert_allclose(np.asarray(x), np.stack([e[0] for e in expected]), rtol=1e-9, atol=1e-9)


def test_sparse_solver_method_shapes():
    config = ml_collections.ConfigDict({"name": "ista", "max_iter": 20, "tol": 1e-4, "lam": 1.0, "trainable": False})
    method = methods.build_method(config, ml_collections.ConfigDict())
    frames = simulate_seqcsist(2, 4, frames_per_trajectory=5)["frames"].astype(np.float32)
    phi = imaging.measurement_matrix().astype(np.float32)
    q = np.zeros((1089, 121), np.float32)
    variables = method.model.init(jax.random.PRNGKey(0), frames, phi, q)
    assert not jax.tree_util.tree_leaves(variables)  # no parameters
    out = method.model.apply(variables, frames, phi, q)
    assert out["output"].shape == (2, 5, 33, 33)
    np.testing.assert_array_equal(out["iterations"], 20)
    np.testing.assert_array_equal(method.frame_index(5), np.arange(5))
    x, _ = classical.ista(frames.reshape(-1, 121), phi, max_iter=20)
    np.testing.assert_allclose(np.asarray(out["output"]).reshape(-1, 1089), np.asarray(x), rtol=1e-6, atol=1e-4)


def test_invalid_arguments_raise():
    phi = imaging.measurement_matrix()
    with pytest.raises(ValueError, match="y must be"):
        classical.ista(jnp.zeros((2, 100)), jnp.asarray(phi))
    with pytest.raises(ValueError, match="algorithm"):
        classical.solve(jnp.zeros((2, 121)), jnp.asarray(phi), "bid")


def test_lipschitz_and_flops():
    phi = imaging.measurement_matrix()
    assert classical.lipschitz_constant(phi) == pytest.approx(np.linalg.svd(phi, compute_uv=False)[0] ** 2)
    assert classical.flops_per_frame(3000) == pytest.approx(2 * 121 * 1089 + 3000 * (4 * 121 * 1089 + 8 * 1089))
