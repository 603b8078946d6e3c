"""FISTA-Net (Xiang, Dong & Yang, IEEE TMI 2021) as the public SeqCSIST toolkit builds it (``fistanet_det.py``,
``fistanet_bb.py``, config ``fistanet.py``: 7 layers).

Per frame, from ``x⁰ = y Qᵀ`` and ``z⁰ = x⁰``, layer ``k = 0 … 6`` with **one shared block** (the public code
appends the same module seven times)::

    μ_k = softplus(w_μ·k + b_μ)     θ_k = softplus(w_θ·k + b_θ)     (w_θ, b_θ, w_μ, b_μ = -0.5, -2, -0.2, 0.1)
    r   = z - μ_k·zΦᵀΦ + μ_k·yΦ
    x_D = conv_D 1→32 (r);  F = conv4_f(relu(conv1_f(x_D)));  S = soft(F, θ_k)
    xᵏ⁺¹ = relu(r + conv_G 32→1 (conv4_b(relu(conv1_b(S)))))              (non-negative output)
    sym = conv4_b(relu(conv1_b(F))) - x_D
    ρ_k = (softplus(w_ρ·k + b_ρ) - softplus(b_ρ)) / softplus(w_ρ·k + b_ρ)     (w_ρ, b_ρ = 0.5, 0)
    zᵏ⁺¹ = xᵏ⁺¹ + ρ_k (xᵏ⁺¹ - xᵏ)

Convs 3×3, padding 1, with bias; Xavier-normal weights, zero bias (the public ``initialize_weights``).

Loss per trajectory (public): ``MSE(x[2:T-2], label) + 0.1·mean|x[2:T-2] - label|
+ 0.01·Σ_k mean(sym_k²) + 0.001·Σ_k mean|S_k|`` (the last two over all frames).

Parameters: the public block also declares ``conv2/conv3_forward`` and ``conv2/conv3_backward``, which its
forward pass never uses (they are commented out). They are counted in the public total, 74,599 (the paper's
74.6 K): 6 step scalars + conv_D 320 + 8 × 9,248 + conv_G 289. ``keep_unused_params=True`` (default) creates them
too, untouched by the forward pass, so counts and checkpoints match; with ``False`` the model has 37,607.
PyTorch's Adam skips parameters that never receive a gradient; here the L2 term (added to their zero gradient)
drives them towards zero instead. Neither affects the output.
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
from seqcsist_jax.models.layers import Conv, xavier_normal

_zeros = nn.initializers.zeros


class FistaBlock(nn.Module):
    """The shared FISTA-Net block; conv names as the public ``Fista_BasicBlock``."""

    channels: int = 32
    keep_unused_params: bool = True

    def setup(self):
        conv = lambda features: Conv(features, 3, kernel_init=xavier_normal, bias_init=_zeros)
        c = self.channels
        self.conv_D = conv(c)
        self.conv1_forward = conv(c)
        self.conv4_forward = conv(c)
        self.conv1_backward = conv(c)
        self.conv4_backward = conv(c)
        self.conv_G = conv(1)
        if self.keep_unused_params:  # declared but unused by the public forward pass (see module docstring)
            self.conv2_forward = conv(c)
            self.conv3_forward = conv(c)
            self.conv2_backward = conv(c)
            self.conv3_backward = conv(c)

    def __call__(self, z, y_phi, phi, mu, theta, side):
        """``z, y_phi (N, n)``, scalars ``mu, theta`` (before softplus) → ``x (N, n)``, ``sym``, ``S``."""
        n = z.shape[0]
        step = jax.nn.softplus(mu)
        r = z + step * (y_phi - (z @ phi.T) @ phi)
        r_img = r.reshape(n, side, side, 1)
        x_d = self.conv_D(r_img)
        f = self.conv4_forward(jax.nn.relu(self.conv1_forward(x_d)))
        s = soft_threshold(f, jax.nn.softplus(theta))
        both = self.conv4_backward(jax.nn.relu(self.conv1_backward(jnp.concatenate([s, f], axis=0))))
        x = jax.nn.relu(r_img + self.conv_G(both[:n]))
        return x.reshape(n, side * side), both[n:] - x_d, s

    def touch_unused(self, x: jax.Array) -> None:
        """Runs the unused convs once so that ``init`` creates their params (never called in ``apply``)."""
        if self.keep_unused_params:
            for conv in (self.conv2_forward, self.conv3_forward, self.conv2_backward, self.conv3_backward):
                conv(x)


class FISTANet(nn.Module):
    """Attributes: ``num_layers`` (7), ``channels`` (32), ``keep_unused_params`` (see module docstring)."""

    num_layers: int = 7
    channels: int = 32
    keep_unused_params: bool = True

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)``, ``frame_index (T,)``,
        ``sym`` and ``st`` ``(num_layers, B, T, 33, 33, C)``."""
        b, t, _, side = check_inputs(frames, phi, q)
        scalar = lambda name, value: self.param(name, nn.initializers.constant(value), (1,), jnp.float32)
        w_theta, b_theta = scalar("w_theta", -0.5), scalar("b_theta", -2.0)
        w_mu, b_mu = scalar("w_mu", -0.2), scalar("b_mu", 0.1)
        w_rho, b_rho = scalar("w_rho", 0.5), scalar("b_rho", 0.0)
        block = FistaBlock(self.channels, self.keep_unused_params, name="block")

        phi = jnp.asarray(phi, jnp.float32)
        y = frame_vectors(frames)
        y_phi = y @ phi
        x_old = z = y @ jnp.asarray(q, jnp.float32).T
        if self.is_initializing():
            block.touch_unused(jnp.zeros((1, side, side, self.channels), jnp.float32))
        syms, sts = [], []
        for k in range(self.num_layers):
            x_new, sym, st = block(z, y_phi, phi, w_mu * k + b_mu, w_theta * k + b_theta, side)
            sp = jax.nn.softplus(w_rho * k + b_rho)
            rho = (sp - jax.nn.softplus(b_rho)) / sp
            z = x_new + rho * (x_new - x_old)
            x_old = x_new
            syms.append(sym.reshape((b, t) + sym.shape[1:]))
            sts.append(st.reshape((b, t) + st.shape[1:]))
        return {
            "output": x_new.reshape(b, t, side, side),
            "frame_index": np.arange(t),
            "sym": jnp.stack(syms),
            "st": jnp.stack(sts),
        }


