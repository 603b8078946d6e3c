"""Scalar logging for training runs: TensorBoard event files (tensorboardX) plus a JSONL file.

The JSONL file (``{workdir}/metrics.jsonl``, one ``{"step": s, "split": ..., name: value}`` object per line)
is what the plotting and report code reads; TensorBoard is for looking at runs live
(``tensorboard --logdir WORKDIR/tensorboard``). Only process 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
from typing import Mapping

import jax

from seqcsist_jax.fileio import atomic_write

log = logging.getLogger(__name__)


class MetricsWriteError(OSError):
    """Appending to ``metrics.jsonl`` failed (e.g. a full disk); the message names the file."""


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
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
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
            message = (f"cannot append to {self.path} ({e.strerror or e}); training stopped, checkpoints are "
                       "intact: free space and rerun to resume")
            raise MetricsWriteError(e.errno, message) from None
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(f"{split}/{name}", _to_float(value), int(step))
            self._tb.flush()

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
            self._tb.close()


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
