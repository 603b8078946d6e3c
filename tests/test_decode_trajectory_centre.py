"""Trajectory fits refined on the rounding likelihood (seqcsist_jax.decode.trajectory_centre) and path costs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqcsist_jax.data.simulate import simulate_seqcsist
from seqcsist_jax.decode import centre, forward, make_options, trajectory, trajectory_centre
from seqcsist_jax.decode.frames import FrameFits, slots_for

T = 20


def _polynomial(paths: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The trajectory fit's polynomial paths closest to ``paths`` (the generator's are not exactly polynomial)."""
    opts = trajectory._fit_degree(make_options(), T)
    slots = slots_for(opts.max_targets)
    theta = trajectory.path_coefficients(paths, count, slots, opts)
    local, reparam = trajectory._maps(T, opts)
    pk = local.shape[-1]
    out = np.stack([np.einsum("tap,kp->tka", np.asarray(local), (np.asarray(reparam) @ th).reshape(slots, pk))
                    for th in theta])
    return out * (np.arange(slots)[None, None, :, None] < count[:, None, None, None])


@pytest.fixture(scope="module")
def groups():
    """Three trajectories of 3–4 targets 0.3 px apart (mostly clipped frames) and a perturbed polynomial start."""
    data = simulate_seqcsist(3, 77, min_targets=3, max_targets=4)
    targets = np.asarray(data["targets"], np.float64)
    count = (targets[..., 2] > 0).sum(-1)[:, 0].astype(np.int32)
    rng = np.random.default_rng(1)
    start = targets.copy()
    offset = rng.normal(0.0, 0.04, (3, 1, 4, 2))  # a rigid error per target
    start[..., :2] += offset * (np.arange(4)[None, None, :, None] < count[:, None, None, None])
    return np.asarray(data["frames"], np.float32), targets, count, _polynomial(start, count)


def test_gauss_newton_gradient_is_the_objectives_and_curvature_is_psd(groups):
    frames, _, count, start = groups
    opts = trajectory._fit_degree(make_options(), T)
    slots = slots_for(opts.max_targets)
    theta = trajectory.path_coefficients(start, count, slots, opts)
    local, reparam = trajectory._maps(T, opts)

    @jax.jit  # one compiled program for every group (op by op, each primitive would compile on its own)
    def both(obs, active, x):
        _, objective, normal = trajectory_centre._model(obs, active, local, reparam, opts)
        return (*normal(x), jax.grad(objective)(x))

    for i in range(frames.shape[0]):
        active = jnp.arange(slots) < count[i]
        hess, grad, auto = both(jnp.asarray(frames[i]), active, jnp.asarray(theta[i]))
        owner = np.asarray(jnp.diag(hess) != 1.0) | (np.abs(np.asarray(grad)) > 0)
        # float32 sums over 20 × 121 pixels: agree to 1e-3 of the gradient's scale.
        scale = float(jnp.max(jnp.abs(auto)))
        np.testing.assert_allclose(np.asarray(grad)[owner], np.asarray(auto)[owner], atol=1e-3 * scale, rtol=1e-3)
        eig = np.linalg.eigvalsh(np.asarray(hess, np.float64))
        assert eig.min() > -1e-4 * eig.max()


def test_centring_never_raises_the_objective_and_keeps_the_counts(groups):
    frames, _, count, start = groups
    opts = make_options(trajectory_centre_iterations=6)
    slots = slots_for(opts.max_targets)
    params, objective, var = trajectory_centre.centre_trajectories(frames, start, count, opts)
    o = trajectory._fit_degree(opts, T)
    before = trajectory_centre.trajectory_rounding_objective(
        frames, trajectory.path_coefficients(start, count, slots, o), count, o)
    after = trajectory_centre.trajectory_rounding_objective(
        frames, trajectory.path_coefficients(params, count, slots, o), count, o)
    assert np.all(objective <= before)  # steps are kept only when they lower it
    assert np.all(objective < before)  # a 0.04 px start error leaves room to improve
    np.testing.assert_allclose(after, objective, rtol=1e-4, atol=1e-2)  # the returned paths have that objective
    inactive = np.arange(opts.max_targets)[None, None, :] >= count[:, None, None]
    assert np.all(params[np.broadcast_to(inactive, params.shape[:3])] == 0)
    assert np.all(np.isinf(var[np.broadcast_to(inactive, var.shape)]))
    active_var = var[~np.broadcast_to(inactive, var.shape)]
    assert np.all(np.isfinite(active_var) & (active_var > 0))


