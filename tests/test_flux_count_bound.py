"""Tests of the flux count bound of single-image decoding (``DecodeOptions.flux_count_bound``, CSIST-100K).

The bound is checked against an independent reference (the in-frame PSF mass found by rendering one target on a
dense grid of positions with ``imaging.render``, not by the bound's closed form) and for validity on rendered
8-bit groups anywhere in the frame, corners included. The fitting plumbing (frames fitted in bound order, counts
above the bound skipped, the order undone) runs on a stand-in for the compiled stage, so it needs no compilation.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from seqcsist_jax import imaging
from seqcsist_jax.decode import CSIST100K_OPTIONS, ImagingParams, frames, make_options
from seqcsist_jax.decode.imaging_params import to_fit_space

S = 11
OPTS = make_options(max_targets=5, single_pixel=True, flux_count_bound=220.0)


def _groups(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` groups of 1–5 targets inside one random pixel (edges and corners included), brightness 220–250:
    ``(n, 5, 3)`` rows (zero rows pad) and ``(n,)`` counts."""
    counts = rng.integers(1, 6, n)
    host = rng.integers(0, S, (n, 1, 2)).astype(np.float64)
    xy = host + rng.uniform(-0.5, 0.5, (n, 5, 2))
    b = rng.uniform(220.0, 250.0, (n, 5, 1))
    rows = np.concatenate([xy, b], -1)
    rows[np.arange(5)[None, :] >= counts[:, None]] = 0.0
    return rows, counts


