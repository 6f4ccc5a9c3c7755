"""Validation of the spike arrays every compressor takes, and the constructor-argument rule they share."""

from __future__ import annotations

import numpy as np


def check_waveforms(waveforms, name: str = "waveforms", channels_per_group: int | None = None) -> np.ndarray:
    """Validate a (num_spikes, num_samples, num_channels) array of finite numbers; return it as float32 (a copy
    only where the dtype changes: callers never write into it)."""
    array = np.asarray(waveforms)
    if array.ndim != 3:
        raise ValueError(
            f"{name} must be a (num_spikes, num_samples, num_channels) array like SpikeInterface's waveforms, got "
            f"shape {array.shape}; add a channel axis for single-channel spikes (waveforms[:, :, None])"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; remove or zero those spikes first")
    if channels_per_group is not None and array.shape[2] % channels_per_group:
        raise ValueError(
            f"{name} has {array.shape[2]} channels, not a multiple of channels_per_group={channels_per_group}: "
            "select a multiple of that many channels per spike (e.g. the nearest channels in spatial order, see "
            "extract_spike_waveforms) or change channels_per_group"
        )
    return array


def check_like_fit(waveforms, num_samples: int, num_channels: int) -> np.ndarray:
    """:func:`check_waveforms`, and the spikes must have the shape the codec was fitted on."""
    array = check_waveforms(waveforms)
    if array.shape[1:] != (num_samples, num_channels):
        raise ValueError(
            f"waveforms must be (num_spikes, {num_samples}, {num_channels}) as in fit, got {array.shape}: cut the "
            "spikes with the same window and channels"
        )
    return array


def constructor_params(estimator) -> dict:
    """The estimator's constructor arguments and their current values (scikit-learn's ``get_params``)."""
    import inspect

    names = [name for name in inspect.signature(type(estimator).__init__).parameters if name != "self"]
    return {name: getattr(estimator, name) for name in names}
