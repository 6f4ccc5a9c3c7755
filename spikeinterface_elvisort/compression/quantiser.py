"""Vector quantiser of the compressive autoencoder (seed 004, section 2.3).

Each latent vector is replaced by its nearest codeword; only the codeword's index leaves the implant. Gradients
pass the non-differentiable lookup straight through (van den Oord et al. 2017), the codebook term pulls codewords
towards the encoder outputs (or, with ``ema_decay``, each codeword follows an exponential moving average of the
outputs it is chosen for) and the commitment term keeps the encoder outputs near their codewords.
``ResidualVectorQuantiser`` chains quantisers, each coding what the ones before it left (residual codes).
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
    ema_decay : float | None, default: None
        None: the codewords are trained by gradient (the codebook loss term). A number in (0, 1): each codeword is
        the moving average, with this decay per training batch, of the encoder outputs that chose it (VQ-VAE's
        appendix, SoundStream), with no codebook loss term; 0.99 is usual.

    Notes
    -----
    The seed initialises the codebook uniformly; here :meth:`initialise` seeds it with encoder outputs of the first
    training batch (codewords start where the data are, so none starts dead), and :meth:`restart_dead` moves
    codewords that no vector chose during an epoch onto randomly picked encoder outputs, a common remedy for
    codebook collapse (e.g. Jukebox, SoundStream).
    """

    def __init__(self, codebook_size: int, dim: int, ema_decay: float | None = None):
        super().__init__()
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be None or a number in (0, 1), got {ema_decay!r}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.ema_decay = ema_decay
        self.codebook = nn.Parameter(
            torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size),
            requires_grad=ema_decay is None,
        )
        self.register_buffer("usage", torch.zeros(codebook_size))  # codeword counts since the last restart
        if ema_decay is not None:
            # moving averages of each codeword's count and of the sum of the outputs that chose it
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", self.codebook.detach().clone())

    @torch.no_grad()
    def _reset_ema(self, rows: Tensor | None = None) -> None:
        # after the codebook was set by hand: the moving averages restart from the new codewords (weight 1)
        if self.ema_decay is None:
            return
        rows = torch.arange(self.codebook_size, device=self.codebook.device) if rows is None else rows
        self.ema_count[rows] = 1.0
        self.ema_sum[rows] = self.codebook[rows]

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, indices: Tensor) -> None:
        decay = self.ema_decay
        counts = torch.bincount(indices, minlength=self.codebook_size).to(flat.dtype)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)
        self.ema_count.mul_(decay).add_(counts, alpha=1.0 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
        # Laplace smoothing keeps a codeword nobody chose where it was (its sum and count decay together)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (total + self.codebook_size * 1e-5) * total
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

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
        (batch, num_vectors) and the loss terms ``{"codebook": ..., "commitment": ...}`` (unweighted; no
        "codebook" term with ``ema_decay``). In training mode with ``ema_decay``, the codebook moves after the
        lookup.
        """
        indices = self.nearest(latents.detach())
        quantised = self.lookup(indices)
        losses = {"commitment": F.mse_loss(latents, quantised.detach())}
        if self.ema_decay is None:
            losses["codebook"] = F.mse_loss(quantised, latents.detach())
        if self.training:
            self.usage += torch.bincount(indices.reshape(-1), minlength=self.codebook_size).to(self.usage.dtype)
            if self.ema_decay is not None:
                self._ema_update(latents.detach().reshape(-1, self.dim), indices.reshape(-1))
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
        self._reset_ema()

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
        self._reset_ema()

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
            self._reset_ema(dead)
        self.usage.zero_()
        return int(dead.numel())


class ResidualVectorQuantiser(nn.Module):
    """``stages`` vector quantisers in a chain: the first codes the latent vector, each next one what the ones
    before it left (residual vector quantisation, as in SoundStream); the quantised vector is the sum of the chosen
    codewords, one index per stage. ``stages=1`` is a plain :class:`VectorQuantiser`.

    Parameters
    ----------
    codebook_size, dim, ema_decay
        As :class:`VectorQuantiser`, for every stage.
    stages : int, default: 1
    """

    def __init__(self, codebook_size: int, dim: int, stages: int = 1, ema_decay: float | None = None):
        super().__init__()
        if not isinstance(stages, int) or stages < 1:
            raise ValueError(f"stages must be a positive integer, got {stages!r}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.stages = nn.ModuleList(VectorQuantiser(codebook_size, dim, ema_decay) for _ in range(stages))

    def nearest(self, latents: Tensor) -> Tensor:
        """Index per stage, (..., dim) -> (..., stages) int64."""
        residual, indices = latents, []
        for stage in self.stages:
            index = stage.nearest(residual)
            residual = residual - stage.lookup(index)
            indices.append(index)
        return torch.stack(indices, dim=-1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Sum of the stages' codewords, (..., stages) -> (..., dim)."""
        return sum(stage.lookup(indices[..., s]) for s, stage in enumerate(self.stages))

    def forward(self, latents: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """As :meth:`VectorQuantiser.forward`; indices (batch, num_vectors, stages), loss terms summed over the
        stages."""
        residual, quantised, indices, losses = latents, 0.0, [], {}
        for stage in self.stages:
            output, index, stage_losses = stage(residual)
            codeword = output.detach()  # the codeword chosen (before an EMA step moved it)
            quantised = quantised + codeword
            residual = residual - codeword
            indices.append(index)
            for name, value in stage_losses.items():
                losses[name] = losses.get(name, 0.0) + value
        return latents + (quantised - latents).detach(), torch.stack(indices, dim=-1), losses

    def _residuals(self, latents: Tensor):
        # (stage, what the stages before it left), the stage's own codewords as they are now
        residual = latents.reshape(-1, self.dim)
        for stage in self.stages:
            yield stage, residual
            residual = residual - stage.lookup(stage.nearest(residual))

    @torch.no_grad()
    def initialise(self, latents: Tensor, generator: torch.Generator | None = None) -> None:
        """:meth:`VectorQuantiser.initialise` stage by stage, each on what the stages before it leave."""
        for stage, residual in self._residuals(latents):
            stage.initialise(residual, generator)

    @torch.no_grad()
    def initialise_kmeans(self, latents: Tensor, seed: int = 0, max_iter: int = 50) -> None:
        """:meth:`VectorQuantiser.initialise_kmeans` stage by stage (residual k-means)."""
        for s, (stage, residual) in enumerate(self._residuals(latents)):
            stage.initialise_kmeans(residual, seed=seed + s, max_iter=max_iter)

    @torch.no_grad()
    def restart_dead(self, latents: Tensor, generator: torch.Generator | None = None) -> int:
        """:meth:`VectorQuantiser.restart_dead` for every stage; returns the codewords moved in all."""
        return sum(stage.restart_dead(residual, generator) for stage, residual in self._residuals(latents))
