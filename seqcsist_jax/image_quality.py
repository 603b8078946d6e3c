"""PSNR and SSIM of high-resolution maps exactly as the GrokCSO toolkit reports them (its ``Similarity`` metric).

The toolkit (``grokcso/evaluation/metrics/psnr_ssim.py``) scores each predicted ``(11c, 11c)`` map against its
label map in three steps, reproduced here without scikit-image:

1. **8-bit conversion** (:func:`toolkit_uint8`): if the *prediction's* maximum is ≤ 1, both maps are taken as
   [0, 1] images: ``uint8(clip(x, 0, 1)·255)``; otherwise ``uint8(clip(x, 0, 255))``. ``astype(uint8)``
   truncates (255.9 → 255, 0.99 → 0), it does not round.
2. **PSNR**: skimage ``peak_signal_noise_ratio(label, pred, data_range=255)`` = ``10·log10(255² / MSE)``, MSE in
   float64. A perfect map has infinite PSNR; the toolkit replaces infinities by **100 dB** before averaging.
3. **SSIM**: skimage ``structural_similarity(label, pred, data_range=255)`` with its defaults: 7×7 *uniform*
   windows, K1 = 0.01, K2 = 0.03, sample covariances (× 49/48), the SSIM map averaged over the windows that lie
   wholly inside the image (skimage filters the whole image with reflected borders, then crops a 3-pixel strip,
   so the border mode never matters): ``(11c - 6)²`` windows, 27×27 for c = 3.

The reported numbers are the means over all scored images of these per-image values. Both functions work on
numpy arrays of any leading shape and return per-image values (float64).
"""

from __future__ import annotations

import numpy as np

__all__ = ["toolkit_uint8", "psnr", "ssim", "PSNR_OF_PERFECT_MAP", "SSIM_WINDOW"]

PSNR_OF_PERFECT_MAP = 100.0  # dB, the toolkit's replacement for an infinite PSNR
SSIM_WINDOW = 7  # skimage's default window side (uniform weights)
DATA_RANGE = 255.0
K1, K2 = 0.01, 0.03


def _check_pair(pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"pred and label must have the same shape, got {pred.shape} and {label.shape}")
    if pred.ndim < 2:
        raise ValueError(f"pred and label must be (..., H, W) maps, got shape {pred.shape}")
    return pred, label


def toolkit_uint8(pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The toolkit's 8-bit conversion of a prediction and its label, per image (see the module docstring).

    Args:
      pred, label: ``(..., H, W)`` maps (brightness units, or [0, 1] when the prediction's max is ≤ 1).

    Returns:
      ``(pred_u8, label_u8)`` uint8 arrays of the same shape.
    """
    pred, label = _check_pair(pred, label)
    unit = (pred.max(axis=(-2, -1), keepdims=True) <= 1.0)  # decided by the prediction alone, as in the toolkit
    scale = np.where(unit, 255.0, 1.0)
    top = np.where(unit, 1.0, 255.0)

    def convert(x: np.ndarray) -> np.ndarray:
        return (np.clip(x.astype(np.float64), 0.0, top) * scale).astype(np.uint8)

    return convert(pred), convert(label)


def psnr(pred: np.ndarray, label: np.ndarray, quantize: bool = True) -> np.ndarray:
    """Per-image PSNR in dB as the toolkit reports it (data range 255; a perfect map scores 100).

    Args:
      pred, label: ``(..., H, W)``.
      quantize: apply the toolkit's 8-bit conversion first (True); False scores the float maps as given.

    Returns:
      ``(...)`` float64.
    """
    pred, label = _check_pair(pred, label)
    if quantize:
        pred, label = toolkit_uint8(pred, label)
    mse = np.mean(np.square(label.astype(np.float64) - pred.astype(np.float64)), axis=(-2, -1))
    with np.errstate(divide="ignore"):
        value = 10.0 * np.log10(DATA_RANGE**2 / mse)
    return np.where(mse == 0, PSNR_OF_PERFECT_MAP, value)


def _window_means(x: np.ndarray, w: int) -> np.ndarray:
    """Means over every w×w window wholly inside ``x (..., H, W)`` → ``(..., H-w+1, W-w+1)`` (integral image)."""
    c = np.cumsum(np.cumsum(x, axis=-2), axis=-1)
    c = np.pad(c, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)])
    s = c[..., w:, w:] - c[..., :-w, w:] - c[..., w:, :-w] + c[..., :-w, :-w]
    return s / (w * w)


def ssim(pred: np.ndarray, label: np.ndarray, quantize: bool = True) -> np.ndarray:
    """Per-image SSIM as the toolkit reports it (skimage defaults, data range 255; see the module docstring).

    Args:
      pred, label: ``(..., H, W)`` with H, W ≥ 7.
      quantize: apply the toolkit's 8-bit conversion first (True).

    Returns:
      ``(...)`` float64 in [-1, 1].
    """
    pred, label = _check_pair(pred, label)
    w = SSIM_WINDOW
    if min(pred.shape[-2:]) < w:
        raise ValueError(f"ssim needs maps of at least {w}×{w} pixels, got {pred.shape[-2:]}")
    if quantize:
        pred, label = toolkit_uint8(pred, label)
    x, y = label.astype(np.float64), pred.astype(np.float64)
    # E[xy] - E[x]E[y] on 8-bit values: the integral image stays exact in float64 (sums < 2⁵³)
    ux, uy = _window_means(x, w), _window_means(y, w)
    cov_norm = w * w / (w * w - 1.0)
    vx = cov_norm * (_window_means(x * x, w) - ux * ux)
    vy = cov_norm * (_window_means(y * y, w) - uy * uy)
    vxy = cov_norm * (_window_means(x * y, w) - ux * uy)
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(axis=(-2, -1))
