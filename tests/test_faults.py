"""A training run survives kills, signals, leftovers and damage, and ends exactly as an uninterrupted run.

One ``derefnet:smoke`` schedule of 9 steps with evaluations at 3, 6 and 9 is run uninterrupted (the reference)
and then through a chain of faults in one workdir: SIGTERM, kills at each moment of the evaluation commit order
(``SEQCSIST_FAULT`` hook; in-process they raise instead of SIGKILL, and one real SIGKILL runs in a subprocess),
leftover orbax temporary folders, a torn ``metrics.jsonl`` line and a damaged newest checkpoint. Validation
CSO-mAP is pinned per step (3 → 0.2, 6 → 0.4, 9 → 0.3) so that the best decision is not trivial: the right
answer is step 6, an earlier or later checkpoint is wrong.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import configs
from seqcsist_jax import checkpointing
from seqcsist_jax import train as train_lib
from seqcsist_jax.checkpointing import RunCheckpoints
from seqcsist_jax.metric_writers import read_metrics
from seqcsist_jax.run_lock import WorkdirLock, WorkdirLockedError

REPO = pathlib.Path(__file__).resolve().parents[1]
VAL_MAP = {3: 0.2, 6: 0.4, 9: 0.3}
BEST_STEP = 6


def fault_config(**overrides):
    config = configs.get_config("derefnet:smoke")
    config.num_train_steps = 9
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 0  # 0 = only at evaluations, on the interval, at the end and on signals
    config.checkpoint_every_seconds = 0.0
    for key, value in overrides.items():
        config[key] = value
    return config


def pin_validation_map(monkeypatch_or_none=None):
    """Validation CSO-mAP := VAL_MAP[step] (the step read from the loader position, which checkpoints restore)."""
    original = train_lib.Trainer.evaluate

    def evaluate(self, params, split, max_trajectories=None, **options):
        out = original(self, params, split, max_trajectories, **options)
        if split == self.config.dataset.eval_split:
            position = self.loader.get_state()
            out = {**out, "mAP": VAL_MAP[position["epoch"] * self.steps_per_epoch + position["position"]]}
        return out

    if monkeypatch_or_none is None:
        train_lib.Trainer.evaluate = evaluate
    else:
        monkeypatch_or_none.setattr(train_lib.Trainer, "evaluate", evaluate)


def run_in_subprocess(workdir: str) -> None:
    """Entry point of the real-SIGKILL subprocess (same patch as the in-process runs)."""
    pin_validation_map()
    train_lib.train_and_evaluate(fault_config(), workdir)


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after the fault point runs except ``finally`` blocks, none of
    which commit anything."""


@pytest.fixture
def faults(monkeypatch):
    """``faults(name, step)`` arms the SEQCSIST_FAULT hook for the next run; it raises Killed instead of
    SIGKILLing the test process."""
    monkeypatch.setattr(checkpointing, "_die", lambda: (_ for _ in ()).throw(Killed()))

    def arm(name: str, step: int) -> None:
        monkeypatch.setenv(checkpointing.FAULT_ENV, f"{name}:step={step}")

    return arm


def final_params(workdir):
    ckpt = RunCheckpoints(workdir)
    params, step = ckpt.restore_params("latest")
    ckpt.close()
    return jax.device_get(params), step


def scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0 and isinstance(v, (int, float, np.number))}


def untimed(tree):
    """``tree`` without wall-clock entries (``decode_seconds``, ``fps``, the table row), which differ per run."""
    if isinstance(tree, dict):
        return {k: untimed(v) for k, v in tree.items() if "second" not in k and k not in ("fps", "table_row")}
    return tree


