"""Building blocks shared by the models."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
                nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.MaxPool2d(3, stride=1, padding=1)),
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
