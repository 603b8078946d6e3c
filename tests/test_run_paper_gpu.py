"""experiments/benchmarks/run_paper_gpu.sh: the paper config on in-memory seqcsist/default-style data, stopped by
its time limit with a checkpoint and resumed by the same command (a tiny model and split so it runs on CPU)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "run_paper_gpu.sh"
TINY = ["--config.model.num_stages=1", "--config.model.channels=4", "--config.dataset.num_train=8",
        "--config.dataset.num_eval=2", "--config.dataset.num_test=2",
        "--config.dataset.simulate.frames_per_trajectory=8",
        "--config.num_train_steps=4", "--config.steps_per_call=2", "--config.eval_every_steps=4",
        "--config.progress_bar=False"]


def _run(workdir, seconds, *extra):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), str(workdir), str(seconds), *TINY, *extra], env=env,
                          cwd=SCRIPT.parents[2], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_runs_the_paper_protocol_on_simulated_default_splits(tmp_path):
    # SECONDS left out before the overrides (the same as 0: no time limit)
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "run"), *TINY], env=env, cwd=SCRIPT.parents[2],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["num_stages"] == 1  # the overrides reached the run
    # the paper protocol of --config=derefnet, on the in-memory data (sizes overridden by TINY here)
    assert config["dataset"]["name"] == "simulated" and config["global_batch_size"] == 4
    assert config["sampler"] == "public" and config["dataset"]["collision"] == "overwrite"
    assert config["checkpoint_every_steps"] == 0
    assert (tmp_path / "run" / "eval" / "test" / "metrics.json").exists()


def test_time_limit_exits_cleanly_and_the_same_command_then_finishes(tmp_path):
    # the limit lands before training ends: the script reports the stop and exits 0 (where the stop lands, with
    # or without a checkpoint, depends on the machine's speed; resuming from one is tested in test_train)
    out = _run(tmp_path / "run", 1)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stopped at the 1s limit as asked" in out.stdout and not (tmp_path / "run" / "result.json").exists()
    out = _run(tmp_path / "run", 0)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((tmp_path / "run" / "result.json").read_text())


def test_usage_error_without_workdir():
    for args in ([], ["--config.seed=1"]):
        out = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr.startswith("usage: run_paper_gpu.sh WORKDIR")
