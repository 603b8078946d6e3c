"""The `seqcsist` TFDS builder: registration, configs, builds, determinism, readers, the public config.

Everything here runs without TensorFlow except the tests marked ``tf`` (CI installs the ``tf`` extra).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import unittest

import numpy as np
import pytest
import tensorflow_datasets as tfds

import seqcsist_jax  # noqa: F401  (registers the builder)
from seqcsist_jax.data.public_format import PublicFormatError, write_public_split
from seqcsist_jax.data.simulate import simulate_seqcsist, split_seed
from tests.small_disk import mount_tmpfs, unmount
from tfds_builders.seqcsist import seqcsist_dataset_builder as sdb

REPO = pathlib.Path(__file__).resolve().parents[1]
FOLDER = {"train": "train", "validation": "val", "test": "test"}
MINI_SIZES = {"train": 350, "validation": 75, "test": 75}
KEYS = ("frames", "targets", "num_targets", "trajectory_id", "frame_numbers")


def _read_split(name, split: str, data_dir=None) -> dict[str, np.ndarray]:
    """A whole split through the random-access reader; ``name`` is a TFDS name or a prepared builder."""
    if isinstance(name, str):
        ds = tfds.data_source(name, split=split, data_dir=os.fspath(data_dir), download=False)
    else:
        ds = name.as_data_source(split=split)
    examples = ds.__getitems__(list(range(len(ds))))
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in KEYS}


def _build(name_or_config, data_dir, manual_dir=None, **kwargs) -> tfds.core.DatasetBuilder:
    if isinstance(name_or_config, str):
        builder = tfds.builder(name_or_config, data_dir=os.fspath(data_dir), **kwargs)
    else:
        builder = sdb.Builder(config=name_or_config, data_dir=os.fspath(data_dir), **kwargs)
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)) if manual_dir else None
    builder.download_and_prepare(download_config=config)
    return builder


def _data_files(builder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(builder.data_path).glob("*.parquet-*"))}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """`seqcsist/mini` built once into a temporary data_dir: (builder, data_dir)."""
    data_dir = tmp_path_factory.mktemp("tfds_mini")
    return _build("seqcsist/mini", data_dir), data_dir


# --------------------------------------------------------------------------------------------- registration


def test_registered_by_name_and_configs():
    assert "seqcsist" in tfds.list_builders(with_community_datasets=False)
    cls = tfds.builder_cls("seqcsist")
    assert cls is sdb.Builder
    names = [c.name for c in cls.BUILDER_CONFIGS]
    assert names == ["default", "mini", "noise_2", "noise_3", "noise_4", "noise_5", "targets_2_8", "public"]
    for config in cls.BUILDER_CONFIGS:
        assert str(config.version) == "1.0.0" and config.release_notes and config.description
    assert tfds.builder("seqcsist").builder_config.name == "default"


def test_features_per_config(tmp_path):
    def feature_specs(name):
        features = tfds.builder(name, data_dir=os.fspath(tmp_path)).info.features
        return {k: (tuple(features[k].shape), np.dtype(features[k].np_dtype)) for k in KEYS}

    default = feature_specs("seqcsist")
    assert default == {
        "frames": ((20, 11, 11), np.uint8),
        "targets": ((20, 4, 3), np.float32),
        "num_targets": ((20,), np.int32),
        "trajectory_id": ((), np.int32),
        "frame_numbers": ((20,), np.int32),
    }
    assert feature_specs("seqcsist/noise_3")["frames"] == ((20, 11, 11), np.float32)
    assert feature_specs("seqcsist/targets_2_8")["targets"] == ((20, 8, 3), np.float32)
    assert feature_specs("seqcsist/public") == default


def test_import_seqcsist_jax_registers_both_builders():
    code = textwrap.dedent("""
        import sys
        import seqcsist_jax
        assert "tfds_builders.seqcsist" in sys.modules and "tfds_builders.csist100k" in sys.modules
        assert "jax" not in sys.modules and "tensorflow" not in sys.modules, "import seqcsist_jax must stay light"
        assert not any("seqcsist" in type(f).__module__ for f in sys.meta_path), "no import hook"
        import tensorflow_datasets as tfds
        print(tfds.builder_cls("seqcsist").__module__, tfds.builder_cls("csist100k").__module__)
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["tfds_builders.seqcsist.seqcsist_dataset_builder",
                                  "tfds_builders.csist100k.csist100k_dataset_builder"]

    code = "import tfds_builders.seqcsist, tensorflow_datasets as tfds; print(tfds.builder_cls('seqcsist').name)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "seqcsist"

    # Without either import TFDS does not know the name (what the README's note about tfds.load is for).
    code = ("import tensorflow_datasets as tfds; "
            "print('seqcsist' in tfds.list_builders(with_community_datasets=False))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------- simulated builds


def test_mini_splits_shapes_dtypes(mini):
    builder, data_dir = mini
    assert builder.info.file_format == tfds.core.file_adapters.FileFormat.PARQUET
    assert {s: builder.info.splits[s].num_examples for s in MINI_SIZES} == MINI_SIZES
    for split, n in MINI_SIZES.items():
        ds = tfds.data_source("seqcsist/mini", split=split, data_dir=os.fspath(data_dir), download=False)
        assert len(ds) == n
        example = ds[n - 1]
        assert example["frames"].shape == (20, 11, 11) and example["frames"].dtype == np.uint8
        assert example["targets"].shape == (20, 4, 3) and example["targets"].dtype == np.float32
        assert example["num_targets"].shape == (20,) and example["num_targets"].dtype == np.int32
        assert example["frame_numbers"].shape == (20,)
        assert int(example["trajectory_id"]) == n - 1
        # One dtype for the scalar through data_source and tfds.load (TFDS' Parquet reader alone gives an int).
        assert type(example["trajectory_id"]) is np.int32
        assert [type(e["trajectory_id"]) for e in ds.__getitems__([0, 1])] == [np.int32, np.int32]


def test_data_source_wrapper_keeps_the_reader_interface(mini):
    builder, data_dir = mini
    ds = tfds.data_source("seqcsist/mini", split="test", data_dir=os.fspath(data_dir), download=False)
    assert isinstance(ds, sdb.ScalarTypedSource) and ds.split == "test" and ds.dataset_info.name == "seqcsist"
    again = pickle.loads(pickle.dumps(ds))  # multiprocess loaders pickle sources
    assert len(again) == len(ds) == MINI_SIZES["test"] and type(again[3]["trajectory_id"]) is np.int32
    assert [int(e["trajectory_id"]) for e in itertools.islice(iter(ds), 3)] == [0, 1, 2]
    by_split = builder.as_data_source()  # every split, as TFDS returns them: a dict
    assert set(by_split) == set(MINI_SIZES) and type(by_split["train"][0]["trajectory_id"]) is np.int32
    # A caller that asks for raw records or decodes the feature itself gets what TFDS gives.
    raw = builder.as_data_source("test", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    assert not isinstance(raw, sdb.ScalarTypedSource)


def test_info_short_description_and_feature_docs(mini):
    builder, _ = mini
    info = builder.info
    assert info.description == sdb.DESCRIPTION and len(info.description) < 600
    assert "README.md" in info.description  # points to the card for the details
    card = (REPO / "tfds_builders" / "seqcsist" / "README.md").read_text()
    assert info.description not in card and len(card) > 3 * len(info.description)
    assert "SeqCSIST" in info.citation or "Zhai" in info.citation
    for name, feature in info.features.items():
        assert feature.doc.desc, f"{name} has no description"
    assert "index of the trajectory in its split" in repr(info.features)  # shown when the info is printed


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_mini_agrees_with_simulator(mini, split):
    _, data_dir = mini
    got = _read_split("seqcsist/mini", split, data_dir)
    n = MINI_SIZES[split]
    # The seed rule of the dataset card: split_seed(0, release folder name), the simulator's CLI rule.
    want = simulate_seqcsist(n, split_seed(0, FOLDER[split]))
    for key in ("frames", "targets", "num_targets"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(got["trajectory_id"], np.arange(n))
    np.testing.assert_array_equal(got["frame_numbers"], np.arange(n * 20).reshape(n, 20))


def test_a_full_disk_while_preparing_names_the_data_dir_then_the_same_call_builds(tmp_path):
    """TFDS's own error on a full disk ("Failed to finalize writing of split ...") names neither the folder nor
    an errno; the builder's says ENOSPC with the data_dir (the CLI's one-line hint follows from the errno), leaves
    no incomplete.* folder behind, and once space is freed the same call builds the data."""
    import errno

    disk = tmp_path / "disk"
    reason = mount_tmpfs(disk, "2m")  # seqcsist/mini takes ~0.7 MB
    if reason:
        pytest.skip(reason)
    try:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (1900 * 1024))  # leaves ~150 KB
        data_dir = disk / "tfds"
        aside = data_dir / "seqcsist" / "mini" / f"{tfds.builder_cls('seqcsist').VERSION}.damaged-20261202-000000"
        aside.mkdir(parents=True)  # an earlier damaged copy, kept: the message names it as space to free
        with pytest.raises(OSError) as info:
            _build("seqcsist/mini", data_dir)
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(data_dir), info.value
        assert "while preparing seqcsist/mini" in str(info.value)
        assert f"damaged copies kept aside take space there: {aside.name} in {aside.parent}" in str(info.value)
        aside.rmdir()
        from experiments.cli import os_error_line

        line = os_error_line(info.value)
        assert "the disk is full" in line and "built anew" in line and "checkpoint" not in line
        assert not list((data_dir / "seqcsist" / "mini").glob("incomplete.*"))
        filler.unlink()
        builder = _build("seqcsist/mini", data_dir)
        assert len(tfds.data_source("seqcsist/mini", split="test", data_dir=os.fspath(data_dir), download=False)) \
            == builder.info.splits["test"].num_examples > 0
    finally:
        unmount(disk)


def test_two_builds_are_byte_identical(mini, tmp_path):
    builder, data_dir = mini
    again = _build("seqcsist/mini", tmp_path)
    files, files_again = _data_files(builder), _data_files(again)
    assert len(files) == 3 and files == files_again
    for split in MINI_SIZES:
        a, b = _read_split("seqcsist/mini", split, data_dir), _read_split("seqcsist/mini", split, tmp_path)
        for key in KEYS:
            np.testing.assert_array_equal(a[key], b[key])


def test_preparing_says_nothing_is_downloaded(tmp_path, capsys, caplog):
    """TFDS's own line ("Downloading and preparing dataset Unknown size (download: Unknown size ...)") reads as a
    download; ours says where the data comes from. And no warning about the folder that is not there yet."""
    with caplog.at_level("WARNING"):
        assert len(tfds.data_source("seqcsist/mini", split="test", data_dir=os.fspath(tmp_path))) == 75
    assert "Variant folder" not in caplog.text and "has no dataset_info.json" not in caplog.text
    out = capsys.readouterr().out
    assert f"Preparing seqcsist/mini {sdb.Builder.VERSION} in {tmp_path}" in out
    assert "generating it here; nothing is downloaded" in out and "ownloading" not in out
    assert f"Prepared seqcsist/mini {sdb.Builder.VERSION} in {tmp_path}" in out and "downloaded and" not in out


def test_a_build_racing_another_process_uses_its_copy(mini, tmp_path, monkeypatch, caplog):
    _, data_dir = mini
    want = _read_split("seqcsist/mini", "test", data_dir)
    # 1. created before the other process finished: TFDS "reuses" the new data without reading its split info
    late = tfds.builder("seqcsist/mini", data_dir=os.fspath(tmp_path / "a"))
    _build("seqcsist/mini", tmp_path / "a")
    late.download_and_prepare()
    got = _read_split(late, "test")
    for key in KEYS:
        np.testing.assert_array_equal(got[key], want[key])
    # 2. lost the final rename (TFDS raises FileExistsError): the winner's copy is used, with a warning
    loser = tfds.builder("seqcsist/mini", data_dir=os.fspath(tmp_path / "b"))
    tfds_prepare = tfds.core.DatasetBuilder.download_and_prepare

    def the_other_process_wins(self, *args, **kwargs):
        tfds_prepare(tfds.builder("seqcsist/mini", data_dir=os.fspath(tmp_path / "b")))  # the winner, then the
        # rename that fails for this builder
        raise FileExistsError(f"Cannot rename incomplete folder. Destination {self.data_path} already exists.")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", the_other_process_wins)
    with caplog.at_level("WARNING"):
        loser.download_and_prepare()
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", tfds_prepare)
    assert "another process prepared it at the same time; using its copy" in caplog.text
    got = _read_split(loser, "test")
    for key in KEYS:
        np.testing.assert_array_equal(got[key], want[key])
    # a FileExistsError without a prepared copy is not hidden
    broken = tfds.builder("seqcsist/mini", data_dir=os.fspath(tmp_path / "c"))
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        lambda self, *a, **k: (_ for _ in ()).throw(FileExistsError("other")))
    with pytest.raises(FileExistsError, match="other"):
        broken.download_and_prepare()


def test_folders_of_killed_builds_are_removed_under_the_build_lock(tmp_path, caplog):
    from seqcsist_jax.data import tfds_open

    killed = tmp_path / "seqcsist" / "mini" / f"incomplete.ABC123_{sdb.Builder.VERSION}"
    killed.mkdir(parents=True)
    (killed / "seqcsist-train.parquet-00000-of-00001").write_bytes(b"half a shard")
    with caplog.at_level("WARNING"):
        assert len(tfds.data_source("seqcsist/mini", split="test", data_dir=os.fspath(tmp_path))) == 75
    assert not killed.exists() and "left by an interrupted build" in caplog.text
    assert sorted(p.name for p in (tmp_path / "seqcsist" / "mini").iterdir()) == [str(sdb.Builder.VERSION)]
    # the lock is re-entrant in one process (the project's readers hold it while TFDS calls the builder)
    with tfds_open.build_lock("seqcsist/mini", tmp_path), tfds_open.build_lock("seqcsist/mini", tmp_path):
        assert tfds.builder("seqcsist/mini", data_dir=os.fspath(tmp_path)).is_prepared()
    assert tfds_open._HELD == {}


def test_data_root_is_the_argument_then_the_environment_then_the_home_default(tmp_path, monkeypatch):
    from seqcsist_jax.data.tfds_open import data_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    assert data_root(tmp_path / "given") == tmp_path / "given"
    assert data_root(str(tmp_path / "given")) == tmp_path / "given"
    assert data_root("~/data") == tmp_path / "home" / "data"  # ~ expanded
    assert data_root(None) == tmp_path / "env"
    assert data_root("") == tmp_path / "env"  # an empty flag value counts as unset
    monkeypatch.setenv("TFDS_DATA_DIR", "~/from_env")
    assert data_root(None) == tmp_path / "home" / "from_env"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert data_root(None) == tmp_path / "home" / "tensorflow_datasets"
    assert isinstance(data_root(None), pathlib.Path)


def test_manual_dir_kwargs_pass_an_expanded_manual_dir_to_tfds(tmp_path, monkeypatch):
    from seqcsist_jax.data.tfds_open import manual_dir_kwargs

    assert manual_dir_kwargs(None) == {}  # TFDS's default <data_dir>/downloads/manual/
    monkeypatch.setenv("HOME", str(tmp_path))
    for given in ("~/release", tmp_path / "release"):
        kwargs = manual_dir_kwargs(given)
        assert list(kwargs) == ["download_and_prepare_kwargs"]
        config = kwargs["download_and_prepare_kwargs"]["download_config"]
        assert isinstance(config, tfds.download.DownloadConfig)
        assert os.fspath(config.manual_dir) == str(tmp_path / "release")


def test_read_tfds_split_reads_under_the_lock_and_names_a_damaged_folder_it_may_not_rebuild(mini, tmp_path):
    """read_tfds_split returns ``read(source)`` of the prepared split; with ``build_if_missing=False`` a
    damaged prepared folder is a DamagedDatasetError (a ValueError) naming the folder and the repair, and the
    folder is left where it is (nothing is moved aside or rebuilt)."""
    from seqcsist_jax.data import tfds_open

    _, data_dir = mini
    seen = []

    def read(source):
        seen.append(tfds_open._HELD.copy())  # the build lock is held while reading
        return [int(e["trajectory_id"]) for e in source.__getitems__(list(range(len(source))))]

    got = tfds_open.read_tfds_split("seqcsist/mini", "test", os.fspath(data_dir), False, read)
    assert got == list(range(75))
    assert len(seen) == 1 and len(seen[0]) == 1 and tfds_open._HELD == {}
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    folder = tfds_open.prepared_dir("seqcsist/mini", copy)
    for shard in folder.glob("seqcsist-test.parquet-*"):
        with open(shard, "r+b") as f:
            f.truncate(100)
    with pytest.raises(tfds_open.DamagedDatasetError) as info:
        tfds_open.read_tfds_split("seqcsist/mini", "test", os.fspath(copy), False, read)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith(f"the prepared dataset {folder} cannot be read (")
    assert message.endswith("; delete that folder or allow building it to rebuild")
    # left in place: nothing moved aside, nothing rebuilt
    assert folder.is_dir() and sorted(p.name for p in folder.parent.iterdir()) == [folder.name]
    # the train split of the same copy is intact and still reads
    assert len(tfds_open.read_tfds_split("seqcsist/mini", "train", os.fspath(copy), False, read)) == 350


def test_parquet_shards_hold_every_example(mini):
    # Regression test for the TFDS 4.9.10 Parquet writer, which kept 1 of 5 batches of 100 from an iterator.
    import pyarrow.parquet as pq

    builder, _ = mini
    rows = {s: sum(pq.ParquetFile(i.filename).metadata.num_rows for i in builder.info.splits[s].file_instructions)
            for s in MINI_SIZES}
    assert rows == MINI_SIZES


@pytest.mark.parametrize("config_name", ["noise_2", "targets_2_8"])
def test_variant_configs_match_simulator(tmp_path, config_name):
    # The paper-size variants at a few trajectories: same options, same seeds rule.
    base = next(c for c in sdb.BUILDER_CONFIGS if c.name == config_name)
    sizes = {"train": 3, "validation": 2, "test": 2}
    small = dataclasses.replace(base, name=f"{config_name}_small", split_sizes=tuple(sizes.items()))
    builder = _build(small, tmp_path)
    most_targets = 0
    for split, n in sizes.items():
        got = _read_split(builder, split)
        most_targets = max(most_targets, int(got["num_targets"].max()))
        want = simulate_seqcsist(n, split_seed(0, FOLDER[split]), **base.simulation_options())
        np.testing.assert_array_equal(got["frames"], want["frames"])
        np.testing.assert_array_equal(got["targets"], want["targets"])
    if config_name == "noise_2":
        clean = simulate_seqcsist(2, split_seed(0, "test"), output="float32", clip=False)
        assert got["frames"].dtype == np.float32
        np.testing.assert_array_equal(got["targets"], clean["targets"])  # same trajectories as default
        noise = got["frames"] - clean["frames"]
        assert 1.7 < noise.std() < 2.3 and noise.min() < -3  # σ = 2, neither clipped nor rounded
    else:
        assert got["targets"].shape[2] == 8 and most_targets > 4


def test_array_record_request_is_served_from_parquet(mini, tmp_path):
    # tfds.data_source(name) without data_dir asks the builder for array_record.
    _, data_dir = mini
    builder = tfds.builder("seqcsist/mini", data_dir=os.fspath(data_dir), file_format="array_record")
    source = builder.as_data_source(split="test")
    assert len(source) == 75 and type(source.source).__name__ == "ParquetDataSource"
    fresh = _build("seqcsist/mini", tmp_path, file_format="array_record")
    assert fresh.info.file_format == tfds.core.file_adapters.FileFormat.PARQUET


def _site_packages_without_tensorflow(dest: pathlib.Path) -> tuple[str, pathlib.Path]:
    """A copy (of symlinks) of the venv's site-packages without TensorFlow: (original path, copy)."""
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name == "tensorflow" or name.startswith(("tensorflow-", "tensorflow_cpu-", "tensorflow_gpu-")):
            continue
        (dest / entry.name).symlink_to(entry)
    return os.fspath(site), dest


def test_data_source_builds_and_reads_without_tensorflow(mini, tmp_path):
    """A subprocess where TensorFlow cannot be imported builds `mini` and reads it through data_source."""
    builder, data_dir = mini
    site, no_tf_site = _site_packages_without_tensorflow(tmp_path / "site")
    child_dir, out = tmp_path / "child_data", tmp_path / "child.npz"
    code = textwrap.dedent(f"""
        import os, sys, importlib.util
        site = os.path.realpath({site!r})
        sys.path[:] = [{os.fspath(no_tf_site)!r} if os.path.realpath(p) == site else p for p in sys.path]
        sys.path_importer_cache.clear()
        assert importlib.util.find_spec("tensorflow") is None, "TensorFlow still importable"
        import numpy as np
        import seqcsist_jax
        import tensorflow_datasets as tfds
        from seqcsist_jax.data.pipeline import TrajectoryLoader, make_source
        built = tfds.data_source("seqcsist/mini", split="test", data_dir={os.fspath(child_dir)!r})  # builds
        parent = tfds.data_source("seqcsist/mini", split="validation", data_dir={os.fspath(data_dir)!r})
        ex = parent.__getitems__(list(range(len(parent))))
        loader = TrajectoryLoader(make_source("seqcsist/mini", split="test", data_dir={os.fspath(child_dir)!r}),
                                  batch_size=4, shuffle=False, process_index=0, process_count=1)
        batch = next(iter(loader))
        np.savez({os.fspath(out)!r}, n_built=len(built), frames=np.stack([e["frames"] for e in ex]),
                 targets=np.stack([e["targets"] for e in ex]), batch_labels=batch["labels"])
        tf_modules = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
        assert not tf_modules, tf_modules
        print("ok")
        """)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-4000:]
    child = np.load(out)
    assert int(child["n_built"]) == 75
    here = _read_split("seqcsist/mini", "validation", data_dir)
    np.testing.assert_array_equal(child["frames"], here["frames"])
    np.testing.assert_array_equal(child["targets"], here["targets"])
    # Built without TensorFlow, the files are byte-identical to the build made here.
    child_files = {p.name: p.read_bytes() for p in (child_dir / "seqcsist/mini/1.0.0").glob("*.parquet-*")}
    assert child_files == _data_files(builder)
    assert child["batch_labels"].shape == (4, 20, 33, 33)


