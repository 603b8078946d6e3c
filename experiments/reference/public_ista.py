"""The public ``tools/ista.py`` (GrokCV/SeqCSIST) as plain NumPy: the reference our batched ISTA is tested against.

Per frame, in float64 like the public script (its ``y`` is the uint8 PNG reshaped to ``(121, 1)``):

* start ``x = pinv(Φ) · y``; Lipschitz constant ``L = ‖Φ‖₂²`` (largest singular value squared);
* ``x_new = soft(x + Φᵀ(y - Φx)/L, λ/L)`` with λ = 1, at most 3,000 times;
* stop when ``‖x - x_new‖₂ < 1e-4`` and return ``x`` (the iterate *before* that update);
* detections: cells of the 33×33 map with value ``≥ 70`` (``x[x < 70] = 0`` then ``np.nonzero``), written as
  ``((row - 1)/3, (col - 1)/3, value)``.

Nothing here is shared with :mod:`seqcsist_jax.baselines.classical`; it is written from the public script only.
"""

from __future__ import annotations

import numpy as np

LAMBDA = 1.0
MAX_ITER = 3000
TOL = 1e-4
THRESHOLD = 70.0


def soft_thresholding(x: np.ndarray, threshold: float) -> np.ndarray:
    """``sign(x)·max(|x| - threshold, 0)``."""
    return np.sign(x) * np.maximum(np.abs(x) - threshold, 0)


def ista(a: np.ndarray, y: np.ndarray, lam: float = LAMBDA, max_iter: int = MAX_ITER, tol: float = TOL) -> np.ndarray:
    """One frame: ``a (121, 1089)`` = Φ, ``y (121, 1)`` grey values → ``x (1089, 1)`` float64."""
    x = np.dot(np.linalg.pinv(a), y)
    lipschitz = np.linalg.norm(a, ord=2) ** 2
    for _ in range(max_iter):
        x_new = soft_thresholding(x + a.T.dot(y - a.dot(x)) / lipschitz, lam / lipschitz)
        if np.linalg.norm(x - x_new) < tol:
            break
        x = x_new
    return x


def detections(x: np.ndarray, threshold: float = THRESHOLD, c: int = 3) -> np.ndarray:
    """The rows the public script writes for one frame: ``(M, 3)`` = ``((row - 1)/c, (col - 1)/c, value)``."""
    side = int(round(np.sqrt(x.size)))
    matrix = np.array(x, dtype=np.float64).reshape(side, side)
    matrix[matrix < threshold] = 0
    rows, cols = np.nonzero(matrix)
    return np.stack([(rows - (c - 1) // 2) / c, (cols - (c - 1) // 2) / c, matrix[rows, cols]], axis=1)


def run(frames: np.ndarray, phi: np.ndarray, **options) -> np.ndarray:
    """The script's loop over frames: ``frames (N, 11, 11)`` → maps ``(N, 33, 33)`` float64."""
    side = int(round(np.sqrt(phi.shape[1])))
    return np.stack([ista(phi, f.reshape(-1, 1), **options).reshape(side, side) for f in frames])
