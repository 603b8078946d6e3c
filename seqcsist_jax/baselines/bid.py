"""BID deconvolution as the public toolkit's ``tools/BID.py`` runs it — batched and jitted.

Per frame (11×11 raw grey values), with a 33×33 estimate ``X``::

    U = up(frame)                        bilinear 11→33, half-pixel centres (``F.interpolate``, align_corners=False)
    X⁰ = U
    repeat ≤ max_iter (1,000):  D = K⋆X - U;  X ← X - α·D (α = 0.001);  stop once max|D| < tol (0.1)

``K⋆`` is a 'same' cross-correlation with zero padding by the public ``generate_psf(3, 0.5)``: a Gaussian sampled
at ``linspace(-3//2, 3//2, 3) = (-2, -0.5, 1)`` (Python's floor division makes it off-centre), normalised to sum
1. The public loop stops *after* the update whose residual met the tolerance; :func:`bid` does the same per
frame. With α = 0.001 and 1,000 iterations the estimate moves by at most ``Σ α·D``, so BID's output stays close
to the bilinear upsampling of its input (thresholded at 70 by the evaluation).

Input (``input_mode``):

* ``"frame"`` (default, corrected): the 11×11 frame.
* ``"public_column"`` (faithful): the public script calls ``cv2.resize(image.reshape(121, 1), (11, 11))``;
  OpenCV's bilinear resize of that 121×1 column samples rows ``11·i + 5`` (exact, half-pixel centres) and copies
  its single column across, so the solver sees ``frame[i, 5]`` in every column ``j`` — the centre column
  repeated (checked with opencv-python-headless 5.0.0: ``cv2.resize`` of a random uint8 frame's ``(121, 1)``
  reshape equals the centre column copied across). This is what the paper's BID row measured. (The public
  script also scores the validation split.)

Everything runs in float32 (the public code runs torch float32). :class:`BidSolver` wraps it as a parameter-free
method (``config.model.trainable = False``).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.classical import reconstruction_loss
from seqcsist_jax.baselines.common import check_inputs
from seqcsist_jax.models.layers import conv2d

INPUT_MODES = ("frame", "public_column")


def public_psf(size: int = 3, sigma: float = 0.5) -> np.ndarray:
    """The public ``generate_psf``: a Gaussian on ``linspace(-size//2, size//2, size)`` per axis, sum 1.

    For size 3 the sample points are (-2, -0.5, 1) (floor division), so the kernel is off-centre. ``(size, size)``.
    """
    if size < 1 or sigma <= 0:
        raise ValueError(f"psf size must be >= 1 and sigma > 0, got size={size}, sigma={sigma}")
    axis = np.linspace(-size // 2, size // 2, size)
    xx, yy = np.meshgrid(axis, axis)
    psf = np.exp(-(xx**2 + yy**2) / (2.0 * sigma**2))
    return psf / psf.sum()


def bilinear_matrix(src: int = 11, dst: int = 33) -> np.ndarray:
    """``(dst, src)`` matrix of 1-D bilinear interpolation with half-pixel centres and edge clamping
    (``torch.nn.functional.interpolate(mode='bilinear', align_corners=False)``); an image resizes as
    ``A @ img @ Aᵀ``."""
    scale = src / dst
    pos = np.maximum((np.arange(dst) + 0.5) * scale - 0.5, 0.0)  # PyTorch clamps negative source positions
    lo = np.minimum(np.floor(pos).astype(int), src - 1)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    a = np.zeros((dst, src))
    a[np.arange(dst), lo] += 1.0 - frac
    a[np.arange(dst), hi] += frac
    return a


def public_column_input(frames: jax.Array) -> jax.Array:
    """What the public script's ``cv2.resize(image.reshape(121, 1), (11, 11))`` gives: ``(N, 11, 11)`` with
    ``out[:, i, j] = frames[:, i, 5]`` (the 121-vector's rows 11·i + 5, copied across the columns)."""
    n, h, w = frames.shape
    if w % 2 == 0:
        raise ValueError(f"public_column_input: frames need an odd width (exact row samples), got {w}")
    # resizing h·w rows to h samples row w·i + (w-1)/2 of the flattened frame: column (w-1)/2 of row i
    column = frames[:, :, (w - 1) // 2]
    return jnp.broadcast_to(column[:, :, None], (n, h, w))


@functools.partial(jax.jit, static_argnames=("max_iter", "alpha", "tol", "psf_size", "sigma", "upscale"))
def bid(
    frames: jax.Array,
    *,
    max_iter: int = 1000,
    alpha: float = 0.001,
    tol: float = 0.1,
    psf_size: int = 3,
    sigma: float = 0.5,
    upscale: int = 3,
) -> tuple[jax.Array, jax.Array]:
    """The public BID iteration on a batch of frames.

    Args:
      frames: ``(N, h, w)`` input images (already in the chosen input mode), grey values.
      max_iter, alpha, tol: iterations, step and stopping threshold on ``max|K⋆X - U|``.
      psf_size, sigma: the public PSF (:func:`public_psf`).
      upscale: output side = ``upscale·h``.

    Returns:
      ``X (N, upscale·h, upscale·w)`` float32 and ``iterations (N,)`` int32 (updates each frame made).
    """
    if frames.ndim != 3:
        raise ValueError(f"bid: frames must be (N, h, w), got shape {frames.shape}")
    if max_iter < 0 or alpha <= 0 or tol < 0:
        raise ValueError(f"bid: need max_iter >= 0, alpha > 0, tol >= 0; got {max_iter}, {alpha}, {tol}")
    n, h, w = frames.shape
    rows = jnp.asarray(bilinear_matrix(h, upscale * h), jnp.float32)
    cols = jnp.asarray(bilinear_matrix(w, upscale * w), jnp.float32)
    target = jnp.einsum("ah,nhw,bw->nab", rows, frames.astype(jnp.float32), cols)  # U (N, 3h, 3w)
    kernel = jnp.asarray(public_psf(psf_size, sigma), jnp.float32)[:, :, None, None]

    def residual(x):
        return conv2d(x[..., None], kernel)[..., 0] - target

    def cond(state):
        it, _, active, _ = state
        return (it < max_iter) & jnp.any(active)

    def body(state):
        it, x, active, count = state
        dev = residual(x)
        x = jnp.where(active[:, None, None], x - alpha * dev, x)  # the public loop updates, then tests
        still = active & (jnp.max(jnp.abs(dev), axis=(1, 2)) >= tol)
        return it + 1, x, still, count + active.astype(jnp.int32)

    state = (jnp.int32(0), target, jnp.ones((n,), bool), jnp.zeros((n,), jnp.int32))
    _, x, _, count = jax.lax.while_loop(cond, body, state)
    return x, count


def flops_per_frame(num_iterations: float, side: int = 11, upscale: int = 3, psf_size: int = 3) -> float:
    """Analytic FLOPs of one frame: the bilinear upsampling (two thin matmuls) plus ``num_iterations`` updates of
    a ``psf_size²``-tap correlation (``2·k²`` per pixel) and ~4 element-wise operations per pixel (residual,
    step, max-abs test)."""
    big = upscale * side
    upsample = 2.0 * big * side * side + 2.0 * big * big * side
    return upsample + num_iterations * big * big * (2.0 * psf_size**2 + 4.0)


class BidSolver(nn.Module):
    """BID as a parameter-free module with the methods' call signature.

    Attributes:
      input_mode: ``"frame"`` (corrected) or ``"public_column"`` (the public script's resized column).
      max_iter, alpha, tol, psf_size, sigma: see :func:`bid`.
    """

    input_mode: str = "frame"
    max_iter: int = 1000
    alpha: float = 0.001
    tol: float = 0.1
    psf_size: int = 3
    sigma: float = 0.5

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)``, ``iterations (B, T)``, ``frame_index (T,)``.

        Φ only fixes the output grid (33 = 3·11); ``q`` is ignored.
        """
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"bid: model.input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")
        b, t, _, side = check_inputs(frames, phi, None)
        h, w = frames.shape[2:]
        if side % h:
            raise ValueError(f"bid: the label grid side {side} is not a multiple of the frame side {h}")
        flat = frames.reshape(b * t, h, w).astype(jnp.float32)
        if self.input_mode == "public_column":
            flat = public_column_input(flat)
        x, count = bid(
            flat,
            max_iter=self.max_iter,
            alpha=self.alpha,
            tol=self.tol,
            psf_size=self.psf_size,
            sigma=self.sigma,
            upscale=side // h,
        )
        return {"output": x.reshape(b, t, side, side), "iterations": count.reshape(b, t), "frame_index": np.arange(t)}

    def flops_per_frame(self, num_iterations: float) -> float:
        """:func:`flops_per_frame` with this solver's PSF size (used by ``experiments.compare``)."""
        return flops_per_frame(num_iterations, psf_size=self.psf_size)


def build_bid(model_config, loss_config) -> methods.Method:
    del loss_config
    model = BidSolver(
        input_mode=str(model_config.get("input_mode", "frame")),
        max_iter=int(model_config.get("max_iter", 1000)),
        alpha=float(model_config.get("alpha", 0.001)),
        tol=float(model_config.get("tol", 0.1)),
        psf_size=int(model_config.get("psf_size", 3)),
        sigma=float(model_config.get("sigma", 0.5)),
    )
    return methods.Method("bid", model, reconstruction_loss)
