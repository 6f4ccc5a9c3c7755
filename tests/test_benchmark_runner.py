"""The benchmark scripts' shared runner: a sort in a fresh process, beside competing processes, gives the sorting
an in-process run gives, and leaves no competing process behind."""

from __future__ import annotations

import numpy as np
import psutil

from conftest import fast_params

from spikeinterface_elvisort.benchmarks.runner import SPINNER, mean_accuracy, run_in_fresh_process, unit_snr


def test_a_fresh_process_beside_a_busy_core_gives_the_in_process_sorting(small_recording, tmp_path):
    import spikeinterface.sorters as ss

    recording, ground_truth = small_recording
    params = fast_params()
    run = run_in_fresh_process("elvisort", recording, tmp_path / "fresh", params, competing_processes=1)
    in_process = ss.run_sorter("elvisort", recording, folder=tmp_path / "here", verbose=False, **params)
    np.testing.assert_array_equal(run.sorting.to_spike_vector(), in_process.to_spike_vector())
    assert run.wall_s > 0 and run.peak_rss_mib > 100
    assert not any(SPINNER in " ".join(child.cmdline()) for child in psutil.Process().children(recursive=True))
    assert not list(tmp_path.glob("*_recording.json"))

    snr = unit_snr(recording, ground_truth)
    assert list(snr.index) == list(ground_truth.unit_ids) and snr.max() > 5
    detectable = snr.index[snr.values >= 5]
    scores = mean_accuracy(ground_truth, in_process, detectable)
    assert 0 < scores["accuracy"] <= 1 and set(scores.index) == {"accuracy", "precision", "recall"}


def test_bench_contention_reports_the_slowdown_and_the_same_sorting(tmp_path):
    """benchmarks/bench_contention.py on its smallest case: a row per load, the ratio to the idle run, accuracy on
    the detectable units, identical sortings, and the stage times of the log."""
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_contention.py"
    params = '{"train_epochs": 2, "train_dec_epochs": 1, "train_kl_warmup_epochs": 1, "train_max_snippets": 500}'
    result = subprocess.run([sys.executable, str(script), "--recordings", "quickstart", "--sorters", "elvisort",
                             "--loads", "1", "--elvisort-params", params, "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results.csv")
    assert table["load"].tolist() == [0, 1]  # the idle run is always made: the ratios need it
    assert table["ratio"].iloc[0] == 1.0 and table["ratio"].iloc[1] > 0.5
    assert table["same_as_idle"].all()
    assert (table["accuracy"] > 0.5).all() and (table["training_s"] > 0).all()
    assert "| quickstart " in (tmp_path / "results.md").read_text()


def test_bench_long_recordings_scores_each_run_against_its_ground_truth(tmp_path):
    """benchmarks/bench_long_recordings.py --score on its smallest case: the run's stages, peak memory and, measured
    after the run, its accuracy and unit counts against the ground truth the child saved."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_long_recordings.py"
    params = '{"train_epochs": 2, "train_dec_epochs": 1, "train_kl_warmup_epochs": 1, "train_max_snippets": 500}'
    result = subprocess.run([sys.executable, str(script), "--minutes", "0.2", "--channels", "16", "--units", "5",
                             "--params", params, "--score", "--work", str(tmp_path / "work"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = json.loads((tmp_path / "out" / "long_recordings.json").read_text())["results"]
    assert run["generated_units"] == 5 and run["num_units"] >= 1  # found by the sorter
    assert run["stages_s"]["clean-up"] > 0 and run["maxrss_self_mib"] > 0
    scores = run["scores"]
    assert 1 <= scores["units_snr5"] <= 5 and 0 <= scores["well_detected"] <= scores["units_snr5"]
    assert 0.5 < scores["accuracy_snr5"] <= 1.0 and 0 <= scores["accuracy_all"] <= 1.0
    assert min(scores["false_positive"], scores["redundant"], scores["overmerged"]) >= 0
