"""Sortings kept bit for bit: both sorters on three small recordings with fixed seeds, a saved model's instant sort
and its stream. A change that is meant to leave behaviour alone (a refactor) must leave these hashes alone.

Another CPU type may round BLAS and torch operations differently and give other, equally valid sortings, so each case
accepts the hashes recorded on the project's x86_64 machines (two CPU types so far), and on a CPU of a type named in
``RECORDED_CPU_TYPES`` a changed hash fails. On a CPU of no recorded type, each sorting is compared with the one
recorded in ``tests/data/fingerprints.npz`` instead: the same number of units and an accuracy of at least
``OTHER_CPU_MIN_ACCURACY`` for every unit (SpikeInterface's comparison, 0.4 ms). When a change is meant to change the
sortings, print the new hashes with ``python tests/test_fingerprints.py`` (which also rewrites the ``.npz``) and
update ``EXPECTED`` in the same commit, saying why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from conftest import fast_params, make_ground_truth, save_binary, ssae_fast_params

# recording name -> (channels, seconds, units, seed)
RECORDINGS = {"a": (4, 10.0, 3, 11), "b": (8, 10.0, 5, 12), "c": (8, 12.0, 6, 13)}

# case -> the hashes accepted, one per CPU type: recorded at commit 904a09a (before the stages became public modules),
# with the same code on an AMD EPYC machine with AVX-512 (where three cases round differently), and on an Intel
# machine with AVX-512 (where the two b->c cases give a third hash); the stream gives the instant sort's hashes
_B_TO_C = ('4 units, 945 spikes, b78d99b842b6af02', '4 units, 951 spikes, 9d474e88af5bcb9e',
           '4 units, 944 spikes, a0cdc4453ccb3b21')
EXPECTED = {
    'elvisort a': ('3 units, 453 spikes, 6499766b24e57ef9',),
    'elvisort b': ('4 units, 615 spikes, d321c8e8a5b02d5a', '4 units, 614 spikes, e0298c8f295b6b00'),
    'elvisort c': ('5 units, 878 spikes, f9853b5fae0955c6',),
    'ssae a': ('3 units, 453 spikes, bf9f8a7d45f101df',),
    'ssae b': ('2 units, 284 spikes, 94cac0337ad28afb',),
    'ssae c': ('4 units, 712 spikes, cec6ee1dc5a039e0',),
    'instant b->c': _B_TO_C,
    'stream b->c': _B_TO_C,
}
# the CPU types known to give one of EXPECTED's hashes for every case (see cpu_type)
RECORDED_CPU_TYPES = ("AuthenticAMD x86_64 avx512", "GenuineIntel x86_64 avx512")
OTHER_CPU_MIN_ACCURACY = 0.95
SORTINGS_FILE = Path(__file__).parent / "data" / "fingerprints.npz"


def cpu_type() -> str:
    """The CPU's vendor, the machine and its widest x86 vector extension (what decides how BLAS and torch round), e.g.
    "AuthenticAMD x86_64 avx512"."""
    import platform

    machine = platform.machine()
    try:
        words = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return machine
    vendor = words[words.index("vendor_id") + 2] if "vendor_id" in words else "unknown"
    widest = next((extension[:6] for extension in ("avx512f", "avx2") if extension in words), "")
    return f"{vendor} {machine} {widest}".strip()


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
    """The sorting of every case, computed in ``folder``."""
    import spikeinterface.sorters as ss

    from spikeinterface_elvisort import OnlineSorter, load_model
    from spikeinterface_elvisort.device import blas_threads, torch_threads
    from spikeinterface_elvisort.results import to_sorting

    recordings = {}
    for name, (channels, seconds, units, seed) in RECORDINGS.items():
        recording, _ = make_ground_truth(num_channels=channels, durations=[seconds], num_units=units, seed=seed)
        recordings[name] = save_binary(recording, folder / f"recording_{name}")
    sortings = {}
    for sorter in ("elvisort", "ssae"):
        for name, recording in recordings.items():
            sorting = ss.run_sorter(sorter, recording, folder=folder / f"{sorter}_{name}", verbose=False,
                                    **_params(sorter))
            sortings[f"{sorter} {name}"] = sorting
    # the model trained on "b" sorts "c": offline, then as a stream of 7 ms blocks; ElvisortModel.sort sets no thread
    # limits of its own, so the test sets one torch and one BLAS thread whatever earlier tests left in the process
    model = load_model(folder / "elvisort_b", device="cpu")
    target = recordings["c"]
    with torch_threads(1), blas_threads(1):
        sortings["instant b->c"] = model.sort(target, matching="none", n_jobs=1)
        stream = OnlineSorter(model, matching="none")
        traces = target.get_traces(return_in_uV=False)
        step = int(0.007 * target.sampling_frequency)
        spikes = [stream.process(traces[start:start + step]) for start in range(0, traces.shape[0], step)]
        spikes = np.concatenate(spikes + [stream.flush()])
    events = np.zeros(spikes.size, dtype=[("sample_index", "int64"), ("segment_index", "int64")])
    events["sample_index"] = spikes["sample_index"]
    labels = np.searchsorted(model.unit_ids, spikes["unit_id"])
    sortings["stream b->c"] = to_sorting(events, labels, model.unit_ids, target.sampling_frequency, 1)
    return sortings


def save_sortings(sortings: dict, path: Path = SORTINGS_FILE) -> None:
    """Each case's spike vector (samples, unit indices) and unit count, for the comparison on other CPU types."""
    arrays = {}
    for case, sorting in sortings.items():
        vector = sorting.to_spike_vector()
        arrays[f"{case}/samples"] = vector["sample_index"]
        arrays[f"{case}/units"] = vector["unit_index"]
        arrays[f"{case}/num_units"] = np.array(sorting.get_num_units())
    np.savez_compressed(path, **arrays)


