"""``experiments.export_weights`` says what is wrong with the run or the files in one ``error:`` line (exit 2, no
usage block, no traceback), keeps exports inside ``--weights_dir`` and never leaves a torn or mismatched pair.

The run is a ``config.json`` (and, where needed, a checkpoint folder name) or a stubbed ``restore_run``: these
tests check the command's error paths, not training (tests/test_pretrained.py exports a real run).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from experiments import configs, export_weights
from seqcsist_jax import pretrained


def _error_line(capsys, argv: list[str]) -> str:
    """Runs the command; asserts exit status 2 and exactly one ``error:`` line (no usage, no traceback)."""
    with pytest.raises(SystemExit) as stop:
        export_weights.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "usage:" not in err and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def run(tmp_path):
    """A workdir holding only a smoke run's ``config.json`` (a run that has not saved a checkpoint yet)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(configs.get_config("derefnet:smoke").to_dict()))
    return workdir


@pytest.fixture()
def trained(run, monkeypatch):
    """``run`` with ``restore_run`` stubbed to return params of the smoke model at step 6."""
    from seqcsist_jax import predictor

    config = configs.get_config("derefnet:smoke")
    rng = np.random.default_rng(0)  # random params of the model's shapes: no (slow) model.init on CPU
    params = pretrained._unflatten({k: rng.normal(size=shape).astype(np.float32)
                                    for k, shape in pretrained._expected_shapes(config).items()})
    q = np.ones((1089, 121), np.float32)
    monkeypatch.setattr(predictor, "restore_run",
                        lambda workdir, checkpoint: (config, types.SimpleNamespace(q=q), params, 6))
    return run


def _args(workdir, weights, *extra: str, name: str = "tiny") -> list[str]:
    return [f"--workdir={workdir}", f"--name={name}", "--command=train smoke", f"--weights_dir={weights}", *extra]


def test_unfinished_run_suggests_the_latest_checkpoint(run, tmp_path, capsys):
    """Item 6: no best checkpoint yet → one line; with a latest checkpoint it names --checkpoint=latest."""
    line = _error_line(capsys, _args(run, tmp_path / "w"))
    assert line.startswith("error: --checkpoint=best: no 'best' checkpoint in ") and "no other checkpoint" in line
    (run / "checkpoints" / "latest" / "6").mkdir(parents=True)  # the folder name is all the hint reads
    line = _error_line(capsys, _args(run, tmp_path / "w"))
    assert line.endswith("(an unfinished run: no validation has finished yet); pass --checkpoint=latest to export "
                         "its newest checkpoint (step 6)"), line
    assert not (tmp_path / "w").exists()


def test_missing_step_is_one_line_and_a_bad_checkpoint_value_is_a_usage_error(run, tmp_path, capsys):
    """Item 7; a --checkpoint that is no step, best or latest is a usage mistake (usage block, exit 2)."""
    line = _error_line(capsys, _args(run, tmp_path / "w", "--checkpoint=7"))
    assert line.startswith("error: --checkpoint=7: no checkpoint at step 7; latest steps"), line
    with pytest.raises(SystemExit) as stop:
        export_weights.main(_args(run, tmp_path / "w", "--checkpoint=bestest"))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "usage:" in err and "expected best, latest or a step number" in err


@pytest.mark.parametrize("name", ["../evil", "sub/evil", "..", ".", ".evil", "", "evil.npz"])
def test_names_that_are_not_a_plain_file_stem_are_refused(trained, tmp_path, capsys, name):
    """Item 8: nothing is written outside --weights_dir (or anywhere)."""
    weights = tmp_path / "weights"
    line = _error_line(capsys, _args(trained, weights, name=name))
    assert line.startswith(f"error: --name={name}: ") and ("plain file stem" in line or "stem only" in line), line
    assert not weights.exists() and not list(tmp_path.glob("*.npz")) and not (tmp_path / "evil.json").exists()


