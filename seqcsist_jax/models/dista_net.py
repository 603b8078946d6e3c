"""DISTA-Net (Han et al., ICCV 2025; SPEC §9) in Flax, as the public GrokCSO code builds it.

DISTA-Net unfolds ISTA on one image at a time. Per image ``y`` (121 raw grey values, no normalisation)::

    x⁰ = y Qᵀ                                           Q (n, 121): least-squares init, a constant
    r  = xᵏ - λₖ·xᵏΦᵀΦ + λₖ·yΦ                          gradient step (λₖ learned, init 0.5)
    F  = w·conv(relu(conv(r))) + (1-w)·σ(r ⋆ Kₖ(xᵏ))    dual branch: static 1→C→C convs and a dynamic 3×3
                                                         kernel Kₖ = w2(w1(xᵏ)) predicted from the stage input
    θ  = F ⊙ LSK(F)                                     dynamic, per-element threshold (LSK attention)
    xᵏ⁺¹ = conv(relu(conv(soft(F, θ))))                 backward transform C→C→1
    symᵏ = conv(relu(conv(F))) - r                      symmetry residual (feeds the loss only)

with ``n = (11c)²`` for sub-pixel division ``c`` (3: 1089; 5: 3025; 7: 5929), ``w = lambda_weight`` (0.7 in the
public configs), C = 64 channels and 6 stages (the public ``configs/c_3/dista.py`` and ``c_5``; ``c_7`` uses 4).

Two behaviours of the public block are kept, one of them behind a switch (both are DECISIONs, SPEC §9):

* **The dynamic kernels are detached** (``detach_dynamic_kernels``, default True): the public block wraps the
  predicted kernels in ``nn.Parameter(..., requires_grad=False)``, which cuts the gradient, so ``w1`` and
  ``w2`` never train and keep their initial values. They still count as parameters.
* **Kernel/image pairing** (``dynamic_mixing``): the public block reshapes the ``N`` predicted kernels to a
  ``(N, 1, 3, 3)`` weight and convolves every image with *every* kernel, giving ``(N, N, s, s)``; adding that
  to the ``(N, C, s, s)`` static branch broadcasts only when ``N = 1`` or ``N = C`` (its batch of 64 = its 64
  channels), and then channel ``j`` of image ``i`` uses image ``j``'s kernel — the batch is mixed.
  ``"image"`` (default) convolves each image with its own kernel and broadcasts over the channels: images are
  independent, any batch size works, and it equals the public block exactly whenever ``N = 1``.
  ``"batch"`` reproduces the public mixing and requires ``B·T`` ∈ {1, ``channels``}.

Loss (public ``DISTA``/``FDFrameWork``, ``mode='loss'``): ``mean((x⁶ - label)²) + γ·Σₖ mean(symᵏ²)``, γ = 0.01.

Parameters (C = 64, c = 3), per stage: λ 1, convs 9·C + 2·9·C² + 9·C = 74,880, ``w1`` n·256 + 256 = 279,040,
``w2`` 256·9 + 9 = 2,313, LSK 6,950 (depthwise 3×3 640, two 1×1 C→C/2 2·2,080, 3×3 2→2 38, 1×1 C/2→C
2,112): 363,184; six stages 2,179,104. ``w1`` dominates and grows with c²: c = 5, 6 stages 5,152,800; c = 7,
4 stages (public ``c_7``) 6,408,896.

Parameter tree (public ``state_dict`` keys in brackets): ``stage_{k}/{lambda_step, conv1_forward,
conv2_forward, conv1_backward, conv2_backward}`` [``fcs.{k}.…``, OIHW], ``stage_{k}/{w1,w2}/{kernel,bias}``
[``fcs.{k}.w1.weight`` (out, in), ``….bias``], ``stage_{k}/att/{convl,conv0_s,conv1_s,conv_squeeze,conv_m}/
{kernel,bias}`` [``fcs.{k}.att.….weight/bias``]. :func:`params_from_state_dict` and
:func:`params_to_state_dict` convert (HWIO ↔ OIHW, Dense ``(in, out)`` ↔ Linear ``(out, in)``).

Call signature (the ``methods`` contract): ``frames (B, T, 11, 11)``; every one of the ``B·T`` images is
unmixed on its own (T = 1 for CSIST-100K examples), so ``output`` is ``(B, T, 11c, 11c)`` and
``frame_index = arange(T)``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax.baselines.common import per_trajectory_mean, per_trajectory_mse, reduce_terms, soft_threshold
from seqcsist_jax.models.layers import (
    Conv,
    check_inputs,
    conv2d,
    torch_default_bias,
    torch_default_kernel,
    xavier_normal,
)

__all__ = [
    "DISTANet",
    "DistaStage",
    "LSKThreshold",
    "DYNAMIC_MIXING",
    "dista_loss",
    "build_dista",
    "state_dict_shapes",
    "params_from_state_dict",
    "params_to_state_dict",
]

DYNAMIC_MIXING = ("image", "batch")
FRAME_SIZE = 11


class LSKThreshold(nn.Module):
    """The public ``LSKmodule(C)``: a per-element threshold ``x ⊙ conv_m(attention)`` from large-kernel selection.

    Params: ``convl`` depthwise 3×3 ``(3, 3, 1, C)`` + bias, ``conv0_s``/``conv1_s`` 1×1 ``C → C/2``,
    ``conv_squeeze`` 3×3 ``2 → 2``, ``conv_m`` 1×1 ``C/2 → C``; all with bias, PyTorch-default init.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (N, H, W, C)`` → threshold ``(N, H, W, C)``."""
        c = x.shape[-1]
        dw = _DepthwiseConv(name="convl")(x)
        a1 = Conv(c // 2, 1, name="conv0_s")(x)
        a2 = Conv(c // 2, 1, name="conv1_s")(dw)
        attn = jnp.concatenate([a1, a2], axis=-1)
        pooled = jnp.concatenate([attn.mean(-1, keepdims=True), attn.max(-1, keepdims=True)], axis=-1)
        sig = jax.nn.sigmoid(Conv(2, 3, name="conv_squeeze")(pooled))
        mixed = a1 * sig[..., 0:1] + a2 * sig[..., 1:2]
        return x * Conv(c, 1, name="conv_m")(mixed)


class _DepthwiseConv(nn.Module):
    """3×3 depthwise conv with bias (``nn.Conv2d(C, C, 3, padding=1, groups=C)``); params ``kernel (3,3,1,C)``
    and ``bias (C,)``, both U(±1/3): PyTorch's fan-in of a depthwise 3×3 kernel is 9."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kernel = self.param("kernel", torch_default_kernel, (3, 3, 1, c), jnp.float32)
        bias = self.param("bias", torch_default_bias(9), (c,), jnp.float32)
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
        )
        return y + bias


