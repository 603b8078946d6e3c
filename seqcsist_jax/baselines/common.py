"""Pieces shared by the comparison methods: input checks, frame layout, PixelShuffle, residual blocks, losses.

Every baseline is called like DeRefNet, ``model.apply(variables, frames, phi, q)`` with ``frames (B, T, 11, 11)``
raw grey values (uint8 or float; cast to float32 here, no normalisation — the public code feeds raw values),
Φ ``(121, 1089)`` and Q ``(1089, 121)``. Feature maps are NHWC, kernels HWIO (Flax convention).

The public detectors score frames ``[2:18]`` of a 20-frame trajectory; for a trajectory of ``T`` frames that is
``[margin : T - margin]`` with ``margin = 2`` (:func:`scored_slice`), the same frames the evaluation scores.
Builders read the margin from ``loss_config.scored_margin`` (:func:`loss_margin`; the configs tie it to
``config.eval.scored_margin``), so single images (CSIST-100K, margin 0) train on every frame.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqcsist_jax.models.layers import Conv, check_inputs, torch_default_kernel  # noqa: F401 (check_inputs re-exported)

Initializer = Callable[..., jax.Array]

SCORED_MARGIN = 2  # the public detectors use frames [2:18] of 20 for their regression loss and predictions


def scored_slice(num_frames: int, margin: int = SCORED_MARGIN) -> slice:
    """Frames the public detectors regress on and predict: ``[2:18]`` for 20 frames, ``[2:T-2]`` in general.

    Raises:
      ValueError: the trajectory is too short to have any such frame.
    """
    if num_frames <= 2 * margin:
        raise ValueError(f"trajectories need more than {2 * margin} frames, got {num_frames}")
    return slice(margin, num_frames - margin)


def loss_margin(loss_config) -> int:
    """``loss_config.scored_margin`` (default :data:`SCORED_MARGIN`): frames the losses regress on.

    Raises:
      ValueError: a negative or non-integer margin.
    """
    margin = loss_config.get("scored_margin", SCORED_MARGIN) if loss_config is not None else SCORED_MARGIN
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"config.loss.scored_margin must be a non-negative integer, got {margin!r}")
    return margin


def frame_vectors(frames: jax.Array) -> jax.Array:
    """``(B, T, h, w)`` → ``(B·T, h·w)`` float32 row vectors ``y`` (the public ``Phix``)."""
    b, t, h, w = frames.shape
    return frames.reshape(b * t, h * w).astype(jnp.float32)


def soft_threshold(x: jax.Array, threshold: jax.Array | float) -> jax.Array:
    """``sign(x)·max(|x| - θ, 0)``."""
    return jnp.sign(x) * jax.nn.relu(jnp.abs(x) - threshold)


def pixel_shuffle(x: jax.Array, scale: int) -> jax.Array:
    """``torch.nn.PixelShuffle`` in NHWC: ``(N, H, W, C·r²)`` → ``(N, H·r, W·r, C)``.

    Input channel ``c·r² + i·r + j`` goes to output pixel ``(h·r + i, w·r + j)`` of channel ``c`` (PyTorch's
    order), so weights ported from the public code line up without permutation.
    """
    n, h, w, cr2 = x.shape
    r = scale
    if cr2 % (r * r):
        raise ValueError(f"pixel_shuffle: {cr2} channels are not divisible by scale² = {r * r}")
    c = cr2 // (r * r)
    x = x.reshape(n, h, w, c, r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # (N, H, i, W, j, C)
    return x.reshape(n, h * r, w * r, c)


class ResBlock(nn.Module):
    """``x + res_scale·conv2(act(conv1(x)))``, 3×3 convs with bias (no batch norm).

    ``kernel_init`` defaults to PyTorch's default (BasicSR's ``pytorch_init=True``); pass
    :func:`seqcsist_jax.models.layers.kaiming_normal_fan_in` ``(0.1)`` with a zero bias for mmagic's
    ``ResidualBlockNoBN``. ``negative_slope`` > 0 gives a LeakyReLU (ISTA-Net++'s blocks use 0.1).
    """

    channels: int
    res_scale: float = 1.0
    negative_slope: float = 0.0
    kernel_init: Initializer = torch_default_kernel
    bias_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda name: Conv(self.channels, 3, kernel_init=self.kernel_init, bias_init=self.bias_init, name=name)
        h = conv("conv1")(x)
        h = jax.nn.leaky_relu(h, self.negative_slope) if self.negative_slope else jax.nn.relu(h)
        return x + self.res_scale * conv("conv2")(h)


def per_trajectory_mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error of each trajectory, ``(B, T', ...)`` → ``(B,)`` (``nn.MSELoss`` per trajectory)."""
    return jnp.mean(jnp.square(pred - target), axis=tuple(range(1, pred.ndim)))


def per_trajectory_mean(x: jax.Array, fn: Callable[[jax.Array], jax.Array] = jnp.square) -> jax.Array:
    """``mean(fn(x))`` per trajectory: ``(B, ...)`` → ``(B,)``."""
    return jnp.mean(fn(x), axis=tuple(range(1, x.ndim)))


def reduce_terms(terms: dict[str, jax.Array], weights: dict[str, float]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of per-trajectory terms ``(B,)``, averaged over the batch.

    Returns:
      ``(total, named)``: ``named`` holds the batch mean of each raw term and of each weighted term
      (``loss_<name>``); the weighted terms sum to ``total``.
    """
    named: dict[str, Any] = {}
    total = 0.0
    for key, value in terms.items():
        mean = jnp.mean(value)
        weighted = weights.get(key, 1.0) * mean
        named[key] = mean
        named[f"loss_{key}"] = weighted
        total = total + weighted
    return total, named
