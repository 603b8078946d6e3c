"""Faults a run repairs by itself, and the ones it reports in one line: damaged run state (evaluation journal,
best folder, loader position), damaged or concurrently built TFDS data, concurrent evaluations of one folder,
left-over temporary files, a full or misplaced disk, and config values that fail at initialisation."""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from experiments import cli, compare, configs
from seqcsist_jax import fileio, run_lock, workdir as workdir_lib
from seqcsist_jax import train as train_lib
from seqcsist_jax.checkpointing import RunCheckpoints
from seqcsist_jax.metric_writers import MetricsFileError, read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def _smoke(**overrides):
    config = configs.get_config("derefnet:smoke")
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished smoke run (latest 3 and 6, best 6) and its result; tests work on copies."""
    workdir = tmp_path_factory.mktemp("finished")
    return workdir, train_lib.train_and_evaluate(_smoke(), workdir)


def _copy(finished, tmp_path) -> pathlib.Path:
    target = tmp_path / "run"
    shutil.copytree(finished[0], target)
    return target


def _params_equal(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


# ------------------------------------------------------------------------------------------- run state


@pytest.mark.parametrize("content", ["{garbage", "[]", '{"evals": {"6": {}}, "best_step": 6}',
                                     '{"evals": {"x": {"mAP": 1}}}'])
def test_a_damaged_journal_is_rebuilt_from_the_best_checkpoint(finished, tmp_path, content):
    run = _copy(finished, tmp_path)
    journal = run / "checkpoints" / "evals.json"
    journal.write_text(content)
    # A reader (evaluate) sees the rebuilt journal in memory and changes nothing on disk ...
    assert RunCheckpoints(run).journal()["best_step"] == 6
    assert journal.read_text() == content
    # ... the trainer moves the damaged file aside and writes the rebuilt one.
    result = train_lib.train_and_evaluate(_smoke(), run)
    assert (run / "checkpoints" / "damaged" / "evals.json").read_text() == content
    assert json.loads(journal.read_text())["best_step"] == 6
    assert result["test"]["mAP"] == finished[1]["test"]["mAP"] or np.isnan(finished[1]["test"]["mAP"])


@pytest.mark.parametrize("kind", ["latest", "best"])
def test_a_file_where_a_checkpoint_folder_goes_is_moved_aside_and_the_run_finishes(finished, tmp_path, kind, caplog):
    """It failed every save, and so every rerun, with NotADirectoryError; now it is kept under damaged/ and the
    run goes on (without ``latest/`` from its best checkpoint, as after a deleted ``latest/``)."""
    import logging

    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "checkpoints" / kind)
    (run / "checkpoints" / kind).write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        result = train_lib.train_and_evaluate(_smoke(), run)
    (moved,) = (run / "checkpoints" / "damaged").glob(f"{kind}.not-a-folder-*")
    assert moved.read_text() == "not a folder"
    assert any(f"{run / 'checkpoints' / kind} is not a folder" in r.getMessage() for r in caplog.records)
    assert result["step"] == 6 and RunCheckpoints(run).best_step() == 6
    mAP = finished[1]["test"]["mAP"]
    assert result["test"]["mAP"] == mAP or (np.isnan(mAP) and np.isnan(result["test"]["mAP"]))
    _params_equal(RunCheckpoints(run).restore_params("best")[0], RunCheckpoints(finished[0]).restore_params("best")[0])


@pytest.mark.parametrize("damage", ["garbled", "missing"])
def test_orbax_step_metadata_damage_resumes_without_orbax_error_lines(finished, tmp_path, caplog, damage):
    """Orbax's own ``_CHECKPOINT_METADATA`` (save times) garbled or missing: Orbax goes on without it and so does
    the run (the checkpoint's checksums hold); Orbax's ERROR line with the file's content is not shown."""
    import logging

    run = _copy(finished, tmp_path)
    for kind in ("latest", "best"):
        metadata = run / "checkpoints" / kind / "6" / "_CHECKPOINT_METADATA"
        assert metadata.is_file()
        metadata.write_text("xx") if damage == "garbled" else metadata.unlink()
    with caplog.at_level(logging.INFO):
        result = train_lib.train_and_evaluate(_smoke(), run)
    assert result["step"] == 6
    assert "Metadata file" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    _params_equal(RunCheckpoints(run).restore_params("best")[0], RunCheckpoints(finished[0]).restore_params("best")[0])


def test_an_emptied_metrics_log_is_named_on_resume(finished, tmp_path, caplog):
    import logging

    run = _copy(finished, tmp_path)
    (run / "metrics.jsonl").write_text("")
    with caplog.at_level(logging.WARNING):
        result = train_lib.train_and_evaluate(_smoke(), run)
    assert result["step"] == 6
    assert f"{run / 'metrics.jsonl'} holds no record of steps 1–6 (deleted or emptied?)" in caplog.text


def test_a_deleted_latest_folder_resumes_from_the_best_checkpoint(tmp_path, caplog):
    """``latest/`` deleted (every step): the run resumes from ``best/N`` copied back (it restarted from step 0 and
    deleted that checkpoint as uncommitted) and ends as an uninterrupted run."""
    import logging

    config = _smoke(num_train_steps=9)
    uninterrupted = train_lib.train_and_evaluate(config, tmp_path / "reference")
    run = tmp_path / "run"
    stop_at_7 = lambda step, scalars: step == 7 and (_ for _ in ()).throw(KeyboardInterrupt)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        train_lib.train_and_evaluate(config, run, hooks=[stop_at_7])
    best = RunCheckpoints(run).best_step()
    assert best in (3, 6)
    shutil.rmtree(run / "checkpoints" / "latest")
    with caplog.at_level(logging.WARNING):
        result = train_lib.train_and_evaluate(config, run)
    assert f"{run / 'checkpoints' / 'latest'} holds no checkpoint; copied the best one (step {best}" in caplog.text
    assert "were not committed" not in caplog.text  # the evaluations up to the best one are kept
    assert result["step"] == 9
    assert RunCheckpoints(run).best_step() == RunCheckpoints(tmp_path / "reference").best_step()

    def journal(workdir):  # evaluated steps and their CSO-mAP (the records also hold timings)
        return {k: v["mAP"] for k, v in json.loads((workdir / "checkpoints" / "evals.json").read_text())["evals"].items()}

    assert journal(run) == journal(tmp_path / "reference") and len(journal(run)) >= 2
    assert result["best"]["mAP"] == uninterrupted["best"]["mAP"] or np.isnan(uninterrupted["best"]["mAP"])
    for which in ("best", "latest"):  # the best state and the final one (step 9) as without the deletion
        _params_equal(RunCheckpoints(run).restore_params(which)[0],
                      RunCheckpoints(tmp_path / "reference").restore_params(which)[0])


def test_a_deleted_best_folder_is_restored_from_latest_of_the_same_step(finished, tmp_path, caplog):
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "checkpoints" / "best" / "6")
    with caplog.at_level(logging.WARNING):
        train_lib.train_and_evaluate(_smoke(), run)
    assert any(r.getMessage().startswith("the best evaluation (step 6) had no best/ folder (deleted, or damaged and "
                                         "moved to damaged/); copied it from ") for r in caplog.records)
    checkpoints = RunCheckpoints(run)
    best, step = checkpoints.restore_params("best")
    latest, _ = checkpoints.restore_params(6)
    assert step == 6
    _params_equal(best, latest)


