"""TensorFlow-free input pipeline: whole trajectories, label grids, seeded shuffling, multi-host, resumable.

Sources (:func:`make_source`): a prepared TFDS dataset read through ``tfds.data_source`` (random access, no
TensorFlow; built first with ``download_and_prepare`` when missing), or an in-memory dict of numpy arrays as
returned by :func:`seqcsist_jax.data.simulate.simulate_seqcsist`.

:class:`TrajectoryLoader` yields per-process batches of whole trajectories::

    frames       (B, T, 11, 11) float32   grey levels
    labels       (B, T, 33, 33) float32   SPEC §1 grid (imaging.targets_to_grid with the loader's c/collision)
    targets      (B, T, MAXT, 3) float32  (xc, yc, brightness), zero padded
    num_targets  (B, T) int32
    trajectory_id (B,) int64              index of the trajectory in its split

with ``B = batch_size // process_count`` (``batch_size`` is the global batch).

Order. ``sampler="public"`` reproduces the public code's ``ContinuousSampler`` on ``batch_size`` ranks
(:func:`public_sampler_order`): rank ``r`` owns the contiguous block ``r`` of the split, so global batch ``s`` is
``{s, N/R + s, 2N/R + s, ...}``; it never shuffles. Otherwise (``sampler="sequential"``) epoch ``e`` visits the
split in ``permutation(N)`` drawn from ``SeedSequence([seed, e])`` (or in stored order with ``shuffle=False``).
Global batch ``b`` is elements ``[b·B_g, (b+1)·B_g)`` of that order; process ``p`` reads only its contiguous slice
``[p·B, (p+1)·B)`` of every global batch through random access. So the global batch is the same whatever the number
of processes, the processes of one step never read the same trajectory, and over an epoch they cover the split
exactly once (without ``drop_remainder``; the last, short global batch is split as evenly as possible). Each epoch's
order is a pure function of ``(seed, epoch)``, which is what makes the iterator resumable:
:meth:`TrajectoryLoader.get_state` is ``(epoch, position)`` plus the settings that define the order, and
:meth:`~TrajectoryLoader.set_state` continues exactly where the saved run was, even on a different number of
processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from seqcsist_jax import imaging

__all__ = [
    "ArraySource",
    "SAMPLERS",
    "TrajectoryLoader",
    "public_sampler_order",
    "load_split_arrays",
    "make_source",
    "shard_batch",
]

_STATE_VERSION = 1
#: Trajectory orders of :class:`TrajectoryLoader` (``sampler=``).
SAMPLERS = ("sequential", "public")


def public_sampler_order(num_examples: int, num_ranks: int) -> np.ndarray:
    """Flat visiting order of the public ``ContinuousSampler`` run on ``num_ranks`` ranks of batch 1 each.

    Rank ``r`` reads the contiguous block ``[r·L, (r+1)·L)`` of the (unshuffled) split, ``L = ceil(N / R)``; at
    step ``s`` the ranks together train ``{s, L + s, 2L + s, ...}``. When ``R`` does not divide ``N`` the split is
    padded by wrapping around to its start, as ``torch.utils.data.DistributedSampler`` does (every step full;
    N = 3,500 and R = 4 need no padding).

    Returns:
      ``(L·R,)`` int64 source indices; global batch ``s`` is ``order[s·R:(s+1)·R]`` (rank order).
    """
    if num_examples < 1 or num_ranks < 1:
        raise ValueError(f"public sampler needs num_examples >= 1 and num_ranks >= 1, got {num_examples}, {num_ranks}")
    per_rank = -(-num_examples // num_ranks)
    padded = np.arange(per_rank * num_ranks, dtype=np.int64) % num_examples
    # (R, L) blocks -> column s holds what the R ranks read at step s.
    return padded.reshape(num_ranks, per_rank).T.reshape(-1)
#: Keys of a stored example that the loader reads (``trajectory_id`` defaults to the index when absent).
_EXAMPLE_KEYS = ("frames", "targets", "num_targets", "trajectory_id")


class ArraySource:
    """In-memory random-access source over whole-split arrays (leading axis = trajectory).

    Args:
      arrays: at least ``frames (N, T, H, W)`` and ``targets (N, T, MAXT, 3)``; ``num_targets (N, T)`` is
        computed from the padding (brightness 0) when absent and ``trajectory_id (N,)`` defaults to
        ``arange(N)``. Other arrays with leading axis ``N`` are kept and indexed too; the rest are dropped.
    """

    def __init__(self, arrays: Mapping[str, Any]):
        if "frames" not in arrays or "targets" not in arrays:
            raise ValueError(f"in-memory source needs 'frames' and 'targets', got keys {sorted(arrays)}")
        frames = np.asarray(arrays["frames"])
        targets = np.asarray(arrays["targets"])
        if frames.ndim != 4:
            raise ValueError(f"arrays['frames'] must be (N, T, H, W), got shape {frames.shape}")
        if targets.ndim != 4 or targets.shape[-1] != 3 or targets.shape[:2] != frames.shape[:2]:
            raise ValueError(
                f"arrays['targets'] must be (N, T, MAXT, 3) matching frames {frames.shape[:2]}, got {targets.shape}"
            )
        n = frames.shape[0]
        data = {"frames": frames, "targets": targets}
        if "num_targets" in arrays:
            data["num_targets"] = np.asarray(arrays["num_targets"], dtype=np.int32)
        else:
            data["num_targets"] = np.count_nonzero(targets[..., 2], axis=-1).astype(np.int32)
        if data["num_targets"].shape != frames.shape[:2]:
            raise ValueError(f"arrays['num_targets'] must be {frames.shape[:2]}, got {data['num_targets'].shape}")
        data["trajectory_id"] = np.asarray(arrays.get("trajectory_id", np.arange(n)), dtype=np.int64)
        if data["trajectory_id"].shape != (n,):
            raise ValueError(f"arrays['trajectory_id'] must be ({n},), got {data['trajectory_id'].shape}")
        for key, value in arrays.items():
            if key not in data and np.ndim(value) >= 1 and np.shape(value)[0] == n:
                data[key] = np.asarray(value)
        self.arrays: dict[str, np.ndarray] = data

    def __len__(self) -> int:
        return self.arrays["frames"].shape[0]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self.arrays.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return [self[int(i)] for i in indices]

    def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Stacked examples ``indices`` (one fancy-indexing gather per array)."""
        return {k: self.arrays[k][indices] for k in _EXAMPLE_KEYS}


