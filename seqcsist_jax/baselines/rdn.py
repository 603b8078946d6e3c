"""RDN (Zhang et al. 2018, residual dense network; public ``RDN_bb.py``, ``RDN_det.py``) on the raw 11×11 frames.

``G0 = G = 64`` channels, ``D = 16`` residual dense blocks of ``C = 8`` convs (3×3 + ReLU on the growing
concatenation, 1×1 local fusion, residual), global fusion ``1×1 (D·G0 → G0), 3×3`` plus the first shallow
feature, then ``conv 3×3 G0 → G·r², PixelShuffle(r), conv 3×3 G → 1``. PyTorch default initialisation.
Parameters: 640 + 36,928 + 16 · 1,364,544 + 65,600 + 36,928 + 332,352 + 577 = 22,305,729 (the paper: 22.3 M).
Loss: MSE on frames ``[2:T-2]``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import check_inputs, pixel_shuffle
from seqcsist_jax.baselines.dbpn_gmfn import frames_nhwc
from seqcsist_jax.baselines.srnets import scored_frames_loss
from seqcsist_jax.models.layers import Conv


class ResidualDenseBlock(nn.Module):
    """``C`` × (3×3 conv ``→ G`` + ReLU, concatenated), 1×1 fusion back to ``G0`` channels, plus the input."""

    growth: int
    num_layers: int

    @nn.compact
    def __call__(self, x):
        h = x
        for c in range(self.num_layers):
            h = jnp.concatenate([h, jax.nn.relu(Conv(self.growth, 3, name=f"conv_{c}")(h))], -1)
        return Conv(x.shape[-1], 1, name="lff")(h) + x


class RDN(nn.Module):
    """Attributes: ``features`` (G0 = G = 64), ``num_blocks`` (D = 16), ``num_layers`` (C = 8)."""

    features: int = 64
    num_blocks: int = 16
    num_layers: int = 8

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``; Φ, Q unused."""
        _, _, _, side = check_inputs(frames, phi, None)
        x, b, t, fs = frames_nhwc(frames)
        scale = side // fs
        if scale not in (2, 3):
            raise ValueError(f"RDN here supports ×2 and ×3 (one PixelShuffle), got ×{scale}")
        g = self.features
        f1 = Conv(g, 3, name="sfe1")(x)
        h = Conv(g, 3, name="sfe2")(f1)
        outs = []
        for i in range(self.num_blocks):
            h = ResidualDenseBlock(g, self.num_layers, name=f"rdb_{i}")(h)
            outs.append(h)
        h = Conv(g, 1, name="gff_1")(jnp.concatenate(outs, -1))
        h = Conv(g, 3, name="gff_2")(h) + f1
        h = pixel_shuffle(Conv(g * scale * scale, 3, name="up_conv")(h), scale)
        out = Conv(1, 3, name="up_out")(h)
        return {"output": out.reshape(b, t, side, side), "frame_index": np.arange(t)}


def build_rdn(model_config, loss_config) -> methods.Method:
    del loss_config
    model = RDN(
        features=int(model_config.get("features", 64)),
        num_blocks=int(model_config.get("num_blocks", 16)),
        num_layers=int(model_config.get("num_layers", 8)),
    )
    return methods.Method("rdn", model, scored_frames_loss)