def _reference_upper(image: np.ndarray, b_min: float, kmax: int) -> tuple[int, float]:
    """The bound with the in-frame mass found by rendering a unit target on a 0.01 px grid around the
    brightest pixel (within 1 px, inside the frame); also the quotient (to skip floor-boundary cases)."""
    px, py = np.unravel_index(np.argmax(image), image.shape)
    grid = lambda p: np.clip(np.arange(p - 1.0, p + 1.0 + 1e-9, 0.01), -0.5, S - 0.5)
    gx, gy = grid(px), grid(py)
    # The mass is separable: min over x times min over y (each at the row/column through the pixel centre).
    one = lambda x, y: np.asarray(imaging.render(np.array([[[x, y, 1.0]]]), size=S)).sum()
    mx = min(one(x, S // 2) for x in gx) / one(S // 2, S // 2)
    my = min(one(S // 2, y) for y in gy) / one(S // 2, S // 2)
    mass = mx * my * one(S // 2, S // 2)
    q = (image.sum() + 0.5 * S * S) / (b_min * mass)
    return int(np.clip(np.floor(q), 1, kmax)), q


def test_bound_matches_a_rendered_reference_and_never_excludes_the_true_count():
    rng = np.random.default_rng(0)
    rows, counts = _groups(rng, 300)
    images = np.asarray(imaging.quantize(imaging.render(rows, size=S))).astype(np.float32)
    upper = frames.flux_count_upper(images, OPTS)
    saturated = images.reshape(len(images), -1).max(-1) >= 254.5
    assert 0.2 < saturated.mean() < 0.9  # both kinds occur
    assert np.all(upper[saturated] == 5)
    assert np.all(upper >= counts)  # valid: the true count is never excluded
    # tight: most unclipped single targets are bounded to 1 (interior pixels), so fits above are skipped
    single = ~saturated & (counts == 1)
    assert np.mean(upper[single] == 1) > 0.5
    checked = 0
    for i in np.flatnonzero(~saturated)[:40]:
        ref, q = _reference_upper(images[i], 220.0, 5)
        if abs(q - round(q)) > 1e-3:  # away from a floor boundary, where grid and closed form may differ
            assert upper[i] == ref, (i, q)
            checked += 1
    assert checked >= 30


def test_bound_off_saturated_and_noise_terms():
    images = np.zeros((3, S, S), np.float32)
    images[0, 5, 5] = 110.0          # one faint target's worth
    images[1, 5, 5] = 255.0          # saturated: no bound
    images[2, 4:7, 4:7] = 484.0 / 9  # Σ = 484 in the middle (the in-frame mass there is 1 to 1e-20)
    off = make_options(max_targets=5, single_pixel=True)
    np.testing.assert_array_equal(frames.flux_count_upper(images, off), [5, 5, 5])
    np.testing.assert_array_equal(frames.flux_count_upper(images, OPTS), [1, 5, 2])  # ⌊(484 + 60.5)/220⌋ = 2
    noisy = dataclasses.replace(OPTS, noise_sigma=2.0)  # + 4·2·11 = 88 grey levels of allowance
    more = images[2:].copy()
    more[0, 4:7, 4:7] += 2.9  # (484 + 26.1 + 60.5 + 88) / 220 = 2.99
    assert frames.flux_count_upper(images, noisy)[2] == 2 and frames.flux_count_upper(more, noisy)[0] == 2
    more[0, 4:7, 4:7] += 0.3  # (484 + 28.8 + 60.5 + 88) / 220 = 3.006
    assert frames.flux_count_upper(more, noisy)[0] == 3
    at_least = dataclasses.replace(OPTS, min_targets=2)  # the user's smallest count is never cut off
    np.testing.assert_array_equal(frames.flux_count_upper(images, at_least), [2, 5, 2])
    corner = np.zeros((1, S, S), np.float32)
    corner[0, 0, 0] = 60.0  # a target at the corner keeps as little as a quarter of its light in the frame
    assert frames.flux_count_upper(corner, OPTS)[0] == 2  # ⌊(60 + 60.5) / (220 · ¼)⌋


@pytest.mark.parametrize("bad, msg", [
    (dict(flux_count_bound=220.0), "needs single_pixel=True"),
    (dict(single_pixel=True, flux_count_bound=-1.0), "positive brightness"),
    (dict(single_pixel=True, flux_count_bound=True), "positive brightness"),
    (dict(single_pixel=True, flux_count_bound=float("inf")), "positive brightness"),
])
def test_flux_count_bound_is_validated(bad, msg):
    with pytest.raises(ValueError, match=msg):
        make_options(**bad)


def test_preset_uses_the_generators_smallest_brightness_and_label_units_scale_with_gain():
    assert CSIST100K_OPTIONS["flux_count_bound"] == 220.0
    _, fit = to_fit_space(np.zeros((1, S, S), np.float32), {"flux_count_bound": 220.0},
                          ImagingParams(gain=1.5))
    assert fit["flux_count_bound"] == pytest.approx(330.0)


def _fake_stage(obs, prev, seeds, seed_count, k, opts):
    """Stand-in for ``frames._stage``: deterministic outputs of each frame alone (like the real stage)."""
    f, slots = prev.shape[:2]
    tot = jnp.sum(obs, axis=(1, 2))
    params = (tot[:, None, None] * 1e-3 + k + jnp.arange(slots)[None, :, None] + 0.1 * jnp.arange(3)
              + prev.sum(axis=(1, 2))[:, None, None] * 1e-4)
    a = opts.centre_candidates
    alts = params[:, None] + jnp.arange(a)[None, :, None, None]
    ok = (tot[:, None] + jnp.arange(a)[None]) % 3 > 0
    return params, tot * k, params[..., 0] * 0.01, alts, ok


def test_fit_frames_skips_counts_above_the_bound_and_keeps_every_other_result(monkeypatch):
    monkeypatch.setattr(frames, "_stage", _fake_stage)
    rng = np.random.default_rng(1)
    rows, counts = _groups(rng, 23)
    images = np.asarray(imaging.quantize(imaging.render(rows, size=S))).astype(np.float32)
    base = dict(max_targets=5, single_pixel=True, centre_candidates=3, chunk=4)  # 6 calls of 4 frames
    bounded = frames.fit_frames(images, make_options(**base, flux_count_bound=220.0))
    free = frames.fit_frames(images, make_options(**base))
    upper = frames.flux_count_upper(images, make_options(**base, flux_count_bound=220.0))
    assert 1 in upper and 5 in upper and np.all(upper >= counts)
    for i in range(len(images)):
        for k in range(1, 6):
            if k <= upper[i]:  # the frame's own result, wherever the ordering put it
                np.testing.assert_array_equal(bounded.params[i, k - 1], free.params[i, k - 1])
                np.testing.assert_array_equal(bounded.cost[i, k], free.cost[i, k])
                np.testing.assert_array_equal(bounded.pos_var[i, k - 1], free.pos_var[i, k - 1])
                np.testing.assert_array_equal(bounded.alternatives[i, k - 1], free.alternatives[i, k - 1])
                np.testing.assert_array_equal(bounded.alternative_valid[i, k - 1],
                                              free.alternative_valid[i, k - 1])
            else:
                assert bounded.cost[i, k] == np.inf and not bounded.alternative_valid[i, k - 1].any()
                assert np.all(bounded.params[i, k - 1] == 0) and np.all(bounded.pos_var[i, k - 1] == np.inf)
    np.testing.assert_array_equal(bounded.cost[:, 0], free.cost[:, 0])
