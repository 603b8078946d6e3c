"""One ISTA-Net stage of DeRefNet's unfolding backbone (SPEC §5 step 2).

The stage is shared by all frames; it acts on a flat batch of ``N = B·T`` frames at once.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqcsist_jax.models.layers import conv2d, xavier_normal


class IstaStage(nn.Module):
    """``r = x - λ·xΦᵀΦ + λ·yΦ``, a learned soft-threshold in a 2-conv feature space, and its inverse.

    Params (names as the public ``BasicBlock``): ``lambda_step (1,)`` init 0.5, ``soft_thr (1,)`` init 0.01,
    ``conv1_forward (3,3,1,C)``, ``conv2_forward (3,3,C,C)``, ``conv1_backward (3,3,C,C)``,
    ``conv2_backward (3,3,C,1)``; all 3×3, no bias, Xavier-normal.

    ``xΦᵀΦ`` is evaluated as ``(xΦᵀ)Φ`` (two thin matmuls, 9× fewer FLOPs than forming ΦᵀΦ; the same value to
    float32 rounding). The symmetry branch reuses the backward convs on ``F``; it only feeds the loss, so
    inference programs that drop it skip 1/3 of the stage convolutions.
    """

    channels: int = 32
    compute_dtype: str = "float32"  # dtype of the four convolutions (mixed precision); r and outputs float32

    @nn.compact
    def __call__(
        self, x: jax.Array, y_phi: jax.Array, phi: jax.Array, side: int
    ) -> tuple[jax.Array, jax.Array]:
        """
        Args:
          x: ``(N, n)`` current estimate, ``n = side²`` (1089).
          y_phi: ``(N, n)`` ``yΦ`` (the public ``PhiTb``), with ``y (N, m)`` the raw frames.
          phi: ``(m, n)`` measurement matrix Φ.
          side: grid side (33).

        Returns:
          ``x_pred (N, n)`` and the symmetry residual ``(N, side, side)``.
        """
        c = self.channels
        lam = self.param("lambda_step", nn.initializers.constant(0.5), (1,), jnp.float32)
        thr = self.param("soft_thr", nn.initializers.constant(0.01), (1,), jnp.float32)
        k1f = self.param("conv1_forward", xavier_normal, (3, 3, 1, c), jnp.float32)
        k2f = self.param("conv2_forward", xavier_normal, (3, 3, c, c), jnp.float32)
        k1b = self.param("conv1_backward", xavier_normal, (3, 3, c, c), jnp.float32)
        k2b = self.param("conv2_backward", xavier_normal, (3, 3, c, 1), jnp.float32)

        n_frames = x.shape[0]
        r = x + lam * (y_phi - (x @ phi.T) @ phi)
        r_img = r.reshape(n_frames, side, side, 1)
        cd = jnp.dtype(self.compute_dtype)
        k1f, k2f, k1b, k2b = (k.astype(cd) for k in (k1f, k2f, k1b, k2b))
        f = conv2d(jax.nn.relu(conv2d(r_img.astype(cd), k1f)), k2f)
        s = jnp.sign(f) * jax.nn.relu(jnp.abs(f) - thr.astype(cd))
        x_pred = conv2d(jax.nn.relu(conv2d(s, k1b)), k2b).reshape(n_frames, side * side).astype(jnp.float32)
        # Separate calls (not one batched call on [S; F]) so XLA drops this branch when only outputs are used.
        sym = conv2d(jax.nn.relu(conv2d(f, k1b)), k2b)[..., 0].astype(jnp.float32) - r_img[..., 0]
        return x_pred, sym
