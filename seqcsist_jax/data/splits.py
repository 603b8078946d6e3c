"""Whole splits as arrays, and the data-derived constants of a run (Q), for training and evaluation.

``dataset`` arguments are the ``config.dataset`` block of an experiment config: ``name`` is
``"seqcsist/<builder config>"`` or ``"csist100k/<builder config>"`` (read through ``tfds.data_source``, built
on first use), ``"simulated"`` or ``"simulated_csist100k"`` (generated in memory with the SeqCSIST or CSIST-100K
generator and per-split seeds, for tests and smoke runs).

Single-image datasets (CSIST-100K, SPEC §9) come out as one-frame trajectories
(:func:`seqcsist_jax.data.csist100k.as_trajectories`): ``frames (N, 1, 11, 11)``, ``targets (N, 1, 5, 3)``,
``trajectory_id`` the image's index and ``frame_numbers (N, 1)`` its ``image_number``, so training, the metric
and the exports run the same code for both benchmarks. ``dataset.c`` (default 3) is the sub-pixel division of
the label grids, Φ and Q.
"""

from __future__ import annotations

import pathlib
from typing import Mapping

import jax
import ml_collections
import numpy as np

from seqcsist_jax import imaging
# the dataset names and their checks, re-exported from a module without JAX (see its docstring)
from seqcsist_jax.data.names import (SIMULATED, SINGLE_IMAGE, UnknownDatasetError,  # noqa: F401
                                     check_dataset_name, check_split_names, dataset_family, is_single_image,
                                     known_dataset_names)
from seqcsist_jax.fileio import atomic_path
from seqcsist_jax.suggest import did_you_mean


def subpixel_c(config: ml_collections.ConfigDict) -> int:
    """Sub-pixel division ``c`` of a run (``config.dataset.c``, default 3): label grids, Φ and Q are ``11c``-sided.

    Raises:
      ValueError: ``config.model.c`` is set and differs from ``config.dataset.c``, or c is not a positive odd
        integer.
    """
    c = config.dataset.get("c", 3)
    if isinstance(c, bool) or not isinstance(c, int) or c < 1 or c % 2 == 0:
        # Odd only: the pixel centre must be a cell centre (the toolkit's label rule round(c·x + (c-1)//2) and our
        # grid coordinates (i - (c-1)/2)/c agree only then); an even c would put it on a cell border.
        raise ValueError(f"config.dataset.c must be a positive odd integer (the toolkit uses 3, 5, 7), got {c!r}")
    model_c = config.get("model", {}).get("c", None)
    if model_c is not None and int(model_c) != c:
        raise ValueError(f"config.model.c={model_c} but config.dataset.c={c}; they must agree (set config.dataset.c)")
    return c


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
        raise ValueError(f"unknown split {split!r} for {dataset.name}{did_you_mean(split, split_names(dataset))}; "
                         f"choose from {', '.join(split_names(dataset))}")


