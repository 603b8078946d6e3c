"""Scalar logging for training runs: TensorBoard event files (tensorboardX) plus a JSONL file.

The JSONL file (``{workdir}/metrics.jsonl``, one ``{"step": s, "split": ..., name: value}`` object per line)
is what the plotting and report code reads; TensorBoard is for looking at runs live
(``tensorboard --logdir WORKDIR/tensorboard``). Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Mapping

import jax


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

    def write(self, step: int, scalars: Mapping[str, float], split: str = "train") -> None:
        if not self.active:
            return
        record = {"step": int(step), "split": split}
        record.update({k: _to_float(v) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(f"{split}/{name}", _to_float(value), int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    """All records of a ``metrics.jsonl`` file (later records for the same step and split win)."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records: dict[tuple[int, str], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[(r["step"], r.get("split", "train"))] = r
    return sorted(records.values(), key=lambda r: (r.get("split", "train"), r["step"]))
