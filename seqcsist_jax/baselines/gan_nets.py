"""Generators and discriminators of the public toolkit's GAN super-resolution configs (``SRGAN.py``,
``BSRGAN.py``, ``ESRGAN.py``), single-channel, ×3 (11×11 frames → 33×33 maps).

Generators (mmagic architectures; parameter names follow mmagic's so a checkpoint maps key by key):

* :class:`MSRResNet` (SRGAN): ``conv_first 1→64``, 16 × ``ResidualBlockNoBN`` (conv-ReLU-conv), ``upconv1
  64→64·9 + PixelShuffle(3)``, ``conv_hr``, ``conv_last 64→1``, LeakyReLU 0.1, plus the bilinearly ×3 upsampled
  input. Init: Kaiming-normal ×0.1, zero bias (mmagic's ``default_init_weights(·, 0.1)``).
  Parameters: 1,552,193.
* :class:`RRDBNet` (BSRGAN: 16 blocks; ESRGAN: 23 blocks; growth 32): ``conv_first``, RRDB trunk (3 residual
  dense blocks of 5 convs, LeakyReLU 0.2, residual ×0.2), ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``,
  ``conv_last``. Parameters: 11,659,713 (16 blocks), 16,695,681 (23 blocks).
  **Deviation**: mmagic's RRDBNet always upsamples ×4 (two nearest ×2 + conv); the ×3 configs cannot run there
  as released (the 44×44 output does not fit the 33×33 discriminators), and the modified copy the authors ran is
  not published. Here the first upsampling is nearest ×3 and ``conv_up2`` runs at 33×33 without a second
  upsampling, which keeps every layer (the paper's parameter totals match, see below).

Discriminators (the public ``ModifiedVGG`` and ``Discriminator_UNet``; PyTorch default init):

* :class:`ModifiedVGG` (SRGAN, ESRGAN): 5 × (3×3 conv, 4×4 stride-2 conv) with batch norm (33 → 16 → 8 → 4 → 2
  → 1), ``linear 512→100``, ``linear 100→1``, LeakyReLU 0.2. One logit per frame. Parameters: 13,730,249.
  Batch norm always uses batch statistics (the discriminator never runs in evaluation mode).
* :class:`UNetDiscriminator` (BSRGAN): spectral-normalised U-Net (3 stride-2 downs, bilinear ×2 ups with skips,
  resized to 33 before the last skip), one logit per pixel. Parameters: 4,375,745.

With the frozen VGG19 feature extractor of the perceptual loss (``features.0``–``features.34``, 20,024,384
parameters) the totals are SRGAN 35,306,826 (paper 35.3 M), BSRGAN 36,059,842 (36.1 M), ESRGAN 50,450,314
(50.5 M).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqcsist_jax.baselines.common import pixel_shuffle
from seqcsist_jax.baselines.sr_layers import BatchNorm, SNConv, StridedConv, resize_bilinear, upsample_nearest
from seqcsist_jax.models.layers import Conv, kaiming_normal_fan_in

_init01 = dict(kernel_init=kaiming_normal_fan_in(0.1), bias_init=nn.initializers.zeros)


def _lrelu(x, slope):
    return jax.nn.leaky_relu(x, slope)


class ResidualBlockNoBN(nn.Module):
    """mmagic ``ResidualBlockNoBN`` (res_scale 1): ``x + conv2(relu(conv1(x)))``, init ×0.1."""

    channels: int

    @nn.compact
    def __call__(self, x):
        return x + Conv(self.channels, 3, name="conv2", **_init01)(
            jax.nn.relu(Conv(self.channels, 3, name="conv1", **_init01)(x))
        )


class MSRResNet(nn.Module):
    """Attributes: ``channels`` (64), ``num_blocks`` (16), ``scale`` (3)."""

    channels: int = 64
    num_blocks: int = 16
    scale: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (N, 11, 11, 1)`` → ``(N, 33, 33, 1)``."""
        c, r = self.channels, self.scale
        if r not in (2, 3):
            raise ValueError(f"MSRResNet here supports ×2 and ×3, got ×{r}")
        feat = _lrelu(Conv(c, 3, name="conv_first", **_init01)(x), 0.1)
        h = feat
        for i in range(self.num_blocks):
            h = ResidualBlockNoBN(c, name=f"trunk_net_{i}")(h)
        h = _lrelu(pixel_shuffle(Conv(c * r * r, 3, name="upconv1", **_init01)(h), r), 0.1)
        out = Conv(x.shape[-1], 3, name="conv_last", **_init01)(_lrelu(Conv(c, 3, name="conv_hr", **_init01)(h), 0.1))
        n, hh, ww, ch = x.shape
        return out + resize_bilinear(x, (hh * r, ww * r), scale_factor=r)


