"""elvisort-benchmark: a two-case study on a tiny recording through the console script, the tables it writes, the
SpikeForest MDA reader, case selection and peak memory. The full benchmark is not a test (see docs/benchmarks.rst)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import default_params, fast_params, make_ground_truth

REPOSITORY = Path(__file__).resolve().parents[1]


def _run_cli(*args, timeout=600):
    # the worktree's package first, as the tests import it; one thread per library on a shared CI machine
    env = os.environ | {"PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "spikeinterface_elvisort.benchmarks", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _fast_overrides(**overrides) -> dict:
    """fast_params() as the few values that differ from the defaults, for --params; without template matching and
    auto-merge, whose cost on a tiny recording is fixed (tens of seconds on a busy CPU)."""
    defaults, fast = default_params(), fast_params(matching_method="none", auto_merge=False, **overrides)
    return {name: value for name, value in fast.items() if value != defaults[name]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two elvisort cases (the second a NAME=SORTER case with another seed) and an unknown sorter, on one generated
    4-channel, 10 s recording: (output folder, completed process)."""
    out = tmp_path_factory.mktemp("studies") / "out"
    process = _run_cli(
        "--sets", "static", "--seeds", "0", "--channels", "4", "--duration", "10",
        "--cases", "elvisort", "elvisort-b=elvisort", "ghost=no_such_sorter",
        "--params", "elvisort=" + json.dumps(_fast_overrides()), "elvisort-b=" + json.dumps(_fast_overrides(seed=1)),
        "--out", str(out),
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return out, process


def test_help_names_sets_and_options():
    process = _run_cli("--help", timeout=120)
    assert process.returncode == 0, process.stderr
    for word in ("static", "noise10", "lowsnr", "drift", "mearec", "spikeforest", "transfer", "--cases", "--params",
                 "--out"):
        assert word in process.stdout


def test_console_script_is_declared():
    import importlib
    import tomllib

    scripts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["elvisort-benchmark"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.slow
def test_tiny_run_writes_tables_and_plots(tiny_run):
    import pandas as pd

    from spikeinterface_elvisort.benchmarks.tables import RUN_COLUMNS

    out, _ = tiny_run
    runs = pd.read_csv(out / "results.csv")
    assert list(runs.columns) == RUN_COLUMNS
    assert sorted(runs["case"]) == ["elvisort", "elvisort-b"]
    assert (runs["status"] == "ok").all() and (runs["sorter"] == "elvisort").all()
    assert (runs["duration_s"] == 10).all() and (runs["num_gt"] == 10).all()
    for prefix in ("sf", "si"):
        assert (runs[f"{prefix}_units"] > 0).all()  # the generated units are loud: some pass both thresholds
        for score in ("accuracy", "precision", "recall", "f1"):
            assert runs[f"{prefix}_{score}"].between(0, 1).all(), (prefix, score)
        assert (runs[f"{prefix}_well_detected"] <= runs[f"{prefix}_units"]).all()
        for count in ("false_positive", "redundant", "overmerged"):
            assert (runs[f"{prefix}_{count}"] >= 0).all()
    assert np.allclose(runs["xspeed"], runs["duration_s"] / runs["wall_s"])
    assert (runs["wall_s"] > 0).all() and (runs["peak_rss_mb"] > 100).all() and (runs["added_rss_mb"] >= 0).all()

    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["case"]) == ["elvisort", "elvisort-b"] and (summary["runs"] == 1).all()
    units = pd.read_csv(out / "units.csv")
    assert len(units) == 2 * 10 and (units["sf_snr"] > 0).all() and (units["si_snr"] > 0).all()
    report = (out / "results.md").read_text()
    assert "SpikeForest's convention (1 ms, SNR >= 8" in report and "SpikeInterface's defaults (0.4 ms" in report
    for name in ("static_accuracy_vs_snr.png", "static_f1_vs_xspeed.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    info = json.loads((out / "run_info.json").read_text())
    assert info["device"] == "cpu" and "ghost" in info["skipped"]


@pytest.mark.slow
def test_tiny_run_skips_missing_sorter_and_resumes(tiny_run):
    out, process = tiny_run
    assert "ghost: sorter 'no_such_sorter' is unknown to spikeinterface.sorters, skipped" in process.stdout
    # a second call with the same output keeps the finished cases: nothing runs again
    again = _run_cli("--sets", "static", "--seeds", "0", "--channels", "4", "--duration", "10",
                     "--cases", "elvisort", "--params", "elvisort=" + json.dumps(_fast_overrides()), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "# running" not in again.stdout


def test_select_cases_reports_sorters_not_installed():
    from spikeinterface.sorters import sorterlist

    from spikeinterface_elvisort.benchmarks.study import INSTALL_HINT, select_cases

    missing = next((cls.sorter_name for cls in sorterlist.sorter_full_list if not cls.is_installed()), None)
    cases = {"elvisort": ("elvisort", {}), "ghost": ("no_such_sorter", {})}
    if missing is not None:
        cases["missing"] = (missing, {})
    available, skipped = select_cases(cases)
    assert list(available) == ["elvisort"]
    assert "unknown" in skipped["ghost"]
    if missing is not None:
        assert skipped["missing"] == f"missing: sorter {missing!r} is not installed, skipped ({INSTALL_HINT})"


def test_parse_cases_adds_named_cases_and_params():
    from spikeinterface_elvisort.benchmarks.cli import parse_cases
    from spikeinterface_elvisort.benchmarks.study import CASES

    cases = parse_cases(["elvisort", "elvisort-pca=elvisort"], ['elvisort-pca={"seed": 3}'])
    assert cases == {"elvisort": ("elvisort", {}), "elvisort-pca": ("elvisort", {"seed": 3})}
    assert CASES["elvisort"] == ("elvisort", {})  # the registry is not modified
    with pytest.raises(SystemExit, match="unknown case 'nope'"):
        parse_cases(["nope"], [])
    with pytest.raises(SystemExit, match="not among the cases"):
        parse_cases(["elvisort"], ['ssae={"seed": 1}'])


def test_spikeforest_folder_round_trip(tmp_path):
    from spikeinterface_elvisort.benchmarks.datasets import (read_spikeforest_folder, spikeforest_set,
                                                             write_spikeforest_folder)

    recording, sorting = make_ground_truth(num_channels=4, durations=[2.0], seed=0, sampling_frequency=30000.0)
    folder = tmp_path / "study_a" / "recording_1"
    write_spikeforest_folder(recording, sorting, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["firings_true.mda", "geom.csv", "params.json", "raw.mda"]

    read_recording, read_sorting = read_spikeforest_folder(folder)
    assert read_recording.sampling_frequency == 30000.0
    np.testing.assert_array_equal(read_recording.get_traces(), recording.get_traces())
    np.testing.assert_allclose(read_recording.get_channel_locations(), recording.get_channel_locations())
    assert len(read_sorting.unit_ids) == len(sorting.unit_ids)
    for index, unit_id in enumerate(sorting.unit_ids):  # the MDA writer labels non-integer unit ids by index
        np.testing.assert_array_equal(read_sorting.get_unit_spike_train(read_sorting.unit_ids[index]),
                                      sorting.get_unit_spike_train(unit_id))

    study_set = spikeforest_set([tmp_path / "study_a"])  # a study folder holding recording folders
    assert list(study_set.datasets) == ["recording_1"] and not study_set.exhaustive_gt
    (folder / "geom.csv").unlink()
    with pytest.raises(ValueError, match="missing geom.csv"):
        read_spikeforest_folder(folder)


def test_peak_memory_sees_an_allocation():
    from spikeinterface_elvisort.benchmarks.study import PeakMemory

    with PeakMemory(interval_s=0.01) as memory:
        block = np.ones(50 * 2**20 // 8)  # 50 MiB, touched
        time.sleep(0.1)  # held for several sampling intervals
        del block
    result = memory.as_dict()
    assert result["added_rss_mb"] >= 40 and result["peak_rss_mb"] >= result["added_rss_mb"]
    assert np.isnan(result["peak_gpu_mb"]) or result["peak_gpu_mb"] >= 0


def test_each_set_name_is_one_recipe_for_both_harnesses(tmp_path):
    """The scripts of benchmarks/ build their generated sets with the package's recipes: "static" is
    generate_ground_truth_recording on 32 channels, 15 units, noise level 5 (the earlier script's recording, sample
    for sample); "noise10" only raises the noise; "lowsnr" also weakens and moves the templates away."""
    from spikeinterface.core import generate_ground_truth_recording

    from spikeinterface_elvisort.benchmarks.datasets import recordings_of_sets

    built = {name: (dataset, recording) for name, dataset, recording, _ in
             recordings_of_sets(["static", "noise10", "lowsnr"], [0], 2.0, tmp_path)}
    names = [dataset for dataset, _ in built.values()]
    assert names == ["static_ch32_seed0", "noise10_ch32_seed0", "lowsnr_ch32_seed0"]
    reference, _ = generate_ground_truth_recording(durations=[2.0], sampling_frequency=30000.0, num_channels=32,
                                                   num_units=15, seed=0,
                                                   noise_kwargs=dict(noise_levels=5.0, strategy="on_the_fly"))
    np.testing.assert_array_equal(built["static"][1].get_traces(), reference.get_traces())
    peak = {name: float(np.abs(recording.get_traces()).max()) for name, (_, recording) in built.items()}
    # median absolute deviation per channel, the quietest channel's: the spikes of the static set raise the others
    noise = {name: float(np.min(np.median(np.abs(recording.get_traces()), axis=0))) / 0.6745
             for name, (_, recording) in built.items()}
    assert noise["static"] == pytest.approx(5.0, rel=0.1)
    assert noise["noise10"] == pytest.approx(10.0, rel=0.1) and noise["lowsnr"] == pytest.approx(10.0, rel=0.1)
    assert peak["lowsnr"] < peak["noise10"]



def test_accuracy_against_wall_time_plot(tmp_path):
    """bench_sorters.py's plot: one point per sorter of a set, written as a PNG."""
    import pandas as pd

    from spikeinterface_elvisort.benchmarks.tables import plot_accuracy_vs_wall

    table = pd.DataFrame({"set": ["static"] * 3 + ["noise10"], "sorter": ["elvisort", "lupin", "elvisort", "lupin"],
                          "accuracy": [0.99, 0.98, 0.97, 0.96], "wall_s": [30.0, 50.0, 32.0, 55.0]})
    summary = table.groupby(["set", "sorter"]).agg(accuracy=("accuracy", "mean"), wall_s=("wall_s", "mean"))
    plot_accuracy_vs_wall(summary, "static", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
