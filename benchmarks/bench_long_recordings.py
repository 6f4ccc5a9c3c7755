"""Long recordings: peak memory and wall time of ``run_sorter("elvisort", ...)`` against the recording's duration.

Each duration runs in a fresh child process on a lazily generated 64-channel ground-truth recording
(``generate_ground_truth_recording``: noise and spikes are computed chunk by chunk, never held whole), so the
recording itself costs no memory. Reported per duration: the child's peak RSS (``ru_maxrss`` of the child, and the
peak of the child's process tree sampled with psutil every 0.2 s, worker processes included), wall time, the time
per stage (from ``elvisort.log``) and the number of units. Targets (issue 6): peak RSS at 60 min within 1.3x of
10 min and under 4 GiB; wall time linear in the duration.

Examples
--------
python benchmarks/bench_long_recordings.py --minutes 10 60 --out benchmarks/results
python benchmarks/bench_long_recordings.py --minutes 1 6 --params '{"matching_method": "none"}'
python benchmarks/bench_long_recordings.py --minutes 1 3 --channels 384 --units 100 --neuropixels --score
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
import spikeinterface.sorters as ss
from spikeinterface.core import generate_ground_truth_recording
from spikeinterface.core.generate import InjectTemplatesRecording

minutes, num_channels, num_units, folder, params, neuropixels = json.loads(sys.argv[1])
if neuropixels:
    from spikeinterface_elvisort.benchmarks.datasets import neuropixels_probe
    probe = dict(probe=neuropixels_probe(num_channels), noise_kwargs=dict(noise_levels=5.0, strategy="on_the_fly"))
else:
    probe = dict(num_channels=num_channels)
generated, sorting = generate_ground_truth_recording(
    durations=[minutes * 60.0], num_units=num_units, sampling_frequency=30000.0, seed=0, **probe,
)
# the generator's spike trains live in a NumpySorting, which run_sorter cannot dump: save them (a few MB), keep the
# traces lazy (noise and templates are computed chunk by chunk, never held whole)
kwargs = dict(generated._kwargs, sorting=sorting.save(folder=folder + "_ground_truth", overwrite=True))
recording = InjectTemplatesRecording(**kwargs)
recording.set_probe(generated.get_probe())
assert recording.check_serializability("json")
start = time.perf_counter()
sorting = ss.run_sorter("elvisort", recording, folder=folder, remove_existing_folder=True, verbose=False, **params)
wall = time.perf_counter() - start
print(json.dumps({
    "wall_s": wall,
    "maxrss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "maxrss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "num_units": int(sorting.get_num_units()),
    "num_spikes": int(sorting.to_spike_vector().size),
}))
"""


def run_one(minutes, num_channels, num_units, folder, params, poll_s=0.2, neuropixels=False):
    """Run one duration in a child process; returns its measurements (peak RSS of the process tree included).
    ``neuropixels``: on the Neuropixels-like probe of the benchmarks' neuropixels set (noise level 5)."""
    import psutil

    argument = json.dumps([minutes, num_channels, num_units, str(folder), params, neuropixels])
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, argument], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    process = psutil.Process(child.pid)
    peak_tree = 0
    while child.poll() is None:
        try:
            tree = [process] + process.children(recursive=True)
            peak_tree = max(peak_tree, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(poll_s)
    out, err = child.communicate()
    total_s = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"the {minutes} min run failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(minutes=minutes, num_channels=num_channels, generated_units=num_units, process_s=total_s,
                  peak_tree_rss_mib=peak_tree / 2**20)
    result["stages_s"], result["stages_peak_rss_mib"] = stage_lines(folder)
    return result


