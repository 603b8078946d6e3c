"""Convolution layer and PyTorch-matching initialisers shared by the DeRefNet modules.

All feature maps are NHWC and kernels HWIO (``(kh, kw, C_in, C_out)``), the Flax convention; the checkpoint
importer (:mod:`seqcsist_jax.interop`) transposes PyTorch's OIHW weights.

Initialisers reproduce what the public PyTorch code gets (SPEC §5):

* :data:`xavier_normal` — ``torch.nn.init.xavier_normal_``: N(0, 2/(fan_in+fan_out)), untruncated
  (Flax's ``glorot_normal`` is truncated, so it is not used).
* :data:`kaiming_normal_fan_out` — mmcv ``ConvModule``'s ``kaiming_init(mode='fan_out', nonlinearity='relu',
  distribution='normal')``: N(0, 2/fan_out), bias 0.
* :func:`kaiming_normal_fan_in` — mmagic ``default_init_weights(m, scale)``: ``kaiming_init(a=0,
  mode='fan_in', bias=0)`` (normal, gain √2) then weights × ``scale``: N(0, 2·scale²/fan_in), bias 0.
* :data:`torch_default_kernel` / :func:`torch_default_bias` — ``nn.Conv2d``/``nn.Linear``'s default
  ``kaiming_uniform_(a=√5)``: U(±1/√fan_in) for the weights and U(±1/√fan_in) for the bias. (The deformable
  kernels use :mod:`seqcsist_jax.ops.deform_conv`'s mmcv ≥ 2 init, ``kaiming_uniform_(nonlinearity='relu')``.)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from seqcsist_jax.ops import conv

Initializer = Callable[..., jax.Array]

xavier_normal: Initializer = initializers.variance_scaling(1.0, "fan_avg", "normal")
kaiming_normal_fan_out: Initializer = initializers.variance_scaling(2.0, "fan_out", "normal")
torch_default_kernel: Initializer = initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def kaiming_normal_fan_in(scale: float = 1.0) -> Initializer:
    """N(0, 2·scale²/fan_in): Kaiming-normal (fan_in, ReLU gain) multiplied by ``scale``."""
    return initializers.variance_scaling(2.0 * scale * scale, "fan_in", "normal")


def torch_default_bias(fan_in: int) -> Initializer:
    """U(-1/√fan_in, 1/√fan_in), PyTorch's default bias initialisation for Conv2d/Linear."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 convolution with symmetric zero padding ``(k-1)//2`` (``'same'`` for odd k), like
    ``F.conv2d(x, w, padding=k//2)``.

    Args:
      x: ``(N, H, W, C)``.
      kernel: ``(kh, kw, C, O)``.

    Returns:
      ``(N, H, W, O)``.
    """
    kh, kw = kernel.shape[:2]
    # The backward pass stays on XLA:CPU's fast kernels inside lax.scan (seqcsist_jax.ops.conv).
    return conv.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


class Conv(nn.Module):
    """``'same'`` stride-1 convolution, NHWC, with PyTorch-default initialisation unless told otherwise.

    Params: ``kernel (k, k, C_in, features)`` and, with ``use_bias``, ``bias (features,)``.
    """

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    kernel_init: Initializer = torch_default_kernel
    bias_init: Initializer | None = None  # None: PyTorch default U(±1/√fan_in)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        c = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, c, self.features), jnp.float32)
        y = conv2d(x, kernel.astype(x.dtype))
        if self.use_bias:
            bias_init = self.bias_init or torch_default_bias(c * k * k)
            bias = self.param("bias", bias_init, (self.features,), jnp.float32)
            y = y + bias.astype(x.dtype)
        return y


def check_inputs(frames: jax.Array, phi: jax.Array, q: jax.Array | None) -> tuple[int, int, int, int]:
    """Validates the call signature shared by all methods.

    Returns:
      ``(B, T, m, side)``: batch, frames per trajectory, pixels per frame (121) and label-grid side (33).

    Raises:
      ValueError: naming the argument whose shape is wrong.
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must be (B, T, h, w), got shape {frames.shape}")
    b, t, h, w = frames.shape
    if phi.ndim != 2:
        raise ValueError(f"phi must be a (m, n) matrix, got shape {phi.shape}")
    m, n = phi.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"phi must be (m, s²) for a square label grid, got shape {phi.shape}")
    if h * w != m:
        raise ValueError(f"frames of {h}×{w} pixels do not match phi with {m} rows")
    if q is not None and q.shape != (n, m):
        raise ValueError(f"q must have shape {(n, m)} (transpose of phi's), got {q.shape}")
    return b, t, m, side
