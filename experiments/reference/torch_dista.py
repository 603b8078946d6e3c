"""A PyTorch DISTA-Net written from the public GrokCSO description (SPEC §9), for parity fixtures.

Needs only torch. Its ``state_dict`` keys are the public ones (``fcs.{k}.lambda_step``, ``fcs.{k}.w1.weight``,
``fcs.{k}.att.convl.weight``…), so public checkpoints load into it and
:func:`seqcsist_jax.models.dista_net.params_from_state_dict` converts between it and the Flax model.

Layouts follow the public code, not the Flax model: images are row vectors ``(N, 121)``, maps
``(N, 1, 11c, 11c)``. :meth:`TorchDISTA.forward` takes ``frames (B, T, 11, 11)``, Φ ``(121, n)`` and
Q ``(n, 121)`` and returns ``output (B, T, 11c, 11c)`` and ``sym (stages, B, T, 11c, 11c)`` like the Flax model.

``dynamic_mixing="batch"`` is the public block verbatim: the predicted ``(N, 9)`` kernels become the weight of
one ``F.conv2d`` with N output channels, added to the C-channel static branch by broadcasting (N ∈ {1, C}).
``"image"`` pairs each image with its own kernel (a grouped conv). ``detach_dynamic_kernels`` cuts the
gradient into the kernel predictor like the public ``nn.Parameter(..., requires_grad=False)`` wrap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LSK(nn.Module):
    """Large-kernel-selection attention; ``forward(x)`` returns the threshold ``x * conv_m(…)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.convl = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.conv0_s = nn.Conv2d(dim, dim // 2, 1)
        self.conv1_s = nn.Conv2d(dim, dim // 2, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 3, padding=1)
        self.conv_m = nn.Conv2d(dim // 2, dim, 1)

    def forward(self, x):
        a1 = self.conv0_s(x)
        a2 = self.conv1_s(self.convl(x))
        both = torch.cat([a1, a2], dim=1)
        pooled = torch.cat([both.mean(dim=1, keepdim=True), both.amax(dim=1, keepdim=True)], dim=1)
        gate = torch.sigmoid(self.conv_squeeze(pooled))
        return x * self.conv_m(a1 * gate[:, 0:1] + a2 * gate[:, 1:2])


class DistBlock(nn.Module):
    """One stage; parameter names as the public ``DIST_BasicBlock``."""

    def __init__(self, c: int = 3, channels: int = 64, lambda_weight: float = 0.7, hidden: int = 256,
                 dynamic_mixing: str = "batch", detach_dynamic_kernels: bool = True):
        super().__init__()
        self.side = 11 * c
        self.lambda_weight = lambda_weight
        self.dynamic_mixing = dynamic_mixing
        self.detach = detach_dynamic_kernels
        self.lambda_step = nn.Parameter(torch.tensor([0.5]))
        self.conv1_forward = nn.Parameter(nn.init.xavier_normal_(torch.empty(channels, 1, 3, 3)))
        self.conv2_forward = nn.Parameter(nn.init.xavier_normal_(torch.empty(channels, channels, 3, 3)))
        self.conv1_backward = nn.Parameter(nn.init.xavier_normal_(torch.empty(channels, channels, 3, 3)))
        self.conv2_backward = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, channels, 3, 3)))
        self.w1 = nn.Linear(self.side * self.side, hidden)
        self.w2 = nn.Linear(hidden, 9)
        self.att = LSK(channels)

    def forward(self, x, phi_t_phi, phi_t_b):
        s = self.side
        r = x - self.lambda_step * (x @ phi_t_phi) + self.lambda_step * phi_t_b
        r_img = r.view(-1, 1, s, s)
        static = F.conv2d(F.relu(F.conv2d(r_img, self.conv1_forward, padding=1)), self.conv2_forward, padding=1)
        kernels = self.w2(self.w1(x)).reshape(-1, 1, 3, 3)
        if self.detach:
            kernels = kernels.detach()
        if self.dynamic_mixing == "batch":
            dyn = F.conv2d(r_img, kernels, padding=1)  # (N, N, s, s): every image with every kernel
        elif self.dynamic_mixing == "image":
            n = r_img.shape[0]
            dyn = F.conv2d(r_img.view(1, n, s, s), kernels, padding=1, groups=n).view(n, 1, s, s)
        else:
            raise ValueError(self.dynamic_mixing)
        f = self.lambda_weight * static + (1 - self.lambda_weight) * torch.sigmoid(dyn)
        soft = torch.sign(f) * F.relu(torch.abs(f) - self.att(f))
        x_next = F.conv2d(F.relu(F.conv2d(soft, self.conv1_backward, padding=1)), self.conv2_backward, padding=1)
        x_est = F.conv2d(F.relu(F.conv2d(f, self.conv1_backward, padding=1)), self.conv2_backward, padding=1)
        return x_next.view(-1, s * s), x_est - r_img


class TorchDISTA(nn.Module):
    """``fcs`` = ``num_stages`` :class:`DistBlock` s (the public ``DISTA``/``FDFrameWork`` without Φ/Q files)."""

    def __init__(self, num_stages: int = 6, c: int = 3, channels: int = 64, lambda_weight: float = 0.7,
                 kernel_hidden: int = 256, dynamic_mixing: str = "batch", detach_dynamic_kernels: bool = True):
        super().__init__()
        self.side = 11 * c
        self.fcs = nn.ModuleList(
            DistBlock(c, channels, lambda_weight, kernel_hidden, dynamic_mixing, detach_dynamic_kernels)
            for _ in range(num_stages)
        )

    def forward(self, frames, phi, q):
        b, t = frames.shape[:2]
        s = self.side
        y = frames.reshape(b * t, -1)
        phi_t_phi = phi.T @ phi
        phi_t_b = y @ phi
        x = y @ q.T
        syms = []
        for block in self.fcs:
            x, sym = block(x, phi_t_phi, phi_t_b)
            syms.append(sym.view(b, t, s, s))
        return {"output": x.view(b, t, s, s), "sym": torch.stack(syms)}


def torch_dista_loss(out: dict, labels, gamma: float = 0.01):
    """Public ``mode='loss'``: whole-batch ``mean((x - gt)²)`` and ``γ·Σ_stages mean(sym²)``."""
    discrepancy = torch.mean((out["output"] - labels) ** 2)
    constraint = sum(torch.mean(s**2) for s in out["sym"])
    return discrepancy + gamma * constraint, {"discrepancy": discrepancy, "constraint": constraint}
