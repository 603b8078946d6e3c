"""Checkpoint, journal, lock and metrics-file faults on small hand-made states (no training; seconds).

The training-level guarantees (kills at precise moments, SIGTERM, resume equality) are in test_faults.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from seqcsist_jax import checkpointing
from seqcsist_jax.checkpointing import CheckpointError, CheckpointWriteError, RunCheckpoints, abstract_like
from seqcsist_jax.metric_writers import MetricsFileError, MetricWriter, drop_torn_last_line, read_metrics
from seqcsist_jax.run_lock import WorkdirLock, WorkdirLockedError
from tests.small_disk import mount_tmpfs, unmount

REPO = pathlib.Path(__file__).resolve().parents[1]


def make_state(seed: int = 0, width: int = 4, size: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 1, width)).astype(np.float32),
                       "bias": rng.normal(size=(width,)).astype(np.float32)},
              "dense": {"kernel": rng.normal(size=(size, 2)).astype(np.float32)}}
    opt_state = {"mu": jax.tree_util.tree_map(lambda x: x * 0.5, params), "count": np.asarray(seed, np.int32)}
    return {"params": params, "opt_state": opt_state, "step": np.asarray(seed, np.int32)}


def save(ckpt: RunCheckpoints, step: int, seed: int | None = None, **kw) -> dict:
    state = make_state(step if seed is None else seed, **kw)
    ckpt.save_latest(step, state, {"position": step}, {"note": "test"})
    return state


def assert_tree_equal(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_save_restore_roundtrip_with_checksums(tmp_path):
    ckpt = RunCheckpoints(tmp_path)
    state = save(ckpt, 3)
    restored, loader, meta, step = ckpt.restore("latest", abstract_like(state))
    assert step == 3 and loader == {"position": 3}
    assert_tree_equal(restored, state)
    assert meta["params_sha256"] == checkpointing.tree_checksum(state["params"])
    assert meta["opt_state_sha256"] == checkpointing.tree_checksum(state["opt_state"])
    params, _ = ckpt.restore_params("latest")
    assert_tree_equal(params, state["params"])
    ckpt.close()


def test_restore_in_a_new_process_view_logs_no_orbax_warnings(tmp_path, caplog):
    """A restart opens the workdir with fresh managers and reads item metadata before restoring (the parameter
    shape check); with the handlers named up front orbax has nothing to warn about (it printed 12 "could not be
    restored" warnings per restart when the managers only knew the item names)."""
    ckpt = RunCheckpoints(tmp_path)
    state = save(ckpt, 2)
    ckpt.save_best(2, state, {"position": 2}, {"note": "test"}, {"mAP": 0.5})
    ckpt.close()
    again = RunCheckpoints(tmp_path)
    with caplog.at_level(logging.WARNING):
        restored, _, _, _ = again.restore("latest", abstract_like(state))
        again.restore_params("best")
        again.restore_meta("latest")
    again.close()
    assert_tree_equal(restored, state)
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, noisy


def test_tree_checksum_sees_one_flipped_bit():
    state = make_state()
    flipped = jax.tree_util.tree_map(np.copy, state)
    flipped["params"]["conv"]["bias"].view(np.uint32)[1] ^= 1
    assert checkpointing.tree_checksum(state) != checkpointing.tree_checksum(flipped)
    assert checkpointing.tree_checksum(state) == checkpointing.tree_checksum(jax.tree_util.tree_map(np.copy, state))


def _damage_state_item(folder: pathlib.Path) -> None:
    shutil.rmtree(folder / "state")


def _truncate_metadata(folder: pathlib.Path) -> None:
    target = next((folder / "state").rglob("_METADATA"))  # the array tree's metadata
    target.write_bytes(target.read_bytes()[:7])


@pytest.mark.parametrize("damage", [_damage_state_item, _truncate_metadata], ids=["state_missing", "metadata_torn"])
def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, caplog, damage):
    ckpt = RunCheckpoints(tmp_path, keep=3)
    older = save(ckpt, 2)
    save(ckpt, 4)
    damage(tmp_path / "checkpoints" / "latest" / "4")
    ckpt.close()
    ckpt = RunCheckpoints(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        restored, _, _, step = ckpt.restore("latest", abstract_like(older))
    assert step == 2
    assert_tree_equal(restored, older)
    assert str(tmp_path / "checkpoints" / "latest" / "4") in caplog.text
    assert (tmp_path / "checkpoints" / "damaged" / "latest-4").is_dir()  # moved aside, not deleted
    assert ckpt.latest.all_steps() == [2]
    ckpt.close()


def _save_evaluated(ckpt: RunCheckpoints, step: int) -> dict:
    """An evaluation step as the trainer commits it: ``best/step``, then ``latest/step`` (the same state)."""
    state = make_state(step)
    ckpt.save_best(step, state, {"position": step}, {"note": "test"}, {"mAP": 0.5})
    ckpt.save_latest(step, state, {"position": step}, {"note": "test"})
    return state


def test_a_damaged_latest_is_restored_from_its_best_copy_of_the_same_step(tmp_path, caplog):
    """An evaluation step saves the same state to best/N and latest/N: a damaged latest/N resumes from best/N
    (copied back to latest/N) instead of falling back to an older step, which would drop that evaluation and, with
    it, the only best checkpoint of the run."""
    ckpt = RunCheckpoints(tmp_path, keep=3)
    save(ckpt, 2)
    state = _save_evaluated(ckpt, 4)
    ckpt.close()
    _damage_state_item(tmp_path / "checkpoints" / "latest" / "4")
    ckpt = RunCheckpoints(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        restored, loader, meta, step = ckpt.restore("latest", abstract_like(state))
    assert step == 4 and loader == {"position": 4} and "metrics" not in meta
    assert_tree_equal(restored, state)
    assert (tmp_path / "checkpoints" / "damaged" / "latest-4").is_dir()  # the damaged folder is kept aside
    assert ckpt.latest.all_steps() == [2, 4] and ckpt.best.all_steps() == [4]
    assert "restored step 4 from its copy in" in caplog.text
    assert not list((tmp_path / "checkpoints" / "latest").glob("*tmp*"))
    ckpt.close()
    again = RunCheckpoints(tmp_path, keep=3)  # the copy is a checkpoint like any other: the next start reads it
    assert_tree_equal(again.restore("latest", abstract_like(state))[0], state)
    again.close()


def test_a_damaged_latest_whose_best_copy_is_damaged_too_falls_back(tmp_path, caplog):
    ckpt = RunCheckpoints(tmp_path, keep=3)
    older = save(ckpt, 2)
    state = _save_evaluated(ckpt, 4)
    ckpt.close()
    for kind in ("latest", "best"):
        _damage_state_item(tmp_path / "checkpoints" / kind / "4")
    ckpt = RunCheckpoints(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        restored, _, _, step = ckpt.restore("latest", abstract_like(state))
    assert step == 2
    assert_tree_equal(restored, older)
    assert "falling back to the previous checkpoint" in caplog.text
    ckpt.close()


_TRUNCATED_DATA_FILE_SCRIPT = """
import pathlib, sys
import jax
import numpy as np
from seqcsist_jax.checkpointing import RunCheckpoints, abstract_like
root = pathlib.Path(sys.argv[1])
rng = np.random.default_rng(0)
# device arrays, as the trainer restores them (numpy leaves take another Orbax read path, which fails quietly)
state = lambda: jax.device_put({"params": {"w": rng.normal(size=(64, 64)).astype(np.float32),
                                           "b": rng.normal(size=(64,)).astype(np.float32)},
                                "opt_state": {"mu": rng.normal(size=(64, 64)).astype(np.float32)}})
ckpt = RunCheckpoints(root, keep=3)
for step in (2, 4):
    ckpt.save_latest(step, state(), {"position": step}, {})
ckpt.close()
data = max((root / "checkpoints" / "latest" / "4" / "state").rglob("d/*"), key=lambda f: f.stat().st_size)
data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a torn data file: Orbax fails reading arrays
ckpt = RunCheckpoints(root, keep=3)
print(ckpt.restore("latest", abstract_like(state()))[3])
ckpt.close()
"""


def test_a_truncated_data_file_is_one_warning_line_not_a_flood_of_tracebacks(tmp_path):
    """A torn array data file made Orbax's abandoned read coroutines and tensorstore's callbacks into its closed
    event loop print ~100 tracebacks (4,655 lines for a smoke run's checkpoint, each with a 60-line TensorStore
    spec); the restore reports the damage in one line (without the spec) and falls back. In a subprocess: those
    echoes come from garbage collection and C callbacks, which pytest's own hooks would intercept in-process."""
    proc = subprocess.run([sys.executable, "-c", _TRUNCATED_DATA_FILE_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["2"]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "latest/4 is damaged or unreadable" in lines[0] and "falling back to the previous checkpoint" in lines[0]
    assert "TensorStore" not in lines[0], lines


def test_all_checkpoints_damaged_is_one_error_naming_them(tmp_path):
    ckpt = RunCheckpoints(tmp_path)
    state = save(ckpt, 1)
    _damage_state_item(tmp_path / "checkpoints" / "latest" / "1")
    with pytest.raises(CheckpointError, match=r"latest/1 is damaged"):
        ckpt.restore("latest", abstract_like(state))


def test_changed_bytes_fail_the_checksum(tmp_path):
    ckpt = RunCheckpoints(tmp_path)
    state = save(ckpt, 1)
    ckpt.close()
    # Rewrite the stored checksum as if the arrays had changed on disk after the save.
    meta_file = next((tmp_path / "checkpoints" / "latest" / "1" / "meta").glob("*"))
    meta = json.loads(meta_file.read_text())
    meta["params_sha256"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    ckpt = RunCheckpoints(tmp_path)
    with pytest.raises(CheckpointError, match=r"latest/1 fails its checksum"):
        ckpt.restore_params(1)
    with pytest.raises(CheckpointError, match=r"no readable 'latest' checkpoint.*checksum.*running the same "
                       r"command again starts this run from step 0$"):
        ckpt.restore("latest", abstract_like(state))


def test_no_readable_latest_with_a_best_checkpoint_says_the_rerun_resumes_from_it(tmp_path):
    """Every latest step damaged, but the journal's best/N (a step whose latest copy is already gone) is intact:
    the error says the rerun resumes from it, and the rerun (latest_from_best) does."""
    ckpt = RunCheckpoints(tmp_path, keep=1)
    best_state = make_state(2)
    assert ckpt.save_best(2, best_state, {"position": 2}, {"note": "test"}, {"mAP": 0.5})  # journal + best/2
    ckpt.save_latest(2, best_state, {"position": 2}, {"note": "test"})
    state = save(ckpt, 4)  # keep=1: latest/2 is deleted
    assert ckpt.latest.all_steps() == [4]
    _damage_state_item(tmp_path / "checkpoints" / "latest" / "4")
    with pytest.raises(CheckpointError, match=r"running the same command again resumes it from its best checkpoint "
                                              r"\(step 2; see latest_from_best\)$"):
        ckpt.restore("latest", abstract_like(state))
    ckpt.close()
    again = RunCheckpoints(tmp_path, keep=1)
    assert again.latest_from_best() == 2
    restored, loader, _, step = again.restore("latest", abstract_like(state))
    assert step == 2 and loader == {"position": 2}
    assert_tree_equal(restored, best_state)


def test_other_model_width_names_first_mismatching_parameter(tmp_path):
    ckpt = RunCheckpoints(tmp_path)
    save(ckpt, 1, width=4)
    with pytest.raises(CheckpointError) as info:
        ckpt.restore("latest", abstract_like(make_state(width=16)))
    message = str(info.value)
    assert "\n" not in message
    assert "['conv']['bias']" in message and "(4,)" in message and "(16,)" in message
    assert ckpt.latest.all_steps() == [1]  # a mismatch is not damage: nothing moved aside


def test_a_partly_deleted_old_checkpoint_is_moved_aside_and_the_newest_kept(tmp_path, caplog):
    ckpt = RunCheckpoints(tmp_path, keep=3)
    for step in (1, 2, 3):
        state = save(ckpt, step)
    ckpt.close()
    latest = tmp_path / "checkpoints" / "latest"
    shutil.rmtree(latest / "1" / "meta")  # killed while Orbax deleted step 1 file by file
    shutil.rmtree(latest / "3" / "loader")  # the newest is not touched here: restore reports its damage
    ckpt = RunCheckpoints(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        ckpt.clean_leftovers()
    assert (tmp_path / "checkpoints" / "damaged" / "latest-1-partial" / "state").is_dir()
    assert sorted(p.name for p in latest.iterdir() if p.name.isdigit()) == ["2", "3"]
    assert "moved 1 partly deleted old checkpoint folder(s)" in caplog.text
    ckpt.clean_leftovers()  # once: a second start finds nothing to move
    restored, _, _, step = ckpt.restore("latest", abstract_like(state))
    assert step == 2  # the damaged newest falls back to the intact step 2
    ckpt.close()


def test_leftover_tmp_folders_are_removed_and_committed_kept(tmp_path):
    ckpt = RunCheckpoints(tmp_path)
    state = save(ckpt, 2)
    leftovers = [tmp_path / "checkpoints" / "latest" / "5.orbax-checkpoint-tmp-1234",
                 tmp_path / "checkpoints" / "best" / "5.orbax-checkpoint-tmp-99"]
    for folder in leftovers:
        (folder / "state").mkdir(parents=True)
        (folder / "state" / "junk").write_bytes(b"x" * 10)
    assert sorted(ckpt.clean_leftovers()) == sorted(leftovers)
    assert not any(f.exists() for f in leftovers)
    restored, _, _, step = ckpt.restore("latest", abstract_like(state))
    assert step == 2
    assert_tree_equal(restored, state)


def test_journal_reconcile_forgets_uncommitted_evaluations(tmp_path):
    ckpt = RunCheckpoints(tmp_path, keep=5)
    state = make_state()
    # Committed: eval at 2 (best), latest/2. Then eval at 4 journaled and best/4 saved, killed before latest/4.
    assert ckpt.save_best(2, state, {}, {}, {"mAP": 0.2})
    ckpt.save_latest(2, state, {}, {})
    ckpt.drop_old_best()
    assert ckpt.save_best(4, state, {}, {}, {"mAP": 0.5})
    assert ckpt.best.all_steps() == [2, 4]
    ckpt.reconcile(resume_step=2)
    journal = ckpt.journal()
    assert journal == {"evals": {"2": {"mAP": 0.2}}, "best_step": 2}
    assert ckpt.best.all_steps() == [2] and ckpt.best_step() == 2
    # Ties keep the earliest step, as an uninterrupted run does.
    assert not ckpt.save_best(3, state, {}, {}, {"mAP": 0.2})
    assert ckpt.best_metrics() == {"mAP": 0.2}


def test_journal_garbage_is_a_warning_naming_it(tmp_path, caplog):
    ckpt = RunCheckpoints(tmp_path)
    ckpt.journal_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.journal_path.write_text("{not json")
    # no best folder to rebuild it from: an empty journal (tests/test_fault_repairs.py covers the rebuild)
    assert ckpt.journal() == {"evals": {}, "best_step": None}
    assert "evals.json: not an evaluation journal" in caplog.text


def test_enospc_during_save_is_one_clear_error(tmp_path, monkeypatch):
    ckpt = RunCheckpoints(tmp_path)
    save(ckpt, 1)

    def full_disk(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:  # orbax re-raises OS errors wrapped in its own exceptions
            raise ValueError("save failed in a worker thread") from e

    monkeypatch.setattr(ckpt.latest, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        save(ckpt, 2)
    assert info.value.errno == errno.ENOSPC
    assert "no space left on device" in str(info.value) and "latest/2" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("check, code, messages, other", [
    # TFDS's writers: an OSError without errno; Orbax: the OSError as the cause of its own exception
    ("is_disk_full", errno.ENOSPC,
     ['Failed to finalize writing of split "train": [errno 28] No space left on device'], errno.EACCES),
    # Orbax's TensorStore writes under `ulimit -f`
    ("is_file_too_large", errno.EFBIG,
     ["OUT_OF_RANGE: Error writing …: File too large [os_error_code='27']"], errno.ENOSPC),
])
def test_disk_limit_checks_read_errnos_messages_and_causes(check, code, messages, other):
    from seqcsist_jax import fileio

    is_it = getattr(fileio, check)
    assert is_it(OSError(code, os.strerror(code)))
    assert all(is_it(OSError(message)) for message in messages)
    try:
        try:
            raise OSError(code, "short")
        except OSError as e:
            raise RuntimeError("async save failed") from e
    except RuntimeError as wrapped:
        assert is_it(wrapped)
    assert not is_it(OSError(other, os.strerror(other)))
    assert not is_it(ValueError("bad value"))


def test_enospc_on_a_real_small_disk_then_resume_bitwise(tmp_path):
    disk = tmp_path / "disk"
    reason = mount_tmpfs(disk, "3m")
    if reason:
        pytest.skip(reason)
    try:
        ckpt = RunCheckpoints(disk, keep=3)
        small = save(ckpt, 1)
        filler = disk / "filler"
        try:  # fill the disk up to the last few KiB (unbuffered: closing must not flush into a full disk)
            with open(filler, "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        big = make_state(2, size=20000)
        with pytest.raises(CheckpointWriteError, match="no space left on device"):
            ckpt.save_latest(2, big, {"position": 2}, {})
        filler.unlink()  # space freed
        ckpt.close()
        ckpt = RunCheckpoints(disk, keep=3)
        ckpt.clean_leftovers()
        restored, _, _, step = ckpt.restore("latest", abstract_like(small))
        assert step == 1
        assert_tree_equal(restored, small)
        ckpt.save_latest(2, big, {"position": 2}, {})
        restored, loader, _, step = ckpt.restore("latest", abstract_like(big))
        assert step == 2 and loader == {"position": 2}
        assert_tree_equal(restored, big)
        ckpt.close()
    finally:
        unmount(disk)


@pytest.mark.slow
def test_a_full_disk_during_a_real_training_save_prints_one_error_line(tmp_path):
    """Without the echo filters this prints ~100-1,000 lines (Orbax's per-thread logs, "Event loop is closed")."""
    disk = tmp_path / "disk"
    reason = mount_tmpfs(disk, "3m")  # the smoke run's Q cache (1 MB) fits, its first checkpoint (~13 MB) not
    if reason:
        pytest.skip(reason)
    runs = []
    try:
        for _ in range(2):  # a fresh workdir, then the rerun the error line asks for (the disk is still full)
            runs.append(subprocess.run(
                [sys.executable, "-m", "experiments.train", "--config=derefnet:smoke", f"--workdir={disk / 'w'}"],
                capture_output=True, text=True, timeout=600, cwd=pathlib.Path(__file__).resolve().parents[1],
                env=dict(os.environ, JAX_PLATFORMS="cpu")))
        leftovers = list((disk / "w" / "checkpoints").glob("*/*.orbax-checkpoint-tmp*"))
    finally:
        unmount(disk)
    for proc in runs:
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("train:")]
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert lines[-1].startswith("error: [Errno 28] no space left on device while saving checkpoint "), lines
        assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr[-3000:]
        assert "never retrieved" not in proc.stderr and "never awaited" not in proc.stderr, proc.stderr[-3000:]
        # the error, and at most the smoke data's ill-conditioned-Q warning (first run: Q is computed)
        assert len(lines) <= 2, lines
    assert "unfinished checkpoint" not in runs[1].stderr  # the failed save removed its own temporary folder
    assert leftovers == []


def test_failed_write_echo_filters_drop_only_orbax_echoes(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    for name in ("absl", "asyncio"):
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    checkpointing._quiet_failed_write_echoes()
    checkpointing._quiet_failed_write_echoes()  # idempotent: one hook, one filter per logger
    assert len(logging.getLogger("absl").filters) == 1 and len(logging.getLogger("asyncio").filters) == 1

    class Unraisable:
        def __init__(self, value):
            self.exc_value = value

    closed, other = Unraisable(RuntimeError("Event loop is closed")), Unraisable(RuntimeError("something else"))
    sys.unraisablehook(closed)
    sys.unraisablehook(other)
    assert seen == [other]

    def record(name, path, level, message):
        return logging.LogRecord(name, level, path, 1, message, None, None)

    orbax_path = "/site-packages/orbax/checkpoint/_src/futures/future.py"
    keep = [record("absl", orbax_path, logging.WARNING, "_SignalingThread.run() raised an exception: X"),
            record("absl", "/mine/train.py", logging.ERROR, "worker raised an exception: X"),
            record("absl", orbax_path, logging.ERROR, "Checkpoint folder is missing"),
            record("asyncio", "/asyncio/base_events.py", logging.ERROR, "Task exception was never retrieved\n"
                   "future: <Task finished coro=<my_job()>>")]
    drop = [record("absl", orbax_path, logging.ERROR, "[thread=array_type_handler] _SignalingThread.run() raised an "
                   "exception: RESOURCE_EXHAUSTED"),
            record("asyncio", "/asyncio/base_events.py", logging.ERROR, "Task exception was never retrieved\n"
                   "future: <Task finished coro=<async_serialize_from_host() defined at /x/orbax/checkpoint/s.py>>"),
            record("asyncio", "/asyncio/base_events.py", logging.ERROR, "_GatheringFuture exception was never "
                   "retrieved\nfuture: <_GatheringFuture finished exception=ValueError('RESOURCE_EXHAUSTED: Error "
                   "writing \"params.w/0\"')>")]
    keep.append(record("asyncio", "/asyncio/base_events.py", logging.ERROR, "Future exception was never retrieved\n"
                       "future: <Future finished exception=KeyError('mine')>"))
    for r in keep:
        assert logging.getLogger(r.name).filter(r), r.getMessage()
    for r in drop:
        assert not logging.getLogger(r.name).filter(r), r.getMessage()


def test_atomic_writes_name_the_file_of_a_nameless_os_error(tmp_path):
    from seqcsist_jax.fileio import atomic_path

    target = tmp_path / "qinit.npz"
    with pytest.raises(OSError) as info:
        with atomic_path(target, suffix=".npz"):
            raise OSError(errno.ENOSPC, "No space left on device")  # as zipfile.close() raises it
    assert info.value.filename == str(target) and not list(tmp_path.iterdir())
    with pytest.raises(OSError) as info:
        with atomic_path(target):
            raise FileNotFoundError(errno.ENOENT, "No such file", "/elsewhere")
    assert info.value.filename == "/elsewhere"  # a named error keeps its own name
    with pytest.raises(OSError, match=r"^disk full \(simulated\)$"):  # no errno: the message is kept as it is
        with atomic_path(target):
            raise OSError("disk full (simulated)")


# ---------------------------------------------------------------------------------------------- lock


def test_second_lock_is_refused_naming_workdir_and_holder(tmp_path):
    with WorkdirLock(tmp_path):
        with pytest.raises(WorkdirLockedError) as info:
            WorkdirLock(tmp_path).acquire()
    message = str(info.value)
    assert str(tmp_path) in message and f"PID {os.getpid()}" in message
    import socket

    assert socket.gethostname() in message
    WorkdirLock(tmp_path).acquire().release()  # released on exit


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from seqcsist_jax.run_lock import WorkdirLock; "
         f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLockedError, match=f"PID {holder.pid}"):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = WorkdirLock(tmp_path).acquire()  # the dead holder's lock file is still there: taken over
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


# ---------------------------------------------------------------------------------------- metrics.jsonl


def _write_lines(path: pathlib.Path, *lines: str, end: str = "\n") -> None:
    path.write_text("\n".join(lines) + end)


def test_torn_last_metrics_line_is_dropped_with_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    _write_lines(path, '{"step": 1, "split": "train", "loss": 2.0}', '{"step": 2, "split": "train", "loss": 1.5}',
                 '{"step": 3, "split": "tr', end="")
    with caplog.at_level(logging.WARNING):
        records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2]
    assert f"{path}, line 3" in caplog.text
    # A writer reopening the file cuts the torn line, so appended records start on their own line.
    writer = MetricWriter(tmp_path, tensorboard=False)
    writer.write(3, {"loss": 1.0})
    writer.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert path.read_text().count("\n") == 3


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_lines(path, '{"step": 1, "split": "train", "loss": 2.0}', end="")
    drop_torn_last_line(path)
    assert path.read_text().endswith("\n") and [r["step"] for r in read_metrics(path)] == [1]


def test_corruption_before_the_last_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_lines(path, '{"step": 1, "loss": 2.0}', "garbage", '{"step": 3, "loss": 1.0}')
    with pytest.raises(MetricsFileError, match=rf"{path}, line 2"):
        read_metrics(path)
    with pytest.raises(MetricsFileError, match=r"line 2"):
        MetricWriter(tmp_path, tensorboard=False)


def test_fault_point_is_inert_without_the_variable(monkeypatch):
    monkeypatch.delenv(checkpointing.FAULT_ENV, raising=False)
    checkpointing.fault_point("after_latest_save", 3)
    monkeypatch.setenv(checkpointing.FAULT_ENV, "after_latest_save:step=4")
    checkpointing.fault_point("after_latest_save", 3)  # another step: nothing happens
    checkpointing.fault_point("after_best_save", 4)  # another moment: nothing happens



def test_full_disk_while_logging_is_one_clear_error(tmp_path, monkeypatch):
    import builtins

    from seqcsist_jax.metric_writers import MetricsWriteError

    writer = MetricWriter(tmp_path, tensorboard=False)
    writer.write(1, {"loss": 1.0})
    real_open = builtins.open

    def full(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(MetricsWriteError, match=r"metrics.jsonl \(No space left on device\)") as info:
        writer.write(2, {"loss": 0.5})
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value)
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]


_SAVE_ON_FOUR_DEVICES = """
import sys, jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from seqcsist_jax.checkpointing import RunCheckpoints
from tests.test_checkpoint_faults import make_state
assert jax.device_count() == 4, jax.devices()
replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
state = jax.tree_util.tree_map(lambda x: jax.device_put(x, replicated), make_state(3))
RunCheckpoints(sys.argv[1]).save_latest(3, state, {"position": 3}, {"note": "four devices"})
"""


def test_params_saved_on_four_devices_restore_on_this_one(tmp_path):
    """A run trained data-parallel (parameters replicated on a 4-device mesh) is scored and exported elsewhere:
    ``restore_params`` places the arrays on this process's devices instead of asking for the saving ones."""
    from tests.xla_env import xla_flags

    env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SAVE_ON_FOUR_DEVICES, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert jax.device_count() < 4  # this process cannot offer the saving devices
    params, step = RunCheckpoints(tmp_path).restore_params("latest")
    assert step == 3
    assert_tree_equal(params, make_state(3)["params"])
    assert all(leaf.devices() == {jax.local_devices()[0]} for leaf in jax.tree_util.tree_leaves(params))


_SAVE_UNDER_A_FILE_SIZE_LIMIT = """
import errno, json, resource, sys
from seqcsist_jax.checkpointing import CheckpointWriteError, RunCheckpoints
from tests.test_checkpoint_faults import make_state
ckpt = RunCheckpoints(sys.argv[1])
state = make_state(1, size=16384)  # a 128 KiB array: above the limit below
ckpt.save_latest(1, make_state(1, size=4), {"position": 1}, {"note": "small"})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (32768, hard))  # `ulimit -f 32`; Python ignores SIGXFSZ: writes get EFBIG
try:
    ckpt.save_latest(2, state, {"position": 2}, {"note": "large"})
    error = None
except CheckpointWriteError as e:
    error = {"errno": e.errno, "text": str(e)}
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
ckpt.save_latest(2, state, {"position": 2}, {"note": "large"})  # the limit raised: the same save succeeds
print(json.dumps({"error": error, "steps": sorted(ckpt.latest.all_steps())}))
"""


def test_a_file_size_limit_during_a_save_is_one_clear_error_and_the_retry_saves(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _SAVE_UNDER_A_FILE_SIZE_LIMIT, str(tmp_path / "run")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    error = result["error"]
    assert error is not None and error["errno"] == errno.EFBIG, result
    assert "\n" not in error["text"] and "latest/2" in error["text"] and "ulimit -f" in error["text"]
    assert "OUT_OF_RANGE" not in error["text"]  # Orbax's wrapped TensorStore message is not passed on
    assert result["steps"] == [1, 2]
