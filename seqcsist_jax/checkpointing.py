"""Orbax checkpoints of a training run: periodic ``latest`` ones, the ``best`` by validation CSO-mAP, and the
evaluation journal that makes the pair crash-consistent.

Layout under ``{workdir}/checkpoints/``::

    latest/<step>/{state,loader,meta}   the last ``keep`` periodic checkpoints (resume from the newest good one)
    best/<step>/{state,loader,meta}     the checkpoint with the highest validation CSO-mAP
    evals.json                          the journal: every committed evaluation and the best decision
    damaged/                            checkpoints found unreadable on start, moved aside (never deleted)

``state`` is the train-state pytree (params, optimiser state, step, RNG), ``loader`` the input pipeline's
position (so a resumed run sees exactly the batches an uninterrupted run would have seen) and ``meta`` a JSON
dict with the resolved config, SHA-256 checksums of the saved params and optimiser state (verified on restore),
the training wall time that produced the state (``train_seconds``, summed over resumed calls) and, for
``best``, the validation metrics.

Commit order at an evaluation step N (each write is atomic: orbax renames a finished temporary folder, the
journal is written with :mod:`seqcsist_jax.fileio`)::

    1. evaluate                       2. journal += (N, metrics, best decision)
    3. save best/N if it is the best  4. save latest/N       5. delete older best/ folders

On start, :meth:`RunCheckpoints.reconcile` takes the newest readable ``latest`` step L as the truth: journal
records after L are dropped (their evaluations are redone, deterministically, when training passes them again)
and ``best/`` folders other than the journal's best are removed. Whatever step a kill hits, the restarted run
therefore ends exactly as an uninterrupted one (same best step, same test numbers). A ``latest/`` without any
step (deleted by hand) takes the journal's ``best/N`` as L (:meth:`RunCheckpoints.latest_from_best`: the same
state and input position, copied back), so the loss of ``latest/`` costs no training.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pathlib
import shutil
import signal
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from seqcsist_jax.fileio import atomic_write_json, is_disk_full, is_file_too_large
from seqcsist_jax.suggest import did_you_mean

log = logging.getLogger(__name__)

CHECKPOINT_KINDS = ("latest", "best")
JOURNAL_NAME = "evals.json"
FAULT_ENV = "SEQCSIST_FAULT"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (damaged, of another model, failed checksum); the message names its folder."""


class ModelMismatchError(CheckpointError):
    """A readable checkpoint of another model or width than the config builds (:func:`check_params_match`): the
    run's config or code changed, not the files, so nothing is moved aside or repaired."""


class CheckpointWriteError(OSError):
    """Saving a checkpoint failed (e.g. the disk is full); the message says what to do. Nothing committed
    before it is lost."""