class DenseBlock5(nn.Module):
    """mmagic ``ResidualDenseBlock``: 5 convs (growth ``growth``), LeakyReLU 0.2, ``0.2·y + x``."""

    growth: int = 32

    @nn.compact
    def __call__(self, x):
        feats = [x]
        for i in range(4):
            feats.append(_lrelu(Conv(self.growth, 3, name=f"conv{i + 1}", **_init01)(jnp.concatenate(feats, -1)), 0.2))
        return 0.2 * Conv(x.shape[-1], 3, name="conv5", **_init01)(jnp.concatenate(feats, -1)) + x


class RRDB(nn.Module):
    growth: int = 32

    @nn.compact
    def __call__(self, x):
        h = x
        for i in range(3):
            h = DenseBlock5(self.growth, name=f"rdb{i + 1}")(h)
        return 0.2 * h + x


class RRDBNet(nn.Module):
    """Attributes: ``channels`` (64), ``num_blocks`` (23), ``growth`` (32), ``scale`` (3)."""

    channels: int = 64
    num_blocks: int = 23
    growth: int = 32
    scale: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (N, 11, 11, 1)`` → ``(N, 33, 33, 1)``."""
        c = self.channels
        feat = Conv(c, 3, name="conv_first", **_init01)(x)
        h = feat
        for i in range(self.num_blocks):
            h = RRDB(self.growth, name=f"body_{i}")(h)
        feat = feat + Conv(c, 3, name="conv_body", **_init01)(h)
        feat = _lrelu(Conv(c, 3, name="conv_up1", **_init01)(upsample_nearest(feat, self.scale)), 0.2)
        feat = _lrelu(Conv(c, 3, name="conv_up2", **_init01)(feat), 0.2)  # no second upsampling (module docstring)
        feat = _lrelu(Conv(c, 3, name="conv_hr", **_init01)(feat), 0.2)
        return Conv(x.shape[-1], 3, name="conv_last", **_init01)(feat)


class ModifiedVGG(nn.Module):
    """Attributes: ``channels`` (64). ``x (N, 33, 33, 1)`` → logits ``(N, 1)``."""

    channels: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.channels
        h = _lrelu(Conv(c, 3, name="conv0_0")(x), 0.2)
        h = _lrelu(BatchNorm(name="bn0_1")(StridedConv(c, 4, 2, 1, use_bias=False, name="conv0_1")(h)), 0.2)
        widths = (2 * c, 4 * c, 8 * c, 8 * c)
        for level, width in enumerate(widths, start=1):
            h = _lrelu(BatchNorm(name=f"bn{level}_0")(Conv(width, 3, use_bias=False, name=f"conv{level}_0")(h)), 0.2)
            h = _lrelu(
                BatchNorm(name=f"bn{level}_1")(StridedConv(width, 4, 2, 1, use_bias=False, name=f"conv{level}_1")(h)),
                0.2,
            )
        h = h.reshape(h.shape[0], -1)
        dense = lambda n, fan_in, name: nn.Dense(  # noqa: E731 (PyTorch nn.Linear default init)
            n, name=name, kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
            bias_init=lambda k, s, d=jnp.float32: jax.random.uniform(k, s, d, -fan_in**-0.5, fan_in**-0.5),
        )
        h = _lrelu(dense(100, h.shape[-1], "linear1")(h), 0.2)
        return dense(1, 100, "linear2")(h)


class UNetDiscriminator(nn.Module):
    """Attributes: ``channels`` (64), ``sn_iterations`` (power iterations of the spectral norm).
    ``x (N, 33, 33, 1)`` → per-pixel logits ``(N, 33, 33, 1)``."""

    channels: int = 64
    sn_iterations: int = 20

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, it = self.channels, self.sn_iterations
        act = lambda t: _lrelu(t, 0.2)  # noqa: E731
        x0 = act(Conv(c, 3, name="conv0")(x))
        x1 = act(SNConv(2 * c, 4, 2, 1, iterations=it, name="conv1")(x0))
        x2 = act(SNConv(4 * c, 4, 2, 1, iterations=it, name="conv2")(x1))
        x3 = act(SNConv(8 * c, 4, 2, 1, iterations=it, name="conv3")(x2))
        up = lambda t: resize_bilinear(t, (2 * t.shape[1], 2 * t.shape[2]), scale_factor=2)  # noqa: E731
        x4 = act(SNConv(4 * c, 3, 1, 1, iterations=it, name="conv4")(up(x3))) + x2
        x5 = act(SNConv(2 * c, 3, 1, 1, iterations=it, name="conv5")(up(x4))) + x1
        x6 = act(SNConv(c, 3, 1, 1, iterations=it, name="conv6")(up(x5)))
        x6 = resize_bilinear(x6, x0.shape[1:3]) + x0
        out = act(SNConv(c, 3, 1, 1, iterations=it, name="conv7")(x6))
        out = act(SNConv(c, 3, 1, 1, iterations=it, name="conv8")(out))
        return Conv(1, 3, name="conv9")(out)
