"""Registration with SpikeInterface: "elvisort" exists in any interpreter (the .pth import hook), cheaply, exactly
once, and in the worker processes of ``run_sorter_jobs``.

Most checks run in a fresh ``sys.executable`` so that nothing this test session imported can make them pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import fast_params


def run_python(code: str, timeout: float = 600) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout (stripped), failing the test on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout.strip()


def last_json(stdout: str):
    return json.loads(stdout.splitlines()[-1])


def test_interpreter_start_imports_neither_torch_nor_spikeinterface():
    assert run_python("import sys; print('torch' in sys.modules, 'spikeinterface' in sys.modules)") == "False False"


def test_importing_the_package_is_cheap():
    out = run_python(
        """
        import sys, json
        import spikeinterface_elvisort
        heavy = [m for m in ("torch", "spikeinterface", "sklearn") if m in sys.modules]
        print(json.dumps({"version": spikeinterface_elvisort.__version__, "heavy": heavy}))
        """
    )
    result = last_json(out)
    assert result["heavy"] == []
    assert result["version"].count(".") >= 2


@pytest.mark.parametrize(
    "sorter_name, class_name, params_module, prefix",
    [("elvisort", "ElvisortSorter", "params", ""), ("ssae", "SsaeSorter", "ssae.params", "SSAE_")],
)
def test_sorter_is_registered_without_importing_the_package(sorter_name, class_name, params_module, prefix):
    out = run_python(
        f"""
        import sys, json
        import spikeinterface.sorters as ss
        from spikeinterface.sorters.sorterlist import sorter_dict
        print(json.dumps({{
            "available": {sorter_name!r} in ss.available_sorters(),
            "installed": {sorter_name!r} in ss.installed_sorters(),
            "class": sorter_dict[{sorter_name!r}].__name__,
            "defaults": ss.get_default_sorter_params({sorter_name!r}),
            "descriptions": ss.get_sorter_params_description({sorter_name!r}),
            "torch": "torch" in sys.modules,
        }}))
        """
    )
    import importlib

    module = importlib.import_module(f"spikeinterface_elvisort.{params_module}")
    result = last_json(out)
    assert result["available"] and result["installed"]
    assert result["class"] == class_name
    assert result["defaults"] == getattr(module, prefix + "DEFAULT_PARAMS")
    assert result["descriptions"] == getattr(module, prefix + "PARAMS_DESCRIPTION")
    assert result["torch"] is False  # registering and reading the defaults does not load torch


@pytest.mark.parametrize(
    "imports",
    [
        "import spikeinterface.sorters; import spikeinterface_elvisort; import spikeinterface_elvisort",
        "import spikeinterface_elvisort; import spikeinterface.sorters; import spikeinterface_elvisort",
        "from spikeinterface.sorters import run_sorter; import spikeinterface_elvisort",
    ],
)
def test_registration_is_idempotent(imports):
    out = run_python(
        f"""
        import json
        {imports}
        spikeinterface_elvisort.register_sorters()
        spikeinterface_elvisort.register_sorters()
        from spikeinterface_elvisort._registration import arm
        arm()
        from spikeinterface.sorters import sorterlist
        print(json.dumps({{
            name: {{
                "full_list": sum(s.sorter_name == name for s in sorterlist.sorter_full_list),
                "available": sorterlist.available_sorters().count(name),
                "same_class": sorterlist.sorter_dict[name] is getattr(spikeinterface_elvisort, class_name),
            }}
            for name, class_name in (("elvisort", "ElvisortSorter"), ("ssae", "SsaeSorter"))
        }}))
        """
    )
    expected = {"full_list": 1, "available": 1, "same_class": True}
    assert last_json(out) == {"elvisort": expected, "ssae": expected}


@pytest.mark.parametrize(
    "first_import",
    [
        "import spikeinterface_elvisort",
        "import spikeinterface_elvisort.params",
        "import spikeinterface_elvisort.pipeline",
        "import spikeinterface_elvisort.models",
        # sorters.py imports spikeinterface.sorters itself, so the hook fires while it is half-initialised
        "import spikeinterface_elvisort.sorters",
        "from spikeinterface_elvisort import ElvisortSorter",
        "from spikeinterface_elvisort.sorters import ElvisortSorter",
        "from spikeinterface_elvisort import SsaeSorter",
        "import spikeinterface_elvisort.ssae.pipeline",
    ],
)
def test_registered_whatever_is_imported_first(first_import):
    result = subprocess.run(
        [sys.executable, "-c",
         f"{first_import}\nimport spikeinterface.sorters as ss\n"
         "print('elvisort' in ss.available_sorters() and 'ssae' in ss.available_sorters())"],
        capture_output=True, text=True, timeout=600,
    )
    assert "could not register" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"


def test_registration_in_this_process_is_idempotent():
    import spikeinterface.sorters as ss
    from spikeinterface.sorters import sorterlist

    import spikeinterface_elvisort

    spikeinterface_elvisort.register_sorters()
    for name in ("elvisort", "ssae"):
        assert sum(s.sorter_name == name for s in sorterlist.sorter_full_list) == 1
        assert ss.available_sorters().count(name) == 1


def test_package_exports():
    import spikeinterface_elvisort as pkg

    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
        assert name in dir(pkg)
    assert pkg.ElvisortSorter.sorter_name == "elvisort"
    assert pkg.ElvisortSorter.handle_multi_segment is True
    assert pkg.ElvisortSorter.requires_locations is True
    assert pkg.ElvisortSorter.get_sorter_version() == pkg.__version__
    assert pkg.ElvisortSorter.is_installed()
    assert pkg.SsaeSorter.sorter_name == "ssae"
    assert pkg.SsaeSorter.handle_multi_segment is True
    assert pkg.SsaeSorter.get_sorter_version() == pkg.__version__
    assert pkg.SsaeSorter.is_installed()
    with pytest.raises(AttributeError, match="not_there"):
        pkg.not_there


# -- worker processes ----------------------------------------------------------------------------------------------

WORKER_PARAMS = fast_params(train_max_snippets=300)

# the parent never imports spikeinterface_elvisort explicitly; the workers are fresh interpreters (loky, spawn), so
# "elvisort" is only found there if the .pth hook registers it
JOBS_SCRIPT = """
import json, sys
from spikeinterface.core import load
from spikeinterface.sorters import run_sorter_jobs

