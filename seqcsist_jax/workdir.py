"""A run's workdir: where its resolved config lives, and the check that a restart uses the same config.

Layout (see also :mod:`seqcsist_jax.train`)::

    config.json      the resolved config of the run (written once, before anything else)
    qinit.npz        Q computed from the training split (cached)
    metrics.jsonl    train/eval scalars
    checkpoints/     latest/ and best/
    eval/<split>[-<decoder>]/   evaluation outputs
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any, Mapping

import ml_collections

from seqcsist_jax.fileio import atomic_write_json, read_json_object

CONFIG_FILE = "config.json"


class ConfigMismatchError(ValueError):
    """The workdir holds a run of another config; the message lists the differing keys."""


def config_path(workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir) / CONFIG_FILE


def latest_checkpoint_step(workdir: str | pathlib.Path) -> int | None:
    """The newest step folder under ``workdir/checkpoints/latest`` (None when there is none), read from the
    folder names only (no checkpoint is opened: a folder of a killed save is ``<step>.orbax-checkpoint-tmp-*``
    and does not count)."""
    latest = pathlib.Path(workdir) / "checkpoints" / "latest"
    steps = [int(p.name) for p in latest.glob("*") if p.name.isdigit()] if latest.is_dir() else []
    return max(steps) if steps else None


def load_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The resolved config a run saved in its workdir.

    Raises:
      FileNotFoundError: no ``config.json`` (the message says what the directory should be).
      ValueError: ``config.json`` is empty, not valid JSON or not an object (names the file, line and column).
    """
    workdir, path = pathlib.Path(workdir), config_path(workdir)
    if not path.exists():
        elsewhere = ("(to score weights that were not trained here pass --pretrained or --torch_checkpoint with "
                     "--config)")
        if workdir.exists() and not workdir.is_dir():
            raise FileNotFoundError(f"{workdir} is a file, not a directory: pass a training run's directory "
                                    f"{elsewhere}")
        if not workdir.is_dir():  # a mistyped path: say that, not which file is missing in it
            raise FileNotFoundError(f"{workdir} does not exist: pass a training run's directory {elsewhere}")
        raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir? {elsewhere}")
    return ml_collections.ConfigDict(read_json_object(path, "the run's config, as experiments.train saves it"))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


#: Config fields added after runs were saved, with the value that reproduces the old behaviour: a saved config
#: without the field equals one that holds this value (so older runs restart and compare as the same run).
ADDED_FIELD_DEFAULTS: dict[str, Any] = {"optimizer.warmup_steps": 0}


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["key: old → new", ...]`` for every leaf that differs (dotted keys, sorted); a field of
    :data:`ADDED_FIELD_DEFAULTS` missing on one side counts as holding its default."""
    a, b = _flatten(old), _flatten(new)
    for key, value in ADDED_FIELD_DEFAULTS.items():
        if (key in a) != (key in b):
            a.setdefault(key, value)
            b.setdefault(key, value)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb and not (_is_nan(va) and _is_nan(vb)):  # NaN != NaN, but two NaNs are the same setting
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            lines.append(f"{key}: {show(va)} → {show(vb)}")
    return lines


# Fields that may change between restarts of one run without changing what it computes.
RESTART_SAFE_FIELDS = ("progress_bar", "log_every_steps", "dataset.data_dir", "dataset.manual_dir", "multihost",
                       "checkpoint_every_steps", "checkpoint_every_seconds", "eval.batch_size",
                       "eval.num_figure_samples")


# What a differing field's special values mean, added to the mismatch message.
_FIELD_NOTES = {"num_train_steps": "num_train_steps -1: the run's length comes from num_epochs"}


def run_config_differences(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> list[str]:
    """What differs between the run saved in ``workdir`` and ``config`` (``"key: old → new"`` lines), leaving out
    :data:`RESTART_SAFE_FIELDS`; empty when the workdir holds no run or the same one."""
    if not config_path(workdir).exists():
        return []
    return run_differences(load_run_config(workdir).to_dict(), config.to_dict())


def run_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """:func:`config_differences` of two config dicts without :data:`RESTART_SAFE_FIELDS`: empty when both
    compute the same run (e.g. a saved row's config and a rerun that left out ``dataset.data_dir``)."""
    return [d for d in config_differences(old, new) if d.split(":")[0] not in RESTART_SAFE_FIELDS]


def inherit_saved_dataset_dirs(workdir: str | pathlib.Path, config: ml_collections.ConfigDict
                               ) -> tuple[ml_collections.ConfigDict, dict[str, str]]:
    """``config`` with the saved run's ``dataset.data_dir`` and ``dataset.manual_dir`` where a restart of the same
    run leaves them unset.

    Both may change between restarts (the data moved), but a restart that simply omits one must not move the run
    to TFDS's default directory: that would rebuild the data elsewhere, or, for a release read from a manual dir
    (again when its prepared copy is damaged), fail or score other data. Returns ``(config, inherited)``: a copy
    with the saved values and ``{field: value}`` of those inherited, or ``config`` itself and ``{}`` when the
    workdir holds no run, another config, or ``config`` sets both.
    """
    fields = [f for f in ("data_dir", "manual_dir") if config.dataset.get(f) is None]
    if not fields or not config_path(workdir).exists():
        return config, {}
    try:
        saved_dataset = load_run_config(workdir).get("dataset", {})
        saved = {f: str(saved_dataset.get(f)) for f in fields if saved_dataset.get(f) is not None}
        if not saved or run_config_differences(workdir, config):
            return config, {}
    except (OSError, ValueError):  # a damaged config.json: the run's own checks report it
        return config, {}
    config = copy.deepcopy(config)  # the caller's config stays as it was
    for field, value in saved.items():
        config.dataset[field] = value
    return config, saved


def inherit_saved_data_dir(workdir: str | pathlib.Path,
                           config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, str | None]:
    """:func:`inherit_saved_dataset_dirs`, returning the inherited ``dataset.data_dir`` (None when none was)."""
    config, inherited = inherit_saved_dataset_dirs(workdir, config)
    return config, inherited.get("data_dir")


def save_or_check_run_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, *,
                             force: bool = False, write: bool = True) -> None:
    """Writes ``config.json`` for a new run, or checks that a restarted run uses the same config.

    Fields in :data:`RESTART_SAFE_FIELDS` may differ (they do not change the result); the saved file is then
    updated. ``force`` accepts any difference and overwrites the saved config.

    Raises:
      ConfigMismatchError: the workdir holds a run of another config (the message lists the differing keys).
    """
    path = config_path(workdir)
    new = config.to_dict()
    if path.exists() and not force:
        diffs = run_config_differences(workdir, config)
        if diffs:
            shown = "; ".join(diffs[:8]) + (f"; … ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
            notes = "".join(f" ({note})" for key, note in _FIELD_NOTES.items()
                            if any(d.split(":")[0] == key for d in diffs[:8]))
            raise ConfigMismatchError(
                f"{path} holds a run of another config ({shown}){notes}. Use another --workdir, or pass "
                "--force_config (force_config=True from Python) to overwrite the saved config and continue from its "
                "checkpoints"
            )
    if write:
        atomic_write_json(path, new, sort_keys=True)