def same(a, b) -> bool:
    """Exact equality of everything but timings, NaN equal to NaN (untrained smoke metrics hold NaNs)."""
    dump = lambda x: json.dumps(untimed(x), sort_keys=True, default=float)  # noqa: E731
    return dump(a) == dump(b)


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Every run of this module compiles the same programs: a persistent cache compiles them once (an executable
    from the cache is the same program, so no number changes)."""
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    old = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                "jax_persistent_cache_min_compile_time_secs",
                                                "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    os.environ["SEQCSIST_TEST_JAX_CACHE"] = cache
    yield cache
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    pin_validation_map(mp)
    try:
        workdir = tmp_path_factory.mktemp("reference")
        # Checkpointing every step (wall-clock interval ~0) must not change any number.
        result = train_lib.train_and_evaluate(fault_config(checkpoint_every_seconds=1e-9), workdir)
    finally:
        mp.undo()
    ckpt = RunCheckpoints(workdir)
    assert ckpt.latest.all_steps() == [8, 9]  # the interval checkpoint ran at every step (keep=2)
    assert ckpt.best.all_steps() == [BEST_STEP] and ckpt.best_step() == BEST_STEP
    ckpt.close()
    return workdir, result


@pytest.mark.slow
def test_fault_chain_ends_exactly_as_uninterrupted(reference, tmp_path, monkeypatch, faults, caplog, capsys):
    ref_dir, ref = reference
    assert ref["best"]["mAP"] == VAL_MAP[BEST_STEP]
    pin_validation_map(monkeypatch)
    run = tmp_path / "run"
    ckpt_dir = run / "checkpoints"

    # 1. SIGTERM at step 2: checkpoint saved, clean stop.
    def sigterm_at_2(step, _):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    previous_handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(train_lib.TrainingInterrupted, match=r"SIGTERM at step 2 of 9"):
        train_lib.train_and_evaluate(fault_config(), run, hooks=[sigterm_at_2])
    assert signal.getsignal(signal.SIGTERM) == previous_handler  # the run's handler is removed again
    assert RunCheckpoints(run).latest.all_steps() == [2]
    said = capsys.readouterr()
    assert "SIGTERM" not in said.out  # the stop is said once, by the exception (the error line),
    # after one line on stderr the moment the signal arrives (the step in flight may take seconds)
    assert said.err.count("SIGTERM received: stopping after the current step") == 1, said.err

    # 2. Killed after best/3 is saved, before latest/3: the evaluation at 3 is journaled but not committed.
    faults("after_best_save", 3)
    with pytest.raises(Killed):
        train_lib.train_and_evaluate(fault_config(), run)
    ckpt = RunCheckpoints(run)
    assert ckpt.latest.all_steps() == [2] and ckpt.best.all_steps() == [3]
    assert "3" in ckpt.journal()["evals"]
    ckpt.close()

    # Leftovers of a killed orbax save and a torn metrics line (a write cut by a full disk).
    leftover = ckpt_dir / "best" / "3.orbax-checkpoint-tmp-1700000000"
    (leftover / "state").mkdir(parents=True)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "valid')
    torn_line = (run / "metrics.jsonl").read_text().count("\n") + 1

    # 3. Resumes from 2 (eval at 3 redone), then killed right after the evaluation at 6 is journaled.
    faults("after_eval_commit", 6)
    with caplog.at_level(logging.WARNING), pytest.raises(Killed):
        train_lib.train_and_evaluate(fault_config(), run)
    assert not leftover.exists() and str(leftover) in caplog.text
    assert f"{run / 'metrics.jsonl'}, line {torn_line}" in caplog.text
    ckpt = RunCheckpoints(run)
    assert ckpt.latest.all_steps() == [2, 3] and ckpt.best.all_steps() == [3]
    assert ckpt.journal()["best_step"] == 6  # journaled, but neither best/6 nor latest/6 exist
    ckpt.close()

    # 4. The newest checkpoint is damaged: fall back to step 2 with a warning naming the folder; killed after
    #    latest/6 is saved, before the older best folder is dropped.
    shutil.rmtree(ckpt_dir / "latest" / "3" / "state")
    caplog.clear()
    faults("after_latest_save", 6)
    with caplog.at_level(logging.WARNING), pytest.raises(Killed):
        train_lib.train_and_evaluate(fault_config(), run)
    assert str(ckpt_dir / "latest" / "3") in caplog.text
    assert (ckpt_dir / "damaged" / "latest-3").is_dir()
    ckpt = RunCheckpoints(run)
    assert ckpt.latest.all_steps() == [3, 6] and ckpt.best.all_steps() == [3, 6]
    ckpt.close()

    # 5. Runs to the end.
    monkeypatch.delenv(checkpointing.FAULT_ENV)
    result = train_lib.train_and_evaluate(fault_config(), run)

    ckpt = RunCheckpoints(run)
    assert ckpt.best.all_steps() == [BEST_STEP] and ckpt.best_step() == BEST_STEP
    assert same(ckpt.journal(), RunCheckpoints(ref_dir).journal())
    ckpt.close()
    assert same(result["best"], ref["best"])
    assert same(scalars(result["test"]), scalars(ref["test"]))
    params, step = final_params(run)
    ref_params, ref_step = final_params(ref_dir)
    assert step == ref_step == 9
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, ref_params)  # bitwise on one machine
    assert [(r["step"], r["mAP"]) for r in read_metrics(run / "metrics.jsonl") if r["split"] != "train"] == [
        (s, VAL_MAP[s]) for s in (3, 6, 9)
    ]
    result_json = json.loads((run / "result.json").read_text())
    assert result_json["best"]["mAP"] == VAL_MAP[BEST_STEP]


@pytest.mark.slow
def test_real_sigkill_after_best_save_before_latest_then_resume(reference, tmp_path, monkeypatch):
    ref_dir, ref = reference
    run = tmp_path / "run"
    env = {**os.environ, checkpointing.FAULT_ENV: "after_best_save:step=6", "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": os.environ["SEQCSIST_TEST_JAX_CACHE"],
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    killed = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.test_faults import run_in_subprocess; "
         "run_in_subprocess(sys.argv[1])", str(run)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpt = RunCheckpoints(run)
    assert ckpt.latest.all_steps() == [3] and ckpt.best.all_steps() == [3, 6]  # best/6 not yet committed
    ckpt.close()
    pin_validation_map(monkeypatch)
    monkeypatch.delenv(checkpointing.FAULT_ENV, raising=False)
    result = train_lib.train_and_evaluate(fault_config(), run)
    assert same(result["best"], ref["best"])
    assert same(scalars(result["test"]), scalars(ref["test"]))
    jax.tree_util.tree_map(np.testing.assert_array_equal, final_params(run)[0], final_params(ref_dir)[0])


def test_second_trainer_on_a_workdir_exits_at_once_naming_the_holder(tmp_path):
    with WorkdirLock(tmp_path):
        with pytest.raises(WorkdirLockedError, match=rf"{tmp_path}.*PID {os.getpid()}"):
            train_lib.train_and_evaluate(fault_config(), tmp_path)
        assert not (tmp_path / "config.json").exists()  # refused before writing anything
        cli = subprocess.run([sys.executable, "-m", "experiments.train", "--config=derefnet:smoke",
                              f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert cli.returncode == 2
    lines = [line for line in cli.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(tmp_path) in lines[0] and f"PID {os.getpid()}" in lines[0]
    assert "Traceback" not in cli.stderr


@pytest.mark.parametrize("field,value", [("checkpoint_every_steps", -1), ("checkpoint_every_seconds", -5.0)])
def test_negative_checkpoint_intervals_are_clear_errors(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"config.{field} must be >= 0"):
        train_lib.train_and_evaluate(fault_config(**{field: value}), tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_zero_intervals_are_accepted():
    assert train_lib._checkpoint_intervals(fault_config()) == (0, 0.0)
    assert train_lib._checkpoint_intervals(configs.get_config("derefnet")) == (1000, 300.0)
