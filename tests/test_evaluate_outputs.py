"""experiments.evaluate never replaces a run's own result: other checkpoints go to eval/<split>-step<N>/, and
imported or shipped weights are refused in a workdir that holds a training run."""
from __future__ import annotations

import json
import shutil
import socket

import pytest

from experiments import cli, configs
from experiments.evaluate import evaluate_workdir
from seqcsist_jax import train as train_lib


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("srcnn")
    result = train_lib.train_and_evaluate(configs.get_config("srcnn:smoke"), workdir)
    return workdir, result


def test_another_checkpoint_is_written_next_to_the_runs_result(run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(run[0], workdir)
    own = (workdir / "eval" / "test" / "metrics.json").read_bytes()
    result = evaluate_workdir(workdir, checkpoint="3", split="test")
    assert result["out_dir"] == str(workdir / "eval" / "test-step3") and result["step"] == 3
    assert (workdir / "eval" / "test-step3" / "metrics.json").exists()
    assert (workdir / "eval" / "test" / "metrics.json").read_bytes() == own  # untouched
    again = evaluate_workdir(workdir, checkpoint="best", split="test")
    assert again["out_dir"] == str(workdir / "eval" / "test") and again["mAP"] == pytest.approx(run[1]["test"]["mAP"])


def test_changed_config_values_are_written_next_to_the_runs_result(run, tmp_path):
    """``evaluate --config.eval.threshold=…`` on a run scores its best checkpoint under the changed value into
    eval/<split>-<key>=<value>/; settings that do not change the scores (eval.batch_size) keep the run's folder."""
    from seqcsist_jax.workdir import load_run_config

    workdir = tmp_path / "run"
    shutil.copytree(run[0], workdir)
    own = (workdir / "eval" / "test" / "metrics.json").read_bytes()
    config = load_run_config(workdir)
    config.eval.threshold = 50.0
    result = evaluate_workdir(workdir, split="test", config=config)
    out = workdir / "eval" / "test-eval.threshold=50.0"
    assert result["out_dir"] == str(out) and json.loads((out / "metrics.json").read_text())["threshold"] == 50.0
    assert (workdir / "eval" / "test" / "metrics.json").read_bytes() == own  # untouched
    config = load_run_config(workdir)
    config.eval.batch_size = 3
    assert evaluate_workdir(workdir, split="test", config=config)["out_dir"] == str(workdir / "eval" / "test")


def test_overrides_folder_suffix():
    from experiments.evaluate import overrides_folder_suffix

    assert overrides_folder_suffix(["eval.threshold: 70.0 → 50.0"]) == "eval.threshold=50.0"
    assert overrides_folder_suffix(["dataset.name: 'seqcsist/mini' → 'seqcsist/noise_2'", "seed: 0 → 1"]) == \
        "dataset.name=_seqcsist_noise_2_-seed=1"
    long = [f"model.field_{i}: 1 → 2" for i in range(8)]
    suffix = overrides_folder_suffix(long)
    assert suffix.startswith("config-") and len(suffix) == 17 and suffix != overrides_folder_suffix(long[:7])


def test_the_closing_line_lists_what_the_evaluation_wrote(run, tmp_path):
    """A run's evaluation draws its loss curves (from metrics.jsonl) and says so; weights without a metrics log
    leave no loss figure, so the line does not promise one."""
    from experiments.evaluate import written_files

    out = run[0] / "eval" / "test"
    assert written_files(out, False) == ["metrics.json", "detections.csv", "pr_curves.png", "samples.png",
                                         "loss_curves.png"]
    assert all((out / name).exists() for name in written_files(out, False))
    bare = tmp_path / "bare"
    bare.mkdir()
    names = written_files(bare, True)
    assert "loss_curves.png" not in names and names[-1].startswith("public/")

    # a workdir without a training log (shipped weights; a run killed before its first log line): no empty
    # loss figure is drawn, and the one an earlier evaluation drew goes
    workdir = tmp_path / "run"
    shutil.copytree(run[0], workdir)
    (workdir / "metrics.jsonl").write_bytes(b"")
    result = evaluate_workdir(workdir, split="test")
    assert not (workdir / "eval" / "test" / "loss_curves.png").exists()
    assert "loss_curves.png" not in written_files(result["out_dir"], False)


def test_training_log_and_imaging_line(run, tmp_path):
    from experiments.evaluate import imaging_line, training_log
    from seqcsist_jax.decode.imaging_params import ImagingParams

    assert training_log(run[0]) == run[0] / "metrics.jsonl"
    assert training_log(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text("")
    assert training_log(tmp_path) is None
    imaging = ImagingParams()
    fresh = imaging_line(imaging, True, tmp_path / "imaging.json")
    assert fresh.startswith(f"imaging model calibrated on the training split, saved to {tmp_path}/imaging.json: "
                            "sigma=")
    again = imaging_line(imaging, False, tmp_path / "imaging.json")
    assert again.startswith(f"imaging model read from {tmp_path}/imaging.json: sigma=") and "imaging:" not in again


def test_shipped_weights_are_refused_in_a_training_run(run):
    with pytest.raises(cli.UsageError, match=r"holds a training run \(config.json, checkpoints/\); "
                                             r"--pretrained=derefnet_quick would replace its eval/ results"):
        evaluate_workdir(run[0], pretrained="derefnet_quick")


def test_options_that_would_be_ignored_or_fail_late_are_one_line(run, tmp_path):
    """``--geometry_prior`` with a map decoder would be ignored silently, and a file as the output directory of
    shipped weights failed with the errno's wording: both are one line naming the flag."""
    with pytest.raises(cli.UsageError, match=r"^--geometry_prior applies to the continuous decoders \(--decode=refine "
                                             r"or trajectory\), not --decode=grid$"):
        evaluate_workdir(run[0], decode="grid", geometry_prior=True)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(cli.UsageError, match=rf"^--workdir={afile} is a file, not a directory"):
        evaluate_workdir(afile, pretrained="derefnet_quick")
    assert afile.read_text() == "x"


def test_an_unfinished_run_suggests_the_latest_checkpoint(run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(run[0], workdir)
    shutil.rmtree(workdir / "checkpoints" / "best")
    (workdir / "checkpoints" / "evals.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no 'best' checkpoint in .*; pass --checkpoint=latest to score its "
                                                r"newest checkpoint \(step 6\)"):
        evaluate_workdir(workdir)
    shutil.rmtree(workdir / "checkpoints")  # a run killed before its first checkpoint
    with pytest.raises(FileNotFoundError, match=r"no 'best' checkpoint in .*, and no other checkpoint either \(the "
                                                r"run has not saved one yet\); train it first: python -m "
                                                r"experiments.train --workdir="):
        evaluate_workdir(workdir)
    # ... unless a trainer holds it now (it would refuse that command): then it says so
    import socket
    import subprocess
    import sys

    from seqcsist_jax.run_lock import LOCK_NAME

    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (workdir / LOCK_NAME).write_text(json.dumps({"pid": trainer.pid, "host": socket.gethostname()}))
        with pytest.raises(FileNotFoundError, match=rf"no other checkpoint either: {workdir} is being trained now "
                                                    rf"\(PID {trainer.pid} on .*\) and has not saved one yet; run "
                                                    r"this again after its first checkpoint$"):
            evaluate_workdir(workdir)
    finally:
        trainer.kill()
        trainer.wait()


def test_a_damaged_best_checkpoint_names_the_repair_which_works(run, tmp_path):
    from seqcsist_jax.checkpointing import CheckpointError

    workdir = tmp_path / "run"
    shutil.copytree(run[0], workdir)
    best = json.loads((workdir / "checkpoints" / "evals.json").read_text())["best_step"]
    meta_file = next((workdir / "checkpoints" / "best" / str(best) / "meta").glob("*"))
    meta = json.loads(meta_file.read_text())
    meta["params_sha256"] = "0" * 64  # as if the saved arrays had changed on disk
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"best/{best} fails its checksum.*; python -m experiments.train "
                                              rf"--workdir={workdir} repairs the run"):
        evaluate_workdir(workdir)
    # the repair it names: the trainer (here its library entry with the saved config) restores the best step
    from seqcsist_jax.workdir import load_run_config

    train_lib.train_and_evaluate(load_run_config(workdir), workdir)
    assert evaluate_workdir(workdir)["mAP"] == pytest.approx(run[1]["test"]["mAP"])


def test_a_checkpoint_deleted_while_read_is_not_called_an_unfinished_run(run, monkeypatch):
    from seqcsist_jax import predictor

    def vanished(*args, **kwargs):  # what a running trainer's checkpoint rotation does to a concurrent reader
        raise FileNotFoundError(2, "No such file or directory", str(run[0] / "checkpoints" / "latest" / "254"))

    monkeypatch.setattr(predictor, "restore_run", vanished)
    with pytest.raises(FileNotFoundError, match=r"latest/254'? \(a checkpoint changed while it was read: a trainer "
                                                r"still running in this workdir deletes older ones; run the command "
                                                r"again\)") as e:
        evaluate_workdir(run[0])
    assert "unfinished run" not in str(e.value)


def test_an_evaluation_without_detection_says_so():
    from seqcsist_jax.evaluate import no_detection_note

    assert "no map cell reached the threshold 70:" in no_detection_note({"num_detections": 0, "num_gt": 5}, 70.0)
    assert no_detection_note({"num_detections": 3, "num_gt": 5}, 70.0) == ""
    assert no_detection_note({"num_detections": 0, "num_gt": 0}, 70.0) == ""  # nothing to find: nothing missed
    # a run too short to detect anything is not called collapsed, nor sent to other seeds
    short = no_detection_note({"num_detections": 0, "num_gt": 5}, 70.0, steps=6)
    assert "after 6 training steps" in short and "as expected of a run this short" in short
    assert "collapsed" not in short and "--config.seed" not in short
    from seqcsist_jax.evaluate import SHORT_RUN_STEPS, is_short_run

    assert is_short_run(0) and is_short_run(SHORT_RUN_STEPS - 1)
    assert not is_short_run(SHORT_RUN_STEPS) and not is_short_run(None)
    long = no_detection_note({"num_detections": 0, "num_gt": 5}, 70.0, steps=350)
    assert "collapsed" in long and "--config.seed" in long and "--config.optimizer.grad_clip_norm" in long
    one = no_detection_note({"num_detections": 0, "num_gt": 5}, 70.0, steps=1)
    assert "after 1 training step the model" in one and "smoke configs check" in one


def test_train_and_evaluate_commands_print_the_no_detection_note(tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    workdir = tmp_path / "w"
    trained = subprocess.run([sys.executable, "-m", "experiments.train", "--config=srcnn:smoke", f"--workdir={workdir}",
                              "--config.eval.threshold=1e9"], capture_output=True, text=True, timeout=300, cwd=repo,
                             env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "note: the test evaluation found no detection: no map cell reached the threshold 1e+09" in trained.stdout
    assert "as expected of a run this short" in trained.stdout  # srcnn:smoke trains 6 steps
    scored = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}"],
                            capture_output=True, text=True, timeout=300, cwd=repo, env=env)
    assert scored.returncode == 0 and "note: this evaluation found no detection" in scored.stdout
    # training's protocol note at its start is repeated by the later evaluation (once each)
    protocol_note = "note: scoring at threshold 1e+09 with eval.scored_margin 2, not SeqCSIST's protocol"
    assert trained.stdout.count(protocol_note) == 1 and scored.stdout.count(protocol_note) == 1, scored.stdout
    assert '"rmse": null' in scored.stdout and "NaN" not in scored.stdout  # strict JSON, as metrics.json
    # Python warnings are one line each, without the file, line and source line that raised them
    assert "\nwarning: RuntimeWarning: Y Yᵀ is ill-conditioned" in "\n" + trained.stderr
    assert "splits.py:" not in trained.stderr, trained.stderr[-2000:]


def test_export_detections_writes_one_row_per_detection(tmp_path):
    import csv

    import numpy as np

    from seqcsist_jax.evaluate import export_detections

    detections = [[np.array([[1.5, 2.25, 230.0, 0.9], [3.0, 4.0, 120.0, 0.5]]), np.zeros((0, 4))],
                  [np.zeros((0, 4)), np.array([[5.125, 6.0, 99.5, 0.25]])]]
    export_detections(tmp_path / "d.csv", detections, [7, 9], [2, 3])
    with open(tmp_path / "d.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["trajectory", "frame", "x", "y", "brightness", "score"]
    assert [(int(r[0]), int(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5])) for r in rows[1:]] == [
        (7, 2, 1.5, 2.25, 230.0, 0.9), (7, 2, 3.0, 4.0, 120.0, 0.5), (9, 3, 5.125, 6.0, 99.5, 0.25)]
    assert [p.name for p in tmp_path.iterdir()] == ["d.csv"]  # its temporary file was renamed into place


@pytest.mark.parametrize("layout_name", ["seqcsist", "csist100k"])
def test_export_public_predictions_writes_one_readable_file_per_scored_frame(tmp_path, layout_name):
    """export_public_predictions: one annotation per scored frame, named by ``frame_numbers``, in the
    release's layout; detections clipped to the image ``[-0.5, size - 0.5]``; the score column dropped. Read
    back with the project's own public reader (``parse_annotation``).

    The files spell each value as ``repr(float(np.float32(v)))`` (public_format's documented format), which
    parses back to the same float32 bits: the round trip is compared exactly against the float32 rounding of
    what was exported (and that rounding is within half a float32 ulp of the float64 input).
    """
    import numpy as np

    from seqcsist_jax.data.public_format import CSIST100K_LAYOUT, SEQCSIST_LAYOUT, parse_annotation
    from seqcsist_jax.evaluate import export_public_predictions

    size = 9  # not the default 11: the clipping and the written <width> must follow ``size``
    if layout_name == "seqcsist":
        layout, folder, prefix = None, "annotation", "COS"  # None: the default layout
        frame_numbers = np.array([[100, 101, 102, 103], [40, 41, 42, 43]])  # (N_traj, T)
        scored = [1, 2]
        detections = [  # trajectory n, k-th scored frame -> (K, 4) rows (x, y, brightness, score)
            [np.array([[1.1, 2.3456789012345, 230.123456789, 0.9], [-3.0, 9.7, 120.5, 0.5]]),
             np.zeros((0, 4))],
            [np.array([[8.6, -0.7, 99.25, 0.25]]), np.array([[4.0, 4.0, 1e-3, 0.1]])],
        ]
        # (file number, expected (x, y, b) rows after clipping to [-0.5, 8.5])
        want = {101: [[1.1, 2.3456789012345, 230.123456789], [-0.5, 8.5, 120.5]], 102: [],
                41: [[8.5, -0.5, 99.25]], 42: [[4.0, 4.0, 1e-3]]}
    else:
        layout, folder, prefix = CSIST100K_LAYOUT, "Annotations", "CSO"
        frame_numbers = np.array([[7], [0], [12345]])  # one image per "trajectory"
        scored = [0]
        detections = [[np.array([[4.9, 5.1, 221.7, 0.8], [5.2, 9.0, 240.0, 0.7]])], [np.zeros((0, 4))],
                      [np.array([[-1.0, 3.3, 250.0, 1.0]])]]
        want = {7: [[4.9, 5.1, 221.7], [5.2, 8.5, 240.0]], 0: [], 12345: [[-0.5, 3.3, 250.0]]}

    written = export_public_predictions(tmp_path, detections, frame_numbers, scored, size=size, layout=layout)
    assert written == len(want) == len(frame_numbers) * len(scored)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder]  # only the layout's annotation folder
    assert sorted(p.name for p in (tmp_path / folder).iterdir()) == sorted(f"{prefix}{n}.xml" for n in want)
    for number, rows in want.items():
        path = tmp_path / folder / f"{prefix}{number}.xml"
        text = path.read_text()
        assert f"<filename>{prefix}{number}</filename>" in text and f"<width>{size}</width>" in text
        got = parse_annotation(path, size=size)  # also checks every target lies inside the image
        expected = np.asarray(rows, np.float64).reshape(-1, 3)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected.astype(np.float32))  # exact: the documented text format
        np.testing.assert_allclose(got, expected, rtol=float(np.finfo(np.float32).eps) / 2, atol=0)
    # the default layout is SeqCSIST's; naming it explicitly writes the same files
    if layout_name == "seqcsist":
        again = tmp_path / "explicit"
        assert export_public_predictions(again, detections, frame_numbers, scored, size=size,
                                         layout=SEQCSIST_LAYOUT) == written
        for number in want:
            name = f"annotation/COS{number}.xml"
            assert (again / name).read_bytes() == (tmp_path / name).read_bytes()


