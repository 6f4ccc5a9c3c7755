"""The state both ends of an adaptive-codebook stream hold (``ReceiverState``) and the encoder's own clusters
(``ImplantState``); see :class:`~spikeinterface_elvisort.compression.AdaptiveCodebookCompressor`."""

from __future__ import annotations

import numpy as np

MAX_COEFFICIENT = 2**15


class ReceiverState:
    """What both ends hold: the codebook slots, their use counts (the symbol model) and the update-flag counts."""

    def __init__(self, num_slots: int, dimension: int, codeword_scales: np.ndarray):
        self.fallback = num_slots
        self.codeword_scales = codeword_scales
        # resends code the change of a codeword; their Laplace scales follow the changes sent so far
        self.change_sum, self.changes = 0.25 * codeword_scales, 1.0
        self.kinds = np.array([1.0, 1.0])
        self.codebook = np.zeros((num_slots, dimension))
        self.active = np.zeros(num_slots, dtype=bool)
        self.usage = np.full(num_slots + 1, 0.01)  # inactive slots keep a tiny probability
        self.usage[num_slots] = 1.0
        self.flags = np.array([1.0, 0.5])

    def set(self, slot: int, codeword: np.ndarray) -> None:
        if not self.active[slot]:
            self.usage[slot] = 1.0
        self.codebook[slot], self.active[slot] = codeword, True

    def nearest(self, x: np.ndarray) -> tuple[int, float]:
        """The active slot that restores ``x`` best, and its squared error."""
        if not self.active.any():
            return -1, np.inf
        errors = np.where(self.active, ((self.codebook - x) ** 2).sum(axis=1), np.inf)
        slot = int(errors.argmin())
        return slot, float(errors[slot])

    def update(self, slot: int, quantised: np.ndarray, resend: bool, compressor) -> None:
        """Apply a sent codeword (``resend``: a change of the slot's codeword) and learn from it."""
        base = self.codebook[slot] if resend else None
        self.set(slot, compressor._codeword(quantised, base))
        self.kinds[int(resend)] += 1.0
        if resend:
            self.change_sum = self.change_sum + np.abs(quantised)
            self.changes += 1.0

    def scales(self, resend: bool) -> np.ndarray:
        return np.maximum(self.change_sum / self.changes, 0.5) if resend else self.codeword_scales

    def kind_model(self):
        import constriction

        return constriction.stream.model.Categorical(self.kinds / self.kinds.sum(), perfect=False)

    def count(self, symbol: int) -> None:
        self.usage[symbol] += 1.0

    def flag(self, update: bool) -> None:
        self.flags[int(update)] += 1.0

    def symbol_model(self):
        import constriction

        return constriction.stream.model.Categorical(self.usage / self.usage.sum(), perfect=False)

    def flag_model(self):
        import constriction

        return constriction.stream.model.Categorical(self.flags / self.flags.sum(), perfect=False)


class ImplantState:
    """The encoder's own state: clusters of the raw spikes (running means) and which slot each was sent to."""

    def __init__(self, compressor):
        self.compressor = compressor
        self.means = [mean.copy() for mean in compressor.prior_means_]
        self.counts = [min(int(n), compressor.window) for n in compressor.prior_counts_]
        self.slots = list(range(compressor.codebook_size))
        self.sent = list(self.counts)
        self.seen = [0] * len(self.means)
        self.time = 0
        self.noise_level = compressor.noise_level_

    def see(self, x: np.ndarray, receiver: ReceiverState):
        """Add spike ``x`` to its cluster; return ``(slot, quantised codeword, resend)`` when that cluster must be
        sent (a resend: the change of the slot's codeword)."""
        c = self.compressor
        self.time += 1
        means = np.asarray(self.means)
        errors = ((means - x) ** 2).sum(axis=1)
        k = int(errors.argmin())
        if c._matches(x, errors[k], self.noise_level):
            self.counts[k] += 1
            self.means[k] += (x - self.means[k]) / min(self.counts[k], c.window)
        else:
            self._forget()
            self.means.append(x.copy())
            self.counts.append(1)
            self.slots.append(-1)
            self.sent.append(0)
            self.seen.append(0)
            k = len(self.means) - 1
        self.seen[k] = self.time
        slot = self.slots[k]
        if slot < 0:
            if self.counts[k] < c.min_spikes:
                return None
            slot = self._free_slot(receiver)
        else:
            grown = self.counts[k] >= 2 * self.sent[k] and self.sent[k] < c.window
            moved = energy_db(self.means[k], ((self.means[k] - receiver.codebook[slot]) ** 2).sum()) < c.resend_db
            if not (grown or moved):
                return None
        resend = self.slots[k] == slot
        self.slots[k], self.sent[k] = slot, self.counts[k]
        base = receiver.codebook[slot] if resend else None
        return slot, c._quantise_codeword(self.means[k], base), resend

    def _free_slot(self, receiver: ReceiverState) -> int:
        free = np.flatnonzero(~receiver.active)
        slot = int(free[0]) if free.size else int(receiver.usage[:-1].argmin())
        for k, owner in enumerate(self.slots):
            if owner == slot:
                self.slots[k], self.sent[k] = -1, 0
        return slot

    def _forget(self) -> None:
        # at most 4 unsent clusters per slot: the one seen longest ago goes
        unsent = [k for k, slot in enumerate(self.slots) if slot < 0]
        if len(unsent) >= 4 * self.compressor.max_codewords:
            k = min(unsent, key=lambda k: self.seen[k])
            for values in (self.means, self.counts, self.slots, self.sent, self.seen):
                del values[k]


def energy_db(x: np.ndarray, error: float) -> float:
    """SNDR in dB of a restoration of ``x`` that leaves the squared error ``error``."""
    return float(10 * np.log10(max((x**2).sum(), 1e-30) / max(error, 1e-30)))


def roughness(waveforms) -> np.ndarray:
    """Per spike, a robust scale of its second differences over time (all channels): noise dominates them, so
    that, calibrated once, it follows the noise level."""
    second = np.diff(np.asarray(waveforms, dtype=np.float64), n=2, axis=1)
    return np.median(np.abs(second.reshape(len(second), -1)), axis=1) / 0.6745
