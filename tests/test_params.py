"""Parameters: defaults and descriptions agree with each other and with SpikeInterface; bad values fail early,
naming the parameter."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

import spikeinterface.sorters as ss

from spikeinterface_elvisort.params import DEFAULT_PARAMS, PARAMS, PARAMS_DESCRIPTION, STAGES
from spikeinterface_elvisort.checks import check_params

from conftest import default_params, fast_params, make_ground_truth, save_binary


def test_defaults_and_descriptions_have_the_same_keys():
    assert set(DEFAULT_PARAMS) == set(PARAMS_DESCRIPTION) == set(PARAMS)
    assert len(DEFAULT_PARAMS) > 20


def test_every_description_is_a_non_empty_string():
    for name, description in PARAMS_DESCRIPTION.items():
        assert isinstance(description, str), name
        assert description.strip(), name


def test_every_param_belongs_to_a_stage():
    for name, param in PARAMS.items():
        assert param.stage in STAGES, name


def test_defaults_are_plain_json_and_pass_their_own_check():
    # SpikeInterface writes the params to spikeinterface_params.json: they must round-trip through JSON unchanged
    assert json.loads(json.dumps(DEFAULT_PARAMS)) == DEFAULT_PARAMS
    params = copy.deepcopy(DEFAULT_PARAMS)
    assert check_params(params) == DEFAULT_PARAMS


def test_spikeinterface_sees_exactly_our_defaults():
    assert ss.get_default_sorter_params("elvisort") == DEFAULT_PARAMS
    assert ss.get_sorter_params_description("elvisort") == PARAMS_DESCRIPTION


def test_spikeinterface_returns_a_copy_of_the_defaults():
    params = ss.get_default_sorter_params("elvisort")
    params["model_kwargs"]["beta"] = 1.0
    params["train_epochs"] = 99
    assert DEFAULT_PARAMS["model_kwargs"] == {}
    assert ss.get_default_sorter_params("elvisort")["train_epochs"] == DEFAULT_PARAMS["train_epochs"]


BAD_VALUES = [
    # wrong choice
    ("peak_sign", "up"),
    ("matching_method", "x"),
    ("detection_method", "x"),
    ("clustering_method", "x"),
    ("cache_preprocessing", "disk"),
    ("mixed_precision", 1),  # 1 == True, but not a bool
    # wrong type
    ("train_epochs", "10"),
    ("train_epochs", 1.5),
    ("train_epochs", True),
    ("whitening", 1),
    ("apply_preprocessing", "yes"),
    ("detect_threshold", "5"),
    ("detect_threshold", None),
    # out of range
    ("train_epochs", 0),
    ("train_epochs", -1),
    ("detect_threshold", 0),
    ("clustering_confidence", 2),
    ("clustering_confidence", -0.1),
    ("train_classifier_balance", 1.5),
    ("train_classifier_balance", -0.5),
    ("train_classifier_balance", "0.5"),
    ("train_max_snippets", 10),
    ("seed", -1),
    ("ms_before", 0.0),
    ("torch_threads", 0),
    ("torch_threads", 1.5),
    # device
    ("device", "gpu"),
    ("device", "cuda:x"),
    ("device", "cuda:-1"),
    ("device", "CPU"),
    ("device", None),
    # nested dicts
    ("job_kwargs", "n_jobs=2"),
    ("model_kwargs", None),
    ("features", "latent"),
    # motion correction
    ("motion_correction", "dredge_slow"),
    ("motion_correction", True),
    ("motion_correction_kwargs", None),
    ("motion_correction_kwargs", {"estimate_motion_kwargs": {}}),  # without a preset
]


@pytest.mark.parametrize("name", ["pretrained_model", "training_sorting"])
def test_motion_correction_is_refused_with_saved_models_and_labels(name, tmp_path):
    params = default_params()
    params.update({name: str(tmp_path), "motion_correction": "dredge_fast"})
    with pytest.raises(ValueError, match="motion_correction"):
        check_params(params)


@pytest.mark.parametrize("name", ["pretrained_model", "training_sorting"])
def test_feature_ablations_are_refused_with_saved_models_and_labels(name, tmp_path):
    params = default_params()
    params.update({name: str(tmp_path), "features": "pca"})
    with pytest.raises(ValueError, match="features"):
        check_params(params)


@pytest.mark.parametrize("kwargs", [{"estimate": {}}, {"detect_kwargs": 8.0},
                                    {"interpolate_motion_kwargs": {"border_mode": "remove_channels"}}])
def test_bad_motion_correction_kwargs(kwargs):
    params = default_params()
    params.update(motion_correction="dredge_fast", motion_correction_kwargs=kwargs)
    with pytest.raises(ValueError, match="motion_correction_kwargs"):
        check_params(params)
    params["motion_correction_kwargs"] = {"estimate_motion_kwargs": {"win_step_um": 200.0}}
    assert check_params(params) is params


@pytest.mark.parametrize("name, value", BAD_VALUES, ids=[f"{n}={v!r}" for n, v in BAD_VALUES])
def test_bad_value_is_rejected_naming_the_parameter(name, value):
    params = default_params()
    params[name] = value
    with pytest.raises(ValueError, match=name):
        check_params(params)


def test_freq_min_must_be_below_freq_max():
    params = default_params()
    params.update(freq_min=6000.0, freq_max=300.0)
    with pytest.raises(ValueError, match="freq_min"):
        check_params(params)


def test_unknown_parameter_is_rejected_by_name():
    params = default_params()
    params["train_epoch"] = 10
    with pytest.raises(ValueError, match="train_epoch"):
        check_params(params)


def test_missing_parameter_is_rejected_by_name():
    params = default_params()
    del params["train_epochs"]
    with pytest.raises(ValueError, match="train_epochs"):
        check_params(params)


@pytest.mark.parametrize(
    "model_kwargs, match",
    [
        ({"not_a_field": 1}, "not_a_field"),
        ({"num_samples": 10}, "num_samples"),  # derived from the data, not a user setting
        ({"beta": -1}, "beta"),
        ({"beta": "high"}, "beta"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 4.5}, "latent_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"decoder_hidden": 10, "attention_heads": 4}, "attention_heads"),
        ({"num_inception_blocks": 9}, "num_inception_blocks"),
    ],
)
def test_bad_model_kwargs_are_rejected_by_name(model_kwargs, match):
    params = default_params()
    params["model_kwargs"] = model_kwargs
    with pytest.raises(ValueError, match=match):
        check_params(params)


@pytest.mark.parametrize(
    "name, value",
    [
        ("device", "cpu"),
        ("device", "auto"),
        ("seed", None),
        ("seed", 2**32 - 1),
        ("torch_threads", 2),
        ("mixed_precision", True),
        ("model_kwargs", {"beta": 4.0, "latent_dim": 8, "upper_latent_dim": 2}),
        ("job_kwargs", {"n_jobs": 2, "chunk_duration": "1s"}),
        ("detect_threshold", 4),  # integers are numbers too
    ],
)
def test_good_values_pass(name, value):
    params = default_params()
    params[name] = value
    assert check_params(params)[name] == value


# through run_sorter: SpikeInterface merges the params into the defaults, then calls our _check_params before any
# sorting work (but after writing the recording's json into the folder)


@pytest.mark.parametrize("sorter", ["elvisort", "ssae"])
def test_run_sorter_rejects_a_bad_value_before_sorting(small_recording, tmp_path, sorter):
    recording, _ = small_recording
    folder = tmp_path / "bad"
    with pytest.raises(ValueError, match="train_epochs"):
        ss.run_sorter(sorter, recording, folder=folder, train_epochs=-1)
    # nothing ran, and the folder SpikeInterface had made for the run is gone
    assert not folder.exists()


def test_a_refused_run_keeps_a_folder_that_holds_something(small_recording, tmp_path):
    """Only a folder holding nothing but what SpikeInterface wrote for this run is removed."""
    from spikeinterface_elvisort.sorters import _remove_if_unused

    folder = tmp_path / "kept"
    (folder / "sorter_output").mkdir(parents=True)
    (folder / "sorter_output" / "model.pt").write_bytes(b"")
    _remove_if_unused(folder)
    assert (folder / "sorter_output" / "model.pt").exists()
    (folder / "sorter_output" / "model.pt").unlink()
    (folder / "notes.txt").write_text("mine")
    _remove_if_unused(folder)
    assert (folder / "notes.txt").exists()


def test_run_sorter_rejects_an_unknown_parameter(small_recording, tmp_path):
    recording, _ = small_recording
    with pytest.raises(ValueError, match="train_epoch"):
        ss.run_sorter("elvisort", recording, folder=tmp_path / "unknown", train_epoch=3)
    assert not (tmp_path / "unknown").exists()


@pytest.mark.parametrize("sorter", ["elvisort", "ssae"])
def test_run_sorter_on_cuda_without_cuda_says_so_before_writing(small_recording, tmp_path, sorter):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    recording, _ = small_recording
    folder = tmp_path / "cuda"
    with pytest.raises(ValueError, match="CUDA is not available to torch.*Use device='cpu' or 'auto'"):
        ss.run_sorter(sorter, recording, folder=folder, device="cuda")
    assert not folder.exists()


def test_a_recording_without_a_probe_is_told_how_to_attach_one(tmp_path):
    """Before any folder is made, the message names set_probe and set_dummy_probe_from_locations."""
    from spikeinterface.core import NumpyRecording

    recording = NumpyRecording([np.zeros((30_000, 4), dtype="float32")], sampling_frequency=30_000.0)
    for sorter in ("elvisort", "ssae"):
        with pytest.raises(ValueError, match=r"recording.set_probe\(probe\).*set_dummy_probe_from_locations"):
            ss.run_sorter(sorter, recording, folder=tmp_path / sorter)
        assert not (tmp_path / sorter).exists()


def test_resolve_device_cpu_and_auto():
    import torch

    from spikeinterface_elvisort.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_resolve_device_rejects_a_missing_gpu():
    import torch

    from spikeinterface_elvisort.device import resolve_device

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="cuda:99"):
        resolve_device("cuda:99")


def test_chunked_stages_use_every_core_in_threads_unless_told_otherwise():
    from spikeinterface_elvisort.device import available_cores
    from spikeinterface_elvisort.jobs import sorter_job_kwargs

    default = sorter_job_kwargs({}, verbose=False)
    assert default["n_jobs"] == available_cores() and default["pool_engine"] == "thread"
    assert default["progress_bar"] is False
    # SpikeInterface's bars with verbose=True, on a terminal only (pytest's captured stderr is not one)
    assert sorter_job_kwargs({}, verbose=True)["progress_bar"] is False
    given = sorter_job_kwargs({"n_jobs": 1, "chunk_duration": "500ms"}, verbose=False)
    assert given["n_jobs"] == 1 and given["chunk_duration"] == "500ms"


def test_blas_threads_are_limited_once_per_run_not_per_chunk():
    """In threads, SpikeInterface's per-chunk BLAS limit is off and the run limits BLAS once (device.blas_threads):
    the user's max_threads_per_worker, SpikeInterface's default 1; processes and one job keep SpikeInterface's way
    in the chunks, and the run sets BLAS to the process's default threads (never what other code left behind)."""
    from spikeinterface_elvisort.device import default_blas_threads
    from spikeinterface_elvisort.jobs import blas_thread_limit, sorter_job_kwargs

    assert sorter_job_kwargs({"n_jobs": 2}, verbose=False)["max_threads_per_worker"] is None
    assert blas_thread_limit({"n_jobs": 2}) == 1
    assert blas_thread_limit({"n_jobs": 2, "max_threads_per_worker": 2}) == 2
    process = {"n_jobs": 2, "pool_engine": "process"}
    assert sorter_job_kwargs(process, verbose=False)["max_threads_per_worker"] == 1
    assert blas_thread_limit(process) == default_blas_threads()
    assert blas_thread_limit({"n_jobs": 1}) == default_blas_threads()


