"""Transform-coding baselines of seed 004 (section 2.6): PCA, DCT and DWT (Symmlet-4), in two versions.

* **Seed version** (``n_levels=None``): keep ``n_coefficients`` coefficients per spike (PCA, over all channels of
  the spike) or per channel (DCT, DWT), each costing 16 bits; the ratio is the seed's formula
  (:meth:`TransformCompressor.seed_ratio`).
* **Strong version** (``n_levels`` set): keep the ``n_coefficients`` leading coefficients (PCA: largest variance;
  DCT: lowest frequencies; DWT: coarsest scales first), quantise them uniformly and entropy-code each coefficient
  position with its own probability table, exactly as the autoencoder's indices are coded. Small coefficients fall
  in the zero bin and cost little, which is what makes these baselines strong.
"""

from __future__ import annotations

import numpy as np

from .inputs import check_like_fit, check_waveforms
from .entropy_coding import StaticEntropyCoder


class TransformCompressor:
    """Base of the PCA, DCT and DWT compressors: fit, encode (coefficients or quantised symbols), decode.

    Parameters
    ----------
    n_coefficients : int
        Coefficients kept: per spike for PCA, per channel for DCT and DWT.
    n_levels : int | None, default: None
        None: the seed's version (unquantised coefficients at 16 bits each). An int: the strong version, a uniform
        quantiser whose step is the training range (0.5-99.5 percentiles) of the first kept coefficient divided by
        ``n_levels`` (``shared_step=True``) or of each coefficient (``shared_step=False``).
    shared_step : bool, default: True
        One quantiser step for every coefficient (equal distortion per coefficient, the optimum of an orthonormal
        transform at high rate) or ``n_levels`` levels over each coefficient's own range.
    """

    name = "transform"

    def __init__(self, n_coefficients: int, n_levels: int | None = None, shared_step: bool = True):
        if not isinstance(n_coefficients, (int, np.integer)) or n_coefficients < 1:
            raise ValueError(f"n_coefficients must be a positive integer, got {n_coefficients!r}")
        if n_levels is not None and (not isinstance(n_levels, (int, np.integer)) or n_levels < 2):
            raise ValueError(f"n_levels must be None (seed version) or an integer >= 2, got {n_levels!r}")
        self.n_coefficients = int(n_coefficients)
        self.n_levels = n_levels
        self.shared_step = shared_step

    # subclasses: _fit_transform(waveforms), _forward(waveforms) -> (num, P), _inverse(coefficients) -> waveforms

    def fit(self, waveforms, y=None) -> "TransformCompressor":
        """Learn the transform (PCA) and the quantiser and coder tables (strong version) on ``waveforms``
        (num_spikes, num_samples, num_channels); returns ``self``."""
        waveforms = check_waveforms(waveforms)
        self.num_samples_, self.num_channels_ = waveforms.shape[1:]
        self._fit_transform(waveforms)
        coefficients = self._forward(waveforms)
        if self.n_levels is not None:
            low, high = np.percentile(coefficients, [0.5, 99.5], axis=0)
            span = np.maximum(high - low, 1e-12)
            self.step_ = (
                np.full(coefficients.shape[1], span[0] / self.n_levels) if self.shared_step else span / self.n_levels
            )
            if self.shared_step and self.name != "pca":  # DCT/DWT: the first coefficient of every channel alike
                self.step_[:] = span.reshape(self.num_channels_, -1)[:, 0].max() / self.n_levels
            self.max_symbol_ = np.ceil(np.abs(coefficients).max(axis=0) / self.step_).astype(np.int64)
            self.coder_ = StaticEntropyCoder(2 * self.max_symbol_ + 1).fit(self._quantise(coefficients))
        return self

    def _quantise(self, coefficients: np.ndarray) -> np.ndarray:
        # mid-tread uniform quantiser (zero is a level), clipped to the training range, shifted to symbols >= 0
        q = np.clip(np.rint(coefficients / self.step_), -self.max_symbol_, self.max_symbol_)
        return (q + self.max_symbol_).astype(np.int64)

    def encode(self, waveforms) -> np.ndarray:
        """Coefficients (seed version, float64) or quantiser symbols (strong version, int64), (num_spikes, P)."""
        self._check_fitted()
        waveforms = check_like_fit(waveforms, self.num_samples_, self.num_channels_)
        coefficients = self._forward(waveforms)
        return coefficients if self.n_levels is None else self._quantise(coefficients)

    def decode(self, codes) -> np.ndarray:
        """Waveforms (num_spikes, num_samples, num_channels) float32 from :meth:`encode`'s output."""
        self._check_fitted()
        codes = np.asarray(codes)
        coefficients = codes.astype(np.float64) if self.n_levels is None else (codes - self.max_symbol_) * self.step_
        return self._inverse(coefficients).astype(np.float32)

    def reconstruct(self, waveforms) -> np.ndarray:
        """``decode(encode(waveforms))``."""
        return self.decode(self.encode(waveforms))

    def _check_fitted(self):
        if not hasattr(self, "num_samples_"):
            raise ValueError(f"this {type(self).__name__} is not fitted yet: call fit(waveforms) first")

    def bits_per_spike(self, codes) -> float:
        """Strong version: entropy of the symbols, summed over coefficient positions (bits per spike)."""
        from .metrics import code_entropy

        if self.n_levels is None:
            raise ValueError("bits_per_spike needs the strong version (n_levels set); use seed_ratio() otherwise")
        return code_entropy(np.asarray(codes), per_position=True)

    def coded_bytes(self, codes) -> int:
        """Strong version: bytes written by the range coder for ``codes`` (tables learned at ``fit``)."""
        if self.n_levels is None:
            raise ValueError("coded_bytes needs the strong version (n_levels set)")
        return len(self.coder_.encode(codes))

    def seed_ratio(self, bits_per_sample: int = 16) -> float:
        """The seed's compression ratio (section 2.6), every kept coefficient costing ``bits_per_sample`` bits."""
        raise NotImplementedError