def score(folder, min_snr: float = 5.0):
    """The run in ``folder`` against its ground truth (saved beside it by the child): SpikeInterface's accuracy
    (exhaustive, 0.4 ms) averaged over the ground-truth units with SNR >= ``min_snr`` and over all units, and the
    counts of the Neuropixels study: well-detected units (accuracy >= 0.8 among the SNR >= ``min_snr`` ones), false
    positive, redundant and over-merged units."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import load

    from spikeinterface_elvisort.benchmarks.runner import unit_snr

    folder = Path(folder)
    ground_truth = load(str(folder) + "_ground_truth")
    recording = load(folder / "spikeinterface_recording.json")
    sorting = load(folder / "sorter_output" / "sorting")
    comparison = compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True)
    accuracy = comparison.get_performance()["accuracy"].astype(float)
    snr = unit_snr(recording, ground_truth)
    units = snr.index[snr.values >= min_snr]
    return {"units_snr5": len(units), "accuracy_snr5": float(accuracy.loc[units].mean()),
            "accuracy_all": float(accuracy.mean()), "well_detected": int((accuracy.loc[units] >= 0.8).sum()),
            "false_positive": int(comparison.count_false_positive_units()),
            "redundant": int(comparison.count_redundant_units()),
            "overmerged": int(comparison.count_overmerged_units())}


def stage_lines(folder):
    """From the run's spikeinterface_log.json (which holds elvisort.log's lines): the seconds of each stage, and the
    process's peak RSS (MiB) at the end of each stage, which tells the stage that set the peak."""
    log = json.loads((Path(folder) / "spikeinterface_log.json").read_text())
    times, peaks = {}, {}
    for line in log.get("runtime_trace", []):
        match = re.match(r"\S+ (\S[\S ]*?)\s+([\d.]+) s  ", line)
        if not match:
            continue
        times[match.group(1).strip()] = float(match.group(2))
        if (memory := re.search(r"\(peak RSS (\d+) MiB\)", line)):
            peaks[match.group(1).strip()] = int(memory.group(1))
    return times, peaks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--units", type=int, default=40)
    parser.add_argument("--neuropixels", action="store_true",
                        help="the Neuropixels-like probe of the neuropixels study set (--channels 384)")
    parser.add_argument("--params", default="{}", help="JSON sorter parameters over the defaults")
    parser.add_argument("--work", default="/tmp/bench_long_recordings", help="where the sorter folders go")
    parser.add_argument("--out", default=None, help="folder for long_recordings.json")
    parser.add_argument("--score", action="store_true",
                        help="score each run against its ground truth after it ended (outside the timed run)")
    args = parser.parse_args()

    import spikeinterface
    import torch

    from spikeinterface_elvisort import __version__

    params = json.loads(args.params)
    results = []
    for minutes in args.minutes:
        folder = Path(args.work) / f"elvisort_{minutes:g}min"
        result = run_one(minutes, args.channels, args.units, folder, params, neuropixels=args.neuropixels)
        if args.score:
            result["scores"] = score(folder)
            print(f"{minutes:g} min scores: {result['scores']}", flush=True)
        results.append(result)
        print(f"{minutes:g} min: wall {result['wall_s']:.0f} s, peak RSS {result['maxrss_self_mib']:.0f} MiB "
              f"(process tree {result['peak_tree_rss_mib']:.0f} MiB), {result['num_units']} units found of "
              f"{result['generated_units']}; stages {result['stages_s']}; peak RSS after each stage (MiB) "
              f"{result['stages_peak_rss_mib']}", flush=True)
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(f"ratio {last['minutes'] / first['minutes']:.1f}x duration: peak RSS x"
              f"{last['maxrss_self_mib'] / first['maxrss_self_mib']:.2f} (tree x"
              f"{last['peak_tree_rss_mib'] / first['peak_tree_rss_mib']:.2f}), wall x"
              f"{last['wall_s'] / first['wall_s']:.2f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"params": params, "results": results,
                  "versions": {"elvisort": __version__, "spikeinterface": spikeinterface.__version__,
                               "torch": torch.__version__}}
        (out / "long_recordings.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