def test_default_blas_threads_follow_the_environment_then_the_cores(monkeypatch):
    from spikeinterface_elvisort.device import cpu_share, default_blas_threads

    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert default_blas_threads() == cpu_share()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_blas_threads() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert default_blas_threads() == 1


def test_a_blas_limit_left_in_the_process_does_not_change_the_sorting(tmp_path):
    """SpikeInterface's thread pools leave OpenBLAS at one thread in the process that ran them; a sort afterwards,
    in that process, gives the sorting and the saved model of a sort in a clean process state."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from spikeinterface_elvisort import load_model

    # 8 channels: whitened (from 8 channels on), a matrix product large enough for OpenBLAS to thread
    recording, _ = make_ground_truth(num_channels=8, durations=[10.0], num_units=5, seed=12)
    recording = save_binary(recording, tmp_path / "recording")
    params = fast_params(job_kwargs={"n_jobs": 1})
    runs = []
    for leftover in (None, 1):
        limiter = None if leftover is None else threadpool_limits(limits=leftover, user_api="blas")
        try:
            folder = tmp_path / f"leftover_{leftover}"
            sorting = ss.run_sorter("elvisort", recording, folder=folder, verbose=False, **params)
        finally:
            if limiter is not None:
                limiter.restore_original_limits()
        weights = load_model(folder, device="cpu").network.state_dict()
        runs.append((sorting.to_spike_vector(), weights))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert all(torch.equal(runs[0][1][name], runs[1][1][name]) for name in runs[0][1])


def test_template_matching_runs_in_forked_processes_unless_told_otherwise(monkeypatch):
    import multiprocessing
    import sys

    from spikeinterface_elvisort.jobs import matching_job_kwargs, sorter_job_kwargs

    monkeypatch.setattr(sys, "platform", "linux")
    two = sorter_job_kwargs({"n_jobs": 2}, verbose=False)
    matching = matching_job_kwargs({"n_jobs": 2}, two)
    assert matching["pool_engine"] == "process" and matching["mp_context"] == "fork"
    assert matching["max_threads_per_worker"] == 1 and matching["n_jobs"] == 2
    assert two["pool_engine"] == "thread"  # the other stages keep their threads
    # the user's pool_engine, one job, or a platform or process that cannot fork: the stages' job kwargs as they are
    chosen = sorter_job_kwargs({"n_jobs": 2, "pool_engine": "thread"}, verbose=False)
    assert matching_job_kwargs({"n_jobs": 2, "pool_engine": "thread"}, chosen) == chosen
    one = sorter_job_kwargs({"n_jobs": 1}, verbose=False)
    assert matching_job_kwargs({"n_jobs": 1}, one) == one
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert matching_job_kwargs({"n_jobs": 2}, two) == two
    monkeypatch.undo()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert matching_job_kwargs({"n_jobs": 2}, two) == two


def test_a_plain_process_gets_every_core_and_torch_threads_none_caps_torch_at_the_share(monkeypatch):
    import torch

    import spikeinterface_elvisort.device as device
    from spikeinterface_elvisort.jobs import sorter_job_kwargs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torch follows it by itself; the chunked stages only in workers
    assert device.cpu_share() == device.available_cores()
    monkeypatch.setattr(device, "cpu_share", lambda: 1)
    assert sorter_job_kwargs({}, verbose=False)["n_jobs"] == 1
    assert sorter_job_kwargs({"n_jobs": 1, "chunk_duration": "1s"}, verbose=False)["chunk_duration"] == "1s"
    previous = torch.get_num_threads()
    with device.torch_threads(None):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == previous
    with device.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == previous



@pytest.mark.parametrize("share, threads, workers", [(1, 1, 1), (2, 1, 2), (8, 7, 1)])
def test_torch_gets_every_core_but_one_and_inference_batches_take_the_rest(monkeypatch, share, threads, workers):
    """On the CPU a run's torch operations get one thread per core but one (a busy core then slows no operation
    down), and the batched passes of the trained model run in threads over the cores that torch's threads leave."""
    import torch

    import spikeinterface_elvisort.device as device

    monkeypatch.setattr(device, "cpu_share", lambda: share)
    previous = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        assert device.default_torch_threads() == threads
        with device.torch_threads(None):
            assert torch.get_num_threads() == threads
            assert device.inference_workers() == workers
    finally:
        torch.set_num_threads(previous)



