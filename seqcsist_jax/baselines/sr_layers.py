"""Layers the super-resolution baselines share, with PyTorch semantics: PReLU, strided and transposed convolution,
bilinear/nearest resizing (``F.interpolate``), the spectral norm, and a batch norm that always uses batch statistics.

Feature maps are NHWC. Kernels of forward convolutions are HWIO; transposed-convolution kernels are stored
``(k, k, C_out, C_in)`` so that PyTorch's default initialisation (fan-in = ``C_out·k²`` for ``ConvTranspose2d``,
whose weight is ``(C_in, C_out, k, k)``) falls out of ``variance_scaling(1/3, "fan_in", "uniform")``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax.models.layers import Initializer, torch_default_bias, torch_default_kernel
from seqcsist_jax.ops import conv


class PReLU(nn.Module):
    """``nn.PReLU(num_parameters=1, init=slope_init)``: ``max(x, 0) + a·min(x, 0)`` with one learned slope ``a``."""

    slope_init: float = 0.25

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.param("alpha", lambda key, shape: jnp.full(shape, self.slope_init, jnp.float32), (1,))
        return jnp.where(x >= 0, x, a.astype(x.dtype) * x)


class StridedConv(nn.Module):
    """``nn.Conv2d(C_in, features, k, stride, padding, bias=use_bias)`` (symmetric zero padding)."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    kernel_init: Initializer = torch_default_kernel
    bias_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, c, self.features), jnp.float32)
        # ops.conv: stride-1 layers keep XLA:CPU's fast backward convolutions inside K-step scans.
        y = conv.conv_general_dilated(
            x, kernel.astype(x.dtype), (self.stride, self.stride), ((self.padding, self.padding),) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param("bias", self.bias_init or torch_default_bias(c * k * k), (self.features,), jnp.float32)
            y = y + bias.astype(x.dtype)
        return y


class ConvTranspose(nn.Module):
    """``nn.ConvTranspose2d(C_in, features, k, stride, padding)``: output side ``(H-1)·s - 2p + k``.

    Params: ``kernel (k, k, features, C_in)`` (PyTorch's ``(C_in, C_out, k, k)`` transposed to HW-first) and
    ``bias (features,)``; both PyTorch-default initialised (fan-in ``features·k²``).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p, c = self.kernel_size, self.stride, self.padding, x.shape[-1]
        kernel = self.param("kernel", torch_default_kernel, (k, k, self.features, c), jnp.float32)
        # A transposed convolution is the forward convolution of the s-dilated input with the spatially flipped,
        # in/out-swapped kernel, padded by k-1-p on each side.
        w = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2).astype(x.dtype)
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), ((k - 1 - p, k - 1 - p),) * 2, lhs_dilation=(s, s),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param("bias", torch_default_bias(self.features * k * k), (self.features,), jnp.float32)
            y = y + bias.astype(x.dtype)
        return y


def _linear_weights(size_in: int, size_out: int, scale: float) -> np.ndarray:
    """``(size_out, size_in)`` matrix of PyTorch's bilinear (align_corners=False) resampling along one axis."""
    w = np.zeros((size_out, size_in))
    for o in range(size_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), size_in - 1)
        i1 = min(i0 + 1, size_in - 1)
        frac = src - i0
        w[o, i0] += 1.0 - frac
        w[o, i1] += frac
    return w


def resize_bilinear(x: jax.Array, size: tuple[int, int], scale_factor: float | None = None) -> jax.Array:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` on NHWC ``x``.

    With ``scale_factor`` given (PyTorch's ``scale_factor=`` call), source coordinates use ``1/scale_factor``;
    otherwise ``in/out`` (PyTorch's ``size=`` call). Both agree when the sizes divide exactly.
    """
    _, h, w, _ = x.shape
    sh = 1.0 / scale_factor if scale_factor else h / size[0]
    sw = 1.0 / scale_factor if scale_factor else w / size[1]
    wh = jnp.asarray(_linear_weights(h, size[0], sh), x.dtype)
    ww = jnp.asarray(_linear_weights(w, size[1], sw), x.dtype)
    return jnp.einsum("oh,nhwc,pw->nopc", wh, x, ww)


def upsample_nearest(x: jax.Array, scale: int) -> jax.Array:
    """``F.interpolate(x, scale_factor=scale, mode="nearest")`` on NHWC ``x`` (integer scale)."""
    return jnp.repeat(jnp.repeat(x, scale, axis=1), scale, axis=2)


def l2_normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
    return v / jnp.maximum(jnp.linalg.norm(v), eps)


def spectral_normalize(kernel: jax.Array, iterations: int = 20) -> jax.Array:
    """``kernel / σ_max`` with σ from power iteration on the ``(C_out, C_in·k²)`` matrix, as
    ``torch.nn.utils.spectral_norm``: u and v are constants of the gradient (computed under ``stop_gradient``),
    σ = uᵀ W v is differentiated.

    Deliberate deviation: PyTorch keeps a persistent ``u`` buffer and does one iteration per forward call; here
    the state-free version starts every call from a fixed vector and iterates ``iterations`` times, which converges
    to the same σ without a mutable collection in the train state.
    """
    w = kernel.reshape(-1, kernel.shape[-1]).T  # (C_out, k·k·C_in)
    w_const = jax.lax.stop_gradient(w)
    u = l2_normalize(jnp.ones((w.shape[0],), w.dtype))

    def body(_, u):
        v = l2_normalize(w_const.T @ u)
        return l2_normalize(w_const @ v)

    u = jax.lax.fori_loop(0, iterations, body, u)
    v = l2_normalize(w_const.T @ u)
    sigma = u @ (w @ v)
    return kernel / sigma


class SNConv(nn.Module):
    """``spectral_norm(nn.Conv2d(C_in, features, k, stride, padding, bias=use_bias))``."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = False
    iterations: int = 20

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel_size, x.shape[-1]
        kernel = spectral_normalize(
            self.param("kernel", torch_default_kernel, (k, k, c, self.features), jnp.float32), self.iterations
        )
        # ops.conv: stride-1 layers keep XLA:CPU's fast backward convolutions inside K-step scans.
        y = conv.conv_general_dilated(
            x, kernel.astype(x.dtype), (self.stride, self.stride), ((self.padding, self.padding),) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            y = y + self.param("bias", torch_default_bias(c * k * k), (self.features,), jnp.float32).astype(x.dtype)
        return y


class BatchNorm(nn.Module):
    """``nn.BatchNorm2d`` in training mode: normalise by the batch's mean and biased variance, then ``γ·x + β``.

    Running averages are not tracked: the discriminators that use it only ever run in training mode here (the
    evaluation uses the generator alone), so they would never be read. Params: ``scale``, ``bias`` ``(C,)``.
    """

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
