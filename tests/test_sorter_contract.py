"""The ``run_sorter("elvisort", ...)`` contract: SpikeInterface's common sorter checks, re-implemented here because
``SorterCommonTestSuite`` is not in the PyPI wheel; plus segments, quietness, determinism and the output folder.

Each sorter run is a module-scoped fixture shared by several tests (sort once, assert many things). The contract
run uses the real defaults; the others use ``fast_params`` (they test plumbing, not accuracy).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys

import numpy as np
import pytest

import spikeinterface.sorters as ss
from spikeinterface.core import BaseSorting, create_sorting_analyzer

from conftest import default_params, fast_params


def spikes_are_valid(sorting, recording):
    """Every spike inside its segment, per unit sorted; unit ids unique."""
    assert len(set(sorting.unit_ids.tolist())) == sorting.get_num_units()
    for segment_index in range(recording.get_num_segments()):
        length = recording.get_num_samples(segment_index)
        for unit_id in sorting.unit_ids:
            train = sorting.get_unit_spike_train(unit_id, segment_index=segment_index)
            if train.size:
                assert train.min() >= 0 and train.max() < length
                assert np.all(np.diff(train) >= 0)


# -- the contract, with the real defaults ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_run(contract_recording, tmp_path_factory, sorter_device):
    recording, _ = contract_recording
    folder = tmp_path_factory.mktemp("contract") / "elvisort"
    params = default_params(sorter_device)
    sorting = ss.run_sorter("elvisort", recording, folder=folder, delete_output_folder=True, verbose=False, **params)
    return sorting, folder, recording, params


def test_returns_a_sorting_with_sorting_info(default_run):
    sorting, _, recording, _ = default_run
    assert isinstance(sorting, BaseSorting)
    assert {"recording", "params", "log"} <= set(sorting.sorting_info)
    assert sorting.sorting_info["params"]["sorter_name"] == "elvisort"
    assert sorting.sorting_info["log"]["error"] is False
    assert sorting.get_sampling_frequency() == recording.get_sampling_frequency()
    assert sorting.get_num_segments() == recording.get_num_segments() == 1


def test_defaults_find_units(default_run):
    sorting, _, recording, _ = default_run
    assert sorting.get_num_units() >= 1
    counts = sorting.count_num_spikes_per_unit(outputs="array")
    assert counts.min() >= default_params()["min_spikes_per_unit"]
    spikes_are_valid(sorting, recording)


def test_delete_output_folder_keeps_only_the_json_files(default_run):
    _, folder, _, _ = default_run
    assert not (folder / "sorter_output").exists()
    for name in ("spikeinterface_recording.json", "spikeinterface_params.json", "spikeinterface_log.json"):
        assert (folder / name).is_file(), name


def test_params_and_log_json(default_run):
    _, folder, _, params = default_run
    saved = json.loads((folder / "spikeinterface_params.json").read_text())
    assert saved["sorter_name"] == "elvisort"
    assert saved["sorter_params"] == params
    log = json.loads((folder / "spikeinterface_log.json").read_text())
    assert log["error"] is False
    assert log["sorter_name"] == "elvisort"
    assert log["run_time"] > 0
    # SpikeInterface copies sorter_output/elvisort.log into the log before the folder goes
    assert any("detection" in line for line in log["runtime_trace"])


def test_sorting_analyzer_on_the_result(default_run):
    sorting, _, recording, _ = default_run
    analyzer = create_sorting_analyzer(sorting, recording, format="memory", sparse=False)
    analyzer.compute(["random_spikes", "templates"])
    templates = analyzer.get_extension("templates").get_data()
    assert templates.shape[0] == sorting.get_num_units()
    assert templates.shape[2] == recording.get_num_channels()
    assert np.all(np.isfinite(templates))


# -- the output folder, with fast params -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kept_run(small_recording, tmp_path_factory, sorter_device):
    recording, _ = small_recording
    folder = tmp_path_factory.mktemp("kept") / "elvisort"
    params = fast_params(sorter_device, save_arrays=True)
    sorting = ss.run_sorter("elvisort", recording, folder=folder, delete_output_folder=False, verbose=False, **params)
    return sorting, folder, recording, params


def test_sorter_output_contents(kept_run):
    sorting, folder, recording, _ = kept_run
    output = folder / "sorter_output"
    assert (output / "sorting").is_dir()
    assert (output / "model.pt").is_file()
    assert (output / "history.csv").is_file()
    assert (output / "elvisort.log").is_file() and (output / "elvisort.log").read_text().strip()
    assert sorting.get_sampling_frequency() == recording.get_sampling_frequency()
    assert sorting.get_num_units() >= 1
    spikes_are_valid(sorting, recording)


def test_history_has_one_row_per_epoch(kept_run):
    _, folder, _, params = kept_run
    with open(folder / "sorter_output" / "history.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames
    assert "reconstruction" in columns and "kl" in columns
    vae = [row for row in rows if row["stage"] == "vae"]
    assert len(vae) == params["train_epochs"]
    assert [int(row["epoch"]) for row in vae] == list(range(params["train_epochs"]))
    assert all(np.isfinite(float(row["reconstruction"])) and np.isfinite(float(row["kl"])) for row in vae)
    classifier = [row for row in rows if row["stage"] == "classifier"]
    assert len(classifier) == params["train_classifier_epochs"]


def test_checkpoint_rebuilds_the_model(kept_run):
    import torch

    from spikeinterface_elvisort.inference import encode
    from spikeinterface_elvisort.results import MODEL_FORMAT, ModelSettings, load_checkpoint

    _, folder, recording, params = kept_run
    model, checkpoint = load_checkpoint(folder / "sorter_output" / "model.pt")
    assert checkpoint["model"] == "beta_vae"
    assert checkpoint["params"] == params
    settings = ModelSettings.from_checkpoint(checkpoint)  # the one record of what model.pt holds
    assert checkpoint["format"] == MODEL_FORMAT and settings.to_dict().keys() <= checkpoint.keys()
    assert settings.channel_ids == list(map(str, recording.channel_ids))
    assert settings.unit_ids.size == settings.templates.shape[0] > 0
    config = model.config
    for key, value in params["model_kwargs"].items():
        assert getattr(config, key) == value
    assert config.num_channels == min(params["snippet_channels"], recording.get_num_channels())
    assert config.num_samples == checkpoint["nbefore"] + checkpoint["nafter"]
    snippets = np.random.default_rng(0).normal(size=(5, config.num_samples, config.num_channels)).astype("float32")
    latents = encode(model, snippets, torch.device("cpu"))
    assert latents.shape == (5, config.latent_dim + config.upper_latent_dim)
    assert np.all(np.isfinite(latents))


def test_save_arrays(kept_run):
    _, folder, _, _ = kept_run
    peaks = np.load(folder / "sorter_output" / "peaks.npy")
    labels = np.load(folder / "sorter_output" / "labels.npy")
    assert peaks.size == labels.size > 0
    assert {"sample_index", "channel_index", "segment_index"} <= set(peaks.dtype.names)


def test_read_sorter_folder_gives_the_same_sorting(kept_run):
    sorting, folder, recording, _ = kept_run
    again = ss.read_sorter_folder(folder)
    assert list(again.unit_ids) == list(sorting.unit_ids)
    np.testing.assert_array_equal(again.to_spike_vector(), sorting.to_spike_vector())
    assert again.has_recording()
    assert again.get_sampling_frequency() == recording.get_sampling_frequency()


@pytest.fixture
def cpu_only(use_gpu):
    if use_gpu:
        pytest.skip("bit-identical results are only promised on the CPU")


def test_same_seed_gives_the_same_spikes(kept_run, tmp_path, cpu_only):
    sorting, _, recording, params = kept_run
    again = ss.run_sorter("elvisort", recording, folder=tmp_path / "again", verbose=False, **params)
    assert list(again.unit_ids) == list(sorting.unit_ids)
    np.testing.assert_array_equal(again.to_spike_vector(), sorting.to_spike_vector())


def test_one_worker_gives_the_same_spikes_as_every_core(kept_run, tmp_path, cpu_only):
    """The chunked stages run in one thread per core by default; the sorting must not depend on it."""
    sorting, _, recording, params = kept_run
    assert "n_jobs" not in params["job_kwargs"]
    one = ss.run_sorter("elvisort", recording, folder=tmp_path / "one", verbose=False,
                        **(params | {"job_kwargs": {"n_jobs": 1}}))
    assert list(one.unit_ids) == list(sorting.unit_ids)
    np.testing.assert_array_equal(one.to_spike_vector(), sorting.to_spike_vector())


# -- segments ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_segment_run(two_segment_recording, tmp_path_factory, sorter_device):
    recording, _ = two_segment_recording
    folder = tmp_path_factory.mktemp("segments") / "elvisort"
    sorting = ss.run_sorter("elvisort", recording, folder=folder, verbose=False, **fast_params(sorter_device))
    return sorting, recording


def test_two_segments_in_two_segments_out(two_segment_run):
    sorting, recording = two_segment_run
    assert sorting.get_num_segments() == 2
    assert sorting.get_num_units() >= 1
    spikes = sorting.to_spike_vector()
    for segment_index in (0, 1):
        assert np.sum(spikes["segment_index"] == segment_index) > 0
    spikes_are_valid(sorting, recording)
    # the units are the same neurons in both segments: each unit fires in both
    per_segment = [
        {u for u in sorting.unit_ids if sorting.get_unit_spike_train(u, segment_index=s).size} for s in (0, 1)
    ]
    assert per_segment[0] & per_segment[1]


def test_a_silent_last_segment_is_kept(small_recording, tmp_path, sorter_device):
    from spikeinterface.core import NumpyRecording, append_recordings

    recording, _ = small_recording
    silent = NumpyRecording([np.zeros((25_000, recording.get_num_channels()), dtype="float32")],
                            recording.sampling_frequency, channel_ids=recording.channel_ids)
    silent.set_probe(recording.get_probe())
    both = append_recordings([recording, silent]).save(folder=tmp_path / "recording", progress_bar=False)
    sorting = ss.run_sorter("elvisort", both, folder=tmp_path / "elvisort", verbose=False, **fast_params(sorter_device))
    assert sorting.get_num_segments() == 2
    assert sorting.to_spike_vector()["segment_index"].max() == 0


# -- verbosity ---------------------------------------------------------------------------------------------------


def test_verbose_false_prints_nothing(tiny_recordings, tmp_path, capfd, sorter_device):
    capfd.readouterr()
    sorting = ss.run_sorter("elvisort", tiny_recordings[0], folder=tmp_path / "quiet", verbose=False,
                            **fast_params(sorter_device))
    out, err = capfd.readouterr()
    assert sorting.get_num_segments() == 1
    assert out == ""
    # tolerate Python warnings (pytest normally captures them), nothing else: no progress bars, no stage lines
    lines = [line for line in err.splitlines() if line.strip()]
    assert all("Warning" in line or line.startswith(" ") for line in lines), err


def test_verbose_true_logs_the_stages(tiny_recordings, tmp_path, capfd, sorter_device):
    capfd.readouterr()
    ss.run_sorter("elvisort", tiny_recordings[0], folder=tmp_path / "loud", verbose=True, **fast_params(sorter_device))
    out, err = capfd.readouterr()
    text = out + err
    for stage in ("preprocessing", "detection", "training", "clustering", "clean-up"):
        assert stage in text, stage
    assert "elvisort run time" in out  # SpikeInterface's own line
    # the output is not a terminal: no progress bar (neither ours nor SpikeInterface's), only the stage lines
    assert "\r" not in text and "it/s" not in text and "epoch/s" not in text, text[-2000:]


def test_progress_bars_have_plain_names_and_show_on_a_terminal_only(monkeypatch):
    import io

    from spikeinterface_elvisort import progress
    from spikeinterface_elvisort.jobs import sorter_job_kwargs

    assert progress.bar(range(3), name="vae", verbose=True).disable  # not a terminal (pytest captures stderr)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert progress.bar(range(3), name="vae", verbose=False).disable
    assert progress.bar(range(3), name="dec", verbose=True).desc == "refining the clusters (DEC)"
    for _ in progress.bar(range(3), name="vae", verbose=True):
        pass
    assert "training the beta-VAE" in terminal.getvalue()
    assert sorter_job_kwargs({}, verbose=True)["progress_bar"] is True
    assert sorter_job_kwargs({}, verbose=False)["progress_bar"] is False


def test_log_file_gets_the_stage_lines_whatever_the_verbosity(kept_run):
    _, folder, _, _ = kept_run
    text = (folder / "sorter_output" / "elvisort.log").read_text()
    for stage in ("preprocessing", "detection", "training", "clustering", "clean-up"):
        assert stage in text, stage
    if sys.platform != "win32":  # each stage line ends with the process's peak memory so far
        peaks = [int(value) for value in re.findall(r"\(peak RSS (\d+) MiB\)", text)]
        assert len(peaks) >= 5 and peaks == sorted(peaks) and peaks[0] > 50


def test_verbose_false_is_quiet_when_the_user_configured_logging(tmp_path):
    import io

    from spikeinterface_elvisort.sorters import _log_to

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # what logging.basicConfig() puts on the root logger
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with _log_to(tmp_path / "elvisort.log", verbose=False):
            logging.getLogger("spikeinterface_elvisort.pipeline").info("detection  1.0 s  42 events")
    finally:
        root.removeHandler(handler)
    assert "detection" in (tmp_path / "elvisort.log").read_text()
    assert stream.getvalue() == ""


@pytest.mark.parametrize("sorter", ["elvisort", "ssae"])
def test_a_clean_run_issues_no_warning(small_recording, tmp_path, sorter):
    """A run on a clean recording warns about nothing the user can act on: not SpikeInterface's provenance warning
    for the sorting we save, nor its peak-sign warning from the template clean-up before matching."""
    import warnings

    from conftest import ssae_fast_params

    recording, _ = small_recording
    params = fast_params() if sorter == "elvisort" else ssae_fast_params(train_cleaner_epochs=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sorting = ss.run_sorter(sorter, recording, folder=tmp_path / sorter, verbose=False, **params)
    assert sorting.get_num_units() >= 1
    assert [str(w.message) for w in caught] == []
