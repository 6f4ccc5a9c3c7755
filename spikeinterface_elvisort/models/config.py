"""Model configs: plain dataclasses, importable without torch (parameter validation uses them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BetaVAEConfig:
    """Hyper-parameters of :class:`~spikeinterface_elvisort.models.BetaVAE` (ELVISort, Figure 1 of the paper)."""

    num_samples: int  # snippet length (time); set from the data
    num_channels: int  # channels per snippet; set from the data
    num_classes: int = 0  # classifier outputs: units + 1 non-spike class; set after clustering
    num_clusters: int = 0  # DEC centres; set after clustering
    input_scale: float = 1.0  # snippets are divided by this (their std, set from the data) before the network
    noise_level: float = 1.0  # reconstruction errors are measured in this unit (the recording's noise level)
    latent_dim: int = 32  # lower latent (the paper's 32)
    upper_latent_dim: int = 8  # upper latent of the hierarchical layout (the paper's 8; 40 latents in all)
    beta: float = 15.0  # weight of the KL term (beta=1 is a plain VAE; the paper uses 15)
    # LSTMs read/write frames of this many samples per step, and the conv stem strides by it in time: fewer
    # sequential steps and smaller maps (5 against 3: training 35-40 % faster, accuracy held or better on nine
    # benchmark recordings, docs/benchmark_results.rst)
    samples_per_step: int = 5
    lstm_hidden: int = 32  # hidden size per direction of the encoder BiLSTM
    conv_channels: int = 16  # width of the Conv2D / inception branch
    num_inception_blocks: int = 4  # GoogLeNet building blocks in the conv branch (the paper's 4)
    decoder_hidden: int = 48  # hidden size of the decoder LSTMs
    attention_heads: int = 4  # heads of the attention layer between the decoder LSTMs
    dropout: float = 0.5  # dropout in the conv branch and classifier (the paper's 0.5)
    classifier_hidden: int = 64
    dec_alpha: float = 1.0  # degrees of freedom of DEC's Student-t kernel
    position_scale_um: float = 40.0  # event positions (side features of the classifier and DEC) are divided by this

    # set by the pipeline from the data, not by users
    derived_fields = frozenset(
        {"num_samples", "num_channels", "num_classes", "num_clusters", "input_scale", "noise_level"}
    )

    def validate(self) -> "BetaVAEConfig":
        positive_ints = ("samples_per_step", "latent_dim", "upper_latent_dim", "lstm_hidden", "conv_channels", "decoder_hidden",
                         "attention_heads", "classifier_hidden")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model_kwargs['{name}']={value!r} must be an integer >= 1")
        if not isinstance(self.num_inception_blocks, int) or not 0 <= self.num_inception_blocks <= 8:
            raise ValueError(f"model_kwargs['num_inception_blocks']={self.num_inception_blocks!r} must be 0..8")
        if self.decoder_hidden % self.attention_heads:
            raise ValueError(
                f"model_kwargs: decoder_hidden={self.decoder_hidden} must be a multiple of "
                f"attention_heads={self.attention_heads}"
            )
        for name, low, high in (
            ("beta", 0.0, 1e4),
            ("dropout", 0.0, 0.95),
            ("dec_alpha", 1e-3, 1e3),
            ("position_scale_um", 1e-3, 1e6),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"model_kwargs['{name}']={value!r} must be a number between {low} and {high}")
        return self


def _default_depths() -> list:
    return [2, 3, 4]


@dataclass
class SemiSupervisedAEConfig:
    """Hyper-parameters of :class:`~spikeinterface_elvisort.models.SemiSupervisedAE`, the ``ssae`` ensemble (seed
    001, v1): convolutional autoencoders whose encoders have ``depths`` dense layers each, a small latent, a decoder
    each and an MLP classification head on each latent."""

    num_samples: int  # snippet length (time); set from the data
    num_channels: int  # channels per snippet; set from the data
    num_classes: int = 0  # classes of the labelled (hybrid) set; set from the data, 0 = no head
    input_scale: float = 1.0  # snippets are divided by this (their std, set from the data) before the network
    latent_dim: int = 6  # the seed's encoders go down to 3; 3 to 8 keeps the latent small enough for a GMM
    depths: list = field(default_factory=_default_depths)  # dense layers per member's encoder (the seed's 2, 3, 4)
    conv_channels: int = 16  # width of the convolutional front end
    hidden: int = 64  # width of the first dense layer; each further layer halves it
    classifier_hidden: int = 32  # hidden width of the MLP head

    derived_fields = frozenset({"num_samples", "num_channels", "num_classes", "input_scale"})

    def validate(self) -> "SemiSupervisedAEConfig":
        for name in ("conv_channels", "hidden", "classifier_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model_kwargs['{name}']={value!r} must be an integer >= 1")
        if isinstance(self.latent_dim, bool) or not isinstance(self.latent_dim, int) or not 2 <= self.latent_dim <= 32:
            raise ValueError(f"model_kwargs['latent_dim']={self.latent_dim!r} must be an integer between 2 and 32")
        depths = self.depths
        if (
            not isinstance(depths, (list, tuple))
            or not depths
            or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 8 for d in depths)
        ):
            raise ValueError(f"model_kwargs['depths']={depths!r} must be a non-empty list of integers between 1 and 8")
        return self


@dataclass
class CleanerConfig:
    """Hyper-parameters of :class:`~spikeinterface_elvisort.models.Cleaner`, NeuralSorter's event-or-noise CNN."""

    num_samples: int  # snippet length (time); set from the data
    num_channels: int  # channels per snippet; set from the data
    conv_channels: int = 16
    hidden: int = 32

    derived_fields = frozenset({"num_samples", "num_channels"})

    def validate(self) -> "CleanerConfig":
        for name in ("num_samples", "num_channels", "conv_channels", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"cleaner config {name}={value!r} must be an integer >= 1")
        return self
