"""USRNet (Zhang, Van Gool, Timofte 2020, deep unfolding for super-resolution; public ``USRNet_bb.py``,
``USRNet_det.py``) on the raw 11×11 frames, ×3.

The degradation model is ``y = (k ⊗ x)↓s`` with the public detector's fixed kernel ``k`` (3×3 Gaussian, σ = 0.5,
normalised) and noise level σ_n = 0. Eight unfolded iterations alternate

* the **data step** (closed form in the Fourier domain, no parameters): with ``F_B`` the 33×33 OTF of ``k``
  (``p2o``), ``F_R = conj(F_B)·F(S y) + F(α x)``, ``x ← F⁻¹[(F_R - conj(F_B) ⊙ tile(mean_blocks(F_B F_R) /
  (mean_blocks(|F_B|²) + α))) / α]`` (``S y``: zero-filled ×3 upsampling, ``mean_blocks``: mean over the 3×3
  distinct 11×11 blocks), and
* the **prior step**, a bias-free ResUNet (channels 16/32/64/128, 2 residual blocks per level, 2×2 stride-2
  convs down, 2×2 transposed convs up) on ``[Re x, β]`` (33 → 16 → 8 → 4 → 8 → 16 → 32, bilinearly resized to 33
  before the last skip, as the public code does);

``α_i, β_i`` (i = 1..8) come from HyPaNet (1×1 convs 2 → 64 → 64 → 16, ReLU, Softplus, + 1e-6) applied to
``(σ_n, s) = (0, 3)``. The start is the nearest-neighbour ×3 upsampled frame. The public code keeps the complex
data-step output and lets ``.to(torch.float32)`` drop the imaginary part inside the ResUNet; here the real part is
taken explicitly (same values).
Parameters: ResUNet 1,063,344 + HyPaNet 5,392 = 1,068,736 (the paper: 1.07 M). Loss: MSE on frames ``[2:T-2]``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import check_inputs
from seqcsist_jax.baselines.dbpn_gmfn import frames_nhwc
from seqcsist_jax.baselines.sr_layers import ConvTranspose, StridedConv, resize_bilinear, upsample_nearest
from seqcsist_jax.baselines.srnets import scored_frames_loss
from seqcsist_jax.models.layers import Conv


def gaussian_kernel(size: int = 3, sigma: float = 0.5) -> np.ndarray:
    """The public detector's blur kernel: a ``size × size`` Gaussian of width ``sigma``, normalised to sum 1."""
    c = (size - 1) / 2
    y, x = np.mgrid[:size, :size]
    k = np.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * sigma**2))
    return k / k.sum()


