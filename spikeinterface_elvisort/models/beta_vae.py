"""ELVISort's beta-VAE (Rokai et al., Figure 1), sized for local snippets.

Encoder: a bidirectional LSTM over time (channels as features) and a Conv2D branch with inception blocks over the
(channels x time) plane, concatenated, then dense layers to the mean and log-variance of a 32-d latent; a second
dense level gives the 8-d upper latent of the hierarchical layout (40 latents in all). Decoder: LSTM, attention,
LSTM. Branches on the latent mean: a classifier (units + one non-spike class) and DEC's clustering layer.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import BetaVAEConfig
from .layers import Inception2d, MaxPool2d, dec_target, gaussian_kl, student_t_assignment


class BetaVAE(nn.Module):
    def __init__(self, config: BetaVAEConfig):
        super().__init__()
        self.config = config.validate()
        c = config
        total_latent = c.latent_dim + c.upper_latent_dim

        # LSTMs step over frames of `frame` consecutive samples (lossless, and 3x fewer sequential steps on CPUs)
        self.frame = c.samples_per_step
        self.num_steps = -(-c.num_samples // self.frame)
        # encoder branch A: BiLSTM over time, channels as features
        self.lstm = nn.LSTM(c.num_channels * self.frame, c.lstm_hidden, batch_first=True, bidirectional=True)
        # encoder branch B: Conv2D + inception blocks over (channels x time); a strided stem keeps it cheap on CPUs
        conv = [
            nn.Conv2d(1, c.conv_channels, (3, 5), stride=(1, self.frame), padding=(1, 2)),
            nn.BatchNorm2d(c.conv_channels),
            nn.ReLU(),
        ]
        width = c.conv_channels
        for index in range(c.num_inception_blocks):
            block = Inception2d(width, c.conv_channels)
            conv.append(block)
            width = block.out_channels
            if index == 0:
                conv.append(MaxPool2d((1, 2)))
        pooled = (min(c.num_channels, 4), 4)
        conv += [nn.Dropout(c.dropout), nn.AdaptiveAvgPool2d(pooled), nn.Flatten()]
        self.conv = nn.Sequential(*conv)
        encoder_features = 2 * c.lstm_hidden + width * pooled[0] * pooled[1]

        self.to_latent = nn.Sequential(nn.Linear(encoder_features, 128), nn.ReLU(), nn.Linear(128, 2 * c.latent_dim))
        # hierarchical layout: q(z2 | z1) and the learned prior p(z1 | z2)
        self.to_upper = nn.Sequential(nn.Linear(c.latent_dim, 64), nn.ReLU(), nn.Linear(64, 2 * c.upper_latent_dim))
        self.upper_prior = nn.Sequential(
            nn.Linear(c.upper_latent_dim, 64), nn.ReLU(), nn.Linear(64, 2 * c.latent_dim)
        )

        # decoder: LSTM -> attention -> LSTM (training only)
        self.decoder_input = nn.Linear(total_latent, c.decoder_hidden)
        self.decoder_position = nn.Parameter(torch.zeros(self.num_steps, c.decoder_hidden))
        self.decoder_lstm1 = nn.LSTM(c.decoder_hidden, c.decoder_hidden, batch_first=True)
        self.decoder_attention = nn.MultiheadAttention(c.decoder_hidden, c.attention_heads, batch_first=True)
        self.decoder_attention_norm = nn.LayerNorm(c.decoder_hidden)
        self.decoder_lstm2 = nn.LSTM(c.decoder_hidden, c.decoder_hidden, batch_first=True)
        self.decoder_output = nn.Linear(c.decoder_hidden, c.num_channels * self.frame)

        self.classifier = self._make_classifier(c.num_classes)
        self.centres = nn.Parameter(torch.zeros(c.num_clusters, total_latent + 2)) if c.num_clusters else None

    def _make_classifier(self, num_classes: int) -> nn.Module | None:
        if not num_classes:
            return None
        c = self.config
        return nn.Sequential(
            nn.Linear(c.latent_dim + c.upper_latent_dim + 2, c.classifier_hidden),
            nn.ReLU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.classifier_hidden, num_classes),
        )

    # -- heads that are sized after clustering -------------------------------------------------------------------
    def set_num_classes(self, num_classes: int) -> None:
        """(Re)create the classifier branch for ``num_classes`` outputs (units + the non-spike class)."""
        self.config = replace(self.config, num_classes=int(num_classes))
        self.classifier = self._make_classifier(num_classes)
        if self.classifier is not None:
            self.classifier.to(self.decoder_position.device)

    def set_centres(self, centres: Tensor | None) -> None:
        """(Re)initialise DEC's cluster centres in the embedding space, (num_clusters, latent_dim + upper_latent_dim + 2)."""
        num_clusters = 0 if centres is None else int(centres.shape[0])
        self.config = replace(self.config, num_clusters=num_clusters)
        if centres is None:
            self.centres = None
        else:
            self.centres = nn.Parameter(torch.as_tensor(centres, dtype=torch.float32).to(self.decoder_position.device))

    # -- encoder ---------------------------------------------------------------------------------------------------
    def _encode_distribution(self, snippets: Tensor) -> tuple[Tensor, Tensor]:
        x = snippets / self.config.input_scale  # (batch, num_samples, num_channels)
        _, (hidden, _) = self.lstm(self._to_frames(x))  # hidden: (2 directions, batch, lstm_hidden)
        lstm_features = torch.cat([hidden[0], hidden[1]], dim=1)
        conv_features = self.conv(x.transpose(1, 2).unsqueeze(1))  # Conv2d wants (batch, 1, channels, time)
        mu, logvar = self.to_latent(torch.cat([lstm_features, conv_features], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def _to_frames(self, x: Tensor) -> Tensor:
        # (batch, num_samples, channels) -> (batch, num_steps, frame * channels), zero-padded at the end
        pad = self.num_steps * self.frame - x.shape[1]
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(x.shape[0], self.num_steps, self.frame * x.shape[2])

    def _upper(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_upper(z1).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def encode(self, snippets: Tensor) -> Tensor:
        """Deterministic latents: means of both levels, (batch, num_samples, num_channels) -> (batch, 40)."""
        mu1, _ = self._encode_distribution(snippets)
        mu2, _ = self._upper(mu1)
        return torch.cat([mu1, mu2], dim=1)

    def embed(self, latents: Tensor, positions: Tensor) -> Tensor:
        """Latent means plus the event's position: a local snippet does not know where on the probe it was cut,
        so two units of the same shape far apart differ only by this side feature.
        (batch, 40), (batch, 2) in um -> (batch, 42)"""
        return torch.cat([latents, positions / self.config.position_scale_um], dim=1)

    def classify(self, snippets: Tensor, positions: Tensor) -> Tensor:
        """Classifier logits, (batch, num_samples, num_channels), (batch, 2) -> (batch, num_classes); the last class
        is the non-spike class."""
        if self.classifier is None:
            raise RuntimeError("the classifier branch has no classes yet: train it (set_num_classes) first")
        return self.classifier(self.embed(self.encode(snippets), positions))

    def soft_assignment(self, embedding: Tensor) -> Tensor:
        """DEC soft assignment of embeddings (batch, 42) to the centres -> (batch, num_clusters)."""
        return student_t_assignment(embedding, self.centres, self.config.dec_alpha)

    # -- decoder ---------------------------------------------------------------------------------------------------
    def decode(self, latents: Tensor) -> Tensor:
        """(batch, 40) -> reconstruction (batch, num_samples, num_channels), in input units."""
        h = self.decoder_input(latents).unsqueeze(1) + self.decoder_position  # (batch, num_steps, hidden)
        h, _ = self.decoder_lstm1(h)
        attended, _ = self.decoder_attention(h, h, h, need_weights=False)
        h = self.decoder_attention_norm(h + attended)
        h, _ = self.decoder_lstm2(h)
        frames = self.decoder_output(h)  # (batch, num_steps, frame * num_channels)
        x = frames.reshape(frames.shape[0], self.num_steps * self.frame, self.config.num_channels)
        return x[:, : self.config.num_samples] * self.config.input_scale

    # -- training --------------------------------------------------------------------------------------------------
    def forward(
        self,
        snippets: Tensor,
        labels: Tensor | None = None,
        positions: Tensor | None = None,
        reconstruct: bool = True,
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Reconstruction and the named, unweighted loss terms (the training loop weights and sums them).

        With ``positions`` (batch, 2) in um: ``labels`` (batch,) with -1 for unlabelled events adds the
        "classification" term, and DEC centres, when set, add the "dec" term (KL of the sharpened target from the
        soft assignment). ``reconstruct=False`` skips the decoder and the VAE terms (the heads then read the
        encoder's means), for training the encoder and the classifier branch alone.
        """
        mu1, logvar1 = self._encode_distribution(snippets)
        if not reconstruct:
            mu2, _ = self._upper(mu1)
            return self._head_losses(None, {}, torch.cat([mu1, mu2], dim=1), labels, positions)
        z1 = mu1 + torch.randn_like(mu1) * (0.5 * logvar1).exp() if self.training else mu1
        mu2, logvar2 = self._upper(z1)
        z2 = mu2 + torch.randn_like(mu2) * (0.5 * logvar2).exp() if self.training else mu2
        prior_mu, prior_logvar = self.upper_prior(z2).chunk(2, dim=1)
        prior_logvar = prior_logvar.clamp(-12.0, 8.0)

        reconstruction = self.decode(torch.cat([z1, z2], dim=1))
        noise = self.config.noise_level
        losses = {
            # eq. 2: squared error summed over the snippet, averaged over the batch; in noise units it reads as a
            # Gaussian log-likelihood with the noise's variance, so beta keeps its meaning whatever the gain
            "reconstruction": ((reconstruction - snippets) / noise).pow(2).sum(dim=(1, 2)).mean(),
            "kl": (gaussian_kl(mu1, logvar1, prior_mu, prior_logvar) + gaussian_kl(mu2, logvar2)).mean(),
        }
        return self._head_losses(reconstruction, losses, torch.cat([mu1, mu2], dim=1), labels, positions)

    def _head_losses(self, reconstruction, losses, means, labels, positions):
        if positions is None:
            return reconstruction, losses
        embedding = self.embed(means, positions)
        if labels is not None and self.classifier is not None:
            known = labels >= 0
            if bool(known.any()):
                logits = self.classifier(embedding[known])
                losses["classification"] = F.cross_entropy(logits, labels[known])
        if self.centres is not None:
            q = self.soft_assignment(embedding)
            losses["dec"] = F.kl_div(q.clamp_min(1e-12).log(), dec_target(q).detach(), reduction="batchmean")
        return reconstruction, losses
