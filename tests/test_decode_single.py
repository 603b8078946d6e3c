"""Tests of the single-image side of seqcsist_jax.decode (CSIST-100K-style frames, SPEC §9): ``refine`` on a
5-target group inside one pixel, the count-cap warning, and the single-pixel starts and priors.

Groups are written out here by hand (not drawn by a generator): five targets inside pixel (5, 5), pairwise
>= 0.5 px apart, rendered with ``imaging.render``; the float frames are unclipped, the 8-bit ones clip at 255.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from seqcsist_jax import imaging
from seqcsist_jax.decode import CountCapWarning, decode, decode_arrays, frames, make_options

# Five targets inside pixel (5, 5) ([4.5, 5.5]²), pairwise >= 0.5 px (the minimum is 0.52·1.9·0.5 = 0.494).
GROUP5 = np.array([
    [4.63, 4.64, 231.0],
    [4.65, 5.37, 244.0],
    [5.00, 5.01, 226.0],
    [5.36, 4.63, 238.0],
    [5.38, 5.36, 249.0],
])
SINGLE = dict(max_targets=5, single_pixel=True, layout_starts=6, min_separation=0.494)


def _errors(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    d = np.sqrt(((found[:, None, :2] - truth[None, :, :2]) ** 2).sum(-1))
    r, c = linear_sum_assignment(d)
    return d[r, c]


def test_group_is_inside_one_pixel_and_spaced():
    assert np.all(np.round(GROUP5[:, :2]) == 5)
    d = np.sqrt(((GROUP5[:, None, :2] - GROUP5[None, :, :2]) ** 2).sum(-1)) + 9 * np.eye(5)
    assert d.min() >= 0.494


@pytest.fixture(scope="module")
def five():
    """``refine`` on the group rendered twice: rounded but unclipped (peak ~430; a frame with pixels above
    255 is not censored) and 8-bit clipped — one call, so both share one compilation."""
    raw = imaging.render(GROUP5[None])[0]
    img = np.stack([np.round(raw), imaging.quantize(raw).astype(np.float64)]).astype(np.float32)
    assert img[0].max() > 300 and int(imaging.count_clipped(raw)) > 0  # the cases really differ
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountCapWarning)  # the count (5) is the range's largest
        return img, decode_arrays(img[:, None], method="refine", **SINGLE)


@pytest.mark.parametrize("i", [0, 1], ids=["unclipped", "clipped"])
def test_refine_recovers_five_targets_in_one_pixel(five, i):
    _, dec = five
    assert dec.count[i, 0] == 5
    found = dec.detections[i, 0, :5]
    # Five targets in one pixel are nearly degenerate (a 4-target fit explains the noise-free frame to within
    # 0.4 grey level²): 8-bit rounding and the brightness prior move the optimum by up to ~0.03 px.
    err = _errors(found, GROUP5)
    assert err.max() <= 0.05, err
    assert np.abs(np.sort(found[:, 2]) - np.sort(GROUP5[:, 2])).max() <= 20.0
    # single_pixel: every position stays inside the pixel holding the intensity centroid.
    assert np.all((found[:, :2] >= 4.5 - 1e-5) & (found[:, :2] <= 5.5 + 1e-5))
    assert dec.at_cap[i, 0]


def test_count_cap_warns_with_number_of_frames_and_flags_them():
    three = imaging.quantize(imaging.render(GROUP5[None, :3]))
    one = imaging.quantize(imaging.render(np.array([[[3.2, 7.1, 240.0]]])))
    img = np.stack([three, one, three])  # (3, 1, 11, 11)
    with pytest.warns(CountCapWarning, match=r"2 of 3 frames chose the largest count max_targets=2"):
        dec = decode_arrays(img, method="refine", max_targets=2)
    np.testing.assert_array_equal(dec.at_cap[:, 0], [True, False, True])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CountCapWarning)  # below the cap: no warning
        low = decode_arrays(np.stack([one, one, one]), method="refine", max_targets=2)
    assert not low.at_cap.any() and np.all(low.count == 1)
    assert dec.count[1, 0] == 1
    from seqcsist_jax.decode import decode

    with pytest.warns(CountCapWarning) as record:  # through the list API too, naming the caller's line
        decode(img, None, "refine", max_targets=2)
    assert {r.filename for r in record if r.category is CountCapWarning} == {__file__}


def test_warn_at_cap_counts_the_flagged_frames_and_is_silent_without_any():
    """warn_at_cap directly: one CountCapWarning naming the flagged and total frame counts, ``max_targets``
    and the method, attributed to the caller's line (this file); no warning when no frame is at the cap."""
    from seqcsist_jax.decode.api import warn_at_cap

    at_cap = np.array([[True, False, False], [False, True, True]])  # (N, T): 3 of 6 frames
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warn_at_cap(at_cap, 4, "trajectory")
    assert [r.category for r in record] == [CountCapWarning]
    message = str(record[0].message)
    assert message.startswith("decode (trajectory): 3 of 6 frames chose the largest count max_targets=4 ")
    assert record[0].filename == __file__
    with pytest.warns(CountCapWarning, match=r"^decode \(refine\): 1 of 1 frames chose the largest count "
                                             r"max_targets=5 "):
        warn_at_cap(np.array([[True]]), 5, "refine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        warn_at_cap(np.zeros((2, 3), bool), 4, "trajectory")
        warn_at_cap(np.zeros((0, 20), bool), 4, "trajectory")  # nothing decoded



@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_pair_by_pair_spacing_filter_equals_all_pairs(k):
    # pixel_layouts' candidates must not change with the faster filter: the same candidates pass as under the
    # all-pairs minimum of the same distances (exact equality: each distance is the same float expression).
    rng = np.random.default_rng(k)
    xy = rng.uniform(-0.4, 0.4, size=(20_000, k, 2))
    xy[:50, -1] = xy[:50, 0] + np.array([0.4, 0.0])  # pairs at the spacing, up to rounding: both sides of the tie
    d = np.sqrt(((xy[:, :, None] - xy[:, None]) ** 2).sum(-1)) + 10.0 * np.eye(k)
    want = d.min((1, 2)) >= 0.4
    got = frames._spaced(xy, 0.4)
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < len(want) or k == 1

def test_pixel_layouts_are_spread_inside_the_pixel_and_deterministic():
    lay = frames.pixel_layouts(5, 6)
    assert lay.shape == (6, 6, 5, 2)
    np.testing.assert_array_equal(lay, frames.pixel_layouts(5, 6))
    for k in range(1, 6):
        xy = lay[k, :, :k]
        assert np.abs(xy).max() <= 0.4 + 1e-6
        assert np.all(lay[k, :, k:] == 0)
        if k > 1:
            d = np.sqrt(((xy[:, :, None] - xy[:, None]) ** 2).sum(-1)) + 9 * np.eye(k)
            assert d.min() >= 0.4 - 1e-6
        # The layouts differ from each other (the point of several starts).
        assert len({tuple(np.round(np.sort(x, axis=0).ravel(), 4)) for x in xy}) == 6


def test_layout_starts_never_raise_the_stage_cost(five):
    """The best of a superset of starts is at least as good (same frames, same ``k-1``-target input)."""
    img, _ = five
    prev = np.zeros((2, 4, 3), np.float32)
    prev[:, :3] = GROUP5[[0, 2, 4]] + np.array([0.05, -0.04, 0.0])  # a 3-target fit, 4 slots for k = 4
    none = jnp.zeros((2, 0, 3)), jnp.zeros(2, jnp.int32)
    with_layouts = make_options(**SINGLE)
    base = dataclasses.replace(with_layouts, layout_starts=0)
    _, c0, *_ = frames._stage(jnp.asarray(img), jnp.asarray(prev), *none, jnp.int32(4), base)
    _, c1, *_ = frames._stage(jnp.asarray(img), jnp.asarray(prev), *none, jnp.int32(4), with_layouts)
    assert np.all(np.asarray(c1) <= np.asarray(c0) * (1 + 1e-6) + 1e-4)


def test_separation_residuals_hinge_and_jacobian():
    opts = make_options(min_separation=0.5, separation_width=0.1)
    theta = jnp.array([5.0, 5.0, 230.0, 5.3, 5.0, 230.0, 5.0, 6.0, 230.0, 0.0, 0.0, 0.0])
    active = jnp.array([True, True, True, False])
    r = np.asarray(frames.separation_residuals(theta, active, opts)).reshape(4, 4)
    s = np.sqrt(opts.noise_variance)
    expected = np.zeros((4, 4))
    expected[0, 1] = s * (0.5 - 0.3) / 0.1  # the only pair closer than 0.5 px; the inactive slot is ignored
    np.testing.assert_allclose(r, expected, atol=1e-4)
    # Analytic (autodiff) Jacobian vs central differences on x of target 1.
    import jax

    jac = np.asarray(jax.jacfwd(frames.separation_residuals)(theta, active, opts))
    h = 1e-3
    e = jnp.zeros(12).at[3].set(h)
    num = (np.asarray(frames.separation_residuals(theta + e, active, opts))
           - np.asarray(frames.separation_residuals(theta - e, active, opts))) / (2 * h)
    np.testing.assert_allclose(jac[:, 3], num, atol=2e-2)


def test_fit_from_params_at_the_truth_of_a_noise_free_frame_stays_there():
    img = imaging.render(GROUP5[None]).astype(np.float32)
    opts = make_options(max_targets=5, clip_level=None, brightness_prior=None)
    p, cost, var = frames.fit_from_params(img, GROUP5[None].astype(np.float32), np.array([5]), opts)
    np.testing.assert_allclose(p[0, :, :2], GROUP5[:, :2], atol=2e-3)
    np.testing.assert_allclose(p[0, :, 2], GROUP5[:, 2], atol=0.5)
    assert cost[0] < 1e-2 and np.all(np.isfinite(var[0]))


@pytest.mark.parametrize("bad, msg", [
    (dict(layout_starts=-1), "layout_starts"),
    (dict(screen_iterations=-2), "screen_iterations"),
    (dict(single_pixel=1), "single_pixel"),
    (dict(min_separation=0.0), "min_separation"),
    (dict(separation_width=-1.0), "separation_width"),
    (dict(brightness_range=(250.0, 220.0)), "brightness_range"),
    (dict(screen_keep=0), "screen_keep"),
    (dict(evidence_weight=-1.0), "evidence_weight"),
    (dict(uniform_slots=1), "uniform_slots"),
])
def test_new_options_are_validated(bad, msg):
    with pytest.raises(ValueError, match=msg):
        make_options(**bad)


def test_screening_keeps_the_start_in_the_right_basin():
    """Three starts far from the pair and one at it: after screening, the fit from the good start wins."""
    pair = np.array([[5.0, 4.75, 230.0], [5.0, 5.25, 240.0]])
    img = jnp.asarray(np.round(imaging.render(pair)), jnp.float32)
    good = pair + np.array([0.03, -0.02, 5.0])
    junk = [pair + np.array([dx, dy, 0.0]) for dx, dy in [(2.0, 2.0), (-2.5, 1.0), (1.5, -3.0)]]
    starts = jnp.asarray(np.stack(junk[:2] + [good] + junk[2:]), jnp.float32)
    opts = make_options(max_targets=2, screen_iterations=3, clip_level=None)
    params, cost, *_ = frames._fit_starts(starts, jnp.ones(4, bool), jnp.ones(2, bool), img, opts)
    assert _errors(np.asarray(params), pair).max() <= 0.02
    full = frames._fit_starts(starts, jnp.ones(4, bool), jnp.ones(2, bool), img,
                              make_options(max_targets=2, clip_level=None))
    assert float(cost) <= float(full[1]) + 0.05  # as good as giving every start the full budget


def test_uniform_slots_give_the_per_count_fits(five):
    """``uniform_slots`` runs K = 3..5 in 5 slots instead of 4/4/5: the unused slots never move, so counts
    agree, and positions to within the float32 rounding of a different program (5 slots solve with LAPACK, 4
    with the unrolled Cholesky) carried through 12 LM steps on the flat ridge of a 5-target group: 5e-3 px,
    10× below AP05's 0.05 px (measured 1.8e-3)."""
    img, dec = five
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountCapWarning)
        uni = decode_arrays(img[:, None], method="refine", **SINGLE, uniform_slots=True)
    np.testing.assert_array_equal(uni.count, dec.count)
    np.testing.assert_allclose(uni.frame_cost, dec.frame_cost, rtol=1e-3, atol=1e-3)
    for i in range(2):
        assert _errors(uni.detections[i, 0, :5], dec.detections[i, 0, :5]).max() <= 5e-3


