"""Vector quantiser of the compressive autoencoder (seed 004, section 2.3).

Each latent vector is replaced by its nearest codeword; only the codeword's index leaves the implant. Gradients
pass the non-differentiable lookup straight through (van den Oord et al. 2017), the codebook term pulls codewords
towards the encoder outputs and the commitment term keeps the encoder outputs near their codewords.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class VectorQuantiser(nn.Module):
    """Nearest-codeword quantiser with straight-through gradients and dead-codeword restarts.

    Parameters
    ----------
    codebook_size : int
        Number of codewords K.
    dim : int
        Length of a codeword (here the temporal length of one encoder feature map after downsampling).

    Notes
    -----
    The seed initialises the codebook uniformly; here :meth:`initialise` seeds it with encoder outputs of the first
    training batch (codewords start where the data are, so none starts dead), and :meth:`restart_dead` moves
    codewords that no vector chose during an epoch onto randomly picked encoder outputs, a common remedy for
    codebook collapse (e.g. Jukebox, SoundStream).
    """

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.codebook = nn.Parameter(
            torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        )
        self.register_buffer("usage", torch.zeros(codebook_size))  # codeword counts since the last restart

    def nearest(self, latents: Tensor) -> Tensor:
        """Index of the nearest codeword, (..., dim) -> (...) int64."""
        flat = latents.reshape(-1, self.dim)
        # |z - c|^2 = |z|^2 - 2 z.c + |c|^2; |z|^2 does not change the argmin
        distances = self.codebook.pow(2).sum(1)[None, :] - 2.0 * flat @ self.codebook.t()
        return distances.argmin(dim=1).reshape(latents.shape[:-1])

    def lookup(self, indices: Tensor) -> Tensor:
        """Codewords of ``indices``, (...) -> (..., dim)."""
        return F.embedding(indices, self.codebook)

    def forward(self, latents: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantise ``latents`` (batch, num_vectors, dim).

        Returns the quantised latents with straight-through gradients (batch, num_vectors, dim), the indices
        (batch, num_vectors) and the loss terms ``{"codebook": ..., "commitment": ...}`` (unweighted).
        """
        indices = self.nearest(latents.detach())
        quantised = self.lookup(indices)
        losses = {
            "codebook": F.mse_loss(quantised, latents.detach()),
            "commitment": F.mse_loss(latents, quantised.detach()),
        }
        if self.training:
            self.usage += torch.bincount(indices.reshape(-1), minlength=self.codebook_size).to(self.usage.dtype)
        # straight-through estimator: the forward pass uses the codeword, the backward pass the identity
        return latents + (quantised - latents).detach(), indices, losses

    @torch.no_grad()
    def initialise(self, latents: Tensor, generator: torch.Generator | None = None) -> None:
        """Set the codebook to randomly chosen rows of ``latents`` (num, dim), repeating rows when there are fewer
        latents than codewords (with a small jitter so that repeated codewords can separate)."""
        flat = latents.reshape(-1, self.dim)
        picks = torch.randint(0, flat.shape[0], (self.codebook_size,), generator=generator).to(flat.device)
        if flat.shape[0] >= self.codebook_size:
            picks = torch.randperm(flat.shape[0], generator=generator)[: self.codebook_size].to(flat.device)
        jitter = 1e-3 * flat.std() * torch.randn(self.codebook_size, self.dim, generator=generator).to(flat.device)
        self.codebook.copy_(flat[picks] + jitter)
        self.usage.zero_()

    @torch.no_grad()
    def initialise_kmeans(self, latents: Tensor, seed: int = 0, max_iter: int = 50) -> None:
        """Set the codebook to k-means centroids of ``latents`` (num, dim) (scikit-learn's ``KMeans``; as the
        k-means initialisation of vector-quantize-pytorch). Falls back to :meth:`initialise` when there are fewer
        distinct latents than codewords."""
        from sklearn.cluster import KMeans

        flat = latents.reshape(-1, self.dim).double().cpu().numpy()
        if len(flat) < 2 * self.codebook_size:
            self.initialise(latents, torch.Generator().manual_seed(seed))
            return
        kmeans = KMeans(self.codebook_size, n_init=1, max_iter=max_iter, random_state=seed).fit(flat)
        self.codebook.copy_(torch.as_tensor(kmeans.cluster_centers_, dtype=self.codebook.dtype))
        self.usage.zero_()

    @torch.no_grad()
    def restart_dead(self, latents: Tensor, generator: torch.Generator | None = None) -> int:
        """Move the codewords unused since the last call onto random rows of ``latents`` (num, dim); reset the
        usage counts; return how many codewords were moved."""
        dead = torch.nonzero(self.usage == 0).flatten()
        if dead.numel():
            flat = latents.reshape(-1, self.dim)
            picks = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator).to(flat.device)
            jitter = 1e-2 * flat.std() * torch.randn(dead.numel(), self.dim, generator=generator).to(flat.device)
            self.codebook[dead] = flat[picks] + jitter
        self.usage.zero_()
        return int(dead.numel())
