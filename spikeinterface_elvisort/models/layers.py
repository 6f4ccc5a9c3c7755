"""Building blocks shared by the models."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose inference path takes maxima of shifted views (separable: time, then channels) instead
    of ``max_pool2d_with_indices``, which is several times slower on CPUs for these small maps. The values are
    identical (a maximum is exact); training keeps PyTorch's op and its gradients. Stride 1 with 'same' padding
    and non-overlapping windows (stride == kernel) are the two layouts the models use."""

    def forward(self, x: Tensor) -> Tensor:
        kernel = _pair(self.kernel_size)
        stride = _pair(self.stride if self.stride is not None else self.kernel_size)
        padding = _pair(self.padding)
        if torch.is_grad_enabled() or self.dilation not in (1, (1, 1)) or self.ceil_mode:
            return super().forward(x)
        if stride == (1, 1) and all(k == 2 * p + 1 for k, p in zip(kernel, padding)):
            for axis, (k, p) in zip((2, 3), zip(kernel, padding)):
                if k == 1:
                    continue
                padded = nn.functional.pad(x, (p, p, 0, 0) if axis == 3 else (0, 0, p, p), value=float("-inf"))
                size = x.shape[axis]
                out = padded.narrow(axis, 0, size)
                for shift in range(1, k):
                    out = torch.maximum(out, padded.narrow(axis, shift, size))
                x = out
            return x
        if stride == kernel and padding == (0, 0):
            batch, channels, height, width = x.shape
            h, w = height // kernel[0], width // kernel[1]
            x = x[:, :, : h * kernel[0], : w * kernel[1]]
            return x.reshape(batch, channels, h, kernel[0], w, kernel[1]).amax(dim=(3, 5))
        return super().forward(x)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class Inception2d(nn.Module):
    """GoogLeNet-style inception block over the (channels x time) plane.

    Four parallel paths (1x1; 1x1 -> 3x3; 1x1 -> 3x5; 1x1 -> 3x3 max-pool) concatenated, then batch norm and ReLU.
    The 3x5 kernel replaces GoogLeNet's 5x5: snippets are short in space (a few channels) and long in time.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        width = max(out_channels // 4, 1)
        self.paths = nn.ModuleList(
            [
                nn.Conv2d(in_channels, width, 1),
                nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)),
                nn.Sequential(
                    nn.Conv2d(in_channels, width, 1), nn.ReLU(), nn.Conv2d(width, width, (3, 5), padding=(1, 2))
                ),
                # GoogLeNet pools then projects; projecting first pools 4x fewer maps (max_pool2d is slow on CPUs)
                nn.Sequential(nn.Conv2d(in_channels, width, 1), MaxPool2d(3, stride=1, padding=1)),
            ]
        )
        self.norm = nn.BatchNorm2d(4 * width)
        self.out_channels = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm(torch.cat([path(x) for path in self.paths], dim=1)))


def gaussian_kl(mu: Tensor, logvar: Tensor, prior_mu: Tensor | None = None, prior_logvar: Tensor | None = None):
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))) summed over the last axis; standard normal prior
    when none is given."""
    if prior_mu is None:
        return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=-1)
    return 0.5 * torch.sum(
        prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0, dim=-1
    )


def student_t_assignment(latents: Tensor, centres: Tensor, alpha: float) -> Tensor:
    """DEC soft assignment (Xie et al. 2016, eq. 1): Student-t kernel between latents and cluster centres.

    latents (batch, dim), centres (clusters, dim) -> q (batch, clusters), rows summing to 1.
    """
    squared_distance = torch.cdist(latents, centres).pow(2)
    q = (1.0 + squared_distance / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(dim=1, keepdim=True)


def dec_target(q: Tensor) -> Tensor:
    """DEC's sharpened target distribution (eq. 3): square, divide by cluster frequency, renormalise."""
    weight = q.pow(2) / q.sum(dim=0, keepdim=True).clamp_min(1e-12)
    return weight / weight.sum(dim=1, keepdim=True)
