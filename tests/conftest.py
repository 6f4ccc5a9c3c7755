"""Shared fixtures and helpers: the torch device, small ground-truth recordings, sorter parameters of both
sorters, and hand-made recordings and peaks for the stage tests.

Everything is generated with fixed seeds; nothing is downloaded. Recordings that go through ``run_sorter`` are saved
as binary folders (``run_sorter`` needs a serialisable recording). Sorter runs that several tests reuse live in
module- or session-scoped fixtures of the test files: sort once, assert many things.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest


def pytest_addoption(parser):
    parser.addoption("--gpu", action="store_true", default=False, help="run the torch code and the sorter on CUDA")


# the only reasons a test may skip: the hardware or platform it needs is not this one. Any other skip (a missing
# package, from pytest.importorskip) fails the run, so that a test that never runs cannot pass unnoticed
HARDWARE_SKIPS = (
    "CUDA is available",  # tests of the CPU-only path, skipped when run with --gpu on a CUDA machine
    "bit-identical results are only promised on the CPU",  # determinism tests, skipped with --gpu
    "forked workers are used on Linux only",
)
_unexpected_skips: list[str] = []


def pytest_collectreport(report):  # a module skipped as a whole (pytest.importorskip at its top)
    pytest_runtest_logreport(report)


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(allowed in reason for allowed in HARDWARE_SKIPS):
            _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _unexpected_skips and exitstatus in (0, 5):  # 5: nothing ran but skips
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _unexpected_skips:
        terminalreporter.section("skipped for a reason other than hardware (this fails the run)")
        for line in _unexpected_skips:
            terminalreporter.write_line(line)
        terminalreporter.write_line('install what they need (pip install -e ".[test]") or, for a hardware '
                                    "reason, name it in conftest.HARDWARE_SKIPS")


@pytest.fixture(scope="session")
def use_gpu(request) -> bool:
    use = bool(request.config.getoption("--gpu"))
    if use:
        import torch

        if not torch.cuda.is_available():
            pytest.fail("--gpu was given but torch sees no CUDA device")
    return use


@pytest.fixture(scope="session")
def torch_device(use_gpu):
    """CPU unless ``--gpu`` (Kilosort's fixture)."""
    import torch

    return torch.device("cuda" if use_gpu else "cpu")


@pytest.fixture(scope="module")
def single_thread_torch():
    """One torch thread for the small-tensor tests: on a busy CPU, torch's default of one thread per core makes tiny
    batches many times slower (threads wait for each other); restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def sorter_device(use_gpu) -> str:
    """The ``device`` sorter parameter matching ``torch_device``."""
    return "cuda" if use_gpu else "cpu"


def _with_device(defaults: dict, device: str | None) -> dict:
    params = copy.deepcopy(defaults)
    if device is not None:
        params["device"] = device
    return params


def default_params(device: str | None = None) -> dict:
    """A fresh copy of the sorter's real defaults (optionally with ``device`` set)."""
    from spikeinterface_elvisort.params import DEFAULT_PARAMS

    return _with_device(DEFAULT_PARAMS, device)


def fast_params(device: str = "cpu", **overrides) -> dict:
    """Defaults shrunk so that a 4-channel, 10-20 s recording sorts in seconds: for tests of the plumbing (folders,
    segments, determinism, workers), not of accuracy. The classifier head keeps its default epochs (cheap: it trains
    on cached embeddings; one epoch leaves it untrained and every event labelled noise). The small model keeps
    samples_per_step=3, the value the thresholds of the tests that use it were measured with (with the default 5 the
    2-epoch model of the transfer tests finds 3 units of 5 instead of 4); the accuracy tests run the defaults."""
    params = default_params(device)
    params.update(
        train_epochs=2,
        train_max_snippets=500,
        train_kl_warmup_epochs=1,
        train_dec_epochs=1,
        torch_threads=1,
        model_kwargs=dict(num_inception_blocks=1, lstm_hidden=16, decoder_hidden=16, conv_channels=8,
                          samples_per_step=3),
    )
    params.update(overrides)
    return params


def ssae_defaults(device: str | None = None) -> dict:
    """A fresh copy of the ssae sorter's defaults (optionally with ``device`` set)."""
    from spikeinterface_elvisort.ssae.params import SSAE_DEFAULT_PARAMS

    return _with_device(SSAE_DEFAULT_PARAMS, device)


def ssae_fast_params(device: str = "cpu", **overrides) -> dict:
    """Defaults shrunk so that a 4-channel, 10-20 s recording sorts in seconds."""
    params = ssae_defaults(device)
    params.update(train_epochs=3, train_max_snippets=600, hybrid_num_templates=8, hybrid_spikes_per_template=40,
                  train_cleaner_epochs=3, torch_threads=1)
    params.update(overrides)
    return params


def probe_recording(traces_list, sampling_frequency=30_000.0):
    """A NumpyRecording of ``traces_list`` (one (num_samples, num_channels) array per segment) on a linear probe,
    20 um pitch."""
    from probeinterface import generate_linear_probe
    from spikeinterface.core import NumpyRecording

    num_channels = traces_list[0].shape[1]
    recording = NumpyRecording([t.astype(np.float32) for t in traces_list], sampling_frequency)
    probe = generate_linear_probe(num_elec=num_channels, ypitch=20)
    probe.set_device_channel_indices(np.arange(num_channels))
    recording.set_probe(probe)  # in place since SpikeInterface 0.105
    return recording


def peaks_at(samples, channels, segments=None):
    """A peaks array (SpikeInterface's base_peak_dtype) at these samples and channels."""
    from spikeinterface.core.node_pipeline import base_peak_dtype

    peaks = np.zeros(len(samples), dtype=base_peak_dtype)
    peaks["sample_index"] = samples
    peaks["channel_index"] = channels
    peaks["segment_index"] = 0 if segments is None else segments
    return peaks


def expected_snippets(segments, peaks, neighbours, nbefore, nafter):
    """The snippets ``extract_snippets`` must give, cut sample by sample (zeros beyond the traces' edges)."""
    expected = np.zeros((peaks.size, nbefore + nafter, neighbours.shape[1]), dtype=np.float32)
    for i, peak in enumerate(peaks):
        traces = segments[peak["segment_index"]]
        for j, sample in enumerate(range(peak["sample_index"] - nbefore, peak["sample_index"] + nafter)):
            if 0 <= sample < traces.shape[0]:
                expected[i, j] = traces[sample, neighbours[peak["channel_index"]]]
    return expected


def make_ground_truth(num_channels=4, durations=(20.0,), seed=0, **kwargs):
    """(recording, sorting) from ``generate_ground_truth_recording`` (lazy, not serialisable)."""
    from spikeinterface.core import generate_ground_truth_recording

    return generate_ground_truth_recording(num_channels=num_channels, durations=list(durations), seed=seed, **kwargs)


def save_binary(recording, folder):
    import warnings

    with warnings.catch_warnings():
        # a generated recording has no provenance to save along with the traces, and says so
        warnings.filterwarnings("ignore", message="The extractor is not serializable")
        return recording.save(folder=folder, format="binary", overwrite=True, verbose=False, progress_bar=False)


@pytest.fixture(scope="session")
def contract_recording(tmp_path_factory):
    """The contract's recording: 4 channels x 60 s, seed 0, saved as binary; (recording, ground truth)."""
    recording, sorting = make_ground_truth(num_channels=4, durations=[60.0], seed=0)
    return save_binary(recording, tmp_path_factory.mktemp("contract") / "recording"), sorting


@pytest.fixture(scope="session")
def small_recording(tmp_path_factory):
    """4 channels x 20 s, seed 0, saved as binary: for sorter runs with ``fast_params``; (recording, ground truth)."""
    recording, sorting = make_ground_truth(num_channels=4, durations=[20.0], seed=0)
    return save_binary(recording, tmp_path_factory.mktemp("small") / "recording"), sorting


@pytest.fixture(scope="session")
def tiny_recordings(tmp_path_factory):
    """Two different 4-channel x 10 s recordings saved as binary (seeds 1 and 2), for the worker-process tests."""
    folder = tmp_path_factory.mktemp("tiny")
    recordings = []
    for seed in (1, 2):
        recording, _ = make_ground_truth(num_channels=4, durations=[10.0], seed=seed)
        recordings.append(save_binary(recording, folder / f"recording{seed}"))
    return recordings


@pytest.fixture(scope="session")
def two_segment_recording(tmp_path_factory):
    """4 channels, two 20 s segments, seed 0, saved as binary; (recording, ground truth)."""
    recording, sorting = make_ground_truth(num_channels=4, durations=[20.0, 20.0], seed=0)
    return save_binary(recording, tmp_path_factory.mktemp("segments") / "recording"), sorting


@pytest.fixture(scope="session")
def accuracy_recording(tmp_path_factory):
    """8 channels x 30 s, 5 units, 30 kHz, seed 0, saved as binary; (recording, ground truth)."""
    recording, sorting = make_ground_truth(
        num_channels=8, num_units=5, durations=[30.0], sampling_frequency=30000.0, seed=0
    )
    return save_binary(recording, tmp_path_factory.mktemp("accuracy") / "recording"), sorting


def make_spikes(num_spikes=600, num_samples=24, num_channels=4, num_units=3, noise=0.05, seed=0):
    """Spikes of ``num_units`` smooth templates with amplitude jitter and white noise; (spikes, labels, clean)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples)
    templates = []
    for unit in range(num_units):
        centre = num_samples / 3 + 2 * unit
        shape = -np.exp(-0.5 * ((t - centre) / 1.5) ** 2) + 0.4 * np.exp(-0.5 * ((t - centre - 5) / 3.0) ** 2)
        gains = np.exp(
            -0.5 * ((np.arange(num_channels) - unit * (num_channels - 1) / max(num_units - 1, 1)) / 1.2) ** 2
        )
        templates.append(shape[:, None] * gains[None, :])
    templates = np.stack(templates)
    labels = rng.integers(0, num_units, num_spikes)
    amplitudes = 1.0 + 0.05 * rng.standard_normal(num_spikes)
    clean = templates[labels] * amplitudes[:, None, None]
    spikes = clean + noise * rng.standard_normal(clean.shape)
    return spikes.astype(np.float32), labels, clean.astype(np.float32)