def _dynamic_conv(r_img: jax.Array, kernels: jax.Array, mixing: str, channels: int) -> jax.Array:
    """The dynamic branch's ``r ⋆ K`` before the sigmoid.

    Args:
      r_img: ``(N, s, s, 1)``.
      kernels: ``(N, 9)`` row-major 3×3 kernels (the public ``weights.reshape(-1, 1, 3, 3)``).
      mixing: ``"image"`` (image i with kernel i, ``(N, s, s, 1)``) or ``"batch"`` (image i with every kernel
        j in channel j, ``(N, s, s, N)``, the public behaviour).
      channels: C, for the ``"batch"`` shape check.
    """
    n, s = r_img.shape[0], r_img.shape[1]
    k = kernels.reshape(n, 3, 3)
    if mixing == "image":
        # 9 shifted multiply-adds: a per-image kernel is a batch of 1-channel convs with different weights
        padded = jnp.pad(r_img[..., 0], ((0, 0), (1, 1), (1, 1)))
        out = sum(
            padded[:, i : i + s, j : j + s] * k[:, i, j, None, None] for i in range(3) for j in range(3)
        )
        return out[..., None]
    if mixing == "batch":
        if n not in (1, channels):
            raise ValueError(
                f"dynamic_mixing='batch' (the public behaviour) needs B·T ∈ {{1, channels={channels}}} images per "
                f"call, got {n}; use dynamic_mixing='image' for other batch sizes"
            )
        return conv2d(r_img, k.transpose(1, 2, 0)[:, :, None, :])
    raise ValueError(f"dynamic_mixing must be one of {DYNAMIC_MIXING}, got {mixing!r}")


