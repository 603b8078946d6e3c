"""Unfolded sparse coding as the public SeqCSIST toolkit builds it: LIHT, LAMP and TiLISTA (16 layers each).

Per frame ``y`` (121 raw grey values; row vectors here, ``x (N, 1089)``, so the public ``W x`` is ``x Wᵀ``),
all three start from ``x⁰ = Q y`` (Q: the least-squares init matrix, the public ``Qinit``) and return the last
layer's estimate for every frame. The stored arrays keep the public names and shapes.

* **LIHT** (learned iterative hard thresholding, public ``LIHT_det.py``):
  ``x ← hard(W x + B y, θ)`` with ``hard(r, θ) = relu(sign(|r| - θ))·r``. Per layer ``B (1089, 121)`` init Q,
  ``W (1089, 1089)`` init the identity, ``theta (1089, 1)`` init √0.4. ``sign`` has zero derivative, so θ
  receives no gradient (only the L2 term moves it), as in the public code.
  Parameters: 16 × (1089·121 + 1089² + 1089) = 21,100,464 (paper: 21.1 M).
* **LAMP** (learned AMP, public ``LAMP_det.py``): with ``v⁰ = 0``,
  ``b = (n/m)·mean(|x| > 0)``, ``v ← y - Φx + b·v``, ``σ² = ‖v‖²/m``, ``x ← soft(x + B v, max(λ·σ, 0))``
  (b and σ per frame). Per layer ``B (1089, 121)`` init ``Φᵀ/‖Φ‖₂²`` and ``lam (1089, 1)`` init 0.4.
  Parameters: 16 × (1089·121 + 1089) = 2,125,728 (paper: 2.13 M).
* **TiLISTA** (tied LISTA with support selection, public ``TiLISTA_det.py``):
  ``z = x + αₖ·W (y - Φx)``, ``x ← ss(z, θ, pₖ)``: the entries above both θ and the ``(100 - pₖ)``-th percentile
  of ``|z|`` (per frame, linear interpolation like ``torch.quantile``) pass unshrunk, the rest are
  soft-thresholded by θ (the selection mask carries no gradient); ``pₖ = min(1.2·(k+1), 13)`` percent.
  Per layer ``W (1089, 121)`` init Q, ``theta (1089, 1)`` init ``0.4/(1.001·‖Φ‖₂²)``, ``alpha (1,)`` init 1.
  Parameters: 16 × (1089·121 + 1089 + 1) = 2,125,744 (the public model's count; the paper prints 2.22 M).

Shared storage (``shared_storage``, LIHT and TiLISTA). The public constructors wrap *the same tensor* in each
layer's ``nn.Parameter`` (LIHT: ``B``, ``W``, ``theta``; TiLISTA: ``W``, ``theta``; and on CPU the ``Qinit`` that
makes ``x⁰`` is that same memory too). PyTorch still sees 16 parameters with 16 gradients and 16 Adam states,
but every optimiser step writes all 16 updates into one storage. ``shared_storage=True`` reproduces that
exactly in a pure step: layer k holds its own copy ``cₖ`` (so Adam keeps 16 states), the shared value is
``s = Σₖ cₖ - 15·s⁰`` (s⁰ the initial value, recomputed from Φ and Q), layer k uses
``stop_gradient(s - cₖ) + cₖ`` (value s, gradient only from layer k), and ``x⁰`` uses ``stop_gradient(s)``.
After one Adam step ``s`` has moved by the sum of the 16 per-layer updates, as in the public code. (One
approximation: the L2 term is ``wd·cₖ`` here but ``wd·s`` there; the two differ by ``1e-5·(s - cₖ)``.)
Because ``x⁰`` follows the shared value without a gradient, TiLISTA's loss *rises* under this option on
``:smoke`` data (measured at lr 1e-3 and 1e-4; with a fixed ``x⁰ = Q y`` it falls like the default model).

The default is ``shared_storage=False`` (16 independent layers): the paper's models were trained on GPUs, and
moving a model to the GPU (``model.to(device)``, which mmengine does before building the optimiser) gives
every ``nn.Parameter`` its own copy of the data, so the sharing exists only in CPU runs of the public code;
the paper's parameter counts (16 copies) match independent layers too.

Loss (all three): MSE of the final estimate over all frames (not only ``[2:T-2]``), as the public detectors;
``loss.public_broadcast`` selects the public broadcast form (see :mod:`.lista`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import check_inputs, frame_vectors, soft_threshold
from seqcsist_jax.baselines.lista import loss_from_config


def hard_threshold(r: jax.Array, theta: jax.Array) -> jax.Array:
    """The public ``hard_shrink``: ``relu(sign(|r| - θ))·r`` (keeps entries with ``|r| > θ``; no gradient to θ)."""
    return jax.nn.relu(jnp.sign(jnp.abs(r) - theta)) * r


def support_selection_shrink(z: jax.Array, theta: jax.Array, percent: float) -> jax.Array:
    """TiLISTA's ``shrink_ss``: ``z (N, n)``, ``theta (n,)``, ``percent`` in [0, 100].

    Entries whose magnitude exceeds both θ and the ``(1 - percent/100)`` quantile of ``|z|`` of their row pass
    unchanged; the others are soft-thresholded by θ. The selection mask is a constant for the gradient.
    """
    magnitude = jnp.abs(z)
    cut = jnp.quantile(magnitude, 1.0 - percent / 100.0, axis=-1, keepdims=True)  # linear, like torch.quantile
    keep = jax.lax.stop_gradient(((magnitude > theta) & (magnitude > cut)).astype(z.dtype))
    return keep * z + soft_threshold((1.0 - keep) * z, theta)


def support_percentages(num_layers: int, step: float = 1.2, cap: float = 13.0) -> np.ndarray:
    """TiLISTA's per-layer support percentages ``min(step·(k+1), cap)``, k = 0 … num_layers-1."""
    return np.clip(step * (np.arange(num_layers) + 1.0), 0.0, cap)


