"""Sortings kept bit for bit: both sorters on three small recordings with fixed seeds, a saved model's instant sort
and its stream. A change that is meant to leave behaviour alone (a refactor) must leave these hashes alone.

The hashes are those of one CPU type (the project's x86_64 machines, where CI runs): another CPU, BLAS or torch
build may round training differently and give other, equally valid sortings. When a change is meant to change the
sortings, or on another machine, print the new hashes with ``python tests/test_fingerprints.py`` and update
``EXPECTED`` in the same commit, saying why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from conftest import fast_params, make_ground_truth, save_binary, ssae_fast_params

# recording name -> (channels, seconds, units, seed)
RECORDINGS = {"a": (4, 10.0, 3, 11), "b": (8, 10.0, 5, 12), "c": (8, 12.0, 6, 13)}

# recorded at commit 904a09a, before the stages became public modules
EXPECTED = {
    'elvisort a': '3 units, 453 spikes, 6499766b24e57ef9',
    'elvisort b': '4 units, 615 spikes, d321c8e8a5b02d5a',
    'elvisort c': '5 units, 878 spikes, f9853b5fae0955c6',
    'ssae a': '3 units, 453 spikes, bf9f8a7d45f101df',
    'ssae b': '2 units, 284 spikes, 94cac0337ad28afb',
    'ssae c': '4 units, 712 spikes, cec6ee1dc5a039e0',
    'instant b->c': '4 units, 945 spikes, b78d99b842b6af02',
    'stream b->c': '4 units, 945 spikes, b78d99b842b6af02',
}


def _hash(sorting) -> str:
    """Units, and the spike vector's samples, units and segments, as one short hash."""
    vector = sorting.to_spike_vector()
    digest = hashlib.sha1(np.asarray(sorting.unit_ids).astype(str).tobytes())
    for field in ("sample_index", "unit_index", "segment_index"):
        digest.update(np.ascontiguousarray(vector[field], dtype=np.int64).tobytes())
    return f"{sorting.get_num_units()} units, {vector.size} spikes, {digest.hexdigest()[:16]}"


def _params(sorter: str) -> dict:
    # one thread everywhere: the hashes must not depend on the machine's core count
    if sorter == "elvisort":
        return fast_params(job_kwargs={"n_jobs": 1})
    return ssae_fast_params(job_kwargs={"n_jobs": 1})


def fingerprints(folder: Path) -> dict:
    """The hashes of every case, computed in ``folder``."""
    import spikeinterface.sorters as ss

    from spikeinterface_elvisort import OnlineSorter, load_model
    from spikeinterface_elvisort.device import blas_threads, torch_threads
    from spikeinterface_elvisort.results import to_sorting

    recordings = {}
    for name, (channels, seconds, units, seed) in RECORDINGS.items():
        recording, _ = make_ground_truth(num_channels=channels, durations=[seconds], num_units=units, seed=seed)
        recordings[name] = save_binary(recording, folder / f"recording_{name}")
    hashes = {}
    for sorter in ("elvisort", "ssae"):
        for name, recording in recordings.items():
            sorting = ss.run_sorter(sorter, recording, folder=folder / f"{sorter}_{name}", verbose=False,
                                    **_params(sorter))
            hashes[f"{sorter} {name}"] = _hash(sorting)
    # the model trained on "b" sorts "c": offline, then as a stream of 7 ms blocks; ElvisortModel.sort sets no thread
    # limits of its own, so the test sets one torch and one BLAS thread whatever earlier tests left in the process
    model = load_model(folder / "elvisort_b", device="cpu")
    target = recordings["c"]
    with torch_threads(1), blas_threads(1):
        hashes["instant b->c"] = _hash(model.sort(target, matching="none", n_jobs=1))
        stream = OnlineSorter(model)
        traces = target.get_traces(return_in_uV=False)
        step = int(0.007 * target.sampling_frequency)
        spikes = [stream.process(traces[start:start + step]) for start in range(0, traces.shape[0], step)]
        spikes = np.concatenate(spikes + [stream.flush()])
    events = np.zeros(spikes.size, dtype=[("sample_index", "int64"), ("segment_index", "int64")])
    events["sample_index"] = spikes["sample_index"]
    labels = np.searchsorted(model.unit_ids, spikes["unit_id"])
    hashes["stream b->c"] = _hash(to_sorting(events, labels, model.unit_ids, target.sampling_frequency, 1))
    return hashes


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    return fingerprints(tmp_path_factory.mktemp("fingerprints"))


@pytest.mark.parametrize("case", list(EXPECTED))
def test_sorting_is_unchanged_bit_for_bit(computed, case):
    assert computed[case] == EXPECTED[case], (
        f"{case}: the sorting changed. If that is intended (or this is another CPU type), print the new hashes with "
        "`python tests/test_fingerprints.py` and update EXPECTED, saying why in the commit"
    )


def test_the_stream_gives_the_instant_sort(computed):
    assert computed["stream b->c"] == computed["instant b->c"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        for case, value in fingerprints(Path(work)).items():
            print(f"    {case!r}: {value!r},")
