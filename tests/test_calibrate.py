"""Calibration of the decoders' forward model (seqcsist_jax.decode.calibrate / imaging_params)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqcsist_jax import imaging
from seqcsist_jax.data.simulate import simulate_seqcsist
from seqcsist_jax.decode import (
    ImagingParams,
    calibrate,
    calibrate_split,
    decode,
    decode_arrays,
    load_or_calibrate,
    make_options,
)
from seqcsist_jax.decode.imaging_params import (
    DEFAULT_IMAGING,
    render_frames,
    to_fit_space,
    to_label_space,
    to_pixel_space,
)
from tests.program_record import assert_all_foreseen, recorded_programs


@pytest.fixture(scope="module")
def data():
    # 6 trajectories × 20 frames: 120 frames, ~350 targets.
    return simulate_seqcsist(6, 11)


# Tolerances: the five parameters are global, so with ~350 bright (220–250) targets their statistical error is
# ~1e-4 px for σ/offsets and ~1e-3 for gain even with noise σ = 3 (measured ≤ 4e-4 / 5e-4); what remains is
# the small bias of treating rounding as Gaussian (background −0.006 on noise-free data). The tolerances are
# the targets (σ 0.005, offset 0.01 px) and, for gain/background/noise, 10× the measured errors.
TOL = {"sigma": 0.005, "offset": 0.01, "gain": 0.005, "background": 0.1, "noise_std": 0.1}

CASES = {
    "default": ImagingParams(),
    "blurred_shifted": ImagingParams(sigma=0.58, offset=(0.25, 0.25)),
    "sharp_bright": ImagingParams(sigma=0.45, offset=(-0.2, 0.1), gain=1.4),  # many pixels clip at 255
    "noisy_background": ImagingParams(noise_std=3.0, background=10.0),
    "everything": ImagingParams(sigma=0.53, offset=(0.12, -0.3), gain=0.9, background=4.0, noise_std=1.5),
}


def _close(est: ImagingParams, true: ImagingParams) -> None:
    assert abs(est.sigma - true.sigma) < TOL["sigma"], (est, true)
    assert np.max(np.abs(np.subtract(est.offset, true.offset))) < TOL["offset"], (est, true)
    assert abs(est.gain - true.gain) < TOL["gain"], (est, true)
    assert abs(est.background - true.background) < TOL["background"], (est, true)
    assert abs(est.noise_std - true.noise_std) < TOL["noise_std"], (est, true)


@pytest.mark.parametrize("name", sorted(CASES))
def test_calibrate_recovers_rendered_parameters_8bit(data, name):
    true = CASES[name]
    frames = render_frames(data["targets"], true, rng=np.random.default_rng(3))
    assert frames.dtype == np.uint8
    _close(calibrate(frames, data["targets"]), true)


def test_calibrate_clipped_frames_need_censoring(data):
    true = CASES["sharp_bright"]
    frames = render_frames(data["targets"], true)
    clipped = int(np.sum(frames == 255))
    assert clipped > 100  # the case really exercises censoring
    _close(calibrate(frames, data["targets"]), true)
    # Without censoring the saturated pixels pull the fit off: the censored likelihood is what makes it right.
    naive = calibrate(frames, data["targets"], clip_level=None)
    assert abs(naive.sigma - true.sigma) > TOL["sigma"] or abs(naive.gain - true.gain) > TOL["gain"]


def test_calibrate_unclipped_float_frames(data):
    true = ImagingParams(sigma=0.47, offset=(0.05, 0.2), gain=1.6, background=2.0, noise_std=2.0)
    frames = render_frames(data["targets"], true, rng=np.random.default_rng(4), quantize=False)
    assert frames.max() > 255  # float frames above the 8-bit range are taken as unclipped
    est = calibrate(frames, data["targets"])
    _close(est, true)
    # Unrounded data: the decoders' residual variance 1/12 + noise_std² still equals the true noise variance.
    assert abs((1 / 12 + est.noise_std**2) - true.noise_std**2) < 2 * true.noise_std * TOL["noise_std"]


def test_calibrate_single_images_and_subsets(data):
    frames = render_frames(data["targets"], CASES["blurred_shifted"])
    n, t = frames.shape[:2]
    whole = calibrate(frames, data["targets"])
    single = calibrate(frames.reshape(n * t, 11, 11), data["targets"].reshape(n * t, -1, 3))
    assert np.allclose(whole.sigma, single.sigma, atol=1e-6)
    assert np.allclose(whole.offset, single.offset, atol=1e-6)
    sub = calibrate_split({"frames": frames, "targets": data["targets"]}, max_frames=60)
    _close(sub, CASES["blurred_shifted"])


def test_calibrate_refuses_empty_and_unlabelled_input(data):
    with pytest.raises(ValueError, match="no frames"):
        calibrate(np.zeros((0, 20, 11, 11)), np.zeros((0, 20, 4, 3)))
    with pytest.raises(ValueError, match="no labelled target"):
        calibrate(data["frames"], np.zeros_like(data["targets"]))
    with pytest.raises(ValueError, match="no labelled target"):
        calibrate(data["frames"], np.zeros(data["targets"].shape[:2] + (0, 3)))
    with pytest.raises(ValueError, match="targets must have shape"):
        calibrate(data["frames"], data["targets"][:, :10])
    with pytest.raises(ValueError, match="NaN"):
        calibrate(np.full((2, 11, 11), np.nan), np.ones((2, 1, 3)))
    with pytest.raises(ValueError, match="lack"):
        calibrate_split({"frames": data["frames"]})


def test_imaging_params_json_and_validation():
    p = ImagingParams(sigma=0.5812345678901, offset=(0.25, -1 / 3), gain=1.1, background=9.5, noise_std=3.0)
    assert ImagingParams.from_json(p.to_json()) == p
    assert json.loads(p.to_json())["offset"] == [0.25, -1 / 3]
    assert "\n" not in str(p) and "sigma=0.5812" in str(p)
    assert ImagingParams() == DEFAULT_IMAGING and DEFAULT_IMAGING.is_default
    with pytest.raises(ValueError, match="calib.json"):
        ImagingParams.from_json('{"sigma": 0.5}', source="calib.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ImagingParams.from_json("{", source="calib.json")
    with pytest.raises(ValueError, match="sigma > 0"):
        ImagingParams(sigma=-1.0)
    with pytest.raises(ValueError, match="offset"):
        ImagingParams(offset=(0.0,))
    with pytest.raises(ValueError, match="gain"):
        ImagingParams(gain=float("nan"))
    rows = np.array([[1.0, 2.0, 240.0, 0.5]])
    assert np.allclose(to_label_space(to_pixel_space(rows, p), p), rows, atol=1e-4)


@pytest.mark.slow
def test_default_imaging_is_bit_identical(data, monkeypatch):
    frames = data["frames"][:2]
    with recorded_programs(monkeypatch) as (started, asked):
        base = decode_arrays(frames, method="trajectory")  # same shapes and options as test_offset_convention
    assert_all_foreseen(started, asked)  # the trajectory decoder's per-frame stages
    for im in (None, ImagingParams()):
        other = decode_arrays(frames, method="trajectory", imaging=im)
        np.testing.assert_array_equal(base.detections, other.detections)
        np.testing.assert_array_equal(base.count, other.count)
    with pytest.raises(ValueError, match="imaging"):
        decode(frames, method="refine", imaging=ImagingParams(sigma=0.6), sigma=0.6)
    with pytest.raises(ValueError, match="ImagingParams"):
        decode(frames, method="refine", imaging={"sigma": 0.6})


@pytest.mark.parametrize("method", ["trajectory", "peak"])
def test_offset_convention(data, method):
    """Frames rendered with offset (dx, dy) from labels t - (dx, dy) are the default frames of t; decoding
    them with that offset gives the default decoding of the default frames, shifted by -(dx, dy)."""
    off = ImagingParams(offset=(0.25, -0.15))
    targets = data["targets"][:2]
    shifted_labels = targets.copy()
    shifted_labels[..., 0] -= 0.25 * (targets[..., 2] > 0)
    shifted_labels[..., 1] += 0.15 * (targets[..., 2] > 0)
    frames0 = render_frames(targets)
    frames1 = render_frames(shifted_labels, off)
    np.testing.assert_array_equal(frames0, frames1)
    ref = decode(frames0, method=method)
    got = decode(frames1, method=method, imaging=off)
    for traj_ref, traj_got in zip(ref, got):
        for r, g in zip(traj_ref, traj_got):
            assert r.shape == g.shape
            np.testing.assert_allclose(g[:, :2], r[:, :2] - np.array([0.25, -0.15]), atol=1e-5)
            np.testing.assert_allclose(g[:, 2:], r[:, 2:], rtol=1e-6)
    # And calibration finds that offset from those frames and labels.
    assert np.allclose(calibrate(frames1, shifted_labels).offset, (0.25, -0.15), atol=TOL["offset"])


def _max_error(dec, targets: np.ndarray) -> np.ndarray:
    """Per trajectory: largest distance of a true target to its nearest detection (px)."""
    out = []
    for i in range(targets.shape[0]):
        k = int((targets[i, 0, :, 2] > 0).sum())
        d = np.linalg.norm(dec.detections[i, :, :k, None, :2] - targets[i, :, None, :k, :2], axis=-1)
        out.append(np.max(np.min(d, axis=-2)))
    return np.array(out)


def _brightness_ratio(dec, targets: np.ndarray) -> np.ndarray:
    """``(N, T)`` decoded total brightness per frame over the true total."""
    active = np.arange(dec.detections.shape[2]) < dec.count[..., None]
    return np.sum(dec.detections[..., 2] * active, -1) / np.sum(targets[..., 2], -1)


@pytest.mark.slow
def test_background_and_gain_decoding(data):
    """Background: subtracted, with the clip level following it. Noise-free frames with an integer background
    ``b`` store ``min(round(x) + b, 255)``, i.e. default frames clipped at ``255 - b``, so decoding them with
    that background must give exactly the default decoding of those frames with ``clip_level = 255 - b``.
    Gain: brightness comes back in label units, positions as good as on default frames."""
    targets = data["targets"][:2]
    true_count = (targets[..., 2] > 0).sum(-1)
    bg = ImagingParams(background=10.0)
    frames_bg = render_frames(targets, bg)
    headroom = np.minimum(render_frames(targets), 245)
    assert np.sum(render_frames(targets) > 245) > 0  # the clip level matters here
    ref = decode_arrays(headroom, method="trajectory", clip_level=245.0)
    got = decode_arrays(frames_bg, method="trajectory", imaging=bg)
    np.testing.assert_array_equal(got.count, ref.count)
    np.testing.assert_allclose(got.detections, ref.detections, atol=1e-4)
    ref = decode_arrays(render_frames(targets), method="trajectory")
    # Uncalibrated, the background is read as target light: brightness far off.
    assert np.all(_brightness_ratio(decode_arrays(frames_bg, method="trajectory"), targets) > 1.1)

    gain = ImagingParams(gain=1.2)
    got = decode_arrays(render_frames(targets, gain), method="trajectory", imaging=gain)
    np.testing.assert_array_equal(got.count, true_count)
    assert np.all(_max_error(got, targets) < _max_error(ref, targets) + 0.02)
    # Totals per frame (immune to which target is which): label brightness within 3%, not gain × it.
    ratio = _brightness_ratio(got, targets)
    assert np.all(np.abs(ratio - 1.0) < 0.03), ratio


def test_fit_space_sets_sigma_noise_and_prior():
    p = ImagingParams(sigma=0.6, gain=2.0, background=5.0, noise_std=3.0)
    frames, opts = to_fit_space(np.full((1, 1, 11, 11), 7, np.uint8), {"max_targets": 3}, p)
    np.testing.assert_array_equal(frames, np.full((1, 1, 11, 11), 2.0, np.float32))
    assert opts == {"max_targets": 3, "sigma": 0.6, "noise_sigma": 3.0, "clip_level": 250.0,
                    "brightness_prior": (470.0, 17.32)}
    _, opts_box = to_fit_space(frames, {"brightness_range": (220.0, 250.0)}, p)
    assert opts_box["brightness_range"] == (440.0, 500.0)
    # The count criterion's noise variance is the calibrated one (plus rounding).
    assert make_options(**opts).noise_variance == 1 / 12 + 9.0


def test_render_frames_matches_imaging_render(data):
    t = data["targets"][:1]
    np.testing.assert_array_equal(render_frames(t), imaging.quantize(imaging.render(t)))
    with pytest.raises(ValueError, match="rng"):
        render_frames(t, ImagingParams(noise_std=1.0))


def test_load_or_calibrate_stores_and_reuses_json(data, tmp_path):
    frames = render_frames(data["targets"], CASES["blurred_shifted"])
    path = tmp_path / "run" / "imaging.json"
    params, fresh = load_or_calibrate(path, lambda: {"frames": frames, "targets": data["targets"]})
    assert fresh and path.exists()
    _close(params, CASES["blurred_shifted"])

    def must_not_load():
        raise AssertionError("the stored parameters should be reused")

    again, fresh = load_or_calibrate(path, must_not_load)
    assert not fresh and again == params
    # a damaged file is moved aside with a warning naming it and the problem, and calibrated again
    for damage, problem in [(b'{"sigma": 0.5}', "imaging.json"), (b"\xf1\x00garbage", "is not UTF-8 text"),
                            (b"", "imaging.json"), (b"[1, 2]", "imaging.json")]:
        path.write_bytes(damage)
        with pytest.warns(RuntimeWarning, match=f"{problem}.*moved it to imaging.json.damaged and calibrating"):
            again, fresh = load_or_calibrate(path, lambda: {"frames": frames, "targets": data["targets"]})
        assert fresh and again == params and (tmp_path / "run" / "imaging.json.damaged").read_bytes() == damage
        assert load_or_calibrate(path, must_not_load) == (params, False)


def test_load_or_calibrate_is_tied_to_the_data_it_was_calibrated_on(data, tmp_path):
    """A workdir's imaging.json calibrated on one dataset is never reused for another (an evaluation with
    ``--config.dataset.name=...`` would decode with the wrong noise/blur and score silently wrong): it is
    calibrated again, replaced, and a warning names both datasets."""
    sharp = {"frames": render_frames(data["targets"]), "targets": data["targets"]}
    blurred = {"frames": render_frames(data["targets"], CASES["blurred_shifted"]), "targets": data["targets"]}
    path = tmp_path / "imaging.json"
    mini = {"dataset": "seqcsist/mini", "split": "train"}
    other = {"dataset": "seqcsist/noise_2", "split": "train"}

    def must_not_load():
        raise AssertionError("the stored parameters should be reused")

    first, fresh = load_or_calibrate(path, lambda: sharp, calibrated_on=mini)
    assert fresh and json.loads(path.read_text())["calibrated_on"] == mini
    assert load_or_calibrate(path, must_not_load, calibrated_on=dict(reversed(mini.items()))) == (first, False)
    with pytest.warns(RuntimeWarning, match="calibrated on dataset=seqcsist/mini, split=train, not on "
                                            "dataset=seqcsist/noise_2, split=train; calibrating .* again"):
        second, fresh = load_or_calibrate(path, lambda: blurred, calibrated_on=other)
    assert fresh and second != first
    _close(second, CASES["blurred_shifted"])
    assert json.loads(path.read_text())["calibrated_on"] == other
    assert load_or_calibrate(path, must_not_load, calibrated_on=other) == (second, False)
    assert load_or_calibrate(path, must_not_load) == (second, False)  # no key given: any valid file
    # a file of an older version (no record of its data) is calibrated again when the caller names its data
    path.write_text(first.to_json())
    with pytest.warns(RuntimeWarning, match="calibrated on unrecorded data"):
        assert load_or_calibrate(path, lambda: blurred, calibrated_on=other)[1]