def test_start_rank_is_cost_or_laplace_evidence():
    """Weight 0 ranks by ``cost/s²``; weight 1 adds ``log det JᵀJ``: of two ends with equal cost the broader
    basin (smaller ``JᵀJ``) wins, and it beats a sharper one whose cost is lower by less than the log-det gap."""
    p = 6
    jtj = jnp.stack([jnp.eye(p) * 100.0, jnp.eye(p) * 1.0])  # sharp, broad: log det gap 6·log 100 ≈ 27.6
    base = make_options()
    s2 = base.noise_variance
    cost = jnp.array([0.0, 1.0 * s2])  # the sharp basin is 1 s² lower
    r0 = np.asarray(frames.start_rank(cost, jtj, base))
    np.testing.assert_allclose(r0, [0.0, 1.0], atol=1e-5)
    r1 = np.asarray(frames.start_rank(cost, jtj, make_options(evidence_weight=1.0)))
    np.testing.assert_allclose(r1, [p * np.log(100.0), 1.0], rtol=1e-4)
    assert np.argmin(r0) == 0 and np.argmin(r1) == 1


@pytest.mark.parametrize("n,limit", [(1, 1), (1, 4096), (7, 3), (10_000, 4096), (8192, 4096), (8193, 4096),
                                     (12, 5), (5, 12)])
