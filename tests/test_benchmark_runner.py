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
