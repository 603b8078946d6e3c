"""STAND-IN CSIST-100K-style generator for the decoding benchmark and tests (SPEC §9), until
``seqcsist_jax.data.csist100k`` (branch m15data) lands; then the benchmark should load that split instead.

Per image: 1–5 targets (uniform), all inside one pixel of the 11×11 grid (the pixel drawn uniformly among
rows/columns 2..8, so the group never touches the border — **assumption of this stand-in**), pairwise distance
>= 0.52·R with R = 1.9σ (rejection sampling), brightness U[220, 250], σ = 0.5, pixel-integrated Gaussian
(:func:`seqcsist_jax.imaging.render`), 8-bit round + clip.
"""

from __future__ import annotations

import numpy as np

from seqcsist_jax import imaging

SIGMA = 0.5
MIN_DISTANCE = 0.52 * 1.9 * SIGMA
MAX_TARGETS = 5


def generate(num: int, seed: int, size: int = 11, clip: bool = True) -> dict[str, np.ndarray]:
    """``num`` images: ``images (num, 11, 11)`` uint8 (float32 if ``clip=False``), ``targets (num, 5, 3)``
    float32 rows ``(xc, yc, b)`` (zero rows padding), ``num_targets (num,)``, ``clipped_pixels (num,)``."""
    rng = np.random.default_rng(seed)
    targets = np.zeros((num, MAX_TARGETS, 3), np.float64)
    counts = rng.integers(1, MAX_TARGETS + 1, size=num)
    for i in range(num):
        k = counts[i]
        pix = rng.integers(2, size - 2, size=2)
        while True:
            xy = pix[None, :] + rng.uniform(-0.5, 0.5, size=(k, 2))
            d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + 10 * np.eye(k)
            if d.min() >= MIN_DISTANCE:
                break
        targets[i, :k, :2] = xy
        targets[i, :k, 2] = rng.uniform(220.0, 250.0, size=k)
    raw = imaging.render(targets, size, SIGMA)
    images = imaging.quantize(raw) if clip else np.round(raw).astype(np.float32)
    return {"images": images, "targets": targets.astype(np.float32), "num_targets": counts.astype(np.int32),
            "clipped_pixels": np.asarray(imaging.count_clipped(raw))}
