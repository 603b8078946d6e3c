"""Batched prediction over a split and the FPS the evaluation reports: ``predict_maps`` against a per-trajectory
loop, ``fps_from_batches`` against its closed form, and ``evaluate_run`` taking the speed from its own pass."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqcsist_jax import evaluate


def _mesh() -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))


@jax.jit
def _upsample(params, frames):
    """(B, T, 11, 11) -> (B, T, 33, 33): each pixel's value spread over its 3×3 cells, scaled by ``params``."""
    return params["scale"] * jnp.repeat(jnp.repeat(frames, 3, axis=-1), 3, axis=-2)


def _frames(n: int, t: int = 3) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, size=(n, t, 11, 11)).astype(np.uint8)


def test_predict_maps_equals_a_per_trajectory_loop_and_times_every_batch():
    frames = _frames(7)
    params = {"scale": jnp.float32(0.5)}
    seconds: list[float] = []
    maps = evaluate.predict_maps(_upsample, params, frames, batch_size=3, mesh=_mesh(), batch_seconds=seconds)
    want = np.stack([np.asarray(_upsample(params, f[None].astype(np.float32)))[0] for f in frames])
    assert maps.dtype == np.float32 and maps.shape == (7, 3, 33, 33)
    np.testing.assert_array_equal(maps, want)  # padding the last batch (7 = 3 + 3 + 1) changes nothing
    assert len(seconds) == 3 and all(s > 0 for s in seconds)


def test_padded_batch_size_rounds_up_to_the_mesh():
    four = types.SimpleNamespace(size=4)  # only .size is read
    assert [evaluate.padded_batch_size(b, four) for b in (0, 1, 3, 4, 5, 8)] == [4, 4, 4, 4, 8, 8]
    assert evaluate.padded_batch_size(3, _mesh()) == 3


def test_fps_from_batches_counts_the_full_batches_after_the_first():
    # 10 trajectories in batches of 4: batches 0 (warm-up), 1 (timed), 2 (padded: 2 of 4 real) -> only batch 1
    assert evaluate.fps_from_batches([30.0, 2.0, 5.0], 10, 4, 16) == pytest.approx(4 * 16 / 2.0)
    # 12 trajectories: batches 1 and 2 are full
    assert evaluate.fps_from_batches([30.0, 2.0, 6.0], 12, 4, 20) == pytest.approx(8 * 20 / 8.0)
    # nothing timed after the warm-up
    assert evaluate.fps_from_batches([3.0], 4, 4, 20) is None
    assert evaluate.fps_from_batches([3.0, 1.0], 6, 4, 20) is None  # the second batch is padded


def test_measure_fps_counts_output_maps():
    fps = evaluate.measure_fps(_upsample, {"scale": jnp.float32(1.0)}, _frames(4), batch_size=2, mesh=_mesh())
    assert np.isfinite(fps) and fps > 0


def _arrays(n: int) -> dict:
    return {"frames": _frames(n), "targets": np.zeros((n, 3, 3, 3), np.float32)}


def test_evaluate_run_takes_the_speed_from_its_own_pass(monkeypatch):
    def no_second_pass(*args, **kwargs):
        raise AssertionError("a second prediction pass was timed")

    monkeypatch.setattr(evaluate, "measure_fps", no_second_pass)
    eval_config = {"threshold": 70.0, "batch_size": 2, "scored_margin": 0}
    result = evaluate.evaluate_run(_upsample, {"scale": jnp.float32(1.0)}, _arrays(6), eval_config,
                                   frame_index=np.arange(3), mesh=_mesh(), measure_speed=True)
    assert np.isfinite(result["fps"]) and result["fps"] > 0
    quiet = evaluate.evaluate_run(_upsample, {"scale": jnp.float32(1.0)}, _arrays(6), eval_config,
                                  frame_index=np.arange(3), mesh=_mesh(), measure_speed=False)
    assert quiet["fps"] is None


def test_evaluate_run_times_a_second_pass_when_its_own_has_no_timed_batch(monkeypatch):
    monkeypatch.setattr(evaluate, "measure_fps", lambda *args, **kwargs: 123.0)
    eval_config = {"threshold": 70.0, "batch_size": 4, "scored_margin": 0}
    result = evaluate.evaluate_run(_upsample, {"scale": jnp.float32(1.0)}, _arrays(3), eval_config,
                                   frame_index=np.arange(3), mesh=_mesh(), measure_speed=True)
    assert result["fps"] == 123.0
