"""Tests of seqcsist_jax.decode.centre (feasibility centring) and the start alternatives it draws on.

References are independent of the code under test: the rounding likelihood against numerical integration of
the Gaussian density (scipy), its analytic derivatives against JAX's automatic differentiation of the value,
feasibility against the generator's own pipeline (``imaging.render`` + ``imaging.quantize``). Images come from
the CSIST-100K generator with fixed seeds (SPEC §9).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats
from scipy.optimize import linear_sum_assignment

from seqcsist_jax import imaging
from seqcsist_jax.data.csist100k import simulate_csist100k
from seqcsist_jax.decode import (CSIST100K_OPTIONS, CountCapWarning, centre, decode_arrays, frames,
                                 localisation_confidence, make_options)
from seqcsist_jax.decode.centre import centre_fits, centre_objective, log_rounding_likelihood
from tests.program_record import assert_all_foreseen, recorded_programs

LEAST_SQUARES = dict(max_targets=5, single_pixel=True, layout_starts=6, min_separation=0.494, uniform_slots=True)


@pytest.mark.parametrize("s", [0.15, 0.5, 2.0])
def test_rounding_likelihood_matches_numerical_integration(s):
    r = np.linspace(-3.0, 3.0, 61)
    got = np.exp(np.asarray(log_rounding_likelihood(jnp.asarray(r, jnp.float32), s), np.float64))
    # P(round(v + n) = o) with r = v - o: the noise must land in [-½ - r, ½ - r).
    want = np.array([integrate.quad(stats.norm(0.0, s).pdf, -0.5 - x, 0.5 - x, epsabs=1e-13)[0] for x in r])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_rounding_likelihood_tails_stay_finite_and_match_scipy():
    r = np.array([5.0, 20.0, 80.0, -80.0], np.float64)
    got = np.asarray(log_rounding_likelihood(jnp.asarray(r, jnp.float32), 0.15), np.float64)
    a, b = (0.5 - np.abs(r)) / 0.15, (-0.5 - np.abs(r)) / 0.15
    want = stats.norm.logcdf(a) + np.log1p(-np.exp(stats.norm.logcdf(b) - stats.norm.logcdf(a)))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_pixel_derivatives_match_automatic_differentiation():
    opts = make_options(**CSIST100K_OPTIONS)
    # One frame with saturated (255), dark (0) and ordinary pixels; residuals up to 1.5 grey levels.
    obs = jnp.asarray(np.array([[0.0, 12.0, 254.0], [255.0, 255.0, 100.0], [37.0, 3.0, 255.0]]), jnp.float32)
    pred = obs + jnp.asarray(np.random.default_rng(0).uniform(-1.5, 1.5, obs.shape), jnp.float32)
    value, d1, d2 = jax.jit(lambda p: centre._pixel_derivatives(p, obs, opts))(pred)
    grad_fn = jax.jit(jax.grad(lambda p: jnp.sum(centre._pixel_terms(p, obs, opts))))
    # The terms are elementwise, so the Hessian is diagonal and H·1 is its diagonal.
    d2_ref = jax.jit(lambda p: jax.jvp(grad_fn, (p,), (jnp.ones_like(p),))[1])(pred)
    np.testing.assert_allclose(value, jax.jit(lambda p: centre._pixel_terms(p, obs, opts))(pred), rtol=1e-5)
    np.testing.assert_allclose(d1, grad_fn(pred), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(d2, d2_ref, rtol=1e-3, atol=1e-3)
    assert np.all(np.asarray(d2) >= 0)  # convex in the prediction: the Gauss–Newton matrix is PSD


@pytest.fixture(scope="module")
def clipped_group():
    """300 generator images of 4–5 targets inside pixel (5, 5), their least-squares fits and the stored bytes."""
    data = simulate_csist100k(300, seed=7, min_targets=4, max_targets=5, pixel_range=(5, 5))
    images = np.asarray(data["image"], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dec = decode_arrays(images[:, None], method="refine", **LEAST_SQUARES)
    return data, images, dec


def _mean_error(params: np.ndarray, count: np.ndarray, targets: np.ndarray, ok: np.ndarray) -> float:
    errs = []
    for i in np.flatnonzero(ok):
        k = count[i]
        d = np.sqrt(((params[i, :k, None, :2] - targets[i, None, :k, :2]) ** 2).sum(-1))
        r, c = linear_sum_assignment(d)
        errs.append(d[r, c].mean())
    return float(np.mean(errs))


def test_centring_lowers_the_objective_and_moves_fits_towards_the_truth(clipped_group):
    data, images, dec = clipped_group
    count = dec.count[:, 0]
    start = dec.detections[:, 0, :, :3].astype(np.float32)
    opts = make_options(**LEAST_SQUARES, centre_iterations=10)
    res = centre_fits(images, start, count, opts)
    sat = images.reshape(len(images), -1).max(-1) >= 255
    np.testing.assert_array_equal(res.centred, sat & (count > 0))
    assert res.centred.mean() > 0.8  # 4–5 targets in one pixel almost always clip

    fn = jax.vmap(lambda p, a, o: centre_objective(p, a, o, opts))
    active = jnp.asarray(np.arange(5)[None] < count[:, None])
    before = np.asarray(fn(jnp.asarray(start), active, jnp.asarray(images)))
    after = np.asarray(fn(jnp.asarray(res.params), active, jnp.asarray(images)))
    ok = res.centred
    # Steps are accepted only when the objective drops (float32 evaluation: allow rounding of ~1e-6 relative).
    assert np.all(after[ok] <= before[ok] + 1e-5 * np.abs(before[ok]) + 1e-3)
    np.testing.assert_allclose(res.cost[ok], after[ok], rtol=1e-4, atol=1e-2)
    # Frames the rendering reproduces byte for byte: centring is built to land there.
    p64 = res.params.astype(np.float64) * (np.arange(5)[None, :, None] < count[:, None, None])
    exact = np.all(imaging.quantize(imaging.render(p64)) == images, axis=(1, 2))
    p0 = start.astype(np.float64) * (np.arange(5)[None, :, None] < count[:, None, None])
    exact0 = np.all(imaging.quantize(imaging.render(p0)) == images, axis=(1, 2))
    assert exact[ok].mean() > exact0[ok].mean() + 0.1, (exact[ok].mean(), exact0[ok].mean())  # ~0.71 -> ~0.87
    # And the middle of that set is closer to the truth on average (the point of centring).
    right = ok & (count == data["num_targets"])
    truth = np.asarray(data["targets"], np.float64)
    assert _mean_error(res.params, count, truth, right) < 0.9 * _mean_error(start, count, truth, right)
    # Positions stay in the host pixel (soft walls of 0.03 px).
    act = np.arange(5)[None] < count[:, None]
    assert np.all(np.abs(res.params[..., :2][act] - 5.0) <= 0.5 + 0.1)


def test_centring_off_or_unsaturated_frames_keep_the_fit(clipped_group):
    _, images, dec = clipped_group
    count = dec.count[:, 0]
    start = dec.detections[:, 0, :, :3].astype(np.float32)
    off = centre_fits(images, start, count, make_options(**LEAST_SQUARES))
    assert not off.centred.any()
    np.testing.assert_array_equal(off.params, np.where((np.arange(5)[None] < count[:, None])[..., None], start, 0))
    # An unsaturated frame (one target) is left alone unless centre_saturated_only is turned off.
    one = imaging.quantize(imaging.render(np.array([[[3.3, 6.8, 230.0]]]))).astype(np.float32)
    fit = np.array([[[3.31, 6.79, 228.0]]], np.float32)
    kept = centre_fits(one, fit, np.array([1]), make_options(**LEAST_SQUARES, centre_iterations=5))
    assert not kept.centred[0] and np.array_equal(kept.params, fit)
    moved = centre_fits(one, fit, np.array([1]),
                        make_options(**LEAST_SQUARES, centre_iterations=5, centre_saturated_only=False))
    assert moved.centred[0] and np.abs(moved.params[0, 0, :2] - [3.3, 6.8]).max() < 0.02


def _truth_and_junk(clipped_group, n: int):
    """The first ``n`` clipped images whose least-squares count is right: their indices, counts, true targets
    ``(n, 5, 3)`` and a junk start with every target stacked in one corner of the pixel."""
    data, images, dec = clipped_group
    right = np.flatnonzero((dec.count[:, 0] == data["num_targets"]) & (images.reshape(300, -1).max(-1) >= 255))[:n]
    truth = np.asarray(data["targets"], np.float32)[right]
    junk = truth.copy()
    junk[:, :, :2] = np.round(truth[:, :, :2]) + 0.3
    return right, data["num_targets"][right], truth, junk


def test_the_candidate_with_the_lowest_objective_wins(clipped_group):
    _, images, _ = clipped_group
    right, count, truth, junk = _truth_and_junk(clipped_group, 40)
    # centre_keep=2: both candidates run every step, so the winner is the lower final objective.
    opts = make_options(**LEAST_SQUARES, centre_iterations=8, centre_keep=2)
    solo_junk = centre_fits(images[right], junk, count, opts)
    solo_truth = centre_fits(images[right], truth, count, opts)
    both = centre_fits(images[right], junk, count, opts, candidates=truth[:, None], valid=np.ones((40, 1), bool))
    want = np.where((solo_truth.cost < solo_junk.cost)[:, None, None], solo_truth.params, solo_junk.params)
    # Batched with another candidate, float32 rounding differs from the solo runs (~1e-6 relative).
    np.testing.assert_allclose(both.params, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(both.cost, np.minimum(solo_truth.cost, solo_junk.cost), rtol=1e-4, atol=1e-3)
    assert (solo_truth.cost < solo_junk.cost).mean() > 0.5  # the truth start wins on most images
    # An invalid candidate is never chosen, however good.
    none = centre_fits(images[right], junk, count, opts, candidates=truth[:, None], valid=np.zeros((40, 1), bool))
    np.testing.assert_allclose(none.params, solo_junk.params, rtol=1e-5, atol=1e-4)


def test_distinct_ends_drops_repeated_basins_and_pads():
    rank = jnp.asarray([2.0, 1.0, 1.00001, jnp.inf, 3.0])
    idx, ok = frames.distinct_ends(rank, 3)
    assert list(np.asarray(idx)) == [1, 0, 4] and np.asarray(ok).all()
    idx, ok = frames.distinct_ends(rank, 7)
    assert list(np.asarray(idx)[:3]) == [1, 0, 4] and list(np.asarray(ok)) == [True] * 3 + [False] * 4


def test_fit_starts_alternatives_are_distinct_basins_best_first(clipped_group):
    """Five starts near the truth end in one basin (counted once), a junk start in another; an invalid start
    contributes nothing; the best end comes first."""
    data, images, _ = clipped_group
    i = int(np.flatnonzero(data["num_targets"] == 5)[0])
    truth = np.asarray(data["targets"][i], np.float32)
    rng = np.random.default_rng(3)
    starts = np.stack([truth + np.concatenate([rng.normal(0, 0.15, (5, 2)), np.zeros((5, 1))], 1)
                       for _ in range(6)]).astype(np.float32)
    starts[5, :, :2] = np.round(truth[:, :2]) + 0.35 + 0.02 * np.arange(5)[:, None]  # junk: every target in a corner
    opts = make_options(**LEAST_SQUARES, centre_candidates=4)
    fit_starts = jax.jit(frames._fit_starts, static_argnames="opts")
    args = (jnp.asarray(starts), None, jnp.ones(5, bool), jnp.asarray(images[i]))
    out = {}
    for junk_valid in (True, False):
        valid = jnp.asarray([True] * 5 + [junk_valid])
        out[junk_valid] = fit_starts(args[0], valid, *args[2:], opts=opts)
    best, _, _, alts, ok = out[True]
    np.testing.assert_array_equal(alts[0], best)
    assert list(np.asarray(ok)) == [True, True, False, False]  # two basins, padded to 4
    assert list(np.asarray(out[False][4])) == [True, False, False, False]  # the junk basin was the second
    np.testing.assert_array_equal(out[False][3][0], best)
    _, _, _, solo, solo_ok = fit_starts(args[0], jnp.ones(6, bool), *args[2:], opts=make_options(**LEAST_SQUARES))
    assert solo.shape == (1, 5, 3) and bool(solo_ok[0])
    np.testing.assert_array_equal(solo[0], best)


def _agreement_loops(best, best_cost, ends, end_costs, count, radius, temperature):
    """Loop reference of :func:`centre.basin_agreement` for one frame (float64)."""
    share = np.ones(best.shape[0])
    for k in range(count):
        num, den = 1.0, 1.0
        for b in range(len(ends)):
            if not np.isfinite(end_costs[b]):
                continue
            w = np.exp(-np.clip((end_costs[b] - best_cost) / temperature, -50, 50))
            near = min(np.hypot(*(ends[b, j, :2] - best[k, :2])) for j in range(count)) <= radius
            num, den = num + w * near, den + w
        share[k] = num / den
    return share


def test_basin_agreement_matches_loops():
    rng = np.random.default_rng(0)
    fn = jax.jit(centre.basin_agreement, static_argnames=("radius", "temperature"))
    for trial in range(20):
        count, a = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        best = rng.uniform(4.5, 5.5, (5, 3)).astype(np.float64)
        ends = best[None] + rng.normal(0, 0.12, (a, 5, 3))
        # The match is to any active target, in any order (active rows first, as fits store them).
        ends[:, :count] = ends[:, rng.permutation(count)]
        costs = rng.normal(0, 2, a)
        costs[rng.random(a) < 0.2] = np.inf
        active = np.arange(5) < count
        for temperature in (0.5, 1.0):
            got = np.asarray(fn(jnp.asarray(best), jnp.float32(0.3), jnp.asarray(ends), jnp.asarray(costs),
                                jnp.asarray(active), radius=0.1, temperature=temperature))
            d = np.sqrt(((ends[:, None, :count, :2] - best[None, :count, None, :2]) ** 2).sum(-1)).min(-1)
            if np.any(np.abs(d - 0.1) < 1e-5):  # an indicator on the edge: rounding may flip it
                continue
            want = _agreement_loops(best, 0.3, ends, costs, count, 0.1, temperature)
            np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 unless x64: exp and sums of <= 6 terms
    # Closed forms: an equally good end that misses target 0 but not target 1, and nothing else.
    best = np.array([[5.0, 5.0, 230.0], [5.3, 5.0, 230.0]])
    end = np.array([[[5.2, 5.2, 230.0], [5.3, 5.05, 230.0]]])
    got = np.asarray(centre.basin_agreement(jnp.asarray(best), 1.0, jnp.asarray(end), jnp.asarray([1.0]),
                                            jnp.asarray([True, True]), 0.1, 1.0))
    np.testing.assert_allclose(got, [1 / 2, 1.0], rtol=1e-6)
    got = np.asarray(centre.basin_agreement(jnp.asarray(best), 1.0, jnp.asarray(end), jnp.asarray([1.0 + np.log(3)]),
                                            jnp.asarray([True, True]), 0.1, 1.0))
    np.testing.assert_allclose(got, [1 / (1 + 1 / 3), 1.0], rtol=1e-5)  # weight 1/3 for a cost 1.1 nats higher


def test_centre_fits_agreement_over_candidates(clipped_group):
    _, images, _ = clipped_group
    # The images and options of the test above plus the agreement: ``off`` then compiles no new program.
    right, count, truth, junk = _truth_and_junk(clipped_group, 40)
    opts = make_options(**LEAST_SQUARES, centre_iterations=8, centre_keep=2, basin_temperature=1.0)
    # Without candidates, or off: agreement is 1.
    np.testing.assert_array_equal(centre_fits(images[right], truth, count, opts).agreement, 1.0)
    off = make_options(opts, basin_temperature=0.0)
    both_off = centre_fits(images[right], junk, count, off, candidates=truth[:, None], valid=np.ones((40, 1), bool))
    np.testing.assert_array_equal(both_off.agreement, 1.0)
    # Two candidates, both run to the end (centre_keep=2): the agreement of the winner with both ends.
    both = centre_fits(images[right], junk, count, opts, candidates=truth[:, None], valid=np.ones((40, 1), bool))
    solo = [centre_fits(images[right], x, count, opts) for x in (junk, truth)]
    checked = 0
    for i in range(40):
        ends = np.stack([s.params[i] for s in solo]).astype(np.float64)
        costs = np.array([s.cost[i] for s in solo], np.float64)
        if abs(costs[0] - costs[1]) < 1e-2:  # a tie: the batched run may pick either
            continue
        best = ends[np.argmin(costs)]
        k = int(count[i])
        d = np.sqrt(((ends[:, None, :k, :2] - best[None, :k, None, :2]) ** 2).sum(-1)).min(-1)
        if np.any(np.abs(d - opts.score_radius) < 1e-3):  # batched and solo runs differ by ~1e-4 px
            continue
        want = _agreement_loops(best, costs.min(), ends, costs, k, opts.score_radius, 1.0)
        np.testing.assert_allclose(both.agreement[i, :k], want[:k], rtol=1e-3, atol=1e-3)
        checked += 1
    assert checked >= 20
    assert np.all((both.agreement > 0) & (both.agreement <= 1))
    # Unsaturated frames are not centred and keep agreement 1, whatever their candidates.
    one = imaging.quantize(imaging.render(np.array([[[3.3, 6.8, 230.0], [3.0, 6.0, 225.0]]]))).astype(np.float32)
    fit = np.array([[[3.3, 6.8, 230.0], [3.15, 6.0, 225.0]]], np.float32)  # target 1 0.15 px off
    alt = np.array([[[[3.3, 6.8, 230.0], [3.0, 6.0, 225.0]]]], np.float32)  # the truth, a far better fit
    res = centre_fits(one, fit, np.array([2]), opts, candidates=alt, valid=np.ones((1, 1), bool))
    assert not res.centred[0]
    np.testing.assert_array_equal(res.agreement, 1.0)


@pytest.mark.slow
def test_preset_decodes_clipped_groups_better_than_least_squares(clipped_group, monkeypatch):
    data, images, dec = clipped_group
    with warnings.catch_warnings(), recorded_programs(monkeypatch) as (started, asked):
        warnings.simplefilter("ignore", CountCapWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        cen = decode_arrays(images[:, None], method="refine", **CSIST100K_OPTIONS)
    assert_all_foreseen(started, asked)  # every stage and the centring compiled in the background
    assert {key[0] for key in started} == {id(frames._stage), id(centre._centre_chunk)}
    truth = np.asarray(data["targets"], np.float64)
    right = (cen.count[:, 0] == data["num_targets"]) & (dec.count[:, 0] == data["num_targets"])
    assert right.mean() > 0.9
    e_cen = _mean_error(cen.detections[:, 0], cen.count[:, 0], truth, right)
    e_ls = _mean_error(dec.detections[:, 0], dec.count[:, 0], truth, right)
    assert e_cen < 0.9 * e_ls, (e_cen, e_ls)
    # The preset's scores carry the basin agreement: score = P(count) · P(error <= r) · agreement, with the
    # agreement in (0, 1], below 1 on some targets, and those targets are the worse localised ones.
    opts = make_options(**CSIST100K_OPTIONS)
    assert opts.basin_temperature == 1.0
    active = np.arange(5)[None] < cen.count[:, 0, None]
    base = cen.count_prob[:, 0, None] * localisation_confidence(np.where(active, cen.pos_var[:, 0], 1.0),
                                                                  opts.score_radius)
    ratio = np.where(active, cen.detections[:, 0, :, 3] / base, 1.0)  # the agreement factor of each target
    agree = ratio[active]
    assert np.all((agree > 0) & (agree <= 1 + 1e-9))
    low = agree < 0.9
    assert 0.01 < low.mean() < 0.5, low.mean()
    err, flags = [], []
    for i in np.flatnonzero(right):
        k = cen.count[i, 0]
        d = np.sqrt(((cen.detections[i, 0, :k, None, :2] - truth[i, None, :k, :2]) ** 2).sum(-1))
        r, c = linear_sum_assignment(d)
        e = np.empty(k)
        e[r] = d[r, c]
        err.append(e)
        flags.append(ratio[i, :k] < 0.9)
    err, flags = np.concatenate(err), np.concatenate(flags)
    assert err[flags].mean() > 1.5 * err[~flags].mean(), (err[flags].mean(), err[~flags].mean())


@pytest.mark.parametrize("field,value", [("centre_iterations", -1), ("centre_softness", 0.0), ("centre_wall", -0.1),
                                         ("centre_candidates", 0), ("centre_keep", 0),
                                         ("centre_screen_iterations", 1.5), ("centre_saturated_only", 1),
                                         ("basin_temperature", -1.0), ("basin_temperature", float("nan")),
                                         ("basin_temperature", True)])
def test_bad_centring_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        make_options(**{field: value})


def test_options_accept_numpy_scalars_from_sweeps():
    opts = make_options(centre_iterations=np.int64(7), centre_wall=np.float32(0.03), max_targets=np.int32(5),
                        centre_saturated_only=np.bool_(False))
    assert opts.centre_iterations == 7 and type(opts.centre_iterations) is int
    assert opts.max_targets == 5 and opts.centre_saturated_only is False
    assert abs(opts.centre_wall - 0.03) < 1e-8
    with pytest.raises(ValueError, match="centre_iterations"):
        make_options(centre_iterations=np.float64(1.5))


def test_constraint_derivatives_match_automatic_differentiation():
    """The walls' and priors' gradient (with the separation term) and, without it, their exact diagonal Hessian."""
    rng = np.random.default_rng(1)
    theta = np.concatenate([5.0 + rng.uniform(-0.45, 0.45, (4, 2)), rng.uniform(215, 255, (4, 1))], 1)
    theta = jnp.asarray(theta.reshape(-1), jnp.float32)
    active = jnp.asarray([True, True, True, False])
    lo, hi = jnp.full((2,), 4.5), jnp.full((2,), 5.5)
    for extra in (dict(min_separation=0.494), dict(min_separation=None, brightness_range=(220.0, 250.0))):
        opts = make_options(**{**LEAST_SQUARES, **extra})
        # Jitted: one compiled program each (op-by-op, every primitive of the Hessian compiles on its own).
        grad, hess = jax.jit(lambda t: centre._constraint_normal(t, active, lo, hi, opts))(theta)
        ref = jax.jit(jax.grad(lambda t: centre._constraint_terms(t, active, lo, hi, opts)))(theta)
        np.testing.assert_allclose(grad, ref, rtol=1e-3, atol=1e-3)
        if extra["min_separation"] is None:  # every term acts on one coordinate: the Hessian is exact
            exact = jax.jit(jax.hessian(lambda t: centre._constraint_terms(t, active, lo, hi, opts)))(theta)
            np.testing.assert_allclose(hess, exact, rtol=1e-3, atol=1e-3)
