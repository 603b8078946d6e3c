"""CSIST-100K through the training/evaluation layer: single images as one-frame trajectories, sub-pixel division
c from the config, every image scored at threshold 50, PSNR/SSIM, DISTA-Net and a baseline end to end."""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
import numpy as np
import pytest

from experiments import compare, configs
from experiments.configs import common
from seqcsist_jax import evaluate, image_quality, imaging, metrics, methods, protocol
from seqcsist_jax import train as train_lib
from seqcsist_jax.data import csist100k, splits
from seqcsist_jax.data.simulate import split_seed
from seqcsist_jax.predictor import make_predictor


def _smoke(**dataset) -> ml_collections.ConfigDict:
    config = configs.get_config("dista:smoke")
    for key, value in dataset.items():
        config.dataset[key] = value
    return config


# ------------------------------------------------------------------------------------------------ data


def test_simulated_csist100k_splits_are_one_frame_trajectories():
    config = _smoke()
    ds = config.dataset
    for split, folder, n in ((ds.train_split, "train", 8), (ds.eval_split, "val", 4), (ds.test_split, "test", 4)):
        assert splits.count_split(ds, split) == n
        got = splits.load_arrays(ds, split)
        want = csist100k.simulate_csist100k(n, split_seed(0, folder))
        assert got["frames"].shape == (n, 1, 11, 11) and got["targets"].shape == (n, 1, 5, 3)
        np.testing.assert_array_equal(got["frames"][:, 0], want["image"])
        np.testing.assert_array_equal(got["targets"][:, 0], want["targets"])
        np.testing.assert_array_equal(got["num_targets"][:, 0], want["num_targets"])
        np.testing.assert_array_equal(got["trajectory_id"], np.arange(n))
        np.testing.assert_array_equal(got["frame_numbers"][:, 0], np.arange(n))


def test_csist100k_tfds_name_loads_with_image_numbers(tmp_path):
    from tfds_builders.csist100k import csist100k_dataset_builder as cdb

    sizes = {"train": 6, "validation": 3, "test": 4}
    base = next(c for c in cdb.BUILDER_CONFIGS if c.name == "default")
    builder_config = dataclasses.replace(base, name="tiny", split_sizes=tuple(sizes.items()))
    cdb.Builder(config=builder_config, data_dir=os.fspath(tmp_path)).download_and_prepare()
    config = configs.get_config("dista")
    config.dataset.update({"name": "csist100k/tiny", "data_dir": str(tmp_path), "build_if_missing": False})
    assert splits.count_split(config.dataset, "test") == 4
    got = splits.load_arrays(config.dataset, "test")
    want = csist100k.simulate_csist100k(4, split_seed(0, "test"), **builder_config.simulation_options())
    np.testing.assert_array_equal(got["frames"][:, 0], want["image"])
    np.testing.assert_array_equal(got["targets"][:, 0], want["targets"])
    np.testing.assert_array_equal(got["frame_numbers"][:, 0], np.arange(4))  # image_number kept
    np.testing.assert_array_equal(got["trajectory_id"], np.arange(4))


def test_split_names_and_unknown_splits():
    dataset = configs.get_config("dista:smoke").dataset
    dataset.eval_split = "val"
    assert splits.split_names(dataset) == ("train", "val", "test")
    splits.check_split(dataset, "val")
    with pytest.raises(ValueError, match=r"unknown split 'validation' for .*; choose from train, val, test"):
        splits.check_split(dataset, "validation")


def test_tfds_split_names_are_checked_with_the_config(tmp_path):
    dataset = configs.get_config("dista:quick").dataset  # csist100k/mini: train, validation, test
    splits.check_split_names(dataset)
    dataset.train_split = "train+validation"  # whole splits joined with '+' are read as asked
    splits.check_split_names(dataset)
    for key, value, hint in (("eval_split", "valid", " (did you mean 'validation'?)"),
                             ("test_split", "test+tset", " (did you mean 'test'?)"),
                             ("train_split", "everything", "")):
        bad = dataset.copy_and_resolve_references()
        bad[key] = value
        with pytest.raises(ValueError) as error:
            splits.check_split_names(bad)
        assert str(error.value) == (f"config.dataset.{key}: unknown split {value!r} of csist100k/mini{hint}; "
                                    "its splits are train, validation, test")
    bad = dataset.copy_and_resolve_references()
    bad.test_split = "test[:100]"  # TFDS would read the whole split on these Parquet files
    with pytest.raises(ValueError, match=r"^config.dataset.test_split: split 'test\[:100\]': slices are not "
                                         r"applied to this project's datasets"):
        splits.check_split_names(bad)
    smoke = configs.get_config("dista:smoke").dataset  # generated in memory under the config's own names
    smoke.eval_split = "val"
    splits.check_split_names(smoke)
    config = configs.get_config("dista:quick")
    config.dataset.eval_split = "valid"
    with pytest.raises(ValueError, match="config.dataset.eval_split: unknown split 'valid'"):
        train_lib.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()  # refused before the workdir is created or the data built


