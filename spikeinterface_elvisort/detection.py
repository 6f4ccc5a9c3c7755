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
        from spikeinterface.core.job_tools import fix_job_kwargs
        from spikeinterface.core.node_pipeline import run_node_pipeline

        node = _cached_locally_exclusive_class()(
            recording, peak_sign=peak_sign, detect_threshold=detect_threshold, exclude_sweep_ms=exclude_sweep_ms,
            radius_um=radius_um, noise_levels=noise_levels,
        )
        peaks = run_node_pipeline(recording, [node], fix_job_kwargs(job_kwargs or {}),
                                  job_name="detect peaks (locally_exclusive)", squeeze_output=True)
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
    return algorithm1_scan(traces, thresholds, snippet_samples, peak_sign=peak_sign)[0]


def algorithm1_scan(traces: np.ndarray, thresholds: np.ndarray, snippet_samples: int, *, peak_sign: str = "neg",
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


def _locally_exclusive_kernel():
    """SpikeInterface's locally exclusive peak finder (``detect_peaks_numba_locally_exclusive_on_chunk``, MIT
    licence), compiled once per installation: ``cache=True`` keeps numba's machine code on disk, so an
    inference-only run does not spend seconds compiling the detector in every new process."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.jit(nopython=True, nogil=True, fastmath=True, cache=True)
        def kernel(traces, do_neg, do_pos, abs_thresholds, exclude_sweep_size, neighbours_mask):
            num_chans = traces.shape[1]
            num_samples = traces.shape[0]
            peak_mask = np.zeros(traces.shape, dtype=np.bool_)
            for s in range(1, num_samples - 1):
                for chan_ind in range(num_chans):
                    if do_neg:
                        if (
                            (traces[s, chan_ind] <= -abs_thresholds[chan_ind])
                            and (traces[s, chan_ind] < traces[s - 1, chan_ind])
                            and (traces[s, chan_ind] <= traces[s + 1, chan_ind])
                        ):
                            peak_mask[s, chan_ind] = True
                    if do_pos:
                        if (
                            (traces[s, chan_ind] >= abs_thresholds[chan_ind])
                            and (traces[s, chan_ind] > traces[s - 1, chan_ind])
                            and (traces[s, chan_ind] >= traces[s + 1, chan_ind])
                        ):
                            peak_mask[s, chan_ind] = True
            samples_inds, chan_inds = np.nonzero(peak_mask)
            npeaks = samples_inds.size
            keep_peak = np.ones(npeaks, dtype=np.bool_)
            next_start = 0
            for i in range(npeaks):
                if (samples_inds[i] < exclude_sweep_size + 1) or (
                    samples_inds[i] >= (num_samples - exclude_sweep_size - 1)
                ):
                    keep_peak[i] = False
                    continue
                for j in range(next_start, npeaks):
                    if i == j:
                        continue
                    if samples_inds[i] + exclude_sweep_size < samples_inds[j]:
                        break
                    if samples_inds[i] - exclude_sweep_size > samples_inds[j]:
                        next_start = j
                        continue
                    if neighbours_mask[chan_inds[i], chan_inds[j]]:
                        if abs(samples_inds[i] - samples_inds[j]) <= exclude_sweep_size:
                            value_i = abs(traces[samples_inds[i], chan_inds[i]]) / abs_thresholds[chan_inds[i]]
                            value_j = abs(traces[samples_inds[j], chan_inds[j]]) / abs_thresholds[chan_inds[j]]
                            if value_j > value_i:
                                keep_peak[i] = False
                                break
                            if (value_j == value_i) & (samples_inds[i] > samples_inds[j]):
                                keep_peak[i] = False
                                break
            return samples_inds[keep_peak], chan_inds[keep_peak]

        _KERNEL = kernel
    return _KERNEL


_KERNEL = None
_NODE_CLASS = None


def _cached_locally_exclusive_class():
    """SpikeInterface's "locally_exclusive" peak detector node with the disk-cached kernel above: the same peaks
    (same thresholds, margins and chunks), without the 10 s or so that SpikeInterface's uncached kernel spends
    compiling in every new process. Built on first use so that importing this module does not import
    spikeinterface's sorting components."""
    global _NODE_CLASS
    if _NODE_CLASS is None:
        from spikeinterface.sortingcomponents.peak_detection.locally_exclusive import LocallyExclusivePeakDetector

        class CachedLocallyExclusivePeakDetector(LocallyExclusivePeakDetector):
            need_first_call_before_pipeline = False

            def compute(self, traces, start_frame, end_frame, segment_index, max_margin):
                kernel = _locally_exclusive_kernel()
                samples, channels = kernel(traces, self.peak_sign in ("neg", "both"),
                                           self.peak_sign in ("pos", "both"), self.abs_thresholds,
                                           self.exclude_sweep_size, self.neighbours_mask)
                peaks = np.zeros(samples.size, dtype=self.get_dtype())
                peaks["sample_index"] = samples
                peaks["channel_index"] = channels
                peaks["amplitude"] = traces[samples, channels]
                peaks["segment_index"] = segment_index
                return (peaks,)

        _NODE_CLASS = CachedLocallyExclusivePeakDetector
    return _NODE_CLASS


def locally_exclusive_peaks(traces: np.ndarray, peak_sign: str, abs_thresholds: np.ndarray, exclude_sweep_size: int,
                            neighbours_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of one block, exactly as SpikeInterface's "locally_exclusive" detector finds them: a sample past its
    channel's threshold that is a local extremum in time and the largest (relative to threshold) within
    ``exclude_sweep_size`` samples on the channels of ``neighbours_mask``. Peaks closer than the sweep to the block's
    edges are left to the neighbouring block. Returns (sample indices, channel indices)."""
    kernel = _locally_exclusive_kernel()
    return kernel(np.ascontiguousarray(traces, dtype=np.float32), peak_sign in ("neg", "both"),
                  peak_sign in ("pos", "both"), np.asarray(abs_thresholds, dtype=np.float32), int(exclude_sweep_size),
                  np.asarray(neighbours_mask, dtype=np.bool_))
