"""DeRefNet (SPEC §5): ISTA-Net unfolding per frame, time encoding, temporal deformable alignment, tail.

Shapes: a batch of ``B`` trajectories of ``T`` frames of ``11×11`` raw grey values (no normalisation) is
mapped to ``(B, J, 33, 33)`` maps for the centre frames (``J = T-4`` for the default 5-frame window: frames
2..T-3, the paper's protocol; ``J = T`` with ``predict_edges``). Φ ``(121, 1089)`` and Q ``(1089, 121)`` are
constants passed to every call, not parameters.

Parameter tree (``variables["params"]``), with the public code's names in brackets:
``stage_{i}`` [``fcs.{i}``], ``time_encoding/dense`` [``TDDA.mlp``], ``tdfa/feat_extract``
[``TDDA.feat_extract.0.conv``], ``tdfa/attention/{conv0_s,conv1_s,conv_squeeze}`` [``TDDA.feat_aggregate.*``],
``tdfa/align_1``, ``tdfa/align_2``, ``tdfa/conv``, ``tdfa/tail/{head, res_k/{conv1,conv2}, out}``
[``TDDA.tail_conv.{0.conv, 1.k.conv1/2, 2}``]. :mod:`seqcsist_jax.interop` converts public checkpoints.

Size (default options; :func:`seqcsist_jax.model_stats.count_params`, :func:`~seqcsist_jax.model_stats.flops_per_trajectory`). The paper reports 0.89 M
parameters and 15.70 GFLOPs per 20-frame trajectory. The public code as written, and this model, has
1,482,879 parameters, of which the time-encoding Dense holds 1,187,010 (1089² + 1089); without it 295,869.
The paper's 0.89 M matches neither, so the paper's model presumably had a smaller time encoder. XLA counts
14.9 GFLOPs per trajectory for inference (a multiply-add = 2 FLOPs; 7.5 G multiply-adds: ISTA stages 3.7 G,
alignment 2.1 G of which the two deformable convs 1.3 G and their offset convs 0.7 G, tail 1.6 G, the rest
< 0.1 G), close to the paper's figure. A training forward also runs the stages' symmetry branch (+1.9 G
multiply-adds, 18.5 GFLOPs); a training step (forward + backward) is ≈ 56 GFLOPs.

Formulation (chosen by measurement on CPU, ``experiments/benchmarks/bench_model.py``): NHWC
``lax.conv_general_dilated`` everywhere (it beat NCHW and an im2col matmul on XLA:CPU); the stages run on all
``B·T`` frames at once; every (centre, neighbour) pair of every trajectory goes through the alignment in one
batched call, with the feature extractor and attention projections computed once per frame rather than once
per pair; ``xΦᵀΦ`` as ``(xΦᵀ)Φ``. The deformable convolutions (:mod:`seqcsist_jax.ops.deform_conv`) take
most of the CPU training step.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax.models.ista_stage import IstaStage
from seqcsist_jax.models.layers import check_inputs
from seqcsist_jax.models.tdfa import TDFA, TimeEncoding, pair_indices


class DeRefNet(nn.Module):
    """DeRefNet as the public code builds it, with the paper's ablation switches.

    Attributes:
      num_stages: ISTA-Net stages (9).
      channels: feature channels of the stages, TDFA and tail (32).
      time_encoding: multiply each frame by ``sigmoid(Dense(t/num_frames))`` before alignment.
      selective_attention: offsets of the first alignment conv from the selective-attention fusion (True) or
        from the plain concatenation of centre and neighbour features (False).
      window: frames per alignment window, odd (5: centre ± 2).
      predict_edges: also predict the first/last ``window//2`` frames by replicate-padding the sequence (off:
        the paper's protocol scores only centre frames 2..T-3).
      num_frames: the time-encoding denominator (the public code's constant 20, independent of the input T).
      num_res_blocks: residual blocks in the tail (5).
      edge_grad: offset-gradient rule of the deformable convs at sample points exactly on -1: ``"torchvision"``
        or ``"mmcv"`` (the public code's library; values never depend on it).
      compute_dtype: ``"float32"`` or ``"bfloat16"``: dtype of the stage and TDFA convolutions (mixed
        precision; params stay float32, the ``Φ``/``Q`` matmuls, the residual updates and the outputs float32).
    """

    num_stages: int = 9
    channels: int = 32
    time_encoding: bool = True
    selective_attention: bool = True
    window: int = 5
    predict_edges: bool = False
    num_frames: int = 20
    num_res_blocks: int = 5
    edge_grad: str = "torchvision"
    compute_dtype: str = "float32"

    def output_frame_index(self, num_frames: int) -> np.ndarray:
        """``(J,)`` int32: the input frames the outputs correspond to, for ``num_frames``-frame inputs."""
        return pair_indices(num_frames, self.window, self.predict_edges)[0]

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict[str, Any]:
        """
        Args:
          frames: ``(B, T, h, w)`` raw grey values (``h·w = m``, 11×11).
          phi: ``(m, n)`` measurement matrix Φ (121×1089).
          q: ``(n, m)`` initialisation matrix Q (1089×121).

        Returns:
          dict with
            ``output (B, J, s, s)`` predicted maps (``s = √n = 33``) of the frames ``frame_index``;
            ``frame_index (J,)`` numpy int32 input-frame index of each output;
            ``sym (num_stages, B, T, s, s)`` symmetry residuals of every stage;
            ``x_last (B, T, s, s)`` the last stage's output (before the time encoding);
            ``aligned (B, J, window-1, s, s)`` the neighbours aligned to each centre frame.
        """
        b, t, m, side = check_inputs(frames, phi, q)
        n = side * side

        dtype = jnp.float32
        y = frames.reshape(b * t, m).astype(dtype)
        phi = phi.astype(dtype)
        x = y @ q.astype(dtype).T
        y_phi = y @ phi
        syms = []
        for i in range(self.num_stages):
            x, sym = IstaStage(self.channels, compute_dtype=self.compute_dtype, name=f"stage_{i}")(
                x, y_phi, phi, side)
            syms.append(sym.reshape(b, t, side, side))
        x_last = x.reshape(b, t, side, side)

        maps = x_last
        if self.time_encoding:
            weights = TimeEncoding(n, self.num_frames, name="time_encoding")(np.arange(t))
            maps = maps * weights.reshape(1, t, side, side)

        out = TDFA(
            channels=self.channels,
            window=self.window,
            selective_attention=self.selective_attention,
            predict_edges=self.predict_edges,
            num_res_blocks=self.num_res_blocks,
            edge_grad=self.edge_grad,
            compute_dtype=self.compute_dtype,
            name="tdfa",
        )(maps)
        out["sym"] = jnp.stack(syms)
        out["x_last"] = x_last
        return out


def build_derefnet(model_config, loss_config):
    """``methods`` builder: DeRefNet and its three-term loss (``loss_config.preset``: ``code`` or ``paper``)."""
    import functools

    from seqcsist_jax.methods import Method
    from seqcsist_jax.models.derefnet_loss import derefnet_loss

    options = model_config.to_dict()
    options.pop("name", None)
    model = DeRefNet(**options)
    loss = functools.partial(derefnet_loss, preset=loss_config.get("preset", "code"))
    half = model.window // 2

    def frame_index(num_frames: int) -> np.ndarray:
        # Centre frames with a full window (the paper protocol) unless edge frames are predicted too.
        return np.arange(num_frames) if model.predict_edges else np.arange(half, num_frames - half)

    return Method("derefnet", model, loss, frame_index)