def test_rounding_objective_matches_a_per_frame_sum(groups):
    """The trajectory objective is the per-pixel terms of :mod:`centre` summed over every frame plus the
    brightness prior once per target — recomputed here frame by frame."""
    frames, targets, count, start = groups
    opts = trajectory._fit_degree(make_options(), T)
    slots = slots_for(opts.max_targets)
    theta = trajectory.path_coefficients(start, count, slots, opts)
    got = trajectory_centre.trajectory_rounding_objective(frames, theta, count, opts)
    mu, sd = opts.brightness_prior
    for i in range(frames.shape[0]):
        k = count[i]
        coef_b = start[i, :, :k, 2].mean(0)  # path_coefficients' brightness: the mean over frames
        total = 0.5 * np.sum(((coef_b - mu) / sd) ** 2)
        for j in range(T):
            pred = forward.predict(jnp.asarray(start[i, j, :k], jnp.float32), 11, opts.sigma)
            total += float(jnp.sum(centre._pixel_terms(pred, jnp.asarray(frames[i, j]), opts)))
        np.testing.assert_allclose(got[i], total, rtol=1e-4)


def test_path_costs_are_censored_squares_plus_the_prior(groups):
    frames, _, count, start = groups
    opts = trajectory._fit_degree(make_options(), T)
    got = trajectory.path_costs(frames, start, count, opts)
    mu, sd = opts.brightness_prior
    for i in range(frames.shape[0]):
        k = count[i]
        total = opts.noise_variance * np.sum(((start[i, :, :k, 2].mean(0) - mu) / sd) ** 2)
        for j in range(T):
            total += float(forward.frame_cost(jnp.asarray(start[i, j, :k], jnp.float32), jnp.asarray(frames[i, j]),
                                              opts.clip_level, opts.sigma))
        np.testing.assert_allclose(got[i], total, rtol=1e-4)


def test_fit_trajectories_applies_the_centring_after_the_fit(groups):
    frames, targets, count, _ = groups
    n = frames.shape[0]
    rng = np.random.default_rng(2)
    params = np.zeros((n * T, 4, 4, 3), np.float32)
    for i in range(n):
        k = count[i]
        rows = targets[i, :, :k].copy()
        rows[..., :2] += rng.normal(0.0, 0.05, (T, k, 2))
        params[i * T : (i + 1) * T, k - 1, :k] = rows
        params[i * T : (i + 1) * T, 0, 0, :2] = targets[i, :, :k, :2].mean(1)
        params[i * T : (i + 1) * T, 0, 0, 2] = targets[i, :, :k, 2].sum(1)
    fits = FrameFits(params, np.zeros((n * T, 5)), np.zeros((n * T, 4, 4)))
    votes = np.repeat(count[:, None], T, 1)
    plain = trajectory.fit_trajectories(frames, fits, votes, make_options())
    centred = trajectory.fit_trajectories(frames, fits, votes, make_options(trajectory_centre_iterations=4))
    expect, _, var = trajectory_centre.centre_trajectories(frames, plain.params, plain.count,
                                                            make_options(trajectory_centre_iterations=4))
    np.testing.assert_array_equal(centred.count, plain.count)
    np.testing.assert_allclose(centred.params, expect, atol=1e-6)
    np.testing.assert_allclose(centred.pos_var, var, rtol=1e-5)
    np.testing.assert_allclose(centred.cost, trajectory.path_costs(frames, centred.params, centred.count,
                                                                   make_options()), rtol=1e-6)


def test_option_is_validated():
    with pytest.raises(ValueError, match="trajectory_centre_iterations"):
        make_options(trajectory_centre_iterations=-1)


def test_progress_bar_does_not_change_the_result(groups, capsys):
    frames, _, count, start = groups
    opts = make_options(trajectory_centre_iterations=2)
    quiet = trajectory_centre.centre_trajectories(frames, start, count, opts)
    shown = trajectory_centre.centre_trajectories(frames, start, count, opts, progress=True)
    assert "rounding likelihood" in capsys.readouterr().err
    for a, b in zip(quiet, shown):
        np.testing.assert_array_equal(a, b)
