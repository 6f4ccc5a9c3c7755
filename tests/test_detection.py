"""Detection on planted spikes: positions, segments, thresholds, and SpikeInterface's own peaks."""

from __future__ import annotations

import numpy as np
import pytest

from spikeinterface.core.node_pipeline import base_peak_dtype

from conftest import probe_recording

from spikeinterface_elvisort.detection import algorithm1, detect_spikes


FS = 30_000.0


# planted events: sample, peak channel. Two sit on either side of the 1 s block boundary of algorithm1
# (30_000 samples), one in the block's overlap margin; all are > 40 samples apart
PLANTED_SAMPLES = np.array([500, 1_700, 4_000, 12_345, 29_950, 30_010, 45_000, 59_000])
PLANTED_CHANNELS = np.array([0, 1, 2, 3, 3, 1, 2, 0])
AMPLITUDE = 20.0  # in noise standard deviations


@pytest.fixture(scope="module")
def planted(request):
    """(recording, planted samples, planted channels) for one polarity: 4 channels, 2 s of N(0, 1) noise with
    20-sigma spikes, a 5-sample trough on the peak channel and 40 % of it on the adjacent channels."""
    rng = np.random.default_rng(0)
    sign = request.param
    traces = rng.normal(0.0, 1.0, size=(60_000, 4))
    shape = np.array([0.2, 0.6, 1.0, 0.6, 0.2])
    for sample, channel in zip(PLANTED_SAMPLES, PLANTED_CHANNELS):
        for other in range(4):
            scale = {0: 1.0, 1: 0.4}.get(abs(other - channel), 0.0)
            traces[sample - 2 : sample + 3, other] += sign * AMPLITUDE * scale * shape
    return probe_recording([traces]), sign


@pytest.mark.parametrize("planted", [-1.0, 1.0], ids=["neg", "pos"], indirect=True)
@pytest.mark.parametrize("method", ["locally_exclusive", "algorithm1"])
def test_detect_spikes_finds_planted_spikes(planted, method):
    recording, sign = planted
    peak_sign = "neg" if sign < 0 else "pos"
    peaks = detect_spikes(
        recording, np.ones(4, dtype=np.float32), method=method, peak_sign=peak_sign, detect_threshold=6.0,
        snippet_samples=64,
    )
    assert peaks.dtype.names == np.dtype(base_peak_dtype).names
    assert peaks.size == PLANTED_SAMPLES.size, peaks["sample_index"]
    assert np.all(np.abs(peaks["sample_index"] - PLANTED_SAMPLES) <= 1)
    assert np.array_equal(peaks["channel_index"], PLANTED_CHANNELS)
    assert np.all(peaks["segment_index"] == 0)
    assert np.all(sign * peaks["amplitude"] > 15.0)


@pytest.mark.parametrize("method", ["locally_exclusive", "algorithm1"])
def test_detect_spikes_keeps_segments_and_sorts_by_segment_then_sample(method):
    rng = np.random.default_rng(1)
    segments = [rng.normal(0.0, 1.0, size=(20_000, 4)), rng.normal(0.0, 1.0, size=(40_000, 4))]
    planted = [(0, 15_000, 2), (0, 300, 0), (1, 100, 1), (1, 35_000, 3)]
    for segment, sample, channel in planted:
        segments[segment][sample, channel] -= 30.0
    recording = probe_recording(segments)
    peaks = detect_spikes(recording, np.ones(4), method=method, detect_threshold=8.0)
    expected = sorted(planted)
    assert peaks["segment_index"].tolist() == [p[0] for p in expected]
    assert peaks["sample_index"].tolist() == [p[1] for p in expected]
    assert peaks["channel_index"].tolist() == [p[2] for p in expected]