engine, engine_kwargs, recordings, folders, params = json.loads(sys.argv[1])
if engine == "dask":
    from dask.distributed import Client, LocalCluster
    engine_kwargs = {"client": Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True))}
if isinstance(engine_kwargs.get("mp_context"), str):
    import multiprocessing
    engine_kwargs["mp_context"] = multiprocessing.get_context(engine_kwargs["mp_context"])
jobs = [
    dict(sorter_name="elvisort", recording=load(recording), folder=folder, **params)
    for recording, folder in zip(recordings, folders)
]
sortings = run_sorter_jobs(jobs, engine=engine, engine_kwargs=engine_kwargs, return_output=engine != "dask")
print(json.dumps([None if s is None else int(s.get_num_units()) for s in (sortings or [None] * len(jobs))]))
"""


def run_jobs(engine, engine_kwargs, recordings, folders):
    argument = json.dumps([engine, engine_kwargs, [str(r._kwargs["folder_path"]) for r in recordings],
                           [str(f) for f in folders], WORKER_PARAMS])
    result = subprocess.run([sys.executable, "-c", JOBS_SCRIPT, argument], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return last_json(result.stdout)


def check_sorter_folder(folder, recording):
    assert (folder / "spikeinterface_log.json").is_file()
    log = json.loads((folder / "spikeinterface_log.json").read_text())
    assert log["error"] is False and log["sorter_name"] == "elvisort"
    assert (folder / "sorter_output" / "sorting").is_dir()
    assert (folder / "sorter_output" / "model.pt").is_file()


def check_worker_threads(folders, loky=False):
    """Two workers sharing the cores: each ran the chunked stages on its half, and torch on at most that (torch's
    own default may be lower: physical cores), so there is no oversubscription."""
    from spikeinterface_elvisort.device import _omp_num_threads, available_cores

    if loky:  # loky passes the parent's OMP_NUM_THREADS on, else sets joblib's cpu count / n_jobs
        from joblib import cpu_count

        expected = min(_omp_num_threads() or max(cpu_count() // 2, 1), available_cores())
    else:
        expected = max(available_cores() // 2, 1)
    for folder in folders:
        text = (folder / "sorter_output" / "elvisort.log").read_text()
        match = re.search(r"(\d+) torch thread\(s\), (\d+) job\(s\) for the chunked stages", text)
        assert match, text[:500]
        assert int(match.group(2)) == expected and 1 <= int(match.group(1)) <= expected, match.group(0)


@pytest.fixture(scope="module")
def joblib_folders(tiny_recordings, tmp_path_factory):
    folder = tmp_path_factory.mktemp("joblib")
    folders = [folder / "job0", folder / "job1"]
    num_units = run_jobs("joblib", {"n_jobs": 2, "backend": "loky"}, tiny_recordings, folders)
    return folders, num_units


def test_run_sorter_jobs_joblib(joblib_folders, tiny_recordings):
    folders, num_units = joblib_folders
    assert len(num_units) == 2 and all(n >= 1 for n in num_units)
    for folder, recording in zip(folders, tiny_recordings):
        check_sorter_folder(folder, recording)
    check_worker_threads(folders, loky=True)  # loky sets OMP_NUM_THREADS to each worker's share


def test_read_sorter_folder_in_a_fresh_process(joblib_folders, tiny_recordings):
    folders, num_units = joblib_folders
    out = run_python(
        f"""
        import json
        from spikeinterface.sorters import read_sorter_folder
        sorting = read_sorter_folder({str(folders[0])!r})
        print(json.dumps({{
            "units": int(sorting.get_num_units()),
            "segments": sorting.get_num_segments(),
            "fs": sorting.sampling_frequency,
            "recording": sorting.has_recording(),
            "info": sorted(sorting.sorting_info),
        }}))
        """
    )
    result = last_json(out)
    assert result["units"] == num_units[0]
    assert result["segments"] == 1
    assert result["fs"] == tiny_recordings[0].sampling_frequency
    assert result["recording"] is True
    assert result["info"] == ["log", "params", "recording"]


def test_run_sorter_jobs_processpoolexecutor(tiny_recordings, tmp_path):
    folders = [tmp_path / "job0", tmp_path / "job1"]
    num_units = run_jobs("processpoolexecutor", {"max_workers": 2, "mp_context": "spawn"}, tiny_recordings, folders)
    assert len(num_units) == 2 and all(n >= 1 for n in num_units)
    for folder, recording in zip(folders, tiny_recordings):
        check_sorter_folder(folder, recording)
    check_worker_threads(folders)  # nothing sets OMP_NUM_THREADS here: the sorter counts the pool's workers


def test_run_sorter_jobs_dask(tiny_recordings, tmp_path):
    pytest.importorskip("dask.distributed")
    folders = [tmp_path / "job0", tmp_path / "job1"]
    run_jobs("dask", {}, tiny_recordings, folders)
    for folder, recording in zip(folders, tiny_recordings):
        check_sorter_folder(folder, recording)
