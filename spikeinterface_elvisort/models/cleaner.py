"""NeuralSorter's cleaner (seed 003): a small CNN that tells spike events from noise.

It reads each snippet divided by its own largest absolute value (NeuralSorter normalises events to [0, 1] before
its CNN), so it judges the shape of an event, not its size: the detection threshold has already judged the size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import CleanerConfig


class Cleaner(nn.Module):
    def __init__(self, config: CleanerConfig):
        super().__init__()
        self.config = config.validate()
        c = config
        self.net = nn.Sequential(
            nn.Conv1d(c.num_channels, c.conv_channels, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(c.conv_channels, c.conv_channels, 5, padding=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(8),
            nn.Flatten(),
            nn.Linear(8 * c.conv_channels, c.hidden),
            nn.ReLU(),
            nn.Linear(c.hidden, 2),  # class 0 = noise, class 1 = spike
        )

    def logits(self, snippets: Tensor) -> Tensor:
        """(batch, num_samples, num_channels) -> (batch, 2) logits of (noise, spike)."""
        peak = snippets.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
        return self.net((snippets / peak).transpose(1, 2))  # Conv1d wants (batch, channels, time)

    def spike_probability(self, snippets: Tensor) -> Tensor:
        """(batch, num_samples, num_channels) -> (batch,) probability that each window holds a spike."""
        return torch.softmax(self.logits(snippets), dim=1)[:, 1]

    def forward(
        self,
        snippets: Tensor,
        labels: Tensor | None = None,
        positions: Tensor | None = None,
        reconstruct: bool = True,
    ) -> tuple[None, dict[str, Tensor]]:
        """No reconstruction; the "classification" term (cross-entropy against ``labels``: 1 spike, 0 noise)."""
        if labels is None:
            raise ValueError("the cleaner trains on labelled windows (1 = spike, 0 = noise)")
        return None, {"classification": F.cross_entropy(self.logits(snippets), labels)}
