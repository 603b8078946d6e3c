"""The rounding-likelihood refit from several restart ends (``DecodeOptions.trajectory_centre_starts``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from seqcsist_jax.data.simulate import simulate_seqcsist
from seqcsist_jax.decode import make_options, trajectory, trajectory_centre
from seqcsist_jax.decode.frames import slots_for
from tests.test_decode_restarts import _perturbed_frame_fits

T = 20


def _distinct_reference(ends: np.ndarray, costs: np.ndarray, count: np.ndarray, limit: int, tol: float):
    """Per trajectory: visit ends by (cost, index); keep one unless some kept end is within ``tol`` px on every
    active coordinate — written with explicit loops over every frame, target and axis."""
    out = []
    for i in range(costs.shape[0]):
        kept = []
        for e in sorted(range(costs.shape[1]), key=lambda j: (costs[i, j], j)):
            if len(kept) == limit:
                break
            same = False
            for j in kept:
                far = False
                for f, k, a in itertools.product(range(ends.shape[2]), range(count[i]), range(2)):
                    if abs(ends[i, e, f, k, a] - ends[i, j, f, k, a]) > tol:
                        far = True
                same = same or not far
            if not same:
                kept.append(e)
        out.append(kept + [-1] * (limit - len(kept)))
    return np.array(out)


@pytest.mark.parametrize("limit", [1, 3, 9])
def test_distinct_ends_match_a_loop_reference(limit):
    rng = np.random.default_rng(limit)
    n, m, t, slots = 5, 9, 4, 3
    ends = rng.uniform(4.0, 6.0, (n, m, t, slots, 3))
    # Planted near-copies: within the tolerance of end 0, just outside it, and differing only in inactive slots.
    ends[:, 1] = ends[:, 0] + 0.5 * trajectory.DISTINCT_END_PX
    ends[:, 2] = ends[:, 0]
    ends[:, 2, 1, 0, 1] += 1.5 * trajectory.DISTINCT_END_PX
    ends[:, 3] = ends[:, 4]
    ends[:, 3, :, 2, :] += 1.0  # slot 2 is inactive below for most trajectories
    costs = rng.uniform(0.0, 10.0, (n, m))
    costs[:, 5] = costs[:, 6]  # a tie: the lower index goes first
    count = np.array([1, 2, 2, 3, 0])
    got = trajectory.distinct_ends(ends, costs, count, limit)
    want = _distinct_reference(ends, costs, count, limit, trajectory.DISTINCT_END_PX)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (n, limit)
    assert np.all(got[:, 0] == np.argmin(costs, 1))  # the lowest-cost end always comes first
    if limit == 9:
        assert got[4, 0] >= 0 and np.all(got[4, 1:] == -1)  # no targets: every end is the same basin


KMAX = 6


@pytest.fixture(scope="module")
def groups():
    """Dense clipped groups of 5–6 targets (where restarts end in distinct basins) and noisy per-frame fits."""
    data = simulate_seqcsist(4, 31, min_targets=5, max_targets=KMAX)
    frames, targets = np.asarray(data["frames"], np.float32), np.asarray(data["targets"], np.float64)
    count = (targets[..., 2] > 0).sum(-1)[:, 0].astype(np.int32)
    return frames, count, _perturbed_frame_fits(targets, count, KMAX, 0.1, 5), np.repeat(count[:, None], T, 1)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.slow
def test_refit_from_ends_is_the_best_of_separate_refits(groups):
    frames, count, fits, votes = groups
    base = dict(max_targets=KMAX, trajectory_restarts=4, restart_jitter=0.3, trajectory_centre_iterations=4)
    one = trajectory.fit_trajectories(frames, fits, votes, make_options(**base))
    many = trajectory.fit_trajectories(frames, fits, votes, make_options(**base, trajectory_centre_starts=5))
    np.testing.assert_array_equal(many.count, one.count)
    # Independent reference: the restarts' ends, then one separate refit per distinct end, the lowest objective.
    opts = trajectory._fit_degree(make_options(**base), T)
    slots = slots_for(KMAX)
    plain = trajectory.fit_trajectories(frames, fits, votes, make_options(
        **dict(base, trajectory_restarts=0, trajectory_centre_iterations=0)))
    no_refit = trajectory.fit_trajectories(frames, fits, votes, make_options(**dict(base, trajectory_centre_iterations=0)))
    starts = trajectory.jittered_starts(
        trajectory.path_coefficients(plain.params, count, slots, opts), count, slots, opts)
    *_, ends, end_costs = trajectory._fit_chunks(frames, starts, count, opts, keep_ends=True)
    assert ends.shape == (len(count), 5, T, slots, 3) and end_costs.shape == (len(count), 5)
    pick = trajectory.distinct_ends(ends, end_costs, count, 5)
    candidates = [no_refit.params] + [ends[np.arange(len(count)), np.maximum(pick[:, j], 0), :, :KMAX]
                                      for j in range(1, 5)]
    refits = [trajectory_centre.centre_trajectories(frames, c, count, opts) for c in candidates]
    objective = np.stack([r[1] for r in refits])  # (5, N)
    objective[1:][(pick[:, 1:] < 0).T] = np.inf
    best = np.argmin(objective, 0)
    assert np.any(best > 0)  # these groups do reach a lower objective from another end
    for i in range(len(count)):
        # Separate calls differ from the batched one only in float32 rounding of 4 Gauss–Newton steps.
        np.testing.assert_allclose(many.params[i], refits[best[i]][0][i], atol=2e-4)
    got = trajectory_centre.trajectory_rounding_objective(
        frames, trajectory.path_coefficients(many.params, count, slots, opts), count, opts)
    single = trajectory_centre.trajectory_rounding_objective(
        frames, trajectory.path_coefficients(one.params, count, slots, opts), count, opts)
    # The chosen fit is one of the starts: the objective never rises (up to float32 sums over 2,420 pixels).
    assert np.all(got <= single + 1e-3 * np.abs(single) + 1e-3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_without_restarts_there_is_only_the_chosen_fit(groups):
    frames, _, fits, votes = groups
    one = trajectory.fit_trajectories(frames, fits, votes,
                                      make_options(max_targets=KMAX, trajectory_centre_iterations=3))
    many = trajectory.fit_trajectories(frames, fits, votes, make_options(
        max_targets=KMAX, trajectory_centre_iterations=3, trajectory_centre_starts=9))
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, None])
def test_option_is_validated(value):
    with pytest.raises(ValueError, match="trajectory_centre_starts"):
        make_options(trajectory_centre_starts=value)