def test_dataset_names_are_checked_before_anything_is_built(tmp_path):
    for name in ("seqcsist", "seqcsist/mini:1.0.0", "csist100k/public", "csist100k:1.0.0", "simulated",
                 "simulated_csist100k", "seqcsist/targets_2_8"):
        splits.check_dataset_name(name, str(tmp_path))
    with pytest.raises(splits.UnknownDatasetError, match=r"'csist10k/mini' \(did you mean 'csist100k/mini'\?\)"):
        splits.check_dataset_name("csist10k/mini", str(tmp_path))
    with pytest.raises(splits.UnknownDatasetError, match="unknown dataset 'mnist'; known: seqcsist/default"):
        splits.check_dataset_name("mnist", str(tmp_path))
    with pytest.raises(splits.UnknownDatasetError, match="or a config prepared in"):
        splits.check_dataset_name("csist100k/tiny", str(tmp_path))
    (tmp_path / "csist100k" / "tiny" / "1.0.0").mkdir(parents=True)  # a researcher's own prepared config
    splits.check_dataset_name("csist100k/tiny", str(tmp_path))
    with pytest.raises(splits.UnknownDatasetError):  # other families are not read, prepared or not
        (tmp_path / "mnist" / "default").mkdir(parents=True)
        splits.check_dataset_name("mnist/default", str(tmp_path))
    config = configs.get_config("dista:smoke")
    config.dataset.name = "csist100k/minii"
    with pytest.raises(splits.UnknownDatasetError, match="did you mean 'csist100k/mini'"):
        splits.load_arrays(config.dataset, "test")


def test_set_dataset_switches_the_scoring_protocol():
    config = configs.get_config("srcnn")
    assert (config.eval.threshold, config.eval.scored_margin, config.dataset.c) == (70.0, 2, 3)
    common.set_dataset(config, "csist100k/mini")
    assert (config.eval.threshold, config.eval.scored_margin) == (protocol.CSIST100K_THRESHOLD, 0)
    assert config.loss.scored_margin == 0  # the baselines' losses follow the scored frames
    common.set_dataset(config, "seqcsist/mini")
    assert (config.eval.threshold, config.eval.scored_margin, config.loss.scored_margin) == (70.0, 2, 2)
    dista = configs.get_config("dista")
    assert (dista.eval.threshold, dista.eval.scored_margin, dista.dataset.c, dista.model.c) == (50.0, 0, 3, 3)
    c7 = configs.get_config("dista:c7")
    assert (c7.dataset.c, c7.model.c) == (7, 7)
    dista.dataset.c = 5  # one value: the model follows the dataset's c
    assert dista.model.c == 5 and splits.subpixel_c(dista) == 5
    assert configs.get_config("dista:quick").dataset.name == "csist100k/mini"


def test_subpixel_c_mismatch_and_bad_values_are_one_line_errors():
    config = configs.get_config("derefnet")
    config.model.c = 5
    with pytest.raises(ValueError, match=r"config.model.c=5 but config.dataset.c=3"):
        splits.subpixel_c(config)
    config = configs.get_config("srcnn")
    for bad in (0, 4, -3):  # (ConfigDict itself refuses a float or bool in this int field)
        config.dataset.c = bad
        with pytest.raises(ValueError, match="config.dataset.c must be a positive odd integer"):
            splits.subpixel_c(config)
        with pytest.raises(ValueError, match="config.dataset.c must be a positive odd integer"):
            train_lib.check_config(config)  # refused before any workdir is created


# --------------------------------------------------------------------------------------- c = 5, 7: Φ, Q, labels


@pytest.mark.parametrize("c", [5, 7])
def test_q_for_c_matches_the_explicit_least_squares(c):
    targets = csist100k.simulate_csist100k(400, 3)["targets"]
    phi = imaging.measurement_matrix(c=c).astype(np.float64)
    q = splits.compute_q(targets, phi, c=c)
    n = (11 * c) ** 2
    assert q.shape == (n, 121)
    x = np.asarray(csist100k.labels(targets, c=c), np.float64).reshape(-1, n).T  # (n, N) label columns
    y = phi @ x
    want = np.linalg.solve(y @ y.T, y @ x.T).T  # X Yᵀ (Y Yᵀ)⁻¹ without the Gram-matrix route
    scale = np.abs(want).max()
    np.testing.assert_allclose(q, want, atol=1e-6 * scale)


