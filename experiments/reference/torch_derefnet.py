"""A PyTorch DeRefNet written from SPEC §5, for parity fixtures and speed comparisons (needs the `torch` extra).

Its ``state_dict`` keys are those of the public code (``fcs.{i}.*``, ``TDDA.*``), so public checkpoints load
into it and :mod:`seqcsist_jax.interop` converts between it and the Flax model. Two execution modes:

* ``mode="loop"``: the public code's structure — one trajectory at a time, a Python loop over centre frames and
  over their neighbours, the feature extractor re-run for every pair;
* ``mode="vectorised"``: every (centre, neighbour) pair of every trajectory in one batched call (the structure of
  the JAX model), for a fair speed comparison.

Both give the same numbers. Inputs and outputs follow the Flax model: frames ``(B, T, 11, 11)`` raw grey
values, Φ ``(121, 1089)``, Q ``(1089, 121)``; the output dict has ``output (B, J, 33, 33)``, ``frame_index``,
``sym (S, B, T, 33, 33)``, ``x_last (B, T, 33, 33)``, ``aligned (B, J, window-1, 33, 33)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from seqcsist_jax.models.tdfa import pair_indices


def _kaiming_fan_out_(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)


class IstaBlock(nn.Module):
    """One ISTA-Net stage; parameters named as the public ``BasicBlock``."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.lambda_step = nn.Parameter(torch.tensor([0.5]))
        self.soft_thr = nn.Parameter(torch.tensor([0.01]))
        self.conv1_forward = nn.Parameter(nn.init.xavier_normal_(torch.empty(channels, 1, 3, 3)))
        self.conv2_forward = nn.Parameter(nn.init.xavier_normal_(torch.empty(channels, channels, 3, 3)))
        self.conv1_backward = nn.Parameter(nn.init.xavier_normal_(torch.empty(channels, channels, 3, 3)))
        self.conv2_backward = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, channels, 3, 3)))

    def forward(self, x, phi_t_phi, phi_t_b, side):
        r = x - self.lambda_step * (x @ phi_t_phi) + self.lambda_step * phi_t_b
        r_img = r.view(-1, 1, side, side)
        f = F.conv2d(F.relu(F.conv2d(r_img, self.conv1_forward, padding=1)), self.conv2_forward, padding=1)
        s = torch.sign(f) * F.relu(torch.abs(f) - self.soft_thr)
        x_pred = F.conv2d(F.relu(F.conv2d(s, self.conv1_backward, padding=1)), self.conv2_backward, padding=1)
        x_est = F.conv2d(F.relu(F.conv2d(f, self.conv1_backward, padding=1)), self.conv2_backward, padding=1)
        return x_pred.view(-1, side * side), (x_est - r_img)[:, 0]


class ConvReLU(nn.Module):
    """mmcv ``ConvModule`` without norm: ``relu(conv(x))``, the conv under ``.conv`` (Kaiming fan_out, bias 0)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=True)
        _kaiming_fan_out_(self.conv)

    def forward(self, x):
        return F.relu(self.conv(x))


class ResBlock(nn.Module):
    """mmagic ``ResidualBlockNoBN(res_scale=1)``: Kaiming-normal(fan_in) × 0.1 weights, zero bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=True)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in", nonlinearity="relu")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class DeformAlign(nn.Module):
    """3×3 deformable conv (no bias) whose offsets come from ``conv_offset`` (zero-initialised) applied to
    ``extra`` (defaults to the input itself: mmcv ``DeformConv2dPack``)."""

    def __init__(self, channels: int, offset_in: int):
        super().__init__()
        # mmcv >= 2 DeformConv2d.reset_parameters: kaiming_uniform_(nonlinearity='relu'), U(±√(6/(C·9)))
        self.weight = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(channels, channels, 3, 3), nonlinearity="relu"))
        self.conv_offset = nn.Conv2d(offset_in, 18, 3, padding=1, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x, extra=None):
        offset = self.conv_offset(x if extra is None else extra)
        return deform_conv2d(x, offset, self.weight, padding=(1, 1))