@pytest.mark.parametrize("weights", [{"pretrained": "derefnet_quick"}, {"torch_checkpoint": "public.pth"}])
def test_a_checkpoint_choice_with_named_weights_is_refused_not_ignored(tmp_path, weights):
    # --checkpoint picks one of a training run's checkpoints; with named weights it would silently do nothing.
    with pytest.raises(cli.UsageError, match=r"--checkpoint=bset chooses a checkpoint of a training run's "
                                             r"--workdir; --(pretrained|torch_checkpoint) scores the weights"):
        evaluate_workdir(tmp_path / "out", checkpoint="bset", split="test", **weights)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_scoring_a_run_being_trained_says_so(run, tmp_path, capsys):
    """While a trainer holds the workdir (another live process), evaluate notes that it scores the best
    checkpoint so far and that the run will write its own result there when it finishes; not once it is gone."""
    import subprocess
    import sys

    workdir = tmp_path / "run"
    shutil.copytree(run[0], workdir)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from seqcsist_jax.run_lock import WorkdirLock; "
                               "WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
                               str(workdir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = evaluate_workdir(workdir, checkpoint="best", split="test")
        notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
        assert notes == [f"note: {workdir} is being trained now (PID {holder.pid} on {socket.gethostname()}): this "
                         f"scores its best checkpoint so far (step {result['step']}); the run writes its own result "
                         f"to {workdir / 'eval' / 'test'}/ when it finishes"]
        evaluate_workdir(workdir, checkpoint="3", split="test")  # not the run's result folder: no overwrite to say
        assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")] == [
            f"note: {workdir} is being trained now (PID {holder.pid} on {socket.gethostname()}): this scores its "
            "checkpoint of step 3"]
    finally:
        holder.kill()
        holder.wait()
    evaluate_workdir(workdir, checkpoint="best", split="test")  # the holder died (SIGKILL: its record stays)
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]


def test_live_holder_reads_the_lock_record(tmp_path):
    import subprocess
    import sys

    from seqcsist_jax.run_lock import LOCK_NAME, WorkdirLock, live_holder

    assert live_holder(tmp_path) is None  # no lock file
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / LOCK_NAME
    for text in ("", "{not json", '["a"]', json.dumps({"pid": "7", "host": socket.gethostname()}),
                 json.dumps({"pid": dead.pid, "host": socket.gethostname()})):  # released, damaged, a dead holder
        lock.write_text(text)
        assert live_holder(tmp_path) is None, text
    elsewhere = {"pid": dead.pid, "host": socket.gethostname() + "-another-host"}
    lock.write_text(json.dumps(elsewhere))
    assert live_holder(tmp_path) == elsewhere  # cannot be checked from here: taken to be alive
    with WorkdirLock(tmp_path):
        assert live_holder(tmp_path) is None  # this process itself
    assert lock.read_text() == "" and live_holder(tmp_path) is None  # released
