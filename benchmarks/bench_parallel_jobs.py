"""Many recordings at once: wall time of ``run_sorter_jobs`` with elvisort, one job after the other against two jobs
in parallel, with each worker's automatic share of the cores and with every worker on all the cores (the
oversubscription the share avoids).

Recordings: ``generate_ground_truth_recording`` (32 channels, 30 kHz, 15 units, seeds 0, 1, ...), saved to disk so
that worker processes can load them. Cases:

* ``loop``: ``engine="loop"``, the jobs one after the other in this process, each on all the cores;
* ``pool``: ``engine="processpoolexecutor"`` (spawn), ``max_workers`` jobs at once, default parameters (each worker
  takes its share of the cores: ``spikeinterface_elvisort.device.cpu_share``);
* ``pool-all-cores``: the same with ``torch_threads`` and ``job_kwargs["n_jobs"]`` set to every core in each worker
  (what each worker did before the share).

Reported: wall time of the whole ``run_sorter_jobs`` call, the threads each run's log says it got, and the mean
accuracy over ground-truth units with SNR >= 5 (0.4 ms, exhaustive).

Example
-------
python benchmarks/bench_parallel_jobs.py --jobs 2 --duration 60
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from spikeinterface_elvisort.benchmarks.runner import mean_accuracy, unit_snr, versions  # noqa: E402


def make_recordings(folder: Path, count: int, duration: float, num_channels: int):
    from spikeinterface.core import generate_ground_truth_recording

    pairs = []
    for seed in range(count):
        recording, sorting = generate_ground_truth_recording(
            durations=[duration], sampling_frequency=30000.0, num_channels=num_channels, num_units=15, seed=seed
        )
        pairs.append(
            (
                recording.save(folder=folder / f"recording{seed}", overwrite=True, progress_bar=False),
                sorting.save(folder=folder / f"sorting{seed}", overwrite=True),
            )
        )
    return pairs


def accuracy(recording, ground_truth, sorting):
    units = [unit for unit, value in unit_snr(recording, ground_truth).items() if value >= 5]
    return float(mean_accuracy(ground_truth, sorting, units)["accuracy"])


def threads_in_log(folder: Path):
    text = (folder / "sorter_output" / "elvisort.log").read_text()
    match = re.search(r"(\d+) torch thread\(s\), (\d+) job\(s\)", text)
    return f"{match.group(1)} torch / {match.group(2)} jobs" if match else "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="recordings, and workers of the pool")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--cases", nargs="+", default=["loop", "pool", "pool-all-cores"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_parallel_jobs"))
    args = parser.parse_args()

    import multiprocessing

    from spikeinterface.sorters import run_sorter_jobs

    from spikeinterface_elvisort.device import available_cores

    pairs = make_recordings(args.work / "data", args.jobs, args.duration, args.channels)
    cores = available_cores()
    rows = []
    for case in args.cases:
        params = {}
        if case == "pool-all-cores":
            params = {"torch_threads": cores, "job_kwargs": {"n_jobs": cores}}
        folders = [args.work / case / f"job{index}" for index in range(len(pairs))]
        jobs = [
            dict(sorter_name="elvisort", recording=recording, folder=folder, remove_existing_folder=True, **params)
            for (recording, _), folder in zip(pairs, folders)
        ]
        if case == "loop":
            engine, engine_kwargs = "loop", {}
        else:
            engine = "processpoolexecutor"
            engine_kwargs = {"max_workers": args.jobs, "mp_context": multiprocessing.get_context("spawn")}
        start = time.perf_counter()
        sortings = run_sorter_jobs(jobs, engine=engine, engine_kwargs=engine_kwargs, return_output=True)
        wall = time.perf_counter() - start
        scores = [accuracy(recording, truth, sorting) for (recording, truth), sorting in zip(pairs, sortings)]
        rows.append(
            {
                "case": case,
                "engine": engine,
                "wall_s": round(wall, 1),
                "threads": ", ".join(threads_in_log(folder) for folder in folders),
                "accuracy": ", ".join(f"{score:.3f}" for score in scores),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{args.jobs} recordings of {args.duration:g} s, {args.channels} channels; {cores} cores; {versions()}\n")
    print("| case | engine | wall (s) | threads per run | accuracy per recording |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['engine']} | {row['wall_s']} | {row['threads']} | {row['accuracy']} |")


if __name__ == "__main__":
    main()