def count_split(dataset: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples (trajectories) in a split, without loading its arrays (builds a missing TFDS dataset)."""
    check_split(dataset, split)
    check_dataset_name(dataset.name, dataset.get("data_dir"))
    if dataset.name in SIMULATED:
        return int(simulated_split_sizes(dataset)[split])
    from seqcsist_jax.data import tfds_registration
    from seqcsist_jax.data.pipeline import make_source
    from seqcsist_jax.data.tfds_open import manual_dir_kwargs

    tfds_registration.register()

    return len(make_source(dataset.name, split=split, data_dir=dataset.data_dir,
                           build_if_missing=dataset.build_if_missing, **manual_dir_kwargs(dataset.get("manual_dir"))))


def load_arrays(dataset: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
    """A whole split as numpy arrays (``frames``, ``targets``, ``num_targets``, ...).

    ``dataset.name == "simulated"`` / ``"simulated_csist100k"`` generates it in memory (per-split seeds, options
    from ``dataset.simulate``); otherwise it is read through ``tfds.data_source`` from ``dataset.data_dir``,
    building the dataset first when missing. Single images come as one-frame trajectories (module docstring).

    Raises:
      UnknownDatasetError: ``dataset.name`` is no dataset this project reads (:func:`check_dataset_name`).
    """
    check_dataset_name(dataset.name, dataset.get("data_dir"))
    if dataset.name == "simulated_csist100k":
        from seqcsist_jax.data import csist100k
        from seqcsist_jax.data.simulate import split_seed

        check_split(dataset, split)
        seed_split = {dataset.train_split: "train", dataset.eval_split: "val", dataset.test_split: "test"}
        options = dataset.simulate.to_dict() if dataset.get("simulate") else {}
        images = csist100k.simulate_csist100k(simulated_split_sizes(dataset)[split],
                                              split_seed(0, seed_split[split]), **options)
        return csist100k.as_trajectories(images)
    if dataset_family(dataset.name) == "csist100k":
        from seqcsist_jax.data import csist100k

        return csist100k.as_trajectories(csist100k.load_csist100k_arrays(
            dataset.name, split, data_dir=dataset.data_dir, build_if_missing=dataset.build_if_missing,
            manual_dir=dataset.get("manual_dir")))
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
        dataset.name, split, data_dir=dataset.data_dir, build_if_missing=dataset.build_if_missing,
        manual_dir=dataset.get("manual_dir"),
    )


def compute_q(train_targets: np.ndarray, phi: np.ndarray, collision: str = "sum", c: int = 3) -> np.ndarray:
    """Q = X Yᵀ (Y Yᵀ)⁻¹ over the training labels (SPEC §2), via the label Gram matrix.

    ``(n, 121)`` with ``n = (11c)²`` (1089 for c = 3); ``phi`` is ``(121, n)``.
    """
    return imaging.least_squares_init_from_gram(phi, imaging.label_gram(train_targets, c=c, collision=collision))


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


def _q_key(dataset_name: str, num_train: int, collision: str, c: int) -> str:
    # c = 3 keeps the original three-field key so existing caches stay valid
    return f"{dataset_name}|{num_train}|{collision}" + ("" if c == 3 else f"|{c}")


def cached_q(workdir: pathlib.Path, dataset_name: str, train_arrays: Mapping[str, np.ndarray], collision: str = "sum",
             c: int = 3):
    """Loads ``{workdir}/qinit.npz`` when it was computed for the same data and ``c``, else computes and caches Q."""
    path = workdir / "qinit.npz"
    key = _q_key(dataset_name, len(train_arrays["frames"]), collision, c)
    cached = _read_q_cache(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    q = compute_q(train_arrays["targets"], imaging.measurement_matrix(c=c).astype(np.float64), collision=collision,
                  c=c)
    if jax.process_index() == 0:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, q=q, key=key)
    return q


def q_for_workdir(workdir: pathlib.Path | None, dataset: ml_collections.ConfigDict) -> np.ndarray:
    """Q of a run: the workdir's cached ``qinit.npz`` when it was computed for this dataset and collision rule,
    else computed from the training split's labels (and cached when ``workdir`` is given).

    Scoring a finished run therefore never loads its training split.
    """
    c = int(dataset.get("c", 3))
    if workdir is not None:
        cached = _read_q_cache(pathlib.Path(workdir) / "qinit.npz")
        if cached is not None:
            name, _, collision, *rest = cached[0].split("|") + ([""] * 2)
            cached_c = int(rest[0]) if rest and rest[0].isdigit() else 3
            if name == dataset.name and collision == dataset.collision and cached_c == c:
                return cached[1]
    train = load_arrays(dataset, dataset.train_split)
    if workdir is None:
        return compute_q(train["targets"], imaging.measurement_matrix(c=c).astype(np.float64), dataset.collision, c)
    return cached_q(pathlib.Path(workdir), dataset.name, train, dataset.collision, c)