LIMIT_SCRIPT = """
import json
from threadpoolctl import threadpool_info
from spikeinterface_elvisort.device import blas_threads, torch_threads
with torch_threads(1), blas_threads(1):
    from sklearn.mixture import GaussianMixture  # SciPy's OpenBLAS and scikit-learn's OpenMP: not loaded before
    print(json.dumps([(pool["user_api"], pool["num_threads"]) for pool in threadpool_info()]))
"""


def test_the_thread_limits_reach_libraries_loaded_after_them():
    """In a fresh process, the limits of a run hold for SciPy's OpenBLAS and scikit-learn's OpenMP runtime too,
    which load with the first Gaussian mixture (an OpenBLAS on two threads made it up to 13x slower)."""
    result = subprocess.run([sys.executable, "-c", LIMIT_SCRIPT], capture_output=True, text=True, check=True)
    pools = json.loads(result.stdout.strip().splitlines()[-1])
    assert {api for api, _ in pools} >= {"blas", "openmp"}
    assert all(threads == 1 for _, threads in pools), pools


POOL_SCRIPT = """
import json, multiprocessing, os, subprocess, sys, time
from concurrent.futures import ProcessPoolExecutor
from spikeinterface_elvisort.device import _pool_workers, available_cores, cpu_share

def task(_):
    time.sleep(0.5)  # every worker of the pool is started by now
    return cpu_share(), _pool_workers(multiprocessing.parent_process())

if __name__ == "__main__":
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # not a worker
    out = {"cores": available_cores()}
    for method in sys.argv[1:]:
        with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context(method)) as pool:
            out[method] = list(pool.map(task, range(3)))
    unrelated.kill()
    print(json.dumps(out))
"""


def test_pool_workers_split_the_cores_whatever_the_start_method(tmp_path):
    import json
    import multiprocessing
    import os
    import subprocess
    import sys

    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    methods = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, str(script), *methods], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for method in methods:
        assert out[method] == [[max(out["cores"] // 3, 1), 3]] * 3, method
    # a worker told its share by OMP_NUM_THREADS (loky, dask) takes that
    result = subprocess.run([sys.executable, str(script), "spawn"], capture_output=True, text=True, timeout=300,
                            env=env | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert [share for share, _ in json.loads(result.stdout.strip().splitlines()[-1])["spawn"]] == [1, 1, 1]


@pytest.mark.parametrize("sorter, typo, meant", [("elvisort", "detect_treshold", "detect_threshold"),
                                                 ("ssae", "train_epoch", "train_epochs")])
def test_a_misspelt_parameter_gets_a_suggestion(small_recording, tmp_path, sorter, typo, meant):
    recording, _ = small_recording
    with pytest.raises(Exception, match=rf"unknown parameter\(s\): '{typo}' \(did you mean '{meant}'"):
        ss.run_sorter(sorter, recording, folder=tmp_path / sorter, **{typo: 5})
