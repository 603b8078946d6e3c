"""The opt-in star geometry of the trajectory fit (``geometry="star"``, SPEC §3's SeqCSIST motion model)."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from seqcsist_jax.data.simulate import simulate_seqcsist
from seqcsist_jax.decode import (
    SEQCSIST_STAR_OPTIONS,
    DecodeOptions,
    dataset_decode_options,
    decode_arrays,
    make_options,
    trajectory,
)


@pytest.fixture(scope="module")
def dense():
    """Six trajectories of 5–8 targets (compass directions), as the targets_2_8 generator draws them."""
    return simulate_seqcsist(6, 1234, min_targets=5, max_targets=8, max_targets_padded=8)


def _legendre_coefficients(paths: np.ndarray, degree: int) -> np.ndarray:
    basis = trajectory.legendre_basis(paths.shape[0], degree)
    return np.einsum("dt,tkc->kcd", np.linalg.pinv(basis), paths)  # (K, 2, D+1)


@pytest.mark.parametrize("degree", [2, 3])
def test_star_parametrisation_reproduces_generated_trajectories(degree):
    """Least squares in the star parameters reproduces every generated path (all three curve families).

    What the star model leaves out: the outward drift is a random walk, not exactly ``r0 + v·t`` (measured on
    300 trajectories: at most 0.0018 px on line and quadratic paths), and a circle-arc reference path (radius
    down to 1 px) is a polynomial of degree ``degree`` only approximately (at most 0.011 px at degree 2 — the
    free model's own per-target degree-2 paths miss by as much — and 0.0025 px at degree 3). Tolerances: 0.003
    px, and 0.015 px for circles at degree 2; both below a third of the tightest CSO-mAP threshold (0.05 px).
    """
    data = simulate_seqcsist(60, 7, min_targets=2, max_targets=8, max_targets_padded=8)
    t = data["targets"].shape[1]
    basis = trajectory.legendre_basis(t, degree)
    d1 = degree + 1
    for i in range(60):
        k = int((data["targets"][i, 0, :, 2] > 0).sum())
        dirs = data["directions"][i, :k]
        r = trajectory.star_reparametrisation(dirs, degree, t, num_directions=8)  # (K·Pk, P)
        coef = _legendre_coefficients(data["targets"][i, :, :k, :2].astype(np.float64), degree)
        target = np.concatenate([coef.reshape(k, -1), data["targets"][i, 0, :k, 2:3]], 1).reshape(-1)
        # Weak radius/drift prior rows: opposite directions (up + down) leave ref along their axis and the two
        # radii trading off; the prior picks the generator's values there and changes nothing elsewhere.
        base = 2 * d1
        prior = np.zeros((2 * k, r.shape[1]))
        prior[np.arange(k), base + 3 * np.arange(k)] = 1e-3
        prior[k + np.arange(k), base + 1 + 3 * np.arange(k)] = 1e-3
        rhs = np.concatenate([np.full(k, 0.3e-3), np.full(k, 0.0007e-3)])
        theta, *_ = np.linalg.lstsq(np.concatenate([r, prior]), np.concatenate([target, rhs]), rcond=None)
        fitted = (r @ theta).reshape(k, -1)
        xy = np.stack([fitted[:, :d1] @ basis.T, fitted[:, d1 : 2 * d1] @ basis.T], -1)  # (K, T, 2)
        err = np.abs(xy.transpose(1, 0, 2) - data["targets"][i, :, :k, :2]).max()
        circle = data["curve_family"][i] == 2
        assert err < (0.015 if circle and degree == 2 else 0.003), (i, err)
        r0, v = theta[base::3][:k], theta[base + 1 :: 3][:k]
        assert np.all(np.abs(r0 - 0.3) < 0.003), r0  # the generator's 0.3 px start distance
        assert np.all((v > -0.0002) & (v < 0.0016)), v  # outward drift in [0, 0.0014) px/frame
        np.testing.assert_allclose(theta[base + 2 :: 3][:k], data["targets"][i, 0, :k, 2], rtol=1e-5)


def test_star_candidates_rank_the_true_subset_first(dense):
    """From the exact positions the geometric misfit ranks the true direction subset first (K >= 3; two
    targets are ambiguous by construction: {u1, u2} around ref equals {-u1, -u2} around ref + r(u1 + u2))."""
    opts = make_options(max_targets=8, geometry="star")
    count = (dense["targets"][:, 0, :, 2] > 0).sum(1)
    cand = trajectory.star_candidates(dense["targets"], count, opts, 3)
    for i, k in enumerate(count):
        assert set(cand[i, 0, :k].tolist()) == set(dense["directions"][i, :k].tolist())
        assert np.all(cand[i, :, k:] == -1)


@pytest.mark.parametrize("stiffness", [None, 0.003])
def test_star_fit_recovers_dense_groups(dense, stiffness):
    """Started 0.06 px off the truth with unknown directions (so the candidate search runs), the star fit of
    the generator's 8-bit (partly clipped) frames finds every target within 0.025 px on every frame.

    8-bit rounding leaves ~0.005 px RMS of position error in a 20-frame star fit (truth-started fits on
    targets_2_8); the largest of the 6 × 20 × 5–8 errors here is 0.015 px (hard) and 0.016 px (soft, 0.003 px
    stiffness; 0.01 px stiffness lets clipped groups wander to 0.031 px). 0.025 px is half the AP05 distance.
    """
    opts = make_options(max_targets=8, geometry="star", star_stiffness=stiffness)
    count = (dense["targets"][:, 0, :, 2] > 0).sum(1)
    rng = np.random.default_rng(0)
    start = dense["targets"].astype(np.float64).copy()
    start[..., :2] += rng.normal(0, 0.06, start[:, :1, :, :2].shape)  # the same offset on every frame
    start[..., 2] = np.where(start[..., 2] > 0, 235.0, 0.0)
    params, cost, var, dirs = trajectory.fit_star(dense["frames"], start, count, opts)
    assert dense["clipped_pixels"].sum() > 0  # dense groups clip
    for i, k in enumerate(count):
        assert set(dirs[i, :k].tolist()) == set(dense["directions"][i, :k].tolist())
        d = np.sqrt(((params[i, :, :k, None, :2] - dense["targets"][i, :, None, :k, :2]) ** 2).sum(-1))
        assert d.min(-1).max() < 0.025, (i, d.min(-1).max())
        assert np.all(np.abs(params[i, :, :k, 2] - dense["targets"][i, :, :k, 2]) < 15.0)
        assert np.all(params[i, :, k:] == 0) and np.all(np.isinf(var[i, :, k:]))
        assert np.all(np.isfinite(var[i, :, :k])) and np.all(var[i, :, :k] > 0)


def test_star_option_validation():
    assert DecodeOptions().geometry == "free"  # off by default
    o = make_options(geometry="star")
    assert o.star_direction_count == 4 and make_options(geometry="star", max_targets=8).star_direction_count == 8
    assert make_options(star_directions="compass").star_direction_count == 8
    bad = [
        dict(geometry="ring"),
        dict(star_directions="diagonal"),
        dict(geometry="star", max_targets=9),
        dict(geometry="star", max_targets=5, star_directions="axis"),
        dict(star_radius=(0.3, 0.0)),
        dict(star_radius=(0.3,)),
        dict(star_drift=(float("nan"), None)),
        dict(star_stiffness=0.0),
        dict(star_stiffness=-1.0),
        dict(star_candidates=0),
        dict(star_screen=-1),
        dict(star_screen_iterations=1.5),
    ]
    for kw in bad:
        with pytest.raises(ValueError):
            make_options(**kw)
    assert make_options(star_radius=(0.3, None)).star_radius == (0.3, None)  # free radius


def test_default_geometry_never_runs_the_star_fit(monkeypatch):
    """The default (and explicit ``geometry="free"``) decode is the free trajectory fit, unchanged."""

    def boom(*a, **k):
        raise AssertionError("fit_star called")

    data = simulate_seqcsist(2, 3)
    ref = decode_arrays(data["frames"], None, "trajectory")
    monkeypatch.setattr(trajectory, "fit_star", boom)
    free = decode_arrays(data["frames"], None, "trajectory", geometry="free")
    np.testing.assert_array_equal(ref.detections, free.detections)


def _dataset(name: str, **simulate) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": name, "simulate": simulate})


def test_geometry_prior_preset_only_for_star_datasets():
    t28 = {"max_targets": 8, "trajectory_restarts": 8, "trajectory_centre_iterations": 20, "centre_softness": 0.1,
           "trajectory_centre_starts": 9}
    assert dataset_decode_options(_dataset("seqcsist/targets_2_8")) == t28  # opt-in only
    assert dataset_decode_options(_dataset("seqcsist/targets_2_8"), geometry_prior=True) == {
        **t28, **SEQCSIST_STAR_OPTIONS}
    for name in ("seqcsist", "seqcsist/default", "seqcsist/noise_5", "seqcsist/mini"):
        assert dataset_decode_options(_dataset(name), geometry_prior=True) == SEQCSIST_STAR_OPTIONS
    assert dataset_decode_options(_dataset("simulated", max_targets=6), geometry_prior=True) == {
        "max_targets": 6, **SEQCSIST_STAR_OPTIONS}
    for ds in (_dataset("seqcsist/public"), _dataset("csist100k/default"), _dataset("simulated", spacing=0.5)):
        with pytest.raises(ValueError, match="star geometry"):
            dataset_decode_options(ds, geometry_prior=True)
    make_options(**dataset_decode_options(_dataset("seqcsist/targets_2_8"), geometry_prior=True))
