"""The ``ssae`` model (seed 001, v1 and v2): an ensemble of convolutional autoencoders of increasing depth.

Each member: a 1-d convolutional front end over time (channels as features), ``depth`` dense layers down to a small
latent, a decoder that mirrors it, and an MLP classification head on the latent. The members train together on the
same batches (the sum of their losses); clustering later reads each member's latent on its own and keeps the member
whose Gaussian mixture has the lowest BIC. The optional Atom loss (v2) pulls each latent towards its cluster's
centroid and pushes it away from the others.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import SemiSupervisedAEConfig


def _dense_widths(config: SemiSupervisedAEConfig, depth: int) -> list[int]:
    # widths of the depth - 1 hidden layers between the flattened convolution and the latent: hidden, hidden/2, ...
    return [max(config.hidden // 2**index, 2 * config.latent_dim) for index in range(depth - 1)]


class ConvAutoencoder(nn.Module):
    """One member of the ensemble: conv front end -> ``depth`` dense layers -> latent -> mirrored decoder."""

    def __init__(self, config: SemiSupervisedAEConfig, depth: int):
        super().__init__()
        c = config
        self.num_steps = (c.num_samples + 1) // 2  # time steps after the stride-2 convolution
        flat = c.conv_channels * self.num_steps
        self.conv = nn.Sequential(
            nn.Conv1d(c.num_channels, c.conv_channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(c.conv_channels, c.conv_channels, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        widths = [flat, *_dense_widths(c, depth), c.latent_dim]
        encoder = []
        for index, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            encoder.append(nn.Linear(a, b))
            if index < len(widths) - 2:
                encoder.append(nn.ReLU())
        self.encoder = nn.Sequential(*encoder)
        decoder = []
        reverse = widths[::-1]
        for a, b in zip(reverse[:-1], reverse[1:]):
            decoder += [nn.Linear(a, b), nn.ReLU()]
        self.decoder = nn.Sequential(*decoder)
        self.deconv = nn.Sequential(
            nn.ConvTranspose1d(c.conv_channels, c.conv_channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(c.conv_channels, c.num_channels, 5, padding=2),
        )
        self.head = None  # the MLP classification head on the latent (seed 001, v1)
        if c.num_classes:
            self.head = nn.Sequential(
                nn.Linear(c.latent_dim, c.classifier_hidden), nn.ReLU(), nn.Linear(c.classifier_hidden, c.num_classes)
            )
        self.conv_channels = c.conv_channels
        self.num_samples = c.num_samples

    def encode(self, x: Tensor) -> Tensor:
        """(batch, num_channels, num_samples), already scaled -> (batch, latent_dim)."""
        return self.encoder(self.conv(x))

    def decode(self, z: Tensor) -> Tensor:
        """(batch, latent_dim) -> (batch, num_channels, num_samples)."""
        h = self.decoder(z).reshape(z.shape[0], self.conv_channels, self.num_steps)
        return self.deconv(h)[:, :, : self.num_samples]


def atom_loss(latents: Tensor, centroids: Tensor, eps: float = 1e-2) -> Tensor:
    """Atom loss (seed 001, v2) of latents (batch, dim) against GMM centroids (clusters, dim), averaged over the batch.

    Each point is attracted to its nearest centroid (squared distance) and repelled from the other centroids
    (inverse squared distance, the seed's 1/d^2 term). Distances are measured in units of the batch's latent spread
    (detached), so that shrinking or inflating the whole latent changes nothing: only the arrangement of the points
    relative to the centroids does.
    """
    scale = latents.detach().std(dim=0).mean().clamp_min(1e-6)
    squared = torch.cdist(latents, centroids).pow(2) / scale.pow(2)  # (batch, clusters)
    own = squared.argmin(dim=1, keepdim=True)
    attraction = squared.gather(1, own).squeeze(1)
    if centroids.shape[0] < 2:
        return attraction.mean()
    others = torch.ones_like(squared, dtype=torch.bool).scatter_(1, own, False)
    repulsion = torch.where(others, 1.0 / (squared + eps), torch.zeros_like(squared)).sum(dim=1)
    return (attraction + repulsion / (centroids.shape[0] - 1)).mean()


class SemiSupervisedAE(nn.Module):
    def __init__(self, config: SemiSupervisedAEConfig):
        super().__init__()
        self.config = config.validate()
        self.members = nn.ModuleList([ConvAutoencoder(config, depth) for depth in config.depths])
        self.atom_centroids: list[Tensor] | None = None  # set per epoch by the Atom fine-tuning; not saved

    @property
    def num_members(self) -> int:
        return len(self.members)

    def set_atom_centroids(self, centroids: list[np.ndarray] | None) -> None:
        """Centroids (clusters, latent_dim), one array per member, that the "atom" loss term uses; None removes it."""
        if centroids is None:
            self.atom_centroids = None
        else:
            self.atom_centroids = [torch.as_tensor(c, dtype=torch.float32) for c in centroids]

    def _scaled(self, snippets: Tensor) -> Tensor:
        # Conv1d wants (batch, channels, time)
        return (snippets / self.config.input_scale).transpose(1, 2)

    def encode(self, snippets: Tensor) -> Tensor:
        """Every member's latent, side by side: (batch, num_samples, num_channels) -> (batch, members * latent_dim)."""
        x = self._scaled(snippets)
        return torch.cat([member.encode(x) for member in self.members], dim=1)

    def forward(
        self,
        snippets: Tensor,
        labels: Tensor | None = None,
        positions: Tensor | None = None,
        reconstruct: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean reconstruction of the members and the named, unweighted loss terms, each averaged over the members:
        "reconstruction" (mean squared error in units of the input's std), "classification" (cross-entropy of the
        heads, on the events with ``labels >= 0``; -1 = unlabelled) and "atom" (when centroids are set).
        ``positions`` is unused (the training loop's common signature); ``reconstruct=False`` skips the decoders."""
        x = self._scaled(snippets)
        known = None if labels is None else labels >= 0
        reconstructions, losses = [], {}
        terms = {"reconstruction": [], "classification": [], "atom": []}
        for index, member in enumerate(self.members):
            z = member.encode(x)
            if reconstruct:
                reconstruction = member.decode(z)
                reconstructions.append(reconstruction)
                terms["reconstruction"].append((reconstruction - x).pow(2).mean())
            if known is not None and member.head is not None and bool(known.any()):
                terms["classification"].append(F.cross_entropy(member.head(z[known]), labels[known]))
            if self.atom_centroids is not None:
                terms["atom"].append(atom_loss(z, self.atom_centroids[index].to(z.device)))
        for name, values in terms.items():
            if values:
                losses[name] = torch.stack(values).mean()
        output = None
        if reconstructions:
            output = (torch.stack(reconstructions).mean(dim=0) * self.config.input_scale).transpose(1, 2)
        return output, losses
