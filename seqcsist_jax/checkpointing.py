"""Orbax checkpoints of a training run: periodic ``latest`` ones and the ``best`` by validation CSO-mAP.

Layout under ``{workdir}/checkpoints/``::

    latest/<step>/{state,loader,meta}   the last ``keep`` periodic checkpoints (resume from the newest)
    best/<step>/{state,loader,meta}     the single checkpoint with the highest validation CSO-mAP

``state`` is the train-state pytree (params, optimiser state, step, RNG), ``loader`` the input pipeline's
position (so a resumed run sees exactly the batches an uninterrupted run would have seen) and ``meta`` a JSON
dict with the resolved config and, for ``best``, the validation metrics.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_KINDS = ("latest", "best")


def _manager(directory: pathlib.Path, **options: Any) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory.resolve(),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False, **options),
        item_names=("state", "loader", "meta"),
    )


class RunCheckpoints:
    """The ``latest`` and ``best`` checkpoint managers of one workdir.

    Saving is synchronous: a run killed right after ``save_latest`` returns still finds the checkpoint, and
    orbax writes to a temporary directory first, so a kill mid-save never leaves a half checkpoint behind.
    """

    def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
        root = pathlib.Path(workdir) / "checkpoints"
        self.latest = _manager(root / "latest", max_to_keep=keep)
        self.best = _manager(root / "best", max_to_keep=1, best_fn=lambda m: float(m["mAP"]), best_mode="max")

    def _save(self, manager, step, state, loader_state, meta, metrics=None) -> None:
        manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                loader=ocp.args.JsonSave(loader_state),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=metrics,
            force=True,
        )
        manager.wait_until_finished()

    def save_latest(self, step: int, state: Any, loader_state: dict, meta: dict) -> None:
        if self.latest.latest_step() == int(step):
            return
        self._save(self.latest, step, state, loader_state, meta)

    def save_best(self, step: int, state: Any, loader_state: dict, meta: dict, metrics: dict) -> bool:
        """Keeps this checkpoint if its ``metrics['mAP']`` beats the stored best. Returns whether it did."""
        best = self.best_metrics()
        if best is not None and float(metrics["mAP"]) <= float(best["mAP"]):
            return False
        if self.best.latest_step() == int(step):
            return False
        self._save(self.best, step, state, loader_state, {**meta, "metrics": metrics}, metrics)
        return True

    def best_metrics(self) -> dict | None:
        step = self.best.best_step()
        if step is None:
            return None
        return self.best.metrics(step)

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
            raise ValueError(f"checkpoint must be 'latest', 'best' or a step number, got {which!r}")
        manager = self.latest if which == "latest" else self.best
        step = manager.latest_step() if which == "latest" else manager.best_step()
        if step is None:
            raise FileNotFoundError(f"no {which!r} checkpoint in {manager.directory}")
        return manager, step

    def restore(self, which: str | int, abstract_state: Any) -> tuple[Any, dict, dict, int]:
        """Restores ``(state, loader_state, meta, step)``; ``abstract_state`` gives shapes and shardings."""
        manager, step = self.resolve(which)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                loader=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["loader"], restored["meta"], step

    def restore_params(self, which: str | int) -> tuple[Any, int]:
        """Restores only the model parameters ``(params, step)`` as host arrays, without knowing the optimiser
        (evaluation needs no optimiser state)."""
        manager, step = self.resolve(which)
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        state = restored["state"]
        params = state["params"] if isinstance(state, dict) else state.params
        return params, step

    def restore_meta(self, which: str | int) -> tuple[dict, int]:
        manager, step = self.resolve(which)
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"], step

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of a pytree of arrays, for restoring into the same layout."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
