"""Curation on known units: duplicates, ISI violations, template distances, merges and split tests."""

from __future__ import annotations

import numpy as np
import pytest

from spikeinterface.core.node_pipeline import base_peak_dtype

from conftest import peaks_at, probe_recording

from spikeinterface_elvisort.curation import (
    SplitTest, compute_templates, isi_violations_ratio, merge_similar_units, remove_duplicate_spikes,
    split_multimodal, template_distance,
)


def test_remove_duplicate_spikes():
    samples = np.array([22, 0, 5, 8, 20, 5, 0, 3])
    units = np.array([0, 0, 0, 0, 0, 1, 0, 0])
    segments = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    keep = remove_duplicate_spikes(samples, units, segments, censor_samples=10)
    # unit 0, segment 0: 0 kept, 5 and 8 censored (within 10 of 0), 20 kept, 22 censored; unit 1 and segment 1 are
    # independent
    assert keep.tolist() == [False, True, False, False, True, True, True, False]
    assert remove_duplicate_spikes(samples, units, segments, censor_samples=1).all()
    assert remove_duplicate_spikes(np.array([], int), np.array([], int), np.array([], int), 10).size == 0


def _trains(seed=0, durations=(20.0, 10.0), fs=30_000.0):
    """Per segment: unit 0 at 15 Hz with a 4 ms refractory period, unit 1 at 150 Hz at random times."""
    rng = np.random.default_rng(seed)
    samples, units, segments = [], [], []
    for segment, duration in enumerate(durations):
        refractory = np.cumsum(rng.exponential(1 / 15, size=int(30 * duration)) + 0.004)
        for unit, times in enumerate((refractory[refractory < duration], rng.uniform(0, duration, int(150 * duration)))):
            samples.append(np.sort(np.round(times * fs).astype(np.int64)))
            units.append(np.full(times.size, unit))
            segments.append(np.full(times.size, segment))
    return np.concatenate(samples), np.concatenate(units), np.concatenate(segments)


def test_isi_violations_ratio_is_spikeinterfaces_and_tells_noise_from_units():
    from spikeinterface.metrics.quality.misc_metrics import isi_violations

    fs, durations = 30_000.0, (20.0, 10.0)
    samples, units, segments = _trains(durations=durations, fs=fs)
    # shuffled input, as the clean-up's events may come
    order = np.random.default_rng(1).permutation(samples.size)
    ratio = isi_violations_ratio(samples[order], units[order], segments[order], 3, fs, sum(durations),
                                 isi_threshold_ms=1.5, min_isi_ms=0.3)
    for unit in (0, 1):
        trains = [samples[(units == unit) & (segments == s)] / fs for s in range(len(durations))]
        expected = isi_violations(trains, sum(durations), isi_threshold_s=0.0015, min_isi_s=0.0003)[0]
        assert ratio[unit] == pytest.approx(expected, rel=0.01)
    assert ratio[0] == 0.0  # a refractory period: no violation
    assert 0.4 < ratio[1] < 0.6  # random times: about 0.5
    assert ratio[2] == 0.0  # a unit without spikes


def test_isi_violations_ratio_ignores_intervals_across_segments():
    # segment 1's spike follows segment 0's last spike in the sorted events, at a smaller sample index: the
    # interval between them (negative, so "shorter than 1.5 ms") is not an interval of the spike train
    samples, units, segments = np.array([0, 1000, 2000, 1]), np.zeros(4, int), np.array([0, 0, 0, 1])
    assert isi_violations_ratio(samples, units, segments, 1, 30_000.0, 1.0).tolist() == [0.0]
    close = isi_violations_ratio(np.array([0, 10]), np.zeros(2, int), np.zeros(2, int), 1, 30_000.0, 1.0)
    assert close[0] > 0


def _pulse(num_samples, centre, width=2.0):
    t = np.arange(num_samples)
    return -np.exp(-0.5 * ((t - centre) / width) ** 2)


def test_template_distance():
    first = np.zeros((60, 4))
    first[:, 1] = 10 * _pulse(60, 25)
    first[:, 2] = 4 * _pulse(60, 26)
    assert template_distance(first, first, max_lag=0) == 0.0
    shifted = np.roll(first, 3, axis=0)  # the pulse is ~0 at the ends: a pure shift
    assert template_distance(first, shifted, max_lag=3) < 1e-6
    assert template_distance(shifted, first, max_lag=3) < 1e-6
    assert template_distance(first, shifted, max_lag=1) > 0.3  # the shift is beyond max_lag
    elsewhere = np.zeros_like(first)
    elsewhere[:, 3] = 10 * _pulse(60, 25)
    assert template_distance(first, elsewhere, max_lag=3) >= 1.0
    assert template_distance(first, 0.5 * first, max_lag=0) == pytest.approx(0.5)


