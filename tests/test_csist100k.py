"""CSIST-100K: the generator (SPEC §9), label grids, the public layout, the `csist100k` TFDS builder and loader.

Everything runs without TensorFlow except the tests marked ``tf`` (CI installs the ``tf`` extra).
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import unittest

import numpy as np
import pytest
import scipy.stats
import tensorflow_datasets as tfds

import seqcsist_jax  # noqa: F401  (registers the builders)
from seqcsist_jax import imaging
from seqcsist_jax.data import csist100k, public_format
from seqcsist_jax.data.csist100k import load_csist100k_arrays, make_options, simulate_csist100k
from seqcsist_jax.data.public_format import CSIST100K_LAYOUT, PublicFormatError, read_public_split
from seqcsist_jax.data.simulate import split_seed
from tfds_builders.csist100k import csist100k_dataset_builder as cdb

REPO = pathlib.Path(__file__).resolve().parents[1]
FOLDER = {"train": "train", "validation": "val", "test": "test"}
KEYS = ("image", "targets", "num_targets", "image_number")
MIN_DISTANCE = 0.52 * 1.9 * 0.5  # SPEC §9: 0.52 Rayleigh units, R = 1.9 σ, σ = 0.5 px
#: Significance of every statistical test below (fixed seeds: a failure is a real change, not bad luck).
ALPHA = 1e-3


@pytest.fixture(scope="module")
def data():
    return simulate_csist100k(5000, seed=123)


def _pairwise_distances(targets: np.ndarray, count: int) -> np.ndarray:
    """All pairwise distances (float64, from the stored float32 rows) of one image's real targets."""
    xy = targets[:count, :2].astype(np.float64)
    i, j = np.triu_indices(count, 1)
    return np.sqrt(((xy[i] - xy[j]) ** 2).sum(-1))


# --------------------------------------------------------------------------------------------- generator


def test_options_defaults_match_spec():
    opts = make_options()
    assert (opts.min_targets, opts.max_targets, opts.maxt) == (1, 5, 5)
    assert opts.brightness_range == (220.0, 250.0)
    assert opts.sigma == 0.5 and opts.size == 11 and opts.output == "uint8" and opts.clip
    assert opts.min_distance == pytest.approx(0.494, abs=1e-12)
    assert csist100k.SPLIT_SIZES == {"train": 80000, "val": 10000, "test": 10000}


def test_keys_shapes_dtypes(data):
    n = 5000
    assert data["image"].shape == (n, 11, 11) and data["image"].dtype == np.uint8
    assert data["targets"].shape == (n, 5, 3) and data["targets"].dtype == np.float32
    assert data["num_targets"].shape == (n,) and data["num_targets"].dtype == np.int32
    assert data["host_pixel"].shape == (n, 2) and data["clipped_pixels"].shape == (n,)


def test_every_image_obeys_the_constraints(data):
    """One pixel, spacing ≥ 0.52 R (checked on the stored float32 values), brightness range, padding."""
    targets, counts, host = data["targets"], data["num_targets"], data["host_pixel"]
    slots = np.arange(5)
    real = slots[None, :] < counts[:, None]
    np.testing.assert_array_equal(targets[..., 2] != 0, real)  # real rows first, padding rows all zero
    assert not targets[~real].any()
    b = targets[..., 2][real]
    assert b.min() >= 220.0 and b.max() <= 250.0
    xy = targets[..., :2].astype(np.float64)
    lo = host[:, None, :] - 0.5
    inside = (xy >= lo) & (xy < lo + 1.0)  # the host pixel's square [r-½, r+½) × [c-½, c+½)
    assert inside[real].all()
    np.testing.assert_array_equal(np.floor(xy + 0.5)[real], np.broadcast_to(host[:, None, :], xy.shape)[real])
    closest = min(_pairwise_distances(t, k).min() for t, k in zip(targets, counts) if k > 1)
    assert closest >= MIN_DISTANCE
    assert closest < MIN_DISTANCE + 0.01  # the constraint is active, not trivially loose


def test_counts_are_uniform_on_one_to_five(data):
    observed = np.bincount(data["num_targets"], minlength=6)
    assert observed[0] == 0 and observed.sum() == 5000
    stat, p = scipy.stats.chisquare(observed[1:])  # H0: uniform on 1..5, 4 degrees of freedom
    assert p > ALPHA, (observed, stat)


