"""Size and cost of a model: parameter counts and FLOPs per trajectory as XLA counts them.

Kept apart from the model modules so that a model never imports a loss; :func:`flops_per_trajectory` takes the
loss only when asked to count a training step.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))


def _cost_flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returns one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def flops_per_trajectory(
    model: Any,
    params: Any,
    phi: jax.Array | np.ndarray,
    q: jax.Array | np.ndarray,
    num_frames: int = 20,
    training: bool = False,
    backend: str | None = "cpu",
    loss_fn: Callable | None = None,
) -> float:
    """FLOPs of one trajectory as XLA's cost analysis counts them (a multiply-add counts 2).

    Inference counts only what produces ``output``: XLA drops the symmetry branch of the stages, which only
    feeds the loss (≈ 3.7 GFLOPs at the default size).

    Args:
      model, params: any method's Flax module (called as ``apply(variables, frames, phi, q)``) and its params.
      phi, q: Φ and Q.
      num_frames: trajectory length T.
      training: count the forward + backward pass of the loss instead of inference only.
      backend: platform to compile for. The default ``"cpu"`` counts every convolution; GPU compilers call
        cuDNN for convolutions, which the cost analysis does not count (``None``: the default device).
      loss_fn: ``loss_fn(outputs, labels) -> (total, terms)`` for ``training`` (default: DeRefNet's ``code`` loss).

    Returns:
      FLOPs for a batch of one trajectory.
    """
    side = math.isqrt(phi.shape[1])
    frame_side = math.isqrt(phi.shape[0])
    frames = jax.ShapeDtypeStruct((1, num_frames, frame_side, frame_side), jnp.float32)
    phi_s = jax.ShapeDtypeStruct(phi.shape, jnp.float32)
    q_s = jax.ShapeDtypeStruct(q.shape, jnp.float32)
    params_s = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.float32), params)
    device = jax.devices(backend)[0] if backend else None
    with jax.default_device(device):
        if not training:
            fn = lambda p, f, a, b: model.apply({"params": p}, f, a, b)["output"]  # noqa: E731
            lowered = jax.jit(fn).lower(params_s, frames, phi_s, q_s)
        else:
            loss = loss_fn
            if loss is None:
                from seqcsist_jax.models.derefnet_loss import derefnet_loss as loss

            labels = jax.ShapeDtypeStruct((1, num_frames, side, side), jnp.float32)

            def total_loss(p, f, a, b, lab):
                return loss(model.apply({"params": p}, f, a, b), lab)[0]

            lowered = jax.jit(jax.grad(total_loss)).lower(params_s, frames, phi_s, q_s, labels)
        return _cost_flops(lowered.compile())
