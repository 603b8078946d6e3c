"""Device-resident, multi-step training: the training split lives on the devices and one jitted call runs K steps.

The whole training split is small (SeqCSIST: 3,500 trajectories × 20 frames of 11×11 uint8, and their 33×33
label grids, ≈ 0.3 GB in float32), so it is copied once to every device of the ``('data',)`` mesh (replicated)
and each step gathers its trajectories there by index. :func:`make_multi_step` wraps the ordinary
``train_step(state, batch)`` of :mod:`seqcsist_jax.train` in ``jax.lax.scan`` over a ``(K, B)`` table of
trajectory indices, so one dispatch runs K steps with no host work in between. The order still comes from the
host :class:`~seqcsist_jax.data.pipeline.TrajectoryLoader` (``take_positions`` / ``global_indices``), so
resume, checkpoints and the loader state are those of the step-by-step loop; only the granularity at which the
host sees the state changes (the caller never lets a call cross a logging, checkpoint or evaluation step).

Labels are rasterised once on the host with the same :func:`seqcsist_jax.imaging.targets_to_grid` call as the
loader (and the same collision rule), so a device batch equals the loader's batch exactly. Keeping them on the
device was chosen over rasterising from the target lists inside the step: it costs memory only (0.3 GB) and
no step time.

Speed on CPU (``experiments/benchmarks/bench_train.py``, smoke DeRefNet, batch 1, measured breakdown of one
step: host loader batch 0.1 ms, transfer 0.4 ms, on-device gather 0.02 ms, forward 86 ms, forward + backward
536 ms, Adam 1.3 ms). Two XLA:CPU effects decide it, not the host work (< 0.1 % of a step):

* Convolutions inside a ``while`` body are not canonicalised (XLA's ``ConvCanonicalization`` visits only the
  entry computation), so JAX's backward convolutions ran on the naive emitter and the scanned step took 2.6×
  the jitted step. :mod:`seqcsist_jax.ops.conv` writes the backward pass with canonical convolutions.
* Every call of a compiled program allocates its temporaries afresh (~350 MB for the smoke backward pass,
  ~89,000 page faults, ~170 ms of system time a call). One K-step call pays that once; the loop body reuses
  its buffers, which is where the K-step call saves about a third of the CPU time per step.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from seqcsist_jax import imaging, sharding

__all__ = ["DeviceData", "device_data", "make_multi_step", "resolve_global_batch", "indices_table"]


@flax.struct.dataclass
class DeviceData:
    """A training split on the devices (replicated over the mesh).

    Attributes:
      frames: ``(N, T, 11, 11)`` grey levels in their stored dtype (uint8 for SeqCSIST; cast to float32 per step).
      labels: ``(N, T, 33, 33)`` float32 label grids (SPEC §1 with the run's collision rule).
    """

    frames: jax.Array
    labels: jax.Array


def resolve_global_batch(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> int:
    """Trajectories per step over all devices.

    ``config.global_batch_size > 0`` fixes it whatever the device count (the paper protocol: 4, as the public
    4-GPU DDP run; 1 device trains a batch of 4, 2 devices 2 × 2, 4 devices 4 × 1); otherwise it is
    ``per_device_batch_size × num_devices``. The gradient is the mean over the global batch in every case.

    Raises:
      ValueError: the devices (or processes) do not divide a fixed global batch; the message says how to pick
        the devices (``config.num_devices``) or change the batch, and that the latter leaves the paper protocol.
    """
    fixed = int(config.get("global_batch_size", -1) or -1)
    if fixed <= 0:
        return int(config.per_device_batch_size) * num_devices
    if num_devices > fixed or fixed % num_devices or fixed % process_count:
        divisors = [d for d in range(1, fixed + 1) if fixed % d == 0]
        # the example is a count these devices can run: the most devices, up to those selected, that split it
        usable = [d for d in divisors if d <= num_devices and d % process_count == 0] or divisors
        raise ValueError(
            f"config.global_batch_size={fixed} cannot be split evenly over {num_devices} devices"
            + (f" in {process_count} processes" if process_count > 1 else "")
            + f": run on {', '.join(map(str, divisors))} devices (e.g. --config.num_devices={usable[-1]}), "
            f"or set --config.global_batch_size to a multiple of {num_devices} (that changes the paper protocol's "
            "batch, and with it the optimisation trajectory)"
        )
    return fixed


def device_data(
    arrays: Mapping[str, np.ndarray], mesh: Mesh, collision: str = "sum", c: int = 3
) -> DeviceData:
    """Copies a split's ``frames`` and its label grids (rasterised here from ``targets``) to every device.

    Works with several processes: each process passes the same whole split (every process opens it anyway) and
    its addressable devices receive their replicas.
    """
    frames = np.asarray(arrays["frames"])
    if frames.dtype != np.uint8:
        frames = frames.astype(np.float32)
    labels = imaging.targets_to_grid(np.asarray(arrays["targets"], np.float32), c=c, collision=collision)
    labels = np.asarray(labels, np.float32)
    rep = sharding.replicated(mesh)
    put = lambda a: jax.make_array_from_callback(a.shape, rep, lambda index: a[index])
    return DeviceData(frames=put(frames), labels=put(labels))


def indices_table(loader: Any, positions: list[tuple[int, int]]) -> np.ndarray:
    """``(K, B)`` int32 global trajectory indices of the loader's batches at ``positions`` ``(epoch, step)``.

    Raises:
      ValueError: a batch is short (``drop_remainder=False``): device-resident steps need full batches.
    """
    rows = [loader.global_indices(epoch, step) for epoch, step in positions]
    if any(len(r) != loader.batch_size for r in rows):
        raise ValueError("device-resident training needs full global batches (drop_remainder=True)")
    return np.asarray(rows, dtype=np.int32).reshape(len(rows), loader.batch_size)


def make_multi_step(train_step: Callable, mesh: Mesh) -> Callable:
    """``multi_step(state, data, indices) -> (state, metrics)``: ``K = indices.shape[0]`` steps in one scan.

    Args (of the returned function):
      state: a :class:`seqcsist_jax.train.TrainState` (replicated).
      data: :class:`DeviceData` (replicated).
      indices: ``(K, B)`` int32 trajectory indices, one global batch per row.

    Returns:
      the state after K steps and the per-step metrics stacked along a leading ``K`` axis.

    Each step gathers ``frames[indices[i]]`` (cast to float32) and ``labels[indices[i]]`` and constrains the
    batch to the ``('data',)`` sharding, so every device computes on its share as in the step-by-step loop.
    """
    batch_sharding = sharding.batch_sharding(mesh)

    def multi_step(state, data: DeviceData, indices: jax.Array):
        def body(carry, idx):
            batch = {"frames": data.frames[idx].astype(jnp.float32), "labels": data.labels[idx]}
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            return train_step(carry, batch)

        return jax.lax.scan(body, state, indices)

    return multi_step


def jit_multi_step(train_step: Callable, mesh: Mesh) -> Callable:
    """:func:`make_multi_step` jitted with the state and data replicated and the state donated."""
    rep = sharding.replicated(mesh)
    return jax.jit(make_multi_step(train_step, mesh), in_shardings=(rep, rep, rep), out_shardings=(rep, rep),
                   donate_argnums=0)


def split_metrics(stacked: Mapping[str, Any], count: int) -> list[dict[str, Any]]:
    """Per-step metrics from a stacked ``(K,)`` dict: host numpy for K > 1 (one transfer per call), device
    scalars for K = 1 (no synchronisation, as in the step-by-step loop)."""
    if count == 1:
        return [{k: v[0] for k, v in stacked.items()}]
    host = jax.device_get(dict(stacked))
    return [{k: v[i] for k, v in host.items()} for i in range(count)]