def test_trainer_builds_phi_q_and_labels_for_the_configs_c(tmp_path):
    from seqcsist_jax.train import Trainer

    config = _smoke(c=5)
    trainer = Trainer(config, tmp_path)
    assert trainer.phi.shape == (121, 55 * 55) and trainer.q.shape == (55 * 55, 121)
    np.testing.assert_array_equal(trainer.phi, imaging.measurement_matrix(c=5))
    batch = trainer.loader.batch_at(0, 0)
    assert batch["labels"].shape == (2, 1, 55, 55)
    np.testing.assert_array_equal(batch["labels"], csist100k.labels(batch["targets"], c=5))
    # the cache is keyed by c: the same workdir at c = 3 computes a (1089, 121) Q, and the c = 3 key keeps
    # its original format (existing runs' caches stay valid)
    assert str(np.load(tmp_path / "qinit.npz")["key"]).endswith("|sum|5")
    q3 = splits.q_for_workdir(tmp_path, _smoke().dataset)
    assert q3.shape == (1089, 121)
    assert str(np.load(tmp_path / "qinit.npz")["key"]) == "simulated_csist100k|8|sum"
    np.testing.assert_array_equal(splits.q_for_workdir(tmp_path, _smoke().dataset), q3)


@pytest.mark.parametrize("c", [3, 5, 7])
def test_grid_decoding_reads_c_from_the_maps(c):
    half = (c - 1) // 2
    maps = np.zeros((1, 1, 11 * c, 11 * c), np.float32)
    maps[0, 0, 7, 12] = 60.0  # one cell above the CSIST-100K threshold, one below
    maps[0, 0, 20, 3] = 40.0
    arrays = {"frames": np.zeros((1, 1, 11, 11), np.uint8),
              "targets": np.array([[[[(7 - half) / c, (12 - half) / c, 60.0]]]], np.float32)}
    result, detections = evaluate.score_maps(maps, np.arange(1), arrays, threshold=50.0, margin=0)
    np.testing.assert_allclose(detections[0][0], [[(7 - half) / c, (12 - half) / c, 60.0, 60.0]], atol=1e-12)
    assert result["mAP"] == 1.0 and result["num_frames_scored"] == 1


def test_label_grids_score_within_the_quantisation_error_on_every_image():
    arrays = csist100k.as_trajectories(csist100k.simulate_csist100k(40, 5))
    for c in (3, 5, 7):
        maps = np.asarray(csist100k.labels(arrays["targets"], c=c), np.float32)
        result, detections = evaluate.score_maps(maps, np.arange(1), arrays, threshold=50.0, margin=0)
        assert result["num_frames_scored"] == 40  # every image, no frame margin
        # a label cell is at most √2/(2c) px from its target: AP at 0.25 px is perfect for c >= 3
        assert result["AP25"] == 1.0
        assert sum(len(d[0]) for d in detections) == int(arrays["num_targets"].sum())
    with pytest.raises(ValueError, match="no scored frame"):
        evaluate.score_maps(maps, np.arange(1), arrays, threshold=50.0, margin=2)


# ------------------------------------------------------------------------------------------ PSNR / SSIM


def test_map_quality_is_the_mean_of_the_toolkits_per_image_values():
    arrays = csist100k.as_trajectories(csist100k.simulate_csist100k(12, 7))
    rng = np.random.default_rng(0)
    labels = np.asarray(csist100k.labels(arrays["targets"], c=5), np.float64)
    maps = (labels + rng.normal(0.0, 20.0, labels.shape)).astype(np.float32)
    got = evaluate.map_quality(maps, np.arange(1), arrays, margin=0)
    psnr = [image_quality.psnr(maps[i, 0], labels[i, 0]) for i in range(12)]
    ssim = [image_quality.ssim(maps[i, 0], labels[i, 0]) for i in range(12)]
    assert got["psnr"] == pytest.approx(np.mean(psnr), rel=1e-12)
    assert got["ssim"] == pytest.approx(np.mean(ssim), rel=1e-12)
    perfect = evaluate.map_quality(labels.astype(np.float32), np.arange(1), arrays, margin=0)
    assert perfect == {"psnr": image_quality.PSNR_OF_PERFECT_MAP, "ssim": pytest.approx(1.0)}


# ------------------------------------------------------------------------------------------ baselines' margin


