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


class ResidualVectorQuantiser(nn.Module):
    """``n_stages`` vector quantisers in cascade (residual VQ, as in SoundStream): the first quantises each latent
    vector, every further stage quantises what the previous stages left; the quantised vector is the sum of the
    chosen codewords, and each vector costs ``n_stages`` indices.

    With ``n_stages=1`` this is a single :class:`VectorQuantiser`. Later stages let the code carry what one
    codebook cannot: within a stage-1 cell, the spike's own deviation from the cell's mean, noise included.

    Parameters
    ----------
    codebook_size : int
        Codewords K of each stage.
    dim : int
        Length of a codeword.
    n_stages : int, default: 1
        Number of cascaded quantisers.
    """

    def __init__(self, codebook_size: int, dim: int, n_stages: int = 1):
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.n_stages = n_stages
        self.stages = nn.ModuleList(VectorQuantiser(codebook_size, dim) for _ in range(n_stages))

    def _residuals(self, latents: Tensor) -> tuple[Tensor, list[Tensor]]:
        # indices (..., n_stages) and the input of every stage (flattened to (num, dim))
        residual = latents.reshape(-1, self.dim)
        inputs, indices = [], []
        for stage in self.stages:
            inputs.append(residual)
            index = stage.nearest(residual)
            residual = residual - stage.lookup(index)
            indices.append(index)
        return torch.stack(indices, dim=-1).reshape(*latents.shape[:-1], self.n_stages), inputs

    def nearest(self, latents: Tensor) -> Tensor:
        """Greedy residual codes, (..., dim) -> (..., n_stages) int64."""
        return self._residuals(latents)[0]

    def lookup(self, indices: Tensor) -> Tensor:
        """Sum of the stages' codewords, (..., n_stages) -> (..., dim)."""
        return sum(stage.lookup(indices[..., s]) for s, stage in enumerate(self.stages))

    def forward(self, latents: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantise ``latents`` (batch, num_vectors, dim).

        Returns the quantised latents with straight-through gradients, the indices (batch, num_vectors, n_stages)
        and the loss terms: ``codebook`` (each stage's codewords towards the residual they quantise, summed over
        the stages) and ``commitment`` (the encoder outputs towards their full quantised vector).
        """
        indices, inputs = self._residuals(latents.detach())
        flat_indices = indices.reshape(-1, self.n_stages)
        codebook = 0.0
        for s, stage in enumerate(self.stages):
            codebook = codebook + F.mse_loss(stage.lookup(flat_indices[:, s]), inputs[s])
            if self.training:
                stage.usage += torch.bincount(flat_indices[:, s], minlength=self.codebook_size).to(stage.usage.dtype)
        quantised = self.lookup(indices)
        losses = {"codebook": codebook, "commitment": F.mse_loss(latents, quantised.detach())}
        return latents + (quantised - latents).detach(), indices, losses

    @torch.no_grad()
    def _stagewise(self, latents: Tensor, start) -> None:
        residual = latents.reshape(-1, self.dim)
        for s, stage in enumerate(self.stages):
            start(stage, residual, s)
            residual = residual - stage.lookup(stage.nearest(residual))

    def initialise(self, latents: Tensor, generator: torch.Generator | None = None) -> None:
        """Each stage's codebook from random rows of what the previous stages leave of ``latents`` (num, dim)."""
        self._stagewise(latents, lambda stage, residual, s: stage.initialise(residual, generator))

    def initialise_kmeans(self, latents: Tensor, seed: int = 0, max_iter: int = 50) -> None:
        """Each stage's codebook as k-means centroids of what the previous stages leave (residual k-means)."""
        self._stagewise(latents, lambda stage, residual, s: stage.initialise_kmeans(residual, seed + s, max_iter))

    @torch.no_grad()
    def restart_dead(self, latents: Tensor, generator: torch.Generator | None = None) -> int:
        """Restart each stage's unused codewords on random residuals of that stage; return how many moved."""
        moved = [0]

        def restart(stage, residual, s):
            moved[0] += stage.restart_dead(residual, generator)

        self._stagewise(latents, restart)
        return moved[0]
