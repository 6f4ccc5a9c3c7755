"""The clean-up at many channels: its merge compares only neighbouring units, and gives what comparing every pair
gave (the reference below is the all-pairs merge the package used before)."""

from __future__ import annotations

import numpy as np
import pytest

from spikeinterface_elvisort import curation
from spikeinterface_elvisort.curation import merge_similar_units, template_distance


def merge_all_pairs(templates, counts, threshold, max_lag, distinct=None, noise_levels=None):
    """The all-pairs merge: every pair's distance at the start (cheaply skipped when neither unit reaches half the
    other's peak on its peak channel) and, after each merge, the merged unit's distance to every other unit."""
    num_units = templates.shape[0]
    group = np.arange(num_units)
    if num_units < 2:
        return group
    templates = templates.astype(np.float64).copy()
    counts = counts.astype(np.float64).copy()
    alive = np.ones(num_units, dtype=bool)
    peak_channel = np.argmax(np.abs(templates).max(axis=1), axis=1)
    footprint = np.abs(templates).max(axis=1)
    per_spike = 0.0 if noise_levels is None else float(np.sum(np.asarray(noise_levels, dtype=np.float64) ** 2))

    def noise(i, j):
        return per_spike / max(counts[i], 1.0), per_spike / max(counts[j], 1.0)

    distance = np.full((num_units, num_units), np.inf)
    for i in range(num_units):
        for j in range(i + 1, num_units):
            if footprint[j, peak_channel[i]] < 0.5 * footprint[i, peak_channel[i]] and footprint[
                i, peak_channel[j]
            ] < 0.5 * footprint[j, peak_channel[j]]:
                continue
            distance[i, j] = curation.template_distance(templates[i], templates[j], max_lag, noise(i, j))
    while True:
        i, j = np.unravel_index(np.argmin(distance), distance.shape)
        if not distance[i, j] < threshold:
            break
        if distinct is not None and distinct(np.flatnonzero(group == i), np.flatnonzero(group == j), templates[i],
                                             templates[j]):
            distance[i, j] = np.inf
            continue
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
                distance[pair] = curation.template_distance(templates[pair[0]], templates[pair[1]], max_lag,
                                                            noise(*pair))
    _, new_index = np.unique(group, return_inverse=True)
    return new_index


@pytest.fixture
def counted_distances(monkeypatch):
    """Counts the template distances the merges compute (both merges call curation.template_distance)."""
    calls = []

    def counting(first, second, max_lag, noise_power=(0.0, 0.0)):
        calls.append(1)
        return template_distance(first, second, max_lag, noise_power)

    monkeypatch.setattr(curation, "template_distance", counting)
    return calls


def _probe_templates(num_units, num_channels, seed, pitch_um=20.0, num_samples=30):
    """Units spread evenly along a linear probe (one per 5 channels), each a spike shape whose amplitude falls off
    over ~30 um; every third unit has an over-split twin (its template plus a little noise). Returns (templates,
    counts, the twin pairs)."""
    rng = np.random.default_rng(seed)
    depth = np.arange(num_channels) * pitch_um
    time = np.arange(num_samples)
    shape = -np.exp(-0.5 * ((time - 10) / 2.0) ** 2) + 0.3 * np.exp(-0.5 * ((time - 16) / 3.0) ** 2)
    centres = (np.arange(num_units) + 0.5) * num_channels * pitch_um / num_units + rng.normal(0, 5, num_units)
    templates = [rng.uniform(5, 15) * shape[:, None] * np.exp(-0.5 * ((depth - c) / 30.0) ** 2)[None, :]
                 for c in centres]
    twins = []
    for unit in range(0, num_units, 3):
        twins.append((unit, len(templates)))
        templates.append(templates[unit] + rng.normal(0, 0.01, templates[unit].shape))
    templates = np.stack(templates).astype(np.float32)
    return templates, rng.integers(50, 500, templates.shape[0]), twins


