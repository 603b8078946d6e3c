"""More direct unit tests of small public helpers no other test calls by name.

Each helper is checked against an independent reference: a plain Python loop, a numpy closed form in float64,
the rule its docstring states or, for random initialisers, the law they promise (within 5 standard errors of
the sample size). Float tolerances are written as float32 epsilon (``EPS32`` ≈ 1.2e-7) times a stated
factor.
"""

from __future__ import annotations

import copy
import email
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from seqcsist_jax import checkpointing, evaluate, methods, sharding, workdir
from seqcsist_jax.baselines import common, lista, srnets
from seqcsist_jax.data import public_format, tfds_open
from seqcsist_jax.decode import maps, trajectory
# (``seqcsist_jax.decode.calibrate`` is the package's re-exported function, not the module)
from seqcsist_jax.decode.calibrate import calibration_residual_variance
from seqcsist_jax.interop import torch_checkpoint
from seqcsist_jax.models import layers, tdfa
from tests.xla_env import xla_flags

EPS32 = float(np.finfo(np.float32).eps)
REPO = pathlib.Path(__file__).resolve().parents[1]


def _cell(i: int, c: int) -> float:
    """Grid coordinate of label-grid cell ``i`` (SPEC §1: ``(i - (c-1)//2)/c`` px)."""
    return (i - (c - 1) // 2) / c


# ------------------------------------------------------------------------------------------------ decode/maps


@pytest.mark.parametrize("c, threshold", [(3, 70.0), (3, 0.0), (2, -10.0)])
def test_grid_detections_every_cell_at_or_above_threshold_in_row_major_order(c, threshold):
    rng = np.random.default_rng(20)
    n = 11 * c
    m = rng.choice([0.0, 0.0, 0.0, -20.0, -5.0, 40.0, 70.0, 130.5, 250.0], size=(3, n, n)).astype(np.float32)
    got = maps.grid_detections(m, threshold=threshold, c=c)
    assert len(got) == 3
    for f in range(3):
        want = [(_cell(i, c), _cell(j, c), float(m[f, i, j]), float(m[f, i, j]))
                for i in range(n) for j in range(n) if m[f, i, j] >= threshold and m[f, i, j] != 0]
        assert got[f].shape == (len(want), 4)
        # Exact: each coordinate is one correctly rounded float64 division; values are float32 cell values.
        np.testing.assert_array_equal(got[f], np.array(want).reshape(-1, 4))


def _peaks_by_rule(m: np.ndarray, threshold: float, c: int, connectivity: int) -> list[tuple]:
    """The docstring's rule, cell by cell: ``(frame, x, y, brightness, value)`` of every peak."""
    f_, n, _ = m.shape
    window = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
    compare = window if connectivity == 8 else [(-1, 0), (1, 0), (0, -1), (0, 1)]
    inside = lambda i, j: 0 <= i < n and 0 <= j < n  # noqa: E731
    peak = np.zeros(m.shape, bool)
    for f in range(f_):
        for i in range(n):
            for j in range(n):
                v, ok = m[f, i, j], m[f, i, j] >= threshold
                for di, dj in compare:
                    if inside(i + di, j + dj):
                        before = di < 0 or (di == 0 and dj < 0)  # earlier in row-major order
                        nb = m[f, i + di, j + dj]
                        ok = ok and (v > nb if before else v >= nb)
                peak[f, i, j] = ok
    out = []
    for f in range(f_):
        for i in range(n):
            for j in range(n):
                if not peak[f, i, j]:
                    continue
                cells = [(i, j, float(m[f, i, j]))]  # the peak itself, plus positive non-peak window cells
                cells += [(i + di, j + dj, max(float(m[f, i + di, j + dj]), 0.0)) for di, dj in window
                          if inside(i + di, j + dj) and not peak[f, i + di, j + dj]]
                total = sum(w for _, _, w in cells)
                x = sum(w * _cell(a, c) for a, _, w in cells) / total
                y = sum(w * _cell(b, c) for _, b, w in cells) / total
                out.append((f, x, y, total, float(m[f, i, j])))
    return out


@pytest.mark.parametrize("c", [3, 2])
@pytest.mark.parametrize("connectivity", [8, 4])
def test_peak_table_matches_the_documented_rule(connectivity, c):
    rng = np.random.default_rng(21)
    n = 11 * c
    # Few distinct values: many ties (plateaus, equal neighbours) and negative cells the centroid must clip.
    m = rng.choice([0.0, 0.0, 0.0, 0.0, -50.0, 60.0, 120.0, 120.0, 180.0, 250.0], size=(2, n, n))
    fr, xy, bright, value = maps.peak_table(m, threshold=70.0, c=c, connectivity=connectivity)
    want = _peaks_by_rule(m, 70.0, c, connectivity)
    assert len(want) > 20 and xy.shape == (len(want), 2)
    assert fr.shape == value.shape == bright.shape == (len(want),)
    np.testing.assert_array_equal(fr, [w[0] for w in want])
    np.testing.assert_array_equal(value, [w[4] for w in want])
    # float64 sums of ≤ 9 terms in another order: a few float64 eps relative.
    np.testing.assert_allclose(bright, [w[3] for w in want], rtol=1e-13)
    np.testing.assert_allclose(xy, [[w[1], w[2]] for w in want], rtol=0, atol=1e-12)


def test_peak_table_plateau_gives_one_peak_and_connectivity_splits_diagonal_pairs():
    m = np.zeros((1, 33, 33))
    m[0, 5:7, 8:10] = 100.0  # a 2×2 plateau: exactly one peak, its first cell in row-major order
    m[0, 20, 20], m[0, 21, 21] = 200.0, 150.0  # two targets on diagonally adjacent cells
    fr, xy, bright, value = maps.peak_table(m, 70.0, 3, connectivity=8)
    assert list(value) == [100.0, 200.0]
    assert bright[0] == 400.0 and bright[1] == 350.0  # the whole plateau; the pair merged into one blob
    np.testing.assert_allclose(xy[0], [_cell(5, 3) + 0.5 / 3, _cell(8, 3) + 0.5 / 3], rtol=0, atol=1e-12)
    fr4, xy4, bright4, value4 = maps.peak_table(m, 70.0, 3, connectivity=4)
    assert list(value4) == [100.0, 200.0, 150.0]  # edge neighbours only: the diagonal pair stays apart
    np.testing.assert_array_equal(bright4[1:], [200.0, 150.0])  # peaks do not count each other
    np.testing.assert_allclose(xy4[1:], [[_cell(20, 3)] * 2, [_cell(21, 3)] * 2], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- decode: calibrate, trajectory


def test_calibration_residual_variance_divides_by_residual_degrees_of_freedom():
    got = calibration_residual_variance(np.float32(232.0), 121)
    assert type(got) is float and got == 232.0 / (121 - 5)  # default: 5 fitted parameters
    assert calibration_residual_variance(232.0, 121, num_params=11) == 232.0 / 110
    assert calibration_residual_variance(232.0, np.int64(40), 3) == 232.0 / 37
    for live in (5, 4, 0):  # no residual degree of freedom left: the denominator is floored at 1
        assert calibration_residual_variance(7.5, live) == 7.5


@pytest.mark.parametrize("num_frames", [4, 6, 9, 20, 33])
@pytest.mark.parametrize("templates", [1, 2, 3, 5])
def test_template_frames_evenly_spread_away_from_the_ends(num_frames, templates):
    got = trajectory.template_frames(num_frames, templates)
    lo, hi = (2, num_frames - 3) if num_frames >= 6 else (0, num_frames - 1)  # two frames off each end
    assert got.dtype.kind == "i" and np.all(np.diff(got) > 0)  # sorted, distinct frame indices
    assert lo <= got.min() and got.max() <= hi
    # Mirror-symmetric about the middle frame (lo + hi = T - 1), up to rounding one position by one frame.
    assert np.all(np.abs(np.sort((lo + hi) - got) - got) <= 1)
    if templates == 1:  # the middle frame
        assert len(got) == 1 and abs(got[0] - (lo + hi) / 2) <= 0.5
    spacing = (hi - lo) / (templates + 1)
    if spacing >= 1:  # room for them all: exactly `templates` frames, gaps within one frame of each other
        assert len(got) == templates
        gaps = np.diff(np.concatenate([[lo], got, [hi]]))
        assert gaps.max() - gaps.min() <= 1
    if spacing >= 2:  # interior points: neither range end is itself a template
        assert lo < got.min() and got.max() < hi


# ------------------------------------------------------------------------------------------- baselines


def test_per_trajectory_mse_and_mean_reduce_all_but_the_batch_axis():
    rng = np.random.default_rng(22)
    pred = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)  # B ≠ T ≠ H: a wrong axis would show
    target = (rng.standard_normal((3, 4, 5, 2)) + np.arange(3)[:, None, None, None]).astype(np.float32)
    n = pred[0].size
    mse = np.asarray(common.per_trajectory_mse(jnp.asarray(pred), jnp.asarray(target)))
    want = [np.mean((pred[b].astype(np.float64) - target[b]) ** 2) for b in range(3)]
    assert mse.shape == (3,)
    # Non-negative terms: a float32 sum of n of them is within n·eps relative, plus ~3 eps for (p - t)².
    np.testing.assert_allclose(mse, want, rtol=(n + 3) * EPS32)
    x = jnp.asarray(pred)
    sq = np.asarray(common.per_trajectory_mean(x))  # default fn: the square
    np.testing.assert_allclose(sq, [np.mean(pred[b].astype(np.float64) ** 2) for b in range(3)],
                               rtol=(n + 2) * EPS32)
    ab = np.asarray(common.per_trajectory_mean(x, jnp.abs))
    np.testing.assert_allclose(ab, [np.mean(np.abs(pred[b].astype(np.float64))) for b in range(3)],
                               rtol=(n + 1) * EPS32)
    plain = np.asarray(common.per_trajectory_mean(x, lambda v: v))  # signed: absolute bound n·eps·max|x|
    np.testing.assert_allclose(plain, [np.mean(pred[b].astype(np.float64)) for b in range(3)], rtol=0,
                               atol=(n + 1) * EPS32 * np.abs(pred).max())


def test_reduce_terms_weighted_batch_means_that_sum_to_the_total():
    rng = np.random.default_rng(23)
    a, b = rng.uniform(0, 5, 6).astype(np.float32), rng.uniform(0, 50, 6).astype(np.float32)
    total, named = common.reduce_terms({"mse": jnp.asarray(a), "reg": jnp.asarray(b)}, {"mse": 2.5})
    assert set(named) == {"mse", "reg", "loss_mse", "loss_reg"}
    ma, mb = np.mean(a.astype(np.float64)), np.mean(b.astype(np.float64))
    tol = 8 * 6 * EPS32  # float32 means of 6 non-negative terms (6 eps), one product, one sum; ×8 slack
    np.testing.assert_allclose(float(named["mse"]), ma, rtol=tol)
    np.testing.assert_allclose(float(named["reg"]), mb, rtol=tol)
    np.testing.assert_allclose(float(named["loss_mse"]), 2.5 * ma, rtol=tol)
    np.testing.assert_allclose(float(named["loss_reg"]), mb, rtol=tol)  # no weight given: counts once
    np.testing.assert_allclose(float(total), 2.5 * ma + mb, rtol=tol)
    weighted_sum = float(named["loss_mse"]) + float(named["loss_reg"])
    np.testing.assert_allclose(weighted_sum, float(total), rtol=2 * EPS32)


@pytest.mark.parametrize("config, want", [
    (None, 2), ({}, 2), (ml_collections.ConfigDict({"weight": 1.0}), 2),  # SCORED_MARGIN: [2:T-2]
    ({"scored_margin": 0}, 0), (ml_collections.ConfigDict({"scored_margin": 3}), 3),
])
def test_loss_margin_reads_the_configured_margin(config, want):
    assert common.SCORED_MARGIN == 2  # scored_slice's docstring: frames [2:18] of 20
    assert common.loss_margin(config) == want


@pytest.mark.parametrize("bad", [-1, 1.5, 2.0, True, "2", None])
def test_loss_margin_rejects_negative_or_non_integer_margins(bad):
    with pytest.raises(ValueError, match=r"scored_margin must be a non-negative integer, got " + repr(bad)):
        common.loss_margin({"scored_margin": bad})


def test_broadcast_mse_is_the_mean_over_all_frame_pairs():
    rng = np.random.default_rng(24)
    b, t, p = 3, 5, 7
    pred = rng.standard_normal((b, t, p)).astype(np.float32)
    target = (rng.standard_normal((b, t, p)) + np.linspace(-2, 2, t)[None, :, None]).astype(np.float32)
    got = np.asarray(lista.broadcast_mse(jnp.asarray(pred), jnp.asarray(target)))
    want = np.array([np.mean((pred[k][None, :, :].astype(np.float64) - target[k][:, None, :]) ** 2)
                     for k in range(b)])  # [i, j, p]: every (label frame i, prediction frame j) pair
    paired = np.mean((pred.astype(np.float64) - target) ** 2, axis=(1, 2))
    assert np.all(np.abs(want - paired) > 0.1)  # the frame trend makes it differ from the frame-wise MSE
    # The identity route: a float32 mean label (T eps of max|v|), squared differences of values ≤ 2·max|v|,
    # then float32 means of T·P terms → (T + T·P)·eps·(2·max|v|)² bounds the difference; ×4 slack.
    vmax = max(np.abs(pred).max(), np.abs(target).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * (t + t * p) * EPS32 * (2 * vmax) ** 2)


def test_all_frames_and_scored_frames_losses():
    rng = np.random.default_rng(25)
    b, t = 3, 9
    pred = rng.standard_normal((b, t, 4, 4)).astype(np.float32)
    labels = (pred + rng.standard_normal(pred.shape)).astype(np.float32)
    labels[:, [0, 1, t - 2, t - 1]] += 100.0  # the unscored end frames carry huge errors
    out, lab = {"output": jnp.asarray(pred)}, jnp.asarray(labels)
    sq = (pred.astype(np.float64) - labels) ** 2
    tol = 4 * (t * 16 + 3) * EPS32  # float32 means of ≤ t·16 non-negative terms per trajectory, then of B
    total, named = srnets.all_frames_loss(out, lab)
    assert set(named) == {"mse", "loss_mse"}
    got = [float(total), float(named["mse"]), float(named["loss_mse"])]
    np.testing.assert_allclose(got, sq.mean(), rtol=tol)
    total, named = srnets.scored_frames_loss(out, lab)  # default margin 2: frames [2:T-2]
    np.testing.assert_allclose([float(total), float(named["mse"])], sq[:, 2:t - 2].mean(), rtol=tol)
    assert float(total) < 10.0  # none of the +100 frames entered
    for margin in (1, 3, 0):
        total, _ = srnets.scored_frames_loss(out, lab, margin=margin)
        np.testing.assert_allclose(float(total), sq[:, margin:t - margin].mean(), rtol=tol)


# ---------------------------------------------------------------------------------------------- models/layers


@pytest.mark.parametrize("shape, fan_in, scale", [((3, 3, 64, 32), 3 * 3 * 64, 1.0), ((400, 50), 400, 0.1)])
def test_kaiming_normal_fan_in_draws_the_documented_normal(shape, fan_in, scale):
    w = layers.kaiming_normal_fan_in(scale)(jax.random.PRNGKey(0), shape)
    assert w.shape == shape and w.dtype == jnp.float32
    x = np.asarray(w, np.float64).ravel()
    n, sigma = x.size, math.sqrt(2.0 * scale * scale / fan_in)  # N(0, 2·scale²/fan_in)
    # 5 standard errors of each statistic for n draws: mean σ/√n, sample std ≈ σ/√(2n), a fraction
    # √(p(1-p)/n).
    assert abs(x.mean()) <= 5 * sigma / math.sqrt(n)
    assert abs(x.std() / sigma - 1) <= 5 / math.sqrt(2 * n)
    p = math.erf(1 / math.sqrt(2))  # P(|z| < 1) = 0.683 for a normal; 0.651 truncated at 2σ, 0.577 uniform
    assert abs(np.mean(np.abs(x) < sigma) - p) <= 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("fan_in", [1, 27, 1000])
def test_torch_default_bias_is_uniform_within_one_over_sqrt_fan_in(fan_in):
    n = 20000
    x = np.asarray(layers.torch_default_bias(fan_in)(jax.random.PRNGKey(1), (n,)), np.float64)
    assert x.shape == (n,)
    bound = 1.0 / math.sqrt(fan_in)
    assert np.all(np.abs(x) <= bound * (1 + EPS32))  # the bound itself is rounded to float32 once
    # The range is nearly filled: P(max < b(1 - δ)) = (1 - δ/2)ⁿ = e⁻²⁰ for δ = 0.002, n = 20000
    # (likewise for the min).
    assert x.max() > bound * (1 - 0.002) and x.min() < -bound * (1 - 0.002)
    # 5 standard errors: mean b/√(3n); variance b²/3 with Var(x²) = b⁴/5 - b⁴/9 = 4b⁴/45.
    assert abs(x.mean()) <= 5 * bound / math.sqrt(3 * n)
    assert abs(np.mean(x * x) - bound**2 / 3) <= 5 * bound**2 * math.sqrt(4 / 45 / n)


def test_check_inputs_returns_sizes_and_names_the_wrong_argument():
    frames, phi, q = np.zeros((2, 5, 2, 3)), np.zeros((6, 16)), np.zeros((16, 6))  # h ≠ w, side 4
    assert layers.check_inputs(frames, phi, q) == (2, 5, 6, 4)
    assert layers.check_inputs(frames, phi, None) == (2, 5, 6, 4)
    with pytest.raises(ValueError, match=r"frames must be \(B, T, h, w\), got shape \(5, 2, 3\)"):
        layers.check_inputs(np.zeros((5, 2, 3)), phi, q)
    with pytest.raises(ValueError, match=r"phi must be a \(m, n\) matrix, got shape \(96,\)"):
        layers.check_inputs(frames, np.zeros(96), q)
    with pytest.raises(ValueError, match=r"phi must be \(m, s²\) for a square label grid, "
                                         r"got shape \(6, 15\)"):
        layers.check_inputs(frames, np.zeros((6, 15)), None)
    with pytest.raises(ValueError, match=r"frames of 3×3 pixels do not match phi with 6 rows"):
        layers.check_inputs(np.zeros((2, 5, 3, 3)), phi, q)
    with pytest.raises(ValueError, match=r"q must have shape \(16, 6\) \(transpose of phi's\), got \(6, 16"):
        layers.check_inputs(frames, phi, np.zeros((6, 16)))


# ------------------------------------------------------------------------------------------- models, interop


@pytest.mark.parametrize("window", [3, 5, 7, 11])
def test_window_offsets_are_the_neighbours_without_the_centre(window):
    got = tdfa.window_offsets(window)
    want = [o for o in range(-(window // 2), window // 2 + 1) if o != 0]
    assert got.shape == (window - 1,) and got.dtype.kind == "i"
    assert got.tolist() == want
    if window == 5:
        assert got.tolist() == [-2, -1, 1, 2]  # the docstring's example


@pytest.mark.parametrize("window", [1, 2, 4, 0, -3])
def test_window_offsets_rejects_even_or_short_windows(window):
    with pytest.raises(ValueError, match=rf"window must be an odd number >= 3, got {window}"):
        tdfa.window_offsets(window)


# The module docstring's table, one row per rule (leaf names: kernel → weight, bias → bias).
TORCH_KEYS = [
    (("stage_0", "soft_thr"), "fcs.0.soft_thr"),
    (("stage_11", "lambda_step"), "fcs.11.lambda_step"),
    (("stage_2", "conv1_backward"), "fcs.2.conv1_backward"),
    (("time_encoding", "dense", "kernel"), "TDDA.mlp.weight"),
    (("time_encoding", "dense", "bias"), "TDDA.mlp.bias"),
    (("tdfa", "feat_extract", "kernel"), "TDDA.feat_extract.0.conv.weight"),
    (("tdfa", "attention", "conv1_s", "bias"), "TDDA.feat_aggregate.conv1_s.bias"),
    (("tdfa", "attention", "conv_squeeze", "kernel"), "TDDA.feat_aggregate.conv_squeeze.weight"),
    (("tdfa", "align_2", "kernel"), "TDDA.align_2.weight"),
    (("tdfa", "align_1", "conv_offset", "bias"), "TDDA.align_1.conv_offset.bias"),
    (("tdfa", "conv", "kernel"), "TDDA.conv.weight"),
    (("tdfa", "tail", "head", "bias"), "TDDA.tail_conv.0.conv.bias"),
    (("tdfa", "tail", "res_3", "conv2", "kernel"), "TDDA.tail_conv.1.3.conv2.weight"),
    (("tdfa", "tail", "out", "kernel"), "TDDA.tail_conv.2.weight"),
]


def test_torch_key_follows_the_documented_table():
    for path, key in TORCH_KEYS:
        assert torch_checkpoint.torch_key(path) == key, path
        assert torch_checkpoint.torch_key("/".join(path)) == key, path  # the "/"-joined form too
    for bad in [("tdfa", "align_3", "kernel"), ("tdfa", "tail", "out", "bias"), ("stage_0", "a", "b"),
                ("encoder", "kernel"), ("xtdfa", "conv", "kernel")]:
        message = "no public state-dict key for the Flax parameter '" + "/".join(bad) + "'"
        with pytest.raises(ValueError, match=message):
            torch_checkpoint.torch_key(bad)


# --------------------------------------------------------------------------------------------- checkpointing


def _state(rng: np.random.Generator) -> dict:
    return {"params": {"dense": {"kernel": rng.standard_normal((3, 4)).astype(np.float32),
                                 "bias": np.zeros(4, np.float32)}, "scale": np.float32(1.5)},
            "opt_state": ({"mu": rng.standard_normal(5).astype(np.float32)}, np.int32(7)), "step": 3}


def test_state_checksums_detect_one_ulp_and_ignore_key_order():
    base = _state(np.random.default_rng(26))
    sums = checkpointing.state_checksums(base)
    assert set(sums) == {"params_sha256", "opt_state_sha256"}
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in sums.values())  # hex SHA-256
    assert checkpointing.state_checksums(copy.deepcopy(base)) == sums  # equal trees, equal sums
    dense = base["params"]["dense"]
    reordered = {"step": 3, "opt_state": base["opt_state"],
                 "params": {"scale": base["params"]["scale"], "dense": dict(reversed(dense.items()))}}
    assert checkpointing.state_checksums(reordered) == sums  # dict insertion order does not matter
    on_device = jax.tree_util.tree_map(jnp.asarray, base)
    assert checkpointing.state_checksums(on_device) == sums  # device arrays: the same host bytes
    as_object = types.SimpleNamespace(params=base["params"], opt_state=base["opt_state"], step=99)
    assert checkpointing.state_checksums(as_object) == sums  # a TrainState-like object; other fields ignored

    ulp = copy.deepcopy(base)
    k = ulp["params"]["dense"]["kernel"]
    k[1, 2] = np.nextafter(k[1, 2], np.float32(np.inf))
    got = checkpointing.state_checksums(ulp)
    assert got["params_sha256"] != sums["params_sha256"]
    assert got["opt_state_sha256"] == sums["opt_state_sha256"]
    ulp = copy.deepcopy(base)
    ulp["opt_state"][0]["mu"][4] = np.nextafter(ulp["opt_state"][0]["mu"][4], np.float32(-np.inf))
    got = checkpointing.state_checksums(ulp)
    assert got["opt_state_sha256"] != sums["opt_state_sha256"]
    assert got["params_sha256"] == sums["params_sha256"]
    # Same bytes under another dtype or shape are another tree.
    for leaf in (dense["kernel"].view(np.int32), dense["kernel"].reshape(4, 3)):
        other = copy.deepcopy(base)
        other["params"]["dense"]["kernel"] = leaf
        assert checkpointing.state_checksums(other)["params_sha256"] != sums["params_sha256"]


# ------------------------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("map_side, frame_side", [(33, 11), (22, 11), (11, 11), (15, 5), (44, 11)])
def test_subpixel_division_is_the_side_ratio(map_side, frame_side):
    maps_ = np.zeros((2, 3, map_side, map_side), np.float32)
    frames_ = np.zeros((2, 3, frame_side, frame_side), np.uint8)
    got = evaluate.subpixel_division(maps_, frames_)
    assert got * frame_side == map_side and type(got) is int


@pytest.mark.parametrize("map_shape", [(34, 34), (33, 22), (22, 33), (10, 10)])
def test_subpixel_division_rejects_maps_that_are_not_11c_squares(map_shape):
    with pytest.raises(ValueError, match=rf"predicted maps \({map_shape[0]}, {map_shape[1]}\) are not "
                                         r"\(11c, 11c\) maps of 11×11 frames"):
        evaluate.subpixel_division(np.zeros((4, *map_shape)), np.zeros((4, 11, 11)))


def _cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |")
    return [c.strip() for c in line[1:-1].split("|")]


def _count(cell: str) -> float:
    """``"1.23 M"`` / ``"12.3 K"`` / ``"999"`` → a number."""
    num, _, unit = cell.partition(" ")
    return float(num) * {"": 1, "K": 1e3, "M": 1e6}[unit]


@pytest.mark.parametrize("quality", [False, True])
def test_paper_row_matches_its_header_and_scales_by_100(quality):
    metrics = {"mAP": 0.51234, "AP05": 0.10004, "AP10": 0.23456, "AP15": 0.3, "AP20": 0.4099, "AP25": 0.55555}
    if quality:
        metrics.update(psnr=31.23456, ssim=0.876543)
    header = _cells(evaluate.table_header(metrics).splitlines()[0])
    for params, fps in ((1_234_567, 2345.6), (12_345, 7.4), (999, None), (None, 1e6)):
        row = _cells(evaluate.paper_row("my method", metrics, params=params, fps=fps))
        assert len(row) == len(header) and row[0] == "my method"
        cell = dict(zip(header, row))
        for col, key in zip(["CSO-mAP", "AP05", "AP10", "AP15", "AP20", "AP25"], evaluate.PAPER_COLUMNS):
            assert abs(float(cell[col]) - 100 * metrics[key]) <= 0.005 + 1e-9, col  # 2 decimals of ×100
        if fps is None:
            assert cell["FPS"] == "–"
        else:  # a whole number of frames per second, thousands separated by commas
            assert abs(float(cell["FPS"].replace(",", "")) - fps) <= 0.5
        if params is None:
            assert cell["params"] == "–"
        else:  # rounding to the printed unit (M: 2 decimals, K: 1, plain: exact) loses ≤ half its step
            step = 0.01e6 if params >= 1e6 else 0.1e3 if params >= 1e3 else 0
            assert abs(_count(cell["params"]) - params) <= step / 2 + 1e-6
        if quality:
            assert abs(float(cell["PSNR"]) - metrics["psnr"]) <= 0.005 and abs(float(cell["SSIM"])
                                                                                - metrics["ssim"]) <= 5e-5
    assert ("PSNR" in header) == quality


# -------------------------------------------------------------------------------------------------- methods


def _load(path: pathlib.Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _line_of(path: pathlib.Path, text: str) -> int:
    return [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line][0]


def test_line_in_file_is_the_innermost_frame_in_that_file(tmp_path):
    inner = tmp_path / "inner_mod.py"
    inner.write_text("def fail():\n    x = 1\n    raise KeyError('boom')\n")
    outer = tmp_path / "outer_mod.py"
    outer.write_text("def helper(m):\n    return m.fail()\n\n\n"
                     "def build(m):\n    y = 2\n    return helper(m)\n")
    inner_mod, outer_mod = _load(inner, "_lif_inner"), _load(outer, "_lif_outer")
    with pytest.raises(KeyError) as info:
        outer_mod.build(inner_mod)
    err = info.value
    assert methods.line_in_file(err, inner) == _line_of(inner, "raise KeyError")
    # Two frames run in outer_mod.py (build, then helper): the innermost one is helper's call.
    assert methods.line_in_file(err, str(outer)) == _line_of(outer, "return m.fail()")
    assert methods.line_in_file(err, tmp_path / "other.py") is None  # no frame runs there
    assert methods.line_in_file(KeyError("never raised"), inner) is None  # no traceback at all


@pytest.mark.parametrize("num_frames", [0, 1, 5, 20])
def test_all_frames_is_every_input_frame_and_the_methods_default(num_frames):
    got = methods.all_frames(num_frames)
    assert isinstance(got, np.ndarray) and np.issubdtype(got.dtype, np.integer)
    assert got.tolist() == list(range(num_frames))
    method = methods.Method("m", None, None)  # no frame_index given: every frame
    assert method.frame_index is methods.all_frames


def test_builder_file_names_the_file_of_external_builders_only():
    for name in methods.METHOD_TABLE:
        assert methods.builder_file(name) is None
    for name in ("nocolon", 42, None, "seqcsist_jax.baselines.srnets:build_srcnn", "seqcsist_jax:anything",
                 "no_such_package_for_this_test:build", "email.no_such_module_for_this_test:build"):
        assert methods.builder_file(name) is None, name
    assert methods.builder_file("my/dir/file.py:build_fn") == pathlib.Path("my/dir/file.py")
    assert methods.builder_file("~/plug.py:build") == pathlib.Path.home() / "plug.py"
    want = pathlib.Path(email.__file__).parent / "mime" / "text.py"  # a module file of an installed package
    assert methods.builder_file("email.mime.text:build").resolve() == want.resolve()


# --------------------------------------------------------------------------------------------- workdir, data


def test_config_path_is_config_json_in_the_workdir(tmp_path):
    assert workdir.config_path(tmp_path) == tmp_path / "config.json"  # the module docstring's layout
    assert workdir.config_path(str(tmp_path / "run")) == tmp_path / "run" / "config.json"
    (tmp_path / "config.json").write_text(json.dumps({"seed": 5, "model": {"name": "ista"}}))
    assert workdir.load_run_config(tmp_path).model.name == "ista"  # the file the loader reads


def test_batch_sharding_splits_the_leading_axis_over_data():
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    s = sharding.batch_sharding(mesh)
    assert s.mesh == mesh and s.spec == PartitionSpec("data")
    x = np.arange(24.0).reshape(4, 6)
    np.testing.assert_array_equal(np.asarray(jax.device_put(x, s)), x)
    # Four CPU devices (a fresh interpreter): device k holds rows [2k, 2k + 2) and every column.
    code = ("import json, jax\nfrom seqcsist_jax import sharding\n"
            "m = sharding.data_mesh()\ns = sharding.batch_sharding(m)\n"
            "print(json.dumps([[i[0].start, i[0].stop, i[1].start, i[1].stop, d.id] "
            "for d, i in s.devices_indices_map((8, 3)).items()]))\n")
    env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"),
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True)
    rows = sorted(json.loads(out.stdout.strip().splitlines()[-1]), key=lambda r: r[4])
    assert rows == [[2 * k, 2 * k + 2, None, None, k] for k in range(4)]


def test_read_image_round_trips_grey_frames_and_names_bad_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(27)
    for size in (11, 7):
        frame = rng.integers(0, 256, (size, size), dtype=np.uint8)
        frame[0, :] = np.arange(size)  # a row gradient: a transposed read would differ
        path = tmp_path / f"frame{size}.png"
        Image.fromarray(frame, mode="L").save(path)
        got = public_format.read_image(path, size=size)
        assert got.dtype == np.uint8 and got.shape == (size, size)
        np.testing.assert_array_equal(got, frame)
    np.testing.assert_array_equal(public_format.read_image(str(tmp_path / "frame11.png")),
                                  np.asarray(Image.open(tmp_path / "frame11.png")))  # size 11 by default
    bad = {
        "rgb.png": (lambda p: Image.new("RGB", (11, 11)).save(p),
                    r"expected an 8-bit grey \(mode 'L'\) 11×11 image, got mode 'RGB'"),
        "wide.png": (lambda p: Image.new("L", (13, 11)).save(p), r"11×11 image, got mode 'L' size 13×11"),
        "i16.png": (lambda p: Image.new("I;16", (11, 11)).save(p), r"expected an 8-bit grey"),
        "junk.png": (lambda p: p.write_bytes(b"\x89PNG not really"), r"cannot decode image"),
        "missing.png": (lambda p: None, r": file not found$"),
    }
    for name, (make, message) in bad.items():
        path = tmp_path / name
        make(path)
        with pytest.raises(public_format.PublicFormatError, match=message) as info:
            public_format.read_image(path)
        assert str(path) in str(info.value) and isinstance(info.value, ValueError), name


def test_remove_stale_incomplete_removes_only_this_versions_incomplete_folders(tmp_path):
    config_dir = tmp_path / "seqcsist" / "mini"
    version_dir = config_dir / "1.0.0"
    (version_dir / "data").mkdir(parents=True)
    (version_dir / "data" / "keep.txt").write_text("prepared")
    stale = [config_dir / "incomplete.AB12CD_1.0.0", config_dir / "incomplete.ZZ_9_1.0.0"]  # TFDS's tmp dirs
    for folder in stale:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "part.parquet").write_bytes(b"x" * 10)
    keep = [config_dir / "incomplete.AB12CD_1.0.1", config_dir / "incomplete.AB12CD_21.0.0",
            config_dir / "1.0.0.damaged-123", config_dir / "incomplete_1.0.0"]
    for folder in keep:
        folder.mkdir()
    got = tfds_open.remove_stale_incomplete(version_dir)
    assert got == sorted(stale)
    assert not any(f.exists() for f in stale)
    assert all(f.is_dir() for f in keep) and (version_dir / "data" / "keep.txt").read_text() == "prepared"
    assert tfds_open.remove_stale_incomplete(version_dir) == []  # nothing left to remove


def test_show_progress_bar_needs_the_flag_and_a_screen(monkeypatch):
    import io

    from seqcsist_jax import train as train_lib

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    on, off = ml_collections.ConfigDict({"progress_bar": True}), ml_collections.ConfigDict({"progress_bar": False})
    monkeypatch.delitem(sys.modules, "IPython", raising=False)  # pytest may have imported it: no kernel here
    assert train_lib.show_progress_bar(on, Terminal()) is True
    assert train_lib.show_progress_bar(off, Terminal()) is False
    assert train_lib.show_progress_bar(on, io.StringIO()) is False  # a file or a pipe: step lines instead
    closed = io.StringIO()
    closed.close()  # isatty raises ValueError on a closed stream
    assert train_lib.show_progress_bar(on, closed) is False
    # a notebook kernel (Jupyter, Colab) draws a widget although its stderr is no terminal
    kernel = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert train_lib.show_progress_bar(on, io.StringIO()) is True
    assert train_lib.show_progress_bar(off, io.StringIO()) is False
    terminal_ipython = types.SimpleNamespace()  # IPython in a terminal: no kernel, its stderr decides
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: terminal_ipython))
    assert train_lib.show_progress_bar(on, io.StringIO()) is False
