"""Trajectory restarts (``DecodeOptions.trajectory_restarts``) and the trajectory fit's path coefficients."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from seqcsist_jax.data.simulate import simulate_seqcsist
from seqcsist_jax.decode import make_options, trajectory
from seqcsist_jax.decode.frames import FrameFits, slots_for

T = 20


def _legendre_paths(coef: np.ndarray, bright: np.ndarray) -> np.ndarray:
    """``(N, T, K, 3)`` paths from Legendre coefficients ``coef (N, K, 2, D+1)`` with numpy's own ``legval``."""
    tau = np.linspace(-1.0, 1.0, T)
    n, k = coef.shape[:2]
    out = np.zeros((n, T, k, 3))
    for i in range(n):
        for j in range(k):
            out[i, :, j, 0] = np.polynomial.legendre.legval(tau, coef[i, j, 0])
            out[i, :, j, 1] = np.polynomial.legendre.legval(tau, coef[i, j, 1])
            out[i, :, j, 2] = bright[i, j]
    return out


@pytest.mark.parametrize("shared_from", [1, 2, 3])
def test_path_coefficients_reproduce_polynomial_paths(shared_from):
    opts = make_options(max_targets=4, shared_from=shared_from)
    slots, degree = slots_for(4), opts.degree
    rng = np.random.default_rng(shared_from)
    coef = rng.normal(0.0, 0.1, (3, slots, 2, degree + 1))
    coef[..., 0] += 5.0
    s = min(shared_from, degree + 1)
    coef[..., s:] = coef[:, :1, :, s:]  # the shared coefficients are common to the group
    bright = rng.uniform(220, 250, (3, slots))
    count = np.array([4, 3, 1])
    paths = _legendre_paths(coef, bright)
    theta = trajectory.path_coefficients(paths, count, slots, opts)
    local = trajectory._local_map(trajectory.legendre_basis(T, degree))
    reparam = trajectory.shared_reparametrisation(slots, degree, shared_from)
    pk = local.shape[-1]
    for i, k in enumerate(count):
        pos = np.einsum("tap,kp->tka", local, (reparam @ theta[i]).reshape(slots, pk))
        # float32 coefficients of paths near 5 px: a few 1e-6 px.
        np.testing.assert_allclose(pos[:, :k], paths[i, :, :k], atol=2e-5, rtol=1e-6)


def test_jittered_starts_move_only_active_offsets():
    opts = make_options(max_targets=8, trajectory_restarts=400, restart_jitter=0.1, restart_seed=3)
    slots = slots_for(8)
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(3, slots * 5 + 2)).astype(np.float32)
    count = np.array([8, 5, 0])
    starts = trajectory.jittered_starts(theta, count, slots, opts)
    assert starts.shape == (3, 401, theta.shape[1])
    np.testing.assert_array_equal(starts[:, 0], theta)
    moved = starts[:, 1:] - theta[:, None]
    own = 5  # per target (x0, x1, y0, y1, b) with the curvature shared (shared_from=2)
    for i, k in enumerate(count):
        cols = np.zeros(theta.shape[1], bool)
        cols[own * np.arange(k)] = cols[own * np.arange(k) + 2] = True
        assert np.all(moved[i][:, ~cols] == 0)  # velocities, brightness, shared terms, inactive slots
        if k:
            assert np.all(moved[i][:, cols] != 0)
    sd = moved[0][:, np.r_[own * np.arange(8), own * np.arange(8) + 2]].std()
    assert abs(sd - 0.1) < 0.1 * 4 / np.sqrt(2 * 400 * 16)  # 4 standard errors of a std from 6,400 draws
    # One pattern for every trajectory: a trajectory's starts do not depend on its batch.
    alone = trajectory.jittered_starts(theta[1:2], count[1:2], slots, opts)
    np.testing.assert_array_equal(alone[0], starts[1])
    again = trajectory.jittered_starts(theta, count, slots, opts)
    np.testing.assert_array_equal(again, starts)


def _perturbed_frame_fits(targets: np.ndarray, count: np.ndarray, kmax: int, noise: float, seed: int) -> FrameFits:
    """Per-frame fits that are the truth moved by N(0, noise²) px: imperfect starts without compiling the
    per-frame fitter (only the trajectory fit is under test)."""
    n, t = targets.shape[:2]
    rng = np.random.default_rng(seed)
    params = np.zeros((n * t, kmax, kmax, 3), np.float32)
    for i in range(n):
        k = count[i]
        rows = np.array(targets[i, :, :k], np.float64)
        rows[..., :2] += rng.normal(0.0, noise, (t, k, 2))
        params[i * t : (i + 1) * t, k - 1, :k] = rows
        params[i * t : (i + 1) * t, 0, 0, :2] = targets[i, :, :k, :2].mean(1)  # the group centre (one-target fit)
        params[i * t : (i + 1) * t, 0, 0, 2] = targets[i, :, :k, 2].sum(1)
    return FrameFits(params, np.zeros((n * t, kmax + 1)), np.zeros((n * t, kmax, kmax)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # saturated frames (expected here)
def test_restarts_never_raise_the_cost_and_keep_the_counts():
    data = simulate_seqcsist(4, 2024, min_targets=3, max_targets=4)  # 0.3 px apart, mostly clipped
    frames, targets = data["frames"].astype(np.float32), data["targets"]
    count = (targets[..., 2] > 0).sum(-1)[:, 0]
    fits = _perturbed_frame_fits(targets, count, 4, 0.08, 0)
    votes = np.repeat(count[:, None], T, 1)
    o0 = make_options(max_targets=4)
    o3 = make_options(max_targets=4, trajectory_restarts=3)
    plain = trajectory.fit_trajectories(frames, fits, votes, o0)
    restarted = trajectory.fit_trajectories(frames, fits, votes, o3)
    np.testing.assert_array_equal(restarted.count, count)
    assert np.all(restarted.cost <= plain.cost)  # the fit itself is one of the starts
    assert np.all(restarted.count_prob >= plain.count_prob - 1e-12)  # the chosen count's criterion only fell
    # The returned fit is what its cost says: recompute the cost of the returned paths from scratch.
    o = trajectory._fit_degree(o3, T)
    slots = slots_for(4)
    local = jnp.asarray(trajectory._local_map(trajectory.legendre_basis(T, o.degree)))
    reparam = jnp.asarray(trajectory.shared_reparametrisation(slots, o.degree, o.shared_from))
    theta = trajectory.path_coefficients(restarted.params, restarted.count, slots, o)
    for i in range(frames.shape[0]):
        active = jnp.arange(slots) < restarted.count[i]
        _, cost_fn, _, _ = trajectory._objective(jnp.asarray(frames[i]), active, local, reparam, o)
        # float32 sums over 20 × 121 pixels of squared residuals of a few grey levels.
        np.testing.assert_allclose(float(cost_fn(jnp.asarray(theta[i]))), restarted.cost[i], rtol=1e-3, atol=1e-2)
    inactive = np.arange(4)[None, None, :] >= restarted.count[:, None, None]
    assert np.all(restarted.params[np.broadcast_to(inactive, restarted.params.shape[:3])] == 0)
    assert np.all(np.isinf(restarted.pos_var[np.broadcast_to(inactive, restarted.pos_var.shape)]))


@pytest.mark.parametrize("field,value", [("trajectory_restarts", -1), ("trajectory_restarts", 1.5),
                                         ("restart_jitter", 0.0), ("restart_jitter", float("nan")),
                                         ("restart_seed", -2)])
def test_restart_options_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        make_options(**{field: value})
