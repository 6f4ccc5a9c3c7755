"""Reliability: bad input gets a clear, early error (or a documented sane result), interrupted runs never read as
results, the input recording is never modified, out-of-memory falls back to smaller batches and the CPU.

The cases are listed, with what the user sees, in docs/failure_modes.rst. Sorter runs use ``fast_params`` without
template matching, mostly (they test the plumbing, not accuracy), on 10 s recordings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import spikeinterface.sorters as ss
from spikeinterface.core import NumpyRecording
from spikeinterface.sorters.utils import SpikeSortingError

from spikeinterface_elvisort.checks import check_recording
from spikeinterface_elvisort.params import DEFAULT_PARAMS

from conftest import fast_params, make_ground_truth, save_binary

# no template matching: seconds instead of tens of seconds, and these tests are about the plumbing
QUICK = dict(matching_method="none", auto_merge=False)


def numpy_recording(traces, sampling_frequency=30_000.0, probe_from=None, pitch_um=20.0):
    """A NumpyRecording with a linear probe (or ``probe_from``'s probe)."""
    from probeinterface import generate_linear_probe

    recording = NumpyRecording([np.asarray(traces, dtype=np.float32)], sampling_frequency)
    if probe_from is not None:
        recording.set_probe(probe_from.get_probe())
    else:
        probe = generate_linear_probe(num_elec=recording.get_num_channels(), ypitch=pitch_um)
        probe.set_device_channel_indices(np.arange(recording.get_num_channels()))
        recording.set_probe(probe)
    return recording


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    """4 channels x 10 s (seed 1), in memory and saved as binary."""
    recording, _ = make_ground_truth(num_channels=4, durations=[10.0], seed=1)
    traces = recording.get_traces()
    return numpy_recording(traces, recording.sampling_frequency, probe_from=recording), save_binary(
        recording, tmp_path_factory.mktemp("reliability") / "recording"
    )


def noise(num_samples=30_000, num_channels=4, seed=0):
    return np.random.default_rng(seed).normal(size=(num_samples, num_channels)).astype(np.float32)


# -- bad input: errors before any work -----------------------------------------------------------------------------


def test_recording_without_a_probe(tmp_path):
    recording = NumpyRecording([noise()], 30_000.0)
    with pytest.raises(ValueError, match="set_probe"):
        check_recording(recording, DEFAULT_PARAMS)
    # run_sorter refuses it with the same message, before making the folder
    with pytest.raises(ValueError, match="set_probe"):
        ss.run_sorter("elvisort", recording, folder=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_duplicated_channel_locations():
    from types import SimpleNamespace

    from spikeinterface_elvisort.checks import _check_locations

    locations = np.array([[0.0, 0.0], [0.0, 20.0], [0.0, 20.0], [0.0, 40.0]])
    recording = NumpyRecording([noise()], 30_000.0)
    # the probe cannot be attached: probeinterface refuses it, naming the duplicates
    with pytest.raises(ValueError, match=r"Contact positions must be unique.*\(0.0, 20.0\)"):
        recording.set_dummy_probe_from_locations(locations)
    # locations attached some other way: our check names the channels and the fix
    stub = SimpleNamespace(has_probe=lambda: True, get_channel_locations=lambda: locations,
                           channel_ids=np.array(["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match=r"\['b', 'c'\] share the location.*run_sorter_by_property"):
        _check_locations(stub)


def test_sampling_rate_below_10_khz(ground_truth, tmp_path):
    from spikeinterface.preprocessing import resample

    _, saved = ground_truth
    low = resample(saved, 8_000)
    with pytest.raises(ValueError, match="8000 Hz, below the 10000 Hz"):
        check_recording(low, DEFAULT_PARAMS)
    with pytest.raises(ValueError, match="below the 10000 Hz"):
        ss.run_sorter("elvisort", low, folder=tmp_path / "out")
    assert not (tmp_path / "out" / "spikeinterface_log.json").exists()  # refused before the run


def test_freq_min_above_the_band(ground_truth):
    _, saved = ground_truth
    with pytest.raises(ValueError, match="lower freq_min"):
        check_recording(saved, DEFAULT_PARAMS | {"freq_min": 12_000.0, "freq_max": 20_000.0})


def test_recording_shorter_than_one_snippet(ground_truth, tmp_path):
    _, saved = ground_truth
    short = saved.frame_slice(0, 40)
    with pytest.raises(ValueError, match="shorter than one snippet"):
        check_recording(short, DEFAULT_PARAMS)
    with pytest.raises(ValueError, match="shorter than one snippet"):
        ss.run_sorter("elvisort", short, folder=tmp_path / "out")


@pytest.mark.parametrize("sorter_name, value", [("elvisort", np.nan), ("elvisort", np.inf), ("ssae", np.nan)])
def test_nan_or_inf_samples(ground_truth, tmp_path, sorter_name, value):
    memory, _ = ground_truth
    traces = memory.get_traces().copy()
    traces[:, 2] = value  # a broken channel
    bad = save_binary(numpy_recording(traces, memory.sampling_frequency, probe_from=memory), tmp_path / "bad")
    with pytest.raises(ValueError, match=r"NaN or Inf.*silence_periods"):
        ss.run_sorter(sorter_name, bad, folder=tmp_path / "out")
    assert not (tmp_path / "out" / "spikeinterface_log.json").exists()


@pytest.mark.parametrize("whitening, message", [
    (False, r"NaN or Inf.*noise level"),
    # whitening computes its matrix before the noise levels: NaN samples make its SVD fail, said in our words
    (True, r"whitening failed .*NaN or Inf.*whitening=False"),
])
def test_nan_missed_by_the_early_check_is_caught_after_filtering(ground_truth, tmp_path, monkeypatch, whitening,
                                                                 message):
    from spikeinterface_elvisort import checks, pipeline

    memory, _ = ground_truth
    traces = memory.get_traces().copy()
    traces[::1000, 1] = np.nan  # spread out: every noise-level chunk holds some
    bad = numpy_recording(traces, memory.sampling_frequency, probe_from=memory)
    monkeypatch.setattr(checks, "_check_samples", lambda recording, params: None)  # as if the random chunks missed
    with pytest.raises(ValueError, match=message):
        pipeline.run_elvisort(bad, fast_params(**QUICK, whitening=whitening), folder=tmp_path)


def test_int16_recording_with_gains_and_offsets_is_filtered_in_microvolts(ground_truth):
    """An int16 recording with gains and offsets gives the peaks of the same recording in microvolts."""
    from spikeinterface.core import get_noise_levels

    from spikeinterface_elvisort.detection import detect_spikes
    from spikeinterface_elvisort.preprocessing import preprocess

    memory, _ = ground_truth
    gain, offset = 0.195, -12.0
    microvolts = memory.get_traces()
    counts = np.round((microvolts - offset) / gain)
    integer = NumpyRecording([counts.astype(np.int16)], memory.sampling_frequency)
    integer.set_probe(memory.get_probe())
    integer.set_channel_gains(gain)
    integer.set_channel_offsets(offset)
    check_recording(integer, DEFAULT_PARAMS)
    exact = numpy_recording(counts * gain + offset, memory.sampling_frequency, probe_from=memory)

    peaks = []
    for recording in (integer, exact):
        preprocessed = preprocess(recording)
        levels = get_noise_levels(preprocessed, return_in_uV=False, random_slices_kwargs={"seed": 0},
                                  progress_bar=False)
        peaks.append(detect_spikes(preprocessed, levels, job_kwargs={"n_jobs": 1, "progress_bar": False}))
        assert preprocessed.get_dtype() == np.float32
    assert peaks[0].size > 100
    np.testing.assert_array_equal(peaks[0]["sample_index"], peaks[1]["sample_index"])
    np.testing.assert_array_equal(peaks[0]["channel_index"], peaks[1]["channel_index"])


def test_existing_output_folder(ground_truth, tmp_path):
    _, saved = ground_truth
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="already exists: pass remove_existing_folder=True"):
        ss.run_sorter("elvisort", saved, folder=tmp_path / "out")
    with pytest.raises(ValueError, match="already exists: pass remove_existing_folder=True"):
        ss.run_sorter("ssae", saved, folder=tmp_path / "out")


# -- bad input: a documented, sane result --------------------------------------------------------------------------


def test_one_channel(ground_truth, tmp_path):
    from spikeinterface_elvisort.pipeline import run_elvisort

    memory, _ = ground_truth
    one = memory.select_channels(memory.channel_ids[:1])
    sorting = run_elvisort(one, fast_params(**QUICK), folder=tmp_path)
    assert sorting.get_num_units() >= 1
    assert sorting.to_spike_vector()["sample_index"].max() < one.get_num_samples()


def _state(recording):
    """What run_sorter must leave as it found: traces, properties, annotations, the recording's description."""
    return (
        recording.get_traces().copy(),
        {key: np.copy(recording.get_property(key)) for key in recording.get_property_keys()},
        dict(recording._annotations),
        json.dumps(recording.to_dict(recursive=True), default=str, sort_keys=True),
    )


def _assert_same_state(before, after):
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1].keys() == after[1].keys()
    for key in before[1]:
        np.testing.assert_array_equal(before[1][key], after[1][key])
    assert before[2] == after[2]
    assert before[3] == after[3]


def test_dead_channel_warns_then_sorts_and_the_recording_is_untouched(ground_truth, tmp_path):
    from spikeinterface_elvisort.pipeline import run_elvisort

    memory, _ = ground_truth
    traces = memory.get_traces().copy()
    traces[:, 1] = 0.0
    dead = numpy_recording(traces, memory.sampling_frequency, probe_from=memory)
    before = _state(dead)
    with pytest.warns(UserWarning, match=r"channel\(s\) \[1\] are flat \(dead\).*remove_channels"):
        sorting = run_elvisort(dead, fast_params(**QUICK), folder=tmp_path)
    assert sorting.get_num_units() >= 1
    _assert_same_state(before, _state(dead))


def test_pure_noise_gives_an_empty_sorting(tmp_path):
    """32 channels of Gaussian noise: an empty sorting, not an error."""
    from spikeinterface_elvisort.pipeline import run_elvisort

    recording = numpy_recording(noise(num_samples=300_000, num_channels=32), 30_000.0)
    sorting = run_elvisort(recording, fast_params(), folder=tmp_path)
    assert sorting.get_num_segments() == 1
    assert sorting.get_num_units() == 0


# -- out of memory -------------------------------------------------------------------------------------------------


def test_retry_on_out_of_memory_halves_then_falls_back_to_the_cpu():
    import torch

    from spikeinterface_elvisort.device import MIN_OOM_BATCH_SIZE, retry_on_out_of_memory

    calls = []

    def run(batch_size, device):
        calls.append((batch_size, device.type))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    with pytest.warns(RuntimeWarning) as record:
        assert retry_on_out_of_memory(run, 64, torch.device("cuda"), "test") == "done"
    halvings = [b for b, d in calls if d == "cuda"]
    assert halvings == [64, 32, 16, 8] and MIN_OOM_BATCH_SIZE == 8
    assert calls[-1] == (64, "cpu")  # the CPU gets the original batch size
    messages = [str(w.message) for w in record]
    assert "retrying with batches of 32" in messages[0]
    assert "continuing on the CPU" in messages[-1]


def test_retry_on_out_of_memory_lets_other_errors_through():
    import torch

    from spikeinterface_elvisort.device import retry_on_out_of_memory

    def run(batch_size, device):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="shapes"):
            retry_on_out_of_memory(run, 64, torch.device("cpu"), "test")

    def always(batch_size, device):
        raise RuntimeError("CUDA out of memory")

    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="out of memory on the CPU"):
        retry_on_out_of_memory(always, 64, torch.device("cpu"), "test")


def _tiny_model():
    import torch

    from spikeinterface_elvisort.models import build_model

    torch.manual_seed(0)
    return build_model("beta_vae", num_samples=20, num_channels=3, num_inception_blocks=1, lstm_hidden=8,
                       decoder_hidden=8, conv_channels=4)


def _fail_above(model, batch_limit, monkeypatch, method="forward"):
    """Make ``model.<method>`` raise CUDA's out-of-memory error on batches larger than ``batch_limit``."""
    import torch

    original = getattr(model, method)

    def guarded(snippets, *args, **kwargs):
        if snippets.shape[0] > batch_limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory ({snippets.shape[0]} snippets)")
        return original(snippets, *args, **kwargs)

    monkeypatch.setattr(model, method, guarded)


def test_training_out_of_memory_retries_with_smaller_batches(monkeypatch, single_thread_torch):
    import torch

    from spikeinterface_elvisort.training import TrainConfig, train_model

    snippets = np.random.default_rng(0).normal(size=(100, 20, 3)).astype(np.float32)
    config = TrainConfig(epochs=2, batch_size=64, seed=0, stage="vae")
    reference = _tiny_model()
    expected = train_model(reference, snippets, TrainConfig(epochs=2, batch_size=32, seed=0, stage="vae"),
                           torch.device("cpu"))

    model = _tiny_model()
    _fail_above(model, 32, monkeypatch, method="forward")  # nn.Module.__call__ looks forward up on the instance
    with pytest.warns(RuntimeWarning, match="vae training: out of memory on cpu; retrying with batches of 32"):
        history = train_model(model, snippets, config, torch.device("cpu"))
    # the retry restarted from the initial weights: same history and weights as training with batches of 32
    assert [row["total"] for row in history] == pytest.approx([row["total"] for row in expected])
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_inference_out_of_memory_retries_with_smaller_batches(monkeypatch):
    import torch

    from spikeinterface_elvisort.inference import encode

    model = _tiny_model()
    snippets = np.random.default_rng(1).normal(size=(50, 20, 3)).astype(np.float32)
    expected = encode(model, snippets, torch.device("cpu"), batch_size=16)
    _fail_above(model, 16, monkeypatch, method="encode")
    with pytest.warns(RuntimeWarning, match=r"model.encode: out of memory.*batches of 32"):
        latents = encode(model, snippets, torch.device("cpu"), batch_size=64)
    np.testing.assert_allclose(latents, expected, rtol=1e-5, atol=1e-6)


# -- faults: interrupted runs --------------------------------------------------------------------------------------


def _assert_not_a_result(folder, match):
    from spikeinterface_elvisort import load_model
    from spikeinterface_elvisort.sorters import ElvisortSorter

    assert not (folder / "sorter_output" / "sorting").exists()
    with pytest.raises(Exception, match="spikeinterface_log.json|failed"):
        ss.read_sorter_folder(folder)
    with pytest.raises(SpikeSortingError, match=match):
        ElvisortSorter.get_result_from_folder(folder)
    with pytest.raises((ValueError, FileNotFoundError)):
        load_model(folder)


def test_a_run_that_raises_leaves_no_result_and_a_rerun_works(ground_truth, tmp_path, monkeypatch):
    from spikeinterface_elvisort import pipeline

    _, saved = ground_truth
    before = _state(saved)
    folder = tmp_path / "out"
    params = fast_params(**QUICK)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure in the middle of the run")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "_learn_and_label", broken)
        with pytest.raises(SpikeSortingError, match="simulated failure"):
            ss.run_sorter("elvisort", saved, folder=folder, **params)
    _assert_not_a_result(folder, "Spike sorting failed")

    sorting = ss.run_sorter("elvisort", saved, folder=folder, remove_existing_folder=True, **params)
    assert sorting.get_num_units() >= 1
    assert ss.read_sorter_folder(folder).get_num_units() == sorting.get_num_units()
    _assert_same_state(before, _state(saved))


KILLED_RUN = """
import os, signal, sys
import spikeinterface.sorters as ss
from spikeinterface.core import load

real_replace = os.replace

def replace(source, destination):  # the process dies just before the saved sorting is put in place
    if str(destination).endswith("sorting"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, destination)

os.replace = replace
ss.run_sorter("elvisort", load(sys.argv[1]), folder=sys.argv[2], **{params})
"""


def test_a_killed_run_never_reads_as_a_result(ground_truth, tmp_path):
    _, saved = ground_truth
    folder = tmp_path / "out"
    script = KILLED_RUN.replace("{params}", repr(fast_params(**QUICK)))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(saved._kwargs["folder_path"]),
                             str(folder)], capture_output=True, text=True, timeout=600)
    assert result.returncode == -9, result.stderr  # SIGKILL
    assert (folder / "sorter_output" / "sorting.incomplete").is_dir()  # written, never renamed
    _assert_not_a_result(folder, "interrupted")