class DistaStage(nn.Module):
    """One DISTA-Net stage (the public ``DIST_BasicBlock``); see the module docstring for the formulas.

    Attributes:
      channels: C (64).
      lambda_weight: weight w of the static branch; the dynamic branch gets 1 - w (0.7).
      kernel_hidden: width of the kernel predictor's hidden layer (256; no activation between w1 and w2).
      dynamic_mixing: ``"image"`` or ``"batch"`` (public); see the module docstring.
      detach_dynamic_kernels: stop gradients into ``w1``/``w2`` as the public code does.
    """

    channels: int = 64
    lambda_weight: float = 0.7
    kernel_hidden: int = 256
    dynamic_mixing: str = "image"
    detach_dynamic_kernels: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, y_phi: jax.Array, phi: jax.Array, side: int) -> tuple[jax.Array, jax.Array]:
        """
        Args:
          x: ``(N, n)`` stage input, ``n = side²``.
          y_phi: ``(N, n)`` ``yΦ`` (the public ``PhiTb``).
          phi: ``(m, n)`` Φ.
          side: label-grid side ``11c``.

        Returns:
          ``x_next (N, n)`` and the symmetry residual ``(N, side, side)``.
        """
        c = self.channels
        n_img, n = x.shape
        lam = self.param("lambda_step", nn.initializers.constant(0.5), (1,), jnp.float32)
        k1f = self.param("conv1_forward", xavier_normal, (3, 3, 1, c), jnp.float32)
        k2f = self.param("conv2_forward", xavier_normal, (3, 3, c, c), jnp.float32)
        k1b = self.param("conv1_backward", xavier_normal, (3, 3, c, c), jnp.float32)
        k2b = self.param("conv2_backward", xavier_normal, (3, 3, c, 1), jnp.float32)

        r = x + lam * (y_phi - (x @ phi.T) @ phi)  # (xΦᵀ)Φ: two thin matmuls instead of forming ΦᵀΦ
        r_img = r.reshape(n_img, side, side, 1)
        static = conv2d(jax.nn.relu(conv2d(r_img, k1f)), k2f)

        def linear(features: int, fan_in: int, name: str) -> nn.Dense:  # nn.Linear's default init
            return nn.Dense(features, kernel_init=torch_default_kernel, bias_init=torch_default_bias(fan_in), name=name)

        # no activation between w1 and w2; the kernels come from the stage input, not from r
        kernels = linear(9, self.kernel_hidden, "w2")(linear(self.kernel_hidden, n, "w1")(x))
        if self.detach_dynamic_kernels:
            kernels = jax.lax.stop_gradient(kernels)
        dynamic = jax.nn.sigmoid(_dynamic_conv(r_img, kernels, self.dynamic_mixing, c))
        f = self.lambda_weight * static + (1.0 - self.lambda_weight) * dynamic

        s = soft_threshold(f, LSKThreshold(name="att")(f))
        x_next = conv2d(jax.nn.relu(conv2d(s, k1b)), k2b).reshape(n_img, n)
        # Separate calls (not one batched call on [S; F]) so XLA drops this branch when only outputs are used.
        sym = conv2d(jax.nn.relu(conv2d(f, k1b)), k2b)[..., 0] - r_img[..., 0]
        return x_next, sym


