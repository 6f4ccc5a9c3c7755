"""Checks of the input recording, run before any heavy work: each failure names the problem and what to do.

``run_sorter`` calls :func:`check_recording` through the sorters' ``_check_params`` (after SpikeInterface's own probe
checks and before the run); ``run_elvisort`` and ``run_ssae`` call it again, for direct use. It reads a few random
chunks of the recording and nothing else.
"""

from __future__ import annotations

import numpy as np

MIN_SAMPLING_FREQUENCY = 10_000.0  # Hz: below this a 1 ms spike is fewer than 10 samples
NUM_CHECK_CHUNKS = 20  # random chunks read to look for NaN and Inf samples
CHECK_CHUNK_SAMPLES = 10_000


def check_recording(recording, params: dict) -> None:
    """Raise, before any heavy work, when ``recording`` cannot be sorted with ``params``.

    Checks: a recording object; channel locations (a probe) that are unique; a sampling rate of at least 10 kHz and
    above the band-pass filter; a segment at least one snippet long; no NaN or Inf in random chunks (and a warning
    for flat, dead channels). Integer recordings with gains and offsets need nothing: the sorters filter them in
    microvolts.

    Parameters
    ----------
    recording : BaseRecording
        The recording to sort.
    params : dict
        The sorter's full, checked parameters (elvisort's or ssae's).

    Raises
    ------
    TypeError
        When ``recording`` is not a SpikeInterface recording.
    ValueError
        Naming the problem and the fix.
    """
    from spikeinterface.core import BaseRecording

    if not isinstance(recording, BaseRecording):
        raise TypeError(f"expected a SpikeInterface recording (BaseRecording), got {type(recording).__name__}")
    _check_locations(recording)

    sampling_frequency = recording.sampling_frequency
    if sampling_frequency < MIN_SAMPLING_FREQUENCY:
        raise ValueError(
            f"the recording is sampled at {sampling_frequency:g} Hz, below the {MIN_SAMPLING_FREQUENCY:g} Hz the "
            "sorters need (a spike lasts about 1 ms): record extracellular spikes at 20-30 kHz. Resampling up "
            "(spikeinterface.preprocessing.resample) only helps when the signal kept its band above 3 kHz."
        )
    if params["apply_preprocessing"] and params["freq_min"] >= 0.45 * sampling_frequency:
        raise ValueError(
            f"freq_min={params['freq_min']:g} Hz is above 0.45 x the sampling rate ({sampling_frequency:g} Hz), where "
            "the band-pass filter ends: lower freq_min (default 300)"
        )

    num_samples = [recording.get_num_samples(s) for s in range(recording.get_num_segments())]
    snippet = int(round(params["ms_before"] * sampling_frequency / 1000.0)) + int(
        round(params["ms_after"] * sampling_frequency / 1000.0)
    )
    if max(num_samples) < snippet:
        raise ValueError(
            f"the recording is {max(num_samples)} samples long, shorter than one snippet ({snippet} samples = "
            f"ms_before + ms_after): there is nothing to sort; give a longer recording (a few minutes for training)"
        )
    _check_samples(recording, params)


def _check_locations(recording) -> None:
    if not recording.has_probe():
        raise ValueError(
            "the recording has no channel locations: attach its probe first (recording.set_probe(probe) with a "
            "probeinterface Probe, e.g. probeinterface.read_prb, or recording.set_dummy_probe_from_locations(xy))"
        )
    # probeinterface refuses a probe with duplicated contacts; this guards the other ways of attaching locations
    locations = np.asarray(recording.get_channel_locations())
    _, first, counts = np.unique(locations, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        location = locations[first[np.argmax(counts > 1)]]
        same = np.flatnonzero(np.all(locations == location, axis=1))
        raise ValueError(
            f"channels {np.asarray(recording.channel_ids)[same].tolist()} share the location {location.tolist()}: "
            "each channel needs its own location. Sort each shank or group on its own "
            "(spikeinterface.sorters.run_sorter_by_property(..., grouping_property='group')) or fix the probe."
        )


def _check_samples(recording, params: dict) -> None:
    """A few random chunks: NaN or Inf (an error), flat channels (a warning: dead channels carry no spikes)."""
    import warnings

    from spikeinterface.core import get_random_data_chunks

    shortest = min(recording.get_num_samples(s) for s in range(recording.get_num_segments()))
    chunk_size = min(CHECK_CHUNK_SAMPLES, shortest)
    seed = params["seed"] if params["seed"] is not None else 0
    traces = get_random_data_chunks(
        recording, num_chunks_per_segment=NUM_CHECK_CHUNKS, chunk_size=chunk_size, seed=int(seed),
        return_in_uV=False,
    )
    channel_ids = np.asarray(recording.channel_ids)
    bad = ~np.isfinite(traces) if traces.dtype.kind == "f" else np.zeros(traces.shape, dtype=bool)
    if bad.any():
        raise ValueError(
            f"the recording holds NaN or Inf samples (found on channel(s) {channel_ids[bad.any(axis=0)].tolist()}): "
            "replace them before sorting, e.g. remove bad channels (recording.remove_channels) or zero the bad "
            "periods (spikeinterface.preprocessing.silence_periods(recording, list_periods, mode='zeros'))"
        )
    flat = np.ptp(traces, axis=0) == 0
    if flat.any() and traces.shape[0] > 1:
        warnings.warn(
            f"channel(s) {channel_ids[flat].tolist()} are flat (dead): they carry no spikes and, with "
            "common_reference=True, receive the negative of the reference. Remove them first "
            f"(recording.remove_channels({channel_ids[flat].tolist()})) unless they are needed for the probe layout.",
            UserWarning,
            stacklevel=3,
        )
