"""Seeded numpy generators of the inputs behind the PyTorch parity fixtures.

The fixture scripts in ``experiments/reference`` (which need torch) and the CI tests (which do not) draw
inputs and weights from the same functions here, so a fixture file stores only PyTorch's outputs and
gradients. Everything is plain numpy, float64, in the JAX layouts (NHWC activations, HWIO kernels); fixture
scripts transpose to PyTorch layouts themselves. Generators are keyed by a name and depend only on it, so
changing one case never changes another. Keep this a flat module of functions.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping

import numpy as np

__all__ = [
    "DEREFNET_PARITY_CASES",
    "derefnet_parity_state_dict",
    "derefnet_parity_inputs",
    "derefnet_grad_probes",
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


# --------------------------------------------------------------------------------------------------------
# DeRefNet parity: weights in the public state-dict (PyTorch) layout — the checkpoint importer is part of
# what the parity tests check, so these are the one exception to the JAX-layout rule above — and realistic
# trajectories, float32.

#: Model options and sizes of the DeRefNet parity cases (name → DeRefNet options, batch, frames).
DEREFNET_PARITY_CASES: dict[str, dict] = {
    # the full architecture on a short trajectory (3 centre frames), three stages to keep CI fast
    "full": {"options": {"num_stages": 3}, "batch": 2, "frames": 7},
    # every ablation switch flipped, small widths
    "ablation": {
        "options": {
            "num_stages": 2,
            "channels": 8,
            "time_encoding": False,
            "selective_attention": False,
            "window": 3,
            "predict_edges": True,
            "num_res_blocks": 2,
        },
        "batch": 1,
        "frames": 5,
    },
}

# Offset-conv weights are drawn with this std (times 1/√fan_in) so the learned offsets are O(1) pixels on the
# parity inputs (the fixture script prints their spread): fractional, negative, some outside the image.
_OFFSET_WEIGHT_SCALE = 0.02


def _fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def derefnet_parity_state_dict(
    seed: int, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """Random DeRefNet weights in the public (PyTorch) layout, for parity tests.

    Args:
      seed: generator seed.
      shapes: key → PyTorch shape in state-dict order (``seqcsist_jax.interop.state_dict_shapes(**options)``).

    Returns:
      key → float32 array. Convs and Linear N(0, 1/fan_in); biases N(0, 0.1²); λ ~ U(0.3, 0.7);
      θ ~ U(0.5, 3) (so the soft threshold zeroes a fair share of features); offset convs scaled so the
      offsets are a few pixels.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "lambda_step":
            value = rng.uniform(0.3, 0.7, shape)
        elif leaf == "soft_thr":
            value = rng.uniform(0.5, 3.0, shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.1, shape)
            if ".conv_offset." in key:
                value = rng.normal(0.0, 1.0, shape)  # fractional, signed base offsets
        else:
            std = 1.0 / np.sqrt(_fan_in(shape))
            if ".conv_offset." in key:
                std *= _OFFSET_WEIGHT_SCALE
            value = rng.normal(0.0, std, shape)
        out[key] = value.astype(np.float32)
    return out


def derefnet_parity_inputs(seed: int, batch: int, frames: int) -> dict[str, np.ndarray]:
    """Realistic DeRefNet inputs: rendered trajectories, their label maps, Φ and a least-squares Q.

    Returns:
      ``frames (B, T, 11, 11)`` float32 grey values of 2–4 targets (brightness 220–250) drifting by up to
      0.1 px per frame; ``labels (B, T, 33, 33)``; ``phi (121, 1089)``; ``q (1089, 121)`` (from 256 random
      training label maps).
    """
    from seqcsist_jax import imaging

    rng = np.random.default_rng(seed)
    k = 4
    start = rng.uniform(2.0, 8.0, (batch, 1, k, 2))
    drift = rng.uniform(-0.1, 0.1, (batch, 1, k, 2)) * np.arange(frames)[None, :, None, None]
    count = rng.integers(2, k + 1, (batch, 1, 1, 1))  # 2–4 targets, the rest are padding rows
    bright = rng.uniform(220.0, 250.0, (batch, 1, k, 1)) * (np.arange(k)[None, None, :, None] < count)
    targets = np.concatenate([start + drift, np.broadcast_to(bright, (batch, frames, k, 1))], axis=-1)
    train = np.concatenate(
        [rng.uniform(0.0, 10.0, (256, 3, 2)), rng.uniform(220.0, 250.0, (256, 3, 1))], axis=-1
    )
    phi = imaging.measurement_matrix()
    q = imaging.least_squares_init(phi, imaging.targets_to_grid(train))
    return {
        "frames": imaging.render(targets).astype(np.float32),
        "labels": imaging.targets_to_grid(targets).astype(np.float32),
        "phi": phi.astype(np.float32),
        "q": q.astype(np.float32),
    }


def derefnet_grad_probes(seed: int, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """One unit-norm random direction per parameter (PyTorch layout): gradients are compared through their
    projections on these, so fixtures need not store 1.2 M gradient values."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        v = rng.normal(size=shape)
        out[key] = (v / np.linalg.norm(v)).astype(np.float32)
    return out
