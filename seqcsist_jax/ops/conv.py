"""2-D convolutions whose backward pass stays on XLA:CPU's fast (Eigen) path inside loops.

XLA:CPU runs a convolution with its fast Eigen kernel only when the convolution is *canonical*: input NHWC
(``b01f``), kernel HWIO (``01io``), output NHWC. JAX's transpose rules for ``lax.conv_general_dilated``
produce non-canonical backward convolutions (input gradient ``b01f_01oi->b01f``, kernel gradient
``f01b_i01o->01bf``). XLA's ``ConvCanonicalization`` pass rewrites them with explicit transposes, but only
in the *entry* computation: inside a ``while`` body (``lax.scan``, ``lax.fori_loop``, ``lax.map``) they are
left as they are and run on XLA's naive loop emitter, single-threaded. Measured on DeRefNet's training step
(smoke size, batch 1, 2 CPU cores, ``experiments/benchmarks/bench_train.py``): the same step took
~570 ms as a jitted function and ~1,480 ms as the body of a one-step ``lax.scan``, all of the difference in
those backward convolutions.

:func:`conv_general_dilated` is a drop-in replacement for ``lax.conv_general_dilated`` (and for Flax's
``nn.Conv(conv_general_dilated=...)``) that, for the stride-1, ungrouped NHWC/HWIO case on CPU, defines the
backward pass itself with canonical convolutions and explicit transposes, i.e. exactly what
``ConvCanonicalization`` emits at top level, so a step runs the same kernels inside a scan as outside.
Every other case, and every other backend (GPU/TPU convolution libraries take any layout), is passed to
``lax.conv_general_dilated`` unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_general_dilated", "uses_canonical_backward"]

_NHWC = ("NHWC", "HWIO", "NHWC")


def uses_canonical_backward() -> bool:
    """Whether :func:`conv_general_dilated` uses its own backward pass (on the CPU backend)."""
    return jax.default_backend() == "cpu"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_nhwc(x: jax.Array, w: jax.Array, padding: tuple, dilation: tuple, precision: Any) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=_NHWC,
                                    precision=precision)


def _conv_nhwc_fwd(x, w, padding, dilation, precision):
    return _conv_nhwc(x, w, padding, dilation, precision), (x, w)


def _conv_nhwc_bwd(padding, dilation, precision, residuals, g):
    x, w = residuals
    kh, kw = w.shape[:2]
    # Input gradient: correlation of g with the spatially flipped kernel, in/out channels swapped (HWIO again).
    w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    pad_x = tuple((d * (k - 1) - lo, d * (k - 1) - hi) for (lo, hi), k, d in zip(padding, (kh, kw), dilation))
    dx = lax.conv_general_dilated(g, w_t, (1, 1), pad_x, rhs_dilation=dilation, dimension_numbers=_NHWC,
                                  precision=precision)
    # Kernel gradient: a convolution over the spatial axes with the channels as batch and the images as the
    # contracted feature axis: x as (C, H, W, N) ``b01f`` and g as (Ho, Wo, N, O) ``01io`` → (C, kh, kw, O).
    dw = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), dilation, padding,
                                  dimension_numbers=_NHWC, precision=precision)
    return dx.astype(x.dtype), dw.transpose(1, 2, 0, 3).astype(w.dtype)


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def _pairs(value, default: int) -> tuple[int, ...]:
    return tuple(default for _ in range(2)) if value is None else tuple(int(v) for v in value)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` with the same signature and values; see the module docstring."""
    plain = functools.partial(
        lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision, preferred_element_type=preferred_element_type,
    )
    if lhs.ndim != 4 or rhs.ndim != 4 or not uses_canonical_backward():
        return plain()
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
        return plain()
    strides, base, dilation = _pairs(window_strides, 1), _pairs(lhs_dilation, 1), _pairs(rhs_dilation, 1)
    if (strides != (1, 1) or base != (1, 1) or feature_group_count != 1 or batch_group_count != 1
            or preferred_element_type is not None or lhs.dtype != rhs.dtype):
        return plain()
    if isinstance(padding, str):
        extent = tuple(d * (k - 1) + 1 for d, k in zip(dilation, rhs.shape[:2]))
        pads = tuple(lax.padtype_to_pads(lhs.shape[1:3], extent, (1, 1), padding))
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    kernel_extent = tuple(d * (k - 1) for d, k in zip(dilation, rhs.shape[:2]))
    if any(lo < 0 or hi < 0 or lo > e or hi > e for (lo, hi), e in zip(pads, kernel_extent)):
        return plain()  # negative or beyond-kernel padding: keep XLA's own transpose rules
    return _conv_nhwc(lhs, rhs, pads, dilation, precision)
