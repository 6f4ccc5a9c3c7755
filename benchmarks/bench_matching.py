"""Template matching in threads and in forked worker processes: the clean-up's matching step alone.

Each recording is preprocessed as the sorter does it (``front_end.run_front_end`` with the default parameters: filter,
common reference, whitening, cached in shared memory), its ground-truth units' templates are computed on the
preprocessed traces, and ``cleanup.match_templates`` (circus-omp by default) finds the spikes with

* ``threads``: the job kwargs of the other chunked stages (one thread per core);
* ``processes``: what ``jobs.matching_job_kwargs`` gives the sorter by default on Linux (forked workers, one
  thread each);
* ``one worker``: ``n_jobs=1``.

It prints the wall time of each (the best of ``--repeats``) and checks that all three find the same spikes.
The recordings are the package's study sets (``spikeinterface_elvisort.benchmarks.datasets``): generated ones with 32
channels and 15 units, the MEArec ones.

Examples
--------
python benchmarks/bench_matching.py
python benchmarks/bench_matching.py --sets static --seeds 0 1 --repeats 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from spikeinterface_elvisort.benchmarks.datasets import recordings_of_sets
from spikeinterface_elvisort.benchmarks.runner import versions


def time_matching(recording, sorting, method, repeats, work):
    from spikeinterface.core.node_pipeline import base_peak_dtype

    from spikeinterface_elvisort.curation import compute_templates
    from spikeinterface_elvisort.params import DEFAULT_PARAMS
    from spikeinterface_elvisort.jobs import matching_job_kwargs, sorter_job_kwargs
    from spikeinterface_elvisort.cleanup import match_templates
    from spikeinterface_elvisort.front_end import StageLog, drop_cache, run_front_end
    from spikeinterface_elvisort.snippets import window_samples

    params = dict(DEFAULT_PARAMS)
    job_kwargs = sorter_job_kwargs({}, verbose=False)
    preprocessed, cache_info, noise_levels, _ = run_front_end(recording, params, work, job_kwargs, StageLog())
    nbefore, nafter = window_samples(params["ms_before"], params["ms_after"], recording.sampling_frequency)
    spikes = sorting.to_spike_vector()
    events = np.zeros(spikes.size, dtype=base_peak_dtype)
    events["sample_index"], events["segment_index"] = spikes["sample_index"], spikes["segment_index"]
    templates = compute_templates(preprocessed, events, spikes["unit_index"], sorting.unit_ids.size, nbefore, nafter,
                                  job_kwargs=job_kwargs)
    modes = {
        "threads": job_kwargs,
        "processes": matching_job_kwargs({}, job_kwargs),
        "one worker": job_kwargs | {"n_jobs": 1},
    }
    times, found = {}, {}
    for mode, kwargs in modes.items():
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            result = match_templates(preprocessed, templates, noise_levels=noise_levels, nbefore=nbefore,
                                     method=method, job_kwargs=kwargs)
            best = min(best, time.perf_counter() - start)
        times[mode], found[mode] = best, result[:2]
    same = all(np.array_equal(found[mode][0], found["threads"][0]) and
               np.array_equal(found[mode][1], found["threads"][1]) for mode in modes)
    del preprocessed
    drop_cache(cache_info)
    return times, found["threads"][0].size, same, modes["processes"].get("pool_engine", "thread")


def main(argv=None):
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["static", "noise10", "mearec"],
                        choices=["static", "noise10", "lowsnr", "mearec"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds, generated recordings")
    parser.add_argument("--method", default="circus-omp", choices=["circus-omp", "tdc-peeler"])
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode; the best is reported")
    args = parser.parse_args(argv)

    print("versions:", versions())
    header = f"{'recording':32s} {'spikes':>7s} {'threads':>8s} {'processes':>10s} {'one worker':>11s} {'same':>5s}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as work:
        for _, name, recording, sorting in recordings_of_sets(args.sets, args.seeds, args.duration,
                                                      Path(work) / "recordings"):
            times, num_spikes, same, engine = time_matching(recording, sorting, args.method, args.repeats,
                                                            Path(work) / name)
            if engine != "process":
                print(f"(processes: this platform or process keeps threads: {engine})")
            print(f"{name:32s} {num_spikes:7d} {times['threads']:7.1f}s {times['processes']:9.1f}s "
                  f"{times['one worker']:10.1f}s {str(same):>5s}", flush=True)


if __name__ == "__main__":
    main()