def test_merge_similar_units():
    a = np.zeros((60, 4))
    a[:, 1] = 10 * _pulse(60, 25)
    a[:, 0] = 3 * _pulse(60, 25)
    b = np.zeros((60, 4))
    b[:, 1] = -8 * _pulse(60, 25, width=6.0)  # same channel, a different (positive, wide) shape
    templates = np.stack([a, b, np.roll(a, 2, axis=0)])  # unit 2 = unit 0, 2 samples later
    merged = merge_similar_units(templates, np.array([100, 50, 80]), threshold=0.25, max_lag=3)
    assert merged.tolist() == [0, 1, 0]
    assert merge_similar_units(templates, np.array([100, 50, 80]), threshold=0.0, max_lag=3).tolist() == [0, 1, 2]
    assert merge_similar_units(templates[:1], np.array([5]), threshold=0.25, max_lag=3).tolist() == [0]
    # three identical units become one
    assert merge_similar_units(np.stack([a, a, a]), np.array([1, 2, 3]), 0.25, 3).tolist() == [0, 0, 0]


def test_noise_corrected_merge_joins_the_halves_of_a_noisy_unit():
    """Two halves of one unit (200 spikes each, 32 channels, noise level 1): the noise of their means alone puts the
    plain distance above the merge threshold; without that noise they merge, and a distinct unit on the same
    channels stays apart."""
    rng = np.random.default_rng(0)
    num_samples, num_channels, count = 80, 32, 200
    shape = np.zeros((num_samples, num_channels))
    shape[:, 10:13] = _pulse(num_samples, 32)[:, None] * np.array([4.0, 6.0, 4.0])
    other = np.zeros_like(shape)
    other[:, 10:13] = _pulse(num_samples, 36, width=4.0)[:, None] * np.array([2.0, 6.0, 5.0])
    means = [template + rng.normal(size=(count, num_samples, num_channels)).mean(axis=0)
             for template in (shape, shape, other)]
    noise_power = (num_channels / count, num_channels / count)
    assert template_distance(means[0], means[1], max_lag=3) > 0.3
    assert template_distance(means[0], means[1], max_lag=3, noise_power=noise_power) < 0.15
    assert template_distance(means[0], means[2], max_lag=3, noise_power=noise_power) > 0.5
    # the correction only removes noise: noise-free templates measure as before
    assert template_distance(shape, other, 3, noise_power=(0.0, 0.0)) == template_distance(shape, other, 3)

    counts = np.full(3, count)
    assert merge_similar_units(np.stack(means), counts, 0.3, 3).tolist() == [0, 1, 2]
    corrected = merge_similar_units(np.stack(means), counts, 0.3, 3, noise_levels=np.ones(num_channels))
    assert corrected.tolist() == [0, 0, 1]


def test_cut_groups_reads_several_groups_per_pass_as_one_at_a_time():
    """The split test cuts every unit's events together (few passes over the traces); each group's waveforms are
    those of cutting it alone, whether the groups share one pass or are spread over several."""
    from spikeinterface_elvisort.curation import _cut, _cut_groups

    rng = np.random.default_rng(0)
    recording = probe_recording([rng.normal(size=(90_000, 6))])
    peaks = peaks_at(np.sort(rng.choice(np.arange(50, 89_900), 300, replace=False)), 0)
    noise_levels = rng.uniform(0.5, 2.0, 6)
    groups = [(np.sort(rng.choice(300, size, replace=False)), np.sort(rng.choice(6, 3, replace=False)))
              for size in (40, 0, 120, 75)]
    alone = [_cut(recording, peaks, members, channels, 20, 40, noise_levels=noise_levels)
             for members, channels in groups]
    assert alone[2].shape == (120, 60, 3)
    for max_events in (1000, 100, 1):  # one pass; two; one per group
        together = list(_cut_groups(recording, peaks, groups, 20, 40, noise_levels, max_events=max_events))
        assert len(together) == len(groups)
        for waveforms, expected in zip(together, alone):
            np.testing.assert_array_equal(waveforms, expected)


def _two_unit_recording(seed=0, amplitudes_b=(8, 10, 6, 3)):
    """Unit A (amplitudes 10, 8, 5, 3 noise levels on channels 0-3) and unit B (by default 8, 10, 6, 3) fire 400
    spikes each; A's amplitude varies uniformly by +-20%. By default the templates lie at distance ~0.2: close, but
    about 6 noise levels apart."""
    rng = np.random.default_rng(seed)
    num_samples, nbefore, nafter = 600_000, 20, 40
    traces = rng.normal(size=(num_samples, 6)).astype(np.float32)
    shape = _pulse(nbefore + nafter, nbefore)
    shapes = {"a": np.array([10, 8, 5, 3, 0, 0]), "b": np.array([*amplitudes_b, 0, 0])}
    times = np.sort(rng.choice(np.arange(100, num_samples - 100, 150), 800, replace=False))
    units = rng.permutation(np.repeat([0, 1], 400))
    scale = np.where(units == 0, rng.uniform(0.8, 1.2, units.size), 1.0)
    for time, unit, factor in zip(times, units, scale):
        traces[time - nbefore : time + nafter] += factor * shape[:, None] * shapes["ab"[unit]][None, :]
    recording = probe_recording([traces])
    peaks = peaks_at(times, np.where(units == 0, 0, 1))
    return recording, peaks, units, scale, nbefore, nafter


