"""A busy machine changes how long a sort takes, never what it finds."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import fast_params, ssae_fast_params


@pytest.mark.parametrize("sorter_name", ["elvisort", "ssae"])
def test_the_same_seed_gives_the_same_sorting_on_an_idle_and_a_busy_machine(small_recording, tmp_path, sorter_name):
    """With the default threads (torch_threads=None, n_jobs per core), a sort beside a CPU-bound process equals the
    sort on the idle machine, spike for spike: the threads follow the cores, not the load."""
    import spikeinterface.sorters as ss

    recording, _ = small_recording
    params = fast_params() if sorter_name == "elvisort" else ssae_fast_params()
    params["torch_threads"] = None
    idle = ss.run_sorter(sorter_name, recording, folder=tmp_path / "idle", verbose=False, **params)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = ss.run_sorter(sorter_name, recording, folder=tmp_path / "busy", verbose=False, **params)
    finally:
        spinner.kill()
        spinner.wait()
    assert idle.get_num_units() > 0
    np.testing.assert_array_equal(idle.to_spike_vector(), busy.to_spike_vector())
