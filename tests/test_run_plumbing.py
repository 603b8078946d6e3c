"""Small shared pieces of the run layer: atomic writes, protocol constants, batch sharding, split helpers."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from experiments import configs
from seqcsist_jax import fileio, protocol, sharding
from seqcsist_jax.data import splits


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "result.json"
    fileio.atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(path) as tmp:
            tmp.write_text('{"a": 2, "torn": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": 1}  # the old file survives an interrupted write
    assert sorted(os.listdir(path.parent)) == ["result.json"]  # and no temporary file is left behind
    fileio.atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    tmp = fileio.temporary_sibling(path, ".npz")
    assert tmp.parent == path.parent and tmp.name.startswith(".") and tmp.suffix == ".npz"


def test_without_non_finite_makes_strict_json(tmp_path):
    data = {"a": float("nan"), "b": [1.5, float("inf"), (np.float32("nan"), np.float64(2.0))], "c": "NaN", "d": None}
    clean = fileio.without_non_finite(data)
    assert clean == {"a": None, "b": [1.5, None, [None, 2.0]], "c": "NaN", "d": None}
    json.dumps(clean, allow_nan=False)  # raises ValueError if any NaN/inf survived
    with pytest.raises(ValueError):
        json.dumps(data, allow_nan=False, default=float)
    path = tmp_path / "metrics.json"
    fileio.atomic_write_json(path, {"rmse": np.float32("nan"), "mAP": 0.5}, strict=True)
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {"rmse": None, "mAP": 0.5}
    fileio.atomic_write_json(path, {"rmse": float("nan")})  # files only this project reads keep NaN
    assert "NaN" in path.read_text()


class _Refused(Exception):
    pass


@pytest.mark.parametrize("content, words", [
    (b"", "is empty (0 bytes; an interrupted write or copy?); expected the test's JSON"),
    (b"  \n", "is empty (3 bytes"),
    (b"\xff{}", "is not UTF-8 text (byte 0); expected the test's JSON"),
    (b'{"a": ', "not valid JSON at line 1, column 7 (Expecting value); expected the test's JSON"),
    (b"[1, 2]", "the file holds a list; expected a JSON object (the test's JSON)"),
    (b'"text"', "the file holds a string; expected a JSON object"),
])
def test_read_json_object_refuses_in_one_line_naming_the_file(tmp_path, content, words):
    path = tmp_path / "card.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        fileio.read_json_object(path, "the test's JSON")
    assert str(info.value).startswith(str(path)) and words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(_Refused, match=r"^my card\b"):  # the caller's label and error type
        fileio.read_json_object(path, "x", label="my card", error=_Refused)


def test_read_json_object_returns_the_object_and_passes_os_errors(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text('{"a": [1, 2.5], "b": {"c": null}}', encoding="utf-8")
    assert fileio.read_json_object(path, "x") == {"a": [1, 2.5], "b": {"c": None}}
    with pytest.raises(FileNotFoundError):
        fileio.read_json_object(tmp_path / "missing.json", "x")
    assert [fileio.json_type(v) for v in ({}, [], "", True, None, 1, 1.5)] == [
        "an object", "a list", "a string", "a boolean", "null", "a number", "a number"]


def test_scored_frames_follow_the_protocol():
    assert protocol.scored_frame_range(20) == (2, 17)
    np.testing.assert_array_equal(protocol.scored_frames(20), np.arange(2, 18))
    np.testing.assert_array_equal(protocol.scored_frames(1, margin=0), [0])
    with pytest.raises(ValueError, match="no scored frame"):
        protocol.scored_frames(4)
    assert protocol.METRIC_KEYS[0] == "mAP" and protocol.DECODERS[0] == "grid"


def test_shard_batch_places_rows_and_rejects_uneven_batches():
    mesh = sharding.data_mesh(jax.devices()[:1])
    batch = {"frames": np.arange(6.0).reshape(3, 2), "labels": np.ones((3, 1))}
    out = sharding.shard_batch(batch, mesh, keys=("frames",))
    assert set(out) == {"frames"}
    np.testing.assert_array_equal(np.asarray(out["frames"]), batch["frames"])
    if jax.device_count() >= 2:
        with pytest.raises(ValueError, match="cannot be split evenly over 2 devices"):
            sharding.shard_batch(batch, sharding.data_mesh(jax.devices()[:2]))


def test_split_helpers_count_and_check_without_loading():
    dataset = configs.get_config("derefnet:smoke").dataset
    assert splits.count_split(dataset, dataset.train_split) == dataset.num_train
    with pytest.raises(ValueError, match="unknown split 'val'.*train, validation, test"):
        splits.count_split(dataset, "val")
    arrays = splits.load_arrays(dataset, dataset.test_split)
    assert arrays["frames"].shape[:2] == (dataset.num_test, dataset.simulate.frames_per_trajectory)


def test_q_for_workdir_reuses_the_cache_of_the_same_data(tmp_path):
    dataset = configs.get_config("derefnet:smoke").dataset
    q = splits.q_for_workdir(tmp_path, dataset)
    assert q.shape == (1089, 121) and (tmp_path / "qinit.npz").exists()
    # the cached file is what is read back (poison it to prove it)
    with np.load(tmp_path / "qinit.npz") as f:
        key = str(f["key"])
    np.savez(tmp_path / "qinit.npz", q=np.full_like(q, 7.0), key=key)
    assert np.all(splits.q_for_workdir(tmp_path, dataset) == 7.0)
    # another collision rule is not the same Q
    dataset.collision = "overwrite"
    assert not np.all(splits.q_for_workdir(tmp_path, dataset) == 7.0)
    # a damaged cache is recomputed, not an error
    (tmp_path / "qinit.npz").write_bytes(b"garbage")
    np.testing.assert_allclose(splits.q_for_workdir(tmp_path, dataset), splits.q_for_workdir(None, dataset))


def test_simulated_split_sizes_keys_the_configs_split_names():
    dataset = configs.get_config("derefnet:smoke").dataset
    dataset.train_split, dataset.eval_split, dataset.test_split = "tr", "va", "te"
    dataset.num_train, dataset.num_eval, dataset.num_test = 7, 3, 5
    assert splits.simulated_split_sizes(dataset) == {"tr": 7, "va": 3, "te": 5}
    # count_split of a simulated dataset reads these sizes
    assert [splits.count_split(dataset, s) for s in ("tr", "va", "te")] == [7, 3, 5]


@pytest.mark.filterwarnings("ignore:Y Yᵀ is ill-conditioned:RuntimeWarning")  # expected with 3 trajectories
def test_cached_q_computes_once_and_reuses_only_the_same_data(tmp_path):
    """cached_q: computes Q (``compute_q`` with Φ of the same ``c``) and writes ``qinit.npz`` keyed by
    dataset name, number of training trajectories, collision rule and ``c``; a later call with the same key
    returns the cached Q as stored (poisoned here to prove it), any other key recomputes and replaces it."""
    from seqcsist_jax import imaging

    rng = np.random.default_rng(0)
    targets = np.zeros((3, 2, 2, 3))  # (N, T, K, 3), c = 1 keeps Q (121, 121) small
    targets[..., :2] = rng.uniform(0.0, 10.0, (3, 2, 2, 2))
    targets[..., 2] = rng.uniform(220.0, 250.0, (3, 2, 2))
    train = {"frames": np.zeros((3, 2, 11, 11), np.uint8), "targets": targets}
    phi = imaging.measurement_matrix(c=1).astype(np.float64)
    q = splits.cached_q(tmp_path, "simulated", train, "sum", c=1)
    np.testing.assert_array_equal(q, splits.compute_q(targets, phi, "sum", c=1))
    assert q.shape == (121, 121)
    with np.load(tmp_path / "qinit.npz") as f:
        assert str(f["key"]) == "simulated|3|sum|1"
        np.testing.assert_array_equal(f["q"], q)
    np.savez(tmp_path / "qinit.npz", q=np.full_like(q, 7.0), key="simulated|3|sum|1")
    assert np.all(splits.cached_q(tmp_path, "simulated", train, "sum", c=1) == 7.0)  # served from the cache
    fewer = {"frames": train["frames"][:2], "targets": targets[:2]}
    for name, arrays, collision, want_key in (("other", train, "sum", "other|3|sum|1"),
                                              ("simulated", fewer, "sum", "simulated|2|sum|1"),
                                              ("simulated", train, "overwrite", "simulated|3|overwrite|1")):
        np.savez(tmp_path / "qinit.npz", q=np.full_like(q, 7.0), key="simulated|3|sum|1")
        got = splits.cached_q(tmp_path, name, arrays, collision, c=1)
        np.testing.assert_array_equal(got, splits.compute_q(arrays["targets"], phi, collision, c=1))
        with np.load(tmp_path / "qinit.npz") as f:
            assert str(f["key"]) == want_key and not np.all(f["q"] == 7.0)  # the cache was replaced
    # c = 3 keeps the original three-field key (existing caches stay valid)
    np.savez(tmp_path / "qinit.npz", q=np.full((1089, 121), 7.0), key="simulated|3|sum")
    assert np.all(splits.cached_q(tmp_path, "simulated", train) == 7.0)


def test_run_config_differences_ignores_restart_safe_fields(tmp_path):
    from experiments import configs
    from seqcsist_jax.workdir import run_config_differences, save_or_check_run_config

    config = configs.get_config("derefnet:smoke")
    assert run_config_differences(tmp_path, config) == []  # no run saved yet
    save_or_check_run_config(tmp_path, config)
    changed = configs.get_config("derefnet:smoke")
    changed.log_every_steps = 7  # restart-safe: not a difference
    assert run_config_differences(tmp_path, changed) == []
    changed.num_train_steps = config.num_train_steps + 1
    assert run_config_differences(tmp_path, changed) == [
        f"num_train_steps: {config.num_train_steps} → {config.num_train_steps + 1}"]


def test_restart_without_data_dir_keeps_the_saved_one(tmp_path):
    from seqcsist_jax.workdir import inherit_saved_data_dir, save_or_check_run_config

    saved = configs.get_config("dista:smoke")
    saved.dataset.data_dir = str(tmp_path / "tfds")
    save_or_check_run_config(tmp_path / "run", saved)
    restart = configs.get_config("dista:smoke")  # the same command without --config.dataset.data_dir
    inherited_config, inherited = inherit_saved_data_dir(tmp_path / "run", restart)
    assert inherited == str(tmp_path / "tfds") and inherited_config.dataset.data_dir == inherited
    assert restart.dataset.data_dir is None  # the caller's config is not changed
    assert inherited_config.model.c == saved.model.c and inherited_config.to_dict() == saved.to_dict()
    # an explicit data_dir (the data moved), another config, or no saved run: nothing is inherited
    moved = configs.get_config("dista:smoke")
    moved.dataset.data_dir = str(tmp_path / "elsewhere")
    assert inherit_saved_data_dir(tmp_path / "run", moved) == (moved, None)
    other = configs.get_config("dista:smoke")
    other.num_train_steps += 1
    assert inherit_saved_data_dir(tmp_path / "run", other) == (other, None)
    assert inherit_saved_data_dir(tmp_path / "new", restart) == (restart, None)


def test_restart_without_manual_dir_keeps_the_saved_one(tmp_path):
    """A public release read from --config.dataset.manual_dir: a restart that leaves it out (and its data_dir)
    keeps both, so a rebuild of damaged prepared files reads the same release, not TFDS's default folder."""
    from seqcsist_jax.workdir import inherit_saved_dataset_dirs, save_or_check_run_config

    saved = configs.get_config("dista:smoke")
    saved.dataset.data_dir, saved.dataset.manual_dir = str(tmp_path / "tfds"), str(tmp_path / "release")
    save_or_check_run_config(tmp_path / "run", saved)
    restart = configs.get_config("dista:smoke")
    config, inherited = inherit_saved_dataset_dirs(tmp_path / "run", restart)
    assert inherited == {"data_dir": str(tmp_path / "tfds"), "manual_dir": str(tmp_path / "release")}
    assert config.to_dict() == saved.to_dict() and restart.dataset.manual_dir is None
    # only the one left out is inherited; a restart that names the release elsewhere keeps its own
    moved = configs.get_config("dista:smoke")
    moved.dataset.manual_dir = str(tmp_path / "moved")
    config, inherited = inherit_saved_dataset_dirs(tmp_path / "run", moved)
    assert inherited == {"data_dir": str(tmp_path / "tfds")} and config.dataset.manual_dir == str(tmp_path / "moved")
    # a run saved before the field existed (no manual_dir key) inherits nothing for it
    old = saved.to_dict()
    del old["dataset"]["manual_dir"], old["dataset"]["data_dir"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    assert inherit_saved_dataset_dirs(tmp_path / "old", restart) == (restart, {})


def test_latest_checkpoint_step_reads_step_folders_only(tmp_path):
    from seqcsist_jax.workdir import latest_checkpoint_step

    assert latest_checkpoint_step(tmp_path) is None  # no checkpoints folder
    latest = tmp_path / "checkpoints" / "latest"
    latest.mkdir(parents=True)
    assert latest_checkpoint_step(tmp_path) is None
    for name in ("300", "1200", "90", "1500.orbax-checkpoint-tmp-1234"):  # the last one: a killed save
        (latest / name).mkdir()
    (tmp_path / "checkpoints" / "best" / "5000").mkdir(parents=True)  # not a latest step
    assert latest_checkpoint_step(tmp_path) == 1200  # numeric, not lexicographic order


def test_every_shipped_config_field_is_one_the_trainer_knows():
    from seqcsist_jax.train import check_config_fields

    for name in configs.available_configs():
        for variant in ("", "quick", "smoke"):
            try:
                config = configs.get_config(f"{name}:{variant}" if variant else name)
            except ValueError:  # a config without that variant
                continue
            check_config_fields(config)  # raises for a field missing from train.CONFIG_FIELDS


@pytest.mark.parametrize("set_field,message", [
    (lambda c: setattr(c, "learning_rate", 1e-3), "config.learning_rate: unknown config field; did you mean "
                                                    "optimizer.learning_rate?"),
    (lambda c: setattr(c.optimizer, "learnin_rate", 1e-3), "config.optimizer.learnin_rate: unknown config field; "
                                                             "did you mean optimizer.learning_rate?"),
    (lambda c: setattr(c.eval, "treshold", 50.0), "config.eval.treshold: unknown config field; did you mean "
                                                   "eval.threshold?"),
    (lambda c: setattr(c.dataset, "datadir", "/x"), "config.dataset.datadir: unknown config field; did you mean "
                                                     "dataset.data_dir?"),
])
def test_a_field_nothing_reads_is_refused_before_the_workdir_exists(set_field, message, tmp_path):
    from seqcsist_jax.train import UnknownConfigFieldError, train_and_evaluate

    config = configs.get_config("derefnet:smoke")
    set_field(config)
    with pytest.raises(UnknownConfigFieldError) as error:
        train_and_evaluate(config, tmp_path / "run")
    assert str(error.value).startswith(message) and not (tmp_path / "run").exists()
    # the method's own sections and the optional evaluation fields stay open
    config = configs.get_config("derefnet:smoke")
    config.model.my_option, config.loss.my_weight, config.eval.geometry_prior = 1, 0.5, True
    config.eval.decode_options = {"max_targets": 5}
    from seqcsist_jax.train import check_config_fields

    check_config_fields(config)
