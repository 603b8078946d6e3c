"""Methods that are not part of the package: ``config.model.name = "module:build_fn"`` or
``"path/to/file.py:build_fn"`` (README: Adding a method), trained, re-scored and compared like built-in ones."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import compare, configs
from seqcsist_jax import methods
from seqcsist_jax import train as train_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "experiments" / "examples" / "tiny_method.py"


def _run(args, cwd=REPO, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_unknown_model_names_get_one_line_with_the_nearest_name():
    with pytest.raises(methods.UnknownMethodError, match=r"unknown model 'srcnnn' \(did you mean 'srcnn'\?\)"):
        methods.check_method_name("srcnnn")
    # papers' spellings find their table names (edit distance alone sends "distanet" to "istanet")
    for spelt, name in (("distanet", "dista"), ("DISTA-Net", "dista"), ("ISTA-Net+", "istanet_plus"),
                        ("ISTA-Net++", "istanet_pp"), ("DeRefNet", "derefnet"), ("FISTA-Net", "fistanet")):
        with pytest.raises(methods.UnknownMethodError, match=rf"unknown model '{re.escape(spelt)}' "
                                                             rf"\(did you mean '{name}'\?\)"):
            methods.check_method_name(spelt)
    with pytest.raises(methods.UnknownMethodError) as info:
        methods.check_method_name("zzz")
    assert "did you mean" not in str(info.value)
    with pytest.raises(methods.UnknownMethodError, match="cannot import the builder 'no_such_pkg.mod:build'"):
        methods.method_builder("no_such_pkg.mod:build")
    with pytest.raises(methods.UnknownMethodError, match="defines no function 'build_nothing'"):
        methods.check_method_name("seqcsist_jax.baselines.srnets:build_nothing")
    with pytest.raises(methods.UnknownMethodError, match="not found"):
        methods.check_method_name("/no/such/file.py:build")
    assert issubclass(methods.UnknownMethodError, ValueError)


def test_an_import_target_builds_the_same_method_as_its_table_entry():
    config = configs.get_config("srcnn:smoke")
    by_table = methods.build_method(config.model, config.loss)
    config.model.name = "seqcsist_jax.baselines.srnets:build_srcnn"
    by_target = methods.build_method(config.model, config.loss)
    assert by_target.model == by_table.model and by_target.loss_fn is by_table.loss_fn


def test_a_file_target_is_loaded_once_per_process(tmp_path):
    path = tmp_path / "mine.py"
    shutil.copy(EXAMPLE, path)
    first = methods.method_builder(f"{path}:build_tiny")
    assert methods.method_builder(f"{path}:build_tiny") is first
    method = first(configs.get_config(f"{path}:smoke").model, None)
    assert method.model.channels == 4


def test_train_refuses_an_unknown_model_before_the_workdir_exists(tmp_path):
    workdir = tmp_path / "w"
    proc = _run(["-m", "experiments.train", "--config=srcnn:smoke", f"--workdir={workdir}",
                 "--config.model.name=srcnnn"])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: config.model.name: unknown model 'srcnnn'"), lines
    assert "did you mean 'srcnn'" in lines[0]
    assert not workdir.exists()


def test_negative_checkpoint_interval_is_refused_before_the_workdir_exists(tmp_path):
    workdir = tmp_path / "w"
    proc = _run(["-m", "experiments.train", "--config=srcnn:smoke", f"--workdir={workdir}",
                 "--config.checkpoint_every_steps=-3"])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "config.checkpoint_every_steps must be >= 0" in lines[0]
    assert not workdir.exists()


def test_a_method_in_its_own_file_trains_and_is_rescored_from_its_workdir(tmp_path):
    # A copy outside the repository: nothing about the example depends on living in experiments/.
    path = tmp_path / "my_method.py"
    shutil.copy(EXAMPLE, path)
    workdir = tmp_path / "run"
    result = train_lib.train_and_evaluate(configs.get_config(f"{path}:smoke"), workdir)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["name"] == f"{path}:build_tiny"
    trained = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
    assert result["step"] == 6
    # A new process knows the method only from config.json: evaluate imports the builder from the file again.
    shutil.rmtree(workdir / "eval")
    proc = _run(["-m", "experiments.evaluate", f"--workdir={workdir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rescored = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
    # Same checkpoint, same data, same jitted predictor: the maps, hence every AP, are reproduced exactly.
    for key in ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25"):
        assert rescored[key] == trained[key] or (np.isnan(rescored[key]) and np.isnan(trained[key])), key


def test_compare_takes_config_files_as_rows(tmp_path):
    path = tmp_path / "tiny.py"
    shutil.copy(EXAMPLE, path)
    workdir = tmp_path / "cmp"
    out = compare.main([f"--methods=srcnn,{path}", "--variant=smoke", "--budget_steps=3", "--evals=1",
                        f"--workdir={workdir}"])
    rows = {row["label"]: row for row in out["rows"]}
    assert set(rows) == {"SRCNN", "tiny"} and rows["tiny"]["steps"] == 3 and not rows["tiny"].get("error")
    assert (workdir / "tiny" / compare.ROW_FILE).is_file()
    assert "| tiny |" in (workdir / "compare.md").read_text()


def test_compare_rows_from_files_are_checked_before_anything_runs(tmp_path):
    base = [f"--workdir={tmp_path / 'cmp'}", "--budget_steps=1"]
    with pytest.raises(SystemExit, match="config file\\(s\\) not found: nowhere/mine.py"):
        compare.parse_args(["--methods=srcnn,nowhere/mine.py", *base])
    other = tmp_path / "sub" / "srcnn.py"
    other.parent.mkdir()
    shutil.copy(EXAMPLE, other)
    with pytest.raises(SystemExit, match="would share the run directory 'srcnn'"):
        compare.parse_args([f"--methods=srcnn,{other}", *base])
    with pytest.raises(SystemExit, match="unknown method 'srcnnn' \\(did you mean 'srcnn'\\?\\)"):  # named before the missing budget
        compare.parse_args(["--methods=srcnnn", f"--workdir={tmp_path}"])
    args = compare.parse_args([f"--methods={other}@public_loss", *base, "--method_steps=srcnn=1"])
    assert compare.row_name(args.methods[0]) == "srcnn@public_loss"
    assert compare.row_dir(tmp_path, args.methods[0]) == tmp_path / "srcnn@public_loss"
    assert compare.row_steps(args.methods[0], args) == 1
