"""DeRefNet's training loss (SPEC §5), as the public code computes it per trajectory.

Per trajectory::

    loss = γ · Σ_stages mean(sym²)                       # symmetry constraint, mean over T·33·33
         +     Σ_j mean((output_j - label_j)²)           # regression, MSE per centre frame, summed
         + α · Σ_j Σ_m Σ_pixels |aligned_{j,m} - x_j|    # alignment, an L1 *sum*; x = last stage's output

The batch loss is the mean of the per-trajectory losses, so data-parallel training with one trajectory per
device reproduces the public 4-GPU DDP gradient averaging. Weights: preset ``code`` (γ = α = 0.1, the public
code, default) or ``paper`` (0.01, 0.01, the paper's text).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp


class LossWeights(NamedTuple):
    """Auxiliary loss weights: ``constraint`` (γ, symmetry) and ``align`` (α, alignment L1)."""

    constraint: float
    align: float


LOSS_PRESETS: dict[str, LossWeights] = {
    "code": LossWeights(constraint=0.1, align=0.1),
    "paper": LossWeights(constraint=0.01, align=0.01),
}


def _weights(preset: str | LossWeights | tuple[float, float]) -> LossWeights:
    if isinstance(preset, str):
        if preset not in LOSS_PRESETS:
            raise ValueError(f"unknown loss preset {preset!r}; choose one of {sorted(LOSS_PRESETS)}")
        return LOSS_PRESETS[preset]
    return LossWeights(*preset)


def derefnet_loss(
    out: Mapping[str, Any], labels: jax.Array, preset: str | LossWeights | tuple[float, float] = "code"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The public DeRefNet loss, averaged over trajectories.

    Args:
      out: the dict returned by :class:`~seqcsist_jax.models.DeRefNet` (``output (B, J, s, s)``,
        ``frame_index (J,)``, ``sym (S, B, T, s, s)``, ``x_last (B, T, s, s)``, ``aligned (B, J, K, s, s)``).
      labels: ``(B, T, s, s)`` label maps of the whole sequences; the centre frames are picked with
        ``out["frame_index"]``.
      preset: ``"code"`` (default), ``"paper"``, or explicit ``(constraint, align)`` weights.

    Returns:
      ``(total, terms)``: ``total`` scalar; ``terms`` holds the three weighted terms ``loss_constraint``,
      ``loss_reg``, ``loss_align`` (they sum to ``total``) and the unweighted ``constraint`` and ``align``, all
      means over the batch.
    """
    w = _weights(preset)
    x_last = out["x_last"]
    if labels.shape != x_last.shape:
        raise ValueError(
            f"labels must be the full sequences' maps with shape {tuple(x_last.shape)}, got {tuple(labels.shape)}"
        )
    idx = out["frame_index"]
    constraint = jnp.sum(jnp.mean(jnp.square(out["sym"]), axis=(2, 3, 4)), axis=0)  # (B,)
    reg = jnp.sum(jnp.mean(jnp.square(out["output"] - labels[:, idx]), axis=(2, 3)), axis=1)  # (B,)
    align = jnp.sum(jnp.abs(out["aligned"] - x_last[:, idx][:, :, None]), axis=(1, 2, 3, 4))  # (B,)
    terms = {
        "loss_constraint": w.constraint * jnp.mean(constraint),
        "loss_reg": jnp.mean(reg),
        "loss_align": w.align * jnp.mean(align),
        "constraint": jnp.mean(constraint),
        "align": jnp.mean(align),
    }
    total = terms["loss_constraint"] + terms["loss_reg"] + terms["loss_align"]
    return total, terms
