"""DBPN and GMFN, the two back-projection / feedback super-resolution networks of the public SeqCSIST toolkit.

Both take the raw 11×11 frames (grey values, no Q initialisation) one frame at a time and return a 33×33 map.
Layers are the toolkit's ``ConvBlock``/``DeconvBlock`` without normalisation and with ``nn.PReLU(1, init=0.2)``
activations (one slope per block); every conv has a bias and PyTorch's default initialisation.

* **DBPN** (Haris et al. 2018; ``DBPN_bb.py``, ``DBPN_det.py``): ``conv 3×3 1→128, conv 1×1 128→32``, then
  6 × (up-projection, down-projection) + one up-projection (``bp_stages = 7``; kernel 7, stride 3, padding 2 for
  ×3), ``conv 1×1 32→1`` without activation. Up-projection: ``H0 = deconv(x); L0 = conv(H0); H1 = deconv(L0 - x);
  H0 + H1``; down-projection: ``L0 = conv(x); H0 = deconv(L0); L1 = conv(H0 - x); L0 + L1``.
  Parameters: 13 · 3 · 50,209 + 1,281 + 4,129 + 33 = 1,963,594 (the paper: 1.96 M).
* **GMFN** (Li et al. 2019, gated multiple feedback; ``GMFN_bb.py``, ``GMFN_det.py``): ``conv 3×3 1→128,
  conv 1×1 128→32``; 4 feedback steps through one shared block of 8 residual dense blocks (8 convs of growth 32,
  ``1×1`` fusion, residual ×0.2); from the second step on, each RDB input is refined by two gated ``1×1`` convs
  fed with the previous step's 8 RDB outputs; reconstruction ``deconv 7/3/2 32→32, conv 3×3 32→1`` plus the
  bilinearly ×3-upsampled frame. Parameters: 2,796,518 (the paper: 2.80 M).

  The public detector concatenates the 4 steps' outputs along the batch axis and then keeps rows ``[2:18]``,
  which are frames 2..17 of the *first* step: steps 2–4 get no gradient and are never scored.
  ``output_step = 0`` (default) reproduces that; ``-1`` uses the last step's maps (the GMFN paper's output).
  Under ``jit`` the unused steps are dead code and cost nothing.

Loss (both): MSE on frames ``[2:T-2]`` (the public ``MSEloss(alpha=1)`` on ``final[2:18]``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import check_inputs
from seqcsist_jax.baselines.sr_layers import ConvTranspose, PReLU, StridedConv, resize_bilinear
from seqcsist_jax.baselines.srnets import scored_frames_loss
from seqcsist_jax.models.layers import Conv

PRELU_INIT = 0.2  # the toolkit's activation('prelu') passes slope=0.2 as nn.PReLU's init


def projection_geometry(scale: int) -> tuple[int, int, int]:
    """``(kernel, stride, padding)`` of the back-projection (de)convolutions for ×2, ×3, ×4 (DBPN's table)."""
    table = {2: (6, 2, 2), 3: (7, 3, 2), 4: (8, 4, 2)}
    if scale not in table:
        raise ValueError(f"upscale factor must be 2, 3 or 4, got {scale}")
    return table[scale]


def frames_nhwc(frames: jax.Array) -> tuple[jax.Array, int, int, int]:
    """``(B, T, h, w)`` → ``(B·T, h, w, 1)`` float32 and ``(B, T, scale)`` (scale = 33 / 11)."""
    b, t, h, w = frames.shape
    return frames.reshape(b * t, h, w, 1).astype(jnp.float32), b, t, h


class ConvAct(nn.Module):
    """``ConvBlock(norm=None, act='prelu')``: 'same' conv with bias, then PReLU (or nothing if ``act=False``)."""

    features: int
    kernel_size: int
    act: bool = True

    @nn.compact
    def __call__(self, x):
        y = Conv(self.features, self.kernel_size, name="conv")(x)
        return PReLU(PRELU_INIT, name="act")(y) if self.act else y


class DownConvAct(nn.Module):
    """Strided ``ConvBlock`` (k, s, p) + PReLU: high resolution → low."""

    features: int
    geometry: tuple[int, int, int]

    @nn.compact
    def __call__(self, x):
        k, s, p = self.geometry
        return PReLU(PRELU_INIT, name="act")(StridedConv(self.features, k, s, p, name="conv")(x))


class DeconvAct(nn.Module):
    """``DeconvBlock`` (k, s, p) + PReLU: low resolution → high."""

    features: int
    geometry: tuple[int, int, int]

    @nn.compact
    def __call__(self, x):
        k, s, p = self.geometry
        return PReLU(PRELU_INIT, name="act")(ConvTranspose(self.features, k, s, p, name="deconv")(x))


class UpProjection(nn.Module):
    features: int
    geometry: tuple[int, int, int]

    @nn.compact
    def __call__(self, x):
        h0 = DeconvAct(self.features, self.geometry, name="deconv_1")(x)
        l0 = DownConvAct(self.features, self.geometry, name="conv_1")(h0)
        return h0 + DeconvAct(self.features, self.geometry, name="deconv_2")(l0 - x)


class DownProjection(nn.Module):
    features: int
    geometry: tuple[int, int, int]

    @nn.compact
    def __call__(self, x):
        l0 = DownConvAct(self.features, self.geometry, name="conv_1")(x)
        h0 = DeconvAct(self.features, self.geometry, name="deconv_1")(l0)
        return l0 + DownConvAct(self.features, self.geometry, name="conv_2")(h0 - x)


class DBPN(nn.Module):
    """Attributes: ``features`` (32), ``stem_features`` (128), ``bp_stages`` (7)."""

    features: int = 32
    stem_features: int = 128
    bp_stages: int = 7

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``; Φ, Q unused."""
        _, _, _, side = check_inputs(frames, phi, None)
        x, b, t, fs = frames_nhwc(frames)
        geometry = projection_geometry(side // fs)
        h = ConvAct(self.stem_features, 3, name="feature_extract_1")(x)
        h = ConvAct(self.features, 1, name="feature_extract_2")(h)
        for i in range(self.bp_stages - 1):
            h = UpProjection(self.features, geometry, name=f"up_{i}")(h)
            h = DownProjection(self.features, geometry, name=f"down_{i}")(h)
        h = UpProjection(self.features, geometry, name=f"up_{self.bp_stages - 1}")(h)
        out = ConvAct(1, 1, act=False, name="conv_hr")(h)
        return {"output": out.reshape(b, t, side, side), "frame_index": np.arange(t)}


class DenseBlock8(nn.Module):
    """``ResidualDenseBlock_8C``: 8 × (3×3 conv + PReLU) on the growing concatenation, 1×1 fusion, ``0.2·y + x``."""

    growth: int

    @nn.compact
    def __call__(self, x):
        feats = [x]
        for i in range(8):
            feats.append(ConvAct(self.growth, 3, name=f"conv{i + 1}")(jnp.concatenate(feats, -1)))
        fused = ConvAct(x.shape[-1], 1, act=False, name="conv9")(jnp.concatenate(feats, -1))
        return 0.2 * fused + x


class GMFN(nn.Module):
    """Attributes: ``features`` (32), ``num_steps`` (4), ``num_blocks`` (8), ``num_reroute`` (8), ``num_refine``
    (16), ``output_step`` (0: the public detector's first-step output; -1: the last step)."""

    features: int = 32
    num_steps: int = 4
    num_blocks: int = 8
    num_reroute: int = 8
    num_refine: int = 16
    output_step: int = 0

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` (step ``output_step``), ``steps (S, B, T, 33,
        33)`` (every feedback step) and ``frame_index (T,)``; Φ, Q unused."""
        _, _, _, side = check_inputs(frames, phi, None)
        x, b, t, fs = frames_nhwc(frames)
        geometry = projection_geometry(side // fs)
        f = self.features
        # One instance per layer, called at every step: the feedback steps share their weights.
        rdbs = [DenseBlock8(f, name=f"rdb_{i}") for i in range(self.num_blocks)]
        gate_select = ConvAct(f, 1, name="gate_select")  # previous step's num_reroute·f features → f
        gate_merge = ConvAct(f, 1, name="gate_merge")  # (selected, current) 2f → f
        deconv_out = DeconvAct(f, geometry, name="out")
        conv_out = ConvAct(1, 3, act=False, name="conv_out")

        upsampled = resize_bilinear(x, (side, side), scale_factor=side // fs)
        init = ConvAct(f, 1, name="feat_in")(ConvAct(4 * f, 3, name="conv_in")(x))
        last: list[jax.Array] = []
        steps = []
        for _ in range(self.num_steps):
            h, current = init, []
            for i, rdb in enumerate(rdbs):
                if last and i < self.num_refine:
                    selected = gate_select(jnp.concatenate(last, -1))
                    h = gate_merge(jnp.concatenate([selected, h], -1))
                h = rdb(h)
                current.append(h)
            last = current[-self.num_reroute:]
            steps.append((upsampled + conv_out(deconv_out(last[-1]))).reshape(b, t, side, side))
        return {"output": steps[self.output_step], "steps": jnp.stack(steps), "frame_index": np.arange(t)}


def build_dbpn(model_config, loss_config) -> methods.Method:
    del loss_config
    model = DBPN(
        features=int(model_config.get("features", 32)),
        stem_features=int(model_config.get("stem_features", 128)),
        bp_stages=int(model_config.get("bp_stages", 7)),
    )
    return methods.Method("dbpn", model, scored_frames_loss)


def build_gmfn(model_config, loss_config) -> methods.Method:
    del loss_config
    model = GMFN(
        features=int(model_config.get("features", 32)),
        num_steps=int(model_config.get("num_steps", 4)),
        num_blocks=int(model_config.get("num_blocks", 8)),
        num_reroute=int(model_config.get("num_reroute", 8)),
        num_refine=int(model_config.get("num_refine", 16)),
        output_step=int(model_config.get("output_step", 0)),
    )
    return methods.Method("gmfn", model, scored_frames_loss)