def test_a_damaged_best_folder_is_moved_aside_and_restored_from_latest(finished, tmp_path):
    run = _copy(finished, tmp_path)
    meta_file = run / "checkpoints" / "best" / "6" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["params_sha256"] = "0" * 64  # as if the saved arrays had changed on disk
    meta_file.write_text(json.dumps(meta))
    result = train_lib.train_and_evaluate(_smoke(), run)  # the finished run only scores its best again
    assert (run / "checkpoints" / "damaged" / "best-6").is_dir()
    assert result["step"] == 6 and RunCheckpoints(run).best_step() == 6
    np.testing.assert_equal(result["test"]["mAP"], finished[1]["test"]["mAP"])
    best, _ = RunCheckpoints(run).restore_params("best")  # the repaired folder passes its checksum
    reference, _ = RunCheckpoints(finished[0]).restore_params("best")
    _params_equal(best, reference)


def test_a_best_evaluation_without_any_checkpoint_is_dropped_with_a_warning(finished, tmp_path, caplog):
    """The journal names an evaluation as best whose checkpoint is gone everywhere (here: a better evaluation at
    step 3 written into the journal, latest/3 deleted): it is dropped with a warning that says so, and the next
    best is used."""
    run = _copy(finished, tmp_path)
    journal = run / "checkpoints" / "evals.json"
    data = json.loads(journal.read_text())
    early, last = 3, finished[1]["step"]
    assert early < last and not (run / "checkpoints" / "best" / str(early)).exists()
    data["evals"][str(early)] = {**data["evals"][str(last)], "mAP": 1.0}
    data["best_step"] = early
    journal.write_text(json.dumps(data))
    shutil.rmtree(run / "checkpoints" / "latest" / str(early), ignore_errors=True)
    with caplog.at_level(logging.WARNING):
        result = train_lib.train_and_evaluate(_smoke(), run)
    assert any(r.getMessage().startswith(f"the best evaluation (step {early}) has no checkpoint left (no best/{early} "
                                         f"or latest/{early} folder") for r in caplog.records)
    assert RunCheckpoints(run).best_step() == result["step"] == finished[1]["step"]


