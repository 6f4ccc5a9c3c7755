"""What the benchmark scripts in ``benchmarks/`` share: one ``run_sorter`` call in a fresh Python process (optionally
beside competing CPU-bound processes), the ground-truth units' SNR, the mean scores over the selected units and the
versions a report names."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CHILD = """
import json, resource, sys, time
import spikeinterface.core as si
import spikeinterface.sorters as ss
sorter, recording_file, folder, params = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
recording = si.load(recording_file)
start = time.perf_counter()
ss.run_sorter(sorter, recording, folder=folder, remove_existing_folder=True, verbose=False, **params)
print("WALL", time.perf_counter() - start)
print("PEAK_RSS_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""
SPINNER = "while True: pass"  # a competing CPU-bound process, as a notebook's loop or another job would be


@dataclass
class FreshRun:
    """One ``run_sorter`` call in a fresh process: the sorting read back from its folder, the wall seconds of the
    call, and the peak RSS (MiB) of the sorter's process and of the largest of its child processes."""

    sorting: object
    wall_s: float
    peak_rss_mib: float
    children_peak_rss_mib: float


def run_in_fresh_process(sorter: str, recording, folder: Path, params: dict | None = None,
                         time_limit: float | None = None, competing_processes: int = 0) -> FreshRun:
    """Run ``sorter`` on ``recording`` (it must be JSON-serialisable: saved or read from files) in a new Python
    process, as a user's script would: the sorter's own imports and any just-in-time compilation count (in one
    shared process the first sorter would pay the compilation of SpikeInterface's numba kernels for every sorter
    after it). ``competing_processes`` CPU-bound processes run from before the call until after it.

    Raises
    ------
    RuntimeError
        When the sorter fails (with the end of its error output) or runs past ``time_limit`` seconds.
    """
    from spikeinterface.sorters import read_sorter_folder

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recording_file = folder.parent / f"{folder.name}_recording.json"
    recording.dump_to_json(recording_file)
    spinners = [subprocess.Popen([sys.executable, "-c", SPINNER]) for _ in range(competing_processes)]
    try:
        result = subprocess.run([sys.executable, "-c", CHILD, sorter, str(recording_file), str(folder),
                                 json.dumps(params or {})], capture_output=True, text=True, timeout=time_limit)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{sorter} did not finish within the time limit of {time_limit:.0f} s") from None
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
        recording_file.unlink()
    if result.returncode != 0:
        raise RuntimeError(f"{sorter} exited with {result.returncode}: {result.stderr[-2000:]}")
    lines = result.stdout.splitlines()
    wall = float([line for line in lines if line.startswith("WALL ")][-1].split()[1])
    peak, children = map(float, [line for line in lines if line.startswith("PEAK_RSS_MIB ")][-1].split()[1:])
    return FreshRun(read_sorter_folder(folder), wall, peak, children)


def unit_snr(recording, sorting, seed: int = 0):
    """SpikeInterface's ``snr`` quality metric of each ground-truth unit on ``recording`` (a pandas Series by unit
    id), with both random draws seeded: unseeded noise levels moved units with an SNR near a cut in or out."""
    from spikeinterface.core import create_sorting_analyzer
    from spikeinterface.metrics import compute_quality_metrics

    analyzer = create_sorting_analyzer(sorting, recording, sparse=True, format="memory")
    analyzer.compute(["random_spikes", "templates", "noise_levels"],
                     extension_params={"random_spikes": {"seed": seed},
                                       "noise_levels": {"random_slices_kwargs": {"seed": seed}}})
    return compute_quality_metrics(analyzer, metric_names=["snr"])["snr"]


def mean_accuracy(ground_truth, sorting, units):
    """Mean accuracy, precision and recall over ``units`` of ``ground_truth`` (exhaustive, 0.4 ms: SpikeInterface's
    defaults), a pandas Series."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    performance = compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True).get_performance()
    return performance.loc[units, ["accuracy", "precision", "recall"]].astype(float).mean()


def versions() -> dict:
    """Python's and the main libraries' versions, for a report's header."""
    import spikeinterface

    out = {"python": platform.python_version(), "spikeinterface": spikeinterface.__version__}
    for module in ("torch", "spikeinterface_elvisort", "kilosort", "numpy", "sklearn"):
        try:
            out[module] = __import__(module).__version__
        except Exception:
            pass
    return out


def report_header(argv=None) -> str:
    """Date, machine, versions and the command, the first lines of a report."""
    import os

    argv = sys.argv if argv is None else argv
    return (f"date: {time.strftime('%Y-%m-%d')}; machine: {platform.node()} ({platform.processor() or platform.machine()}"
            f", {os.cpu_count()} cores); versions: {versions()}\ncommand: python {' '.join(argv)}\n")