def _dataset_name(name: str) -> str:
    return name.split("/", 1)[0].split(":", 1)[0]


# The TFDS datasets this project builds: opened through seqcsist_jax.data.tfds_open (build lock, damage repair).
PROJECT_DATASETS = ("seqcsist", "csist100k")


def make_source(
    name_or_arrays: str | Mapping[str, Any],
    split: str | None = None,
    data_dir: str | None = None,
    build_if_missing: bool = True,
    **data_source_kwargs: Any,
):
    """A random-access source of trajectories for :class:`TrajectoryLoader`.

    Args:
      name_or_arrays: a TFDS name such as ``"seqcsist/mini"`` (``seqcsist`` = the ``default`` config), or a
        dict of numpy arrays (see :class:`ArraySource`).
      split: TFDS split (``train``, ``validation`` or ``test``, or several joined with ``+``; a slice such as
        ``test[:7]`` is refused: TFDS would ignore it on these Parquet files); required for names.
      data_dir: TFDS data directory (``None``: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      build_if_missing: run ``download_and_prepare`` first when the dataset is not prepared yet.
      **data_source_kwargs: passed to ``tfds.data_source``.

    Returns:
      ``tfds.data_source(...)`` (no TensorFlow needed) or an :class:`ArraySource`.

    Multi-host: every process opens the whole split (the loader makes each read only its own slice of every
    global batch). Prepare the dataset once before starting the processes, or on process 0 before the others
    call this, so that they do not build the same data_dir concurrently.
    """
    if isinstance(name_or_arrays, Mapping):
        if split is not None:
            raise ValueError("split applies to TFDS names only; slice the arrays yourself")
        return ArraySource(name_or_arrays)
    if isinstance(name_or_arrays, ArraySource):
        return name_or_arrays
    if not isinstance(name_or_arrays, str):
        raise ValueError(f"make_source needs a TFDS name or a dict of arrays, got {type(name_or_arrays).__name__}")
    if split is None:
        raise ValueError(f"make_source({name_or_arrays!r}) needs a split (train, validation or test)")
    import tensorflow_datasets as tfds

    if _dataset_name(name_or_arrays) == "seqcsist":
        from seqcsist_jax.data import tfds_registration

        tfds_registration.register()
    if _dataset_name(name_or_arrays) in PROJECT_DATASETS:
        from seqcsist_jax.data.tfds_open import read_tfds_split

        def checked(source):  # reading every record once finds damaged files now, not mid-training
            for start in range(0, len(source), 4096):
                source.__getitems__(list(range(start, min(len(source), start + 4096))))
            return source

        return read_tfds_split(name_or_arrays, split, data_dir, build_if_missing, checked, **data_source_kwargs)
    return tfds.data_source(
        name_or_arrays, split=split, data_dir=data_dir, download=build_if_missing, **data_source_kwargs
    )