class DISTANet(nn.Module):
    """DISTA-Net as the public code builds it.

    Attributes:
      num_stages: unfolded stages (6; the public c = 7 config uses 4).
      channels: feature channels C (64, fixed in the public block).
      lambda_weight: static-branch weight (0.7 in the public configs; the class default there is 0.5).
      c: sub-pixel division (3, 5 or 7); Φ must be ``(121, (11c)²)``. None: take it from Φ.
      kernel_hidden: hidden width of the dynamic-kernel predictor (256).
      dynamic_mixing: ``"image"`` (default, images independent) or ``"batch"`` (public batch mixing).
      detach_dynamic_kernels: the public code trains no gradient into the kernel predictor (True).
    """

    num_stages: int = 6
    channels: int = 64
    lambda_weight: float = 0.7
    c: int | None = 3
    kernel_hidden: int = 256
    dynamic_mixing: str = "image"
    detach_dynamic_kernels: bool = True

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict[str, Any]:
        """
        Args:
          frames: ``(B, T, 11, 11)`` raw grey values (uint8 or float); each of the ``B·T`` images on its own.
          phi: ``(121, n)`` measurement matrix Φ, ``n = (11c)²``.
          q: ``(n, 121)`` initialisation matrix Q.

        Returns:
          dict with ``output (B, T, 11c, 11c)`` (the last stage's map, brightness units), ``frame_index (T,)``
          (``arange(T)``) and ``sym (num_stages, B, T, 11c, 11c)`` symmetry residuals.

        Raises:
          ValueError: naming the argument or option that does not fit.
        """
        b, t, m, side = check_inputs(frames, phi, q)
        if self.c is not None and side != FRAME_SIZE * self.c:
            raise ValueError(
                f"phi has {side}×{side} = {side * side} columns but c={self.c} needs "
                f"{FRAME_SIZE * self.c}² = {(FRAME_SIZE * self.c) ** 2} (pass imaging.measurement_matrix(c={self.c}))"
            )
        if self.channels % 2:
            raise ValueError(f"channels must be even (the LSK threshold halves them), got {self.channels}")
        if self.dynamic_mixing not in DYNAMIC_MIXING:
            raise ValueError(f"dynamic_mixing must be one of {DYNAMIC_MIXING}, got {self.dynamic_mixing!r}")
        y = frames.reshape(b * t, m).astype(jnp.float32)
        phi = jnp.asarray(phi, jnp.float32)
        x = y @ jnp.asarray(q, jnp.float32).T
        y_phi = y @ phi
        syms = []
        for k in range(self.num_stages):
            stage = DistaStage(
                channels=self.channels,
                lambda_weight=self.lambda_weight,
                kernel_hidden=self.kernel_hidden,
                dynamic_mixing=self.dynamic_mixing,
                detach_dynamic_kernels=self.detach_dynamic_kernels,
                name=f"stage_{k}",
            )
            x, sym = stage(x, y_phi, phi, side)
            syms.append(sym.reshape(b, t, side, side))
        return {"output": x.reshape(b, t, side, side), "frame_index": np.arange(t), "sym": jnp.stack(syms)}


def dista_loss(outputs: Mapping[str, jax.Array], labels: jax.Array, gamma: float = 0.01) -> tuple[jax.Array, dict]:
    """The public DISTA-Net loss: ``mean((output - label)²) + γ·Σ_stages mean(sym²)``.

    Terms are computed per example ``(B,)`` over all its ``T`` images and averaged over the batch; with equal
    shapes that equals the public whole-batch means.

    Args:
      outputs: the model's dict (``output (B, T, s, s)``, ``sym (S, B, T, s, s)``).
      labels: ``(B, T, s, s)`` label maps (brightness at the grid cell of each target).
      gamma: symmetry-constraint weight (0.01 in every public DISTA-Net config).

    Returns:
      ``(total, terms)`` with ``discrepancy``, ``constraint`` and their weighted ``loss_*`` versions.

    Raises:
      ValueError: labels do not have the output's shape.
    """
    out = outputs["output"]
    if tuple(labels.shape) != tuple(out.shape):
        raise ValueError(f"labels must have the output's shape {tuple(out.shape)}, got {tuple(labels.shape)}")
    constraint = jnp.sum(jax.vmap(per_trajectory_mean)(outputs["sym"]), axis=0)  # (B,)
    terms = {"discrepancy": per_trajectory_mse(out, labels), "constraint": constraint}
    return reduce_terms(terms, {"constraint": gamma})


