"""Entropy coding of symbol streams (codeword indices, quantised coefficients) with a static range coder.

The probability tables are learned once, on training data, and belong to the codec like the codebook does: the
implant and the receiver both hold them, so the stream carries no table. Coding uses ``constriction``'s range
coder (Bamler 2022), a real coder: the bytes it writes are what a link would carry, and they exceed the entropy
of the table by the coder's overhead and by the mismatch between the training and the coded data.
"""

from __future__ import annotations

import numpy as np


class StaticEntropyCoder:
    """Range coder of integer symbol streams with one probability table per stream position.

    Parameters
    ----------
    alphabet_sizes : sequence of int
        Number of possible symbols (0 ... size - 1) at each position of a row.
    pseudo_count : float, default: 0.5
        Added to every symbol's training count (Krichevsky-Trofimov), so that symbols never seen in training can
        still be coded.

    Examples
    --------
    >>> coder = StaticEntropyCoder([4, 4]).fit(np.array([[0, 1], [0, 2], [1, 1]]))
    >>> data = coder.encode(np.array([[0, 1], [1, 2]]))
    >>> coder.decode(data, num_rows=2).tolist()
    [[0, 1], [1, 2]]
    """

    def __init__(self, alphabet_sizes, pseudo_count: float = 0.5):
        self.alphabet_sizes = [int(size) for size in alphabet_sizes]
        if not self.alphabet_sizes or min(self.alphabet_sizes) < 1:
            raise ValueError(f"alphabet_sizes must be a non-empty list of positive integers, got {alphabet_sizes!r}")
        if pseudo_count <= 0:
            raise ValueError(
                f"pseudo_count must be > 0 (every symbol needs a non-zero probability), got {pseudo_count}"
            )
        self.pseudo_count = float(pseudo_count)
        self.probabilities_ = None

    def _check(self, symbols) -> np.ndarray:
        symbols = np.asarray(symbols)
        if symbols.ndim != 2 or symbols.shape[1] != len(self.alphabet_sizes):
            raise ValueError(
                f"symbols must be a (num_rows, {len(self.alphabet_sizes)}) integer array, got shape {symbols.shape}"
            )
        if symbols.size and not np.issubdtype(symbols.dtype, np.integer):
            raise ValueError(f"symbols must be integers, got dtype {symbols.dtype}")
        if symbols.size and (symbols.min() < 0 or np.any(symbols.max(axis=0) >= self.alphabet_sizes)):
            raise ValueError("symbols must lie in 0 ... alphabet_size - 1 at every position")
        return symbols.astype(np.int32)

    def fit(self, symbols) -> "StaticEntropyCoder":
        """Learn one table per position from training ``symbols`` (num_rows, num_positions); returns ``self``."""
        symbols = self._check(symbols)
        self.probabilities_ = []
        for position, size in enumerate(self.alphabet_sizes):
            counts = np.bincount(symbols[:, position], minlength=size) + self.pseudo_count
            self.probabilities_.append(counts / counts.sum())
        return self

    def _models(self):
        import constriction

        if self.probabilities_ is None:
            raise ValueError("this StaticEntropyCoder is not fitted yet: call fit(training_symbols) first")
        return [constriction.stream.model.Categorical(p, perfect=False) for p in self.probabilities_]

    def encode(self, symbols) -> bytes:
        """Range-code ``symbols`` (num_rows, num_positions) into bytes, position by position."""
        import constriction

        symbols = self._check(symbols)
        encoder = constriction.stream.queue.RangeEncoder()
        for position, model in enumerate(self._models()):
            encoder.encode(np.ascontiguousarray(symbols[:, position]), model)
        return encoder.get_compressed().tobytes()

    def decode(self, data: bytes, num_rows: int) -> np.ndarray:
        """Inverse of :meth:`encode`: (num_rows, num_positions) int64 symbols."""
        import constriction

        words = np.frombuffer(data, dtype=np.uint32).copy()
        decoder = constriction.stream.queue.RangeDecoder(words)
        columns = [decoder.decode(model, int(num_rows)) for model in self._models()]
        if not columns or num_rows == 0:
            return np.zeros((int(num_rows), len(self.alphabet_sizes)), dtype=np.int64)
        return np.stack(columns, axis=1).astype(np.int64)

    def cross_entropy_bits(self, symbols) -> float:
        """Ideal code length of ``symbols`` under the fitted tables, in bits (what a perfect coder would write)."""
        symbols = self._check(symbols)
        if self.probabilities_ is None:
            raise ValueError("this StaticEntropyCoder is not fitted yet: call fit(training_symbols) first")
        return float(-sum(np.log2(p[symbols[:, i]]).sum() for i, p in enumerate(self.probabilities_)))

    def state_dict(self) -> dict:
        """Plain arrays that rebuild the coder with :meth:`from_state_dict`."""
        return {
            "alphabet_sizes": list(self.alphabet_sizes),
            "pseudo_count": self.pseudo_count,
            "probabilities": None if self.probabilities_ is None else [p.tolist() for p in self.probabilities_],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "StaticEntropyCoder":
        """Rebuild a coder saved with :meth:`state_dict`."""
        coder = cls(state["alphabet_sizes"], state["pseudo_count"])
        if state["probabilities"] is not None:
            coder.probabilities_ = [np.asarray(p, dtype=np.float64) for p in state["probabilities"]]
        return coder