def test_host_pixels_are_uniform_over_the_grid(data):
    cells = data["host_pixel"][:, 0] * 11 + data["host_pixel"][:, 1]
    observed = np.bincount(cells, minlength=121)
    assert scipy.stats.chisquare(observed).pvalue > ALPHA


def test_brightness_is_uniform(data):
    b = data["targets"][..., 2][data["targets"][..., 2] > 0]
    assert scipy.stats.kstest(b, scipy.stats.uniform(loc=220, scale=30).cdf).pvalue > ALPHA


@pytest.mark.parametrize("k", [3, 5])
def test_positions_are_uniform_on_the_feasible_set(k):
    """Against an independent reference: plain whole-configuration rejection in float64 (no screening).

    The test has power: 300 five-target groups placed one target after another (random sequential placement)
    differ from this reference with KS p ≈ 1e-5 (closest pair) and 2e-7 (centroid distance), far below ALPHA.
    """
    n = 300
    got = simulate_csist100k(n, 5, min_targets=k, max_targets=k, pixel_range=(5, 5))["targets"][:, :k, :2]
    offsets = got.astype(np.float64) - 4.5
    rng = np.random.default_rng(99)
    ref = []
    while sum(len(r) for r in ref) < n:
        cand = rng.random((k, 2, 400_000))
        ok = np.ones(cand.shape[-1], dtype=bool)
        for i, j in zip(*np.triu_indices(k, 1)):
            ok &= np.hypot(*(cand[i] - cand[j])) >= MIN_DISTANCE
        ref.append(cand[..., ok].transpose(2, 0, 1))
    ref = np.concatenate(ref)[:n]

    def features(x):  # distribution summaries that differ between uniform-conditioned and sequential placement
        d = np.sqrt(((x[:, :, None] - x[:, None]) ** 2).sum(-1))
        i, j = np.triu_indices(k, 1)
        centroid = x.mean(1)
        return {"min_pair": d[:, i, j].min(1), "max_pair": d[:, i, j].max(1), "x": x[..., 0].ravel(),
                "centre_dist": np.hypot(centroid[:, 0] - 0.5, centroid[:, 1] - 0.5)}

    fg, fr = features(offsets), features(ref)
    for key in fg:
        assert scipy.stats.ks_2samp(fg[key], fr[key]).pvalue > ALPHA, key


def test_images_are_quantised_renders_of_the_stored_targets(data):
    want = imaging.quantize(imaging.render(data["targets"][:500].astype(np.float64)))
    np.testing.assert_array_equal(data["image"][:500], want)
    np.testing.assert_array_equal(data["clipped_pixels"], imaging.count_clipped(
        imaging.render(data["targets"].astype(np.float64))))
    # One target never overflows 8 bits (≤ 0.466 × 250 on a pixel); five inside one pixel do in this sample.
    assert (data["clipped_pixels"][data["num_targets"] == 5] > 0).all()
    assert (data["clipped_pixels"][data["num_targets"] == 1] == 0).all()


def test_deterministic_chunk_independent_and_seed_dependent(data):
    again = simulate_csist100k(5000, seed=123, render_chunk=777)
    for key in data:
        assert data[key].tobytes() == again[key].tobytes(), key
    other = simulate_csist100k(50, seed=124)
    assert not np.array_equal(other["targets"], data["targets"][:50])
    # A prefix of a larger draw is not promised, but the same call always is: n = 0 works too.
    assert simulate_csist100k(0, seed=1)["image"].shape == (0, 11, 11)


def test_float32_output_is_the_unquantised_render():
    raw = simulate_csist100k(40, seed=3, output="float32", clip=False)
    q = simulate_csist100k(40, seed=3)
    np.testing.assert_array_equal(raw["targets"], q["targets"])
    np.testing.assert_allclose(raw["image"], imaging.render(q["targets"].astype(np.float64)), rtol=1e-6, atol=1e-4)
    assert raw["image"].max() > 255  # unclipped


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_targets=10), "supported: up to 9"),
        (dict(min_separation_rayleigh=0.8), "at most 0.7071"),
        (dict(pixel_range=(0, 11)), "pixel_range"),
        (dict(min_targets=3, max_targets=2), "min_targets"),
        (dict(brightness_range=(0.0, 10.0)), "brightness_range"),
        (dict(output="png"), "output"),
        (dict(max_targets_padded=3), "max_targets_padded"),
    ],
)
def test_bad_options_raise_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        make_options(**options)


