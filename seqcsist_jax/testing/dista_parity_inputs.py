"""Seeded numpy generators behind the DISTA-Net PyTorch parity fixture (``tests/fixtures/dista_parity.npz``).

``experiments/reference/make_dista_fixtures.py`` (needs torch) and ``tests/test_dista.py`` (does not) draw the
weights and inputs from these functions, so the fixture stores only PyTorch's results. Weights are in the public
``state_dict`` (PyTorch) layout: the state-dict converter is part of what the parity test checks.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["DISTA_PARITY_CASES", "dista_parity_state_dict", "dista_parity_inputs", "dista_grad_probes"]

#: name → DISTANet options, batch B and images per example T (B·T images in all).
DISTA_PARITY_CASES: dict[str, dict] = {
    # the public c = 3 model at full size (6 stages, 64 channels), two single-image examples
    "default": {"options": {}, "batch": 2, "frames": 1},
    # the public block's batch mixing: B·T = channels images, channel j uses image j's kernel
    "batch_mixing": {
        "options": {"num_stages": 2, "channels": 8, "dynamic_mixing": "batch"},
        "batch": 4,
        "frames": 2,
    },
    # c = 5, a different branch weight, and gradients into the kernel predictor
    "c5_trainable_kernels": {
        "options": {"num_stages": 2, "channels": 8, "c": 5, "lambda_weight": 0.5, "detach_dynamic_kernels": False},
        "batch": 3,
        "frames": 1,
    },
}

# The kernel predictor's output layer is drawn with this extra factor so that r ⋆ K is O(1) before the
# sigmoid on grey-value inputs (the fixture script prints the spread); unscaled it saturates everywhere.
_KERNEL_SCALE = 1e-3
# Likewise the LSK attention's output conv: the threshold is F ⊙ attn, quadratic in F's scale, so an attention
# of O(F) makes the stages blow up; scaled, attn ≈ its bias ± a fraction, N(0.9, 0.3²).
_ATTENTION_SCALE = 2e-3
# Step sizes below 2/‖Φ‖₂² (‖Φ‖₂² ≈ 8.6 for c = 3, 23.8 for c = 5) so six stages of random weights stay bounded;
# the public init 0.5 is only stable once the stages have learnt to damp the gradient step.
_LAMBDA_RANGE = (0.02, 0.08)


def _fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def dista_parity_state_dict(seed: int, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Random DISTA-Net weights in the public layout.

    Args:
      seed: generator seed.
      shapes: key → PyTorch shape (``seqcsist_jax.models.dista_net.state_dict_shapes(...)``).

    Returns:
      key → float32. Weights N(0, 1/fan_in) (``w2`` × ``_KERNEL_SCALE``, ``att.conv_m`` × ``_ATTENTION_SCALE``),
      biases N(0, 0.1²) (``w2``'s × 0.01), ``att.conv_m``'s bias
      N(0.9, 0.3²) (so the LSK threshold zeroes some features and keeps others), λ ~ U(0.02, 0.08).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("lambda_step"):
            value = rng.uniform(*_LAMBDA_RANGE, shape)
        elif key.endswith("att.conv_m.bias"):
            value = rng.normal(0.9, 0.3, shape)
        elif key.endswith("bias"):
            value = rng.normal(0.0, 0.1, shape)
            if ".w2." in key:
                value = value * 1e-2
        else:
            value = rng.normal(0.0, 1.0 / np.sqrt(_fan_in(shape)), shape)
            if ".w2." in key:
                value = value * _KERNEL_SCALE
            if ".att.conv_m." in key:
                value = value * _ATTENTION_SCALE
        out[key] = value.astype(np.float32)
    return out


def dista_parity_inputs(seed: int, batch: int, frames: int, c: int = 3) -> dict[str, np.ndarray]:
    """CSIST-100K-like inputs: 1–5 targets inside one pixel, brightness 220–250, their label maps, Φ and Q.

    Returns:
      ``frames (B, T, 11, 11)`` float32 grey values (unquantised); ``labels (B, T, 11c, 11c)``;
      ``phi (121, (11c)²)``; ``q ((11c)², 121)`` least squares over 512 random label maps.
    """
    from seqcsist_jax import imaging

    rng = np.random.default_rng(seed)

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        k = 5
        pixel = rng.integers(1, 10, shape + (1, 2)).astype(np.float64)
        xy = pixel + rng.uniform(-0.45, 0.45, shape + (k, 2))
        count = rng.integers(1, k + 1, shape + (1,))
        bright = rng.uniform(220.0, 250.0, shape + (k,)) * (np.arange(k) < count)
        return np.concatenate([xy, bright[..., None]], axis=-1)

    targets = draw((batch, frames))
    phi = imaging.measurement_matrix(c=c)
    train = imaging.targets_to_grid(draw((512,)), c=c).reshape(512, -1)
    y = train @ phi.T  # (N, 121)
    q = np.linalg.solve(y.T @ y, y.T @ train).T  # X Yᵀ (Y Yᵀ)⁻¹ without forming the n×n Gram matrix
    return {
        "frames": imaging.render(targets).astype(np.float32),
        "labels": imaging.targets_to_grid(targets, c=c).astype(np.float32),
        "phi": phi.astype(np.float32),
        "q": q.astype(np.float32),
    }


def dista_grad_probes(seed: int, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """One unit-norm random direction per parameter (PyTorch layout); gradients are compared through their
    norms and projections on these, so the fixture need not store every gradient value."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        v = rng.normal(size=shape)
        out[key] = (v / np.linalg.norm(v)).astype(np.float32)
    return out