# --------------------------------------------------------------------------------------------- tf.data reader


@pytest.mark.tf
def test_tfds_load_matches_data_source(mini):
    pytest.importorskip("tensorflow", reason="the `tf` extra is not installed (CI installs it)")
    _, data_dir = mini
    for split in MINI_SIZES:
        ds = tfds.load("seqcsist/mini", split=split, data_dir=os.fspath(data_dir), batch_size=-1, download=False)
        via_tf = tfds.as_numpy(ds)
        via_source = _read_split("seqcsist/mini", split, data_dir)
        for key in KEYS:
            np.testing.assert_array_equal(via_tf[key], via_source[key], err_msg=f"{split}/{key}")
            assert via_tf[key].dtype == via_source[key].dtype, f"{split}/{key}"


@pytest.mark.tf
def test_dataset_builder_testcase_on_dummy_data():
    """tfds.testing.DatasetBuilderTestCase (tfds_builders/seqcsist/seqcsist_dataset_builder_test.py)."""
    pytest.importorskip("tensorflow", reason="the `tf` extra is not installed (CI installs it)")
    from tfds_builders.seqcsist import seqcsist_dataset_builder_test as builder_test

    suite = unittest.defaultTestLoader.loadTestsFromTestCase(builder_test.SeqcsistPublicTest)
    stream = io.StringIO()
    result = unittest.TextTestRunner(stream=stream, verbosity=2).run(suite)
    assert result.wasSuccessful(), stream.getvalue()[-6000:]
    ran = result.testsRun - len(result.skipped)
    assert ran >= 5, stream.getvalue()  # baseclass, registered, info, tags, download_and_prepare_as_dataset