def fault_point(name: str, step: int) -> None:
    """Test hook: ``SEQCSIST_FAULT=<name>:step=<N>`` SIGKILLs this process when it reaches ``name`` at step N,
    so tests can kill a real run at a precise moment of the commit order. A no-op when the variable is unset."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want, _, at = spec.partition(":step=")
    if want == name and int(at) == int(step):
        _die()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def tree_checksum(tree: Any) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes, in tree-flattening order (host copies)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _field(state: Any, name: str) -> Any:
    return state[name] if isinstance(state, dict) else getattr(state, name)


def state_checksums(state: Any) -> dict[str, str]:
    return {"params_sha256": tree_checksum(_field(state, "params")),
            "opt_state_sha256": tree_checksum(_field(state, "opt_state"))}


def check_params_match(expected: Any, restored: Any, where: str) -> None:
    """Raises :class:`CheckpointError` naming the first parameter whose shape differs (or that exists on one
    side only) between ``expected`` and ``restored`` (pytrees of arrays or shape structs)."""
    def shapes(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(p): tuple(getattr(x, "shape", None) or np.shape(x)) for p, x in leaves}

    exp, got = shapes(expected), shapes(restored)
    for key in sorted(set(exp) | set(got)):
        if exp.get(key) != got.get(key):
            if key not in exp:
                detail = f"parameter {key} (shape {got[key]}) is in the checkpoint but not in the model"
            elif key not in got:
                detail = f"the model's parameter {key} (shape {exp[key]}) is not in the checkpoint"
            else:
                detail = f"parameter {key} is shape {got[key]} in the checkpoint but the model expects {exp[key]}"
            raise ModelMismatchError(f"{where} holds another model or width: {detail} ({len(exp)} model parameters, "
                                  f"{len(got)} in the checkpoint)")


class _FailedWriteEchoFilter(logging.Filter):
    """Drops the echoes of a failed Orbax write that our saves report themselves.

    Saves are synchronous, so the exception a writer thread raises reaches :meth:`RunCheckpoints._save`, which
    reports it in one line; a full disk otherwise also prints it once per writer thread (Orbax's "raised an
    exception" log, with traceback) and once per abandoned asyncio task ("Task exception was never retrieved",
    logged when the task is collected): ~100 lines for one event.
    """

    # Orbax's step-metadata file (``_CHECKPOINT_METADATA``: save times) missing or garbled: Orbax goes on without
    # it, and the checkpoint is judged by this project's own checks (checksums in ``meta``, the items present),
    # which name a real damage themselves. Orbax's ERROR line printed the file's content, on several lines, on
    # runs that then resumed from that very checkpoint.
    BENIGN = ("Metadata file does not exist", "Failed to read Metadata file", "Failed to json parse Metadata file")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "absl" and "orbax" in record.pathname and str(record.msg).startswith(self.BENIGN):
            return False
        if record.levelno < logging.ERROR:
            return True
        message = record.getMessage()
        if record.name == "absl":
            return not ("orbax" in record.pathname and "raised an exception" in message)
        if record.name != "asyncio" or "exception was never retrieved" not in message:  # Task, Future, gathering
            return True
        if record.exc_info and record.exc_info[1] is not None:
            message += f" {record.exc_info[1]!r} {_traceback_files(record.exc_info[2])}"
        return not ("orbax" in message or "RESOURCE_EXHAUSTED" in message)


def _traceback_files(tb: Any) -> str:
    """The file names of a traceback's frames, space-separated (to tell whose exception a record carries)."""
    files = []
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return " ".join(files)