class SelectiveAttention(nn.Module):
    """The public ``SK`` module."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv0_s = nn.Conv2d(channels, channels // 2, 1)
        self.conv1_s = nn.Conv2d(channels, channels // 2, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, centre, neigh):
        a1 = self.conv0_s(centre)
        a2 = self.conv1_s(neigh)
        attn = torch.cat([a1, a2], dim=1)
        pooled = torch.cat([attn.mean(dim=1, keepdim=True), attn.max(dim=1, keepdim=True)[0]], dim=1)
        sig = torch.sigmoid(self.conv_squeeze(pooled))
        return torch.cat([a1 * sig[:, 0:1], a2 * sig[:, 1:2]], dim=1)


class TDFA(nn.Module):
    """Time encoding, alignment and tail; module named ``TDDA`` in the public state dict."""

    def __init__(self, channels=32, window=5, n=1089, time_encoding=True, selective_attention=True,
                 num_res_blocks=5, num_frames=20):
        super().__init__()
        self.window = window
        self.num_frames = num_frames
        self.use_time_encoding = time_encoding
        self.use_attention = selective_attention
        if time_encoding:
            self.mlp = nn.Linear(n, n)
        self.feat_extract = nn.Sequential(ConvReLU(1, channels))
        if selective_attention:
            self.feat_aggregate = SelectiveAttention(channels)
        self.align_1 = DeformAlign(channels, channels if selective_attention else 2 * channels)
        self.align_2 = DeformAlign(channels, channels)
        self.conv = nn.Conv2d(channels, 1, 3, padding=1, bias=True)
        self.tail_conv = nn.Sequential(
            ConvReLU(window, channels),
            nn.Sequential(*[ResBlock(channels) for _ in range(num_res_blocks)]),
            nn.Conv2d(channels, 1, 3, 1, 1, bias=False),
        )

    def encode_time(self, x_last):
        """``(B, T, s, s)`` → time-encoded maps."""
        b, t, s, _ = x_last.shape
        if not self.use_time_encoding:
            return x_last
        p = (torch.arange(t, dtype=x_last.dtype, device=x_last.device) / self.num_frames)[:, None]
        weights = torch.sigmoid(self.mlp(p.expand(t, s * s)))
        return x_last * weights.view(1, t, s, s)

    def _aggregate(self, fc, fn):
        return self.feat_aggregate(fc, fn) if self.use_attention else torch.cat([fc, fn], dim=1)

    def _align(self, fn, agg):
        return self.conv(self.align_2(self.align_1(fn, agg)))

    def forward_loop(self, maps, centres, neighbours):
        """The public structure: per trajectory, per centre, per neighbour."""
        b, t, s, _ = maps.shape
        outputs, aligned_all = [], []
        half = self.window // 2
        for bi in range(b):
            x = maps[bi].view(t, 1, s, s)
            outs, als = [], []
            for j, c in enumerate(centres):
                chans, als_j = [], []
                for k, m in enumerate(neighbours[j]):
                    if k == half:
                        chans.append(x[c:c + 1])
                    fc = self.feat_extract(x[c:c + 1])
                    fn = self.feat_extract(x[m:m + 1])
                    al = self._align(fn, self._aggregate(fc, fn))
                    chans.append(al)
                    als_j.append(al[:, 0])
                stack = torch.cat(chans, dim=1)
                outs.append(self.tail_conv(stack)[:, 0])
                als.append(torch.cat(als_j, dim=0))
            outputs.append(torch.cat(outs, dim=0))
            aligned_all.append(torch.stack(als))
        return torch.stack(outputs), torch.stack(aligned_all)

    def forward_vectorised(self, maps, centres, neighbours):
        """All pairs of all trajectories at once; features computed once per frame."""
        b, t, s, _ = maps.shape
        j, k = neighbours.shape
        c_idx = torch.as_tensor(centres, device=maps.device, dtype=torch.long)
        n_idx = torch.as_tensor(neighbours, device=maps.device, dtype=torch.long)
        feat = self.feat_extract(maps.reshape(b * t, 1, s, s))
        ch = feat.shape[1]
        feat = feat.view(b, t, ch, s, s)
        fn = feat[:, n_idx].reshape(b * j * k, ch, s, s)
        fc = feat[:, c_idx][:, :, None].expand(b, j, k, ch, s, s).reshape(b * j * k, ch, s, s)
        aligned = self._align(fn, self._aggregate(fc, fn)).view(b, j, k, s, s)
        half = k // 2
        stack = torch.cat([aligned[:, :, :half], maps[:, c_idx][:, :, None], aligned[:, :, half:]], dim=2)
        out = self.tail_conv(stack.reshape(b * j, self.window, s, s)).view(b, j, s, s)
        return out, aligned


class TorchDeRefNet(nn.Module):
    """DeRefNet with the public parameter names; options as :class:`seqcsist_jax.models.DeRefNet`."""

    def __init__(self, num_stages=9, channels=32, time_encoding=True, selective_attention=True, window=5,
                 predict_edges=False, num_frames=20, num_res_blocks=5, n=1089):
        super().__init__()
        self.window = window
        self.predict_edges = predict_edges
        self.fcs = nn.ModuleList([IstaBlock(channels) for _ in range(num_stages)])
        self.TDDA = TDFA(channels, window, n, time_encoding, selective_attention, num_res_blocks, num_frames)

    def forward(self, frames, phi, q, mode: str = "vectorised"):
        if mode not in ("loop", "vectorised"):
            raise ValueError(f"mode must be 'loop' or 'vectorised', got {mode!r}")
        b, t = frames.shape[:2]
        m, n = phi.shape
        side = math.isqrt(n)
        y = frames.reshape(b * t, m)
        phi_t_phi = phi.t() @ phi
        phi_t_b = y @ phi
        x = y @ q.t()
        syms = []
        for stage in self.fcs:
            x, sym = stage(x, phi_t_phi, phi_t_b, side)
            syms.append(sym.view(b, t, side, side))
        x_last = x.view(b, t, side, side)
        maps = self.TDDA.encode_time(x_last)
        centres, neighbours = pair_indices(t, self.window, self.predict_edges)
        if mode == "loop":
            out, aligned = self.TDDA.forward_loop(maps, centres.tolist(), neighbours.tolist())
        else:
            out, aligned = self.TDDA.forward_vectorised(maps, centres, neighbours)
        return {"output": out, "frame_index": centres, "sym": torch.stack(syms), "x_last": x_last,
                "aligned": aligned}


def torch_derefnet_loss(out, labels, constraint_weight: float = 0.1, align_weight: float = 0.1):
    """The public loss, averaged over trajectories; returns ``(total, terms)`` like
    :func:`seqcsist_jax.models.derefnet_loss.derefnet_loss`."""
    idx = torch.as_tensor(out["frame_index"], dtype=torch.long, device=labels.device)
    constraint = (out["sym"] ** 2).mean(dim=(2, 3, 4)).sum(dim=0)
    reg = ((out["output"] - labels[:, idx]) ** 2).mean(dim=(2, 3)).sum(dim=1)
    align = (out["aligned"] - out["x_last"][:, idx][:, :, None]).abs().sum(dim=(1, 2, 3, 4))
    terms = {
        "loss_constraint": constraint_weight * constraint.mean(),
        "loss_reg": reg.mean(),
        "loss_align": align_weight * align.mean(),
        "constraint": constraint.mean(),
        "align": align.mean(),
    }
    return terms["loss_constraint"] + terms["loss_reg"] + terms["loss_align"], terms
