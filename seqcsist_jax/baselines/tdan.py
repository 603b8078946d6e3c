"""TDAN (Tian et al., CVPR 2020) as the public SeqCSIST toolkit adapts it (``tdan_det.py``, config ``tdan.py``).

Raw 11×11 frames (no Q), a 5-frame window around every centre frame ``j ∈ 2..T-3``:

1. Features: ``ConvModule 1→32`` (conv + ReLU; Kaiming-normal fan_out, zero bias) and 5 residual blocks (mmagic
   ``ResidualBlockNoBN``: conv-ReLU-conv, skip, convs Kaiming-normal fan_in × 0.1, zero bias) on every frame.
2. For every neighbour ``m ∈ {j-2, j-1, j+1, j+2}``: ``agg = conv 64→32 ([F_j, F_m])`` (bias, PyTorch default),
   then two ``DeformConv2dPack`` (offsets from their own input); ``align_1`` deforms ``F_m`` with offsets from
   ``agg`` (``AugmentedDeformConv2dPack``), ``align_2`` is another ``DeformConv2dPack``; ``to_rgb`` conv 32→1
   (bias). All deformable convs: 3×3, padding 1, 8 deformable groups, no bias, weights U(±1/√(9·32)), offset
   convs (3×3, bias) zero-initialised. They use :func:`seqcsist_jax.ops.deform_conv.deform_conv2d` with mmcv's
   edge rule.
3. The four aligned neighbours and the reference frame (in window order ``j-2, j-1, ref, j+1, j+2``) go through
   ``ConvModule 5→32``, 10 residual blocks, ``PixelShufflePack(32, 32, ×3, 3×3)`` (conv 32→288 Kaiming-normal
   fan_in, zero bias, PixelShuffle) and ``conv 32→1`` (no bias) → the 33×33 map of frame ``j``.

Loss per trajectory (public): ``Σ_j [MSE(out_j, label_j) + 0.01·mean((window_j - frame_j)²)]`` where
``window_j`` is the 5-channel stack of step 3 (the reference channel included) and ``frame_j`` the raw centre
frame broadcast over the window.

Deliberate deviation (configurable): the public code uses ``x[T//2]`` — the *middle frame of the whole
trajectory* — as the reference channel of every window (``lr_center`` is computed once, outside the loop over
centres). TDAN and its paper use the window's own centre frame ``j``; that is the default here
(``reference="centre"``). ``reference="sequence_middle"`` reproduces the public behaviour (then the reference
channel of the alignment loss is the constant ``x[T//2] - x[j]``, as in the public code).

Parameters: 92,800 + 120,128 + 101,664 + 289 + 269,952 = 584,833 (the paper: 0.59 M).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import ResBlock, check_inputs, pixel_shuffle, reduce_terms
from seqcsist_jax.models.layers import Conv, kaiming_normal_fan_in, kaiming_normal_fan_out, torch_default_kernel
from seqcsist_jax.models.tdfa import pair_indices
from seqcsist_jax.ops.deform_conv import deform_conv2d

_zeros = nn.initializers.zeros
REFERENCES = ("centre", "sequence_middle")


class DeformConv(nn.Module):
    """mmcv ``DeformConv2dPack``/``AugmentedDeformConv2dPack``: a 3×3 deformable conv (no bias) whose offsets come
    from ``conv_offset`` (3×3, bias, zero init) applied to ``offset_source`` (its own input for the ``Pack``)."""

    features: int
    deform_groups: int = 8
    kernel_size: int = 3
    edge_grad: str = "mmcv"

    @nn.compact
    def __call__(self, x: jax.Array, offset_source: jax.Array | None = None) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", torch_default_kernel, (k, k, x.shape[-1], self.features), jnp.float32)
        source = x if offset_source is None else offset_source
        offset = Conv(2 * self.deform_groups * k * k, k, kernel_init=_zeros, bias_init=_zeros, name="conv_offset")(
            source
        )
        return deform_conv2d(
            x, offset, kernel, padding=k // 2, offset_groups=self.deform_groups, edge_grad=self.edge_grad
        )


def _conv_module(features: int, name: str) -> Conv:
    """mmcv ``ConvModule`` conv (3×3, bias) with its Kaiming-normal fan_out init; ReLU applied by the caller."""
    return Conv(features, 3, kernel_init=kaiming_normal_fan_out, bias_init=_zeros, name=name)


def _mmagic_res_block(channels: int, name: str) -> ResBlock:
    return ResBlock(channels, kernel_init=kaiming_normal_fan_in(0.1), bias_init=_zeros, name=name)


class TDAN(nn.Module):
    """Attributes: ``channels`` (32), ``num_blocks_before_align`` (5), ``num_blocks_after_align`` (10),
    ``deform_groups`` (8), ``window`` (5), ``reference`` (``"centre"`` or ``"sequence_middle"``, see module
    docstring)."""

    channels: int = 32
    num_blocks_before_align: int = 5
    num_blocks_after_align: int = 10
    deform_groups: int = 8
    window: int = 5
    reference: str = "centre"

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """
        Args:
          frames: ``(B, T, h, w)`` raw grey values; phi: Φ ``(h·w, s²)`` (only its shape is used); q: unused.

        Returns:
          ``output (B, J, s, s)`` for the centre frames ``frame_index (J,)`` (2..T-3 for the 5-frame window),
          ``window (B, J, window, h, w)`` the aligned stack fed to the reconstruction, ``centre_frames
          (B, J, h, w)`` the raw centre frames (for the alignment loss).
        """
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        b, t, _, side = check_inputs(frames, phi, None)
        fs = frames.shape[-1]
        scale, rem = divmod(side, fs)
        if rem:
            raise ValueError(f"label grid side {side} is not a multiple of the frame side {fs}")
        c = self.channels
        centres, neighbours = pair_indices(t, self.window, predict_edges=False)
        j, k = neighbours.shape
        x = frames.astype(jnp.float32)

        feat = jax.nn.relu(_conv_module(c, "feat_conv")(x.reshape(b * t, fs, fs, 1)))
        for i in range(self.num_blocks_before_align):
            feat = _mmagic_res_block(c, f"feat_res_{i}")(feat)
        feat = feat.reshape(b, t, fs, fs, c)
        feat_n = feat[:, neighbours].reshape(b * j * k, fs, fs, c)
        feat_c = jnp.broadcast_to(feat[:, centres][:, :, None], (b, j, k, fs, fs, c)).reshape(b * j * k, fs, fs, c)

        agg = Conv(c, 3, name="aggregate_conv")(jnp.concatenate([feat_c, feat_n], axis=-1))
        agg = DeformConv(c, self.deform_groups, name="aggregate_dcn_1")(agg)
        agg = DeformConv(c, self.deform_groups, name="aggregate_dcn_2")(agg)
        aligned = DeformConv(c, self.deform_groups, name="align_1")(feat_n, agg)
        aligned = DeformConv(c, self.deform_groups, name="align_2")(aligned)
        aligned = Conv(1, 3, name="to_rgb")(aligned)[..., 0].reshape(b, j, k, fs, fs)

        centre_frames = x[:, centres]  # (B, J, h, w)
        if self.reference == "centre":
            ref = centre_frames
        else:  # the public code's reference channel: the trajectory's middle frame for every window
            ref = jnp.broadcast_to(x[:, t // 2][:, None], centre_frames.shape)
        half = k // 2
        window = jnp.concatenate([aligned[:, :, :half], ref[:, :, None], aligned[:, :, half:]], axis=2)

        h = jnp.moveaxis(window, 2, -1).reshape(b * j, fs, fs, self.window)
        h = jax.nn.relu(_conv_module(c, "reconstruct_conv")(h))
        for i in range(self.num_blocks_after_align):
            h = _mmagic_res_block(c, f"reconstruct_res_{i}")(h)
        up = Conv(c * scale * scale, 3, kernel_init=kaiming_normal_fan_in(1.0), bias_init=_zeros, name="upsample")
        h = pixel_shuffle(up(h), scale)
        out = Conv(1, 3, use_bias=False, name="reconstruct_out")(h)
        return {
            "output": out.reshape(b, j, side, side),
            "frame_index": centres,
            "window": window,
            "centre_frames": centre_frames,
        }


def tdan_loss(outputs: dict, labels: jax.Array, align_weight: float = 0.01) -> tuple[jax.Array, dict]:
    """Public TDAN loss: per trajectory ``Σ_j MSE(out_j, label_j) + align_weight·Σ_j mean((window_j - x_j)²)``."""
    out = outputs["output"]
    target = labels[:, outputs["frame_index"]]
    reg = jnp.sum(jnp.mean(jnp.square(out - target), axis=(2, 3)), axis=1)
    diff = outputs["window"] - outputs["centre_frames"][:, :, None]
    align = jnp.sum(jnp.mean(jnp.square(diff), axis=(2, 3, 4)), axis=1)
    return reduce_terms({"reg": reg, "align": align}, {"align": align_weight})


def build_tdan(model_config, loss_config) -> methods.Method:
    model = TDAN(
        channels=int(model_config.get("channels", 32)),
        num_blocks_before_align=int(model_config.get("num_blocks_before_align", 5)),
        num_blocks_after_align=int(model_config.get("num_blocks_after_align", 10)),
        deform_groups=int(model_config.get("deform_groups", 8)),
        window=int(model_config.get("window", 5)),
        reference=str(model_config.get("reference", "centre")),
    )
    half = model.window // 2
    align_weight = float(loss_config.get("align", 0.01))
    return methods.Method(
        "tdan",
        model,
        lambda out, labels: tdan_loss(out, labels, align_weight),
        frame_index=lambda num_frames: np.arange(half, num_frames - half),
    )
