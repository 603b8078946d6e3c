"""Whole splits as arrays, and the data-derived constants of a run (Q), for training and evaluation.

``dataset`` arguments are the ``config.dataset`` block of an experiment config: ``name`` is
``"seqcsist/<builder config>"`` (read through ``tfds.data_source``, built on first use) or ``"simulated"``
(generated in memory with the simulator and per-split seeds, for tests and smoke runs).
"""

from __future__ import annotations

import pathlib
from typing import Mapping

import jax
import ml_collections
import numpy as np

from seqcsist_jax import imaging
from seqcsist_jax.fileio import atomic_path


def simulated_split_sizes(dataset: ml_collections.ConfigDict) -> dict[str, int]:
    """Trajectories per split of ``dataset.name == "simulated"`` (keys: the config's split names)."""
    return {
        dataset.train_split: dataset.num_train,
        dataset.eval_split: dataset.num_eval,
        dataset.test_split: dataset.num_test,
    }


def split_names(dataset: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The config's (train, eval, test) split names."""
    return (dataset.train_split, dataset.eval_split, dataset.test_split)


def check_split(dataset: ml_collections.ConfigDict, split: str) -> None:
    """Raises ValueError naming the available splits when ``split`` is not one of the config's."""
    if split not in split_names(dataset):
        raise ValueError(f"unknown split {split!r} for {dataset.name}; choose from {', '.join(split_names(dataset))}")


def count_split(dataset: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples (trajectories) in a split, without loading its arrays (builds a missing TFDS dataset)."""
    check_split(dataset, split)
    if dataset.name == "simulated":
        return int(simulated_split_sizes(dataset)[split])
    from seqcsist_jax.data.pipeline import make_source

    return len(make_source(dataset.name, split=split, data_dir=dataset.data_dir,
                           build_if_missing=dataset.build_if_missing))


def load_arrays(dataset: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
    """A whole split as numpy arrays (``frames``, ``targets``, ``num_targets``, ...).

    ``dataset.name == "simulated"`` generates it in memory with the simulator (per-split seeds); otherwise it is
    read through ``tfds.data_source`` from ``dataset.data_dir``, building the dataset first when missing.
    """
    if dataset.name == "simulated":
        from seqcsist_jax.data.simulate import simulate_seqcsist, split_seed

        check_split(dataset, split)
        counts = simulated_split_sizes(dataset)
        seed_split = {dataset.train_split: "train", dataset.eval_split: "val", dataset.test_split: "test"}
        options = dataset.simulate.to_dict() if dataset.get("simulate") else {}
        arrays = simulate_seqcsist(counts[split], split_seed(0, seed_split[split]), **options)
        arrays["trajectory_id"] = np.arange(len(arrays["frames"]), dtype=np.int64)
        return arrays
    from seqcsist_jax.data.pipeline import load_split_arrays

    return load_split_arrays(
        dataset.name, split, data_dir=dataset.data_dir, build_if_missing=dataset.build_if_missing
    )


def compute_q(train_targets: np.ndarray, phi: np.ndarray, collision: str = "sum") -> np.ndarray:
    """Q = X Yᵀ (Y Yᵀ)⁻¹ over the training labels (SPEC §2), via the label Gram matrix. ``(1089, 121)``."""
    return imaging.least_squares_init_from_gram(phi, imaging.label_gram(train_targets, collision=collision))


def _read_q_cache(path: pathlib.Path) -> tuple[str, np.ndarray] | None:
    """``(key, Q)`` of a ``qinit.npz``, or None when missing or damaged (Q is then recomputed: it is a cache)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            key, q = str(f["key"]), np.asarray(f["q"])
    except Exception:  # noqa: BLE001 (any unreadable file: truncated zip, garbage, wrong keys)
        return None
    if q.ndim != 2 or not np.all(np.isfinite(q)):
        return None
    return key, q


def cached_q(workdir: pathlib.Path, dataset_name: str, train_arrays: Mapping[str, np.ndarray], collision: str = "sum"):
    """Loads ``{workdir}/qinit.npz`` when it was computed for the same data, else computes and caches Q."""
    path = workdir / "qinit.npz"
    key = f"{dataset_name}|{len(train_arrays['frames'])}|{collision}"
    cached = _read_q_cache(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    q = compute_q(train_arrays["targets"], imaging.measurement_matrix().astype(np.float64), collision=collision)
    if jax.process_index() == 0:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, q=q, key=key)
    return q


def q_for_workdir(workdir: pathlib.Path | None, dataset: ml_collections.ConfigDict) -> np.ndarray:
    """Q of a run: the workdir's cached ``qinit.npz`` when it was computed for this dataset and collision rule,
    else computed from the training split's labels (and cached when ``workdir`` is given).

    Scoring a finished run therefore never loads its training split.
    """
    if workdir is not None:
        cached = _read_q_cache(pathlib.Path(workdir) / "qinit.npz")
        if cached is not None:
            name, _, collision = (cached[0].split("|") + ["", ""])[:3]
            if name == dataset.name and collision == dataset.collision:
                return cached[1]
    train = load_arrays(dataset, dataset.train_split)
    if workdir is None:
        return compute_q(train["targets"], imaging.measurement_matrix().astype(np.float64), dataset.collision)
    return cached_q(pathlib.Path(workdir), dataset.name, train, dataset.collision)