# --------------------------------------------------------------------------------------------- public config


def _public_release(root: pathlib.Path, sizes: dict[str, int], start_index: int) -> dict[str, dict]:
    arrays = {}
    for split, n in sizes.items():
        arrays[split] = simulate_seqcsist(n, split_seed(11, FOLDER[split]))
        write_public_split(root, FOLDER[split], arrays[split], start_index=start_index, progress=False)
    return arrays


def test_public_config_reproduces_source_arrays(tmp_path):
    sizes = {"train": 3, "validation": 2, "test": 1}
    manual = tmp_path / "manual"
    source = _public_release(manual / "track_5000_20", sizes, start_index=0)  # one sub-folder level is accepted
    builder = _build("seqcsist/public", tmp_path / "data", manual_dir=manual)
    assert {s: builder.info.splits[s].num_examples for s in sizes} == sizes
    for split, n in sizes.items():
        got = _read_split("seqcsist/public", split, tmp_path / "data")
        for key in ("frames", "targets", "num_targets"):
            np.testing.assert_array_equal(got[key], source[split][key], err_msg=f"{split}/{key}")
        np.testing.assert_array_equal(got["frame_numbers"], np.arange(n * 20).reshape(n, 20))
        np.testing.assert_array_equal(got["trajectory_id"], np.arange(n))


