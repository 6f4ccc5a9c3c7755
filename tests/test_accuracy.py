"""End-to-end accuracy with the default parameters on a small ground-truth recording (slow, but runs in CI)."""

from __future__ import annotations

import numpy as np
import pytest

import spikeinterface.comparison as sc
import spikeinterface.sorters as ss

from conftest import default_params

from spikeinterface_elvisort.benchmarks.runner import unit_snr

MIN_MEAN_ACCURACY = 0.9


@pytest.mark.slow
def test_default_params_sort_a_ground_truth_recording(accuracy_recording, tmp_path, sorter_device):
    recording, ground_truth = accuracy_recording
    assert (recording.get_num_channels(), ground_truth.get_num_units()) == (8, 5)
    sorting = ss.run_sorter("elvisort", recording, folder=tmp_path / "elvisort", verbose=False,
                            **default_params(sorter_device))
    comparison = sc.compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True)
    # score the units a sorter can see, as the benchmarks do (SNR >= 5): unit 2 of this recording sits at about
    # 1x the noise level, below any detection threshold
    snr = unit_snr(recording, ground_truth)
    assert (snr >= 5).sum() >= 4
    performance = comparison.get_performance().loc[snr.index[snr.values >= 5]]
    accuracy = performance["accuracy"].astype(float)
    print(f"\nelvisort accuracy per ground-truth unit: {np.round(accuracy.to_numpy(), 3).tolist()}, "
          f"mean {accuracy.mean():.3f}; {sorting.get_num_units()} units found")
    assert accuracy.mean() >= MIN_MEAN_ACCURACY, (
        f"mean accuracy {accuracy.mean():.3f} < {MIN_MEAN_ACCURACY}; per unit {np.round(accuracy.to_numpy(), 3)}, "
        f"{sorting.get_num_units()} units found"
    )
    # no unit made of noise: with whitening (on from 8 channels) near-threshold noise events formed five clusters
    # whose templates template matching then fitted everywhere (1900-6700 spikes each, against 400-470 for the
    # real units) until the clean-up removed units with random spike times (max_isi_violations_ratio)
    false_positives = comparison.get_false_positive_units()
    assert len(false_positives) == 0, (
        f"false-positive units {list(false_positives)} with "
        f"{[int(sorting.count_num_spikes_per_unit()[u]) for u in false_positives]} spikes"
    )


@pytest.mark.slow
def test_a_float16_cache_sorts_as_accurately(accuracy_recording, tmp_path):
    """cache_preprocessing="folder_float16" (what "auto" picks when float32 traces do not fit on the disk, e.g. 30
    min of 384 channels on 70 GB free) keeps the accuracy of the default run: float16 keeps 11 significant bits."""
    recording, ground_truth = accuracy_recording
    sorting = ss.run_sorter("elvisort", recording, folder=tmp_path / "float16", verbose=False,
                            **(default_params("cpu") | {"cache_preprocessing": "folder_float16"}))
    assert "cache: folder (float16)" in (tmp_path / "float16" / "sorter_output" / "elvisort.log").read_text()
    assert not (tmp_path / "float16" / "sorter_output" / "cache_preprocessing").exists()
    snr = unit_snr(recording, ground_truth)
    performance = sc.compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True).get_performance()
    accuracy = performance.loc[snr.index[snr.values >= 5], "accuracy"].astype(float)
    assert accuracy.mean() >= MIN_MEAN_ACCURACY, np.round(accuracy.to_numpy(), 3)
