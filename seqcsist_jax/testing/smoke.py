"""Small, deterministic training batches for the methods' unit tests (the ``:smoke`` configs' simulated data)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from seqcsist_jax import imaging
from seqcsist_jax.data import splits


def smoke_batch(config_name: str, num: int = 2) -> tuple[dict, np.ndarray, np.ndarray]:
    """The first ``num`` training trajectories of config ``config_name`` (e.g. ``"srcnn:smoke"``) as a batch.

    Returns:
      ``(batch, phi, q)``: ``batch = {"frames": (num, T, 11, 11), "labels": (num, T, 33, 33)}`` float32, Φ
      ``(121, 1089)`` and Q ``(1089, 121)`` float32 (Q from the config's training split).
    """
    from experiments import configs

    config = configs.get_config(config_name)
    arrays = splits.load_arrays(config.dataset, config.dataset.train_split)
    phi = imaging.measurement_matrix()
    q = splits.compute_q(arrays["targets"], phi)
    labels = imaging.targets_to_grid(arrays["targets"], collision=config.dataset.collision).astype(np.float32)
    batch = {"frames": jnp.asarray(arrays["frames"][:num], jnp.float32), "labels": jnp.asarray(labels[:num])}
    return batch, phi.astype(np.float32), q.astype(np.float32)