def test_without_best_folder_and_journal_the_latest_checkpoint_is_scored(finished, tmp_path):
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "checkpoints" / "best" / "6")
    shutil.rmtree(run / "checkpoints" / "latest" / "6")  # no other copy of step 6
    (run / "checkpoints" / "evals.json").write_text("{garbage")
    result = train_lib.train_and_evaluate(_smoke(), run)  # retrains 3 → 6, evaluating at 6 again
    assert result["step"] == 6 and RunCheckpoints(run).best_step() == 6


def test_a_malformed_loader_position_falls_back_to_the_previous_checkpoint(finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "checkpoints" / "latest" / "6" / "loader" / "metadata").write_text('{"epoch": 1, "position": -4}')
    result = train_lib.train_and_evaluate(_smoke(), run)
    assert (run / "checkpoints" / "damaged" / "latest-6").is_dir()
    assert result["step"] == 6
    reference, _ = RunCheckpoints(finished[0]).restore_params("latest")
    repeated, _ = RunCheckpoints(run).restore_params("latest")
    _params_equal(reference, repeated)  # retrained 3 → 6 exactly as the uninterrupted run


def test_a_metrics_record_with_a_non_integer_step_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": "x", "loss": 2.0}\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(MetricsFileError, match=rf"{path}, line 2: .*step 'x' is not an integer"):
        read_metrics(path)


def test_a_config_value_that_fails_at_initialisation_leaves_the_workdir_usable(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(train_lib.ModelInitError, match=r"config.model \(derefnet\): the model cannot be init"):
        train_lib.train_and_evaluate(_bad_channels(), fresh)
    assert not fresh.exists()  # a new workdir is left as it was: not there
    # a workdir that held something else keeps what the refused run wrote (nothing of it is ours alone to delete)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(train_lib.ModelInitError, match=r"config.model \(derefnet\): the model cannot be init"):
        train_lib.train_and_evaluate(_bad_channels(), tmp_path)
    assert (tmp_path / "config.json").exists() and not (tmp_path / "checkpoints" / "latest" / "3").exists()
    # the run never trained a step, so the corrected command adopts the workdir instead of being refused
    result = train_lib.train_and_evaluate(_smoke(), tmp_path)
    assert result["step"] == 6
    assert workdir_lib.load_run_config(tmp_path).model.channels == _smoke().model.channels
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _bad_channels():
    config = _smoke()
    config.model.channels = 0
    return config


def test_nan_settings_compare_equal():
    assert workdir_lib.config_differences({"a": float("nan"), "b": 1}, {"a": float("nan"), "b": 1}) == []
    assert workdir_lib.config_differences({"a": float("nan")}, {"a": 1.0}) == ["a: nan → 1.0"]


# ----------------------------------------------------------------------------------------- evaluations


def test_a_second_evaluation_of_one_folder_is_refused_at_once(finished, tmp_path):
    from experiments.evaluate import evaluate_workdir

    run = _copy(finished, tmp_path)
    out = run / "eval" / "test"
    with run_lock.WorkdirLock(out, holder="another evaluation writing there"):
        with pytest.raises(run_lock.WorkdirLockedError, match=rf"{out} is in use by another evaluation"):
            evaluate_workdir(run)
    assert evaluate_workdir(run)["out_dir"] == str(out)


def test_metrics_json_is_written_last(finished, tmp_path, monkeypatch):
    """When an evaluation's writing fails midway, no metrics.json claims the folder's mixed files."""
    from experiments.evaluate import evaluate_workdir
    from seqcsist_jax import plots

    run = _copy(finished, tmp_path)
    assert (run / "eval" / "test" / "metrics.json").exists()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "samples.png")

    monkeypatch.setattr(plots, "plot_samples", full_disk)
    with pytest.raises(OSError):
        evaluate_workdir(run)
    assert not (run / "eval" / "test" / "metrics.json").exists()
    monkeypatch.undo()
    evaluate_workdir(run)
    assert (run / "eval" / "test" / "metrics.json").exists()


def test_compare_recomputes_a_row_whose_cache_is_damaged(tmp_path):
    argv = ["--methods=ista", "--variant=smoke", "--budget_steps=1", "--evals=1", f"--workdir={tmp_path}"]
    first = compare.main(argv)["rows"][0]
    (tmp_path / "ista" / compare.ROW_FILE).write_text("{garbage")
    again = compare.main(argv)["rows"][0]
    assert not again.get("error") and again["mAP"] == first["mAP"]


