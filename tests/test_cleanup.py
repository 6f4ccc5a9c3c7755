"""The clean-up both sorters end with: at many channels its merge compares only neighbouring units and gives what
comparing every pair gave (the reference below is the all-pairs merge the package used before); the auto-merge
after matching maps every unit and compiles nothing; matching gives the same spikes in threads and processes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from spikeinterface.core.node_pipeline import base_peak_dtype

from spikeinterface_elvisort import curation
from spikeinterface_elvisort.curation import compute_templates, merge_similar_units, template_distance


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

    from spikeinterface_elvisort import cleanup
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
    templates = compute_templates(preprocessed, spikes, labels, 30, nbefore, nafter, job_kwargs=job_kwargs)
    peaks = np.zeros(spikes.size, dtype=base_peak_dtype)
    peaks["sample_index"] = spikes["sample_index"]
    peaks["segment_index"] = spikes["segment_index"]
    peaks["channel_index"] = np.argmax(np.abs(templates).max(axis=1), axis=1)[labels]
    rng = np.random.default_rng(0)
    halves = np.isin(labels, np.arange(0, 30, 3)) & (rng.random(labels.size) < 0.5)
    labels = np.where(halves, 30 + labels // 3, labels)  # units 0, 3, ..., 27 split into 30..39

    def clean_up():
        counted_distances.clear()
        result = cleanup.clean_up(preprocessed, peaks, labels, 40, noise_levels=noise_levels, nbefore=nbefore,
                                  nafter=nafter, params=params, job_kwargs=job_kwargs)
        return result, len(counted_distances)

    (peaks_new, labels_new, units_new, templates_new), compared = clean_up()
    monkeypatch.setattr(cleanup, "merge_similar_units", merge_all_pairs)
    (peaks_old, labels_old, units_old, templates_old), compared_all = clean_up()

    assert units_new == units_old
    np.testing.assert_array_equal(peaks_new, peaks_old)
    np.testing.assert_array_equal(labels_new, labels_old)
    np.testing.assert_array_equal(templates_new, templates_old)
    assert compared < compared_all
    # the halves found their unit again (30 ground-truth units; weak ones may go)
    assert 25 <= units_new <= 31, units_new


def test_auto_merge_maps_units_when_spikes_are_censored(monkeypatch):
    """SpikeInterface's auto-merge may censor spikes while merging: every unit still maps to its merged unit."""
    from types import SimpleNamespace

    import spikeinterface_elvisort.cleanup as cleanup
    from spikeinterface.core import NumpySorting
    from spikeinterface.core.base import minimum_spike_dtype
    from spikeinterface.core.node_pipeline import base_peak_dtype

    events = np.zeros(9, dtype=base_peak_dtype)
    events["sample_index"] = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    labels = np.array([0, 1, 0, 1, 2, 2, 0, 1, 2])

    def fake_merge(recording, sorting, templates, amplitudes, noise_levels, min_spikes, job_kwargs):
        # units 0 and 1 merge (new unit 0), unit 2 becomes 1; the spikes at 40 and 90 are censored
        keep = ~np.isin(events["sample_index"], [40, 90])
        spikes = np.zeros(int(keep.sum()), dtype=minimum_spike_dtype)
        spikes["sample_index"] = events["sample_index"][keep]
        spikes["unit_index"] = np.where(labels[keep] == 2, 1, 0)
        return NumpySorting(spikes, 30000.0, np.arange(2))

    monkeypatch.setattr(cleanup, "_merged_sorting", fake_merge)
    recording = SimpleNamespace(sampling_frequency=30000.0)
    merged, num_units = cleanup.auto_merge(recording, events, labels, SimpleNamespace(unit_ids=np.arange(3)),
                                           noise_levels=None, job_kwargs={}, min_spikes=10)
    assert num_units == 2
    assert merged.tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 1]


def test_auto_merge_joins_a_small_piece_of_a_unit_from_min_spikes_on():
    """A unit cut in a large part and a 30-spike piece (same template): SpikeInterface's default of 100 spikes leaves
    the piece apart, ``min_spikes=10`` (auto_merge_min_spikes) merges it back; a distinct unit stays apart."""
    from spikeinterface.core import Templates, generate_ground_truth_recording, get_noise_levels
    from spikeinterface.core.node_pipeline import base_peak_dtype
    from spikeinterface.preprocessing import bandpass_filter

    from spikeinterface_elvisort.cleanup import auto_merge

    recording, gt = generate_ground_truth_recording(num_channels=4, num_units=2, durations=[40.0], seed=3)
    recording = bandpass_filter(recording, freq_min=300.0, freq_max=6000.0)
    samples = np.concatenate([gt.get_unit_spike_train(u) for u in gt.unit_ids])
    truth = np.concatenate([np.full(gt.get_unit_spike_train(u).size, i) for i, u in enumerate(gt.unit_ids)])
    order = np.argsort(samples, kind="stable")
    samples, truth = samples[order], truth[order]
    labels = truth.copy()
    piece = np.flatnonzero(truth == 0)[::20][:30]  # 30 spikes of unit 0 spread over the recording
    labels[piece] = 2
    events = np.zeros(samples.size, dtype=base_peak_dtype)
    events["sample_index"] = samples
    events["amplitude"] = 1.0
    nbefore, nafter = 30, 45
    array = compute_templates(recording, events, labels, 3, nbefore, nafter,
                              job_kwargs={"n_jobs": 1, "progress_bar": False})
    templates = Templates(templates_array=array, sampling_frequency=recording.sampling_frequency, nbefore=nbefore,
                          sparsity_mask=np.ones((3, 4), dtype=bool), channel_ids=recording.channel_ids,
                          unit_ids=np.arange(3), probe=recording.get_probe(), is_in_uV=False)
    noise_levels = get_noise_levels(recording, return_in_uV=False, random_slices_kwargs={"seed": 0})
    job_kwargs = {"n_jobs": 1}
    _, count_apart = auto_merge(recording, events, labels, templates, noise_levels=noise_levels,
                                job_kwargs=job_kwargs, min_spikes=100)
    assert count_apart == 3
    merged, count = auto_merge(recording, events, labels, templates, noise_levels=noise_levels,
                               job_kwargs=job_kwargs, min_spikes=10)
    assert count == 2
    assert np.unique(merged[truth == 0]).size == 1  # the piece is back with unit 0 ...
    assert merged[truth == 0][0] != merged[truth == 1][0]  # ... and unit 1 is another unit


