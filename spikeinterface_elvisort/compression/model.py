"""The compressive autoencoder of seed 004 (Wu et al., section 2.2, Figure 2, Tables 2-3).

Encoder (the on-implant part, with the quantiser): a 1x1 convolution expands the ``channels_per_group`` input
channels to 256 features, two ResNeXt bottleneck stages (32 groups) each followed by 2x temporal downsampling, and a
1x1 convolution reduces to ``n_features`` feature maps. Each feature map (length ``ceil(num_samples / 4)``) is one
vector for the quantiser, so an input costs ``n_features`` codeword indices (times ``residual_stages``). The decoder
(run off-implant) mirrors the encoder with transposed convolutions and upsampling, with plain (ungrouped) residual
blocks. With ``codeword_outputs``, the decoder also adds a learned waveform per (index position, codeword): with one
index per input, setting it to the mean spike of each codeword (``training.fit_codeword_outputs``) makes the decoder
reproduce k-means' centroid step exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .quantiser import ResidualVectorQuantiser


@dataclass
class CompressorConfig:
    """Architecture of :class:`CompressiveAutoencoder`; the defaults are those of :class:`AutoencoderCompressor`."""

    num_samples: int  # samples per spike (time)
    channels_per_group: int = 4  # M_spk: adjacent channels sharing one input
    n_features: int = 2  # N_feat: feature maps after the encoder = codeword indices per input
    codebook_size: int = 64  # K
    width: int = 256  # features after the 1x1 expansion (seed: 256)
    groups: int = 32  # groups of the ResNeXt convolutions (seed: 32)
    decoder_width: int = 64  # features in the decoder's residual blocks (seed: 256)
    reconstruction_loss: str = "mse"  # "relative": |x - x_hat|^2 / |x|^2 per spike; "mse": the seed's MSE
    residual_stages: int = 1  # quantisers per feature map, each coding what the ones before left
    ema_decay: float | None = 0.99  # None: codebook trained by gradient; else its moving-average decay per batch
    codeword_outputs: bool = True  # the decoder adds a learned waveform per (index position, codeword)

    @property
    def codes_per_input(self) -> int:
        """Codeword indices per input: ``n_features * residual_stages``."""
        return self.n_features * self.residual_stages

    @property
    def padded_samples(self) -> int:
        """``num_samples`` rounded up to a multiple of 4 (two 2x downsamplings)."""
        return -(-self.num_samples // 4) * 4

    @property
    def code_dim(self) -> int:
        """Length of one feature map after the encoder, i.e. of one codeword."""
        return self.padded_samples // 4

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        for name in ("num_samples", "channels_per_group", "n_features", "codebook_size", "width", "groups",
                     "residual_stages"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.width % (2 * self.groups):
            raise ValueError(
                f"width ({self.width}) must be a multiple of 2 * groups ({2 * self.groups}): the ResNeXt bottleneck "
                "halves the width and splits it into groups"
            )
        if self.reconstruction_loss not in ("relative", "mse"):
            raise ValueError(f"reconstruction_loss must be 'relative' or 'mse', got {self.reconstruction_loss!r}")
        if not isinstance(self.decoder_width, int) or self.decoder_width < 1:
            raise ValueError(f"decoder_width must be a positive integer, got {self.decoder_width!r}")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, float) and 0.0 < self.ema_decay < 1.0):
            raise ValueError(f"ema_decay must be None or a number in (0, 1), got {self.ema_decay!r}")


class ResNeXtBlock(nn.Module):
    """Bottleneck residual block with grouped convolutions: 1x1 (width -> width/2), 1x3, 1x1 (width/2 -> width),
    all with ``groups`` groups (as counted in the seed's Table 2), batch norm, identity shortcut."""

    def __init__(self, width: int, groups: int):
        super().__init__()
        half = width // 2
        self.body = nn.Sequential(
            nn.Conv1d(width, half, 1, groups=groups, bias=False),
            nn.BatchNorm1d(half),
            nn.ReLU(),
            nn.Conv1d(half, half, 3, padding=1, groups=groups, bias=False),
            nn.BatchNorm1d(half),
            nn.ReLU(),
            nn.Conv1d(half, width, 1, groups=groups, bias=False),
            nn.BatchNorm1d(width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class ResidualDeconvBlock(nn.Module):
    """Decoder block: two 1x3 transposed convolutions (ungrouped, seed section 2.2), identity shortcut."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ConvTranspose1d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.ConvTranspose1d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm1d(width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class CompressiveAutoencoder(nn.Module):
    """ResNeXt encoder, vector quantiser and transposed-convolution decoder.

    Inputs are spike groups (batch, num_samples, channels_per_group), channels in spatial order, already scaled
    (:class:`AutoencoderCompressor` divides by a scale learned at ``fit``).
    """

    def __init__(self, config: CompressorConfig):
        super().__init__()
        config.validate()
        self.config = config
        width, groups = config.width, config.groups
        self.encoder = nn.Sequential(
            nn.Conv1d(config.channels_per_group, width, 1, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            ResNeXtBlock(width, groups),
            nn.AvgPool1d(2),
            ResNeXtBlock(width, groups),
            nn.AvgPool1d(2),
            nn.Conv1d(width, config.n_features, 1, bias=False),
            nn.BatchNorm1d(config.n_features),
        )
        self.quantiser = ResidualVectorQuantiser(
            config.codebook_size, config.code_dim, config.residual_stages, config.ema_decay
        )
        dwidth = config.decoder_width
        self.decoder = nn.Sequential(
            nn.ConvTranspose1d(config.n_features, dwidth, 1, bias=False),
            nn.BatchNorm1d(dwidth),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            ResidualDeconvBlock(dwidth),
            nn.Upsample(scale_factor=2),
            ResidualDeconvBlock(dwidth),
            nn.ConvTranspose1d(dwidth, config.channels_per_group, 1),
        )
        if config.codeword_outputs:
            # (index position, codeword, channels * padded_samples): added to the decoder's output
            self.codeword_outputs = nn.Parameter(
                torch.zeros(config.codes_per_input, config.codebook_size,
                            config.channels_per_group * config.padded_samples)
            )

    def latents(self, spikes: Tensor) -> Tensor:
        """Encoder outputs before quantisation, (batch, num_samples, channels) -> (batch, n_features, code_dim)."""
        pad = self.config.padded_samples - spikes.shape[1]
        x = spikes.transpose(1, 2)  # Conv1d wants (batch, channels, time)
        if pad:
            x = F.pad(x, (0, pad))
        return self.encoder(x)

    def encode(self, spikes: Tensor) -> Tensor:
        """Codeword indices, (batch, num_samples, channels) -> (batch, codes_per_input) int64, feature-major (the
        ``residual_stages`` indices of feature map 0 first)."""
        indices = self.quantiser.nearest(self.latents(spikes))  # (batch, n_features, stages)
        return indices.reshape(len(indices), -1)

    def decode(self, indices: Tensor) -> Tensor:
        """Reconstruction from indices, (batch, codes_per_input) -> (batch, num_samples, channels)."""
        return self.synthesis(self.quantised(indices), indices)

    def quantised(self, indices: Tensor) -> Tensor:
        """The decoder's input for ``indices`` (batch, codes_per_input): (batch, n_features, code_dim)."""
        config = self.config
        return self.quantiser.lookup(indices.reshape(len(indices), config.n_features, config.residual_stages))

    def synthesis(self, quantised: Tensor, indices: Tensor | None = None) -> Tensor:
        """The decoder: (batch, n_features, code_dim) -> (batch, num_samples, channels); with
        ``codeword_outputs``, plus the waveforms of ``indices`` (batch, codes_per_input) when given."""
        out = self.decoder(quantised)  # (batch, channels, padded_samples)
        if indices is not None and self.config.codeword_outputs:
            out = out + self.codeword_output(indices).reshape(out.shape)
        return out[:, :, : self.config.num_samples].transpose(1, 2)

    def codeword_output(self, indices: Tensor) -> Tensor:
        """Sum over index positions of their codewords' learned waveforms, (batch, codes_per_input) ->
        (batch, channels * padded_samples)."""
        positions = torch.arange(indices.shape[1], device=indices.device)
        return self.codeword_outputs[positions[None, :], indices].sum(dim=1)

    def forward(self, spikes: Tensor, quantise: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction and the unweighted loss terms ``{"reconstruction", "codebook", "commitment"}`` (no
        "codebook" term with an EMA codebook).

        ``quantise=False`` skips the quantiser (a plain autoencoder: the warm-up epochs of
        :meth:`AutoencoderCompressor.fit`) and reports the reconstruction term only.

        With ``reconstruction_loss="relative"`` the reconstruction term is the mean over spikes of
        ``|x - x_hat|^2 / |x|^2`` (each spike counts alike, as in the mean SNDR the compressor is judged by); with
        "mse" it is the seed's mean squared error, where the largest spikes dominate.
        """
        latents = self.latents(spikes)
        indices = None
        if quantise:
            latents, indices, losses = self.quantiser(latents)
            indices = indices.reshape(len(indices), -1)
        else:
            losses = {}
        reconstruction = self.synthesis(latents, indices)
        return reconstruction, {"reconstruction": self.reconstruction_error(reconstruction, spikes), **losses}

    def reconstruction_error(self, reconstruction: Tensor, spikes: Tensor) -> Tensor:
        """The reconstruction term of the loss (``config.reconstruction_loss``), a scalar."""
        if self.config.reconstruction_loss == "mse":
            return F.mse_loss(reconstruction, spikes)
        error = (reconstruction - spikes).pow(2).sum(dim=(1, 2))
        energy = spikes.pow(2).sum(dim=(1, 2)).clamp_min(1e-6)
        return (error / energy).mean()
