"""The ``run_sorter("ssae", ...)`` contract, as for elvisort: model, cleaner, history and log in sorter_output/;
checkpoints; segments; determinism; verbosity; early errors.

These runs use ``ssae_fast_params`` (they test plumbing, not accuracy). The contract with the real defaults
(``delete_output_folder``, the json files, the log) is checked on the run of test_ssae_accuracy.py, which sorts with
the defaults anyway: one sorter run, both checks.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

import spikeinterface.sorters as ss
from spikeinterface.sorters.utils import SpikeSortingError

from conftest import ssae_fast_params

STAGES = ("preprocessing", "detection", "hybrid", "cleaner", "training", "clustering", "labelling", "clean-up")


def spikes_are_valid(sorting, recording):
    for segment_index in range(recording.get_num_segments()):
        length = recording.get_num_samples(segment_index)
        for unit_id in sorting.unit_ids:
            train = sorting.get_unit_spike_train(unit_id, segment_index=segment_index)
            if train.size:
                assert train.min() >= 0 and train.max() < length
                assert np.all(np.diff(train) >= 0)


# -- the output folder, with fast params -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kept_run(small_recording, tmp_path_factory, sorter_device):
    recording, _ = small_recording
    folder = tmp_path_factory.mktemp("ssae_kept") / "ssae"
    params = ssae_fast_params(sorter_device, save_arrays=True)
    sorting = ss.run_sorter("ssae", recording, folder=folder, delete_output_folder=False, verbose=False, **params)
    return sorting, folder, recording, params


def test_sorter_output_contents(kept_run):
    sorting, folder, recording, params = kept_run
    output = folder / "sorter_output"
    for name in ("model.pt", "cleaner.pt", "history.csv", "labels.npy", "peaks.npy"):
        assert (output / name).is_file(), name
    text = (output / "ssae.log").read_text()
    for stage in STAGES:
        assert stage in text, stage
    assert sorting.get_num_units() >= 1
    spikes_are_valid(sorting, recording)
    with open(output / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ssae_rows = [row for row in rows if row["stage"] == "ssae"]
    assert [int(row["epoch"]) for row in ssae_rows] == list(range(params["train_epochs"]))
    assert all(np.isfinite(float(row["reconstruction"])) and float(row["classification"]) > 0 for row in ssae_rows)
    assert len([row for row in rows if row["stage"] == "cleaner"]) == params["train_cleaner_epochs"]


def test_checkpoints_rebuild_the_ensemble_and_the_cleaner(kept_run):
    import torch

    from spikeinterface_elvisort.inference import encode, spike_probability
    from spikeinterface_elvisort.models import Cleaner, SemiSupervisedAE
    from spikeinterface_elvisort.results import MODEL_FORMAT, ModelSettings, load_checkpoint

    _, folder, recording, params = kept_run
    model, checkpoint = load_checkpoint(folder / "sorter_output" / "model.pt")
    assert isinstance(model, SemiSupervisedAE) and checkpoint["model"] == "ssae"
    assert checkpoint["params"] == params
    settings = ModelSettings.from_checkpoint(checkpoint)  # the same record as elvisort's, with the whitening
    assert checkpoint["format"] == MODEL_FORMAT and settings.to_dict().keys() <= checkpoint.keys()
    assert "whitening" in checkpoint and isinstance(settings.cleaner_used, bool)
    assert model.config.num_classes == params["hybrid_num_templates"]
    assert model.config.num_channels == min(params["snippet_channels"], recording.get_num_channels())
    cleaner, _ = load_checkpoint(folder / "sorter_output" / "cleaner.pt")
    assert isinstance(cleaner, Cleaner)
    snippets = np.random.default_rng(0).normal(size=(5, model.config.num_samples, model.config.num_channels))
    snippets = snippets.astype("float32")
    assert encode(model, snippets, torch.device("cpu")).shape == (5, 3 * model.config.latent_dim)
    probability = spike_probability(cleaner, snippets, torch.device("cpu"))
    assert probability.shape == (5,) and np.all((probability >= 0) & (probability <= 1))


@pytest.fixture
def cpu_only(use_gpu):
    if use_gpu:
        pytest.skip("bit-identical results are only promised on the CPU")


def test_same_seed_same_spikes_and_silent_when_not_verbose(kept_run, tmp_path, capfd, cpu_only):
    sorting, _, recording, params = kept_run
    capfd.readouterr()
    again = ss.run_sorter("ssae", recording, folder=tmp_path / "again", verbose=False, **params)
    out, err = capfd.readouterr()
    assert list(again.unit_ids) == list(sorting.unit_ids)
    np.testing.assert_array_equal(again.to_spike_vector(), sorting.to_spike_vector())
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert all("Warning" in line or line.startswith(" ") for line in lines), err


def test_verbose_true_logs_the_stages(tiny_recordings, tmp_path, capfd, sorter_device):
    capfd.readouterr()
    ss.run_sorter("ssae", tiny_recordings[0], folder=tmp_path / "loud", verbose=True, **ssae_fast_params(sorter_device))
    out, err = capfd.readouterr()
    for stage in STAGES:
        assert stage in out + err, stage
    assert "ssae run time" in out  # SpikeInterface's own line


def test_two_segments_in_two_segments_out(two_segment_recording, tmp_path, sorter_device):
    recording, _ = two_segment_recording
    params = ssae_fast_params(sorter_device)
    sorting = ss.run_sorter("ssae", recording, folder=tmp_path / "ssae", verbose=False, **params)
    assert sorting.get_num_segments() == 2
    spikes_are_valid(sorting, recording)
    per_segment = [
        {u for u in sorting.unit_ids if sorting.get_unit_spike_train(u, segment_index=s).size} for s in (0, 1)
    ]
    assert per_segment[0] & per_segment[1]  # the same neurons fire in both segments


def test_run_sorter_rejects_a_bad_value_before_sorting(small_recording, tmp_path):
    recording, _ = small_recording
    folder = tmp_path / "bad"
    with pytest.raises((ValueError, SpikeSortingError), match="clustering_num_units"):
        ss.run_sorter("ssae", recording, folder=folder, clustering_num_units=0)
    assert not (folder / "spikeinterface_log.json").exists()
    with pytest.raises(ValueError, match="train_dec_epochs"):
        ss.run_sorter("ssae", recording, folder=tmp_path / "unknown", train_dec_epochs=3)


def test_a_cleaner_that_rejects_spikes_is_switched_off(small_recording, tmp_path, sorter_device):
    # cleaner_threshold=1.0 makes a cleaner that rejects every event, as the one trained on MEArec's noisiest
    # recording rejected 98 % of its strong events: the check on strong events switches it off and sorts anyway
    import spikeinterface.comparison as sc

    recording, ground_truth = small_recording
    params = ssae_fast_params(sorter_device, cleaner_threshold=1.0)
    with pytest.warns(UserWarning, match="switched off"):
        sorting = ss.run_sorter("ssae", recording, folder=tmp_path / "checked", verbose=False, **params)
    log = (tmp_path / "checked" / "sorter_output" / "ssae.log").read_text()
    assert "cleaner switched off: it keeps 0.00 of the strong events" in log
    accuracy = sc.compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True).get_performance()["accuracy"]
    print(f"\nper ground-truth unit: {np.round(accuracy.to_numpy(float), 3).tolist()}")
    assert (accuracy.to_numpy(float) >= 0.95).sum() >= 5
    # without the check the same cleaner leaves nothing to sort
    params["cleaner_min_strong_kept"] = 0.0
    unchecked = ss.run_sorter("ssae", recording, folder=tmp_path / "unchecked", verbose=False, **params)
    assert unchecked.get_num_units() == 0


def test_strong_kept_fraction_needs_enough_strong_events():
    from spikeinterface_elvisort.ssae.pipeline import _strong_kept_fraction

    peaks = np.zeros(100, dtype=[("amplitude", "f4"), ("channel_index", "i8")])
    peaks["amplitude"] = -5.0  # noise levels of 1: just above a threshold of 4.5
    peaks["amplitude"][:30] = -9.0  # 30 strong events (>= 2 x 4.5), 10 of them kept
    kept = np.zeros(100, dtype=bool)
    kept[:10] = True
    assert _strong_kept_fraction(kept, peaks, np.ones(1), 4.5) == pytest.approx(1 / 3)
    # a recording of noise has (almost) no strong events: no verdict, the cleaner stays
    assert _strong_kept_fraction(kept, peaks[10:], np.ones(1), 4.5, min_events=21) is None
