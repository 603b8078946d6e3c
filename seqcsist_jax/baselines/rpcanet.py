"""RPCANet (deep-unfolded robust PCA, Wu et al., WACV 2024) as the public SeqCSIST toolkit runs it
(``RPCANet_det.py``, config ``RPCANet.py``: 6 stages, 32 channels, 6 sparse / 3 low-rank / 3 merge layers).

Per frame, ``D = (Q y)`` as a 33×33 image and ``T⁰ = 0``; every stage k splits D into a low-rank background B and
a sparse target image T::

    B  = (D - T) + L_k(D - T)              L: conv 1→32, BN, ReLU, 3 × (conv 32→32, BN, ReLU), conv 32→1
    T  = X - ε_k·S_k(X),  X = T + D - B     S: conv 1→32, ReLU, 6 × (conv 32→32, ReLU), conv 32→1; ε init 0.01
    D̂ = M_k(B + T)                         M: like L

As in the public code every stage receives the *initial* D (D is not replaced by D̂), so only the last stage's
merge output D̂ is used (the other stages' merge modules get no gradient but are counted). The output map is
the last T. Convs 3×3 with bias, weights Xavier-normal, biases PyTorch's default; BN scale 1, bias 0.

Loss (per trajectory, frames ``[2:T-2]``): ``0.9·MSE(T, label) + 0.1·0.9·MSE(D̂, D)`` (the public ``MSEloss``
has a 0.9 factor, and the reconstruction term a further γ = 0.1).

Parameters: 6 × (2 × 28,609 [L, M: 5 convs + 4 BN] + 56,098 [S: 8 convs + ε]) = 679,896 (paper: 0.68 M).

Deliberate deviation: batch normalisation always uses the statistics of the frames in the current call (the
training-mode behaviour; in training that is the public batch, one 20-frame trajectory per GPU). The pipeline
carries parameters only, so there are no running averages for evaluation; at evaluation the statistics come
from the evaluated trajectories' frames instead of the public model's running means.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import check_inputs, frame_vectors, per_trajectory_mse, reduce_terms, scored_slice
from seqcsist_jax.models.layers import Conv, xavier_normal

BN_EPS = 1e-5  # nn.BatchNorm2d's default


class BatchNorm(nn.Module):
    """Batch normalisation with the current batch's statistics over (N, H, W); params ``scale``, ``bias`` (C,)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.var(x, axis=(0, 1, 2))  # biased, as PyTorch normalises with
        return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * scale + bias


class ConvStack(nn.Module):
    """conv 1→C, [BN], ReLU, ``layers`` × (conv C→C, [BN], ReLU), conv C→1; input and output ``(N, H, W, 1)``."""

    channels: int = 32
    layers: int = 3
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.layers + 1):
            x = Conv(self.channels, 3, kernel_init=xavier_normal, name=f"conv_{i}")(x)
            if self.batch_norm:
                x = BatchNorm(name=f"bn_{i}")(x)
            x = jax.nn.relu(x)
        return Conv(1, 3, kernel_init=xavier_normal, name=f"conv_{self.layers + 1}")(x)


class DecompositionStage(nn.Module):
    """One stage: ``(D, T) → (D̂, T)``, all ``(N, 33, 33, 1)``."""

    channels: int = 32
    sparse_layers: int = 6
    lowrank_layers: int = 3
    merge_layers: int = 3

    @nn.compact
    def __call__(self, d: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = d - t
        background = x + ConvStack(self.channels, self.lowrank_layers, True, name="lowrank")(x)
        x = t + d - background
        epsilon = self.param("epsilon", nn.initializers.constant(0.01), (1,), jnp.float32)
        t = x - epsilon * ConvStack(self.channels, self.sparse_layers, False, name="sparse")(x)
        d_hat = ConvStack(self.channels, self.merge_layers, True, name="merge")(background + t)
        return d_hat, t


class RPCANet(nn.Module):
    """Attributes: ``num_stages`` (6), ``channels`` (32), ``sparse_layers`` (6), ``lowrank_layers`` (3),
    ``merge_layers`` (3) — the public ``stage_num, channel, slayers, llayers, mlayers``."""

    num_stages: int = 6
    channels: int = 32
    sparse_layers: int = 6
    lowrank_layers: int = 3
    merge_layers: int = 3

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` (the sparse part T), ``frame_index (T,)``,
        ``initial (B, T, 33, 33)`` (D = Q y) and ``merged (B, T, 33, 33)`` (the last stage's D̂)."""
        b, t, _, side = check_inputs(frames, phi, q)
        y = frame_vectors(frames)
        d = (y @ jnp.asarray(q, jnp.float32).T).reshape(-1, side, side, 1)
        sparse = jnp.zeros_like(d)
        d_hat = d
        for k in range(self.num_stages):
            stage = DecompositionStage(
                self.channels, self.sparse_layers, self.lowrank_layers, self.merge_layers, name=f"stage_{k}"
            )
            d_hat, sparse = stage(d, sparse)  # every stage sees the initial D, as in the public code
        shape = (b, t, side, side)
        return {
            "output": sparse.reshape(shape),
            "frame_index": np.arange(t),
            "initial": d.reshape(shape),
            "merged": d_hat.reshape(shape),
        }


def rpcanet_loss(
    outputs: dict, labels: jax.Array, alpha: float = 0.9, gamma: float = 0.1
) -> tuple[jax.Array, dict]:
    """``alpha·MSE(T, label) + gamma·alpha·MSE(D̂, D)`` on frames ``[2:T-2]``, per trajectory, batch mean."""
    scored = scored_slice(outputs["output"].shape[1])
    terms = {
        "sparse": alpha * per_trajectory_mse(outputs["output"][:, scored], labels[:, scored]),
        "reconstruction": alpha * per_trajectory_mse(outputs["merged"][:, scored], outputs["initial"][:, scored]),
    }
    return reduce_terms(terms, {"reconstruction": gamma})


def build_rpcanet(model_config, loss_config) -> methods.Method:
    model = RPCANet(
        num_stages=int(model_config.get("num_stages", 6)),
        channels=int(model_config.get("channels", 32)),
        sparse_layers=int(model_config.get("sparse_layers", 6)),
        lowrank_layers=int(model_config.get("lowrank_layers", 3)),
        merge_layers=int(model_config.get("merge_layers", 3)),
    )
    alpha = float(loss_config.get("alpha", 0.9))
    gamma = float(loss_config.get("gamma", 0.1))
    return methods.Method("rpcanet", model, lambda out, labels: rpcanet_loss(out, labels, alpha, gamma))
