"""Channel neighbours, snippets and noise windows on data with a known answer (ramps, planted peaks)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import expected_snippets, peaks_at, probe_recording

from spikeinterface_elvisort.snippets import channel_neighbours, extract_snippets, noise_peaks


def test_channel_neighbours_on_a_two_column_probe():
    from probeinterface import generate_multi_columns_probe

    probe = generate_multi_columns_probe(num_columns=2, num_contact_per_column=5, xpitch=20, ypitch=20)
    locations = probe.contact_positions
    num_channels = locations.shape[0]
    for k in (1, 3, 4, 7):
        neighbours = channel_neighbours(locations, k)
        assert neighbours.shape == (num_channels, k)
        for channel, row in enumerate(neighbours):
            assert channel in row
            assert len(set(row.tolist())) == k
            # the k nearest: no channel left out is closer than one kept
            distance = np.linalg.norm(locations - locations[channel], axis=1)
            left_out = np.setdiff1d(np.arange(num_channels), row)
            if left_out.size:
                assert distance[row].max() <= distance[left_out].min()
            # spatial order: depth (y) first, then x
            keys = [(locations[c, 1], locations[c, 0]) for c in row]
            assert keys == sorted(keys)
    # asking for more neighbours than channels caps at the number of channels
    assert channel_neighbours(locations, 50).shape == (num_channels, num_channels)


def test_channel_neighbours_accepts_3d_locations():
    locations = np.array([[0.0, 0.0, 5.0], [0.0, 20.0, 5.0], [0.0, 40.0, 5.0]])
    assert channel_neighbours(locations, 2).tolist() == [[0, 1], [0, 1], [1, 2]]


def _ramp(num_samples, num_channels, sign=1.0):
    t = np.arange(num_samples)[:, None]
    c = np.arange(num_channels)[None, :]
    return sign * (t * 100.0 + c)


@pytest.mark.parametrize("chunk_samples", [7, 30_000])
def test_extract_snippets_exact_values_edges_and_segments(chunk_samples):
    segments = [_ramp(200, 4), _ramp(120, 4, sign=-1.0)]
    recording = probe_recording(segments)
    neighbours = np.array([[0, 1], [0, 1], [1, 2], [2, 3]])
    # unsorted, both segments, events at the first and last samples and next to them
    peaks = peaks_at(
        samples=[50, 0, 199, 1, 198, 0, 119, 60, 50],
        channels=[2, 0, 3, 1, 2, 3, 0, 1, 2],
        segments=[0, 0, 0, 0, 0, 1, 1, 1, 1],
    )
    nbefore, nafter = 5, 7
    snippets = extract_snippets(recording, peaks, neighbours, nbefore, nafter, chunk_samples=chunk_samples)
    assert snippets.dtype == np.float32
    assert snippets.shape == (peaks.size, nbefore + nafter, 2)
    expected = expected_snippets([s.astype(np.float32) for s in segments], peaks, neighbours, nbefore, nafter)
    np.testing.assert_array_equal(snippets, expected)
    # spot checks of the padding: the first event's window starts 5 samples before the segment
    assert np.all(snippets[1, :nbefore] == 0) and snippets[1, nbefore, 0] == 0.0 and snippets[1, nbefore, 1] == 1.0
    assert np.all(snippets[2, nbefore + 1 :] == 0) and snippets[2, nbefore, 1] == 199 * 100 + 3
    assert snippets[5, nbefore, 1] == -3.0  # segment 1 is the negated ramp


def test_extract_snippets_with_no_peaks():
    recording = probe_recording([_ramp(100, 4)])
    snippets = extract_snippets(recording, peaks_at([], []), np.array([[0, 1]] * 4), 3, 4)
    assert snippets.shape == (0, 7, 2)


def test_noise_peaks_stay_away_from_every_peak():
    segments = [np.zeros((20_000, 4)), np.zeros((10_000, 4))]
    recording = probe_recording(segments)
    rng = np.random.default_rng(0)
    samples = np.concatenate([np.sort(rng.choice(20_000, 40, replace=False)), np.sort(rng.choice(10_000, 20, replace=False))])
    segment_of = np.r_[np.zeros(40, int), np.ones(20, int)]
    peaks = peaks_at(samples, rng.integers(0, 4, samples.size), segment_of)
    margin = 64
    noise = noise_peaks(peaks, recording, count=100, margin=margin, rng=np.random.default_rng(1))
    assert noise.size == 100
    assert set(np.unique(noise["segment_index"]).tolist()) == {0, 1}
    for segment, length in ((0, 20_000), (1, 10_000)):
        times = noise["sample_index"][noise["segment_index"] == segment]
        spikes = peaks["sample_index"][peaks["segment_index"] == segment]
        assert np.all(np.abs(times[:, None] - spikes[None, :]).min(axis=1) >= margin)
        assert times.min() >= margin and times.max() < length - margin
        assert np.all(np.diff(times) >= 0)  # sorted by segment, then sample
    assert np.all(np.diff(noise["segment_index"]) >= 0)
    assert noise["channel_index"].min() >= 0 and noise["channel_index"].max() < 4


def test_noise_peaks_with_a_radius_stay_away_from_nearby_peaks_only():
    """On a long probe with a detection somewhere at nearly every instant, the global rule finds almost no window;
    with a radius, windows sit beside distant spikes but never within ``margin`` of a spike near their channel."""
    recording = probe_recording([np.zeros((30_000, 40))])  # linear, 20 um pitch: 780 um
    rng = np.random.default_rng(0)
    samples = np.sort(rng.choice(30_000, 3000, replace=False))  # one every 10 samples, on the top 10 channels
    peaks = peaks_at(samples, rng.integers(30, 40, samples.size))
    margin = 50
    assert noise_peaks(peaks, recording, count=200, margin=margin, rng=np.random.default_rng(1)).size < 10
    noise = noise_peaks(peaks, recording, count=200, margin=margin, rng=np.random.default_rng(1), radius_um=100.0)
    assert noise.size == 200
    distance_um = 20.0 * np.abs(noise["channel_index"][:, None] - peaks["channel_index"][None, :])
    close_in_time = np.abs(noise["sample_index"][:, None] - peaks["sample_index"][None, :]) < margin
    assert not np.any(close_in_time & (distance_um <= 100.0))
    assert np.any(close_in_time)  # the distant spikes did not stop them


def test_noise_peaks_are_reproducible():
    recording = probe_recording([np.zeros((10_000, 4))])
    peaks = peaks_at([1000, 5000], [0, 1])
    first = noise_peaks(peaks, recording, 30, 50, np.random.default_rng(3))
    second = noise_peaks(peaks, recording, 30, 50, np.random.default_rng(3))
    np.testing.assert_array_equal(first, second)
