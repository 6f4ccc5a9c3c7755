"""Clean-up: unit templates, merging of near-identical units, duplicate spikes and weak units."""

from __future__ import annotations

import numpy as np


def compute_templates(recording, peaks: np.ndarray, labels: np.ndarray, num_units: int, nbefore: int, nafter: int,
                      job_kwargs: dict | None = None) -> np.ndarray:
    """Mean waveform of each unit on every channel, (num_units, nbefore + nafter, num_channels).

    Uses SpikeInterface's ``estimate_templates_with_accumulator`` (chunked; memory does not grow with the number
    of spikes). Events with label -1 are ignored.
    """
    from spikeinterface.core import estimate_templates_with_accumulator
    from spikeinterface.core.base import minimum_spike_dtype

    keep = labels >= 0
    spikes = np.zeros(int(keep.sum()), dtype=minimum_spike_dtype)
    spikes["sample_index"] = peaks["sample_index"][keep]
    spikes["unit_index"] = labels[keep]
    spikes["segment_index"] = peaks["segment_index"][keep]
    order = np.lexsort((spikes["sample_index"], spikes["segment_index"]))
    spikes = spikes[order]
    # spikes too close to a segment edge cannot be cut by the accumulator
    lengths = np.array([recording.get_num_samples(s) for s in range(recording.get_num_segments())])
    inside = (spikes["sample_index"] >= nbefore) & (spikes["sample_index"] < lengths[spikes["segment_index"]] - nafter)
    spikes = spikes[inside]
    if num_units == 0:
        return np.zeros((0, nbefore + nafter, recording.get_num_channels()), dtype=np.float32)
    job_kwargs = dict(job_kwargs or {})
    job_kwargs["progress_bar"] = False
    templates = estimate_templates_with_accumulator(
        recording, spikes, np.arange(num_units), nbefore, nafter, return_in_uV=False, **job_kwargs
    )
    return templates.astype(np.float32)


def template_distance(first: np.ndarray, second: np.ndarray, max_lag: int) -> float:
    """Normalised distance between two templates (num_samples, num_channels), minimised over time lags of up to
    ``max_lag`` samples: ||a - b|| / max(||a||, ||b||) on the overlapping samples. 0 = identical; 1 or more =
    unrelated (or one of them negligible)."""
    best = np.inf
    num_samples = first.shape[0]
    for lag in range(-max_lag, max_lag + 1):
        a = first[max(lag, 0) : num_samples + min(lag, 0)]
        b = second[max(-lag, 0) : num_samples + min(-lag, 0)]
        norm = max(np.linalg.norm(a), np.linalg.norm(b), 1e-12)
        best = min(best, float(np.linalg.norm(a - b) / norm))
    return best


def merge_similar_units(templates: np.ndarray, counts: np.ndarray, threshold: float, max_lag: int) -> np.ndarray:
    """Agglomerative merge of units whose templates are closer than ``threshold`` (``template_distance``).

    The closest pair is merged first; the merged template is the spike-count-weighted mean. Returns
    ``new_index`` (num_units,): the merged unit of each input unit, numbered 0..num_merged-1 in order of first
    appearance.
    """
    num_units = templates.shape[0]
    group = np.arange(num_units)
    if num_units < 2:
        return group
    templates = templates.astype(np.float64).copy()
    counts = counts.astype(np.float64).copy()
    alive = np.ones(num_units, dtype=bool)
    # only pairs whose peak channels are neighbours can be near-identical: skip the others cheaply
    peak_channel = np.argmax(np.abs(templates).max(axis=1), axis=1)
    footprint = np.abs(templates).max(axis=1)  # (num_units, num_channels)
    distance = np.full((num_units, num_units), np.inf)
    for i in range(num_units):
        for j in range(i + 1, num_units):
            if footprint[j, peak_channel[i]] < 0.5 * footprint[i, peak_channel[i]] and footprint[
                i, peak_channel[j]
            ] < 0.5 * footprint[j, peak_channel[j]]:
                continue
            distance[i, j] = template_distance(templates[i], templates[j], max_lag)
    while True:
        i, j = np.unravel_index(np.argmin(distance), distance.shape)
        if not distance[i, j] < threshold:
            break
        total = counts[i] + counts[j]
        templates[i] = (counts[i] * templates[i] + counts[j] * templates[j]) / max(total, 1.0)
        counts[i] = total
        alive[j] = False
        group[group == j] = i
        distance[j, :] = np.inf
        distance[:, j] = np.inf
        for k in np.flatnonzero(alive):
            if k != i:
                pair = (min(i, k), max(i, k))
                distance[pair] = template_distance(templates[i], templates[k], max_lag)
    _, new_index = np.unique(group, return_inverse=True)
    return new_index


def remove_duplicate_spikes(sample_index: np.ndarray, unit_index: np.ndarray, segment_index: np.ndarray,
                            censor_samples: int) -> np.ndarray:
    """Boolean mask keeping the first of any spikes of the same unit (and segment) closer than
    ``censor_samples``."""
    keep = np.ones(sample_index.size, dtype=bool)
    order = np.lexsort((sample_index, unit_index, segment_index))
    s, u, g = sample_index[order], unit_index[order], segment_index[order]
    same = (u[1:] == u[:-1]) & (g[1:] == g[:-1])
    # iterative censoring: a spike is dropped if it follows the last *kept* spike too closely
    last_kept = 0
    for position in range(1, order.size):
        if same[position - 1] and s[position] - s[last_kept] < censor_samples and u[last_kept] == u[position] \
                and g[last_kept] == g[position]:
            keep[order[position]] = False
        else:
            last_kept = position
    return keep


def template_snr(templates: np.ndarray, noise_levels: np.ndarray) -> np.ndarray:
    """Peak amplitude of each template on its best channel, in units of that channel's noise level."""
    amplitude = np.abs(templates).max(axis=1)  # (num_units, num_channels)
    return (amplitude / np.maximum(noise_levels[None, :], 1e-12)).max(axis=1)
