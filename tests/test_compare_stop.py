"""Stopping ``experiments.compare``: Ctrl-C or SIGTERM stops the whole table (not only the row that was
training), the stopped rows keep a checkpoint, and no worker process outlives the table."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import types
import uuid

import pytest

from experiments import compare
from seqcsist_jax import train as train_lib
from seqcsist_jax.train import TrainingInterrupted

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_request_during_a_serial_row_stops_the_table(tmp_path, monkeypatch, capsys, signum):
    called = []

    def interrupted_row(name, args, workdir):
        called.append(name)
        raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} at step 3 of 9; checkpoint saved",
                                  signum=signum)

    monkeypatch.setattr(compare, "run_method", interrupted_row)
    with pytest.raises(SystemExit) as stop:
        compare.main(["--methods=srcnn,espcn", "--variant=smoke", "--budget_steps=9", f"--workdir={tmp_path}"])
    assert stop.value.code == 128 + signum  # as if the signal had ended the process
    assert called == ["srcnn"]  # the next row never started
    err = capsys.readouterr().err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "run the same command again" in err
    for sig in (signal.SIGTERM, signal.SIGINT):  # the caller's handlers are back
        assert signal.getsignal(sig) is not compare._raise_stopped


def test_a_stopped_table_names_its_unfinished_rows(tmp_path, monkeypatch, capsys):
    def row(name, args, workdir):
        if name == "srcnn":
            raise RuntimeError("diverged")  # a finished (failed) row
        (workdir / "checkpoints" / "latest" / "7").mkdir(parents=True)  # the checkpoint the stopped row saved
        raise TrainingInterrupted("stopped by SIGTERM at step 7 of 9; checkpoint saved", signum=signal.SIGTERM)

    monkeypatch.setattr(compare, "run_method", row)
    with pytest.raises(SystemExit):
        compare.main(["--methods=srcnn,espcn,ista", "--variant=smoke", "--budget_steps=9", f"--workdir={tmp_path}"])
    err = capsys.readouterr().err
    assert "(1 of 3 rows finished; stopped: espcn (step 7); not started: ista)" in err
    table = (tmp_path / "compare.md").read_text()
    assert "| ESPCN | stopped; resumes from step 7 (rerun the command) |" in table
    assert "| ISTA | not started (rerun the command) |" in table
    assert "| SRCNN | failed: RuntimeError: diverged |" in table
    def no_bare_constants(word):
        raise AssertionError(f"compare.json holds {word}, which strict JSON readers reject")

    text = (tmp_path / "compare.json").read_text()
    rows = {r["method"]: r for r in json.loads(text, parse_constant=no_bare_constants)["rows"]}
    assert rows["espcn"]["unfinished"] == "stopped; resumes from step 7" and rows["espcn"]["steps"] == 7
    assert rows["espcn"]["mAP"] is None and rows["srcnn"]["AP05"] is None  # no metrics: null, not NaN
    assert rows["ista"]["unfinished"] == "not started" and "unfinished" not in rows["srcnn"]


def test_a_resumed_rows_time_counts_the_earlier_calls_training(tmp_path, monkeypatch):
    from seqcsist_jax import train as train_module

    earlier = 1000.0  # training seconds the checkpoint it resumed from had recorded

    def resumed_run(config, workdir):
        test = {"params": 5, "fps": 10.0, **{k: 0.5 for k in compare.METRICS}}
        return {"step": 9, "best": {"mAP": 0.5}, "test": test, "train_seconds": earlier + 2.0,
                "resumed_train_seconds": earlier}

    monkeypatch.setattr(train_module, "train_and_evaluate", resumed_run)
    monkeypatch.setattr(compare, "learned_flops", lambda method, frames: 1.0)
    args = compare.parse_args(["--methods=srcnn", "--variant=smoke", "--budget_steps=9", f"--workdir={tmp_path}"])
    start = time.perf_counter()
    row = compare.run_method("srcnn", args, tmp_path / "srcnn")
    this_call = time.perf_counter() - start
    assert earlier < row["seconds"] <= earlier + this_call
    assert row["train_seconds"] == earlier + 2.0


def test_a_failing_row_still_lets_the_table_go_on(tmp_path, monkeypatch):
    called = []

    def failing_row(name, args, workdir):
        called.append(name)
        raise RuntimeError("diverged")

    monkeypatch.setattr(compare, "run_method", failing_row)
    rows = compare.main(["--methods=srcnn,espcn", "--variant=smoke", "--budget_steps=9", f"--workdir={tmp_path}"])
    assert called == ["srcnn", "espcn"]
    assert [r["error"] for r in rows["rows"]] == ["RuntimeError: diverged"] * 2


def test_stop_workers_sends_one_sigterm_and_waits(capsys):
    class FakeWorker:
        def __init__(self, alive):
            self.alive, self.calls = alive, []

        def is_alive(self):
            return self.alive

        def terminate(self):
            self.calls.append("terminate")

        def kill(self):
            self.calls.append("kill")

        def join(self):
            self.calls.append("join")

    running, finished = FakeWorker(True), FakeWorker(False)
    compare._stop_workers([running, finished])
    assert running.calls == ["terminate", "join"] and finished.calls == []
    assert "stopping 1 running row(s)" in capsys.readouterr().err


def _marked_pids(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (the table and the workers it spawned)."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "\nState:\tZ" not in status:  # a zombie has exited already
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.5)


def _training_started(row: pathlib.Path) -> bool:
    metrics = row / "metrics.jsonl"
    return metrics.exists() and '"split": "train"' in metrics.read_text()


def _checkpoint_steps(row: pathlib.Path) -> list[int]:
    latest = row / "checkpoints" / "latest"
    return sorted(int(p.name) for p in latest.glob("*") if p.name.isdigit()) if latest.exists() else []


def test_a_repeated_stop_signal_is_one_request_unless_it_comes_later(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(train_lib, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    stop = train_lib._StopSignals()
    stop._handle(signal.SIGTERM, None)
    assert stop.received == signal.SIGTERM
    clock[0] += 0.5 * train_lib.REPEAT_SIGNAL_GRACE_SECONDS
    stop._handle(signal.SIGTERM, None)  # `timeout` signals the command, then its group: the same request
    assert stop.received == signal.SIGTERM
    clock[0] += train_lib.REPEAT_SIGNAL_GRACE_SECONDS
    with pytest.raises(KeyboardInterrupt):  # asked again later: stop at once
        stop._handle(signal.SIGINT, None)


def test_the_table_counts_a_repeated_stop_signal_once(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(compare, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(compare, "_stop_requested_at", [])
    with pytest.raises(compare.Stopped) as first:
        compare._raise_stopped(signal.SIGTERM, None)
    assert first.value.signum == signal.SIGTERM and isinstance(first.value, KeyboardInterrupt)
    clock[0] += 0.5 * train_lib.REPEAT_SIGNAL_GRACE_SECONDS
    compare._raise_stopped(signal.SIGTERM, None)  # the same request: ignored
    clock[0] += train_lib.REPEAT_SIGNAL_GRACE_SECONDS
    with pytest.raises(compare.Stopped):  # asked again later: _stop_workers then kills at once
        compare._raise_stopped(signal.SIGINT, None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find leftover workers")
@pytest.mark.parametrize("how", ["sigterm_twice", "sigkill"])
def test_stopping_a_jobs_table_leaves_checkpoints_and_no_worker(tmp_path, how):
    """A real ``--jobs=2`` table, stopped while both rows train: by two SIGTERMs, as ``timeout`` sends one to the
    command and then one to its process group (one stop: each worker is told once and checkpoints), or by a
    SIGKILL of the table (the workers learn of it from the kernel, and checkpoint)."""
    marker = f"SEQCSIST_TEST_MARKER={uuid.uuid4().hex}"
    env = dict(os.environ, SEQCSIST_TEST_MARKER=marker.split("=", 1)[1], JAX_PLATFORMS="cpu")
    workdir = tmp_path / "runs"
    command = [sys.executable, "-m", "experiments.compare", "--methods=srcnn,espcn", "--variant=smoke",
               "--budget_steps=100000", "--evals=1", "--jobs=2", f"--workdir={workdir}",
               f"--output={tmp_path / 'table'}", "--config.log_every_steps=1", "--config.progress_bar=False"]
    table = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    lines: list[str] = []
    stopping = threading.Event()

    def read_stderr() -> None:  # drained all along, so a full pipe never blocks the table
        for line in table.stderr:
            lines.append(line)
            if line.startswith("stopping 2 running row(s)"):
                stopping.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        rows = [workdir / "srcnn", workdir / "espcn"]
        _wait(lambda: all(_training_started(r) for r in rows) or table.poll() is not None, 240,
              "both rows to log a training step")
        assert table.poll() is None, "".join(lines)
        if how == "sigterm_twice":
            table.send_signal(signal.SIGTERM)
            # the repeat lands while the workers are saving their checkpoints, where a second request would kill
            stopping.wait(60)
            table.send_signal(signal.SIGTERM)
        else:
            table.send_signal(signal.SIGKILL)
        table.wait(timeout=240)
        reader.join(timeout=240)
        err = "".join(lines)
        if how == "sigterm_twice":
            assert table.returncode == 128 + signal.SIGTERM, err
            assert "interrupted by SIGTERM" in err and "stopping 2 running row(s)" in err
            assert "Traceback" not in err, err  # a stop is not a failure
        else:
            assert table.returncode == -signal.SIGKILL
        _wait(lambda: not _marked_pids(marker), 240, "the workers to exit")
        for row in rows:  # each worker saved its progress before it exited
            assert _checkpoint_steps(row), f"{row.name}: no checkpoint\n{err[-3000:]}"
            assert "stopped by SIGTERM" in (row / ".compare_result.json").read_text()
    finally:
        if table.poll() is None:
            table.kill()
        for pid in _marked_pids(marker):
            os.kill(pid, signal.SIGKILL)
