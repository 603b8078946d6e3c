"""Scalar logging for training runs: TensorBoard event files (tensorboardX's format) plus a JSONL file.

The JSONL file (``{workdir}/metrics.jsonl``, one ``{"step": s, "split": ..., name: value}`` object per line)
is what the plotting and report code reads; TensorBoard is for looking at runs live
(``tensorboard --logdir WORKDIR/tensorboard``). Only process 0 writes.

The event file is written on the calling thread, flushed after every write: tensorboardX's ``SummaryWriter``
writes from a background thread and flushes again at exit, so a full disk there printed two tracebacks after
the command's error line; here a failed write is one :class:`MetricsWriteError` naming the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import time
from typing import Mapping

import jax

from seqcsist_jax.fileio import atomic_write

log = logging.getLogger(__name__)


class MetricsWriteError(OSError):
    """Appending to ``metrics.jsonl`` or the TensorBoard event file failed (e.g. a full disk); the message names
    the file."""

    def __str__(self) -> str:  # the message alone: OSError's would start with "[Errno 28] "
        return self.strerror or super().__str__()


class MetricsFileError(ValueError):
    """A ``metrics.jsonl`` line other than the last is not a JSON record; the message names file and line."""


def _to_float(value) -> float:
    value = float(value)
    return value if math.isfinite(value) else float("nan")


class MetricWriter:
    """Writes scalars to ``{workdir}/metrics.jsonl`` and ``{workdir}/tensorboard/``."""

    def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.active and tensorboard:
            from tensorboardX.event_file_writer import EventsWriter

            logdir = pathlib.Path(workdir) / "tensorboard"
            logdir.mkdir(parents=True, exist_ok=True)
            # events.out.tfevents.<time>.<host>: a new file per start, as TensorBoard expects of a resumed run
            self._tb = EventsWriter(str(logdir / "events"))
        if self.active:
            drop_torn_last_line(self.path)

    def write(self, step: int, scalars: Mapping[str, float], split: str = "train") -> None:
        if not self.active:
            return
        record = {"step": int(step), "split": split}
        record.update({k: _to_float(v) for k, v in scalars.items()})
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            # A torn line left by this failure is dropped on the next start (drop_torn_last_line).
            raise MetricsWriteError(e.errno, _write_failed(f"cannot append to {self.path}", e)) from None
        if self._tb is not None:
            self._write_events(int(step), scalars, split)

    def _write_events(self, step: int, scalars: Mapping[str, float], split: str) -> None:
        from tensorboardX.proto import event_pb2
        from tensorboardX.summary import scalar

        try:
            for name, value in scalars.items():
                self._tb.write_event(event_pb2.Event(wall_time=time.time(), step=step,
                                                     summary=scalar(f"{split}/{name}", _to_float(value))))
            self._tb.flush()
        except OSError as e:
            tb, self._tb = self._tb, None  # nothing more is written to it
            path = _close_quietly(tb)
            raise MetricsWriteError(e.errno, _write_failed(f"cannot write {path}", e)) from None

    def missing_history(self, step: int, every: int) -> str | None:
        """A warning when a run resumed at ``step`` (> 0), logging every ``every`` steps, finds no record of its
        earlier steps (``metrics.jsonl`` deleted or emptied): the loss curve and the reports then start at
        ``step``. ``None`` otherwise (and on processes that do not write)."""
        if not self.active or step < max(int(every), 1):
            return None
        records = _parse(self.path)[0] if self.path.exists() else []
        if any(r["step"] <= int(step) for r in records):
            return None
        return (f"{self.path} holds no record of steps 1–{int(step)} (deleted or emptied?): the run resumes from its "
                f"checkpoint at step {int(step)}, but its loss curve and reports start there")

    def forget_after(self, step: int) -> int:
        """Removes the records of steps after ``step`` (a resumed run's last checkpoint: those steps are redone and
        logged again, so the file keeps one record per step and split). Atomic; returns the number removed."""
        if not self.active or not self.path.exists():
            return 0
        records, _, _ = _parse(self.path)  # a torn last line was already cut in __init__
        keep = [r for r in records if r["step"] <= int(step)]
        if len(keep) == len(records):
            return 0
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        return len(records) - len(keep)

    def close(self) -> None:
        if self._tb is not None:
            tb, self._tb = self._tb, None
            try:
                tb.close()  # every write was flushed: nothing of metrics.jsonl's is lost if this fails
            except OSError as e:
                log.warning("closing %s failed: %s", _close_quietly(tb), e.strerror or e)


def _write_failed(what: str, error: OSError) -> str:
    """``what`` failed with ``error``: the one line that says so and what to do."""
    import errno

    fix = {errno.ENOSPC: "free space", errno.EFBIG: "raise the file-size limit (ulimit -f)"}.get(
        error.errno, "fix the cause")
    return f"{what} ({error.strerror or error}); training stopped, checkpoints are intact: {fix} and rerun to resume"


def _close_quietly(events_writer) -> str:
    """Closes a failed event file's handle (its unflushed bytes would fail again, as an "Exception ignored"
    traceback when the handle is collected) and returns the file's path."""
    handle = getattr(getattr(events_writer, "_py_recordio_writer", None), "_writer", None)
    try:
        if handle is not None:
            handle.close()  # a failing flush still closes the file
    except OSError:
        pass
    return str(getattr(events_writer, "_file_name", "the TensorBoard event file"))


def _parse(path: pathlib.Path) -> tuple[list[dict], int | None, int]:
    """Records of ``path``, the 1-based number of a torn last line (or None) and that line's byte offset."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: list[dict] = []
    offset = 0
    for number, raw in enumerate(lines, start=1):
        is_last = all(not rest.strip() for rest in lines[number:])
        if raw.strip():
            try:
                record = json.loads(raw)
                if not isinstance(record, dict) or "step" not in record:
                    raise ValueError("not a {\"step\": ...} object")
                if isinstance(record["step"], bool) or not isinstance(record["step"], int):
                    raise ValueError(f"step {record['step']!r} is not an integer")
            except (ValueError, UnicodeDecodeError) as e:
                if is_last:
                    return records, number, offset
                raise MetricsFileError(
                    f"{path}, line {number}: not a metrics record ({e}); only a torn last line is dropped "
                    "automatically — fix or delete that line"
                ) from None
            records.append(record)
        offset += len(raw) + 1
    return records, None, len(data)


def drop_torn_last_line(path: str | pathlib.Path) -> None:
    """Cuts a torn last line (a write interrupted by a kill or a full disk) off ``path``, with a warning naming
    file and line, so that appended records start on a line of their own. Corruption elsewhere raises
    :class:`MetricsFileError`."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    _, torn, offset = _parse(path)
    if torn is not None:
        log.warning("%s, line %d: dropping a torn last line (an interrupted write)", path, torn)
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
    elif path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "ab") as f:  # a complete last record whose newline was lost
            f.write(b"\n")


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    """All records of a ``metrics.jsonl`` file (later records for the same step and split win).

    A torn last line (an interrupted write) is skipped with a warning naming file and line; any other line that
    is not a JSON record raises :class:`MetricsFileError` naming file and line.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    parsed, torn, _ = _parse(path)
    if torn is not None:
        log.warning("%s, line %d: skipping a torn last line (an interrupted write)", path, torn)
    records: dict[tuple[int, str], dict] = {}
    for r in parsed:
        records[(r["step"], r.get("split", "train"))] = r
    return sorted(records.values(), key=lambda r: (r.get("split", "train"), r["step"]))
