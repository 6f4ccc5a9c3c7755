"""The sorting built from labelled events: segments, units and sampling frequency kept."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import peaks_at

from spikeinterface_elvisort.results import to_sorting


@pytest.mark.parametrize("num_segments", [2, 3])
def test_to_sorting_keeps_segments_units_and_sampling_frequency(num_segments):
    peaks = peaks_at(samples=[10, 20, 30, 40, 5, 15], channels=[0] * 6, segments=[0, 0, 0, 0, 1, 1])
    labels = np.array([0, 1, -1, 0, 1, 1])
    unit_ids = np.array([0, 1, 2])  # unit 2 has no spikes
    sorting = to_sorting(peaks, labels, unit_ids, 25_000.0, num_segments)
    assert sorting.get_num_segments() == num_segments
    assert sorting.get_sampling_frequency() == 25_000.0
    assert list(sorting.unit_ids) == [0, 1, 2]
    assert sorting.get_unit_spike_train(0, segment_index=0).tolist() == [10, 40]
    assert sorting.get_unit_spike_train(1, segment_index=0).tolist() == [20]
    assert sorting.get_unit_spike_train(1, segment_index=1).tolist() == [5, 15]
    assert sorting.get_unit_spike_train(0, segment_index=1).size == 0
    assert sorting.get_unit_spike_train(2, segment_index=0).size == 0
    if num_segments == 3:
        assert all(sorting.get_unit_spike_train(u, segment_index=2).size == 0 for u in unit_ids)
    assert sorting.to_spike_vector().size == 5  # label -1 dropped


def test_to_sorting_with_no_spikes_keeps_the_segments():
    peaks = peaks_at(samples=[10, 20], channels=[0, 0])
    sorting = to_sorting(peaks, np.array([-1, -1]), np.array([], dtype=int), 30_000.0, 2)
    assert sorting.get_num_segments() == 2
    assert sorting.get_num_units() == 0
    assert sorting.get_sampling_frequency() == 30_000.0