def test_balanced_chunk_uses_the_fewest_calls_and_pads_less_than_one_item_per_call(n, limit):
    """Against a brute-force search: the fewest calls of at most ``limit`` items, and among those the smallest
    padded call size (padding = calls·chunk - n < calls)."""
    chunk = frames.balanced_chunk(n, limit)
    calls = -(-n // chunk)
    fewest = min(c for c in range(1, n + 1) if -(-n // c) <= limit)
    smallest = min(s for s in range(1, limit + 1) if -(-n // s) == fewest)
    assert chunk <= limit and calls == fewest and chunk == smallest
    assert 0 <= calls * chunk - n < calls


def test_refine_does_not_depend_on_how_the_frames_are_chunked(five):
    """Two 5-target images fitted in one call and in two calls of one image (each image's fit is vmapped on its
    own, so only float rounding of a different batch size can differ: 5e-3 px as in the uniform-slots test)."""
    img, dec = five
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountCapWarning)
        one = decode_arrays(img[:, None], method="refine", **SINGLE, chunk=1)
    np.testing.assert_array_equal(one.count, dec.count)
    np.testing.assert_allclose(one.frame_cost, dec.frame_cost, rtol=1e-3, atol=1e-3)
    for i in range(2):
        assert _errors(one.detections[i, 0, :5], dec.detections[i, 0, :5]).max() <= 5e-3


def test_decode_takes_single_images_as_one_frame_sequences(five):
    """``decode`` on ``(N, S, S)`` returns what it returns on ``(N, 1, S, S)``, one array per image."""
    img, _ = five
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountCapWarning)
        single = decode(img, method="refine", **SINGLE)
        seq = decode(img[:, None], method="refine", **SINGLE)
    assert len(single) == 2 and all(isinstance(d, np.ndarray) and d.shape[1] == 4 for d in single)
    for a, b in zip(single, seq):
        np.testing.assert_array_equal(a, b[0])
    maps = np.random.default_rng(0).uniform(0.0, 100.0, (2, 33, 33)).astype(np.float32)
    for a, b in zip(decode(img, maps, method="grid"), decode(img[:, None], maps[:, None], method="grid")):
        assert a.shape[0] > 0
        np.testing.assert_array_equal(a, b[0])


@pytest.mark.parametrize("frames_shape, maps_shape, method, msg", [
    ((2, 11, 11), None, "trajectory", "needs sequences"),
    ((2, 11, 11), (2, 1, 33, 33), "grid", r"maps must have shape \(2, 33, 33\) \(N, 11c, 11c with c=3\), "
                                          r"got \(2, 1, 33, 33\)"),
    ((2, 11, 11), (2, 11, 11), "peak", r"maps must have shape \(2, 33, 33\) .*got \(2, 11, 11\)"),
    ((2, 11, 11), (1, 33, 33), "refine", r"maps must have shape \(2, 33, 33\)"),
    ((2, 11, 12), None, "refine", r"\(N, T, S, S\) or \(N, S, S\)"),
    ((11, 11), None, "refine", r"frames: got one image of shape \(11, 11\); pass image\[None\] to decode"),
])
def test_decode_single_images_bad_input(frames_shape, maps_shape, method, msg):
    maps = None if maps_shape is None else np.zeros(maps_shape, np.float32)
    with pytest.raises(ValueError, match=msg):
        decode(np.zeros(frames_shape, np.float32), maps, method=method)


def test_decode_arrays_error_names_the_single_image_form():
    with pytest.raises(ValueError, match=r"single images \(N, S, S\)"):
        decode_arrays(np.zeros((2, 11, 11), np.float32), method="refine")
    with pytest.raises(ValueError, match=r"got one image of shape \(11, 11\); .*image\[None, None\] to decode_arrays"):
        decode_arrays(np.zeros((11, 11), np.float32), method="refine")


def test_ragged_input_and_misspelt_options_are_one_line():
    with pytest.raises(ValueError, match="frames must be a rectangular array"):
        decode([np.zeros((11, 11)), np.zeros((11, 10))], method="refine")
    with pytest.raises(TypeError, match=r"unknown decode option\(s\): max_target \(did you mean max_targets\?\)"):
        decode(np.zeros((2, 11, 11), np.float32), method="refine", max_target=5)


def test_saturated_frames_flags_single_images_at_the_clip_level():
    from seqcsist_jax.decode import saturated_frames

    images = np.zeros((4, 11, 11), np.float32)
    images[1, 5, 5] = 255.0   # clipped
    images[2, 5, 5] = 254.0   # one grey level below: not clipped
    images[3, 5, 5] = 300.0   # above the clip level: a float frame that was never clipped
    expected = [any(abs(v - 255.0) <= 0.5 for v in img.ravel()) and img.max() <= 255.5 for img in images]
    np.testing.assert_array_equal(saturated_frames(images), expected)
    assert saturated_frames(images[:, None]).shape == (4, 1)