def fistanet_loss(
    outputs: dict, labels: jax.Array, l1: float = 0.1, constraint: float = 0.01, sparsity: float = 0.001,
    margin: int = SCORED_MARGIN,
) -> tuple[jax.Array, dict]:
    """The public FISTA-Net loss (weights as arguments) on frames ``[margin:T-margin]``, per trajectory, mean
    over the batch."""
    out = outputs["output"]
    scored = scored_slice(out.shape[1], margin)
    diff = out[:, scored] - labels[:, scored]
    terms = {
        "mse": per_trajectory_mse(out[:, scored], labels[:, scored]),
        "l1": per_trajectory_mean(diff, jnp.abs),
        "constraint": jnp.sum(jax.vmap(per_trajectory_mean)(outputs["sym"]), axis=0),
        "sparsity": jnp.sum(jax.vmap(lambda s: per_trajectory_mean(s, jnp.abs))(outputs["st"]), axis=0),
    }
    return reduce_terms(terms, {"l1": l1, "constraint": constraint, "sparsity": sparsity})


def build_fistanet(model_config, loss_config) -> methods.Method:
    model = FISTANet(
        num_layers=int(model_config.get("num_layers", 7)),
        channels=int(model_config.get("channels", 32)),
        keep_unused_params=bool(model_config.get("keep_unused_params", True)),
    )
    weights = {k: float(loss_config[k]) for k in ("l1", "constraint", "sparsity") if k in loss_config}
    margin = loss_margin(loss_config)
    return methods.Method("fistanet", model, lambda out, labels: fistanet_loss(out, labels, **weights, margin=margin))