@pytest.mark.parametrize("peak_sign", ["neg", "both"])
def test_locally_exclusive_detection_finds_spikeinterfaces_peaks(peak_sign):
    """Our node (the disk-cached kernel) must find exactly what SpikeInterface's "locally_exclusive" finds, chunk
    edges included, on a busy recording with noise levels that differ per channel."""
    from spikeinterface.core import generate_ground_truth_recording, get_noise_levels
    from spikeinterface.sortingcomponents.peak_detection import detect_peaks

    recording, _ = generate_ground_truth_recording(num_channels=8, durations=[6.0, 3.0], num_units=12, seed=2)
    noise_levels = get_noise_levels(recording, return_in_uV=False, random_slices_kwargs={"seed": 0})
    kwargs = dict(peak_sign=peak_sign, detect_threshold=4.0, exclude_sweep_ms=0.5, radius_um=50.0)
    job_kwargs = {"n_jobs": 2, "pool_engine": "thread", "chunk_duration": "0.5s", "progress_bar": False}
    ours = detect_spikes(recording, noise_levels, **kwargs, job_kwargs=job_kwargs)
    theirs = detect_peaks(recording, method="locally_exclusive", method_kwargs=kwargs | {"noise_levels": noise_levels},
                          job_kwargs=job_kwargs)
    theirs = theirs[np.lexsort((theirs["sample_index"], theirs["segment_index"]))]
    assert ours.size > 500
    assert np.array_equal(ours, theirs)


def test_detect_spikes_rejects_an_unknown_method():
    recording = probe_recording([np.zeros((1000, 4))])
    with pytest.raises(ValueError, match="method"):
        detect_spikes(recording, np.ones(4), method="nope")


def test_detect_spikes_on_silence_finds_nothing():
    recording = probe_recording([np.zeros((3000, 4))])
    for method in ("locally_exclusive", "algorithm1"):
        peaks = detect_spikes(recording, np.ones(4), method=method)
        assert peaks.size == 0
        assert peaks.dtype.names == np.dtype(base_peak_dtype).names


def test_algorithm1_exact_centres():
    traces = np.zeros((1000, 3), dtype=np.float32)
    traces[100, 0] = -10.0  # opens a window ...
    traces[102, 1] = -15.0  # ... whose largest sample is here: one event at 102
    traces[300, 2] = -8.0
    traces[500, 0] = -10.0  # a second spike within half a span (32) of the first: one event, at the larger
    traces[520, 1] = -12.0
    traces[560, 2] = -9.0  # after the previous snippet's second half: a new event
    traces[700, 0] = +50.0  # positive: ignored with peak_sign="neg"
    thresholds = np.full(3, 5.0, dtype=np.float32)
    assert algorithm1(traces, thresholds, snippet_samples=64).tolist() == [102, 300, 520, 560]
    assert algorithm1(traces, thresholds, snippet_samples=64, peak_sign="pos").tolist() == [700]
    assert algorithm1(traces, thresholds, snippet_samples=64, peak_sign="both").tolist() == [102, 300, 520, 560, 700]


def test_algorithm1_uses_per_channel_thresholds():
    traces = np.zeros((200, 2), dtype=np.float32)
    traces[50, 0] = -6.0
    traces[150, 1] = -6.0
    thresholds = np.array([5.0, 7.0], dtype=np.float32)
    assert algorithm1(traces, thresholds, snippet_samples=20).tolist() == [50]
    assert algorithm1(np.zeros((10, 2), dtype=np.float32), thresholds, snippet_samples=20).size == 0


@pytest.mark.parametrize("peak_sign", ["neg", "pos", "both"])
def test_cached_locally_exclusive_kernel_equals_spikeinterface(peak_sign):
    """Our disk-cached copy of SpikeInterface's locally exclusive peak finder gives SpikeInterface's peaks."""
    from spikeinterface.sortingcomponents.peak_detection.locally_exclusive import (
        detect_peaks_numba_locally_exclusive_on_chunk,
    )

    from spikeinterface_elvisort.detection import locally_exclusive_peaks

    rng = np.random.default_rng(0)
    traces = rng.normal(size=(3000, 6)).astype(np.float32)
    traces[rng.integers(0, 3000, 60), rng.integers(0, 6, 60)] -= 8.0
    traces[rng.integers(0, 3000, 60), rng.integers(0, 6, 60)] += 8.0
    thresholds = np.full(6, 4.0, dtype=np.float32)
    mask = np.abs(np.arange(6)[:, None] - np.arange(6)[None, :]) <= 2
    ours = locally_exclusive_peaks(traces, peak_sign, thresholds, 15, mask)
    theirs = detect_peaks_numba_locally_exclusive_on_chunk(traces, peak_sign, thresholds, 15, mask)
    assert ours[0].size > 40
    assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])
