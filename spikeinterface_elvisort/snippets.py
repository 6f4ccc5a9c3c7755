"""Local snippets: a window around each event on the peak channel's K nearest channels, in spatial order."""

from __future__ import annotations

import numpy as np


def window_samples(ms_before: float, ms_after: float, sampling_frequency: float) -> tuple[int, int]:
    """The snippet window in samples: (nbefore, nafter) for ``ms_before`` / ``ms_after`` milliseconds at
    ``sampling_frequency`` Hz, each rounded to the nearest sample (SpikeInterface's convention)."""
    return (
        int(round(ms_before * sampling_frequency / 1000.0)),
        int(round(ms_after * sampling_frequency / 1000.0)),
    )


def channel_neighbours(channel_locations: np.ndarray, num_neighbours: int) -> np.ndarray:
    """For each channel, its ``num_neighbours`` nearest channels (itself included), sorted in spatial order.

    Spatial order is depth (y) first, then x, so that the channels of a snippet keep the probe's layout and a unit
    looks the same wherever its peak channel sits (the compression paper shows spatial order matters).

    channel_locations (num_channels, 2 or 3) -> (num_channels, num_neighbours) channel indices
    """
    locations = np.asarray(channel_locations, dtype=np.float64)[:, :2]
    num_neighbours = min(num_neighbours, locations.shape[0])
    distances = np.linalg.norm(locations[:, None, :] - locations[None, :, :], axis=2)
    # stable sort: ties between equidistant channels are broken by channel index, deterministically
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :num_neighbours]
    neighbours = np.empty_like(nearest)
    for channel, indices in enumerate(nearest):
        order = np.lexsort((locations[indices, 0], locations[indices, 1]))
        neighbours[channel] = indices[order]
    return neighbours


def extract_snippets(
    recording,
    peaks: np.ndarray,
    neighbours: np.ndarray,
    nbefore: int,
    nafter: int,
    *,
    chunk_samples: int = 30_000,
    max_gap_samples: int = 1_000,
) -> np.ndarray:
    """Cut (num_peaks, nbefore + nafter, K) float32 snippets around ``peaks`` on each peak channel's neighbours.

    Traces are read span by span: consecutive events share a read unless they lie more than ``max_gap_samples``
    apart or the read would cross a multiple of ``chunk_samples``, so memory is that of the snippets and a sparse
    sample of events (a split test's few hundred) reads only the samples around them, not the whole recording.
    Samples falling outside a segment are zeros: an event in the first or last milliseconds still gets a full
    snippet. ``peaks`` needs fields sample_index, channel_index and segment_index.
    """
    num_samples = nbefore + nafter
    snippets = np.zeros((peaks.size, num_samples, neighbours.shape[1]), dtype=np.float32)
    if peaks.size == 0:
        return snippets
    offsets = np.arange(-nbefore, nafter)
    for segment_index in np.unique(peaks["segment_index"]):
        segment_length = recording.get_num_samples(int(segment_index))
        indices = np.flatnonzero(peaks["segment_index"] == segment_index)
        indices = indices[np.argsort(peaks["sample_index"][indices], kind="stable")]
        times = peaks["sample_index"][indices].astype(np.int64)
        # a new read at each multiple of chunk_samples and after each gap of more than max_gap_samples
        bounds = np.union1d(np.searchsorted(times, np.arange(0, segment_length + chunk_samples, chunk_samples)),
                            np.flatnonzero(np.diff(times) > max_gap_samples) + 1)
        bounds = np.union1d(bounds, [0, times.size])
        for left, right in zip(bounds[:-1], bounds[1:]):
            if left == right:
                continue
            chunk_indices = indices[left:right]
            start = min(max(int(times[left]) - nbefore, 0), segment_length - 1)
            end = max(min(int(times[right - 1]) + nafter, segment_length), start + 1)
            traces = recording.get_traces(segment_index=int(segment_index), start_frame=start, end_frame=end)
            sample = times[left:right, None] + offsets[None, :]
            outside = (sample < start) | (sample >= end)  # beyond the segment's edges: zeros
            sample = np.clip(sample - start, 0, end - start - 1)
            channels = neighbours[peaks["channel_index"][chunk_indices]]
            cut = traces[sample[:, :, None], channels[:, None, :]]
            cut[outside] = 0.0
            snippets[chunk_indices] = cut
    return snippets


