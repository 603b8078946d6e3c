"""Data parallelism helpers: the ``('data',)`` device mesh and host batches → sharded global arrays.

This is what ``pmap`` became in current JAX: one ``jax.jit`` over a 1-D mesh, the batch sharded along its
leading (trajectory) axis and the state replicated. With several processes each passes its own slice of the
global batch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``('data',)`` mesh over ``devices`` (default: all global devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's ``'data'`` axis."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (the train state)."""
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, keys: Sequence[str] | None = None) -> dict[str, jax.Array]:
    """Per-process batch → global ``jax.Array`` s sharded along the leading dimension.

    Args:
      batch: this process's arrays, each with a leading batch dimension (the global size is the sum over
        processes and must be divisible by the mesh size).
      keys: which entries to shard (default: all).

    Raises:
      ValueError: the global leading size is not divisible by the number of devices (names the key and sizes).
    """
    sharding = batch_sharding(mesh)
    out = {}
    for k in batch if keys is None else keys:
        local = np.asarray(batch[k])
        total = local.shape[0] * jax.process_count()
        if total % mesh.size:
            raise ValueError(
                f"batch entry {k!r}: {total} examples cannot be split evenly over {mesh.size} devices; "
                f"use a batch size divisible by {mesh.size} (or pad the batch and mask the padding)"
            )
        out[k] = jax.make_array_from_process_local_data(sharding, local)
    return out