def test_public_config_on_dummy_data_numbered_from_one(tmp_path):
    dummy = pathlib.Path(sdb.__file__).parent / "dummy_data"
    _build("seqcsist/public", tmp_path, manual_dir=dummy)
    got = _read_split("seqcsist/public", "validation", tmp_path)
    want = simulate_seqcsist(2, split_seed(7, "val"))  # how dummy_data/ was written (see its test module)
    np.testing.assert_array_equal(got["frames"], want["frames"])
    np.testing.assert_array_equal(got["targets"], want["targets"])
    np.testing.assert_array_equal(got["frame_numbers"], 1 + np.arange(40).reshape(2, 20))


@pytest.mark.parametrize("victim", ["val/image/image_27.png", "test/annotation/COS3.xml"])
def test_public_config_names_corrupted_file(tmp_path, victim):
    manual = tmp_path / "manual"
    shutil.copytree(pathlib.Path(sdb.__file__).parent / "dummy_data", manual)
    bad = manual / victim
    bad.write_bytes(b"\x89PNG but not really" if bad.suffix == ".png" else b"<annotation><object>")
    with pytest.raises(PublicFormatError) as err:
        _build("seqcsist/public", tmp_path / "data", manual_dir=manual)
    assert str(bad) in str(err.value)


def test_public_config_explains_wrong_layout(tmp_path):
    manual = tmp_path / "manual"
    (manual / "something").mkdir(parents=True)
    with pytest.raises(ValueError, match="does not hold the SeqCSIST release") as err:
        _build("seqcsist/public", tmp_path / "data", manual_dir=manual)
    assert "annotation/COS{N}.xml" in str(err.value)


def test_dataset_card_explains_file_format():
    card = (pathlib.Path(sdb.__file__).parent / "README.md").read_text()
    assert "Parquet" in card and "array_record" in card and "tfds.load" in card
    from tensorflow_datasets.core import dataset_metadata

    tags = (pathlib.Path(sdb.__file__).parent / "TAGS.txt").read_text().split()
    assert tags and set(tags) <= set(dataset_metadata.valid_tags())
