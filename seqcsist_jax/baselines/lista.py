"""LISTA (Gregor & LeCun 2010) as the public SeqCSIST toolkit builds it (``LISTA_det.py``, config ``LISTA.py``).

Per frame ``y`` (121 raw grey values, column vector in the public code)::

    x⁰ = Q y                                         Q: the least-squares init matrix (fixed, not learned)
    xᵏ⁺¹ = soft(Wₖ xᵏ + Bₖ y, max(θₖ, 0))            k = 0 … 15, untied weights

with per-layer parameters ``Bs`` (1089×121) initialised to Q, ``Ws`` (1089×1089) initialised to ``I - QΦ`` and a
per-coefficient threshold ``soft_thr`` (1089×1) initialised to ``λ/(1.001·‖Φ‖₂²)`` with λ = 0.4 (the public
``lam``). The loss is the MSE of the final estimate against the label map over *all* frames of the trajectory
(the public detector does not restrict it to frames 2..17).

Parameters: 16 × (1089·121 + 1089² + 1089) = 21,100,464 (the paper: 21.1 M).

Row-vector layout here: ``x (N, 1089)``, so ``W x`` is ``x Wᵀ``; the stored arrays keep the public shapes and
names so checkpoints port without transposition.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import (
    check_inputs,
    frame_vectors,
    per_trajectory_mse,
    reduce_terms,
    soft_threshold,
)


class ListaLayer(nn.Module):
    """One LISTA layer; params ``Bs (n, m)``, ``Ws (n, n)``, ``soft_thr (n, 1)`` initialised from Φ and Q.

    ``lam`` sets the initial threshold ``lam / (1.001·‖Φ‖₂²)`` (computed only when the params are created).
    """

    lam: float = 0.4

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array, phi: jax.Array, q: jax.Array) -> jax.Array:
        n, _ = q.shape
        b = self.param("Bs", lambda _: jnp.asarray(q, jnp.float32))
        w = self.param("Ws", lambda _: jnp.eye(n, dtype=jnp.float32) - jnp.asarray(q @ phi, jnp.float32))
        thr = self.param(
            "soft_thr", lambda _: jnp.full((n, 1), self.lam / (1.001 * jnp.linalg.norm(phi, ord=2) ** 2), jnp.float32)
        )
        return soft_threshold(x @ w.T + y @ b.T, jax.nn.relu(thr[:, 0]))


class LISTA(nn.Module):
    """Attributes: ``num_layers`` (16), ``lam`` (0.4: the initial threshold is ``lam / (1.001·‖Φ‖₂²)``)."""

    num_layers: int = 16
    lam: float = 0.4

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``."""
        b, t, _, side = check_inputs(frames, phi, q)
        phi = jnp.asarray(phi, jnp.float32)
        q = jnp.asarray(q, jnp.float32)
        y = frame_vectors(frames)
        x = y @ q.T
        for i in range(self.num_layers):
            x = ListaLayer(self.lam, name=f"layer_{i}")(x, y, phi, q)
        return {"output": x.reshape(b, t, side, side), "frame_index": np.arange(t)}


def lista_loss(outputs: dict, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Public LISTA loss: MSE over all frames of each trajectory, averaged over trajectories."""
    return reduce_terms({"discrepancy": per_trajectory_mse(outputs["output"], labels)}, {})


def build_lista(model_config, loss_config) -> methods.Method:
    del loss_config
    model = LISTA(num_layers=int(model_config.get("num_layers", 16)), lam=float(model_config.get("lam", 0.4)))
    return methods.Method("lista", model, lista_loss)
