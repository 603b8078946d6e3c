"""Seeded numpy generators of the inputs behind the PyTorch parity fixtures.

The fixture scripts in ``experiments/reference`` (which need torch) and the CI tests (which do not) draw
inputs and weights from the same functions here, so a fixture file stores only PyTorch's outputs and
gradients. Everything is plain numpy, float64, in the JAX layouts (NHWC activations, HWIO kernels); fixture
scripts transpose to PyTorch layouts themselves. Generators are keyed by a name and depend only on it, so
changing one case never changes another. Keep this a flat module of functions.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

__all__ = [
    "DEFORM_CONV_CASES",
    "DEFORM_CONV_SHAPE",
    "deform_conv_case",
    "case_rng",
]

# Small on purpose (the fixture must stay well under 300 KB); H != W so a row/column mix-up cannot pass.
DEFORM_CONV_SHAPE: dict[str, int] = {"batch": 2, "height": 5, "width": 6, "channels": 4, "features": 4}

_BASE = {
    "kernel_size": (3, 3),
    "stride": (1, 1),
    "padding": (1, 1),
    "dilation": (1, 1),
    "groups": 1,
    "offset_groups": 1,
}

# Offset kinds: "zero"; "integer" (integers in [-3, 3]: sample points land exactly on pixel centres, on -1,
# on H-1 and on H, where the one-sided gradient rules matter); "fractional" (uniform (-2, 2)); "negative"
# (uniform (-3, -0.05)); "out_of_image" (uniform (-10, 10)); "mixed" (half integers in [-3, 3], half uniform
# (-3, 3)).
DEFORM_CONV_CASES: dict[str, dict[str, Any]] = {
    "zero": {**_BASE, "offsets": "zero"},
    "integer": {**_BASE, "offsets": "integer"},
    "fractional": {**_BASE, "offsets": "fractional"},
    "negative": {**_BASE, "offsets": "negative"},
    "out_of_image": {**_BASE, "offsets": "out_of_image"},
    "groups2": {**_BASE, "groups": 2, "offsets": "mixed"},
    "offset_groups2": {**_BASE, "offset_groups": 2, "offsets": "mixed"},
    "stride2": {**_BASE, "stride": (2, 2), "offsets": "mixed"},
    "dilation2": {**_BASE, "dilation": (2, 2), "padding": (2, 2), "offsets": "mixed"},
    "padding0": {**_BASE, "padding": (0, 0), "offsets": "mixed"},
    "padding2": {**_BASE, "padding": (2, 2), "offsets": "mixed"},
    "kernel1x1": {**_BASE, "kernel_size": (1, 1), "padding": (0, 0), "offsets": "mixed"},
    "kernel5x3": {**_BASE, "kernel_size": (5, 3), "padding": (2, 1), "offsets": "mixed"},
    "asymmetric": {
        "kernel_size": (3, 2),
        "stride": (2, 1),
        "padding": (1, 0),
        "dilation": (1, 2),
        "groups": 2,
        "offset_groups": 2,
        "offsets": "mixed",
    },
}


def case_rng(name: str) -> np.random.Generator:
    """A generator seeded by a stable hash (CRC-32) of ``name``: independent of Python's hash seed."""
    return np.random.default_rng(zlib.crc32(name.encode("utf-8")))


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _offsets(rng: np.random.Generator, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "zero":
        return np.zeros(shape)
    if kind == "integer":
        return rng.integers(-3, 4, size=shape).astype(np.float64)
    if kind == "fractional":
        return rng.uniform(-2.0, 2.0, size=shape)
    if kind == "negative":
        return -rng.uniform(0.05, 3.0, size=shape)
    if kind == "out_of_image":
        return rng.uniform(-10.0, 10.0, size=shape)
    if kind == "mixed":
        whole = rng.integers(-3, 4, size=shape).astype(np.float64)
        frac = rng.uniform(-3.0, 3.0, size=shape)
        return np.where(rng.random(size=shape) < 0.5, whole, frac)
    raise ValueError(f"unknown offset kind {kind!r}")


def deform_conv_case(name: str) -> dict[str, Any]:
    """Inputs of one deformable-convolution parity case (see ``DEFORM_CONV_CASES``).

    Returns a dict with the case's settings (``kernel_size``, ``stride``, ``padding``, ``dilation`` as
    pairs; ``groups``, ``offset_groups``) and float64 arrays in JAX layout:
      ``x`` ``(N, H, W, C)``; ``offset`` ``(N, Ho, Wo, 2·G·kh·kw)`` in torchvision channel order;
      ``kernel`` ``(kh, kw, C/groups, O)`` (HWIO); ``cotangent`` ``(N, Ho, Wo, O)``, the upstream gradient
      used for the fixture's input/offset/kernel gradients.
    """
    if name not in DEFORM_CONV_CASES:
        raise ValueError(f"unknown deform-conv case {name!r}; known: {sorted(DEFORM_CONV_CASES)}")
    case = dict(DEFORM_CONV_CASES[name])
    s = DEFORM_CONV_SHAPE
    n, h, w, c, o = s["batch"], s["height"], s["width"], s["channels"], s["features"]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        case["kernel_size"],
        case["stride"],
        case["padding"],
        case["dilation"],
    )
    ho = _output_size(h, kh, sh, ph, dh)
    wo = _output_size(w, kw, sw, pw, dw)
    rng = case_rng(name)
    case["x"] = rng.normal(size=(n, h, w, c))
    case["kernel"] = 0.5 * rng.normal(size=(kh, kw, c // case["groups"], o))
    case["offset"] = _offsets(rng, case["offsets"], (n, ho, wo, 2 * case["offset_groups"] * kh * kw))
    case["cotangent"] = rng.normal(size=(n, ho, wo, o))
    return case
