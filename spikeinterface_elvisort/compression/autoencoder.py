"""``AutoencoderCompressor``: the scikit-learn style front of the compressive autoencoder (fit, encode, decode,
save)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .entropy_coding import StaticEntropyCoder
from .inputs import check_waveforms, constructor_params
from .model import CompressiveAutoencoder, CompressorConfig
from .training import finetune_decoder, fit_codeword_outputs, train_autoencoder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
# what a format-1 file (written before these settings existed) was fitted with
LEGACY_SETTINGS = {"residual_stages": 1, "ema_decay": None, "codeword_outputs": False}


class AutoencoderCompressor:
    """Vector-quantised compressive autoencoder for spike waveforms (Wu et al. 2018, seed 004).

    Each spike's channels, in spatial order, are split into consecutive groups of ``channels_per_group`` adjacent
    channels; every group goes through the same network and becomes ``n_features * residual_stages`` codeword
    indices, which an entropy coder (probability tables learned at ``fit``) turns into bytes.

    Parameters
    ----------
    channels_per_group : int, default: 4
        Adjacent channels sharing one network input (the seed's M_spk).
    n_features : int, default: 2
        Feature maps after the encoder, i.e. codeword indices per group (the seed's N_feat). Fewer means a higher
        compression ratio and a lower SNDR.
    codebook_size : int, default: 64
        Codewords K of the vector quantiser (of each stage).
    residual_stages : int, default: 1
        Quantisers per feature map, each coding what the ones before it left (residual codes): a group costs
        ``n_features * residual_stages`` indices. More stages: a higher SNDR at more bits.
    ema_decay : float | None, default: 0.99
        A number in (0, 1): each codeword follows the moving average of the encoder outputs that chose it, with
        this decay per batch (faster to settle than by gradient: +1.7 dB at n_features=1, K=16 on dev_rec1, half).
        None: the codebook is trained by gradient with the network (the seed's).
    codeword_outputs : bool, default: True
        The decoder adds a learned waveform per (index position, codeword), set at the k-means start and at the end
        of ``fit`` to the mean spike of each codeword (the k-means centroid step): with ``n_features=1`` and one
        stage the decoder restores every codeword as exactly the mean of the training spikes it codes. Costs
        ``n_features * residual_stages * codebook_size * num_samples * channels_per_group`` decoder weights (off the
        implant).
    epochs : int, default: 16
        Training epochs (Adam, cosine learning-rate decay), the warm-up epochs included.
    warmup_epochs : int, default: 2
        First epochs without the quantiser (a plain autoencoder); the codebook then starts as k-means centroids of
        the encoder outputs. 0: the codebook starts from random encoder outputs and VQ trains from the first step.
    kmeans_refresh_every : int, default: 0
        Every this many VQ epochs (until 80 % of the epochs), reset the codebook to k-means centroids of the encoder
        outputs instead of restarting only the dead codewords; 0: never. A reset moves the codewords under the
        decoder; the decoder-only epochs (``decoder_epochs``) then refit it, so keep those when using this.
    decoder_epochs : int, default: 10
        Epochs that then train the decoder alone on the final codes (encoder and codebook frozen).
    batch_size : int, default: 32
    learning_rate : float, default: 1e-3
        Adam's learning rate (the seed's).
    commitment_weight : float, default: 0.25
        Weight of the commitment term (VQ-VAE's beta); the codebook term (``ema_decay=None`` only) weighs 1.
    width : int, default: 256
        Features after the encoder's 1x1 expansion (the seed's 256).
    decoder_width : int, default: 64
        Features of the decoder's residual blocks (the seed uses 256; 64 keeps CPU training to minutes).
    reconstruction_loss : "relative" | "mse", default: "mse"
        "relative": each spike's squared error over its energy, so that small spikes count as much as large ones
        (as in the mean SNDR); "mse": the seed's mean squared error.
    device : "auto" | "cpu" | "cuda" | "cuda:N", default: "auto"
    random_state : int | None, default: 0
        Seeds the weights, the batch order and the codebook restarts (None: 0, so that fits repeat).
    verbose : bool, default: False
        Show a progress bar over the epochs.

    Attributes
    ----------
    model_ : CompressiveAutoencoder
        The trained network (on the CPU).
    scale_ : float
        Standard deviation of the training waveforms; inputs are divided by it.
    coder_ : StaticEntropyCoder
        The index coder, one probability table per feature position, learned on the training codes.
    history_ : list of dict
        Per epoch: the mean of each loss term and the number of restarted codewords.

    Examples
    --------
    >>> compressor = AutoencoderCompressor(epochs=5).fit(train_waveforms)  # doctest: +SKIP
    >>> codes = compressor.encode(test_waveforms)  # (num_spikes, num_groups, codes_per_group)  # doctest: +SKIP
    >>> restored = compressor.decode(codes)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        channels_per_group: int = 4,
        n_features: int = 2,
        codebook_size: int = 64,
        residual_stages: int = 1,
        ema_decay: float | None = 0.99,
        codeword_outputs: bool = True,
        epochs: int = 16,
        warmup_epochs: int = 2,
        kmeans_refresh_every: int = 0,
        decoder_epochs: int = 10,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        commitment_weight: float = 0.25,
        width: int = 256,
        decoder_width: int = 64,
        reconstruction_loss: str = "mse",
        device: str = "auto",
        random_state: int | None = 0,
        verbose: bool = False,
    ):
        self.channels_per_group = channels_per_group
        self.n_features = n_features
        self.codebook_size = codebook_size
        self.residual_stages = residual_stages
        self.ema_decay = ema_decay
        self.codeword_outputs = codeword_outputs
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.kmeans_refresh_every = kmeans_refresh_every
        self.decoder_epochs = decoder_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.commitment_weight = commitment_weight
        self.width = width
        self.decoder_width = decoder_width
        self.reconstruction_loss = reconstruction_loss
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- helpers -------------------------------------------------------------------------------------------------

    def _check_params(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_epochs, (int, np.integer)) or not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs must be an integer from 0 to epochs - 1 = {self.epochs - 1}, got "
                f"{self.warmup_epochs!r}: lower warmup_epochs or raise epochs"
            )
        if not isinstance(self.kmeans_refresh_every, (int, np.integer)) or self.kmeans_refresh_every < 0:
            raise ValueError(f"kmeans_refresh_every must be a non-negative integer, got {self.kmeans_refresh_every!r}")
        if not isinstance(self.residual_stages, (int, np.integer)) or self.residual_stages < 1:
            raise ValueError(f"residual_stages must be a positive integer, got {self.residual_stages!r}")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float)) and 0 < self.ema_decay < 1):
            raise ValueError(f"ema_decay must be None or a number in (0, 1) such as 0.99, got {self.ema_decay!r}")
        if not isinstance(self.decoder_epochs, (int, np.integer)) or self.decoder_epochs < 0:
            raise ValueError(f"decoder_epochs must be a non-negative integer, got {self.decoder_epochs!r}")
        for name in ("learning_rate", "commitment_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ValueError(
                "this AutoencoderCompressor is not fitted yet: call fit(waveforms) or AutoencoderCompressor.load(path)"
            )

    def _groups(self, waveforms: np.ndarray) -> np.ndarray:
        # (num_spikes, num_samples, G * M) -> (num_spikes * G, num_samples, M): consecutive channels form a group
        num_spikes, num_samples, num_channels = waveforms.shape
        num_groups = num_channels // self.channels_per_group
        grouped = waveforms.reshape(num_spikes, num_samples, num_groups, self.channels_per_group)
        return grouped.transpose(0, 2, 1, 3).reshape(num_spikes * num_groups, num_samples, self.channels_per_group)

    def _check_input(self, waveforms, name="waveforms") -> np.ndarray:
        self._check_fitted()
        array = check_waveforms(waveforms, name, self.channels_per_group)
        if array.shape[1] != self.num_samples_:
            raise ValueError(
                f"{name} has {array.shape[1]} samples per spike but the compressor was fitted on {self.num_samples_}; "
                "cut the spikes with the same window"
            )
        return array

    # -- fit -----------------------------------------------------------------------------------------------------

    def fit(self, waveforms, y=None) -> "AutoencoderCompressor":
        """Train the autoencoder and the entropy coder's tables on ``waveforms``.

        Parameters
        ----------
        waveforms : (num_spikes, num_samples, num_channels) array
            Training spikes, channels in spatial order, ``num_channels`` a multiple of ``channels_per_group``.
        y : None
            Ignored (scikit-learn convention).

        Returns
        -------
        self
        """
        import torch

        from ..device import resolve_device

        self._check_params()
        waveforms = check_waveforms(waveforms, "waveforms", self.channels_per_group)
        if len(waveforms) < 2:
            raise ValueError(f"fit needs at least 2 spikes, got {len(waveforms)}")
        config = CompressorConfig(
            num_samples=int(waveforms.shape[1]),
            channels_per_group=int(self.channels_per_group),
            n_features=self.n_features,
            codebook_size=self.codebook_size,
            residual_stages=self.residual_stages,
            ema_decay=None if self.ema_decay is None else float(self.ema_decay),
            codeword_outputs=bool(self.codeword_outputs),
            width=self.width,
            decoder_width=self.decoder_width,
            reconstruction_loss=self.reconstruction_loss,
        )
        config.validate()
        device = resolve_device(self.device)
        seed = 0 if self.random_state is None else int(self.random_state)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)

        groups = self._groups(waveforms)
        scale = float(groups.std()) or 1.0
        data = torch.as_tensor(groups / scale, dtype=torch.float32, device=device)  # a new array: input untouched
        model = CompressiveAutoencoder(config).to(device)
        history = train_autoencoder(
            model,
            data,
            epochs=self.epochs,
            warmup_epochs=self.warmup_epochs,
            kmeans_refresh_every=self.kmeans_refresh_every,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            commitment_weight=self.commitment_weight,
            seed=seed,
            generator=generator,
            verbose=self.verbose,
        )
        history += finetune_decoder(
            model,
            data,
            epochs=self.decoder_epochs,
            first_epoch=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            generator=generator,
            verbose=self.verbose,
        )
        if config.codeword_outputs:
            fit_codeword_outputs(model, data)
        model.eval()
        self.model_ = model.cpu()
        self.config_ = config
        self.scale_ = scale
        self.num_samples_ = int(waveforms.shape[1])
        self.history_ = history
        codes = self.encode(waveforms)
        positions = config.codes_per_input
        self.coder_ = StaticEntropyCoder([self.codebook_size] * positions).fit(codes.reshape(-1, positions))
        return self

    @property
    def codes_per_group(self) -> int:
        """Codeword indices per channel group: ``n_features * residual_stages``."""
        return self.n_features * self.residual_stages

    # -- encode / decode -----------------------------------------------------------------------------------------

    def _run(self, method: str, inputs: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        import torch

        from ..device import resolve_device

        device = resolve_device(self.device)
        model = self.model_.to(device).eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                batch = torch.as_tensor(np.ascontiguousarray(inputs[start : start + batch_size]), device=device)
                outputs.append(getattr(model, method)(batch).cpu().numpy())
        self.model_ = model.cpu()
        return np.concatenate(outputs) if outputs else None

    def encode(self, waveforms) -> np.ndarray:
        """Codeword indices of each spike.

        Parameters
        ----------
        waveforms : (num_spikes, num_samples, num_channels) array
            Same number of samples per spike as the training spikes; channels in spatial order.

        Returns
        -------
        (num_spikes, num_groups, codes_per_group) int64
            ``num_groups = num_channels // channels_per_group``; ``codes_per_group = n_features * residual_stages``
            (the stages of feature map 0 first).
        """
        waveforms = self._check_input(waveforms)
        num_groups = waveforms.shape[2] // self.channels_per_group
        if len(waveforms) == 0:
            return np.zeros((0, num_groups, self.codes_per_group), dtype=np.int64)
        groups = (self._groups(waveforms) / self.scale_).astype(np.float32)
        codes = self._run("encode", groups)
        return codes.reshape(len(waveforms), num_groups, self.codes_per_group).astype(np.int64)

    def decode(self, codes) -> np.ndarray:
        """Reconstruct spikes from codeword indices.

        Parameters
        ----------
        codes : (num_spikes, num_groups, codes_per_group) int array
            As returned by :meth:`encode`.

        Returns
        -------
        (num_spikes, num_samples, num_groups * channels_per_group) float32
        """
        self._check_fitted()
        codes = np.asarray(codes)
        if codes.ndim != 3 or codes.shape[2] != self.codes_per_group:
            raise ValueError(
                f"codes must be (num_spikes, num_groups, {self.codes_per_group}), got shape {codes.shape}"
            )
        if codes.size and (
            not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0 or codes.max() >= self.codebook_size
        ):
            raise ValueError(f"codes must be integers in 0 ... {self.codebook_size - 1} (codebook_size)")
        num_spikes, num_groups, _ = codes.shape
        M = self.channels_per_group
        if num_spikes == 0:
            return np.zeros((0, self.num_samples_, num_groups * M), dtype=np.float32)
        groups = self._run("decode", codes.reshape(-1, self.codes_per_group).astype(np.int64))  # (num * G, T, M)
        waveforms = groups.reshape(num_spikes, num_groups, self.num_samples_, M).transpose(0, 2, 1, 3)
        return (waveforms.reshape(num_spikes, self.num_samples_, num_groups * M) * self.scale_).astype(np.float32)

    def reconstruct(self, waveforms) -> np.ndarray:
        """``decode(encode(waveforms))``: what the receiver sees."""
        return self.decode(self.encode(waveforms))

    def compress(self, waveforms) -> bytes:
        """Entropy-coded bytes of the spikes' indices (what the implant would transmit); see :meth:`decompress`."""
        codes = self.encode(waveforms)
        return self.coder_.encode(codes.reshape(-1, self.codes_per_group))

    def decompress(self, data: bytes, num_spikes: int, num_groups: int = 1) -> np.ndarray:
        """Spikes back from :meth:`compress`'s bytes: (num_spikes, num_samples, num_groups * channels_per_group)."""
        self._check_fitted()
        codes = self.coder_.decode(data, num_rows=num_spikes * num_groups)
        return self.decode(codes.reshape(num_spikes, num_groups, self.codes_per_group))

    # -- rate ----------------------------------------------------------------------------------------------------

    def bits_per_group(self, codes) -> float:
        """Entropy of ``codes`` (num_spikes, num_groups, codes_per_group) in bits per channel group: the sum over
        the index positions of each position's index entropy (the coder keeps one table per position)."""
        from .metrics import code_entropy

        codes = np.asarray(codes)
        return code_entropy(codes.reshape(-1, codes.shape[-1]), per_position=True)

    def encoder_size(self) -> dict:
        """Parameters and multiply-accumulates per channel group of the on-implant part (encoder + quantiser's
        nearest-codeword search: K * code_dim MACs per index). Returns ``{"parameters", "macs"}``."""
        import torch

        from .metrics import count_macs, count_parameters

        self._check_fitted()
        config = self.config_
        example = torch.zeros(2, config.padded_samples, config.channels_per_group)
        encoder_macs = count_macs(self.model_.encoder, example.transpose(1, 2)) // 2
        search_macs = config.codes_per_input * config.codebook_size * config.code_dim
        parameters = count_parameters(self.model_.encoder) + count_parameters(self.model_.quantiser)
        return {"parameters": parameters, "macs": encoder_macs + search_macs}

    # -- persistence ---------------------------------------------------------------------------------------------

    def get_params(self) -> dict:
        """Constructor arguments (scikit-learn convention)."""
        return constructor_params(self)

    def state(self) -> dict:
        """Everything that rebuilds the fitted compressor (plain types and a torch state dict)."""
        from .. import __version__

        self._check_fitted()
        return {
            "format_version": FORMAT_VERSION,
            "version": __version__,
            "params": self.get_params(),
            "config": asdict(self.config_),
            "state_dict": self.model_.state_dict(),
            "scale": self.scale_,
            "num_samples": self.num_samples_,
            "coder": self.coder_.state_dict(),
            "history": self.history_,
        }

    @classmethod
    def from_state(cls, state: dict) -> "AutoencoderCompressor":
        """Inverse of :meth:`state`."""
        version = state.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"unsupported AutoencoderCompressor format {version!r} (expected 1 or {FORMAT_VERSION})")
        params, config, weights = dict(state["params"]), dict(state["config"]), dict(state["state_dict"])
        if version == 1:  # one quantiser stage, stored as "quantiser.<name>"
            params, config = {**LEGACY_SETTINGS, **params}, {**LEGACY_SETTINGS, **config}
            weights = {key.replace("quantiser.", "quantiser.stages.0.", 1) if key.startswith("quantiser.") else key:
                       value for key, value in weights.items()}
        compressor = cls(**params)
        compressor.config_ = CompressorConfig(**config)
        compressor.model_ = CompressiveAutoencoder(compressor.config_)
        compressor.model_.load_state_dict(weights)
        compressor.model_.eval()
        compressor.scale_ = float(state["scale"])
        compressor.num_samples_ = int(state["num_samples"])
        compressor.coder_ = StaticEntropyCoder.from_state_dict(state["coder"])
        compressor.history_ = list(state["history"])
        return compressor

    def save(self, file_path) -> Path:
        """Write the fitted compressor to ``file_path`` (a torch file); returns the path."""
        import torch

        file_path = Path(file_path)
        torch.save(self.state(), file_path)
        return file_path

    @classmethod
    def load(cls, file_path) -> "AutoencoderCompressor":
        """Read a compressor written by :meth:`save`."""
        import torch

        file_path = Path(file_path)
        if not file_path.is_file():
            raise ValueError(f"no AutoencoderCompressor file at {file_path}")
        return cls.from_state(torch.load(file_path, map_location="cpu", weights_only=False))