AUTO_MERGE_COMPILES = """
import numpy as np

from spikeinterface.core import Templates, generate_ground_truth_recording, get_noise_levels, sorting_tools
from spikeinterface.core.node_pipeline import base_peak_dtype
from spikeinterface.curation import auto_merge
from spikeinterface.metrics.quality import misc_metrics
from spikeinterface.postprocessing import template_similarity
from spikeinterface_elvisort.curation import compute_templates
from spikeinterface_elvisort.cleanup import auto_merge as merge_units

recording, gt = generate_ground_truth_recording(num_channels=4, num_units=3, durations=[20.0], seed=0)
spikes = gt.to_spike_vector()
events = np.zeros(spikes.size, dtype=base_peak_dtype)
events["sample_index"], events["amplitude"] = spikes["sample_index"], 1.0
labels = spikes["unit_index"].astype(np.int64)
array = compute_templates(recording, events, labels, 3, 30, 45, job_kwargs={"n_jobs": 1, "progress_bar": False})
templates = Templates(templates_array=array, sampling_frequency=recording.sampling_frequency, nbefore=30,
                      sparsity_mask=np.ones((3, 4), dtype=bool), channel_ids=recording.channel_ids,
                      unit_ids=np.arange(3), probe=recording.get_probe(), is_in_uV=False)
noise_levels = get_noise_levels(recording, return_in_uV=False, random_slices_kwargs={"seed": 0})
_, count = merge_units(recording, events, labels, templates, noise_levels=noise_levels, job_kwargs={"n_jobs": 1},
                       min_spikes=10)
compiled = [name for name, kernel in [
    ("compute_nb_violations", auto_merge.compute_nb_violations),
    ("compute_nb_coincidence", auto_merge.compute_nb_coincidence),
    ("_compute_rp_violations_numba", misc_metrics._compute_rp_violations_numba),
    ("_compute_similarity_matrix", template_similarity._compute_similarity_matrix),
] if getattr(kernel, "signatures", None)]
compiled += [name for name in ("get_numba_reorder_spike_vector", "get_numba_vector_to_list_of_spiketrain")
             if hasattr(getattr(sorting_tools, name), "_cached_numba_function")]
print("UNITS", count, "COMPILED", compiled)
"""


def test_auto_merge_compiles_no_numba_kernel():
    """In a new process, the auto-merge after matching (its analyzer, contamination and similarity steps) compiles
    none of SpikeInterface's numba kernels: each of them would cost that process a second or more."""
    pytest.importorskip("numba")
    result = subprocess.run([sys.executable, "-c", AUTO_MERGE_COMPILES], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [line for line in result.stdout.splitlines() if line.startswith("UNITS")][-1]
    assert line == "UNITS 3 COMPILED []"


def test_template_matching_finds_the_same_spikes_in_forked_processes_as_in_threads():
    """Matching runs in forked processes by default (jobs.matching_job_kwargs), after torch has trained in this
    process: the spikes must be those that threads and a single worker find."""
    import sys

    import torch
    from spikeinterface.core import generate_ground_truth_recording

    from spikeinterface_elvisort.curation import compute_templates
    from spikeinterface_elvisort.cleanup import match_templates
    from spikeinterface_elvisort.device import blas_threads

    if not sys.platform.startswith("linux"):
        pytest.skip("forked workers are used on Linux only")
    torch.nn.functional.conv1d(torch.randn(8, 4, 200), torch.randn(4, 4, 9)).sum()  # torch's thread pool is up
    recording, sorting = generate_ground_truth_recording(num_channels=8, durations=[10.0], num_units=4, seed=0)
    recording = recording.save(format="memory", sharedmem=True, progress_bar=False)
    spikes = sorting.to_spike_vector()
    peaks = np.zeros(spikes.size, dtype=base_peak_dtype)
    peaks["sample_index"] = spikes["sample_index"]
    templates = compute_templates(recording, peaks, spikes["unit_index"], 4, 30, 45, job_kwargs={"n_jobs": 1})
    noise_levels = np.ones(8, dtype=np.float32)
    base = {"chunk_duration": "1s", "progress_bar": False, "n_jobs": 2}
    # one BLAS thread in every case, set once: SpikeInterface's per-chunk max_threads_per_worker is a process-wide
    # limit that threads restore under each other's feet (see device.blas_threads), which made this test flaky
    with blas_threads(1):
        found = [
            match_templates(recording, templates, noise_levels=noise_levels, nbefore=30, method="circus-omp",
                            job_kwargs=base | extra)[:2]
            for extra in ({"pool_engine": "process", "mp_context": "fork", "max_threads_per_worker": 1},
                          {"pool_engine": "thread", "max_threads_per_worker": None}, {"n_jobs": 1})
        ]
    assert found[0][0].size > 0.9 * spikes.size
    for events, labels in found[1:]:
        np.testing.assert_array_equal(events, found[0][0])
        np.testing.assert_array_equal(labels, found[0][1])
