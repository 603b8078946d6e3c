"""LISTA (Gregor & LeCun 2010) as the public SeqCSIST toolkit builds it (``LISTA_det.py``, config ``LISTA.py``).

Per frame ``y`` (121 raw grey values, column vector in the public code)::

    x⁰ = Q y                                         Q: the least-squares init matrix (fixed, not learned)
    xᵏ⁺¹ = soft(Wₖ xᵏ + Bₖ y, max(θₖ, 0))            k = 0 … 15, untied weights

with per-layer parameters ``Bs`` (1089×121) initialised to Q, ``Ws`` (1089×1089) initialised to ``I - QΦ`` and a
per-coefficient threshold ``soft_thr`` (1089×1) initialised to ``λ/(1.001·‖Φ‖₂²)`` with λ = 0.4 (the public
``lam``). The loss is the MSE of the final estimate against the label map over *all* frames of the trajectory
(the public detector does not restrict it to frames 2..17).

``loss.public_broadcast`` (default False): the public loss ``mean((x_final - batch_x)²)`` subtracts stacked labels
of shape ``(T, 1, 1089)`` from outputs ``(T, 1089)``; broadcasting makes that a ``(T, T, 1089)`` difference of
*every* output against *every* label of the trajectory, so each output is pulled toward the trajectory's mean
label. ``True`` reproduces that (the paper's rows for LISTA, LIHT, LAMP and TiLISTA); ``False`` is the correct
per-frame MSE. :func:`frame_mse_loss` is shared by those four methods.

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


def broadcast_mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """The public loss's broadcast MSE per trajectory: ``mean_{i,j,p} (pred[j,p] - target[i,p])²``.

    ``pred, target (B, T, ...)`` → ``(B,)``. Computed without the ``(T, T, ...)`` tensor from the identity
    ``mean_i (x - lᵢ)² = (x - l̄)² + mean_i (lᵢ - l̄)²`` (l̄: the trajectory's mean label).
    """
    mean_label = jnp.mean(target, axis=1, keepdims=True)
    return per_trajectory_mse(pred, jnp.broadcast_to(mean_label, pred.shape)) + per_trajectory_mse(
        target, jnp.broadcast_to(mean_label, target.shape)
    )


def frame_mse_loss(outputs: dict, labels: jax.Array, public_broadcast: bool = False) -> tuple[jax.Array, dict]:
    """MSE over all frames of each trajectory, averaged over trajectories (LISTA, LIHT, LAMP, TiLISTA).

    ``public_broadcast=True``: the public code's broadcast form (:func:`broadcast_mse`), every output against
    every label of its trajectory; ``False``: each output against its own frame's label.
    """
    out = outputs["output"]
    term = broadcast_mse(out, labels) if public_broadcast else per_trajectory_mse(out, labels)
    return reduce_terms({"discrepancy": term}, {})


def loss_from_config(loss_config) -> "methods.LossFn":
    """:func:`frame_mse_loss` with ``loss_config.public_broadcast`` (default False)."""
    public_broadcast = bool(loss_config.get("public_broadcast", False)) if loss_config is not None else False
    return lambda outputs, labels: frame_mse_loss(outputs, labels, public_broadcast)


def build_lista(model_config, loss_config) -> methods.Method:
    model = LISTA(num_layers=int(model_config.get("num_layers", 16)), lam=float(model_config.get("lam", 0.4)))
    return methods.Method("lista", model, loss_from_config(loss_config))
