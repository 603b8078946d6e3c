"""DeRefNet's temporal part (SPEC §5 steps 3–5): time encoding, selective attention, TDFA and the tail.

Every (centre, neighbour) pair of every sequence is processed in one batched call: the shared feature extractor
and the two 1×1 attention projections run once per frame and are then gathered into pairs (the public code
recomputes them for every pair; the values are identical).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax.models.layers import (
    Conv,
    kaiming_normal_fan_in,
    kaiming_normal_fan_out,
    torch_default_bias,
    torch_default_kernel,
)
from seqcsist_jax.ops import deform_conv

_zeros = nn.initializers.zeros


def window_offsets(window: int) -> np.ndarray:
    """Neighbour offsets of a ``window``-frame window, centre excluded: ``[-2, -1, 1, 2]`` for 5. ``(window-1,)``."""
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd number >= 3, got {window}")
    half = window // 2
    return np.array([o for o in range(-half, half + 1) if o != 0], dtype=np.int32)


def pair_indices(num_frames: int, window: int, predict_edges: bool) -> tuple[np.ndarray, np.ndarray]:
    """Centre frames and their neighbours.

    Without ``predict_edges`` the centres are ``half .. T-half-1`` (2..T-3 for a 5-frame window: the paper's
    protocol). With it every frame is a centre and neighbours past either end repeat the end frame (replicate
    padding of the sequence).

    Returns:
      ``centres (J,)`` and ``neighbours (J, window-1)`` int32 frame indices into the input sequence.
    """
    offsets = window_offsets(window)
    half = window // 2
    if predict_edges:
        centres = np.arange(num_frames, dtype=np.int32)
    else:
        if num_frames < window:
            raise ValueError(
                f"a {window}-frame window needs at least {window} frames per sequence, got {num_frames} "
                + ("(a single-image dataset such as CSIST-100K needs a single-frame method; " if num_frames == 1
                   else "(") + "or set model.predict_edges=True, which repeats the edge frames)"
            )
        centres = np.arange(half, num_frames - half, dtype=np.int32)
    neighbours = np.clip(centres[:, None] + offsets[None, :], 0, num_frames - 1).astype(np.int32)
    return centres, neighbours


class TimeEncoding(nn.Module):
    """``sigmoid(Dense(p_t))`` with ``p_t = t / num_frames`` repeated over the map (public ``TDDA.mlp``).

    The public code divides by the constant 20 whatever the sequence length; ``num_frames`` keeps that constant.
    Dense params ``kernel (n, n)``, ``bias (n,)``; PyTorch ``nn.Linear`` default init.
    """

    features: int
    num_frames: int = 20

    @nn.compact
    def __call__(self, frame_index: np.ndarray) -> jax.Array:
        """``frame_index (T,)`` → multiplicative weights ``(T, features)``."""
        p = jnp.asarray(frame_index, jnp.float32)[:, None] / self.num_frames
        p = jnp.broadcast_to(p, (p.shape[0], self.features))
        dense = nn.Dense(
            self.features,
            kernel_init=torch_default_kernel,
            bias_init=torch_default_bias(self.features),
            name="dense",
        )
        return jax.nn.sigmoid(dense(p))


class SelectiveAttention(nn.Module):
    """Selective-kernel style fusion of centre and neighbour features (public ``SK``).

    ``a = [conv0_s(centre), conv1_s(neighbour)]`` (1×1 convs C→C/2, bias); channel mean and max of ``a`` → 3×3
    conv 2→2 (bias) → sigmoid → weight 0 scales the centre half, weight 1 the neighbour half. All PyTorch
    default init. The 1×1 projections run once per frame, before the frames are gathered into pairs.
    """

    channels: int

    @nn.compact
    def __call__(self, feat: jax.Array, centres: np.ndarray, neighbours: np.ndarray) -> jax.Array:
        """
        Args:
          feat: ``(B, T, H, W, C)`` per-frame features.
          centres: ``(J,)`` centre frame indices; neighbours: ``(J, K)`` neighbour frame indices.

        Returns:
          ``(B·J·K, H, W, C)`` aggregated pair features, pairs ordered (b, j, k).
        """
        b, t, h, w, c = feat.shape
        if c % 2:
            raise ValueError(f"selective attention needs an even channel count, got channels={c}")
        j, k = neighbours.shape
        half = c // 2
        centre_proj = Conv(half, 1, name="conv0_s")(feat[:, centres].reshape(b * j, h, w, c))
        neigh_proj = Conv(half, 1, name="conv1_s")(feat.reshape(b * t, h, w, c)).reshape(b, t, h, w, half)
        centre_proj = centre_proj.reshape(b, j, 1, h, w, half)
        neigh_proj = neigh_proj[:, neighbours]  # (B, J, K, H, W, C/2)
        centre_proj = jnp.broadcast_to(centre_proj, neigh_proj.shape)
        attn = jnp.concatenate([centre_proj, neigh_proj], axis=-1).reshape(b * j * k, h, w, c)
        pooled = jnp.stack([jnp.mean(attn, axis=-1), jnp.max(attn, axis=-1)], axis=-1)
        sig = jax.nn.sigmoid(Conv(2, 3, name="conv_squeeze")(pooled))
        return jnp.concatenate([attn[..., :half] * sig[..., :1], attn[..., half:] * sig[..., 1:]], axis=-1)


class ResidualBlock(nn.Module):
    """mmagic ``ResidualBlockNoBN(res_scale=1)``: ``x + conv2(relu(conv1(x)))``; convs Kaiming-normal(fan_in)
    × 0.1, bias 0."""

    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = kaiming_normal_fan_in(0.1)
        h = jax.nn.relu(Conv(self.channels, 3, kernel_init=init, bias_init=_zeros, name="conv1")(x))
        return x + Conv(self.channels, 3, kernel_init=init, bias_init=_zeros, name="conv2")(h)


class Tail(nn.Module):
    """``relu(conv window→C)`` (ConvModule init), residual blocks, ``conv C→1`` without bias."""

    channels: int = 32
    num_res_blocks: int = 5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(P, H, W, window)`` → ``(P, H, W)``."""
        h = Conv(self.channels, 3, kernel_init=kaiming_normal_fan_out, bias_init=_zeros, name="head")(x)
        h = jax.nn.relu(h)
        for k in range(self.num_res_blocks):
            h = ResidualBlock(self.channels, name=f"res_{k}")(h)
        return Conv(1, 3, use_bias=False, name="out")(h)[..., 0]