def _read_examples(source: Any, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Stacked ``frames, targets, num_targets, trajectory_id`` of ``indices`` from any random-access source."""
    if hasattr(source, "read_batch"):
        return source.read_batch(indices)
    # One __getitem__ per trajectory: TFDS's Parquet source answers __getitems__ with a pyarrow `take` that
    # costs ~0.4 ms per call whatever the batch size, while single reads are ~1 µs plus decoding.
    examples = [source[int(i)] for i in indices]
    out = {}
    for key in ("frames", "targets", "num_targets"):
        try:
            out[key] = np.stack([np.asarray(e[key]) for e in examples]) if examples else None
        except KeyError:
            raise ValueError(f"source examples lack {key!r} (have {sorted(examples[0])})") from None
    if examples and "trajectory_id" in examples[0]:
        out["trajectory_id"] = np.array([e["trajectory_id"] for e in examples], dtype=np.int64)
    else:
        out["trajectory_id"] = np.asarray(indices, dtype=np.int64)
    return out


def load_split_arrays(
    name: str, split: str, data_dir: str | None = None, build_if_missing: bool = True,
    manual_dir: str | None = None,
) -> dict[str, np.ndarray]:
    """A whole TFDS split as numpy arrays, in stored order (``manual_dir``: where a ``public`` config reads the
    release when it is first prepared; None: ``<data_dir>/downloads/manual/``).

    Returns:
      ``frames (N, T, 11, 11)`` (uint8, or float32 for float configs), ``targets (N, T, MAXT, 3)`` float32,
      ``num_targets (N, T)`` int32, ``trajectory_id (N,)`` int64 and, when stored, ``frame_numbers (N, T)``.
    """
    from seqcsist_jax.data.tfds_open import manual_dir_kwargs, read_tfds_split

    def read_all(source):
        return source.__getitems__(list(range(len(source)))) if len(source) else []

    if _dataset_name(name) in PROJECT_DATASETS:
        # One pass under the dataset's lock (make_source would read it twice: its damage check, then here);
        # damaged prepared files are rebuilt (seqcsist_jax.data.tfds_open).
        examples = read_tfds_split(name, split, data_dir, build_if_missing, read_all, **manual_dir_kwargs(manual_dir))
    else:
        examples = read_all(make_source(name, split=split, data_dir=data_dir, build_if_missing=build_if_missing,
                                        **manual_dir_kwargs(manual_dir)))
    n = len(examples)
    if not examples:
        raise ValueError(f"{name} split {split!r} is empty")
    out = {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}
    out["trajectory_id"] = out.get("trajectory_id", np.arange(n)).astype(np.int64)
    out["num_targets"] = out["num_targets"].astype(np.int32)
    return out


class TrajectoryLoader:
    """Batches of whole trajectories with label grids; seeded, sharded per process, resumable.

    Args:
      source: a random-access source (``len`` + ``__getitem__`` returning example dicts, e.g.
        ``tfds.data_source``), an :class:`ArraySource`, or a dict of arrays (wrapped in an ArraySource).
      batch_size: global batch size (trajectories per step over all processes).
      shuffle: shuffle every epoch with a permutation drawn from ``(seed, epoch)``; ``False`` keeps the stored
        order (the paper's protocol).
      seed: shuffling seed.
      num_epochs: stop after this many epochs; ``None`` repeats forever.
      drop_remainder: drop the last, short global batch of every epoch.
      process_index, process_count: this process and the number of processes (``None``: from JAX).
      c: sub-pixel division of the label grid.
      collision: ``"sum"`` or ``"overwrite"`` (see :func:`seqcsist_jax.imaging.targets_to_grid`).
      max_targets: pad (or, if the padding allows, trim) the target axis to this many rows; ``None`` keeps it.
      sampler: ``"sequential"`` (global batch ``b`` = elements ``b·B … b·B+B-1`` of the epoch's order) or
        ``"public"`` (the public ``ContinuousSampler`` on ``batch_size`` ranks, :func:`public_sampler_order`;
        needs ``shuffle=False``; every step is full, so ``drop_remainder`` does not apply).

    ``len(loader)`` is :attr:`steps_per_epoch` (batches per epoch, as for a PyTorch ``DataLoader``).
    ``iter(loader)`` continues from the loader's position and advances it; :meth:`get_state` returns the
    position of the next batch.
    """

    def __init__(
        self,
        source: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
        c: int = 3,
        collision: str = "sum",
        max_targets: int | None = None,
        sampler: str = "sequential",
    ):
        if isinstance(source, Mapping):
            source = ArraySource(source)
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not (isinstance(process_count, (int, np.integer)) and process_count >= 1):
            raise ValueError(f"process_count must be a positive integer, got {process_count!r}")
        if not (0 <= process_index < process_count):
            raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}")
        if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size % process_count:
            raise ValueError(f"batch_size={batch_size} is not divisible by process_count={process_count}")
        if num_epochs is not None and num_epochs < 0:
            raise ValueError(f"num_epochs must be >= 0 or None, got {num_epochs!r}")
        if collision not in ("sum", "overwrite"):
            raise ValueError(f"collision must be 'sum' or 'overwrite', got {collision!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "public" and shuffle:
            raise ValueError("sampler='public' is the public ContinuousSampler's fixed order; it needs shuffle=False")
        if max_targets is not None and max_targets < 1:
            raise ValueError(f"max_targets must be >= 1 or None, got {max_targets!r}")
        self.source = source
        self.num_examples = len(source)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_epochs = num_epochs
        self.drop_remainder = bool(drop_remainder)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.c = int(c)
        self.collision = collision
        self.max_targets = max_targets
        self.sampler = sampler
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"no batch per epoch: {self.num_examples} trajectories, batch_size={batch_size}, "
                f"drop_remainder={drop_remainder}"
            )
        self._epoch = 0
        self._position = 0
        self._order_cache: tuple[int, np.ndarray] | None = None

    # ------------------------------------------------------------------------------------------ sizes

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch."""
        if self.sampler == "public":
            return -(-self.num_examples // self.batch_size)
        if self.drop_remainder:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)

    @property
    def local_batch_size(self) -> int:
        """Trajectories per process per full step: ``batch_size // process_count``."""
        return self.batch_size // self.process_count

    def __len__(self) -> int:
        return self.steps_per_epoch

    # ------------------------------------------------------------------------------------------ order

    def epoch_order(self, epoch: int) -> np.ndarray:
        """``(N,)`` source indices in the order epoch ``epoch`` visits them (a pure function of seed/epoch)."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        if self.sampler == "public":
            order = public_sampler_order(self.num_examples, self.batch_size)
        elif self.shuffle:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(epoch)])))
            order = rng.permutation(self.num_examples)
        else:
            order = np.arange(self.num_examples)
        self._order_cache = (epoch, order)
        return order

    def global_indices(self, epoch: int, step: int) -> np.ndarray:
        """Source indices of global batch ``step`` of ``epoch`` over all processes (``(batch_size,)``, or fewer
        for the last, short batch without ``drop_remainder``)."""
        if not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step must be in [0, {self.steps_per_epoch}), got {step}")
        return self.epoch_order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]

    def take_positions(self, count: int) -> list[tuple[int, int]]:
        """The ``(epoch, step)`` of the next ``count`` batches, advancing the loader past them without reading
        any data (for callers that gather batches themselves, e.g. from device-resident arrays)."""
        out = []
        while len(out) < count:
            if self.num_epochs is not None and self._epoch >= self.num_epochs:
                raise StopIteration(f"the loader's {self.num_epochs} epochs are exhausted")
            if self._position >= self.steps_per_epoch:
                self._epoch, self._position = self._epoch + 1, 0
                continue
            out.append((self._epoch, self._position))
            self._position += 1
        return out

    def local_indices(self, epoch: int, step: int) -> np.ndarray:
        """Source indices this process reads for global batch ``step`` of ``epoch``."""
        global_idx = self.global_indices(epoch, step)
        if len(global_idx) == self.batch_size:
            b = self.local_batch_size
            return global_idx[self.process_index * b:(self.process_index + 1) * b]
        return np.array_split(global_idx, self.process_count)[self.process_index]  # last, short batch

    # ------------------------------------------------------------------------------------------ batches

    def batch_at(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """The batch this process gets at ``(epoch, step)``; no side effects."""
        return self._make_batch(self.local_indices(epoch, step))

    def _make_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        ex = _read_examples(self.source, indices)
        targets = np.asarray(ex["targets"], dtype=np.float32)
        if self.max_targets is not None and targets.shape[2] != self.max_targets:
            targets = _resize_targets(targets, self.max_targets)
        labels = imaging.targets_to_grid(targets, c=self.c, collision=self.collision).astype(np.float32)
        return {
            "frames": np.asarray(ex["frames"], dtype=np.float32),
            "labels": labels,
            "targets": targets,
            "num_targets": np.asarray(ex["num_targets"], dtype=np.int32),
            "trajectory_id": np.asarray(ex["trajectory_id"], dtype=np.int64),
        }

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while self.num_epochs is None or self._epoch < self.num_epochs:
            if self._position >= self.steps_per_epoch:
                self._epoch, self._position = self._epoch + 1, 0
                continue
            epoch, step = self._epoch, self._position
            batch = self.batch_at(epoch, step)
            # Advance only once the batch exists, so get_state() after a yield names the next batch.
            self._position = step + 1
            yield batch

    # ------------------------------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position of the next batch plus the settings that define the order."""
        epoch, position = self._epoch, self._position
        if position >= self.steps_per_epoch:
            epoch, position = epoch + 1, 0
        return {
            "version": _STATE_VERSION,
            "epoch": int(epoch),
            "position": int(position),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "drop_remainder": self.drop_remainder,
            "num_examples": int(self.num_examples),
            "sampler": self.sampler,
        }

    def check_state_format(self, state: Any) -> None:
        """Raises ``ValueError`` unless ``state`` is a well-formed saved position of a loader of this split size
        (a mapping with integer ``epoch`` ≥ 0 and ``position`` in ``0..steps_per_epoch``, this state version):
        what a damaged checkpoint breaks. Whether it comes from a loader with the same order is
        :meth:`set_state`'s check."""
        if not isinstance(state, Mapping):
            raise ValueError(f"loader state is a {type(state).__name__}, not a mapping")
        missing = [k for k in ("epoch", "position") if k not in state]
        if missing:
            raise ValueError(f"loader state lacks {missing}: {dict(state)!r}")
        if state.get("version", _STATE_VERSION) != _STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {_STATE_VERSION}")
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (TypeError, ValueError):
            raise ValueError(f"loader state epoch/position are not integers: {dict(state)!r}") from None
        if epoch < 0 or not 0 <= position <= self.steps_per_epoch:
            raise ValueError(f"loader state epoch={epoch}, position={position} out of range "
                             f"(steps_per_epoch={self.steps_per_epoch})")

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continues from ``state`` (from :meth:`get_state`, possibly of a run with another process count).

        Raises:
          ValueError: when the state comes from a loader with a different order (seed, shuffle, batch size,
            drop_remainder or split size) or is malformed.
        """
        self.check_state_format(state)
        mine = self.get_state()
        state = {"sampler": "sequential", **state}  # states saved before the sampler option existed
        for key in ("seed", "shuffle", "batch_size", "drop_remainder", "num_examples", "sampler"):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"loader state has {key}={state[key]!r} but this loader has {key}={mine[key]!r}; "
                    "resuming would not reproduce the saved run's batches"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.steps_per_epoch:
            raise ValueError(f"loader state epoch={epoch}, position={position} out of range "
                             f"(steps_per_epoch={self.steps_per_epoch})")
        self._epoch, self._position = epoch, position


def _resize_targets(targets: np.ndarray, maxt: int) -> np.ndarray:
    k = targets.shape[2]
    if maxt >= k:
        pad = np.zeros(targets.shape[:2] + (maxt - k, 3), dtype=targets.dtype)
        return np.concatenate([targets, pad], axis=2)
    if np.any(targets[:, :, maxt:, 2] != 0):
        raise ValueError(f"max_targets={maxt} is smaller than the number of targets in a frame of this batch")
    return targets[:, :, :maxt]


def shard_batch(batch: Mapping[str, Any], mesh: Any, axis: str = "data") -> dict[str, Any]:
    """Per-process batch → global ``jax.Array`` s sharded along ``axis`` of ``mesh`` (leading dimension).

    Every process passes its own :class:`TrajectoryLoader` batch; the global array's leading size is the
    sum over processes (``batch_size`` for full batches).
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