def build_dista(model_config, loss_config):
    """``methods`` builder: :class:`DISTANet` from ``model_config`` (``num_stages``, ``channels``,
    ``lambda_weight``, ``c``, ``kernel_hidden``, ``dynamic_mixing``, ``detach_dynamic_kernels``; defaults as the
    public c = 3 config) and :func:`dista_loss` with ``loss_config.gamma`` (0.01)."""
    from seqcsist_jax.methods import Method

    get = model_config.get
    model = DISTANet(
        num_stages=int(get("num_stages", 6)),
        channels=int(get("channels", 64)),
        lambda_weight=float(get("lambda_weight", 0.7)),
        c=None if get("c", 3) is None else int(get("c", 3)),
        kernel_hidden=int(get("kernel_hidden", 256)),
        dynamic_mixing=str(get("dynamic_mixing", "image")),
        detach_dynamic_kernels=bool(get("detach_dynamic_kernels", True)),
    )
    if model.dynamic_mixing not in DYNAMIC_MIXING:
        raise ValueError(f"config model.dynamic_mixing must be one of {DYNAMIC_MIXING}, got {model.dynamic_mixing!r}")
    gamma = float(loss_config.get("gamma", 0.01))
    return Method("dista", model, lambda out, labels: dista_loss(out, labels, gamma))


# ----------------------------------------------------------------------------------------------------------
# Public state dict ↔ Flax params

_STAGE_CONVS = ("conv1_forward", "conv2_forward", "conv1_backward", "conv2_backward")
_LSK = ("convl", "conv0_s", "conv1_s", "conv_squeeze", "conv_m")


def state_dict_shapes(
    num_stages: int = 6, channels: int = 64, c: int = 3, kernel_hidden: int = 256
) -> dict[str, tuple[int, ...]]:
    """Keys and PyTorch shapes of the public DISTA-Net ``state_dict``, in its order (``fcs.{k}.…``)."""
    ch, half, n = channels, channels // 2, (FRAME_SIZE * c) ** 2
    per_stage = {
        "lambda_step": (1,),
        "conv1_forward": (ch, 1, 3, 3),
        "conv2_forward": (ch, ch, 3, 3),
        "conv1_backward": (ch, ch, 3, 3),
        "conv2_backward": (1, ch, 3, 3),
        "w1.weight": (kernel_hidden, n),
        "w1.bias": (kernel_hidden,),
        "w2.weight": (9, kernel_hidden),
        "w2.bias": (9,),
        "att.convl.weight": (ch, 1, 3, 3),
        "att.convl.bias": (ch,),
        "att.conv0_s.weight": (half, ch, 1, 1),
        "att.conv0_s.bias": (half,),
        "att.conv1_s.weight": (half, ch, 1, 1),
        "att.conv1_s.bias": (half,),
        "att.conv_squeeze.weight": (2, 2, 3, 3),
        "att.conv_squeeze.bias": (2,),
        "att.conv_m.weight": (ch, half, 1, 1),
        "att.conv_m.bias": (ch,),
    }
    return {f"fcs.{k}.{key}": shape for k in range(num_stages) for key, shape in per_stage.items()}


def _to_flax(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # OIHW → HWIO
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:  # Linear (out, in) → Dense (in, out)
        return value.T
    return value


def _to_torch(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # HWIO → OIHW
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        return value.T
    return value


_KEY = re.compile(r"fcs\.(\d+)\.(.+)")


def params_from_state_dict(state: Mapping[str, Any]) -> dict:
    """Public ``state_dict`` (numpy or torch arrays; a ``module.`` prefix is dropped) → Flax params of
    :class:`DISTANet`.

    Raises:
      ValueError: a key that is not a DISTA-Net parameter (named in the message).
    """
    params: dict = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        match = _KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"state dict key {key!r} is not a DISTA-Net parameter (expected fcs.<k>.<name>)")
        path = [f"stage_{match.group(1)}", *match.group(2).split(".")]
        if path[-1] == "weight":
            path[-1] = "kernel"
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(_to_flax(np.asarray(value, dtype=np.float32)))
    return params


def params_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax params (or gradients) of :class:`DISTANet` → public ``state_dict`` keys, PyTorch layouts, numpy."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    out = {}
    for path, value in flat:
        names = [p.key for p in path]
        stage = re.fullmatch(r"stage_(\d+)", names[0])
        if stage is None:
            raise ValueError(f"unexpected DISTA-Net parameter path {'/'.join(names)}")
        rest = ["weight" if n == "kernel" else n for n in names[1:]]
        out[f"fcs.{stage.group(1)}.{'.'.join(rest)}"] = _to_torch(np.asarray(value))
    return out
