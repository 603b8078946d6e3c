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


def train_steps(method, batch: dict, phi: np.ndarray, q: np.ndarray, optimizer_config, num_steps: int = 4,
                rng=None):
    """Initialises ``method`` on ``batch`` and runs ``num_steps`` jitted train steps on it.

    Returns:
      ``(state, losses, metrics)``: the final state, the ``num_steps`` losses and the last step's metrics.
    """
    import jax

    from seqcsist_jax import train as train_lib

    optimizer = train_lib.create_optimizer(optimizer_config)
    # one compile for init and one for the train step (op-by-op execution would compile every primitive)
    init = jax.jit(lambda key: train_lib.create_train_state(key, method.model, optimizer, batch["frames"], phi, q))
    state = init(jax.random.key(0, impl="rbg") if rng is None else rng)
    step = jax.jit(train_lib.make_train_step(method.model, method.loss_fn, optimizer, phi, q))
    losses, metrics = [], {}
    for _ in range(num_steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses, metrics