def test_path_name_from_the_command_line_is_one_line(tmp_path):
    """Items 8 and 9 as a user sees them: the real command, exit 2, one line, no usage block."""
    proc = subprocess.run([sys.executable, "-m", "experiments.export_weights", f"--workdir={tmp_path / 'run'}",
                           "--name=../evil", "--command=x", f"--weights_dir={tmp_path / 'weights'}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "error: --name=../evil: '../evil' contains a path separator; expected a plain file stem such as "
        "derefnet_quick (choose the folder with --weights_dir)"], proc.stderr
    assert not (tmp_path / "evil.npz").exists()


def test_run_and_file_errors_print_no_usage_block(run, tmp_path, capsys):
    """Item 9: a directory that is no run, and an existing name, are one line each (usage is for typos)."""
    line = _error_line(capsys, _args(tmp_path / "nothing", tmp_path / "w"))
    assert "no config.json there" in line
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "tiny.npz").write_bytes(b"x")
    line = _error_line(capsys, _args(run, weights))
    assert line == (f"error: --name=tiny: {weights / 'tiny.npz'} exists already (without its card tiny.json: left "
                    "by an interrupted export or copy?); pass --overwrite to replace it, or choose another name")
    with pytest.raises(SystemExit) as stop:  # a missing required flag stays argparse's usage error
        export_weights.main([f"--workdir={run}", "--name=x"])
    assert stop.value.code == 2 and "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("fault, expected", [
    (errno.ENOSPC, "No space left on device ({npz}): the disk is full; free space and export again"),
    (errno.EROFS, "Read-only file system ({npz}): cannot write the weights there; choose a writable --weights_dir"),
], ids=["disk-full", "read-only"])
def test_write_errors_are_one_line_and_leave_nothing(trained, tmp_path, capsys, monkeypatch, fault, expected):
    """Item 9: OSErrors while writing (full disk, read-only folder) → one line naming the file; no temporaries."""
    weights = tmp_path / "weights"

    def failing(*args, **kwargs):
        raise OSError(fault, os.strerror(fault))

    monkeypatch.setattr(np, "savez_compressed", failing)
    line = _error_line(capsys, _args(trained, weights))
    assert line.startswith("error: " + expected.format(npz=weights / "tiny.npz")), line
    assert not list(weights.iterdir())


def test_weights_dir_that_is_a_file_is_one_line(trained, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    line = _error_line(capsys, _args(trained, tmp_path / "file"))
    assert "--weights_dir=" in line and "must be a folder" in line, line


def test_bad_run_records_name_the_file_and_line(trained, tmp_path, capsys):
    (trained / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    line = _error_line(capsys, _args(trained, tmp_path / "w"))
    assert line.startswith(f"error: {trained / 'metrics.jsonl'}, line 2: not a metrics record"), line
    (trained / "metrics.jsonl").write_text('{"step": 1}\n{"step": ')  # a torn last line: skipped, as training does
    assert export_weights.main(_args(trained, tmp_path / "w")) == tmp_path / "w" / "tiny.npz"


def test_an_interrupted_export_leaves_no_usable_mismatched_pair(trained, tmp_path, capsys, monkeypatch):
    """Killed after the .npz and before the card: a new name has an .npz without a card (refused by evaluate,
    and by a second export without --overwrite); a replaced name keeps its old card, which no longer matches."""
    weights = tmp_path / "weights"
    assert export_weights.main(_args(trained, weights)) == weights / "tiny.npz"
    pretrained.load_pretrained("tiny", weights_dir=weights)
    old_card = (weights / "tiny.json").read_text()
    assert json.loads(old_card)["npz_sha256"] == pretrained._sha256(weights / "tiny.npz")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    from seqcsist_jax import predictor

    config, stub, params, step = predictor.restore_run(str(trained), "best")
    with monkeypatch.context() as patch:
        patch.setattr(pretrained, "atomic_write_json", killed)
        patch.setattr(predictor, "restore_run", lambda workdir, checkpoint: (
            config, stub, jax.tree_util.tree_map(lambda x: x * 2, params), step))  # a later, better checkpoint
        with pytest.raises(KeyboardInterrupt):
            export_weights.main(_args(trained, weights, "--overwrite"))
        with pytest.raises(KeyboardInterrupt):
            export_weights.main(_args(trained, weights, name="fresh"))
    assert sorted(p.name for p in weights.iterdir()) == ["fresh.npz", "tiny.json", "tiny.npz"]  # no temporaries
    assert (weights / "tiny.json").read_text() == old_card
    with pytest.raises(pretrained.WeightsFileError, match="is not the file its model card tiny.json was"):
        pretrained.load_pretrained("tiny", weights_dir=weights)
    with pytest.raises(FileNotFoundError, match=r"the model card .*fresh.json of .*fresh.npz is missing"):
        pretrained.resolve(str(weights / "fresh.npz"))
    line = _error_line(capsys, _args(trained, weights, name="fresh"))
    assert "fresh.npz exists already (without its card fresh.json" in line
    assert export_weights.main(_args(trained, weights, "--overwrite", name="fresh")) == weights / "fresh.npz"
    assert pretrained.available(weights) == ["fresh", "tiny"]
