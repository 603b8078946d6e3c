"""ISTA-Net and ISTA-Net⁺ (Zhang & Ghanem, CVPR 2018) as the public SeqCSIST toolkit runs them.

Both start from ``x⁰ = y Qᵀ`` per frame and unfold ISTA; each stage takes the gradient step
``r = x - λ·xΦᵀΦ + λ·yΦ`` (λ learned, init 0.5) and replaces the proximal step by a learned transform with a
soft threshold (θ learned, init 0.01). All convs 3×3, padding 1, no bias, Xavier-normal, 32 channels.

* **ISTA-Net** (``istanet``, 8 stages, public config ``ISTANet.py``): ``F = conv(relu(conv 1→32 (r)))``,
  ``x = conv 32→1 (relu(conv(soft(F, θ))))``; symmetry residual ``conv 32→1(relu(conv(F))) - r``. This is the
  same stage as DeRefNet's backbone, so :class:`seqcsist_jax.models.ista_stage.IstaStage` is reused. The public
  backbone file ``istanet_bb.py`` is missing from the released snapshot; the stage is taken from the ISTA-Net
  paper/code, which DeRefNet's ``BasicBlock`` reproduces verbatim.
  Parameters: 8 × (2 + 9·32 + 2·9·32² + 9·32) = 152,080. The paper's table lists 0.17 M, which is what 9
  stages give (171,090); the public config uses 8.
* **ISTA-Net⁺** (``istanet_plus``, 9 stages, ``istanet_plus.py``): ``x_D = conv_D 1→32 (r)``,
  ``F = conv(relu(conv(x_D)))``, ``x = r + conv_G 32→1 (conv(relu(conv(soft(F, θ)))))`` (residual),
  symmetry residual ``conv(relu(conv(F))) - x_D`` (32 channels).
  Parameters: 9 × (2 + 2·9·32 + 4·9·32²) = 336,978 (the paper's table: 0.38 M).

Step-size initialisation of ISTA-Net⁺ (``lambda_init``, ``lambda_init_relative``). The public stage starts from
λ = 0.5, the ISTA-Net paper's value for a Φ with orthonormal rows (‖Φ‖₂² = 1). SeqCSIST's Φ has ‖Φ‖₂² = 8.59, so
the gradient step ``x - λΦᵀ(Φx - y)`` multiplies the error along Φ's top singular vector by
``|1 - 0.5·8.59| = 3.29`` per stage. ISTA-Net⁺ adds its conv branch to ``r`` (a residual), so that component
passes all 9 stages: 3.29⁹ ≈ 4.5·10⁴ times the ~5 % initial residual ``Φx⁰ - y``. Measured on ``:smoke`` frames
at the public init: outputs up to 3·10⁴ for labels ≤ 246, loss 6.5·10⁷, and Adam steps at 1e-4 or 1e-3 make
the loss jump by 10× between steps — the "diverges in its first steps" seen at lr 1e-3 (ISTA-Net re-maps ``r``
through its conv block without a skip, so it does not amplify). The public code has the same init and Φ; it
recovers over its 100 epochs, our CPU budgets do not. Fix (default in the ``istanet_plus`` config):
``lambda_init_relative=True`` starts at λ = 0.5/‖Φ‖₂² = 0.058, the paper's value relative to Φ's scale, which
makes every step a contraction; outputs then start at ~10³ and the loss falls smoothly at 1e-4 and 1e-3.
``lambda_init_relative=False`` (with ``lambda_init=0.5``) is the public init. ISTA-Net (plain) keeps λ = 0.5.

Loss (both, per trajectory): ``MSE(x[2:T-2], label[2:T-2]) + 0.01·Σ_stages mean(sym²)``, the symmetry term
over all frames — the public detectors' ``loss_discrepancy + γ·loss_constraint`` with γ = 0.01.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import (
    SCORED_MARGIN,
    check_inputs,
    frame_vectors,
    loss_margin,
    per_trajectory_mean,
    per_trajectory_mse,
    reduce_terms,
    scored_slice,
    soft_threshold,
)
from seqcsist_jax.models.ista_stage import IstaStage
from seqcsist_jax.models.layers import conv2d, xavier_normal


class IstaNetPlusStage(nn.Module):
    """One ISTA-Net⁺ stage. Params (public names): ``lambda_step``, ``soft_thr``, ``conv_D (3,3,1,C)``,
    ``conv1_forward``, ``conv2_forward``, ``conv1_backward``, ``conv2_backward`` ``(3,3,C,C)``,
    ``conv_G (3,3,C,1)``."""

    channels: int = 32
    lambda_init: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, y_phi: jax.Array, phi: jax.Array, side: int) -> tuple[jax.Array, jax.Array]:
        """``x, y_phi (N, n)`` → ``x_pred (N, n)`` and the symmetry residual ``(N, side, side, C)``."""
        c = self.channels
        lam = self.param("lambda_step", nn.initializers.constant(self.lambda_init), (1,), jnp.float32)
        thr = self.param("soft_thr", nn.initializers.constant(0.01), (1,), jnp.float32)
        k_d = self.param("conv_D", xavier_normal, (3, 3, 1, c), jnp.float32)
        k1f = self.param("conv1_forward", xavier_normal, (3, 3, c, c), jnp.float32)
        k2f = self.param("conv2_forward", xavier_normal, (3, 3, c, c), jnp.float32)
        k1b = self.param("conv1_backward", xavier_normal, (3, 3, c, c), jnp.float32)
        k2b = self.param("conv2_backward", xavier_normal, (3, 3, c, c), jnp.float32)
        k_g = self.param("conv_G", xavier_normal, (3, 3, c, 1), jnp.float32)

        n = x.shape[0]
        r = x + lam * (y_phi - (x @ phi.T) @ phi)
        r_img = r.reshape(n, side, side, 1)
        x_d = conv2d(r_img, k_d)
        f = conv2d(jax.nn.relu(conv2d(x_d, k1f)), k2f)
        s = soft_threshold(f, thr)
        # S and F share the backward convs: one batched call
        both = conv2d(jax.nn.relu(conv2d(jnp.concatenate([s, f], axis=0), k1b)), k2b)
        x_pred = r_img + conv2d(both[:n], k_g)
        return x_pred.reshape(n, side * side), both[n:] - x_d


class ISTANet(nn.Module):
    """ISTA-Net (``plus=False``) or ISTA-Net⁺ (``plus=True``) with ``num_stages`` stages of ``channels``."""

    num_stages: int = 8
    channels: int = 32
    plus: bool = False
    lambda_init: float = 0.5
    lambda_init_relative: bool = False

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)``, ``frame_index (T,)`` and
        ``sym (num_stages, B, T, 33, 33[, C])`` symmetry residuals."""
        b, t, _, side = check_inputs(frames, phi, q)
        phi = jnp.asarray(phi, jnp.float32)
        y = frame_vectors(frames)
        x = y @ jnp.asarray(q, jnp.float32).T
        y_phi = y @ phi
        syms = []
        # λ⁰ (ISTA-Net⁺ only): lambda_init, or lambda_init/‖Φ‖₂² with lambda_init_relative (see module docstring)
        lam0 = self.lambda_init / lipschitz(phi) if self.lambda_init_relative else self.lambda_init
        for i in range(self.num_stages):
            stage = IstaNetPlusStage(self.channels, lam0, name=f"stage_{i}") if self.plus else IstaStage(
                self.channels, name=f"stage_{i}"
            )
            x, sym = stage(x, y_phi, phi, side)
            syms.append(sym.reshape((b, t) + sym.shape[1:]))
        return {"output": x.reshape(b, t, side, side), "frame_index": np.arange(t), "sym": jnp.stack(syms)}


