"""The shared front end: detection before whitening finds the spikes that whitening flattens."""

from __future__ import annotations

import numpy as np


def _detected_fraction(peaks, sorting, window=12):
    """Fraction of ``sorting``'s spikes with a detected peak within ``window`` samples."""
    times = np.sort(peaks["sample_index"])
    spikes = sorting.to_spike_vector()["sample_index"]
    index = np.clip(np.searchsorted(times, spikes), 1, times.size - 1)
    nearest = np.minimum(np.abs(times[index] - spikes), np.abs(times[index - 1] - spikes))
    return float(np.mean(nearest <= window))


def test_detection_before_whitening_finds_the_spikes_whitening_flattens(tmp_path):
    """Units far from the probe spread over many channels; local whitening lowers their peak on every channel.
    Detecting before whitening (the default) finds more of their spikes; the events' amplitudes are still read on
    the whitened traces that everything after detection uses."""
    from spikeinterface.core import generate_ground_truth_recording

    from spikeinterface.preprocessing.common_reference import CommonReferenceRecording
    from spikeinterface.preprocessing.filter import FilterRecording
    from spikeinterface.preprocessing.whiten import WhitenRecording

    from spikeinterface_elvisort.params import DEFAULT_PARAMS
    from spikeinterface_elvisort.front_end import StageLog, run_front_end, values_at
    from spikeinterface_elvisort.preprocessing import preprocess

    recording, sorting = generate_ground_truth_recording(
        durations=[20.0], sampling_frequency=30000.0, num_channels=32, num_units=8, seed=3,
        generate_unit_locations_kwargs=dict(margin_um=10.0, minimum_z=40.0, maximum_z=60.0, minimum_distance=20),
        noise_kwargs=dict(noise_levels=5.0, strategy="on_the_fly"),
    )
    job_kwargs = {"n_jobs": 1, "progress_bar": False}
    found = {}
    for before in (True, False):
        params = dict(DEFAULT_PARAMS, detect_before_whitening=before)
        preprocessed, cache_info, noise_levels, peaks = run_front_end(
            recording, params, tmp_path / str(before), job_kwargs, StageLog()
        )
        assert cache_info["whitening"] is not None
        assert ("detection_noise_levels" in cache_info) is before
        # before whitening, the unwhitened traces are what is cached (filtered once, in memory here); after the
        # detection they are whitened there, once: what follows reads plain whitened traces
        assert not isinstance(preprocessed, (WhitenRecording, CommonReferenceRecording, FilterRecording))
        if before:
            filtered = preprocess(recording, freq_min=params["freq_min"], freq_max=params["freq_max"],
                                  common_reference=params["common_reference"]).get_traces(end_frame=30_000)
            np.testing.assert_allclose(preprocessed.get_traces(end_frame=30_000),
                                       filtered @ cache_info["whitening"]["W"], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(peaks["amplitude"], values_at(preprocessed, peaks))
        found[before] = _detected_fraction(peaks, sorting)
    # measured: 0.823 of the spikes before whitening, 0.695 on the whitened traces
    assert found[True] >= 0.8, found
    assert found[True] >= found[False] + 0.1, found
