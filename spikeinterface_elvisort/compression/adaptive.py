"""A compressor that learns the neurons it meets: a codebook of unit shapes that grows on the implant.

A codebook fitted once (k-means, the autoencoder's quantiser) only holds the shapes of the neurons it was fitted
to; an implant meets others (drift, new cells, another animal). Here the implant keeps clustering the raw spikes it
sees, and when a cluster has gathered enough spikes it sends the cluster's mean as a new codeword, once, finely
quantised; after that, every spike of that neuron costs one index. A spike that no codeword restores well goes as
a few coarsely quantised PCA coefficients (the fallback). The receiver rebuilds the same codebook from the stream,
so encoder and decoder stay in step without any table being sent twice.

Stream, per spike (range-coded with ``constriction``): the symbol (a codeword slot or the fallback; adaptive
counts); for the fallback, ``n_components`` quantised coefficients (tables learned at ``fit``); an update flag
(adaptive counts); for an update, the slot, whether it is a resend, and the codeword's coefficients in a full PCA
basis (a resend: the change of the slot's codeword), under quantised Laplace models (scales learned at ``fit``; a
resend's follow the changes sent before). Spikes must come in time order: the stream is the code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .codebook_state import MAX_COEFFICIENT, ImplantState, ReceiverState, energy_db, roughness
from .entropy_coding import StaticEntropyCoder
from .inputs import check_like_fit, check_waveforms, constructor_params

FORMAT_VERSION = 1


class AdaptiveCodebookCompressor:
    """Codebook of unit shapes learned from the spike stream, with a PCA fallback for the others.

    Parameters
    ----------
    codebook_size : int, default: 16
        Codewords fitted by k-means on the ``fit`` spikes, known to both ends before the stream starts. More helps
        when the stream comes from the neurons of the fit; they are never sent.
    max_codewords : int, default: 64
        Codeword slots in all (fitted and learned). When they are full, a new neuron takes the least used slot.
    n_components : int, default: 24
        PCA coefficients of a fallback spike. More restores unknown spikes better at more bits.
    fallback_step : float, default: 3.0
        Quantiser step of the fallback coefficients, in units of the noise level estimated at ``fit`` (the robust
        standard deviation of the fit spikes around their k-means centroids).
    codeword_step : float, default: 0.3
        Quantiser step of a sent codeword's coefficients, in the same units. Smaller: truer codewords, costlier.
    match_db : float, default: 10.0
        A spike is sent as a codeword index when that codeword restores it at this SNDR (dB, against the spike
        itself) or better, or when what the codeword leaves is no more than noise (``match_noise``); the same rule
        groups spikes into clusters on the implant. Lower it for a higher ratio at more merged neurons (4 dB: about
        1.25-2.15x the ratio on the dev recordings, and a sorting accuracy after the round trip up to 0.14 lower).
    match_noise : float, default: 1.5
        What a codeword may leave of a spike, in units of the noise energy of a spike (the noise level squared,
        times samples and channels): small spikes match their unit's codeword by this rule. 0: the SNDR rule alone.
        The encoder follows the stream's noise level from the spikes' second differences (median over the last
        256 spikes, calibrated at ``fit``), so that a noisier recording than the fitted one is judged by its noise.
    min_spikes : int, default: 16
        Spikes a cluster gathers before its mean is sent as a codeword. It is sent again each time its count
        doubles (up to ``window``) and when it has moved away from the sent codeword (``resend_db``).
    window : int, default: 64
        The cluster means average at most the last this many spikes, so that they follow drift.
    resend_db : float, default: 20.0
        A cluster is sent again when its sent codeword falls below this SNDR (dB) against its current mean.
    random_state : int, default: 0
        Seeds the k-means of ``fit``.

    Examples
    --------
    >>> compressor = AdaptiveCodebookCompressor().fit(other_session_spikes)  # doctest: +SKIP
    >>> data = compressor.compress(spikes)  # spikes in time order  # doctest: +SKIP
    >>> restored = compressor.decompress(data, num_spikes=len(spikes))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        codebook_size: int = 16,
        max_codewords: int = 64,
        n_components: int = 24,
        fallback_step: float = 3.0,
        codeword_step: float = 0.3,
        match_db: float = 10.0,
        match_noise: float = 1.5,
        min_spikes: int = 16,
        window: int = 64,
        resend_db: float = 20.0,
        random_state: int = 0,
    ):
        self.codebook_size = codebook_size
        self.max_codewords = max_codewords
        self.n_components = n_components
        self.fallback_step = fallback_step
        self.codeword_step = codeword_step
        self.match_db = match_db
        self.match_noise = match_noise
        self.min_spikes = min_spikes
        self.window = window
        self.resend_db = resend_db
        self.random_state = random_state

    def get_params(self) -> dict:
        """Constructor arguments (scikit-learn convention)."""
        return constructor_params(self)

    def _check_params(self, num_spikes: int, dimension: int) -> None:
        for name in ("codebook_size", "max_codewords", "n_components", "min_spikes", "window"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.codebook_size > self.max_codewords:
            raise ValueError(
                f"codebook_size={self.codebook_size} exceeds max_codewords={self.max_codewords}: raise max_codewords"
            )
        if self.codebook_size > num_spikes:
            raise ValueError(f"fit needs at least codebook_size={self.codebook_size} spikes, got {num_spikes}")
        if self.n_components > min(num_spikes, dimension):
            raise ValueError(
                f"n_components={self.n_components} exceeds min(num_spikes, num_samples * num_channels) = "
                f"{min(num_spikes, dimension)}"
            )
        for name in ("fallback_step", "codeword_step"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    # -- fit -----------------------------------------------------------------------------------------------------

    def fit(self, waveforms, y=None) -> "AdaptiveCodebookCompressor":
        """Fit the starting codebook (k-means), the fallback PCA and its tables, and the codeword coder on
        ``waveforms`` (num_spikes, num_samples, num_channels), e.g. the spikes of an earlier session."""
        from sklearn.cluster import KMeans

        waveforms = check_waveforms(waveforms)
        flat = waveforms.reshape(len(waveforms), -1).astype(np.float64)
        self._check_params(*flat.shape)
        if len(np.unique(flat, axis=0)) < self.codebook_size:
            raise ValueError(
                f"fit needs at least codebook_size={self.codebook_size} distinct spikes: lower codebook_size or "
                "fit on more spikes"
            )
        kmeans = KMeans(self.codebook_size, n_init=1, random_state=self.random_state).fit(flat)
        labels = kmeans.labels_
        self.noise_level_ = float(np.median(np.abs(flat - kmeans.cluster_centers_[labels])) / 0.6745) or 1.0
        self.noise_calibration_ = self.noise_level_ / max(float(np.median(roughness(waveforms))), 1e-12)
        self.mean_ = flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat - self.mean_, full_matrices=True)
        # (D, D) orthonormal: the codewords' coefficients; float32 values, so that a saved codec is the same codec
        self.basis_ = vt.astype(np.float32).astype(np.float64)
        self.step_ = self.fallback_step * self.noise_level_
        self.codeword_step_ = self.codeword_step * self.noise_level_
        coefficients = (flat - self.mean_) @ self.basis_[: self.n_components].T
        symbols = np.rint(coefficients / self.step_).astype(np.int64)
        self.max_symbol_ = np.maximum(np.abs(symbols).max(axis=0), 1)
        self.coder_ = StaticEntropyCoder(2 * self.max_symbol_ + 1).fit(symbols + self.max_symbol_)
        prior = self._quantise_codeword(kmeans.cluster_centers_)
        self.codeword_scales_ = np.maximum(np.abs(prior).mean(axis=0), 0.5)
        self.prior_codewords_ = prior
        self.prior_means_ = kmeans.cluster_centers_
        self.prior_counts_ = np.bincount(labels, minlength=self.codebook_size).astype(np.float64)
        self.num_samples_, self.num_channels_ = waveforms.shape[1:]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "basis_"):
            raise ValueError(f"this {type(self).__name__} is not fitted yet: call fit(waveforms) or load(path)")

    def _matches(self, x: np.ndarray, error: float, noise_level: float) -> bool:
        """Whether a codeword (or cluster mean) that leaves ``error`` (squared) of spike ``x`` stands for it."""
        if error <= self.match_noise * noise_level**2 * x.size:
            return True
        return bool(energy_db(x, error) >= self.match_db)

    def _quantise_codeword(self, vectors: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
        # the inverse of _codeword: coefficients of a codeword, or (a resend) of its change from ``base``
        coefficients = (vectors - (self.mean_ if base is None else base)) @ self.basis_.T
        quantised = np.rint(coefficients / self.codeword_step_)
        return np.clip(quantised, -MAX_COEFFICIENT, MAX_COEFFICIENT).astype(np.int64)

    def _codeword(self, quantised: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
        # a codeword from its coefficients, or (a resend) from the change of the one it replaces
        return (self.mean_ if base is None else base) + (quantised * self.codeword_step_) @ self.basis_

    def _fallback(self, symbols: np.ndarray) -> np.ndarray:
        return self.mean_ + ((symbols - self.max_symbol_) * self.step_) @ self.basis_[: self.n_components]

    # -- the stream ----------------------------------------------------------------------------------------------

    def _start(self) -> "ReceiverState":
        receiver = ReceiverState(self.max_codewords, self.mean_.size, self.codeword_scales_)
        for slot, quantised in enumerate(self.prior_codewords_):
            receiver.set(slot, self._codeword(quantised))
            receiver.usage[slot] += self.prior_counts_[slot]
        return receiver

    def _models(self):
        import constriction

        laplace = constriction.stream.model.QuantizedLaplace(-MAX_COEFFICIENT, MAX_COEFFICIENT)
        tables = [constriction.stream.model.Categorical(p, perfect=False) for p in self.coder_.probabilities_]
        slots = constriction.stream.model.Categorical(np.ones(self.max_codewords), perfect=False)
        return laplace, tables, slots

    def compress(self, waveforms) -> bytes:
        """The range-coded stream of ``waveforms`` (num_spikes, num_samples, num_channels), in time order, from
        the fitted state (each call starts a new stream). :meth:`decompress` restores them."""
        import constriction

        flat = self._check_input(waveforms)
        if len(flat) == 0:
            return b""
        receiver, implant = self._start(), ImplantState(self)
        noise_levels = roughness(waveforms) * self.noise_calibration_
        laplace, tables, slots = self._models()
        encoder = constriction.stream.queue.RangeEncoder()
        zeros = np.zeros(self.mean_.size)
        for i, x in enumerate(flat):
            # the encoder's noise level: the median of the last 256 spikes' (the fitted one for the first 32)
            implant.noise_level = self.noise_level_ if i < 32 else float(np.median(noise_levels[max(0, i - 256) : i]))
            slot, error = receiver.nearest(x)
            if not self._matches(x, error, implant.noise_level):
                symbols = np.clip(
                    np.rint((x - self.mean_) @ self.basis_[: self.n_components].T / self.step_),
                    -self.max_symbol_,
                    self.max_symbol_,
                ).astype(np.int64) + self.max_symbol_
                encoder.encode(receiver.fallback, receiver.symbol_model())
                for value, table in zip(symbols, tables):
                    encoder.encode(int(value), table)
                receiver.count(receiver.fallback)
            else:
                encoder.encode(slot, receiver.symbol_model())
                receiver.count(slot)
            update = implant.see(x, receiver)
            encoder.encode(int(update is not None), receiver.flag_model())
            receiver.flag(update is not None)
            if update is not None:
                slot, quantised, resend = update
                encoder.encode(slot, slots)
                encoder.encode(int(resend), receiver.kind_model())
                encoder.encode(quantised.astype(np.int32), laplace, zeros, receiver.scales(resend))
                receiver.update(slot, quantised, resend, self)
        return encoder.get_compressed().tobytes()

    def decompress(self, data: bytes, num_spikes: int) -> np.ndarray:
        """Spikes back from :meth:`compress`'s bytes: (num_spikes, num_samples, num_channels) float32."""
        import constriction

        self._check_fitted()
        receiver = self._start()
        laplace, tables, slots = self._models()
        decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype=np.uint32).copy())
        zeros = np.zeros(self.mean_.size)
        restored = np.zeros((int(num_spikes), self.mean_.size))
        for i in range(int(num_spikes)):
            symbol = int(decoder.decode(receiver.symbol_model()))
            if symbol == receiver.fallback:
                restored[i] = self._fallback(np.array([decoder.decode(table) for table in tables], dtype=np.int64))
            else:
                restored[i] = receiver.codebook[symbol]
            receiver.count(symbol)
            update = bool(decoder.decode(receiver.flag_model()))
            receiver.flag(update)
            if update:
                slot = int(decoder.decode(slots))
                resend = bool(decoder.decode(receiver.kind_model()))
                quantised = np.asarray(decoder.decode(laplace, zeros, receiver.scales(resend)), dtype=np.int64)
                receiver.update(slot, quantised, resend, self)
        return restored.reshape(-1, self.num_samples_, self.num_channels_).astype(np.float32)

    def reconstruct(self, waveforms) -> np.ndarray:
        """``decompress(compress(waveforms))``: what the receiver sees."""
        return self.decompress(self.compress(waveforms), len(waveforms))

    def _check_input(self, waveforms) -> np.ndarray:
        self._check_fitted()
        waveforms = check_like_fit(waveforms, self.num_samples_, self.num_channels_)
        return waveforms.reshape(len(waveforms), self.num_samples_ * self.num_channels_).astype(np.float64)

    # -- persistence ---------------------------------------------------------------------------------------------

    _FITTED = (
        "noise_level_",
        "noise_calibration_",
        "mean_",
        "basis_",
        "step_",
        "codeword_step_",
        "max_symbol_",
        "codeword_scales_",
        "prior_codewords_",
        "prior_means_",
        "prior_counts_",
        "num_samples_",
        "num_channels_",
    )

    def state(self) -> dict:
        """Everything that rebuilds the fitted compressor (plain types and arrays)."""
        self._check_fitted()
        fitted = {name: getattr(self, name) for name in self._FITTED}
        fitted["basis_"] = self.basis_.astype(np.float32)  # exact: fit keeps float32 values
        return {"format_version": FORMAT_VERSION, "params": self.get_params(), "fitted": fitted,
                "coder": self.coder_.state_dict()}

    @classmethod
    def from_state(cls, state: dict) -> "AdaptiveCodebookCompressor":
        """Inverse of :meth:`state`."""
        if "state_dict" in state:
            raise ValueError(
                "this holds an autoencoder (AutoencoderCompressor, named SpikeCompressor in version 0.1.0): "
                "load it with AutoencoderCompressor.load(path) or AutoencoderCompressor.from_state(state)"
            )
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported {cls.__name__} format {state.get('format_version')!r}")
        compressor = cls(**state["params"])
        for name, value in state["fitted"].items():
            setattr(compressor, name, value.astype(np.float64) if name == "basis_" else value)
        compressor.coder_ = StaticEntropyCoder.from_state_dict(state["coder"])
        return compressor

    def save(self, file_path) -> Path:
        """Write the fitted compressor to ``file_path`` (a torch file); returns the path."""
        import torch

        torch.save(self.state(), Path(file_path))
        return Path(file_path)

    @classmethod
    def load(cls, file_path) -> "AdaptiveCodebookCompressor":
        """Read a compressor written by :meth:`save`."""
        import torch

        if not Path(file_path).is_file():
            raise ValueError(f"no {cls.__name__} file at {file_path}")
        return cls.from_state(torch.load(Path(file_path), map_location="cpu", weights_only=False))


#: The package's spike compressor: the best codec measured (docs/compression.rst), an
#: :class:`AdaptiveCodebookCompressor` with its defaults. The autoencoder of seed 004 is :class:`AutoencoderCompressor`.
SpikeCompressor = AdaptiveCodebookCompressor