class PCACompressor(TransformCompressor):
    """PCA over the whole spike (all samples of all channels), fitted on the training spikes (seed 2.6.2)."""

    name = "pca"

    def _fit_transform(self, waveforms):
        flat = waveforms.reshape(len(waveforms), -1).astype(np.float64)
        if self.n_coefficients > min(flat.shape):
            raise ValueError(
                f"n_coefficients={self.n_coefficients} exceeds min(num_spikes, num_samples * num_channels)"
                f" = {min(flat.shape)}"
            )
        self.mean_ = flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat - self.mean_, full_matrices=False)
        self.components_ = vt[: self.n_coefficients]  # (m, D * M), orthonormal rows

    def _forward(self, waveforms):
        return (waveforms.reshape(len(waveforms), -1) - self.mean_) @ self.components_.T

    def _inverse(self, coefficients):
        return (coefficients @ self.components_ + self.mean_).reshape(-1, self.num_samples_, self.num_channels_)

    def seed_ratio(self, bits_per_sample: int = 16) -> float:
        """``D * M / m``: D samples on M channels at W bits, m components at W bits."""
        self._check_fitted()
        return self.num_samples_ * self.num_channels_ / self.n_coefficients


class DCTCompressor(TransformCompressor):
    """Orthonormal DCT-II of each channel; the ``n_coefficients`` lowest frequencies are kept (seed 2.6.4)."""

    name = "dct"

    def _fit_transform(self, waveforms):
        if self.n_coefficients > waveforms.shape[1]:
            raise ValueError(f"n_coefficients={self.n_coefficients} exceeds num_samples={waveforms.shape[1]}")

    def _forward(self, waveforms):
        from scipy.fft import dct

        coefficients = dct(waveforms.astype(np.float64), type=2, norm="ortho", axis=1)[:, : self.n_coefficients]
        return coefficients.transpose(0, 2, 1).reshape(len(waveforms), -1)  # channel-major: (num, M * m)

    def _inverse(self, coefficients):
        from scipy.fft import idct

        full = np.zeros((len(coefficients), self.num_channels_, self.num_samples_))
        full[:, :, : self.n_coefficients] = coefficients.reshape(len(coefficients), self.num_channels_, -1)
        return idct(full, type=2, norm="ortho", axis=2).transpose(0, 2, 1)

    def seed_ratio(self, bits_per_sample: int = 16) -> float:
        """``D / m`` per channel."""
        self._check_fitted()
        return self.num_samples_ / self.n_coefficients