def test_merge_compares_neighbours_only_and_its_count_grows_with_them(counted_distances):
    counts_by_size = {}
    for num_units, num_channels in ((20, 100), (80, 400)):
        templates, counts, twins = _probe_templates(num_units, num_channels, seed=num_units)
        counted_distances.clear()
        merged = merge_similar_units(templates, counts, 0.3, 3)
        counts_by_size[num_units] = len(counted_distances)
        counted_distances.clear()
        np.testing.assert_array_equal(merged, merge_all_pairs(templates, counts, 0.3, 3))
        all_pairs_count = len(counted_distances)
        for unit, twin in twins:  # the over-split units merge, and nothing else does
            assert merged[unit] == merged[twin]
        assert np.unique(merged).size == num_units
        assert counts_by_size[num_units] < all_pairs_count
    # 4x the units on a 4x longer probe: about 4x the comparisons (all pairs would be 16x)
    ratio = counts_by_size[80] / counts_by_size[20]
    assert 2.5 < ratio < 6.0, counts_by_size


def test_clean_up_at_128_channels_equals_the_all_pairs_version(monkeypatch, counted_distances, tmp_path):
    """128 channels, 10 s, 30 units: the clean-up of the ground-truth spikes, with a third of the units cut in two
    halves, gives the same units and spikes with the neighbours-only merge as with the all-pairs one, from fewer
    template comparisons; and the halves merge again."""
    from spikeinterface.core import generate_ground_truth_recording

    from spikeinterface_elvisort import pipeline
    from spikeinterface_elvisort.curation import compute_templates
    from spikeinterface_elvisort.preprocessing import cache_recording, preprocess, seeded_noise_levels
    from spikeinterface_elvisort.snippets import window_samples
    from spikeinterface.core.node_pipeline import base_peak_dtype

    from conftest import default_params

    recording, gt = generate_ground_truth_recording(num_channels=128, durations=[10.0], num_units=30, seed=3,
                                                    noise_kwargs=dict(noise_levels=5.0, strategy="on_the_fly"))
    job_kwargs = {"n_jobs": 1, "progress_bar": False}
    preprocessed, _ = cache_recording(preprocess(recording, whitening=True, seed=0), "memory", tmp_path, job_kwargs)
    noise_levels = seeded_noise_levels(preprocessed, 0, job_kwargs)
    params = default_params("cpu") | {"matching_method": "none"}
    nbefore, nafter = window_samples(params["ms_before"], params["ms_after"], recording.sampling_frequency)

    spikes = gt.to_spike_vector()
    labels = spikes["unit_index"].astype(np.int64)
    templates = compute_templates(preprocessed, spikes, labels, 30, nbefore, nafter, job_kwargs)
    peaks = np.zeros(spikes.size, dtype=base_peak_dtype)
    peaks["sample_index"] = spikes["sample_index"]
    peaks["segment_index"] = spikes["segment_index"]
    peaks["channel_index"] = np.argmax(np.abs(templates).max(axis=1), axis=1)[labels]
    rng = np.random.default_rng(0)
    halves = np.isin(labels, np.arange(0, 30, 3)) & (rng.random(labels.size) < 0.5)
    labels = np.where(halves, 30 + labels // 3, labels)  # units 0, 3, ..., 27 split into 30..39

    def clean_up():
        counted_distances.clear()
        result = pipeline._clean_up(preprocessed, peaks, labels, 40, noise_levels, nbefore, nafter, params,
                                    job_kwargs)
        return result, len(counted_distances)

    (peaks_new, labels_new, units_new, templates_new), compared = clean_up()
    monkeypatch.setattr(pipeline, "merge_similar_units", merge_all_pairs)
    (peaks_old, labels_old, units_old, templates_old), compared_all = clean_up()

    assert units_new == units_old
    np.testing.assert_array_equal(peaks_new, peaks_old)
    np.testing.assert_array_equal(labels_new, labels_old)
    np.testing.assert_array_equal(templates_new, templates_old)
    assert compared < compared_all
    # the halves found their unit again (30 ground-truth units; weak ones may go)
    assert 25 <= units_new <= 31, units_new