def lipschitz(phi: jax.Array) -> float | jax.Array:
    """``‖Φ‖₂²`` (8.587 for SeqCSIST's Φ); a Python float when Φ is concrete (the usual case at init)."""
    try:
        return float(np.linalg.norm(np.asarray(phi, np.float64), ord=2) ** 2)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return jnp.linalg.norm(phi, ord=2) ** 2


def istanet_loss(
    outputs: dict, labels: jax.Array, gamma: float = 0.01, margin: int = SCORED_MARGIN
) -> tuple[jax.Array, dict]:
    """``MSE`` on frames ``[margin:T-margin]`` (``[2:T-2]``) + ``gamma``·Σ_stages ``mean(sym²)``, per trajectory,
    mean over the batch."""
    out = outputs["output"]
    scored = scored_slice(out.shape[1], margin)
    constraint = jnp.sum(jax.vmap(per_trajectory_mean)(outputs["sym"]), axis=0)  # (B,)
    terms = {"discrepancy": per_trajectory_mse(out[:, scored], labels[:, scored]), "constraint": constraint}
    return reduce_terms(terms, {"constraint": gamma})


def _builder(name: str, plus: bool, default_stages: int):
    def build(model_config, loss_config) -> methods.Method:
        model = ISTANet(
            num_stages=int(model_config.get("num_stages", default_stages)),
            channels=int(model_config.get("channels", 32)),
            plus=plus,
            lambda_init=float(model_config.get("lambda_init", 0.5)),
            lambda_init_relative=bool(model_config.get("lambda_init_relative", False)),
        )
        gamma = float(loss_config.get("gamma", 0.01))
        margin = loss_margin(loss_config)
        return methods.Method(name, model, lambda out, labels: istanet_loss(out, labels, gamma, margin))

    return build


build_istanet = _builder("istanet", False, 8)
build_istanet_plus = _builder("istanet_plus", True, 9)
