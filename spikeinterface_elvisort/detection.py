"""Detection: SpikeInterface's locally exclusive peak detector, or the ELVISort paper's Algorithm 1."""

from __future__ import annotations

import numpy as np


def detect_spikes(
    recording,
    noise_levels: np.ndarray,
    *,
    method: str = "locally_exclusive",
    peak_sign: str = "neg",
    detect_threshold: float = 5.0,
    exclude_sweep_ms: float = 0.5,
    radius_um: float = 50.0,
    snippet_samples: int = 64,
    job_kwargs: dict | None = None,
) -> np.ndarray:
    """Detect events; returns peaks in SpikeInterface's peak dtype (sample_index, channel_index, amplitude,
    segment_index), sorted by segment then sample.

    Parameters
    ----------
    recording : BaseRecording
        Preprocessed (filtered, referenced) recording.
    noise_levels : np.ndarray (num_channels,)
        Noise level (MAD) per channel, in the recording's units.
    method : "locally_exclusive" | "algorithm1", default: "locally_exclusive"
        "locally_exclusive" is ``spikeinterface.sortingcomponents.peak_detection.detect_peaks``;
        "algorithm1" is the paper's Algorithm 1 (see :func:`algorithm1`).
    peak_sign : "neg" | "pos" | "both", default: "neg"
    detect_threshold : float, default: 5.0
        Threshold in noise levels (theta of the paper's eq. 6 for "algorithm1").
    exclude_sweep_ms, radius_um : float
        Locally exclusive detection: a peak must be the largest within this time and radius.
    snippet_samples : int
        "algorithm1": the snippet span st; one event per span.
    """
    if method == "locally_exclusive":
        from spikeinterface.sortingcomponents.peak_detection import detect_peaks

        method_kwargs = dict(
            noise_levels=noise_levels,
            peak_sign=peak_sign,
            detect_threshold=detect_threshold,
            exclude_sweep_ms=exclude_sweep_ms,
            radius_um=radius_um,
        )
        peaks = detect_peaks(recording, method="locally_exclusive", method_kwargs=method_kwargs, job_kwargs=job_kwargs)
    elif method == "algorithm1":
        peaks = _detect_algorithm1(recording, noise_levels, peak_sign, detect_threshold, snippet_samples)
    else:
        raise ValueError(f"detection method={method!r} is not valid; choose 'locally_exclusive' or 'algorithm1'")
    order = np.lexsort((peaks["sample_index"], peaks["segment_index"]))
    return peaks[order]


def _signed(traces: np.ndarray, peak_sign: str) -> np.ndarray:
    return {"neg": -traces, "pos": traces, "both": np.abs(traces)}[peak_sign]


def algorithm1(traces: np.ndarray, thresholds: np.ndarray, snippet_samples: int, peak_sign: str = "neg") -> np.ndarray:
    """The paper's Algorithm 1 on one block of traces; returns the centre sample of each snippet.

    The mask F_t is 1 where any channel's (signed) sample exceeds its threshold (eq. 6); D'_t = max over channels
    times F_t. Scanning forward, the first masked sample opens a window of st/2 samples; the snippet is centred on
    the largest D' in that window and the scan resumes after the snippet's second half, so one event is emitted
    per snippet span.

    traces (num_samples, num_channels), thresholds (num_channels,) -> centres (num_events,)
    """
    return algorithm1_scan(traces, thresholds, snippet_samples, peak_sign)[0]


def algorithm1_scan(traces: np.ndarray, thresholds: np.ndarray, snippet_samples: int, peak_sign: str = "neg",
                    first: int = 0, stop: int | None = None, next_free: int = -1) -> tuple[np.ndarray, int]:
    """Algorithm 1's scan restricted to windows opening in ``traces[first:stop]``, resuming after ``next_free``
    (the state carried from the previous block); a window may read up to st/2 samples past ``stop``.

    Returns the centres (indices into ``traces``) and the new ``next_free``.
    """
    signed = _signed(traces, peak_sign)
    above = (signed > thresholds[None, :]).any(axis=1)
    d_prime = signed.max(axis=1) * above
    half = snippet_samples // 2
    stop = traces.shape[0] if stop is None else stop
    centres = []
    for t in np.flatnonzero(above[first:stop]) + first:
        if t < next_free:
            continue
        centre = t + int(np.argmax(d_prime[t : t + half + 1]))
        centres.append(centre)
        next_free = centre + half + 1
    return np.asarray(centres, dtype=np.int64), int(next_free)


def _detect_algorithm1(recording, noise_levels, peak_sign, detect_threshold, snippet_samples):
    from spikeinterface.core.node_pipeline import base_peak_dtype

    # eq. 6 uses median / 0.6745 + theta * std; the MAD noise level is the robust form of the same scale (the std
    # of a spiking channel is inflated by the spikes themselves)
    thresholds = detect_threshold * np.asarray(noise_levels, dtype=np.float32)
    chunk = int(recording.sampling_frequency)  # 1 s blocks, overlapping by one snippet span
    margin = snippet_samples
    all_peaks = []
    for segment_index in range(recording.get_num_segments()):
        num_samples = recording.get_num_samples(segment_index)
        last = -1
        for start in range(0, num_samples, chunk):
            end = min(start + chunk + margin, num_samples)
            traces = recording.get_traces(segment_index=segment_index, start_frame=start, end_frame=end)
            centres = algorithm1(traces, thresholds, snippet_samples, peak_sign)
            centres = centres[(centres + start > last) & (centres < chunk)]
            if centres.size == 0:
                continue
            signed = _signed(traces[centres], peak_sign)
            peaks = np.zeros(centres.size, dtype=base_peak_dtype)
            peaks["sample_index"] = centres + start
            peaks["channel_index"] = np.argmax(signed, axis=1)
            peaks["amplitude"] = traces[centres, peaks["channel_index"]]
            peaks["segment_index"] = segment_index
            # an event kept from the previous block's margin must not be emitted again
            peaks = peaks[peaks["sample_index"] > last + snippet_samples // 2]
            if peaks.size:
                last = int(peaks["sample_index"][-1])
                all_peaks.append(peaks)
    if not all_peaks:
        return np.zeros(0, dtype=base_peak_dtype)
    return np.concatenate(all_peaks)