class DWTCompressor(TransformCompressor):
    """Symmlet-4 wavelet transform of each channel (PyWavelets, periodised: orthonormal, as many coefficients as
    samples). Seed version (2.6.3): the ``n_coefficients`` largest-magnitude coefficients per channel, the others
    zeroed. Strong version: the ``n_coefficients`` coarsest-scale coefficients, quantised and entropy-coded.

    Parameters
    ----------
    wavelet : str, default: "sym4"
    level : int | None, default: None
        Decomposition depth; None: the deepest PyWavelets allows for the signal length and wavelet.
    """

    name = "dwt"

    def __init__(
        self,
        n_coefficients: int,
        n_levels: int | None = None,
        shared_step: bool = True,
        wavelet: str = "sym4",
        level: int | None = None,
    ):
        super().__init__(n_coefficients, n_levels, shared_step)
        self.wavelet = wavelet
        self.level = level

    def _fit_transform(self, waveforms):
        import pywt

        num_samples = waveforms.shape[1]
        self.level_ = (
            pywt.dwt_max_level(num_samples, pywt.Wavelet(self.wavelet).dec_len) if self.level is None else self.level
        )
        example = pywt.wavedec(np.zeros(num_samples), self.wavelet, mode="periodization", level=self.level_)
        self.band_lengths_ = [len(band) for band in example]  # approximation, then details coarse to fine
        self.length_ = sum(self.band_lengths_)
        if self.n_coefficients > self.length_:
            raise ValueError(f"n_coefficients={self.n_coefficients} exceeds the {self.length_} wavelet coefficients")

    def _full(self, waveforms):
        import pywt

        # (num, D, M) -> (num, M, L): coefficients of each channel, approximation first, coarse to fine details
        coefficients = pywt.wavedec(
            waveforms.astype(np.float64), self.wavelet, mode="periodization", level=self.level_, axis=1
        )
        return np.concatenate(coefficients, axis=1).transpose(0, 2, 1)

    def _forward(self, waveforms):
        full = self._full(waveforms)
        if self.n_levels is None:  # seed: keep the m largest magnitudes of each channel, zero the rest
            order = np.argsort(-np.abs(full), axis=2, kind="stable")
            mask = np.zeros(full.shape, dtype=bool)
            np.put_along_axis(mask, order[:, :, : self.n_coefficients], True, axis=2)
            return np.where(mask, full, 0.0).reshape(len(waveforms), -1)
        return full[:, :, : self.n_coefficients].reshape(len(waveforms), -1)

    def _inverse(self, coefficients):
        import pywt

        num = len(coefficients)
        full = np.zeros((num, self.num_channels_, self.length_))
        kept = self.length_ if self.n_levels is None else self.n_coefficients
        full[:, :, :kept] = coefficients.reshape(num, self.num_channels_, kept)
        bounds = np.cumsum([0] + self.band_lengths_)
        parts = [full[:, :, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        out = pywt.waverec(parts, self.wavelet, mode="periodization", axis=2)[:, :, : self.num_samples_]
        return out.transpose(0, 2, 1)

    def seed_ratio(self, bits_per_sample: int = 16) -> float:
        """``D * W / (W * m + D)`` per channel: m coefficients at W bits plus a D-bit map of their positions."""
        self._check_fitted()
        return self.num_samples_ * bits_per_sample / (bits_per_sample * self.n_coefficients + self.num_samples_)


class KMeansCompressor:
    """Vector quantiser in waveform space: k-means of the whole spikes, then (residual stages) k-means of what the
    earlier stages left; each stage's index is entropy-coded with a table learned at ``fit``.

    A strong baseline when the coded spikes come from the neurons it was fitted to (a codeword per unit is then
    nearly the unit's mean, a denoised spike); on other neurons it restores the nearest fitted shape.

    Parameters
    ----------
    codebook_sizes : sequence of int, default: (64,)
        Codewords of each stage: ``(64,)`` is plain k-means, ``(64, 64)`` adds a residual stage.
    random_state : int, default: 0
        Seeds each stage's k-means.
    """

    name = "kmeans"

    def __init__(self, codebook_sizes=(64,), random_state: int = 0):
        sizes = list(codebook_sizes) if np.ndim(codebook_sizes) else [codebook_sizes]
        if not sizes or any(not isinstance(k, (int, np.integer)) or k < 1 for k in sizes):
            raise ValueError(f"codebook_sizes must be positive integers, got {codebook_sizes!r}")
        self.codebook_sizes = [int(k) for k in sizes]
        self.random_state = random_state

    def fit(self, waveforms, y=None) -> "KMeansCompressor":
        """Fit each stage's codebook and the index tables on ``waveforms`` (num_spikes, num_samples, num_channels)."""
        from sklearn.cluster import KMeans

        waveforms = check_waveforms(waveforms)
        if len(waveforms) < max(self.codebook_sizes):
            raise ValueError(f"fit needs at least {max(self.codebook_sizes)} spikes (the largest codebook)")
        self.num_samples_, self.num_channels_ = waveforms.shape[1:]
        left = waveforms.reshape(len(waveforms), -1).astype(np.float64)
        self.codebooks_, codes = [], []
        for size in self.codebook_sizes:
            kmeans = KMeans(size, n_init=1, random_state=self.random_state).fit(left)
            self.codebooks_.append(kmeans.cluster_centers_)
            codes.append(kmeans.labels_)
            left = left - kmeans.cluster_centers_[kmeans.labels_]
        self.coder_ = StaticEntropyCoder(self.codebook_sizes).fit(np.stack(codes, axis=1))
        return self

    def encode(self, waveforms) -> np.ndarray:
        """Codeword index of each stage, (num_spikes, num_stages) int64."""
        if not hasattr(self, "codebooks_"):
            raise ValueError("this KMeansCompressor is not fitted yet: call fit(waveforms) first")
        waveforms = check_like_fit(waveforms, self.num_samples_, self.num_channels_)
        left = waveforms.reshape(len(waveforms), -1).astype(np.float64)
        codes = []
        for codebook in self.codebooks_:
            # nearest codeword: |x|^2 - 2 x.c + |c|^2, the |x|^2 term dropped
            index = (codebook**2).sum(axis=1)[None] - 2 * left @ codebook.T
            codes.append(index.argmin(axis=1))
            left = left - codebook[codes[-1]]
        return np.stack(codes, axis=1).astype(np.int64)

    def decode(self, codes) -> np.ndarray:
        """Waveforms (num_spikes, num_samples, num_channels) float32: the sum of each stage's codeword."""
        codes = np.asarray(codes)
        restored = sum(codebook[codes[:, stage]] for stage, codebook in enumerate(self.codebooks_))
        return restored.reshape(-1, self.num_samples_, self.num_channels_).astype(np.float32)

    def reconstruct(self, waveforms) -> np.ndarray:
        """``decode(encode(waveforms))``."""
        return self.decode(self.encode(waveforms))

    def coded_bytes(self, codes) -> int:
        """Bytes written by the range coder for ``codes`` (tables learned at ``fit``)."""
        return len(self.coder_.encode(codes))