def psf_to_otf(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``p2o``: the PSF zero-padded to ``shape``, rolled so its centre is at (0, 0), then 2-D FFT (complex)."""
    otf = np.zeros(shape)
    otf[: psf.shape[0], : psf.shape[1]] = psf
    for axis, size in enumerate(psf.shape):
        otf = np.roll(otf, -(size // 2), axis=axis)
    return np.fft.fft2(otf)


def block_mean(x: jax.Array, scale: int) -> jax.Array:
    """Mean of the ``scale × scale`` distinct ``(H/s, W/s)`` blocks of ``(..., H, W)`` (the public ``splits``)."""
    *lead, h, w = x.shape
    return x.reshape(*lead, scale, h // scale, scale, w // scale).mean(axis=(-4, -2))


def data_step(x, otf, fy, alpha, scale):
    """Closed-form data step of USRNet for ``x (N, H, W)`` real; ``otf``, ``fy = conj(F_B)·F(S y)`` complex
    ``(H, W)`` / ``(N, H, W)``; ``alpha`` scalar. Returns the complex ``(N, H, W)`` estimate."""
    fr = fy + jnp.fft.fft2(alpha * x)
    fbr = block_mean(otf * fr, scale)
    inv_w = block_mean(jnp.abs(otf) ** 2, scale)
    inv_wbr = fbr / (inv_w + alpha)
    return jnp.fft.ifft2((fr - jnp.conj(otf) * jnp.tile(inv_wbr, (1, scale, scale))) / alpha)


class ResBlockNoBias(nn.Module):
    """``x + conv(relu(conv(x)))``, 3×3 bias-free convs (the public ``basicblock.ResBlock``, mode ``CRC``)."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        return x + Conv(c, 3, use_bias=False, name="conv2")(jax.nn.relu(Conv(c, 3, use_bias=False, name="conv1")(x)))


class ResUNet(nn.Module):
    """The prior module. Attributes: ``channels`` ((16, 32, 64, 128)), ``num_res`` (2 blocks per level)."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res: int = 2

    @nn.compact
    def __call__(self, x):
        nc, nb = self.channels, self.num_res
        h, w = x.shape[1:3]
        x1 = Conv(nc[0], 3, use_bias=False, name="head")(x)
        skips, y = [x1], x1
        for level in range(3):
            for j in range(nb):
                y = ResBlockNoBias(name=f"down{level + 1}_res{j}")(y)
            y = StridedConv(nc[level + 1], 2, 2, 0, use_bias=False, name=f"down{level + 1}_conv")(y)
            skips.append(y)
        for j in range(nb):
            y = ResBlockNoBias(name=f"body_res{j}")(y)
        for level in (3, 2, 1):
            y = ConvTranspose(nc[level - 1], 2, 2, 0, use_bias=False, name=f"up{level}_deconv")(y + skips[level])
            for j in range(nb):
                y = ResBlockNoBias(name=f"up{level}_res{j}")(y)
        y = resize_bilinear(y, (h, w))
        return Conv(1, 3, use_bias=False, name="tail")(y + x1)


class HyPaNet(nn.Module):
    """``(σ_n, s)`` → ``2·num_iters`` positive hyper-parameters (α₁..α_n, β₁..β_n)."""

    num_iters: int
    channels: int = 64

    @nn.compact
    def __call__(self, z):
        h = jax.nn.relu(nn.Dense(self.channels, name="fc1", kernel_init=_torch_dense_kernel,
                                 bias_init=_torch_dense_bias(2))(z))
        h = jax.nn.relu(nn.Dense(self.channels, name="fc2", kernel_init=_torch_dense_kernel,
                                 bias_init=_torch_dense_bias(self.channels))(h))
        h = nn.Dense(2 * self.num_iters, name="fc3", kernel_init=_torch_dense_kernel,
                     bias_init=_torch_dense_bias(self.channels))(h)
        return jax.nn.softplus(h) + 1e-6


_torch_dense_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_dense_bias(fan_in: int):
    bound = 1.0 / np.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class USRNet(nn.Module):
    """Attributes: ``num_iters`` (8), ``hyper_channels`` (64), ``channels`` ((16, 32, 64, 128)), ``num_res`` (2),
    ``kernel_size`` (3) and ``kernel_sigma`` (0.5) of the fixed blur, ``noise_sigma`` (0)."""

    num_iters: int = 8
    hyper_channels: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res: int = 2
    kernel_size: int = 3
    kernel_sigma: float = 0.5
    noise_sigma: float = 0.0

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``; Φ, Q unused."""
        _, _, _, side = check_inputs(frames, phi, None)
        x, b, t, fs = frames_nhwc(frames)
        scale = side // fs
        y = x[..., 0]  # (N, 11, 11)
        otf = jnp.asarray(psf_to_otf(gaussian_kernel(self.kernel_size, self.kernel_sigma), (side, side)),
                          jnp.complex64)
        sty = jnp.zeros((y.shape[0], side, side), y.dtype).at[:, ::scale, ::scale].set(y)  # zero-filled S y
        fy = jnp.conj(otf) * jnp.fft.fft2(sty)
        ab = HyPaNet(self.num_iters, self.hyper_channels, name="hypa")(
            jnp.asarray([self.noise_sigma, float(scale)], jnp.float32)
        )
        prior = ResUNet(self.channels, self.num_res, name="prior")
        z = upsample_nearest(x, scale)[..., 0]
        for i in range(self.num_iters):
            z = jnp.real(data_step(z, otf, fy, ab[i], scale)).astype(jnp.float32)
            beta = jnp.broadcast_to(ab[self.num_iters + i], z.shape)
            z = prior(jnp.stack([z, beta], -1))[..., 0]
        return {"output": z.reshape(b, t, side, side), "frame_index": np.arange(t)}


def build_usrnet(model_config, loss_config) -> methods.Method:
    del loss_config
    model = USRNet(
        num_iters=int(model_config.get("num_iters", 8)),
        hyper_channels=int(model_config.get("hyper_channels", 64)),
        channels=tuple(model_config.get("channels", (16, 32, 64, 128))),
        num_res=int(model_config.get("num_res", 2)),
        kernel_size=int(model_config.get("kernel_size", 3)),
        kernel_sigma=float(model_config.get("kernel_sigma", 0.5)),
        noise_sigma=float(model_config.get("noise_sigma", 0.0)),
    )
    return methods.Method("usrnet", model, scored_frames_loss)