@pytest.mark.parametrize("name", ["espcn", "edsr", "istanet", "istanet_plus", "istanet_pp", "fistanet"])
def test_baseline_losses_take_the_scored_margin_from_the_config(name):
    import jax
    import jax.numpy as jnp

    config = configs.get_config(f"{name}:smoke")
    rng = np.random.default_rng(1)
    out = jnp.asarray(rng.normal(size=(2, 5, 33, 33)), jnp.float32)
    labels = jnp.asarray(rng.normal(size=(2, 5, 33, 33)), jnp.float32)
    outputs = {"output": out, "sym": jnp.zeros((2, 2, 5, 33, 33)), "st": jnp.zeros((2, 2, 5, 33, 33))}

    def mse(config_margin):  # the regression term: "mse" (SR nets, FISTA-Net) or "discrepancy" (ISTA-Nets)
        config.eval.scored_margin = config_margin
        terms = jax.jit(methods.build_method(config.model, config.loss).loss_fn)(outputs, labels)[1]
        return float(terms["mse"] if "mse" in terms else terms["discrepancy"])

    for margin in (0, 1, 2):
        want = float(jnp.mean(jnp.square(out[:, margin:5 - margin] - labels[:, margin:5 - margin])))
        assert mse(margin) == pytest.approx(want, rel=1e-5), margin
    config.eval.scored_margin = 0  # single images: the whole (one-frame) output is regressed
    loss_fn = methods.build_method(config.model, config.loss).loss_fn
    one = {k: v[:, :1] if k == "output" else v[:, :, :1] for k, v in outputs.items()}
    assert np.isfinite(float(loss_fn(one, labels[:, :1])[0]))
    config.eval.scored_margin = 2
    with pytest.raises(ValueError, match="more than 4 frames"):
        methods.build_method(config.model, config.loss).loss_fn(one, labels[:, :1])


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_dista_smoke_trains_and_scores_every_image(tmp_path, capsys):
    from seqcsist_jax.train import train_and_evaluate

    config = configs.get_config("dista:smoke")
    config.dataset.data_dir = str(tmp_path / "tfds")  # in-memory data: said in a note, never created
    result = train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "tfds").exists()
    assert any(line.endswith(f"note: dataset.data_dir={tmp_path / 'tfds'} not read: dataset 'simulated_csist100k' "
                             "is generated in memory (set --config.dataset.name to a TFDS dataset, e.g. seqcsist/mini "
                             "or csist100k/mini, to train on one)") for line in capsys.readouterr().out.splitlines())
    tmp_path = tmp_path / "run"
    test = result["test"]
    assert test["num_frames_scored"] == config.dataset.num_test  # every image, threshold 50
    assert 0.0 <= test["mAP"] <= 1.0 and np.isfinite(test["psnr"]) and -1.0 <= test["ssim"] <= 1.0
    written = json.loads((tmp_path / "eval" / "test" / "metrics.json").read_text())
    assert written["psnr"] == pytest.approx(test["psnr"]) and written["ssim"] == pytest.approx(test["ssim"])
    assert test["table_row"].count("|") == evaluate.table_header(test).splitlines()[0].count("|") == 12
    rows = (tmp_path / "eval" / "test" / "detections.csv").read_text().splitlines()
    assert rows[0] == "trajectory,frame,x,y,brightness,score"
    assert all(r.split(",")[1] == "0" for r in rows[1:])  # frame 0 of one-frame trajectories
    # the evaluation path scores the saved run the same way (Φ/Q of the run's c, its cached Q)
    from seqcsist_jax.predictor import restore_run

    _, predictor, params, _ = restore_run(str(tmp_path))
    again = evaluate.evaluate_run(predictor.predict, params, splits.load_arrays(config.dataset, "test"), config.eval,
                                  frame_index=predictor.method.frame_index, mesh=predictor.mesh,
                                  out_dir=tmp_path / "again", export_public=True)
    assert again["mAP"] == pytest.approx(test["mAP"]) and again["psnr"] == pytest.approx(test["psnr"])
    # --export_public writes CSIST-100K's own layout for its images: Annotations/CSO{N}.xml, N the image number
    from seqcsist_jax.data.public_format import parse_annotation

    public = tmp_path / "again" / "public"
    assert sorted(p.name for p in public.iterdir()) == ["Annotations"]
    files = {int(f.stem[3:]): f for f in (public / "Annotations").glob("CSO*.xml")}
    assert sorted(files) == list(range(config.dataset.num_test))
    by_image = {}
    for row in rows[1:]:
        image, _, x, y, brightness, _ = row.split(",")
        by_image.setdefault(int(image), []).append((float(x), float(y), float(brightness)))
    assert "<filename>CSO3</filename>" in files[3].read_text()
    for n, f in files.items():  # the same detections as detections.csv (clipped to the image)
        want = np.clip(np.array(by_image.get(n, []), np.float32).reshape(-1, 3), [-0.5, -0.5, -np.inf],
                       [10.5, 10.5, np.inf])
        np.testing.assert_allclose(parse_annotation(f).reshape(-1, 3), want, rtol=1e-6, atol=1e-6)
    # a later evaluation into the same folder without the export leaves no export of the earlier one behind
    evaluate.evaluate_run(predictor.predict, params, splits.load_arrays(config.dataset, "test"), config.eval,
                          frame_index=predictor.method.frame_index, mesh=predictor.mesh, out_dir=tmp_path / "again")
    assert not public.exists() and (tmp_path / "again" / "metrics.json").exists()


