"""SeqCSIST simulator (SPEC §3): motion-model invariants, determinism and option effects."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from seqcsist_jax import imaging
from seqcsist_jax.data import simulate
from seqcsist_jax.data.simulate import CURVE_FAMILIES, SimulationOptions, simulate_seqcsist, split_seed

N = 300
T = 20
# Independent statement of the paper's directions as signs of (Δxc, Δyc); up = towards row 0.
AXIS_SIGNS = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}


@pytest.fixture(scope="module")
def data():
    return simulate_seqcsist(N, 12345)


def _offsets(d):
    """Target offsets from the reference point ``(N, T, MAXT, 2)`` float64 and a mask of real rows."""
    real = d["targets"][..., 2] != 0
    off = d["targets"][..., :2].astype(np.float64) - d["reference"][:, :, None, :].astype(np.float64)
    return off, real


def test_keys_shapes_dtypes(data):
    expected = {
        "frames": ((N, T, 11, 11), np.uint8),
        "targets": ((N, T, 4, 3), np.float32),
        "num_targets": ((N, T), np.int32),
        "curve_family": ((N,), np.int32),
        "reference": ((N, T, 2), np.float32),
        "directions": ((N, 4), np.int8),
        "clipped_pixels": ((N, T), np.int32),
    }
    assert set(data) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert data[key].shape == shape and data[key].dtype == dtype, key


def test_target_counts(data):
    k = data["num_targets"]
    assert np.all(k == k[:, :1]), "count must be constant along a trajectory"
    assert set(np.unique(k)) == {2, 3, 4}
    real = data["targets"][..., 2] != 0
    np.testing.assert_array_equal(real.sum(-1), k)
    np.testing.assert_array_equal(real, np.arange(4) < k[..., None])  # real rows first
    assert np.all(data["targets"][~real] == 0)
    # Roughly uniform over {2, 3, 4}: each count at least 20 % of 300 trajectories.
    assert np.bincount(k[:, 0], minlength=5)[2:].min() > 60


def test_distinct_directions_and_geometry(data):
    dirs = data["directions"].astype(int)
    k = data["num_targets"][:, 0]
    off, real = _offsets(data)
    for i in range(N):
        chosen = dirs[i, : k[i]]
        assert len(set(chosen)) == k[i] and set(chosen) <= set(AXIS_SIGNS)
        assert list(chosen) == sorted(chosen)
        assert np.all(dirs[i, k[i]:] == -1)
        for j, d in enumerate(chosen):
            sx, sy = AXIS_SIGNS[int(d)]
            o = off[i, :, j]
            # Exactly along its axis, on its side, in every frame.
            if sx == 0:
                assert np.all(np.abs(o[:, 0]) < 1e-5) and np.all(np.sign(o[:, 1]) == sy)
            else:
                assert np.all(np.abs(o[:, 1]) < 1e-5) and np.all(np.sign(o[:, 0]) == sx)


def test_initial_spacing_and_closest_pair(data):
    off, real = _offsets(data)
    r0 = np.linalg.norm(off[:, 0], axis=-1)[real[:, 0]]
    np.testing.assert_allclose(r0, 0.3, atol=2e-6)
    pos = data["targets"][:, 0, :, :2].astype(np.float64)
    d = np.linalg.norm(pos[:, :, None] - pos[:, None, :], axis=-1)
    pair = real[:, 0, :, None] & real[:, 0, None, :] & ~np.eye(4, dtype=bool)
    assert abs(d[pair].min() - 0.3 * np.sqrt(2)) < 1e-5  # ≈ 0.42 px: neighbouring directions


def test_reference_step_and_direction(data):
    ref = data["reference"].astype(np.float64)
    x0 = ref[:, 0, 0]
    np.testing.assert_allclose(x0, np.round(x0), atol=0)  # integer start row
    assert x0.min() >= 1 and x0.max() <= 9 and len(np.unique(x0)) == 9
    sign = np.where(x0 < 5, 1.0, -1.0)
    expected = np.broadcast_to(0.04 * sign[:, None], (N, T - 1))
    np.testing.assert_allclose(np.diff(ref[..., 0], axis=1), expected, atol=2e-6)


def test_outward_drift_bounds(data):
    off, real = _offsets(data)
    r = np.linalg.norm(off, axis=-1)
    dr = np.diff(r, axis=1)[real[:, 1:]]
    assert dr.min() >= -4e-6 and dr.max() <= 0.0014 + 4e-6
    assert abs(dr.mean() - 0.0007) < 0.00003  # uniform on (0, 0.0014): mean 0.0007
    assert r[real].max() <= 0.3 + 19 * 0.0014 + 4e-6


def test_everything_inside_bounds_and_image(data):
    ref = data["reference"]
    assert ref.min() >= 1.0 and ref.max() <= 9.0
    pos = data["targets"][..., :2][data["targets"][..., 2] != 0]
    assert pos.min() >= -0.5 and pos.max() <= 10.5


def test_curve_families_follow_their_shape(data):
    fam = data["curve_family"]
    assert set(np.unique(fam)) == {0, 1, 2}
    y = data["reference"][..., 1].astype(np.float64)
    x = data["reference"][..., 0].astype(np.float64)
    d1, d2, d3 = (np.diff(y, n=k, axis=1) for k in (1, 2, 3))
    slope = d1 / np.diff(x, axis=1)
    assert np.abs(slope).max() <= 2.0 + 1e-3  # max_slope
    line, quad, circ = (fam == CURVE_FAMILIES.index(f) for f in ("line", "quadratic", "circle"))
    assert np.abs(d2[line]).max() < 5e-6
    assert np.abs(d3[quad]).max() < 1e-5
    assert np.abs(d2[quad]).max() > 1e-4  # quadratics are actually curved
    # Circles: an algebraic least-squares circle fit (x² + y² + Dx + Ey + F = 0) passes through every point
    # to float32 precision, with a radius in circle_radius_range.
    for xy in data["reference"][circ].astype(np.float64):
        px, py = xy[:, 0], xy[:, 1]
        design = np.stack([px, py, np.ones_like(px)], axis=1)
        (dd, ee, ff), *_ = np.linalg.lstsq(design, -(px * px + py * py), rcond=None)
        cx, cy = -dd / 2, -ee / 2
        radius = np.sqrt(cx * cx + cy * cy - ff)
        assert np.abs(np.hypot(px - cx, py - cy) - radius).max() < 1e-5
        assert 1.0 - 1e-3 <= radius <= 5.0 + 1e-3


def test_brightness_range_and_constancy(data):
    b = data["targets"][..., 2]
    real = b != 0
    assert b[real].min() >= 220 and b[real].max() <= 250
    assert np.all(b == b[:, :1])


def test_frames_are_quantised_renders_of_the_stored_targets(data):
    img = imaging.render(data["targets"].astype(np.float64))
    np.testing.assert_array_equal(data["frames"], np.clip(np.round(img), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(data["clipped_pixels"], (np.round(img) > 255).sum(axis=(-1, -2)))
    assert data["clipped_pixels"].any()  # 3-4 targets near one pixel centre exceed 255 (SPEC §2)


def test_deterministic_and_seed_dependent(data):
    again = simulate_seqcsist(N, 12345, render_chunk=7)
    for key in data:
        assert again[key].tobytes() == data[key].tobytes(), key
    other = simulate_seqcsist(N, 12346)
    assert not np.array_equal(other["targets"], data["targets"])


def test_noise_changes_frames_not_targets(data):
    clean = simulate_seqcsist(N, 12345, output="float32", clip=False)
    noisy = simulate_seqcsist(N, 12345, output="float32", clip=False, noise_sigma=3.0)
    chunked = simulate_seqcsist(N, 12345, output="float32", clip=False, noise_sigma=3.0, render_chunk=13)
    np.testing.assert_array_equal(noisy["frames"], chunked["frames"])
    for key in ("targets", "reference", "directions", "num_targets", "curve_family"):
        np.testing.assert_array_equal(noisy[key], data[key])
    diff = (noisy["frames"].astype(np.float64) - clean["frames"]).ravel()
    assert abs(diff.std() - 3.0) < 0.03 and abs(diff.mean()) < 0.03
    rendered = imaging.render(data["targets"].astype(np.float64))
    np.testing.assert_allclose(clean["frames"], rendered, rtol=1e-6, atol=1e-6)
    assert clean["frames"].max() > 255  # unclipped float variant keeps the overflow
    # uint8 with noise = rounding and clipping of the same noisy frame.
    q = simulate_seqcsist(N, 12345, noise_sigma=3.0)
    np.testing.assert_array_equal(q["frames"], imaging.quantize(noisy["frames"].astype(np.float64)))
    clipped_float = simulate_seqcsist(N, 12345, output="float32", noise_sigma=3.0)["frames"]
    assert clipped_float.min() >= 0 and clipped_float.max() <= 255
    np.testing.assert_array_equal(clipped_float, np.clip(noisy["frames"], 0, 255))


def test_dense_targets_use_eight_compass_directions():
    d = simulate_seqcsist(60, 7, min_targets=5, max_targets=8)
    k = d["num_targets"][:, 0]
    assert k.min() >= 5 and k.max() <= 8 and d["targets"].shape[2] == 8
    off, real = _offsets(d)
    for i in range(60):
        chosen = d["directions"][i, : k[i]].astype(int)
        assert len(set(chosen)) == k[i] and max(chosen) <= 7
        unit = off[i, 0, : k[i]] / np.linalg.norm(off[i, 0, : k[i]], axis=-1, keepdims=True)
        angles = np.round(np.degrees(np.arctan2(unit[:, 1], unit[:, 0]))).astype(int) % 360
        assert len(set(angles)) == k[i] and all(a % 45 == 0 for a in angles)


def test_geometry_options_take_effect():
    d = simulate_seqcsist(40, 3, spacing=0.5, step=0.02, drift_max=0.0, min_targets=3, max_targets=3,
                          frames_per_trajectory=7, brightness_range=(100.0, 100.0), max_targets_padded=6,
                          curve_families=("line",))
    assert d["frames"].shape == (40, 7, 11, 11) and d["targets"].shape == (40, 7, 6, 3)
    assert np.all(d["num_targets"] == 3) and np.all(d["targets"][:, :, 3:] == 0)
    off, real = _offsets(d)
    np.testing.assert_allclose(np.linalg.norm(off, axis=-1)[real], 0.5, atol=2e-6)
    np.testing.assert_allclose(np.abs(np.diff(d["reference"][..., 0], axis=1)), 0.02, atol=2e-6)
    assert np.all(d["targets"][..., 2][real] == 100.0) and np.all(d["curve_family"] == 0)
    assert np.abs(np.diff(d["reference"][..., 1], n=2, axis=1)).max() < 5e-6


def test_brightness_per_frame_option():
    b = simulate_seqcsist(20, 3, brightness_mode="frame")["targets"][..., 2]
    assert not np.all(b == b[:, :1])
    assert b[b != 0].min() >= 220 and b.max() <= 250


def test_clip_false_uint8_refuses_overflow():
    with pytest.raises(ValueError, match="clip"):
        simulate_seqcsist(50, 0, clip=False, min_targets=4, max_targets=4)
    ok = simulate_seqcsist(5, 0, clip=False, min_targets=2, max_targets=2, brightness_range=(50.0, 60.0))
    assert ok["frames"].dtype == np.uint8


def test_zero_trajectories():
    d = simulate_seqcsist(0, 0)
    assert d["frames"].shape == (0, 20, 11, 11) and d["targets"].shape == (0, 20, 4, 3)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_targets=5, directions="axis"), "directions"),
        (dict(max_targets=9), "directions"),
        (dict(min_targets=4, max_targets=3), "min_targets"),
        (dict(output="float16"), "output"),
        (dict(curve_families=("spiral",)), "curve_families"),
        (dict(brightness_range=(0.0, 10.0)), "brightness_range"),
        (dict(step=1.0), "bounds"),
        (dict(spacing=2.0), "image"),
        (dict(bounds=(0.0, 10.4)), "image"),
        (dict(sigma=0.0), "sigma"),
        (dict(slope_range=(3.0, 4.0)), "max_slope"),
        (dict(frames_per_trajectory=0), "frames_per_trajectory"),
    ],
)
def test_bad_options_raise_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        simulate_seqcsist(2, 0, **options)


def test_unknown_option_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="noise_std"):
        simulate_seqcsist(2, 0, noise_std=2.0)


def test_bad_counts_and_seeds():
    with pytest.raises(ValueError, match="num_trajectories"):
        simulate_seqcsist(-1, 0)
    with pytest.raises(ValueError, match="seed"):
        simulate_seqcsist(1, -3)


def test_options_dataclass_defaults_match_spec():
    o = SimulationOptions()
    assert (o.frames_per_trajectory, o.min_targets, o.max_targets, o.maxt) == (20, 2, 4, 4)
    assert (o.brightness_range, o.spacing, o.step, o.drift_max) == ((220.0, 250.0), 0.3, 0.04, 0.0014)
    assert (o.noise_sigma, o.clip, o.output, o.size, o.sigma) == (0.0, True, "uint8", 11, 0.5)
    assert o.x0_range == (1, 9) and o.bounds == (1.0, 9.0) and o.curve_families == CURVE_FAMILIES
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.spacing = 0.4  # type: ignore[misc]


def test_split_seed_is_stable_and_distinct():
    seeds = {s: split_seed(0, s) for s in ("train", "val", "test")}
    assert len(set(seeds.values())) == 3
    assert all(0 <= v < 2**63 for v in seeds.values())
    assert split_seed(0, "train") != split_seed(1, "train")
    # The documented formula, independent of Python's per-process hash randomisation.
    digest = hashlib.sha256(b"0/test").digest()
    assert seeds["test"] == int.from_bytes(digest[:8], "little") >> 1
    with pytest.raises(ValueError):
        split_seed(0, "")


def test_cli_writes_public_layout(tmp_path):
    from seqcsist_jax.data.public_format import read_public_split

    rc = simulate.main(["--out", str(tmp_path), "--split", "val", "--num_trajectories", "2", "--seed", "5",
                        "--start_index", "1", "--noprogress"])
    assert rc == 0
    assert (tmp_path / "val" / "image" / "image_1.png").is_file()
    assert (tmp_path / "val" / "annotation" / "COS40.xml").is_file()
    back = read_public_split(tmp_path, "val", progress=False)
    ref = simulate_seqcsist(2, split_seed(5, "val"))
    for key in ("frames", "targets", "num_targets"):
        np.testing.assert_array_equal(back[key], ref[key])
    np.testing.assert_array_equal(back["frame_numbers"].ravel(), np.arange(1, 41))
    # A second run refuses to mix generations unless told to overwrite.
    assert simulate.main(["--out", str(tmp_path), "--split", "val", "--num_trajectories", "1",
                          "--noprogress"]) == 2


@pytest.mark.parametrize("module", ["simulate", "csist100k"])
def test_cli_out_under_a_file_is_one_line(tmp_path, capsys, module):
    import importlib

    main = importlib.import_module(f"seqcsist_jax.data.{module}").main
    (tmp_path / "a_file").write_text("")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "deeper"):
        assert main(["--out", str(out), "--split", "test", "--noprogress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{tmp_path / 'a_file'} is a file, not a directory" in err, err
    assert not list(tmp_path.glob("a_file*/**"))


def test_direction_count_is_the_generators_rule_and_the_decoders():
    from seqcsist_jax.data.simulate import direction_count
    from seqcsist_jax.decode import make_options

    assert [direction_count("auto", k) for k in (1, 4, 5, 8)] == [4, 4, 8, 8]
    assert direction_count("axis", 8) == 4 and direction_count("compass", 2) == 8
    for directions in ("auto", "axis", "compass"):
        for k in (2, 4, 5):
            assert make_options(star_directions=directions, max_targets=k).star_direction_count == direction_count(
                directions, k)