def _quiet_failed_write_echoes() -> None:
    """Installs, once per process, :class:`_FailedWriteEchoFilter` on the ``absl`` and ``asyncio`` loggers and an
    unraisable-exception hook that drops ``RuntimeError: Event loop is closed``: after a failed write or read
    tensorstore's completion callbacks keep calling into Orbax's finished asyncio loop, each printing that
    traceback (~70 on a full disk, interleaved). The hook also drops the exceptions of Orbax's own coroutines
    that a failed restore abandons (``Exception ignored in: <coroutine object _read_array_index_and_device_put>``,
    one per array of a truncated data file, each with a 60-line TensorStore spec): the restore reports the first
    of them itself, in one line. Every other record and unraisable exception passes through unchanged."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_seqcsist_closed_loop_filter", False):
        return
    echo_filter = _FailedWriteEchoFilter()
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(echo_filter)
    import warnings

    # the write coroutines a failed gather abandoned, collected later
    warnings.filterwarnings("ignore", message=r"coroutine '.*(serializ|write_fragment).*' was never awaited",
                            category=RuntimeWarning)

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        code = getattr(getattr(unraisable, "object", None), "cr_code", None)  # a coroutine's code object
        if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
            return
        previous(unraisable)

    hook._seqcsist_closed_loop_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _read_error_line(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause of ``error``, without TensorStore's spec dump. Orbax wraps a
    failed array read as ``Exception: Encountered error while reading array index: (...). See full TensorStore
    details: <...spec of TensorStore({`` (~60 lines, no file); its cause names the array and the database
    (``ValueError: OUT_OF_RANGE: Error reading "params.w/0.0" in OCDBT database at local file ...``)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text.split(' See full TensorStore details')[0].rstrip('. ')}"


def _manager(directory: pathlib.Path, **options: Any) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory.resolve(),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False, **options),
        # Handlers named up front (not just item names): reading an item's metadata before any restore (the
        # parameter-shape check) then needs no guess, and orbax prints no "could not be restored" warnings.
        item_handlers={"state": ocp.StandardCheckpointHandler(), "loader": ocp.JsonCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
    )


def _remove_failed_save(manager: Any, parent: pathlib.Path, step: int, attempts: int = 20) -> None:
    """Removes the ``{step}.orbax-checkpoint-tmp*`` folders of a save that failed. The first failing write
    raises while the save's other writer threads may still create files in that folder (seen under load: the
    folder outlived one ``rmtree``), so this waits for them first and removes again until nothing is left."""
    try:
        manager.wait_until_finished()
    except Exception:  # noqa: BLE001 (the same failure again; the caller reports the first)
        pass
    for _ in range(attempts):
        partials = list(parent.glob(f"{step}.orbax-checkpoint-tmp*"))
        if not partials:
            return
        for partial in partials:
            shutil.rmtree(partial, ignore_errors=True)
        time.sleep(0.05)
    log.debug("could not remove every temporary folder of the failed save %d in %s", step, parent)


class RunCheckpoints:
    """The ``latest`` and ``best`` checkpoint managers and the evaluation journal of one workdir.

    Saving is synchronous and orbax writes to a temporary folder that it renames when complete, so a kill
    mid-save leaves at most a ``*.orbax-checkpoint-tmp*`` folder, removed by :meth:`clean_leftovers`. See the
    module docstring for the commit order that keeps ``best`` and the journal consistent.
    """

    def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
        self.root = pathlib.Path(workdir) / "checkpoints"
        _quiet_failed_write_echoes()  # before the managers read the step folders' metadata
        self._move_non_folders()
        self.latest = _manager(self.root / "latest", max_to_keep=keep)
        # max_to_keep=None: which best folder survives is decided by the journal, not by orbax.
        self.best = _manager(self.root / "best")
        self.journal_path = self.root / JOURNAL_NAME
        self._damaged_journal: str | None = None  # the damage found in evals.json, if any (see journal())

    def _move_non_folders(self) -> None:
        """A file (or a link to nothing) where ``latest/`` or ``best/`` goes would fail every save, and every run,
        the same way: it is moved to ``damaged/<kind>.not-a-folder-<UTC time>`` (kept) with a warning."""
        for kind in CHECKPOINT_KINDS:
            path = self.root / kind
            if (path.exists() or path.is_symlink()) and not path.is_dir():
                stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
                target = self.root / "damaged" / f"{kind}.not-a-folder-{stamp}"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                log.warning("%s is not a folder (the run keeps its %s checkpoints there); moved it to %s (kept)",
                            path, kind, target)

    # ------------------------------------------------------------------------------ journal

    def journal(self) -> dict:
        """``{"evals": {str(step): metrics}, "best_step": int | None}`` (empty for a new run).

        A damaged journal (not JSON, or not of this structure) is rebuilt in memory from the ``best`` folders'
        saved metrics, with a warning: the best decision survives (the best evaluation is the one with a
        folder), only the records of lower evaluations are lost. :meth:`reconcile` (the trainer) then moves the
        damaged file to ``damaged/`` and writes the rebuilt one.
        """
        if not self.journal_path.exists():
            return {"evals": {}, "best_step": None}
        try:
            data = json.loads(self.journal_path.read_text())
            _check_journal(data)
        except (ValueError, OSError) as e:
            if self._damaged_journal is None:
                self._damaged_journal = f"{self.journal_path}: not an evaluation journal ({e})"
                log.warning("%s; rebuilt from the metrics saved with the best checkpoint (records of other "
                            "evaluations are lost; the best decision is kept)", self._damaged_journal)
            return self._journal_from_best(write=False)
        return data

    @staticmethod
    def _best_of(evals: dict) -> int | None:
        best_step, best_map = None, None
        for step in sorted(evals, key=int):  # ties keep the earliest step, as an uninterrupted run does
            value = float(evals[step]["mAP"])
            if best_map is None or value > best_map:
                best_step, best_map = int(step), value
        return best_step

    def commit_eval(self, step: int, metrics: dict) -> bool:
        """Journals the evaluation at ``step`` and the best decision atomically. Returns whether it is the new
        best (strictly higher CSO-mAP than every earlier evaluation)."""
        data = self.journal()
        data["evals"][str(int(step))] = {k: float(v) for k, v in metrics.items()}
        previous = data.get("best_step")
        data["best_step"] = self._best_of(data["evals"])
        atomic_write_json(self.journal_path, data, sort_keys=True)
        return data["best_step"] == int(step) and previous != int(step)

    def reconcile(self, resume_step: int) -> None:
        """Makes the journal and ``best/`` agree with a run resumed at ``resume_step`` (see module docstring):
        evaluations after it are forgotten (they will be redone) and uncommitted ``best`` folders removed."""
        if not self.journal_path.exists() and self.best.all_steps():
            self._journal_from_best()  # a workdir written before the journal existed
        data = self.journal()
        evals = {k: v for k, v in data["evals"].items() if int(k) <= int(resume_step)}
        evals = self._repair_best(evals, resume_step)
        best_step = self._best_of(evals)
        if self._damaged_journal is not None:
            aside = self.root / "damaged" / JOURNAL_NAME
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.journal_path, aside)
            self._damaged_journal = None
            atomic_write_json(self.journal_path, {"evals": evals, "best_step": best_step}, sort_keys=True)
        elif evals != data["evals"] or best_step != data.get("best_step"):
            dropped = sorted(int(k) for k in data["evals"] if int(k) > int(resume_step))
            if dropped:
                log.warning("evaluations at steps %s were not committed with a checkpoint; they will be redone",
                            dropped)
            atomic_write_json(self.journal_path, {"evals": evals, "best_step": best_step}, sort_keys=True)
        for step in self.best.all_steps():
            if step != best_step:
                self.best.delete(step)
        for step in self.latest.all_steps():
            if step > int(resume_step):  # newer than the resume point: damaged, moved aside by restore
                self.latest.delete(step)

    def _journal_from_best(self, write: bool = True) -> dict:
        evals = {}
        for step in self.best.all_steps():
            try:
                metrics = self._read_meta(self.best, step).get("metrics")
            except Exception:  # noqa: BLE001 (a damaged best folder is reported when it is restored)
                metrics = None
            if isinstance(metrics, dict) and "mAP" in metrics:
                evals[str(step)] = metrics
        data = {"evals": evals, "best_step": self._best_of(evals)}
        if write:
            atomic_write_json(self.journal_path, data, sort_keys=True)
        return data

    def _repair_best(self, evals: dict, resume_step: int) -> dict:
        """Makes the journal's best evaluation have a ``best/`` folder: copied from ``latest/`` of the same step
        (the same state) when that exists, else that evaluation is dropped with a warning (its checkpoint is
        gone) and the next best is considered."""
        evals = dict(evals)
        while True:
            step = self._best_of(evals)
            if step is None or step in self.best.all_steps():
                return evals
            if step in self.latest.all_steps() and step <= int(resume_step):
                source = self._copy_step(self.latest, self.best, step)
                log.warning("the best evaluation (step %d) had no best/ folder (deleted, or damaged and moved to "
                            "damaged/); copied it from %s (the same state)", step, source)
                return evals
            log.warning("the best evaluation (step %d) has no checkpoint left (no best/%d or latest/%d folder: "
                        "deleted, or damaged and moved to damaged/); that evaluation is dropped and the next best one "
                        "is used", step, step, step)
            del evals[str(step)]

    @staticmethod
    def _copy_step(source: Any, target: Any, step: int) -> pathlib.Path:
        """Copies step folder ``step`` of manager ``source`` to manager ``target`` (``best`` and ``latest`` of one
        step hold the same state); returns the source folder. The copy is renamed into place when complete, so a
        kill leaves at most a ``*.orbax-checkpoint-tmp-copy`` folder, removed by :meth:`clean_leftovers`."""
        source_folder = pathlib.Path(source.directory) / str(int(step))
        folder = pathlib.Path(target.directory) / str(int(step))
        partial = folder.with_name(f"{int(step)}.orbax-checkpoint-tmp-copy")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source_folder, partial)
        os.replace(partial, folder)
        target.reload()
        return source_folder

    def clean_leftovers(self) -> list[pathlib.Path]:
        """Removes ``*.orbax-checkpoint-tmp*`` folders left by saves that were killed; returns them. Only the
        lock holder (the trainer) may call this: a concurrent save would lose its temporary folder."""
        removed = []
        for kind in CHECKPOINT_KINDS:
            folder = self.root / kind
            if folder.is_dir():
                for entry in folder.iterdir():
                    if ".orbax-checkpoint-tmp" in entry.name:
                        shutil.rmtree(entry, ignore_errors=True)
                        removed.append(entry)
        if removed:
            log.warning("removed %d unfinished checkpoint folder(s) of an interrupted save: %s", len(removed),
                        ", ".join(str(r) for r in removed))
        partial = self._move_partly_deleted()
        if removed or partial:
            self.latest.reload()
            self.best.reload()
        return removed

    def _move_partly_deleted(self) -> list[pathlib.Path]:
        """Moves aside (to ``damaged/<kind>-N-partial``, kept) an older step folder that lacks one of this
        project's items (``state``, ``loader``, ``meta``): Orbax deletes an old checkpoint file by file, so a kill
        during that leaves such a folder, unusable, and Orbax warned about it on every later start. The newest
        step is never touched (a damaged newest checkpoint is the restore's to report and move aside)."""
        moved = []
        for kind in CHECKPOINT_KINDS:
            folder = self.root / kind
            steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
            for step in steps[:-1]:
                source = folder / str(step)
                if source.is_dir() and not all((source / item).is_dir() for item in ("state", "loader", "meta")):
                    target = self.root / "damaged" / f"{kind}-{step}-partial"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if target.exists():
                        shutil.rmtree(target)
                    os.replace(source, target)
                    moved.append(target)
        if moved:
            log.warning("moved %d partly deleted old checkpoint folder(s) (a kill while an old checkpoint was being "
                        "deleted) to %s: %s", len(moved), self.root / "damaged", ", ".join(p.name for p in moved))
        return moved

    # ------------------------------------------------------------------------------ saving

    def _save(self, manager, step, state, loader_state, meta) -> None:
        meta = {**meta, **state_checksums(state)}
        _quiet_failed_write_echoes()
        try:
            manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    loader=ocp.args.JsonSave(loader_state),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )
            manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 (orbax wraps OS errors in several exception types)
            folder = pathlib.Path(manager.directory) / str(int(step))
            # The failed save's temporary folder holds nothing committed: removing it now frees the space it took
            # (on a full disk, all there was) instead of leaving it to the next start's clean-up.
            _remove_failed_save(manager, folder.parent, int(step))
            if is_disk_full(e):
                raise CheckpointWriteError(
                    errno.ENOSPC,
                    f"no space left on device while saving checkpoint {folder}; training stopped. Everything "
                    f"committed before is intact: free some space and run the same command again to resume",
                ) from None
            if is_file_too_large(e):
                raise CheckpointWriteError(
                    errno.EFBIG,
                    f"a file-size limit (File too large: `ulimit -f`, or the file system's largest file) stopped "
                    f"saving checkpoint {folder}; training stopped. Everything committed before is intact: raise "
                    f"the limit (`ulimit -f unlimited`) or use another --workdir, and run the command again to resume",
                ) from None
            raise CheckpointWriteError(f"saving checkpoint {folder} failed: {type(e).__name__}: {e}") from e

    def save_latest(self, step: int, state: Any, loader_state: dict, meta: dict) -> None:
        if self.latest.latest_step() == int(step):
            return
        self._save(self.latest, step, state, loader_state, meta)

    def save_best(self, step: int, state: Any, loader_state: dict, meta: dict, metrics: dict) -> bool:
        """Commits the evaluation at ``step`` to the journal and, when it is the new best, saves ``best/step``
        (older best folders are removed by :meth:`drop_old_best` once ``latest/step`` exists). Returns whether
        it is the new best."""
        is_best = self.commit_eval(step, metrics)
        fault_point("after_eval_commit", step)
        if is_best and int(step) not in self.best.all_steps():
            self._save(self.best, step, state, loader_state, {**meta, "metrics": metrics})
        fault_point("after_best_save", step)
        return is_best

    def drop_old_best(self) -> None:
        """Removes ``best`` folders other than the journal's best (step 5 of the commit order)."""
        best_step = self.journal().get("best_step")
        for step in self.best.all_steps():
            if step != best_step:
                self.best.delete(step)

    def best_step(self) -> int | None:
        step = self.journal().get("best_step")
        if step is None or int(step) not in self.best.all_steps():
            return None
        return int(step)

    def best_metrics(self) -> dict | None:
        data = self.journal()
        step = data.get("best_step")
        return None if step is None else data["evals"].get(str(step))

    # ------------------------------------------------------------------------------ restoring

    def resolve(self, which: str | int) -> tuple[ocp.CheckpointManager, int]:
        """``'latest'``, ``'best'`` or a step number → (manager, step). Raises FileNotFoundError."""
        if isinstance(which, str) and which.isdigit():
            which = int(which)
        if isinstance(which, int):
            for manager in (self.latest, self.best):
                if which in manager.all_steps():
                    return manager, which
            raise FileNotFoundError(
                f"no checkpoint at step {which}; latest steps {self.latest.all_steps()}, "
                f"best {self.best.all_steps()}"
            )
        if which not in CHECKPOINT_KINDS:
            raise ValueError(f"checkpoint must be 'latest', 'best' or a step number, got {which!r}"
                             f"{did_you_mean(str(which), CHECKPOINT_KINDS)}")
        manager = self.latest if which == "latest" else self.best
        step = manager.latest_step() if which == "latest" else self.best_step()
        if step is None and which == "best" and self.best.all_steps():
            step = max(self.best.all_steps())  # a workdir written before the journal existed
        if step is None:
            raise FileNotFoundError(f"no {which!r} checkpoint in {manager.directory}")
        return manager, step

    def _restore_one(self, manager, step: int, abstract_state: Any | None, params_only: bool):
        folder = pathlib.Path(manager.directory) / str(int(step))
        if abstract_state is not None:
            try:
                saved = manager.item_metadata(step)["state"]
                saved_params = _field(getattr(saved, "tree", saved), "params")
            except Exception:  # noqa: BLE001 (damaged metadata is reported by the restore below)
                saved_params = None
            if saved_params is not None:
                check_params_match(_field(abstract_state, "params"), saved_params, str(folder))
        elif params_only:
            abstract_state = _on_this_device(manager, step)
        _quiet_failed_write_echoes()  # a damaged data file otherwise prints ~100 tracebacks per restore
        try:
            args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
            if not params_only:
                args["loader"] = ocp.args.JsonRestore()
            restored = manager.restore(step, args=ocp.args.Composite(**args))
            meta = restored["meta"]
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 (orbax raises many types for a damaged folder)
            raise CheckpointError(f"checkpoint {folder} is damaged or unreadable ({_read_error_line(e)})") from None
        state = restored["state"]
        sums = meta.get("params_sha256") if isinstance(meta, dict) else None
        if sums is not None:
            got = tree_checksum(_field(state, "params"))
            if got != meta["params_sha256"] or (
                not params_only and tree_checksum(_field(state, "opt_state")) != meta.get("opt_state_sha256")
            ):
                raise CheckpointError(f"checkpoint {folder} fails its checksum (the saved arrays changed on disk)")
        return state, (restored.get("loader") if not params_only else None), meta

    def _read_meta(self, manager, step: int) -> dict:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def _move_aside(self, manager, step: int, kind: str) -> pathlib.Path:
        source = pathlib.Path(manager.directory) / str(int(step))
        target = self.root / "damaged" / f"{kind}-{int(step)}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(source, target)
        manager.reload()
        return target

    def restore(self, which: str | int, abstract_state: Any,
                check_loader: Any = None) -> tuple[Any, dict, dict, int]:
        """Restores ``(state, loader_state, meta, step)``; ``abstract_state`` gives shapes and shardings.

        For ``'latest'`` a damaged newest checkpoint is moved to ``checkpoints/damaged/`` with a warning naming
        it and the previous good step is used; other damage raises :class:`CheckpointError` naming the folder.
        ``check_loader(loader_state)`` (optional) validates the input pipeline's saved position: a ``ValueError``,
        ``TypeError`` or ``KeyError`` from it counts as damage of that checkpoint.
        """
        manager, step = self.resolve(which)

        def restore_checked(step, source=manager):
            state, loader, meta = self._restore_one(source, step, abstract_state, params_only=False)
            if check_loader is not None:
                try:
                    check_loader(loader)
                except (ValueError, TypeError, KeyError) as e:
                    folder = pathlib.Path(source.directory) / str(int(step)) / "loader"
                    raise CheckpointError(f"{folder}: not a valid input-pipeline position ({e})") from None
            return state, loader, meta

        if which != "latest":
            state, loader, meta = restore_checked(step)
            return state, loader, meta, step
        failures = []
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                state, loader, meta = restore_checked(step)
            except ModelMismatchError:
                raise
            except CheckpointError as e:
                failures.append(str(e))
                moved = self._move_aside(manager, step, "latest")
                copy = self._restore_best_copy(step, restore_checked)
                if copy is not None:
                    log.warning("%s; moved it to %s and restored step %d from its copy in %s (the same state, "
                                "copied back to %s)", e, moved, step, self.best.directory, manager.directory)
                    return (*copy, step)
                log.warning("%s; moved it to %s and falling back to the previous checkpoint", e, moved)
                continue
            return state, loader, meta, step
        best = self.journal().get("best_step")
        again = (f"resumes it from its best checkpoint (step {best}; see latest_from_best)"
                 if best is not None and int(best) in self.best.all_steps() else "starts this run from step 0")
        raise CheckpointError("no readable 'latest' checkpoint: " + "; ".join(failures) + f". They were moved to "
                              f"{self.root / 'damaged'} (kept); running the same command again {again}")

    def latest_from_best(self) -> int | None:
        """When ``latest/`` holds no checkpoint at all (deleted, or moved aside as not a folder) but the journal's
        best evaluation has its ``best/N`` folder, copies it to ``latest/N`` (an evaluation step saves the same
        state and input position to both) and returns N, with a warning; else None (a new run starts at step 0).
        Without it the run restarted from step 0 and deleted that best checkpoint as uncommitted."""
        if self.latest.latest_step() is not None:
            return None
        step = self.journal().get("best_step")
        if step is None or int(step) not in self.best.all_steps():
            return None
        self._copy_step(self.best, self.latest, int(step))
        log.warning("%s holds no checkpoint; copied the best one (step %d, the same state and input position) there "
                    "from %s and resuming from it", self.latest.directory, int(step), self.best.directory)
        return int(step)

    def _restore_best_copy(self, step: int, restore_checked: Callable) -> tuple[Any, dict, dict] | None:
        """``(state, loader_state, meta)`` of ``best/step`` for a damaged ``latest/step`` (an evaluation step saves
        the same state and input position to both), copied back to ``latest/step``; None when there is no
        readable ``best/step`` (its damage is the best restore's to report)."""
        if int(step) not in self.best.all_steps():
            return None
        try:
            state, loader, meta = restore_checked(step, self.best)
        except ModelMismatchError:
            raise
        except CheckpointError:
            return None
        self._copy_step(self.best, self.latest, step)
        return state, loader, {k: v for k, v in meta.items() if k != "metrics"}

    def restore_best(self, abstract_state: Any) -> tuple[Any, dict, dict, int]:
        """``restore('best', ...)`` that repairs a damaged best folder instead of stopping: the folder is moved to
        ``checkpoints/damaged/best-N`` with a warning and the journal reconciled as for a lost folder, i.e. it is
        copied back from ``latest/N`` (the same state) when that exists, else that evaluation is dropped and the
        next best with a checkpoint is used.

        Raises:
          FileNotFoundError: no evaluation with a readable checkpoint is left (the caller may score the latest).
          CheckpointError: another model or width, or a copy restored from ``latest/N`` that is damaged too.
        """
        tried: set[int] = set()
        while True:
            try:
                return self.restore("best", abstract_state)
            except ModelMismatchError:
                raise
            except CheckpointError as e:
                _, step = self.resolve("best")
                if step in tried:
                    raise CheckpointError(f"{e} (its copy from {self.latest.directory}/{step} too)") from None
                tried.add(step)
                moved = self._move_aside(self.best, step, "best")
                log.warning("%s; moved it to %s", e, moved)
                self.reconcile(max(self.latest.all_steps(), default=step))

    def restore_params(self, which: str | int) -> tuple[Any, int]:
        """Restores only the model parameters ``(params, step)`` as host arrays, without knowing the optimiser
        (evaluation needs no optimiser state). The params checksum is verified."""
        manager, step = self.resolve(which)
        state, _, _ = self._restore_one(manager, step, None, params_only=True)
        return _field(state, "params"), step

    def restore_meta(self, which: str | int) -> tuple[dict, int]:
        manager, step = self.resolve(which)
        return self._read_meta(manager, step), step

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _on_this_device(manager: Any, step: int) -> Any | None:
    """The saved state's shapes and dtypes, each placed on this process's first device; ``None`` when the metadata
    is unreadable (the restore then reports the damage). Without a target, orbax restores onto the devices that
    saved the checkpoint and refuses when they are not all here (a run trained on 4 devices scored on 1)."""
    try:
        saved = manager.item_metadata(step)["state"]
    except Exception:  # noqa: BLE001 (damaged metadata is reported by the restore)
        return None
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(leaf: Any) -> Any:
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=device)
        return leaf

    return jax.tree_util.tree_map(target, getattr(saved, "tree", saved))


def _check_journal(data: Any) -> None:
    """Raises ``ValueError`` naming what is wrong unless ``data`` is an evaluation journal."""
    if not isinstance(data, dict) or not isinstance(data.get("evals"), dict):
        raise ValueError("no 'evals' mapping")
    for step, metrics in data["evals"].items():
        if not str(step).isdigit():
            raise ValueError(f"evaluation step {step!r} is not a step number")
        if not isinstance(metrics, dict) or not isinstance(metrics.get("mAP"), (int, float)):
            raise ValueError(f"evaluation at step {step} has no numeric 'mAP'")
    best = data.get("best_step")
    if best is not None and (not isinstance(best, int) or str(best) not in data["evals"]):
        raise ValueError(f"best_step {best!r} is not one of the journaled steps")


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of a pytree of arrays, for restoring into the same layout."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
