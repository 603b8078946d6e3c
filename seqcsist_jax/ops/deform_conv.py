"""Deformable convolution (DCN v1, no modulation mask) in NHWC, torchvision/mmcv-exact (SPEC §6).

Semantics
---------
For output pixel ``(oh, ow)``, kernel point ``k = i·kw + j`` and offset group ``g`` the sample point is, in
pixel-index coordinates of the input (row = y)::

    py = oh·stride_h − pad_h + i·dil_h + Δy[g, k]      Δy = offset[..., g·2·kh·kw + 2k]
    px = ow·stride_w − pad_w + j·dil_w + Δx[g, k]      Δx = offset[..., g·2·kh·kw + 2k + 1]

If ``(py, px)`` lies outside the open box ``(−1, H) × (−1, W)`` the sample is 0. Otherwise it is bilinear
with **floor-based** weights: ``y0 = floor(py)``, ``ly = py − y0``; the corner ``(y0 + a, x0 + b)`` has weight
``(a ? ly : 1 − ly)·(b ? lx : 1 − lx)`` and contributes only if it is inside the image (zero padding). The
columns of the sampled ``(kh·kw, C)`` patch are then contracted with the kernel exactly like a grouped
convolution. This is the rule of ``torchvision.ops.deform_conv2d`` and of ``mmcv.ops.deform_conv2d``, so
weights and offsets ported from PyTorch need no permutation (only the usual NCHW→NHWC / OIHW→HWIO moves).

Why floor-based: with the floor form the derivative w.r.t. ``py`` at an integer position is the one-sided
(right) derivative ``x[y0+1] − x[y0]`` (times the column weight), which is exactly what torchvision's backward
computes. The "tent" form ``Σ_h relu(1 − |py − h|)·x[h]`` has the same values but not that gradient at
integer positions: PyTorch autograd (``|·|'(0) = 0``) makes it 0 and JAX (``|·|'(0) = 1``, ``relu'(0) = 0``)
makes it ``−x[y0]``, dropping the neighbour. Zero-initialised offsets (DeRefNet's ``conv_offset``) sit
exactly on integer positions, so only the floor form starts them moving correctly.

Edge rule for the offset gradient (``edge_grad=``). The values never depend on it; only the offset gradient
on the measure-zero set where a coordinate is exactly −1 does, but that set is hit at initialisation: with
zero offsets and padding 1, the first kernel row/column of the first output row/column samples exactly at
−1. ``"torchvision"`` (default): the gradient is the derivative of the per-corner formula alone (torchvision's
``get_coordinate_weight`` has no box test), so at ``py = −1`` the Δy gradient is the one-sided
``x[0] − 0`` (times the column weight). ``"mmcv"``: mmcv's kernels return 0 for points on or outside the
open box, so those get zero offset gradient. Everywhere else the two agree.

Formulations (``method=``)
--------------------------
``"gather"`` (default; ``"auto"`` resolves to it)
    Pad the input by one zero pixel on every side, so every corner of a kept point is addressable and corners
    outside the image read zero (exactly the per-corner validity rule, without per-corner masks); gather the
    four corners as rows of ``C/G`` channels from the flattened padded input (four 1-row gathers), sum them
    with the bilinear weights, then one im2col matmul per group,
    ``(N·Ho·Wo, kh·kw·C/groups) @ (kh·kw·C/groups, O/groups)``. Work and memory ``O(N·Ho·Wo·kh·kw·C)``;
    the backward pass is four scatter-adds.
``"matmul"``
    No gather or scatter at all: per kernel point, one-hot row weights ``(Ho·Wo, H)`` and column weights
    ``(Ho·Wo, W)`` (two non-zeros each, built by comparing ``floor`` with ``arange``); the column contraction
    is one batched matmul ``(Ho·Wo, W) @ (W, H·C/G)`` per image and group, the row contraction a batched
    ``(1, H) @ (H, C/G)`` per point. That is what TPUs' MXUs and GPU tensor cores are built for, but it costs
    ``Ho·Wo·W·H·C`` multiply-adds per image and kernel point instead of ``4·Ho·Wo·C`` (~270× more at 33×33).
    Kernel points run one at a time (``lax.map`` under ``jax.checkpoint``) to bound memory to one
    ``(N, G, Ho·Wo, H·C/G)`` intermediate (300 MB at DeRefNet's shape, float32). Interpolation matmuls run
    at ``Precision.HIGHEST`` so TF32/bf16 passes do not round the sampling weights.

Measured and dropped (CPU, DeRefNet's shape, same-run comparisons on a loaded 2-core machine): one gather of
pre-stacked 2×2 "quads" (4·C/G-wide rows) was ~2-4× slower than four 1-row gathers; a gather of 2×2 windows
(``lax.gather`` with slice size (1, 2, 2, C)) ~3× slower; two gathers of 2-pixel slices ~1.5× slower; masked
gathers from the unpadded input (per-corner validity) about the same as the padded form. For ``"matmul"``,
the dense ``(Ho·Wo, H·W)`` interpolation matrix (outer product of row and column weights) has the same
multiply-add count as the two-step row/column form but was 3× slower forward and 10× slower
forward+backward on CPU (it materialises the matrix and its gradient), so the two-step form was kept.
Two XLA:CPU pitfalls found on the way: a ``dot_general`` contracting kernel points and channels as two
separate dimensions was ~9× slower than the same contraction as one flattened ``(·, K·C)`` matmul, and
keeping a size-1 offset-group axis inside the sample-point shape made the gather backward ~3× slower.

Measured at DeRefNet's shape (N = 64 pairs, 33×33, C = O = 32, 3×3, stride 1, pad 1, G = 1, float32,
offsets ~ N(0, 1) px) with ``python -m experiments.benchmarks.bench_deform_conv`` on the shared 2-core CPU
machine under heavy load from other jobs (medians of 5 interleaved repetitions; absolute times are
inflated, the ratios are the meaningful part; see ``experiments/benchmarks/results/bench_deform_conv.md``):

=====================  ==============  ======================  =========================
implementation         forward (ms)    forward+backward (ms)   ratio to torchvision
=====================  ==============  ======================  =========================
``"gather"``           300             1240                    0.26 / 0.24
``"matmul"``           1750            7980                    1.50 / 1.54
torchvision (CPU)      1170            5180                    1
=====================  ==============  ======================  =========================

Recommendation: ``"gather"`` on CPU (clear winner) and on GPU, where XLA's gathers and scatter-adds are
fast and the op stays memory-bound at a few MB per call. ``"matmul"`` is the candidate for TPU, where
small-row gathers/scatters are slow and the MXU absorbs the extra multiply-adds (about 22 GFLOP forward at
DeRefNet's shape). No GPU or TPU was available to measure these two claims.

Everything is a pure function of arrays: ``jax.jit``/``jax.vmap``/``jax.grad`` compose with it, and it is
differentiable w.r.t. the input, the offsets and the kernel.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Callable, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from seqcsist_jax.ops import conv

__all__ = [
    "deform_conv2d",
    "deform_sample",
    "deform_output_size",
    "sampling_positions",
    "METHODS",
    "DeformConv",
    "DeformConvPack",
    "DeformConvOffsetFrom",
    "mmcv_kernel_init",
    "legacy_mmcv_kernel_init",
]

Array = Any  # jax.Array | numpy.ndarray
IntPair = int | Sequence[int]
Method = Literal["auto", "gather", "matmul"]
EdgeGrad = Literal["torchvision", "mmcv"]

METHODS: tuple[str, ...] = ("gather", "matmul")


def _pair(value: IntPair, name: str, minimum: int) -> tuple[int, int]:
    """Normalises an int-or-pair argument (Python or numpy integers) and checks its range."""
    if isinstance(value, numbers.Integral):
        pair = (int(value), int(value))
    else:
        try:
            pair = tuple(operator.index(v) for v in value)
        except TypeError as err:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from err
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in pair):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair  # type: ignore[return-value]


def deform_output_size(
    in_hw: Sequence[int],
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 1,
    dilation: IntPair = 1,
) -> tuple[int, int]:
    """``(Ho, Wo)`` of a convolution with these settings (the PyTorch formula, floor division).

    Raises ValueError when the dilated kernel does not fit the padded input (an output side below 1), as
    PyTorch's ``deform_conv2d`` does, instead of returning an empty or negative size.
    """
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    dh, dw = _pair(dilation, "dilation", 1)
    h, w = in_hw
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"input ({h}, {w}) too small: with padding ({ph}, {pw}) it is smaller than the dilated kernel "
            f"({dh * (kh - 1) + 1}, {dw * (kw - 1) + 1}); output would be {ho}×{wo}")
    return ho, wo


def sampling_positions(
    offset: Array,
    kernel_size: IntPair,
    *,
    stride: IntPair = 1,
    padding: IntPair = 1,
    dilation: IntPair = 1,
    offset_groups: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Absolute sample positions from offsets in torchvision channel order.

    Args:
      offset: ``(N, Ho, Wo, 2·G·kh·kw)``; channel ``g·2·kh·kw + 2k`` is Δy and ``+1`` is Δx of kernel point
        ``k = i·kw + j`` in offset group ``g``.
      kernel_size, stride, padding, dilation: int or ``(h, w)`` pair.
      offset_groups: ``G``.

    Returns:
      ``(py, px)``, each ``(N, Ho, Wo, G, kh·kw)`` in input pixel-index units (row, column), in the offsets'
      floating dtype (at least float32).
    """
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    dh, dw = _pair(dilation, "dilation", 1)
    offset = jnp.asarray(offset)
    n, ho, wo, ch = offset.shape
    if ch != 2 * offset_groups * kh * kw:
        raise ValueError(
            f"offset has {ch} channels, expected 2·offset_groups·kh·kw = {2 * offset_groups * kh * kw}"
        )
    dtype = jnp.promote_types(offset.dtype, jnp.float32)
    off = offset.astype(dtype).reshape(n, ho, wo, offset_groups, kh * kw, 2)
    k = jnp.arange(kh * kw)
    base_y = (jnp.arange(ho) * sh - ph)[:, None] + (k // kw) * dh  # (Ho, K)
    base_x = (jnp.arange(wo) * sw - pw)[:, None] + (k % kw) * dw  # (Wo, K)
    py = base_y[None, :, None, None, :].astype(dtype) + off[..., 0]
    px = base_x[None, None, :, None, :].astype(dtype) + off[..., 1]
    return py, px


def _bilinear_parts(py: jax.Array, px: jax.Array, h: int, w: int, edge_grad: EdgeGrad):
    """Floor corners, fractional parts and the mask of points that may contribute.

    Points with ``y0 < −1`` or ``y0 > H−1`` have all four corners outside the image, so masking them is exact
    in value and gradient. ``py = −1`` exactly (``y0 = −1``, ``ly = 0``) has value 0 either way; torchvision
    keeps its one-sided gradient (box ``[−1, H)``), mmcv zeroes it (open box ``(−1, H)``).

    Non-finite positions (NaN/inf offsets) sample 0 with a zero gradient in both formulations: they are moved
    outside the image before any arithmetic, so no ``0 · NaN`` reaches the backward pass.
    """
    finite = jnp.isfinite(py) & jnp.isfinite(px)
    py = jnp.where(finite, py, -2.0)
    px = jnp.where(finite, px, -2.0)
    if edge_grad == "torchvision":
        valid = (py >= -1) & (py < h) & (px >= -1) & (px < w)
    elif edge_grad == "mmcv":
        valid = (py > -1) & (py < h) & (px > -1) & (px < w)
    else:
        raise ValueError(f"edge_grad must be 'torchvision' or 'mmcv', got {edge_grad!r}")
    y0 = jnp.floor(py)
    x0 = jnp.floor(px)
    # Positions come from floor(), so these are integers; the differentiable parts are ly/lx only.
    ly = py - y0
    lx = px - x0
    return valid, lax.stop_gradient(y0), lax.stop_gradient(x0), ly, lx


def _sample_gather(x: jax.Array, py: jax.Array, px: jax.Array, edge_grad: EdgeGrad) -> jax.Array:
    """``(N, H, W, C)`` sampled at ``(N, Ho, Wo, G, K)`` points → ``(N, Ho, Wo, K, C)``."""
    n, h, w, c = x.shape
    _, ho, wo, g, k = py.shape
    cg = c // g
    # Work on a flat (N, G·Ho·Wo·K) list of points: keeping the (size-1) group axis inside the point shape
    # made XLA:CPU's backward pass ~3× slower.
    py = py.transpose(0, 3, 1, 2, 4).reshape(n, g * ho * wo * k)
    px = px.transpose(0, 3, 1, 2, 4).reshape(n, g * ho * wo * k)
    valid, y0, x0, ly, lx = _bilinear_parts(py, px, h, w, edge_grad)
    # Pad by one zero pixel so that every corner of a kept point (y0 ∈ [−1, H−1]) is addressable and
    # corners outside the image read zero: no per-corner masks. Clipping only moves masked points.
    y0i = jnp.clip(y0, -1, h - 1).astype(jnp.int32) + 1
    x0i = jnp.clip(x0, -1, w - 1).astype(jnp.int32) + 1
    wp = w + 2
    size = (h + 2) * wp
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # Rows of `flat` are (image, offset group, padded pixel); each row holds that group's C/G channels.
    flat = xp.reshape(n, size, g, cg).transpose(0, 2, 1, 3).reshape(n * g * size, cg)
    image_group = (jnp.arange(n)[:, None] * g + jnp.arange(g)[None, :]) * size  # (N, G)
    image_group = jnp.repeat(image_group, ho * wo * k, axis=1)  # (N, G·Ho·Wo·K)
    top_left = image_group + y0i * wp + x0i
    # Four 1-row gathers measured faster on CPU than one gather of 2×2 windows or of pre-stacked quads.
    cols = None
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            wt = jnp.where(valid, wy * wx, 0).astype(x.dtype)
            vals = flat.at[(top_left + (dy * wp + dx)).reshape(-1)].get(mode="promise_in_bounds")
            term = wt[..., None] * vals.reshape(n, g * ho * wo * k, cg)
            cols = term if cols is None else cols + term
    cols = cols.reshape(n, g, ho, wo, k, cg).transpose(0, 2, 3, 4, 1, 5)
    return cols.reshape(n, ho, wo, k, c)


def _sample_matmul(x: jax.Array, py: jax.Array, px: jax.Array, edge_grad: EdgeGrad) -> jax.Array:
    """Same contract as `_sample_gather`, as interpolation matmuls with one-hot row/column weights."""
    n, h, w, c = x.shape
    _, ho, wo, g, k = py.shape
    cg = c // g
    # Kernel point leading (it is mapped over), then (N, G, Ho·Wo) points.
    py = py.transpose(4, 0, 3, 1, 2).reshape(k, n, g, ho * wo)
    px = px.transpose(4, 0, 3, 1, 2).reshape(k, n, g, ho * wo)
    valid, y0, x0, ly, lx = _bilinear_parts(py, px, h, w, edge_grad)
    rows = jnp.arange(h, dtype=y0.dtype)
    cols = jnp.arange(w, dtype=x0.dtype)
    # One-hot row/column weights (two non-zeros each); corners outside the image match no index (read 0).
    wy = jnp.where(rows == y0[..., None], (1 - ly)[..., None], 0) + jnp.where(
        rows == y0[..., None] + 1, ly[..., None], 0
    )
    wx = jnp.where(cols == x0[..., None], (1 - lx)[..., None], 0) + jnp.where(
        cols == x0[..., None] + 1, lx[..., None], 0
    )
    wy = jnp.where(valid[..., None], wy, 0).astype(x.dtype)  # (K, N, G, Ho·Wo, H)
    wx = wx.astype(x.dtype)  # (K, N, G, Ho·Wo, W)
    # (N, G, W, H·Cg): the column contraction is then one (Ho·Wo, W) @ (W, H·Cg) matmul per image/group.
    xg = x.reshape(n, h, w, g, cg).transpose(0, 3, 2, 1, 4).reshape(n, g, w, h * cg)

    def one_point(weights: tuple[jax.Array, jax.Array]) -> jax.Array:
        wy_k, wx_k = weights  # (N, G, Ho·Wo, H), (N, G, Ho·Wo, W)
        by_row = jnp.einsum("ngpw,ngwz->ngpz", wx_k, xg, precision=lax.Precision.HIGHEST)
        by_row = by_row.reshape(n, g, ho * wo, h, cg)
        return jnp.einsum("ngph,ngphc->ngpc", wy_k, by_row, precision=lax.Precision.HIGHEST)

    # Kernel points one at a time, rematerialised in the backward pass, to bound memory to one
    # (N, G, Ho·Wo, H·Cg) intermediate (300 MB at N = 64, 33×33, C = 32, float32).
    per_point = lax.map(jax.checkpoint(one_point), (wy, wx))  # (K, N, G, Ho·Wo, Cg)
    per_point = per_point.reshape(k, n, g, ho, wo, cg).transpose(1, 3, 4, 0, 2, 5)
    return per_point.reshape(n, ho, wo, k, c)


_SAMPLERS = {"gather": _sample_gather, "matmul": _sample_matmul}


MAX_ELEMENTS = 2**31 - 1  # the gather formulation addresses the zero-padded input with int32 indices


def _resolve_method(method: str) -> str:
    if method == "auto":
        # Measured winner on CPU, expected winner on GPU; see the module docstring for TPU.
        return "gather"
    if method not in _SAMPLERS:
        raise ValueError(f"method must be 'auto' or one of {METHODS}, got {method!r}")
    return method


def deform_sample(
    x: Array,
    offset: Array,
    kernel_size: IntPair,
    *,
    stride: IntPair = 1,
    padding: IntPair = 1,
    dilation: IntPair = 1,
    offset_groups: int = 1,
    method: Method = "auto",
    edge_grad: EdgeGrad = "torchvision",
) -> jax.Array:
    """The deformable im2col: bilinear samples of every kernel point at every output pixel.

    Args:
      x: ``(N, H, W, C)`` input, C divisible by ``offset_groups``.
      offset: ``(N, Ho, Wo, 2·G·kh·kw)`` offsets in torchvision channel order (see module docstring).
      kernel_size, stride, padding, dilation: int or ``(h, w)`` pair.
      offset_groups: ``G``; channel block ``g`` of ``x`` (``C/G`` channels) uses offset group ``g``.
      method: ``"auto"`` | ``"gather"`` | ``"matmul"``.
      edge_grad: ``"torchvision"`` | ``"mmcv"``, offset-gradient rule at coordinates exactly −1 (module
        docstring); values are the same.

    Returns:
      ``(N, Ho, Wo, kh·kw, C)`` samples in ``x.dtype``; kernel point ``k = i·kw + j``.
    """
    x = jnp.asarray(x)
    offset = jnp.asarray(offset)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, H, W, C), got shape {x.shape}")
    if offset.ndim != 4:
        raise ValueError(f"offset must be (N, Ho, Wo, 2·G·kh·kw), got shape {offset.shape}")
    if offset_groups < 1 or x.shape[3] % offset_groups:
        raise ValueError(f"input channels {x.shape[3]} not divisible by offset_groups={offset_groups}")
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    ho, wo = deform_output_size(x.shape[1:3], (kh, kw), stride, padding, dilation)  # raises when too small
    expected = (x.shape[0], ho, wo, 2 * offset_groups * kh * kw)
    if offset.shape != expected:
        raise ValueError(f"offset has shape {offset.shape}, expected (N, Ho, Wo, 2·G·kh·kw) = {expected}")
    n, h, w, c = x.shape
    padded = n * (h + 2) * (w + 2) * c
    if padded > MAX_ELEMENTS:
        raise ValueError(
            f"input {tuple(x.shape)} is too large for the deformable op: N·(H+2)·(W+2)·C = {padded} exceeds "
            f"the int32 index limit {MAX_ELEMENTS} (2³¹ − 1); split the batch"
        )
    sampler = _SAMPLERS[_resolve_method(method)]
    if edge_grad not in ("torchvision", "mmcv"):
        raise ValueError(f"edge_grad must be 'torchvision' or 'mmcv', got {edge_grad!r}")
    py, px = sampling_positions(
        offset, (kh, kw), stride=stride, padding=padding, dilation=dilation, offset_groups=offset_groups
    )
    return sampler(x, py, px, edge_grad)