class TDFA(nn.Module):
    """Temporal deformable feature alignment of every (centre, neighbour) pair, then the tail.

    Params: ``feat_extract`` (ConvModule 1→C: Kaiming fan_out, bias 0), ``attention/{conv0_s, conv1_s,
    conv_squeeze}`` (PyTorch default), ``align_1`` (deformable 3×3 C→C, no bias, mmcv ≥ 2 kernel init, offsets
    from the aggregated features through the zero-initialised ``conv_offset``), ``align_2`` (the same with
    offsets from its own input), ``conv`` (3×3 C→1, bias, PyTorch default) and ``tail``. The deformable convs
    are :mod:`seqcsist_jax.ops.deform_conv`'s modules with their defaults (``method="auto"``; gradient rule
    at the image border of torchvision, which differs from mmcv only for sample points exactly on ``-1``).

    With ``selective_attention=False`` the offsets of ``align_1`` are computed from the plain concatenation of
    the centre and neighbour features (2C channels, TDAN-style), which is the "stacked deformable alignment"
    ablation of the paper.
    """

    channels: int = 32
    window: int = 5
    selective_attention: bool = True
    predict_edges: bool = False
    num_res_blocks: int = 5
    edge_grad: str = "torchvision"  # deformable convs' offset-gradient rule at -1 ("torchvision" | "mmcv")
    compute_dtype: str = "float32"  # convolutions' dtype (params stay float32); outputs are float32

    @nn.compact
    def __call__(self, maps: jax.Array) -> dict[str, jax.Array]:
        """
        Args:
          maps: ``(B, T, H, W)`` time-encoded maps.

        Returns:
          ``output (B, J, H, W)``, ``aligned (B, J, window-1, H, W)`` (neighbours aligned to each centre, in
          offset order) and ``frame_index (J,)`` (numpy int32).
        """
        b, t, h, w = maps.shape
        c = self.channels
        maps = maps.astype(self.compute_dtype)
        centres, neighbours = pair_indices(t, self.window, self.predict_edges)
        j, k = neighbours.shape

        feat = Conv(c, 3, kernel_init=kaiming_normal_fan_out, bias_init=_zeros, name="feat_extract")(
            maps.reshape(b * t, h, w, 1)
        )
        feat = jax.nn.relu(feat).reshape(b, t, h, w, c)
        feat_n = feat[:, neighbours]  # (B, J, K, H, W, C)

        if self.selective_attention:
            agg = SelectiveAttention(c, name="attention")(feat, centres, neighbours)
        else:
            feat_c = jnp.broadcast_to(feat[:, centres][:, :, None], feat_n.shape)
            agg = jnp.concatenate([feat_c, feat_n], axis=-1).reshape(b * j * k, h, w, 2 * c)

        x = feat_n.reshape(b * j * k, h, w, c)
        deform = dict(kernel_size=(3, 3), padding=1, edge_grad=self.edge_grad, dtype=self.compute_dtype)
        x = deform_conv.DeformConvOffsetFrom(c, **deform, name="align_1")(x, agg)
        x = deform_conv.DeformConvPack(c, **deform, name="align_2")(x)
        aligned = Conv(1, 3, name="conv")(x)[..., 0].reshape(b, j, k, h, w)

        half = k // 2
        stack = jnp.concatenate(
            [aligned[:, :, :half], maps[:, centres][:, :, None], aligned[:, :, half:]], axis=2
        )  # (B, J, window, H, W): neighbours before, centre, neighbours after
        tail_in = jnp.moveaxis(stack, 2, -1).reshape(b * j, h, w, self.window)
        out = Tail(c, self.num_res_blocks, name="tail")(tail_in).reshape(b, j, h, w)
        f32 = jnp.float32
        return {"output": out.astype(f32), "aligned": aligned.astype(f32), "frame_index": centres}
