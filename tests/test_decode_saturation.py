"""Decoding flags saturated (8-bit clipped) frames: a warning that counts them and a per-frame flag."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from seqcsist_jax.decode import api


def _frames():
    frames = np.full((2, 3, 11, 11), 20, np.uint8)
    frames[0, 1] = 255  # an all-255 frame
    frames[1, 2, 5, 5] = 255  # one clipped pixel
    return frames


def test_saturated_frames_flags_any_pixel_at_255():
    np.testing.assert_array_equal(api.saturated_frames(_frames()), [[False, True, False], [False, False, True]])
    assert api.saturated_frames(np.full((1, 1, 11, 11), 254.9, np.float32)).all()  # within ½ level: stored at 255
    high = np.full((1, 1, 11, 11), 250.0, np.float32)
    high[..., 0, 0] = 300.0  # unclipped float data: a pixel above the level, so nothing was clipped
    assert not api.saturated_frames(high).any()
    assert not api.saturated_frames(_frames(), clip_level=None).any()


@pytest.mark.parametrize("method", ["grid", "peak"])
def test_decode_warns_with_the_count_of_saturated_frames(method):
    # Without maps, grid/peak decode the physics-only map, which is computed from the (clipped) frames.
    with pytest.warns(api.SaturationWarning,
                      match=r"2 of 6 decoded frames have saturated pixels \(stored at the clip level, 255\)"):
        out = api.decode(_frames(), method=method, physics_iterations=2)
    # Its own class, so it can be silenced alone; still a RuntimeWarning for filters written before it existed.
    assert issubclass(api.SaturationWarning, RuntimeWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", api.SaturationWarning)
        api.decode(_frames(), method=method, physics_iterations=2)
    assert len(out) == 2 and len(out[0]) == 3


def test_grid_decoding_of_given_maps_does_not_read_the_frames(recwarn):
    maps = np.zeros((2, 3, 33, 33), np.float32)
    out = api.decode(_frames(), maps, method="grid")
    assert len(out) == 2 and len(out[0]) == 3
    assert not [w for w in recwarn if "saturated" in str(w.message)]


def test_decode_arrays_returns_the_per_frame_flag():
    frames = _frames()[:1, :2]
    with pytest.warns(RuntimeWarning, match=r"1 of 2 decoded frames"):
        decoded = api.decode_arrays(frames, method="refine")
    np.testing.assert_array_equal(decoded.saturated, [[False, True]])


def test_no_warning_without_saturation(recwarn):
    maps = np.zeros((1, 2, 33, 33), np.float32)
    api.decode(np.full((1, 2, 11, 11), 30, np.uint8), maps, method="grid")
    assert not [w for w in recwarn if "saturated" in str(w.message)]