def deform_conv2d(
    x: Array,
    offset: Array,
    kernel: Array,
    *,
    stride: IntPair = 1,
    padding: IntPair = 1,
    dilation: IntPair = 1,
    groups: int = 1,
    offset_groups: int = 1,
    method: Method = "auto",
    edge_grad: EdgeGrad = "torchvision",
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """Deformable 2-D convolution (DCN v1, no mask, no bias), NHWC, torchvision-exact.

    Args:
      x: ``(N, H, W, C)`` input.
      offset: ``(N, Ho, Wo, 2·G·kh·kw)`` offsets in torchvision/mmcv channel order: channel
        ``g·2·kh·kw + 2k`` is Δy (rows), ``+1`` is Δx (columns), kernel point ``k = i·kw + j``.
      kernel: ``(kh, kw, C/groups, O)`` (HWIO); output channel ``o`` belongs to group ``o // (O/groups)``.
      stride, padding, dilation: int or ``(h, w)`` pair; padding is symmetric zero padding in pixels.
      groups: channel groups of the convolution (as ``feature_group_count``).
      offset_groups: ``G``, groups of input channels sharing one offset field.
      method: sampling formulation, ``"auto"`` (= ``"gather"``), ``"gather"`` or ``"matmul"``.
      edge_grad: ``"torchvision"`` (default) or ``"mmcv"``: which library's offset gradient to reproduce at
        coordinates exactly −1 (see module docstring); values and all other gradients are identical.
      precision: passed to the im2col matmul (like ``lax.conv_general_dilated``'s).

    Returns:
      ``(N, Ho, Wo, O)`` with ``Ho = (H + 2·pad_h − dil_h·(kh−1) − 1) // stride_h + 1`` (same for W), in the
      promoted dtype of ``x`` and ``kernel``.

    Raises:
      ValueError: on inconsistent shapes, group counts or arguments.
    """
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be (kh, kw, C/groups, O), got shape {kernel.shape}")
    if x.ndim != 4:
        raise ValueError(f"x must be (N, H, W, C), got shape {x.shape}")
    kh, kw, cin_g, o = kernel.shape
    c = x.shape[3]
    if groups < 1 or c % groups:
        raise ValueError(f"input channels {c} not divisible by groups={groups}")
    if cin_g != c // groups:
        raise ValueError(f"kernel in-channels {cin_g} != C/groups = {c}/{groups} = {c // groups}")
    if o % groups:
        raise ValueError(f"kernel out-channels {o} not divisible by groups={groups}")
    cols = deform_sample(
        x,
        offset,
        (kh, kw),
        stride=stride,
        padding=padding,
        dilation=dilation,
        offset_groups=offset_groups,
        method=method,
        edge_grad=edge_grad,
    )  # (N, Ho, Wo, K, C)
    n, ho, wo, k, _ = cols.shape
    dtype = jnp.promote_types(x.dtype, kernel.dtype)
    og = o // groups
    # (P, K·Cin_g) @ (K·Cin_g, O/groups) per group; a plain 2-D matmul when groups = 1 (a dot_general
    # contracting K and C separately measured ~9× slower on XLA:CPU).
    cols = cols.astype(dtype).reshape(n * ho * wo, k, groups, cin_g).transpose(2, 0, 1, 3)
    cols = cols.reshape(groups, n * ho * wo, k * cin_g)
    kern = kernel.astype(dtype).reshape(k, cin_g, groups, og).transpose(2, 0, 1, 3)
    kern = kern.reshape(groups, k * cin_g, og)
    out = jnp.matmul(cols, kern, precision=precision)  # (groups, P, O/groups)
    return out.transpose(1, 0, 2).reshape(n, ho, wo, o)


# --------------------------------------------------------------------------------------------------------
# Flax (linen) modules
# --------------------------------------------------------------------------------------------------------

# mmcv ≥ 2 (which the public SeqCSIST code needs: it imports mmengine and mmagic) initialises
# DeformConv2d.weight with ``nn.init.kaiming_uniform_(weight, nonlinearity='relu')``: uniform(±√(6/n)),
# n = (C_in/groups)·kh·kw. With an HWIO kernel, flax's fan_in is the same n.
mmcv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")


def legacy_mmcv_kernel_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """mmcv < 2 / original DCN init: uniform(±1/√n), n = C_in·kh·kw, for an HWIO kernel with groups = 1."""
    kh, kw, cin, _ = shape
    bound = 1.0 / math.sqrt(cin * kh * kw)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class DeformConv(nn.Module):
    """Deformable convolution with externally supplied offsets (mmcv ``DeformConv2d``), NHWC.

    ``__call__(x, offset)``: ``x`` ``(N, H, W, C)``, ``offset`` ``(N, Ho, Wo, 2·offset_groups·kh·kw)`` in
    torchvision channel order → ``(N, Ho, Wo, features)``.

    Params: ``kernel`` ``(kh, kw, C/groups, features)`` (HWIO; from PyTorch ``weight.permute(2, 3, 1, 0)``),
    ``bias`` ``(features,)`` if ``use_bias`` (mmcv's DeformConv2d has none). Note the default ``padding=1``
    (mmcv's default is 0; DeRefNet uses 3×3 with padding 1).
    """

    features: int
    kernel_size: IntPair = (3, 3)
    stride: IntPair = 1
    padding: IntPair = 1
    dilation: IntPair = 1
    groups: int = 1
    offset_groups: int = 1
    use_bias: bool = False
    kernel_init: Callable[..., jax.Array] = mmcv_kernel_init
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros
    method: Method = "auto"
    edge_grad: EdgeGrad = "torchvision"
    precision: lax.PrecisionLike = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def _deform(self, x: jax.Array, offset: jax.Array) -> jax.Array:
        kh, kw = _pair(self.kernel_size, "kernel_size", 1)
        c = x.shape[-1]
        if c % self.groups:
            raise ValueError(f"{self.name}: input channels {c} not divisible by groups={self.groups}")
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, c // self.groups, self.features), self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, offset, kernel, bias = nn.dtypes.promote_dtype(x, offset, kernel, bias, dtype=self.dtype)
        y = deform_conv2d(
            x,
            offset,
            kernel,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            offset_groups=self.offset_groups,
            method=self.method,
            edge_grad=self.edge_grad,
            precision=self.precision,
        )
        return y if bias is None else y + bias

    def _offset_conv(self, inputs: jax.Array, dilation: IntPair) -> jax.Array:
        """The zero-initialised ``conv_offset`` (bias, explicit symmetric padding like PyTorch)."""
        kh, kw = _pair(self.kernel_size, "kernel_size", 1)
        ph, pw = _pair(self.padding, "padding", 0)
        return nn.Conv(
            2 * self.offset_groups * kh * kw,
            (kh, kw),
            strides=_pair(self.stride, "stride", 1),
            padding=((ph, ph), (pw, pw)),
            kernel_dilation=_pair(dilation, "dilation", 1),
            use_bias=True,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            precision=self.precision,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv_offset",
            conv_general_dilated=conv.conv_general_dilated,  # fast backward inside lax.scan on CPU
        )(inputs)

    @nn.compact
    def __call__(self, x: jax.Array, offset: jax.Array) -> jax.Array:
        return self._deform(x, offset)


class DeformConvPack(DeformConv):
    """Deformable convolution whose offsets come from its own input (mmcv ``DeformConv2dPack``).

    ``__call__(x)``: offsets ``= conv_offset(x)``, a ``kh×kw`` convolution to ``2·offset_groups·kh·kw``
    channels with bias and the main convolution's stride, padding and dilation, zero-initialised (so the
    module starts as a plain convolution, and the floor-based sampler still gives ``conv_offset`` a non-zero
    gradient). Params: ``kernel``, optional ``bias``, ``conv_offset/{kernel, bias}``.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # type: ignore[override]
        return self._deform(x, self._offset_conv(x, self.dilation))


class DeformConvOffsetFrom(DeformConv):
    """Deformable convolution whose offsets come from a second input (public ``AugmentedDeformConv2dPack``).

    ``__call__(x, extra)``: offsets ``= conv_offset(extra)``, zero-initialised like `DeformConvPack`;
    DeRefNet's first alignment conv feeds the aggregated centre/neighbour features as ``extra``. As in the
    public class, ``conv_offset`` uses the main stride and padding but no dilation (``offset_dilation``,
    default 1); its input channels are taken from ``extra`` (the public class declares them equal to ``x``'s).
    """

    offset_dilation: IntPair = 1

    @nn.compact
    def __call__(self, x: jax.Array, extra: jax.Array) -> jax.Array:  # type: ignore[override]
        return self._deform(x, self._offset_conv(extra, self.offset_dilation))