class _LayerParams(nn.Module):
    """Holds one layer's parameters, created from the given initial values (public names and shapes)."""

    @nn.compact
    def __call__(self, initial: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return {name: self.param(name, lambda _, v=value: v) for name, value in initial.items()}


def _layer_params(
    initial: dict[str, jax.Array], num_layers: int, shared: tuple[str, ...]
) -> tuple[list[dict[str, jax.Array]], dict[str, jax.Array]]:
    """Creates ``layer_0 … layer_{L-1}`` (must be called inside a compact module) and returns each layer's
    effective arrays plus the shared storage values ``s`` of the names in ``shared`` (see module docstring)."""
    copies = [_LayerParams(name=f"layer_{k}")(initial) for k in range(num_layers)]
    storage = {
        name: sum(c[name] for c in copies) - (num_layers - 1) * initial[name] for name in shared
    }
    layers = [
        {
            name: (jax.lax.stop_gradient(storage[name] - value) + value) if name in storage else value
            for name, value in c.items()
        }
        for c in copies
    ]
    return layers, storage


def _prepare(frames, phi, q):
    b, t, _, side = check_inputs(frames, phi, q)
    return b, t, side, jnp.asarray(phi, jnp.float32), jnp.asarray(q, jnp.float32), frame_vectors(frames)


def _result(x: jax.Array, b: int, t: int, side: int) -> dict:
    return {"output": x.reshape(b, t, side, side), "frame_index": np.arange(t)}


class LIHT(nn.Module):
    """LIHT. Attributes: ``num_layers`` (16), ``lam`` (0.4: θ starts at √lam), ``shared_storage`` (False)."""

    num_layers: int = 16
    lam: float = 0.4
    shared_storage: bool = False

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``."""
        b, t, side, phi, q, y = _prepare(frames, phi, q)
        n = q.shape[0]
        initial = {
            "B": q,
            "W": jnp.eye(n, dtype=jnp.float32),
            "theta": jnp.full((n, 1), np.sqrt(self.lam), jnp.float32),
        }
        layers, storage = _layer_params(initial, self.num_layers, ("B", "W", "theta") if self.shared_storage else ())
        q_init = jax.lax.stop_gradient(storage["B"]) if self.shared_storage else q
        x = y @ q_init.T
        for p in layers:
            x = hard_threshold(x @ p["W"].T + y @ p["B"].T, p["theta"][:, 0])
        return _result(x, b, t, side)


class LAMP(nn.Module):
    """LAMP. Attributes: ``num_layers`` (16), ``lam`` (0.4, the initial per-coefficient threshold scale)."""

    num_layers: int = 16
    lam: float = 0.4

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``."""
        b, t, side, phi, q, y = _prepare(frames, phi, q)
        m, n = phi.shape
        initial = {
            "B": phi.T / jnp.linalg.norm(phi, ord=2) ** 2,
            "lam": jnp.full((n, 1), self.lam, jnp.float32),
        }
        layers, _ = _layer_params(initial, self.num_layers, ())
        x = y @ q.T
        v = jnp.zeros_like(y)
        for p in layers:
            onsager = (n / m) * jnp.mean((jnp.abs(x) > 0).astype(x.dtype), axis=-1, keepdims=True)  # (N, 1)
            v = y - x @ phi.T + onsager * v
            sigma = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) / m)  # (N, 1)
            x = soft_threshold(x + v @ p["B"].T, jax.nn.relu(sigma * p["lam"][:, 0]))
        return _result(x, b, t, side)