def test_restart_without_data_dir_reads_the_runs_own_data(tmp_path):
    from seqcsist_jax.train import train_and_evaluate
    from tfds_builders.csist100k import csist100k_dataset_builder as cdb

    # A release that exists only in the run's data_dir (not a registered config, nothing else can build it): a
    # restart that dropped --config.dataset.data_dir and looked in TFDS's default directory could not score it.
    base = next(c for c in cdb.BUILDER_CONFIGS if c.name == "default")
    builder_config = dataclasses.replace(base, name="tiny", split_sizes=(("train", 8), ("validation", 4), ("test", 4)))
    cdb.Builder(config=builder_config, data_dir=os.fspath(tmp_path / "tfds")).download_and_prepare()

    def config(data_dir):
        c = configs.get_config("dista:smoke")
        c.dataset.update({"name": "csist100k/tiny", "data_dir": data_dir, "build_if_missing": False})
        c.num_train_steps = 2
        return c

    first = train_and_evaluate(config(str(tmp_path / "tfds")), tmp_path / "run")
    again = train_and_evaluate(config(None), tmp_path / "run")  # "already finished": re-scores on the run's data
    assert again["test"]["mAP"] == pytest.approx(first["test"]["mAP"])
    assert again["test"]["num_frames_scored"] == 4
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dataset"]["data_dir"] == str(tmp_path / "tfds")


def test_compare_runs_a_single_frame_baseline_on_csist100k_images(tmp_path):
    workdir = tmp_path / "runs"
    result = compare.main(["--methods=espcn", "--variant=smoke", "--dataset=simulated_csist100k",
                           "--budget_steps=2", f"--workdir={workdir}", f"--output={tmp_path / 'table'}"])
    (row,) = result["rows"]
    assert row["method"] == "espcn" and not row.get("error"), row
    assert row["num_test_trajectories"] == 2 and row["paper"] is None
    assert np.isfinite(row["psnr"]) and 0.0 <= row["mAP"] <= 1.0
    config = json.loads((workdir / "espcn" / "config.json").read_text())
    assert (config["eval"]["threshold"], config["eval"]["scored_margin"]) == (50.0, 0)
    assert config["loss"]["scored_margin"] == 0
    table = (tmp_path / "table.md").read_text()
    assert "threshold 50, every image scored" in table and "Published numbers" not in table  # SeqCSIST's table
    assert "| FLOPs / 20 images |" in table and "FLOPs / traj" not in table  # images, not trajectories


def test_make_predictor_uses_the_dataset_c():
    config = _smoke(c=7)
    predictor = make_predictor(config, np.zeros((77 * 77, 121)))
    assert predictor.phi.shape == (121, 77 * 77)
    assert metrics.grids_to_detections(np.zeros((1, 77, 77)), 50.0, c=7)[0].shape[0] == 0


@pytest.mark.parametrize("name, dirs, named", [
    ("simulated_csist100k", {"data_dir": "D"}, ["dataset.data_dir=D"]),
    ("simulated", {"data_dir": "D", "manual_dir": "M"}, ["dataset.data_dir=D and dataset.manual_dir=M"]),
    ("simulated", {}, None),
    ("csist100k/mini", {"data_dir": "D", "manual_dir": "M"}, None),  # a TFDS dataset reads them
    ("seqcsist/mini", {"data_dir": "D"}, None),
])
def test_unused_dataset_dirs_are_named_only_for_in_memory_data(name, dirs, named):
    dataset = ml_collections.ConfigDict({"name": name, "data_dir": None, "manual_dir": None, **dirs})
    note = train_lib.unused_dataset_dirs(dataset)
    if named is None:
        assert note is None
    else:
        assert note.startswith(f"{named[0]} not read: dataset {name!r} is generated in memory")