def _one_segment_sorting(samples, units, num_units: int, sampling_frequency: float):
    from spikeinterface.core import NumpySorting

    return NumpySorting.from_samples_and_labels([samples], [units], sampling_frequency, unit_ids=np.arange(num_units))


def recorded_sorting(case: str, sampling_frequency: float):
    """The sorting of ``case`` kept in ``SORTINGS_FILE``."""
    with np.load(SORTINGS_FILE) as data:
        samples, units = data[f"{case}/samples"], data[f"{case}/units"]
        num_units = int(data[f"{case}/num_units"])
    return _one_segment_sorting(samples, units, num_units, sampling_frequency)


def accuracies(recorded, sorting) -> np.ndarray:
    """Each recorded unit's accuracy in ``sorting`` (SpikeInterface's comparison, 0.4 ms)."""
    import spikeinterface.comparison as sc

    comparison = sc.compare_sorter_to_ground_truth(recorded, sorting, exhaustive_gt=True)
    return comparison.get_performance()["accuracy"].to_numpy(dtype=float)


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    return fingerprints(tmp_path_factory.mktemp("fingerprints"))


@pytest.mark.parametrize("case", list(EXPECTED))
def test_sorting_is_unchanged_bit_for_bit(computed, case):
    sorting = computed[case]
    if _hash(sorting) in EXPECTED[case]:
        return
    assert cpu_type() not in RECORDED_CPU_TYPES, (
        f"{case}: the sorting changed ({_hash(sorting)}). If that is intended, print the new hashes with "
        "`python tests/test_fingerprints.py` and update EXPECTED, saying why in the commit"
    )
    # a CPU type of no recorded hash: the recorded sorting, within rounding
    recorded = recorded_sorting(case, sorting.sampling_frequency)
    assert sorting.get_num_units() == recorded.get_num_units(), f"{case}: {_hash(sorting)} on {cpu_type()}"
    accuracy = accuracies(recorded, sorting)
    assert accuracy.min() >= OTHER_CPU_MIN_ACCURACY, f"{case} on {cpu_type()}: accuracies {accuracy.round(3).tolist()}"


def test_the_stream_gives_the_instant_sort(computed):
    assert _hash(computed["stream b->c"]) == _hash(computed["instant b->c"])


def test_other_cpu_comparison_accepts_rounding_and_refuses_a_change():
    """The comparison used on unrecorded CPU types: the recorded sorting with one spike moved passes, with a unit's
    spikes given to another unit fails."""
    recorded = recorded_sorting("elvisort b", 30000.0)
    vector = recorded.to_spike_vector()
    samples, units = vector["sample_index"].copy(), vector["unit_index"].copy()
    samples[10] += 3  # 0.1 ms: within rounding
    moved = _one_segment_sorting(samples, units, recorded.get_num_units(), 30000.0)
    assert accuracies(recorded, moved).min() >= OTHER_CPU_MIN_ACCURACY
    units[units == 1] = 0
    merged = _one_segment_sorting(samples, units, recorded.get_num_units(), 30000.0)
    assert accuracies(recorded, merged).min() < OTHER_CPU_MIN_ACCURACY


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        computed_sortings = fingerprints(Path(work))
        save_sortings(computed_sortings)
        for case, value in computed_sortings.items():
            print(f"    {case!r}: {_hash(value)!r},")