class TiLISTA(nn.Module):
    """TiLISTA. Attributes: ``num_layers`` (16), ``lam`` (0.4: θ starts at ``lam/(1.001‖Φ‖₂²)``),
    ``shared_storage`` (False)."""

    num_layers: int = 16
    lam: float = 0.4
    shared_storage: bool = False

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``."""
        b, t, side, phi, q, y = _prepare(frames, phi, q)
        n = q.shape[0]
        initial = {
            "W": q,
            "theta": jnp.full((n, 1), self.lam / (1.001 * jnp.linalg.norm(phi, ord=2) ** 2), jnp.float32),
            "alpha": jnp.ones((1,), jnp.float32),
        }
        layers, storage = _layer_params(initial, self.num_layers, ("W", "theta") if self.shared_storage else ())
        q_init = jax.lax.stop_gradient(storage["W"]) if self.shared_storage else q
        x = y @ q_init.T
        for p, percent in zip(layers, support_percentages(self.num_layers)):
            z = x + p["alpha"] * ((y - x @ phi.T) @ p["W"].T)
            x = support_selection_shrink(z, p["theta"][:, 0], float(percent))
        return _result(x, b, t, side)


def build_liht(model_config, loss_config) -> methods.Method:
    model = LIHT(
        num_layers=int(model_config.get("num_layers", 16)),
        lam=float(model_config.get("lam", 0.4)),
        shared_storage=bool(model_config.get("shared_storage", False)),
    )
    return methods.Method("liht", model, loss_from_config(loss_config))


def build_lamp(model_config, loss_config) -> methods.Method:
    model = LAMP(num_layers=int(model_config.get("num_layers", 16)), lam=float(model_config.get("lam", 0.4)))
    return methods.Method("lamp", model, loss_from_config(loss_config))


def build_tilista(model_config, loss_config) -> methods.Method:
    model = TiLISTA(
        num_layers=int(model_config.get("num_layers", 16)),
        lam=float(model_config.get("lam", 0.4)),
        shared_storage=bool(model_config.get("shared_storage", False)),
    )
    return methods.Method("tilista", model, loss_from_config(loss_config))