def test_split_test_keeps_close_but_distinct_units_apart():
    recording, peaks, units, scale, nbefore, nafter = _two_unit_recording()
    noise_levels = np.ones(6)
    templates = compute_templates(recording, peaks, units, 2, nbefore, nafter)
    assert template_distance(templates[0], templates[1], max_lag=3) < 0.3  # the fixed threshold would merge them
    test = SplitTest(recording, peaks, units, nbefore, nafter, noise_levels, max_lag=3)
    assert test([0], [1], templates[0], templates[1])
    assert merge_similar_units(templates, np.bincount(units), 0.3, 3, distinct=test).tolist() == [0, 1]
    assert merge_similar_units(templates, np.bincount(units), 0.3, 3).tolist() == [0, 0]

    # unit A cut in two at its median amplitude: one mode (a flat one) along the template difference -> merged
    of_a = units == 0
    halves = np.where(of_a, (scale > np.median(scale[of_a])).astype(int), -1)
    templates = compute_templates(recording, peaks, halves, 2, nbefore, nafter)
    test = SplitTest(recording, peaks, halves, nbefore, nafter, noise_levels, max_lag=3)
    assert not test([0], [1], templates[0], templates[1])
    # and cut at random: the same template twice -> merged
    random_halves = np.where(of_a, np.arange(units.size) % 2, -1)
    templates = compute_templates(recording, peaks, random_halves, 2, nbefore, nafter)
    test = SplitTest(recording, peaks, random_halves, nbefore, nafter, noise_levels, max_lag=3)
    assert not test([0], [1], templates[0], templates[1])
    assert merge_similar_units(templates, np.array([200, 200]), 0.3, 3, distinct=test).tolist() == [0, 0]


def test_split_multimodal_separates_a_mixed_cluster_only():
    recording, peaks, units, scale, nbefore, nafter = _two_unit_recording(amplitudes_b=(4, 10, 9, 3))
    # one cluster holding both units, one holding unit A alone (its amplitude spread is one broad mode)
    mixed = np.where(np.arange(units.size) % 2 == 0, 0, np.where(units == 0, 1, -1))
    labels, num = split_multimodal(recording, peaks, mixed, 2, nbefore, nafter, noise_levels=np.ones(6))
    assert num == 3
    assert np.array_equal(labels < 0, mixed < 0)
    for part in range(num):
        truth = units[labels == part]
        assert np.bincount(truth, minlength=2).max() >= 0.98 * truth.size  # every part is one unit
    assert len(set(labels[mixed == 1])) == 1  # unit A alone stays whole
    again, num_again = split_multimodal(recording, peaks, mixed, 2, nbefore, nafter, noise_levels=np.ones(6))
    assert num_again == num and np.array_equal(again, labels)  # deterministic
    # tested on a sample (the clean-up's mode): a cluster that splits keeps only its sampled events, one that does not
    # split keeps all of them
    sampled, num_sampled = split_multimodal(recording, peaks, mixed, 2, nbefore, nafter, noise_levels=np.ones(6),
                                            max_events=150)
    assert num_sampled == 3
    assert (sampled[mixed == 0] >= 0).sum() == 150
    assert np.array_equal(sampled[mixed == 1] >= 0, np.ones((mixed == 1).sum(), dtype=bool))


def test_templates_do_not_depend_on_the_workers():
    """Several workers add their partial sums in the order they finish: templates must not see them."""
    from spikeinterface.core import generate_ground_truth_recording

    from spikeinterface_elvisort.curation import compute_templates

    recording, sorting = generate_ground_truth_recording(num_channels=8, durations=[20.0], num_units=6, seed=0)
    recording = recording.save(format="memory", progress_bar=False)
    spikes = sorting.to_spike_vector()
    peaks = np.zeros(spikes.size, dtype=base_peak_dtype)
    peaks["sample_index"] = spikes["sample_index"]
    job_kwargs = {"n_jobs": 2, "pool_engine": "thread", "chunk_duration": "0.5s"}
    first = compute_templates(recording, peaks, spikes["unit_index"], 6, 30, 45, job_kwargs=job_kwargs)
    for _ in range(4):
        again = compute_templates(recording, peaks, spikes["unit_index"], 6, 30, 45, job_kwargs=job_kwargs)
        assert np.array_equal(again, first)
