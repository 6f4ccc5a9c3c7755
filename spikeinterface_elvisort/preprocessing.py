"""Preprocessing: SpikeInterface's filters, referencing and whitening, then an optional cache of the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def preprocess(
    recording,
    *,
    apply_preprocessing: bool = True,
    freq_min: float = 300.0,
    freq_max: float = 6000.0,
    common_reference: bool = True,
    whitening: bool = False,
    seed: int | None = None,
):
    """Return a lazy float32 recording: Butterworth band-pass, common median reference, optional local whitening.

    The input recording is never modified: SpikeInterface preprocessing returns new lazy objects.
    ``freq_max`` is lowered to 0.45 x the sampling rate when it would sit above the Nyquist frequency.
    """
    import spikeinterface.preprocessing as spre

    if recording.get_dtype().kind in "iu":
        # int16 files with gains and offsets: filter in microvolts so that thresholds in MAD units keep their meaning
        if recording.has_scaleable_traces():
            recording = spre.scale_to_uV(recording)
    if not apply_preprocessing:
        return spre.astype(recording, "float32") if recording.get_dtype() != np.float32 else recording
    freq_max = min(freq_max, 0.45 * recording.sampling_frequency)
    recording = spre.bandpass_filter(recording, freq_min=freq_min, freq_max=freq_max, dtype="float32")
    if common_reference and recording.get_num_channels() > 1:
        recording = spre.common_reference(recording, reference="global", operator="median")
    if whitening and recording.get_num_channels() > 1:
        recording = spre.whiten(recording, mode="local", radius_um=100.0, dtype="float32", seed=seed)
    return recording


MAX_MEMORY_CACHE_BYTES = 2**30  # "auto" caches in memory only below this: memory must not grow with duration


def cache_recording(recording, mode: str, folder: Path, job_kwargs: dict):
    """Cache preprocessed traces ("memory", "folder", "no" or "auto") with SpikeInterface's ``cache_preprocessing``.

    "auto" uses memory when the traces take less than 1 GiB and less than a quarter of the available RAM, otherwise a
    binary folder, so that the memory of a run does not grow with the recording's duration.
    Returns the cached recording and the info needed to remove the cache afterwards.
    """
    import psutil
    from spikeinterface.sortingcomponents.tools import cache_preprocessing

    if mode == "auto":
        limit = min(MAX_MEMORY_CACHE_BYTES, 0.25 * psutil.virtual_memory().available)
        mode = "memory" if recording.get_total_memory_size() < limit else "folder"
    si_mode = {"no": "no-cache"}.get(mode, mode)
    return cache_preprocessing(recording, mode=si_mode, memory_limit=0.25, folder=Path(folder), job_kwargs=job_kwargs)
