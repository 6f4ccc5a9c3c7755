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
    chunk_samples: int = 30_000,
) -> np.ndarray:
    """Cut (num_peaks, nbefore + nafter, K) float32 snippets around ``peaks`` on each peak channel's neighbours.

    Traces are read chunk by chunk (peaks need not fit a single read), so memory is that of the snippets. Samples
    falling outside a segment are zeros: an event in the first or last milliseconds still gets a full snippet.
    ``peaks`` needs fields sample_index, channel_index and segment_index.
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
        times = peaks["sample_index"][indices]
        # chunk boundaries over the sorted event times
        bounds = np.searchsorted(times, np.arange(0, segment_length + chunk_samples, chunk_samples))
        for left, right in zip(bounds[:-1], bounds[1:]):
            if left == right:
                continue
            chunk_indices = indices[left:right]
            start = max(int(times[left]) - nbefore, 0)
            end = min(int(times[right - 1]) + nafter, segment_length)
            traces = recording.get_traces(segment_index=int(segment_index), start_frame=start, end_frame=end)
            traces = np.pad(traces, ((1, 0), (0, 0)))  # row 0 = zeros, for samples outside the segment
            sample = peaks["sample_index"][chunk_indices][:, None] + offsets[None, :] - start + 1
            sample[(sample < 1) | (sample > end - start)] = 0
            channels = neighbours[peaks["channel_index"][chunk_indices]]
            snippets[chunk_indices] = traces[sample[:, :, None], channels[:, None, :]]
    return snippets


def noise_peaks(peaks: np.ndarray, recording, count: int, margin: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``count`` pseudo-events at random times at least ``margin`` samples away from every detected peak, on
    random channels: the non-spike windows of the classifier (the NeuralSorter "cleaner" idea)."""
    from spikeinterface.core.node_pipeline import base_peak_dtype

    num_segments = recording.get_num_segments()
    lengths = np.array([recording.get_num_samples(s) for s in range(num_segments)])
    chosen = []
    for _ in range(4):  # a few rounds of rejection sampling are plenty unless the recording is saturated
        draw = 4 * count
        segments = rng.choice(num_segments, size=draw, p=lengths / lengths.sum())
        times = (rng.random(draw) * (lengths[segments] - 2 * margin)).astype(np.int64) + margin
        keep = np.ones(draw, dtype=bool)
        for segment_index in range(num_segments):
            mask = segments == segment_index
            spike_times = np.sort(peaks["sample_index"][peaks["segment_index"] == segment_index])
            if spike_times.size == 0:
                continue
            position = np.searchsorted(spike_times, times[mask])
            before = spike_times[np.clip(position - 1, 0, spike_times.size - 1)]
            after = spike_times[np.clip(position, 0, spike_times.size - 1)]
            distance = np.minimum(np.abs(times[mask] - before), np.abs(after - times[mask]))
            keep[mask] = distance >= margin
        chosen.append((segments[keep], times[keep]))
        if sum(c[0].size for c in chosen) >= count:
            break
    segments = np.concatenate([c[0] for c in chosen])[:count]
    times = np.concatenate([c[1] for c in chosen])[:count]
    noise = np.zeros(segments.size, dtype=base_peak_dtype)
    noise["sample_index"] = times
    noise["segment_index"] = segments
    noise["channel_index"] = rng.integers(0, recording.get_num_channels(), size=segments.size)
    return noise[np.lexsort((noise["sample_index"], noise["segment_index"]))]