def test_unknown_option_and_bad_arguments():
    with pytest.raises(TypeError, match="unknown CSIST-100K option.*spacing"):
        simulate_csist100k(3, 0, spacing=0.3)
    with pytest.raises(ValueError, match="num_images"):
        simulate_csist100k(-1, 0)
    with pytest.raises(ValueError, match="seed"):
        simulate_csist100k(3, -2)
    with pytest.raises(ValueError, match="clip=False"):
        simulate_csist100k(50, 0, clip=False)


# --------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("c", [3, 5, 7])
def test_labels_match_a_loop_reference_without_collisions(data, c):
    targets, counts = data["targets"][:300], data["num_targets"][:300]
    got = csist100k.labels(targets, c)
    assert got.shape == (300, 11 * c, 11 * c)
    want = np.zeros_like(got)
    for n in range(300):
        for xc, yc, b in targets[n, : counts[n]].astype(np.float64):
            # The public toolkit's rule (GrokCSO xml_2_matrix_single); Python's round like theirs.
            want[n, int(round(c * xc + (c - 1) // 2)), int(round(c * yc + (c - 1) // 2))] = b
    np.testing.assert_array_equal(got, want)
    # Spacing ≥ 0.494 px > √2/c: no two targets share a cell, so "sum" and "overwrite" agree.
    assert not np.asarray(imaging.grid_collisions(targets, c=c)).any()
    np.testing.assert_array_equal(csist100k.labels(targets, c, collision="overwrite"), got)
    with pytest.raises(ValueError, match="c must be"):
        csist100k.labels(targets, 0)


# --------------------------------------------------------------------------------------------- public layout


def test_cli_writes_the_public_layout_and_reads_back_exactly(tmp_path):
    assert csist100k.main(["--out", str(tmp_path), "--split", "val", "--num_images", "12", "--seed", "4",
                           "--start_index", "1", "--noprogress"]) == 0
    split_dir = tmp_path / "val"
    assert sorted(p.name for p in (split_dir / "cso_img").iterdir())[:2] == ["image_1.png", "image_10.png"]
    assert (split_dir / "Annotations" / "CSO12.xml").is_file()
    assert "<filename>CSO3</filename>" in (split_dir / "Annotations" / "CSO3.xml").read_text()
    got = read_public_split(tmp_path, "val", frames_per_trajectory=1, max_targets=5, progress=False,
                            layout=CSIST100K_LAYOUT)
    want = simulate_csist100k(12, split_seed(4, "val"))
    np.testing.assert_array_equal(got["frames"][:, 0], want["image"])
    np.testing.assert_array_equal(got["targets"][:, 0], want["targets"])  # float32 bits survive the XML text
    np.testing.assert_array_equal(got["num_targets"][:, 0], want["num_targets"])
    np.testing.assert_array_equal(got["frame_numbers"][:, 0], np.arange(1, 13))
    # Writing again without --overwrite is refused with exit status 2; "validation" (the TFDS/evaluate name) is the
    # same public folder, val/.
    assert csist100k.main(["--out", str(tmp_path), "--split", "val", "--num_images", "2", "--noprogress"]) == 2
    assert csist100k.main(["--out", str(tmp_path), "--split", "validation", "--num_images", "2",
                           "--noprogress"]) == 2
    assert csist100k.main(["--out", str(tmp_path), "--split", "validation", "--num_images", "12", "--seed", "4",
                           "--start_index", "1", "--noprogress", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val"]
    again = read_public_split(tmp_path, "val", frames_per_trajectory=1, max_targets=5, progress=False,
                              layout=CSIST100K_LAYOUT)
    np.testing.assert_array_equal(again["frames"][:, 0], want["image"])


def test_public_layout_errors_name_the_file(tmp_path):
    csist100k.main(["--out", str(tmp_path), "--split", "test", "--num_images", "4", "--noprogress"])
    ann = tmp_path / "test" / "Annotations"
    (ann / "CSO2.xml").unlink()
    with pytest.raises(PublicFormatError) as err:
        public_format.split_files(tmp_path, "test", layout=CSIST100K_LAYOUT)
    assert "image_2.png: image without annotation" in str(err.value) and "CSO2.xml" in str(err.value)
    with pytest.raises(PublicFormatError, match="cso_img: directory not found"):
        public_format.split_files(tmp_path / "nowhere", "test", layout=CSIST100K_LAYOUT)


# --------------------------------------------------------------------------------------------- TFDS builder


def _build(name_or_config, data_dir, manual_dir=None) -> tfds.core.DatasetBuilder:
    if isinstance(name_or_config, str):
        builder = tfds.builder(name_or_config, data_dir=os.fspath(data_dir))
    else:
        builder = cdb.Builder(config=name_or_config, data_dir=os.fspath(data_dir))
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)) if manual_dir else None
    builder.download_and_prepare(download_config=config)
    return builder


def _read_split(builder, split: str) -> dict[str, np.ndarray]:
    source = builder.as_data_source(split=split)
    examples = source.__getitems__(list(range(len(source))))
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in KEYS}


def _data_files(builder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(builder.data_path).glob("*.parquet-*"))}


TINY_SIZES = {"train": 30, "validation": 12, "test": 10}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`default`'s generator at a few images per split, built once: (builder, config)."""
    base = next(c for c in cdb.BUILDER_CONFIGS if c.name == "default")
    config = dataclasses.replace(base, name="tiny", split_sizes=tuple(TINY_SIZES.items()))
    return _build(config, tmp_path_factory.mktemp("tfds_tiny")), config


def test_registered_by_name_with_configs():
    assert "csist100k" in tfds.list_builders(with_community_datasets=False)
    cls = tfds.builder_cls("csist100k")
    assert cls is cdb.Builder
    assert [c.name for c in cls.BUILDER_CONFIGS] == ["default", "mini", "public"]
    sizes = {c.name: dict(c.split_sizes) for c in cls.BUILDER_CONFIGS if c.source == "simulate"}
    assert sizes == {"default": {"train": 80000, "validation": 10000, "test": 10000},
                     "mini": {"train": 8000, "validation": 1000, "test": 1000}}
    assert tfds.builder_cls("seqcsist").name == "seqcsist"  # the sibling builder still resolves


def test_features(tmp_path):
    features = tfds.builder("csist100k/mini", data_dir=os.fspath(tmp_path)).info.features
    specs = {k: (tuple(features[k].shape), np.dtype(features[k].np_dtype)) for k in KEYS}
    assert specs == {"image": ((11, 11), np.uint8), "targets": ((5, 3), np.float32),
                     "num_targets": ((), np.int32), "image_number": ((), np.int32)}


def test_tiny_build_agrees_with_the_generator(tiny):
    builder, config = tiny
    assert builder.info.file_format == tfds.core.file_adapters.FileFormat.PARQUET
    assert {s: builder.info.splits[s].num_examples for s in TINY_SIZES} == TINY_SIZES
    for split, n in TINY_SIZES.items():
        got = _read_split(builder, split)
        want = simulate_csist100k(n, split_seed(0, FOLDER[split]), **config.simulation_options())
        for key in ("image", "targets", "num_targets"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{split}/{key}")
        np.testing.assert_array_equal(got["image_number"], np.arange(n))


def test_two_builds_are_byte_identical(tiny, tmp_path):
    builder, config = tiny
    again = _build(config, tmp_path)
    files = _data_files(builder)
    assert len(files) == 3 and files == _data_files(again)


def test_data_source_of_mini_after_import(tmp_path):
    """The contract: `tfds.data_source('csist100k/mini', split='test')` after `import seqcsist_jax`."""
    source = tfds.data_source("csist100k/mini", split="test", data_dir=os.fspath(tmp_path))
    assert len(source) == 1000
    example = source[999]
    assert example["image"].shape == (11, 11) and example["image"].dtype == np.uint8
    assert example["targets"].shape == (5, 3) and example["targets"].dtype == np.float32
    assert int(example["image_number"]) == 999 and 1 <= int(example["num_targets"]) <= 5
    arrays = load_csist100k_arrays("csist100k/mini", "test", data_dir=os.fspath(tmp_path), build_if_missing=False)
    want = simulate_csist100k(1000, split_seed(0, "test"))
    assert arrays["image"].shape == (1000, 11, 11) and arrays["targets"].shape == (1000, 5, 3)
    assert arrays["num_targets"].dtype == np.int32 and arrays["image_number"].shape == (1000,)
    for key in ("image", "targets", "num_targets"):
        np.testing.assert_array_equal(arrays[key], want[key])
    np.testing.assert_array_equal(arrays["image_number"], np.arange(1000))


def test_as_trajectories_feeds_the_trajectory_loader(data):
    from seqcsist_jax.data.pipeline import TrajectoryLoader

    arrays = {k: data[k][:20] for k in ("image", "targets", "num_targets")}
    traj = csist100k.as_trajectories(arrays)
    assert traj["frames"].shape == (20, 1, 11, 11) and traj["targets"].shape == (20, 1, 5, 3)
    np.testing.assert_array_equal(traj["frame_numbers"][:, 0], np.arange(20))
    loader = TrajectoryLoader(traj, batch_size=8, shuffle=False, process_index=0, process_count=1, c=5)
    batch = next(iter(loader))
    assert batch["frames"].shape == (8, 1, 11, 11) and batch["labels"].shape == (8, 1, 55, 55)
    np.testing.assert_array_equal(batch["labels"][:, 0], csist100k.labels(arrays["targets"][:8], 5))
    with pytest.raises(ValueError, match="image"):
        csist100k.as_trajectories({"targets": arrays["targets"]})


def test_array_record_request_is_served_from_parquet(tiny):
    # tfds.data_source(name) without data_dir asks the builder for array_record (inherited from seqcsist).
    builder, config = tiny
    again = cdb.Builder(config=config, data_dir=os.fspath(pathlib.Path(builder.data_dir).parents[2]),
                        file_format="array_record")
    source = again.as_data_source(split="test")
    assert len(source) == TINY_SIZES["test"] and type(source.source).__name__ == "ParquetDataSource"


def test_loader_rejects_other_datasets():
    with pytest.raises(ValueError, match="reads the 'csist100k' dataset"):
        load_csist100k_arrays("seqcsist/mini", "test")


def test_import_seqcsist_jax_registers_the_builder():
    code = textwrap.dedent("""
        import sys
        import seqcsist_jax
        assert "tfds_builders.csist100k" in sys.modules and "jax" not in sys.modules
        import tensorflow_datasets as tfds
        print(tfds.builder_cls("csist100k").__module__)
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("csist100k_dataset_builder")


# --------------------------------------------------------------------------------------------- public config


def test_public_config_reproduces_the_written_release(tmp_path):
    manual = tmp_path / "manual" / "CSIST-100K"  # one sub-folder level is accepted
    for folder, n in (("train", 6), ("val", 3), ("test", 2)):
        csist100k.main(["--out", str(manual), "--split", folder, "--num_images", str(n), "--seed", "2",
                        "--noprogress"])
    builder = _build("csist100k/public", tmp_path / "data", manual_dir=tmp_path / "manual")
    for split, n in (("train", 6), ("validation", 3), ("test", 2)):
        got = _read_split(builder, split)
        want = simulate_csist100k(n, split_seed(2, FOLDER[split]))
        for key in ("image", "targets", "num_targets"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{split}/{key}")
        np.testing.assert_array_equal(got["image_number"], np.arange(n))


def test_manual_dir_config_field_reads_the_generators_folder(tmp_path):
    """``config.dataset.manual_dir`` (``--config.dataset.manual_dir=DIR``) is where ``public`` reads the release,
    as a run reads it (``splits.load_arrays``), and ``load_csist100k_arrays(manual_dir=...)`` likewise."""
    from experiments import configs
    from seqcsist_jax.data import splits

    written = tmp_path / "written"
    for folder, n in (("train", 4), ("val", 3), ("test", 2)):
        assert csist100k.main(["--out", str(written), "--split", folder, "--num_images", str(n), "--seed", "3",
                               "--noprogress"]) == 0
    config = configs.get_config("dista:quick")
    config.dataset.name, config.dataset.data_dir = "csist100k/public", str(tmp_path / "data")
    config.dataset.manual_dir = str(written)
    got = splits.load_arrays(config.dataset, "validation")
    want = simulate_csist100k(3, split_seed(3, "val"))
    np.testing.assert_array_equal(got["frames"][:, 0], want["image"])
    np.testing.assert_array_equal(got["targets"][:, 0], want["targets"])
    direct = csist100k.load_csist100k_arrays("csist100k/public", "test", data_dir=str(tmp_path / "data2"),
                                             manual_dir=str(written))
    np.testing.assert_array_equal(direct["image"], simulate_csist100k(2, split_seed(3, "test"))["image"])
    # without it, TFDS's default folder (empty here) is one line naming it, not TFDS's assertion
    config.dataset.manual_dir, config.dataset.data_dir = None, str(tmp_path / "data3")
    with pytest.raises(PublicFormatError, match=r"downloads/manual does not exist or is empty: put the public"):
        splits.load_arrays(config.dataset, "test")


def test_public_config_on_dummy_data_numbered_from_one(tmp_path):
    dummy = pathlib.Path(cdb.__file__).parent / "dummy_data"
    builder = _build("csist100k/public", tmp_path, manual_dir=dummy)
    got = _read_split(builder, "validation")
    want = simulate_csist100k(5, split_seed(7, "val"))  # how dummy_data/ was written (see its test module)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["targets"], want["targets"])
    np.testing.assert_array_equal(got["image_number"], np.arange(1, 6))


@pytest.mark.parametrize("victim", ["val/cso_img/image_3.png", "test/Annotations/CSO2.xml"])
def test_public_config_names_a_corrupted_file(tmp_path, victim):
    manual = tmp_path / "manual"
    shutil.copytree(pathlib.Path(cdb.__file__).parent / "dummy_data", manual)
    bad = manual / victim
    bad.write_bytes(b"\x89PNG but not really" if bad.suffix == ".png" else b"<annotation><object>")
    with pytest.raises(PublicFormatError) as err:
        _build("csist100k/public", tmp_path / "data", manual_dir=manual)
    assert str(bad) in str(err.value)


def test_public_config_refuses_more_than_five_targets(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(pathlib.Path(cdb.__file__).parent / "dummy_data", manual)
    bad = manual / "train" / "Annotations" / "CSO4.xml"
    six = np.tile(np.array([[5.0, 5.0, 230.0]], np.float32), (6, 1))
    bad.write_text(public_format.annotation_xml(4, six, layout=CSIST100K_LAYOUT))
    with pytest.raises(PublicFormatError, match="6 targets exceed max_targets=5") as err:
        _build("csist100k/public", tmp_path / "data", manual_dir=manual)
    assert str(bad) in str(err.value)


def test_both_releases_side_by_side_in_the_default_manual_dir(tmp_path):
    """The README puts both releases under one manual_dir; each builder must find its own by the inner folders."""
    from tfds_builders.seqcsist import seqcsist_dataset_builder as sdb

    manual = tmp_path / "manual"
    shutil.copytree(pathlib.Path(cdb.__file__).parent / "dummy_data", manual / "csist100k")
    shutil.copytree(pathlib.Path(sdb.__file__).parent / "dummy_data", manual / "seqcsist")
    assert sdb._find_public_root(manual).name == "seqcsist"
    builder = _build("csist100k/public", tmp_path / "data", manual_dir=manual)
    want = simulate_csist100k(5, split_seed(7, "val"))  # the CSIST-100K dummy data, not SeqCSIST's
    np.testing.assert_array_equal(_read_split(builder, "validation")["image"], want["image"])
    shutil.copytree(manual / "csist100k", manual / "csist100k_copy")  # two of the same release: ambiguous
    with pytest.raises(PublicFormatError, match="found 2 sub-folders with its layout: csist100k, csist100k_copy"):
        cdb._seqcsist._find_public_root(manual, "CSIST-100K", "", CSIST100K_LAYOUT)


def test_public_config_explains_wrong_layout(tmp_path):
    manual = tmp_path / "manual"
    (manual / "something").mkdir(parents=True)
    with pytest.raises(ValueError, match="does not hold the CSIST-100K release") as err:
        _build("csist100k/public", tmp_path / "data", manual_dir=manual)
    assert "Annotations/CSO{N}.xml" in str(err.value)


def test_dataset_card_and_tags():
    folder = pathlib.Path(cdb.__file__).parent
    card = (folder / "README.md").read_text()
    assert "Parquet" in card and "csist100k/mini" in card and "DECISION" in card
    from tensorflow_datasets.core import dataset_metadata

    tags = (folder / "TAGS.txt").read_text().split()
    assert tags and set(tags) <= set(dataset_metadata.valid_tags())


# --------------------------------------------------------------------------------------------- tf.data reader


@pytest.mark.tf
def test_tfds_load_matches_data_source(tiny):
    pytest.importorskip("tensorflow", reason="the `tf` extra is not installed (CI installs it)")
    builder, _ = tiny
    via_tf = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
    via_source = _read_split(builder, "test")
    for key in KEYS:
        np.testing.assert_array_equal(via_tf[key], via_source[key], err_msg=key)


@pytest.mark.tf
def test_dataset_builder_testcase_on_dummy_data():
    """tfds.testing.DatasetBuilderTestCase (tfds_builders/csist100k/csist100k_dataset_builder_test.py)."""
    pytest.importorskip("tensorflow", reason="the `tf` extra is not installed (CI installs it)")
    from tfds_builders.csist100k import csist100k_dataset_builder_test as builder_test

    suite = unittest.defaultTestLoader.loadTestsFromTestCase(builder_test.Csist100kPublicTest)
    stream = io.StringIO()
    result = unittest.TextTestRunner(stream=stream, verbosity=2).run(suite)
    assert result.wasSuccessful(), stream.getvalue()[-6000:]
    assert result.testsRun - len(result.skipped) >= 5, stream.getvalue()


def test_a_prepared_dataset_in_a_read_only_folder_is_read(tmp_path, monkeypatch):
    """A shared, read-only copy: the build lock cannot be created there (EROFS), which refused even reading it;
    a prepared copy is now read without it, and a copy that is not prepared still fails naming the lock file."""
    import errno

    from seqcsist_jax.data import tfds_open

    before = load_csist100k_arrays("csist100k/mini", "test", data_dir=os.fspath(tmp_path / "ro"))
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).endswith(".lock") and flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(tfds_open.os, "open", read_only)
    after = load_csist100k_arrays("csist100k/mini", "test", data_dir=os.fspath(tmp_path / "ro"))
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    with pytest.raises(OSError, match="Read-only file system") as info:
        load_csist100k_arrays("csist100k/mini", "test", data_dir=os.fspath(tmp_path / "empty"))
    assert info.value.filename.endswith(".csist100k-mini.lock")


def test_a_changed_bit_in_a_prepared_shard_is_found_and_rebuilt(tmp_path, caplog):
    """Parquet pages carry no checksum: a flipped bit read as other data (a brightness of 59 in a 220–250
    dataset) without any error. The builders record each shard's SHA-256; the loaders verify it and rebuild."""
    import hashlib
    import json
    import logging

    from seqcsist_jax.data import tfds_open

    data_dir = os.fspath(tmp_path / "tfds")
    clean = load_csist100k_arrays("csist100k/mini", "test", data_dir=data_dir)
    folder = tfds_open.prepared_dir("csist100k/mini", data_dir)
    record = json.loads((folder / tfds_open.CHECKSUMS_NAME).read_text())
    shards = sorted(p.name for p in folder.glob("*.parquet-*"))
    assert sorted(record) == shards and len(shards) == 3  # every shard, independently hashed here
    assert all(record[n] == hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in shards)
    victim = folder / next(n for n in shards if "-test." in n)
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 1
    victim.write_bytes(bytes(data))
    assert tfds_open.verify_shard_checksums(folder, "train[:10]")  # only the split read is checked
    for split in ("test", "train+test[:5]", None):
        with pytest.raises(tfds_open.DamagedDatasetError, match="SHA-256 differs"):
            tfds_open.verify_shard_checksums(folder, split)
    with caplog.at_level(logging.WARNING):
        again = load_csist100k_arrays("csist100k/mini", "test", data_dir=data_dir)
    assert f"{victim}: its SHA-256 differs from the one recorded when it was prepared" in caplog.text
    assert len(list(folder.parent.glob(f"{folder.name}.damaged-*"))) == 1  # kept aside, not deleted
    for key in clean:
        np.testing.assert_array_equal(again[key], clean[key])
    assert tfds_open.verify_shard_checksums(folder)  # the rebuilt copy verifies