# ------------------------------------------------------------------------------------------ files, disk


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "metrics.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".metrics.json.{dead}.1.tmp"
    mine = tmp_path / f".metrics.json.{os.getpid()}.999.tmp"  # a live writer (this process, another thread)
    fresh = tmp_path / f".metrics.json.{dead}.2.tmp"
    other = tmp_path / f".other.json.{dead}.1.tmp"
    for path in (stale, mine, fresh, other):
        path.write_text("x")
    old = time.time() - 10 * fileio.STALE_SECONDS
    for path in (stale, mine, other):
        os.utime(path, (old, old))
    fileio.atomic_write_json(target, {"a": 1})
    assert not stale.exists()
    assert mine.exists() and fresh.exists() and other.exists()  # live, too recent, another file's
    assert json.loads(target.read_text()) == {"a": 1}


def test_glob_escape_matches_only_the_literal_name(tmp_path):
    name = "run[1]*?.json"
    for other in (name, "run1x.json", "run[1]ab.json", "run1.json"):
        (tmp_path / other).write_text("")
    assert fileio.glob_escape(name) == "run[[]1][*][?].json"
    assert [p.name for p in tmp_path.glob(fileio.glob_escape(name))] == [name]


def test_os_errors_are_one_line_with_what_to_do():
    full = cli.os_error_line(OSError(errno.ENOSPC, "No space left on device", "/w/qinit.npz"))
    assert full.startswith("No space left on device (/w/qinit.npz): the disk is full") and "run the same" in full
    assert "resumes from its last checkpoint" in full
    preparing = OSError(errno.ENOSPC, "No space left on device while preparing seqcsist/mini in data_dir", "/d")
    preparing.rerun_note = "the dataset is built anew; nothing half-written is read"
    build = cli.os_error_line(preparing)
    assert build.startswith("No space left on device while preparing seqcsist/mini in data_dir (/d): the disk")
    assert "built anew" in build and "checkpoint" not in build
    assert "writable --workdir" in cli.os_error_line(OSError(errno.EROFS, "Read-only file system", "/w"))
    assert "check --workdir" in cli.os_error_line(FileExistsError(errno.EEXIST, "File exists", "/w"))
    assert cli.os_error_line(OSError(errno.EFBIG, "File too large", "/w/qinit.npz")) == (
        "File too large (/w/qinit.npz): the file-size limit (ulimit -f) was reached; raise it and run the same "
        "command again")
    assert cli.os_error_line(OSError("plain")) == "plain"


def _train_cli(*args, cwd=REPO):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config=derefnet:smoke", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    return proc, [line for line in proc.stderr.splitlines() if line.strip()]


def test_misplaced_workdirs_are_one_line(tmp_path):
    proc, lines = _train_cli("--workdir=", cwd=tmp_path)
    assert proc.returncode == 2 and lines == [
        "error: --workdir is empty; give the run's directory, e.g. --workdir=workdirs/quick"]
    assert list(tmp_path.iterdir()) == []  # nothing trained into the current directory
    proc, lines = _train_cli(cwd=tmp_path)  # no --workdir at all
    assert proc.returncode == 2 and lines == [
        "error: --workdir is required: the run's directory (checkpoints, logs, results), e.g. --workdir=workdirs/quick"]
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    proc, lines = _train_cli(f"--workdir={tmp_path / 'file'}")
    assert proc.returncode == 2 and lines == [
        f"error: --workdir={tmp_path / 'file'} is a file, not a directory; give the run's directory"]
    proc, lines = _train_cli(f"--workdir={tmp_path / 'file' / 'run'}")  # below a file: the OS says it
    assert proc.returncode == 2 and len(lines) == 1 and "a path that must be a directory is a file" in lines[0]


# ------------------------------------------------------------------------------------------------ data


def test_a_damaged_prepared_dataset_is_rebuilt_identically(tmp_path):
    from seqcsist_jax.data.pipeline import load_split_arrays
    from seqcsist_jax.data.tfds_open import prepared_dir

    before = load_split_arrays("seqcsist/mini", "test", data_dir=str(tmp_path))
    folder = prepared_dir("seqcsist/mini", str(tmp_path))
    parquet = next(folder.glob("seqcsist-test.parquet-*"))
    with open(parquet, "r+b") as f:
        f.truncate(100)
    after = load_split_arrays("seqcsist/mini", "test", data_dir=str(tmp_path))
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert len(list(folder.parent.glob(f"{folder.name}.damaged-*"))) == 1  # kept, never deleted
    with pytest.raises(ValueError, match="Unknown split"):  # a wrong split name is no damage
        load_split_arrays("seqcsist/mini", "bogus", data_dir=str(tmp_path))
    assert len(list(folder.parent.glob(f"{folder.name}.damaged-*"))) == 1


def test_the_build_lock_makes_a_second_process_wait(tmp_path):
    from seqcsist_jax.data.tfds_open import build_lock

    entered = threading.Event()

    def second():
        with build_lock("seqcsist/mini", tmp_path):
            entered.set()

    with build_lock("seqcsist/mini", tmp_path):
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.5)  # flock excludes the second open file description
    assert entered.wait(30)
    thread.join()
