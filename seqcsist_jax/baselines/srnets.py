"""Single-image super-resolution networks as the public SeqCSIST toolkit applies them (×3: 11×11 → 33×33).

* **SRCNN** (Dong et al. 2014; ``SRCNN_det.py``, ``SRCNN_bb.py``; 200 epochs): the input is the least-squares
  initialisation ``y Qᵀ`` as a 33×33 map (the classic SRCNN upsamples by interpolation first; here Q plays that
  role). ``conv 9×9 1→32, ReLU, conv 5×5 32→16, ReLU, conv 5×5 16→1``, 'same' padding, bias.
  Loss: MSE over *all* frames (the public detector does not restrict it to frames 2..17).
  Parameters: 2,624 + 12,816 + 401 = 15,841 (the paper: 15.8 K).
* **EDSR** (Lim et al. 2017; ``EDSR_det.py``, ``EDSR_bb.py`` from BasicSR; Adam without weight decay): raw 11×11
  frames multiplied by ``img_range = 255`` (the public code scales the already 0–255 grey values again and divides
  the output by 255 — kept, it only rescales the first conv), ``conv_first 1→32``, 16 residual blocks
  (conv-ReLU-conv, ``res_scale`` 1, PyTorch default init), ``conv_after_body``, global skip, upsampler
  ``conv 32→288 + PixelShuffle(3)``, ``conv_last 32→1``. No mean shift (the public copy has none).
  Loss: MSE on frames 2..T-3. Parameters: 320 + 16·18,496 + 9,248 + 83,232 + 289 = 389,025 (the paper: 0.39 M).
* **ESPCN** (Shi et al. 2016; ``ESPCN_bb.py``): raw 11×11 frames, ``conv 5×5 1→64, ReLU, conv 3×3 64→32, ReLU,
  conv 3×3 32→9, PixelShuffle(3)``. Loss: MSE on frames 2..T-3. Parameters: 1,664 + 18,464 + 2,601 = 22,729
  (the paper lists none).

All convs use PyTorch's default initialisation (the public models do not re-initialise).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import (
    SCORED_MARGIN,
    ResBlock,
    check_inputs,
    frame_vectors,
    loss_margin,
    per_trajectory_mse,
    pixel_shuffle,
    reduce_terms,
    scored_slice,
)
from seqcsist_jax.models.layers import Conv


def _frames_nhwc(frames: jax.Array) -> jax.Array:
    b, t, h, w = frames.shape
    return frames.reshape(b * t, h, w, 1).astype(jnp.float32)


def _upscale(side: int, frame_side: int) -> int:
    scale, rem = divmod(side, frame_side)
    if rem:
        raise ValueError(f"label grid side {side} is not a multiple of the frame side {frame_side}")
    return scale


class SRCNN(nn.Module):
    """Attributes: ``channels`` ((32, 16)), ``kernels`` ((9, 5, 5))."""

    channels: tuple[int, int] = (32, 16)
    kernels: tuple[int, int, int] = (9, 5, 5)

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``."""
        b, t, _, side = check_inputs(frames, phi, q)
        x = (frame_vectors(frames) @ jnp.asarray(q, jnp.float32).T).reshape(b * t, side, side, 1)
        h = jax.nn.relu(Conv(self.channels[0], self.kernels[0], name="conv1")(x))
        h = jax.nn.relu(Conv(self.channels[1], self.kernels[1], name="conv2")(h))
        out = Conv(1, self.kernels[2], name="conv3")(h)
        return {"output": out.reshape(b, t, side, side), "frame_index": np.arange(t)}


class EDSR(nn.Module):
    """Attributes: ``channels`` (32), ``num_blocks`` (16), ``res_scale`` (1), ``img_range`` (255)."""

    channels: int = 32
    num_blocks: int = 16
    res_scale: float = 1.0
    img_range: float = 255.0

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``; Φ, Q unused."""
        b, t, _, side = check_inputs(frames, phi, None)
        fs = frames.shape[-1]
        scale = _upscale(side, fs)
        x = Conv(self.channels, 3, name="conv_first")(_frames_nhwc(frames) * self.img_range)
        h = x
        for i in range(self.num_blocks):
            h = ResBlock(self.channels, res_scale=self.res_scale, name=f"body_{i}")(h)
        h = Conv(self.channels, 3, name="conv_after_body")(h) + x
        h = pixel_shuffle(Conv(self.channels * scale * scale, 3, name="upsample")(h), scale)
        out = Conv(1, 3, name="conv_last")(h) / self.img_range
        return {"output": out.reshape(b, t, side, side), "frame_index": np.arange(t)}


class ESPCN(nn.Module):
    """Attributes: ``channels`` ((64, 32))."""

    channels: tuple[int, int] = (64, 32)

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``; Φ, Q unused."""
        b, t, _, side = check_inputs(frames, phi, None)
        fs = frames.shape[-1]
        scale = _upscale(side, fs)
        h = jax.nn.relu(Conv(self.channels[0], 5, name="conv1")(_frames_nhwc(frames)))
        h = jax.nn.relu(Conv(self.channels[1], 3, name="conv2")(h))
        out = pixel_shuffle(Conv(scale * scale, 3, name="conv3")(h), scale)
        return {"output": out.reshape(b, t, side, side), "frame_index": np.arange(t)}


def all_frames_loss(outputs: dict, labels: jax.Array) -> tuple[jax.Array, dict]:
    """MSE over all frames of each trajectory (public SRCNN)."""
    return reduce_terms({"mse": per_trajectory_mse(outputs["output"], labels)}, {})


def scored_frames_loss(outputs: dict, labels: jax.Array, margin: int = SCORED_MARGIN) -> tuple[jax.Array, dict]:
    """MSE over frames ``[margin:T-margin]`` (``[2:T-2]``) of each trajectory (public EDSR, ESPCN)."""
    out = outputs["output"]
    scored = scored_slice(out.shape[1], margin)
    return reduce_terms({"mse": per_trajectory_mse(out[:, scored], labels[:, scored])}, {})


def build_srcnn(model_config, loss_config) -> methods.Method:
    del loss_config
    model = SRCNN(
        channels=tuple(model_config.get("channels", (32, 16))), kernels=tuple(model_config.get("kernels", (9, 5, 5)))
    )
    return methods.Method("srcnn", model, all_frames_loss)


def build_edsr(model_config, loss_config) -> methods.Method:
    margin = loss_margin(loss_config)
    model = EDSR(
        channels=int(model_config.get("channels", 32)),
        num_blocks=int(model_config.get("num_blocks", 16)),
        res_scale=float(model_config.get("res_scale", 1.0)),
        img_range=float(model_config.get("img_range", 255.0)),
    )
    return methods.Method("edsr", model, functools.partial(scored_frames_loss, margin=margin))


def build_espcn(model_config, loss_config) -> methods.Method:
    model = ESPCN(channels=tuple(model_config.get("channels", (64, 32))))
    return methods.Method("espcn", model, functools.partial(scored_frames_loss, margin=loss_margin(loss_config)))
