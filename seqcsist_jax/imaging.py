"""The SeqCSIST imaging model (SPEC §1–§2).

Conventions (SPEC §1): a frame is ``size × size`` pixels; pixel ``(r, c)`` is centred on the integer point
``(r, c)`` and covers ``[r-½, r+½] × [c-½, c+½]``. A target is a row ``(xc, yc, brightness)`` in pixel units
with **``xc`` along image rows (first index)** and ``yc`` along columns. Brightness 0 marks a padding row.

The point-spread function is an isotropic Gaussian of width ``sigma`` pixels, integrated over each pixel's
square. The integral is separable, so a frame is ``Σ_k b_k · a(xc_k) ⊗ a(yc_k)`` where ``a(u)[r]`` is the
1-D pixel integral ``½[erf((r+½-u)/(σ√2)) - erf((r-½-u)/(σ√2))]``. The public SeqCSIST code evaluates the
same integral with ``scipy.integrate.dblquad`` once per pixel per target; the closed form here agrees with it
to better than 1e-6 relative and is vectorised over any leading batch shape.

Every function accepts numpy or JAX arrays. NumPy input is computed in float64 with numpy/scipy and returns
numpy; JAX input (or any call under ``jax.jit``/``jax.grad``) is computed with ``jax.numpy`` in the input's
floating dtype, so ``render`` is jittable and differentiable w.r.t. positions and brightness.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

__all__ = [
    "render",
    "pixel_integrals",
    "grid_coordinates",
    "grid_index",
    "measurement_matrix",
    "targets_to_grid",
    "grid_collisions",
    "least_squares_init",
    "least_squares_init_from_gram",
    "label_gram",
    "quantize",
    "count_clipped",
]

Array = Any  # numpy.ndarray | jax.Array


def _is_jax(*xs: Array) -> bool:
    return any(isinstance(x, jax.Array) for x in xs)


def _half_pixel_integral(lo: Array, hi: Array, xp, erf, erfc) -> Array:
    """``½[erf(hi) - erf(lo)]`` for ``lo <= hi``, accurate in both tails.

    Subtracting two erf values near ±1 loses all relative precision far from the target; in the tails the
    complementary form ``½[erfc(lo) - erfc(hi)]`` (or its mirror) is exact to rounding. Every branch is
    finite everywhere, so ``where`` keeps gradients clean.
    """
    upper = 0.5 * (erfc(lo) - erfc(hi))  # both edges right of the centre
    lower = 0.5 * (erfc(-hi) - erfc(-lo))  # both edges left of the centre
    middle = 0.5 * (erf(hi) - erf(lo))
    return xp.where(lo >= 0, upper, xp.where(hi <= 0, lower, middle))


def pixel_integrals(centres: Array, size: int = 11, sigma: float = 0.5) -> Array:
    """1-D pixel integrals of a unit Gaussian.

    Args:
      centres: ``(...)`` target coordinates along one axis, in pixels.
      size: number of pixels along the axis.
      sigma: Gaussian width in pixels.

    Returns:
      ``(..., size)``: the fraction of the 1-D Gaussian's mass falling in each pixel ``[r-½, r+½]``.
    """
    if _is_jax(centres):
        xp, erf, erfc = jnp, jax.scipy.special.erf, jax.scipy.special.erfc
        centres = jnp.asarray(centres)
        if not jnp.issubdtype(centres.dtype, jnp.floating):
            centres = centres.astype(jnp.float32)
    else:
        xp, erf, erfc = np, scipy.special.erf, scipy.special.erfc
        centres = np.asarray(centres, dtype=np.float64)
    rows = xp.arange(size, dtype=centres.dtype)
    scale = 1.0 / (sigma * math.sqrt(2.0))
    lo = (rows - 0.5 - centres[..., None]) * scale
    hi = (rows + 0.5 - centres[..., None]) * scale
    return _half_pixel_integral(lo, hi, xp, erf, erfc)


def render(targets: Array, size: int = 11, sigma: float = 0.5) -> Array:
    """Renders noise-free, unquantised frames from target lists (SPEC §2).

    Args:
      targets: ``(..., K, 3)`` rows ``(xc, yc, brightness)``; ``xc`` on the row axis; brightness 0 = padding.
      size: frame side in pixels (11 for SeqCSIST).
      sigma: PSF width in pixels (0.5 for SeqCSIST).

    Returns:
      ``(..., size, size)`` float grey values: each target contributes its brightness times the
      pixel-integrated Gaussian (total energy = brightness on an infinite canvas).
    """
    if _is_jax(targets):
        targets = jnp.asarray(targets)
        if not jnp.issubdtype(targets.dtype, jnp.floating):
            targets = targets.astype(jnp.float32)
        einsum = jnp.einsum
    else:
        targets = np.asarray(targets, dtype=np.float64)
        einsum = np.einsum
    if targets.ndim < 2 or targets.shape[-1] != 3:
        raise ValueError(f"targets must have shape (..., K, 3), got {targets.shape}")
    ax = pixel_integrals(targets[..., 0], size, sigma)  # (..., K, size) along rows
    ay = pixel_integrals(targets[..., 1], size, sigma)  # (..., K, size) along columns
    return einsum("...k,...kr,...kc->...rc", targets[..., 2], ax, ay)


def grid_coordinates(c: int = 3, size: int = 11) -> np.ndarray:
    """Positions of the label-grid cells along one axis (SPEC §1).

    Returns:
      ``(size·c,)`` float64: cell ``i`` sits at ``(i - (c-1)//2) / c`` pixels (``-1/3 … 31/3`` for c = 3).
    """
    return (np.arange(size * c) - (c - 1) // 2) / c


def grid_index(coords: Array, c: int = 3) -> Array:
    """Label-grid index of a pixel coordinate: ``round(c·u + (c-1)//2)`` with round-half-to-even.

    Half-to-even matches Python's ``round`` used by the public code (numpy and JAX round the same way).
    """
    xp = jnp if _is_jax(coords) else np
    return xp.round(c * coords + (c - 1) // 2).astype(xp.int32)


def measurement_matrix(c: int = 3, sigma: float = 0.5, size: int = 11) -> np.ndarray:
    """The measurement matrix Φ (SPEC §2).

    Column ``k`` (row-major over the ``(size·c)²`` grid) is the flattened (row-major) frame of a unit-brightness
    target at grid cell ``k``, so ``frame.ravel() ≈ Φ @ label.ravel()`` for targets on grid points.

    Returns:
      ``(size², (size·c)²)`` float64 numpy array (``(121, 1089)`` for the SeqCSIST defaults).
    """
    coords = grid_coordinates(c, size)
    a = pixel_integrals(coords, size, sigma)  # (size·c, size): a[i, r]
    # Φ[(r, s), (i, j)] = a[i, r] · a[j, s]
    phi = np.einsum("ir,js->rsij", a, a)
    return phi.reshape(size * size, (size * c) ** 2)


def _grid_cells(targets: Array, c: int, size: int, xp):
    """Flat grid-cell index and validity mask of every target row. ``(..., K)`` each."""
    n = size * c
    ix = grid_index(targets[..., 0], c)
    iy = grid_index(targets[..., 1], c)
    valid = (targets[..., 2] != 0) & (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
    flat = xp.where(valid, ix * n + iy, 0)
    return flat, valid


def _later_duplicate(flat: Array, valid: Array, xp) -> Array:
    """``(..., K)`` bool: a later valid row of the same frame writes the same cell."""
    k = flat.shape[-1]
    same = (flat[..., :, None] == flat[..., None, :]) & valid[..., :, None] & valid[..., None, :]
    later = xp.arange(k)[None, :] > xp.arange(k)[:, None]  # [a, b]: b after a
    return xp.any(same & later, axis=-1)


def targets_to_grid(
    targets: Array, c: int = 3, size: int = 11, collision: str = "sum"
) -> Array:
    """Label maps from target lists (SPEC §1).

    Each target's brightness is written at cell ``(round(c·xc + (c-1)//2), round(c·yc + (c-1)//2))``.
    Padding rows (brightness 0) and cells outside the grid are skipped.

    Args:
      targets: ``(..., K, 3)`` rows ``(xc, yc, brightness)``.
      c: sub-pixel division.
      size: frame side in pixels.
      collision: ``"sum"`` (**DECISION**, default: targets sharing a cell add up; count them with
        :func:`grid_collisions`) or ``"overwrite"`` (the public code: the later target in the list wins).

    Returns:
      ``(..., size·c, size·c)`` label maps; float64 numpy for numpy input, the input dtype for JAX input.
    """
    if collision not in ("sum", "overwrite"):
        raise ValueError(f"collision must be 'sum' or 'overwrite', got {collision!r}")
    use_jax = _is_jax(targets)
    xp = jnp if use_jax else np
    targets = xp.asarray(targets) if use_jax else np.asarray(targets, dtype=np.float64)
    if targets.ndim < 2 or targets.shape[-1] != 3:
        raise ValueError(f"targets must have shape (..., K, 3), got {targets.shape}")
    n = size * c
    lead = targets.shape[:-2]
    flat, valid = _grid_cells(targets, c, size, xp)
    if collision == "overwrite":
        valid = valid & ~_later_duplicate(flat, valid, xp)
    values = xp.where(valid, targets[..., 2], 0)
    frames = int(np.prod(lead)) if lead else 1
    k = targets.shape[-2]
    offsets = xp.arange(frames)[:, None] * (n * n)
    idx = (flat.reshape(frames, k) + offsets).reshape(-1)
    vals = values.reshape(-1)
    if use_jax:
        out = jnp.zeros(frames * n * n, targets.dtype).at[idx].add(vals)
    else:
        out = np.bincount(idx, weights=vals, minlength=frames * n * n)
    return out.reshape(*lead, n, n)


def grid_collisions(targets: Array, c: int = 3, size: int = 11) -> Array:
    """Number of targets per frame that share a label cell with an earlier target. ``(...)`` int."""
    xp = jnp if _is_jax(targets) else np
    targets = xp.asarray(targets)
    flat, valid = _grid_cells(targets, c, size, xp)
    return xp.sum(_later_duplicate(flat, valid, xp) & valid, axis=-1)


def label_gram(targets: Array, c: int = 3, size: int = 11, collision: str = "sum") -> np.ndarray:
    """``X Xᵀ`` of the flattened label maps of ``targets (..., K, 3)``, without materialising the maps.

    A label map has at most K non-zero cells, so ``x xᵀ = Σ_{k,l} b_k b_l e_{cell_k} e_{cell_l}ᵀ`` per frame
    (targets sharing a cell add up, which is the ``"sum"`` policy; ``"overwrite"`` first drops the rows a later
    target overwrites). Memory stays ``O(N·K²)`` for N frames instead of ``O(N·(size·c)²)``.

    Returns:
      ``((size·c)², (size·c)²)`` float64.
    """
    if collision not in ("sum", "overwrite"):
        raise ValueError(f"collision must be 'sum' or 'overwrite', got {collision!r}")
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim < 2 or targets.shape[-1] != 3:
        raise ValueError(f"targets must have shape (..., K, 3), got {targets.shape}")
    targets = targets.reshape(-1, targets.shape[-2], 3)
    n = (size * c) ** 2
    flat, valid = _grid_cells(targets, c, size, np)
    if collision == "overwrite":
        valid = valid & ~_later_duplicate(flat, valid, np)
    vals = np.where(valid, targets[..., 2], 0.0)
    pair_index = (flat[:, :, None] * n + flat[:, None, :]).reshape(-1)
    pair_value = (vals[:, :, None] * vals[:, None, :]).reshape(-1)
    return np.bincount(pair_index, weights=pair_value, minlength=n * n).reshape(n, n)


def least_squares_init_from_gram(phi: Array, gram: Array, ridge: float | None = None) -> np.ndarray:
    """Q from the label Gram matrix ``S = X Xᵀ``: ``Q = S Φᵀ (Φ S Φᵀ)⁻¹`` (see :func:`least_squares_init`)."""
    phi = np.asarray(phi, dtype=np.float64)
    m, _ = phi.shape
    xyt = np.asarray(gram, dtype=np.float64) @ phi.T  # X Yᵀ, (n, m)
    yyt = phi @ xyt  # Y Yᵀ, (m, m)
    if ridge is None:
        cond = np.linalg.cond(yyt)
        if not np.isfinite(cond) or cond > 1e12:
            ridge = 1e-10 * max(np.trace(yyt) / m, 1e-30)
            import warnings

            warnings.warn(
                f"Y Yᵀ is ill-conditioned (cond={cond:.3g}); adding ridge {ridge:.3g} to compute Q (expected: "
                "with few training trajectories, e.g. a :smoke config, the targets never come near some pixels, so Y "
                "has near-empty rows; "
                "Q is still the least-squares initialisation of SPEC §2)",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            ridge = 0.0
    yyt = yyt + ridge * np.eye(m)
    # Q = X Yᵀ (Y Yᵀ)⁻¹ ⇔ (Y Yᵀ) Qᵀ = (X Yᵀ)ᵀ since Y Yᵀ is symmetric.
    return np.linalg.solve(yyt, xyt.T).T


def least_squares_init(phi: Array, grids: Array, ridge: float | None = None) -> np.ndarray:
    """The initialisation matrix Q of ISTA-Net/DeRefNet (SPEC §2).

    Least squares over training labels ``X`` (columns = flattened label maps): with ``Y = Φ X``,
    ``Q = X Yᵀ (Y Yᵀ)⁻¹``. Computed through the Gram matrix ``S = X Xᵀ`` as ``Q = S Φᵀ (Φ S Φᵀ)⁻¹`` so
    memory does not grow with the number of frames (for a whole dataset, pass targets to :func:`label_gram`
    and use :func:`least_squares_init_from_gram`). If ``Y Yᵀ`` is singular (too few or degenerate labels) a
    ridge of ``1e-10 · trace/m`` is added (or ``ridge`` when given) and a warning says so.

    Args:
      phi: ``(m, n)`` measurement matrix.
      grids: ``(N, √n, √n)`` or ``(N, n)`` training label maps.
      ridge: explicit Tikhonov term added to ``Y Yᵀ``; ``None`` adds one only when needed.

    Returns:
      ``(n, m)`` float64 numpy array (``(1089, 121)`` for SeqCSIST); ``x⁰ = Q y``.
    """
    phi = np.asarray(phi, dtype=np.float64)
    n = phi.shape[1]
    x = np.asarray(grids, dtype=np.float64).reshape(-1, n)
    if x.shape[0] == 0:
        raise ValueError("least_squares_init needs at least one training label map")
    return least_squares_init_from_gram(phi, x.T @ x, ridge=ridge)


def count_clipped(images: Array) -> Array:
    """Number of pixels per frame that 8-bit storage clips (value after rounding > 255 or < 0). ``(...)``."""
    xp = jnp if _is_jax(images) else np
    r = xp.round(images)
    return xp.sum((r > 255) | (r < 0), axis=(-2, -1))


def quantize(images: Array, clip: bool = True) -> Array:
    """8-bit storage as the public release writes PNG frames (SPEC §2).

    Args:
      images: ``(..., H, W)`` float grey values.
      clip: round and clip to ``[0, 255]`` (**DECISION**, the public writer's behaviour). With ``clip=False``
        and numpy input, values outside ``[0, 255]`` after rounding raise ``ValueError`` instead of wrapping
        around (JAX input cannot raise under ``jit`` and is always clipped); use the simulator's float output
        for an unclipped variant. :func:`count_clipped` counts clipped pixels.

    Returns:
      ``(..., H, W)`` uint8 array (numpy or JAX like the input).
    """
    xp = jnp if _is_jax(images) else np
    r = xp.round(xp.asarray(images))
    if not clip:
        if xp is np and (np.any(r > 255) or np.any(r < 0)):
            raise ValueError(
                f"{int(np.sum((r > 255) | (r < 0)))} pixels fall outside [0, 255]; pass clip=True"
            )
    return xp.clip(r, 0, 255).astype(xp.uint8)
