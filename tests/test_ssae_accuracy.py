"""ssae with its default parameters on a small ground-truth recording: the run_sorter contract (delete_output_folder,
json files, log) and the accuracy against ground truth, from one sorter run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import spikeinterface.comparison as sc
import spikeinterface.sorters as ss
from spikeinterface.core import BaseSorting

from spikeinterface_elvisort.ssae.params import SSAE_DEFAULT_PARAMS

from spikeinterface_elvisort.benchmarks.runner import unit_snr

# measured 2026-11-22 on this recording (2-core VM, CPU): mean accuracy 0.996 over the 4 units with SNR >= 5
MIN_MEAN_ACCURACY = 0.95
STAGES = ("preprocessing", "detection", "hybrid", "cleaner", "training", "clustering", "labelling", "clean-up")


@pytest.fixture(scope="module")
def default_run(accuracy_recording, tmp_path_factory, sorter_device):
    recording, ground_truth = accuracy_recording
    folder = tmp_path_factory.mktemp("ssae_defaults") / "ssae"
    params = copy.deepcopy(SSAE_DEFAULT_PARAMS)
    params["device"] = sorter_device
    sorting = ss.run_sorter("ssae", recording, folder=folder, delete_output_folder=True, verbose=False, **params)
    return sorting, folder, recording, ground_truth, params


@pytest.mark.slow
def test_contract_with_the_defaults(default_run):
    sorting, folder, recording, _, params = default_run
    assert isinstance(sorting, BaseSorting)
    assert {"recording", "params", "log"} <= set(sorting.sorting_info)
    assert sorting.sorting_info["params"]["sorter_name"] == "ssae"
    assert sorting.get_sampling_frequency() == recording.get_sampling_frequency()
    assert sorting.get_num_segments() == 1
    assert sorting.count_num_spikes_per_unit(outputs="array").min() >= params["min_spikes_per_unit"]
    assert not (folder / "sorter_output").exists()
    saved = json.loads((folder / "spikeinterface_params.json").read_text())
    assert saved["sorter_name"] == "ssae" and saved["sorter_params"] == params
    log = json.loads((folder / "spikeinterface_log.json").read_text())
    assert log["error"] is False and log["sorter_name"] == "ssae" and log["run_time"] > 0
    # SpikeInterface copies sorter_output/ssae.log into the log before the folder goes
    trace = "\n".join(log["runtime_trace"])
    for stage in STAGES:
        assert stage in trace, stage


@pytest.mark.slow
def test_default_params_sort_a_ground_truth_recording(default_run):
    sorting, _, recording, ground_truth, _ = default_run
    comparison = sc.compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True)
    snr = unit_snr(recording, ground_truth)
    assert (snr >= 5).sum() >= 4
    accuracy = comparison.get_performance().loc[snr.index[snr.values >= 5]]["accuracy"].astype(float)
    print(f"\nssae accuracy per ground-truth unit: {np.round(accuracy.to_numpy(), 3).tolist()}, "
          f"mean {accuracy.mean():.3f}; {sorting.get_num_units()} units found")
    assert accuracy.mean() >= MIN_MEAN_ACCURACY, (
        f"mean accuracy {accuracy.mean():.3f} < {MIN_MEAN_ACCURACY}; per unit {np.round(accuracy.to_numpy(), 3)}"
    )
