"""ISTA-Net⁺⁺ (You, Zhang & Zhang, ICME 2021) as the public SeqCSIST toolkit builds it (``ISTA_Net_pp_det.py``,
``ISTA_Net_pp_bb.py``, config ``ISTA_Net_pp.py``: 20 stages, Adam without weight decay).

* Initialisation ``x⁰ = Φᵀy`` as a 33×33 map (no Q; the public code does it with a 1×1 conv and PixelShuffle(33),
  which is the row-major reshape of ``yΦ``).
* A condition network on the constant input ``c = 0.005`` (the public ``get_cond(0.5, 0, 'org_sigma')`` →
  0.5/100): ``Dense 1→32, LeakyReLU(0.01), Dense 32→32, LeakyReLU, Dense 32→2S, LeakyReLU`` gives a step size
  ``λ_k`` and a condition value ``c_k`` for each of the S stages.
* Stage k: ``r = x - λ_k·ΦᵀΦx + λ_k·Φᵀy``; ``x = r + conv 32→1 (RB(RB(conv 2→32 ([r, c_k]))))`` where ``c_k``
  fills a second input channel and ``RB`` is ``h + conv(LeakyReLU₀.₁(conv(h)))``; 3×3 convs with bias.
* PyTorch default initialisation everywhere.
* Loss: ``MSE(x[2:T-2], label[2:T-2])`` per trajectory.

Parameters: 20 × (608 + 4 × 9,248 + 289) + (64 + 1,056 + 1,320) = 760,220 (the paper: 0.76 M).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import (
    SCORED_MARGIN,
    ResBlock,
    check_inputs,
    frame_vectors,
    loss_margin,
    per_trajectory_mse,
    reduce_terms,
    scored_slice,
)
from seqcsist_jax.models.layers import Conv, torch_default_bias, torch_default_kernel


def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
    """``nn.Linear`` with PyTorch's default initialisation."""
    return nn.Dense(features, kernel_init=torch_default_kernel, bias_init=torch_default_bias(fan_in), name=name)


class ConditionNetwork(nn.Module):
    """``(1,)`` condition → per-stage ``(λ (S,), c (S,))`` (public ``condition_network``)."""

    num_stages: int
    hidden: int = 32

    @nn.compact
    def __call__(self, cond: jax.Array) -> tuple[jax.Array, jax.Array]:
        act = lambda v: jax.nn.leaky_relu(v, 0.01)
        h = act(_dense(self.hidden, 1, "fc1")(cond))
        h = act(_dense(self.hidden, self.hidden, "fc2")(h))
        h = act(_dense(2 * self.num_stages, self.hidden, "fc3")(h))
        return h[: self.num_stages], h[self.num_stages :]


class IstaNetPPStage(nn.Module):
    """One stage: gradient step, then ``head_conv`` (2→C), two residual blocks, ``tail_conv`` (C→1), residual."""

    channels: int = 32
    num_res_blocks: int = 2

    @nn.compact
    def __call__(self, x, y_phi, phi, step, cond):
        """``x (N, s, s, 1)`` maps, ``y_phi (N, s, s, 1)``, scalars ``step`` and ``cond`` → ``(N, s, s, 1)``."""
        n, s = x.shape[0], x.shape[1]
        flat = x.reshape(n, s * s)
        r = x + step * (y_phi - ((flat @ phi.T) @ phi).reshape(x.shape))
        h = Conv(self.channels, 3, name="head_conv")(jnp.concatenate([r, jnp.full_like(r, cond)], axis=-1))
        for i in range(self.num_res_blocks):
            h = ResBlock(self.channels, negative_slope=0.1, name=f"res_{i}")(h)
        return r + Conv(1, 3, name="tail_conv")(h)


class ISTANetPP(nn.Module):
    """Attributes: ``num_stages`` (20), ``channels`` (32), ``condition`` (the constant input, 0.005)."""

    num_stages: int = 20
    channels: int = 32
    condition: float = 0.005

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``; ``q`` is unused."""
        b, t, _, side = check_inputs(frames, phi, None)
        phi = jnp.asarray(phi, jnp.float32)
        steps, conds = ConditionNetwork(self.num_stages, name="condition")(jnp.full((1,), self.condition, jnp.float32))
        y_phi = (frame_vectors(frames) @ phi).reshape(b * t, side, side, 1)
        x = y_phi
        for k in range(self.num_stages):
            x = IstaNetPPStage(self.channels, name=f"stage_{k}")(x, y_phi, phi, steps[k], conds[k])
        return {"output": x.reshape(b, t, side, side), "frame_index": np.arange(t)}


def istanet_pp_loss(outputs: dict, labels: jax.Array, margin: int = SCORED_MARGIN) -> tuple[jax.Array, dict]:
    """Public ISTA-Net⁺⁺ loss: MSE on frames ``[margin:T-margin]`` (``[2:T-2]``) per trajectory, mean over the
    batch."""
    out = outputs["output"]
    scored = scored_slice(out.shape[1], margin)
    return reduce_terms({"discrepancy": per_trajectory_mse(out[:, scored], labels[:, scored])}, {})


def build_istanet_pp(model_config, loss_config) -> methods.Method:
    margin = loss_margin(loss_config)
    model = ISTANetPP(
        num_stages=int(model_config.get("num_stages", 20)),
        channels=int(model_config.get("channels", 32)),
        condition=float(model_config.get("condition", 0.005)),
    )
    return methods.Method("istanet_pp", model, lambda out, labels: istanet_pp_loss(out, labels, margin))
