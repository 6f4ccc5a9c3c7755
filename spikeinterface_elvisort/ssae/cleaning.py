"""The cleaner stage (seed 003, NeuralSorter): train the event-or-noise CNN on the hybrid set, reject events."""

from __future__ import annotations

import numpy as np

from ..inference import spike_probability
from ..models import build_model
from ..training import TrainConfig, train_model


def train_cleaner(spike_snippets: np.ndarray, noise_snippets: np.ndarray, *, epochs: int, batch_size: int,
                  learning_rate: float, seed: int, device, verbose: bool = False):
    """Train a :class:`~spikeinterface_elvisort.models.Cleaner` on spike windows (class 1) against pure-noise windows
    (class 0), both (num, num_samples, num_channels); returns ``(cleaner, history)``."""
    cleaner = build_model("cleaner", num_samples=spike_snippets.shape[1], num_channels=spike_snippets.shape[2])
    snippets = np.concatenate([spike_snippets, noise_snippets])
    labels = np.concatenate([np.ones(len(spike_snippets), np.int64), np.zeros(len(noise_snippets), np.int64)])
    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, stage="cleaner")
    history = train_model(cleaner, snippets, config, device, labels=labels, verbose=verbose)
    return cleaner, history


def reject_noise(cleaner, snippets: np.ndarray, threshold: float, device, batch_size: int = 1024) -> np.ndarray:
    """Boolean mask of the events the cleaner keeps: spike probability >= ``threshold``."""
    return spike_probability(cleaner, snippets, device, batch_size) >= threshold