def noise_peaks(peaks: np.ndarray, recording, count: int, margin: int, rng: np.random.Generator,
                radius_um: float | None = None) -> np.ndarray:
    """Draw ``count`` pseudo-events at random times and on random channels, at least ``margin`` samples away from
    every detected peak: the non-spike windows of the classifier (the NeuralSorter "cleaner" idea).

    ``radius_um``: only peaks on channels within this distance of the window's channel must be ``margin`` away (a
    spike 200 um along the probe leaves no trace in the window). On a long probe the global rule (None) finds
    almost no window: at 384 channels there is a detection somewhere every millisecond."""
    from spikeinterface.core.node_pipeline import base_peak_dtype

    num_segments = recording.get_num_segments()
    num_channels = recording.get_num_channels()
    lengths = np.array([recording.get_num_samples(s) for s in range(num_segments)])
    near = None
    if radius_um is not None:
        locations = recording.get_channel_locations()[:, :2]
        near = np.linalg.norm(locations[:, None] - locations[None, :], axis=2) <= radius_um
    chosen = []
    for _ in range(4):  # a few rounds of rejection sampling are plenty unless the recording is saturated
        draw = 4 * count
        segments = rng.choice(num_segments, size=draw, p=lengths / lengths.sum())
        times = (rng.random(draw) * (lengths[segments] - 2 * margin)).astype(np.int64) + margin
        # (without a radius the channels are drawn last, as they always were: the same seed, the same windows)
        channels = rng.integers(0, num_channels, size=draw) if near is not None else np.zeros(draw, np.int64)
        keep = np.ones(draw, dtype=bool)
        for segment_index in range(num_segments):
            mask = np.flatnonzero(segments == segment_index)
            in_segment = peaks[peaks["segment_index"] == segment_index]
            order = np.argsort(in_segment["sample_index"], kind="stable")
            spike_times = in_segment["sample_index"][order].astype(np.int64)
            if spike_times.size == 0:
                continue
            # the peaks less than `margin` from each window: positions lo..hi-1 of the sorted times
            lo = np.searchsorted(spike_times, times[mask] - margin, side="right")
            hi = np.searchsorted(spike_times, times[mask] + margin, side="left")
            if near is None:
                keep[mask] = hi <= lo
                continue
            width = int((hi - lo).max(initial=0))
            position = lo[:, None] + np.arange(width)[None, :]
            valid = position < hi[:, None]
            spike_channels = in_segment["channel_index"][order][np.minimum(position, spike_times.size - 1)]
            keep[mask] = ~np.any(valid & near[channels[mask, None], spike_channels], axis=1)
        chosen.append((segments[keep], times[keep], channels[keep]))
        if sum(c[0].size for c in chosen) >= count:
            break
    noise = np.zeros(min(count, sum(c[0].size for c in chosen)), dtype=base_peak_dtype)
    noise["segment_index"] = np.concatenate([c[0] for c in chosen])[:noise.size]
    noise["sample_index"] = np.concatenate([c[1] for c in chosen])[:noise.size]
    noise["channel_index"] = (np.concatenate([c[2] for c in chosen])[:noise.size] if near is not None
                              else rng.integers(0, num_channels, size=noise.size))
    return noise[np.lexsort((noise["sample_index"], noise["segment_index"]))]


LABEL_CHUNK = 20_000  # events labelled per pass: memory of the labelling pass does not grow with the recording


def sample_training_events(num_events: int, max_events: int, rng: np.random.Generator) -> np.ndarray:
    """The training subsample: sorted indices of at most ``max_events`` of ``num_events`` events, drawn without
    replacement from ``rng`` (``params.max_training_events`` gives the bound)."""
    return np.sort(rng.choice(num_events, size=min(max_events, num_events), replace=False))


def label_in_chunks(recording, peaks: np.ndarray, neighbours: np.ndarray, nbefore: int, nafter: int, label, *,
                    chunk: int = LABEL_CHUNK) -> np.ndarray:
    """Every event's label, ``chunk`` events at a time: ``label(snippets, events)`` gets the snippets of the events
    at ``peaks[events]`` (a slice) and returns their labels (int64), so that memory does not grow with the
    recording."""
    labels = np.empty(peaks.size, dtype=np.int64)
    for start in range(0, peaks.size, chunk):
        events = slice(start, start + chunk)
        labels[events] = label(extract_snippets(recording, peaks[events], neighbours, nbefore, nafter), events)
    return labels
