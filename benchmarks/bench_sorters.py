"""Ground-truth benchmark: elvisort and ssae beside SpikeInterface's internal sorters (and Kilosort4 when installed).

Every sorter runs through ``run_sorter`` on the same recordings, one after the other, each call in a fresh Python
process (``--in-process`` runs them all in this one); the wall time is that of the whole ``run_sorter`` call.
Accuracy, precision and recall come from ``compare_sorter_to_ground_truth(exhaustive_gt=True)`` (match window 0.4 ms,
SpikeInterface's default), averaged over ground-truth units with SNR >= --min-snr (SNR: SpikeInterface's ``snr``
quality metric on the recording).

Examples
--------
python benchmarks/bench_sorters.py --sets static --seeds 0 1 --sorters elvisort ssae tridesclous2
python benchmarks/bench_sorters.py --sets static noise10 mearec --out benchmarks/results
python benchmarks/bench_sorters.py --sets static noise10 --seeds 0 1 2 --sorters elvisort --sorter-seeds 0 1 2
python benchmarks/bench_sorters.py --sets neuropixels --seeds 2026 --sorters elvisort lupin tridesclous2 \
    spykingcircus2 kilosort4 --time-limit 1800 --out /data/bench_np

The recordings are the package's study sets (``spikeinterface_elvisort.benchmarks.datasets``, as in
``elvisort-benchmark``): static (noise level 5), noise10 (noise level 10) and lowsnr (noise 10, weaker templates,
deeper units) on 32 channels, 15 units, --duration seconds; the MEArec recordings; the neuropixels set. The
neuropixels set is the package's (``spikeinterface_elvisort.benchmarks.datasets.neuropixels_set``): 384 contacts
in four staggered columns, 100 units, static or drifting (--np-drift-modes), --np-durations seconds long.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from spikeinterface_elvisort.benchmarks.datasets import recordings_of_sets
from spikeinterface_elvisort.benchmarks.runner import report_header, run_in_fresh_process, unit_snr
from spikeinterface_elvisort.benchmarks.tables import plot_accuracy_vs_wall


DEFAULT_SORTERS = ["elvisort", "ssae", "tridesclous2", "spykingcircus2", "lupin", "kilosort4"]
OURS = ("elvisort", "ssae")  # the sorters --sorter-seeds applies to


def run_one(sorter, recording, folder, params, fresh_process=True, time_limit=None):
    """Run ``sorter``; returns (sorting, wall seconds of the ``run_sorter`` call, (peak RSS in MiB of the sorter's
    process, of the largest of its child processes), NaN in-process). With ``fresh_process`` the call runs in a new
    Python process (:func:`~spikeinterface_elvisort.benchmarks.runner.run_in_fresh_process`)."""
    import spikeinterface.sorters as ss

    if not fresh_process:
        start = time.perf_counter()
        sorting = ss.run_sorter(sorter, recording, folder=folder, remove_existing_folder=True, verbose=False,
                                **params)
        return sorting, time.perf_counter() - start, (float("nan"), float("nan"))
    run = run_in_fresh_process(sorter, recording, folder, params, time_limit=time_limit)
    return run.sorting, run.wall_s, (run.peak_rss_mib, run.children_peak_rss_mib)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["static"],
                        choices=["static", "noise10", "lowsnr", "mearec", "neuropixels"])
    parser.add_argument("--np-durations", nargs="+", type=float, default=[60.0],
                        help="seconds of each recording of the neuropixels set")
    parser.add_argument("--np-units", type=int, default=100, help="units of each neuropixels recording")
    parser.add_argument("--np-drift-modes", nargs="+", default=["static"], choices=["static", "zigzag", "bump"])
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds a sorter may take on one recording; a sorter past it is stopped and reported")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--sorters", nargs="+", default=DEFAULT_SORTERS)
    parser.add_argument("--min-snr", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--elvisort-params", type=json.loads, default={}, help="JSON dict of elvisort parameters")
    parser.add_argument("--ssae-params", type=json.loads, default={}, help="JSON dict of ssae parameters")
    parser.add_argument("--sorter-seeds", nargs="+", type=int, default=None,
                        help="run elvisort and ssae once per value of their 'seed' parameter (default: once, with "
                             "their default seed); the other sorters run once")
    parser.add_argument("--in-process", action="store_true",
                        help="run every sorter in this process (the first one then pays the numba compilation of "
                             "the SpikeInterface kernels the others reuse)")
    args = parser.parse_args(argv)

    import pandas as pd
    import spikeinterface.sorters as ss
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    args.out.mkdir(parents=True, exist_ok=True)
    installed = set(ss.installed_sorters())
    sorters = []
    for sorter in args.sorters:
        if sorter in installed:
            sorters.append(sorter)
        else:
            print(f"# {sorter}: not installed, skipped (pip install 'spikeinterface-elvisort[bench]')")

    # (sorter, value of its seed parameter; None: its default), --sorter-seeds repeating our sorters
    runs = [(sorter, seed) for sorter in sorters
            for seed in ((args.sorter_seeds or [None]) if sorter in OURS else [None])]
    rows = []
    recordings_folder = args.out / "recordings"
    np_options = {"durations": args.np_durations, "units": args.np_units, "drift_modes": args.np_drift_modes}
    for set_name, dataset, recording, gt_sorting in recordings_of_sets(args.sets, args.seeds, args.duration,
                                                                       recordings_folder, np_options):
        snr = unit_snr(recording, gt_sorting)
        selected = snr.index[snr.values >= args.min_snr]
        for sorter, sorter_seed in runs:
            params = {"elvisort": args.elvisort_params, "ssae": args.ssae_params}.get(sorter, {})
            if sorter_seed is not None:
                params = dict(params, seed=sorter_seed)
            folder = args.out / "work" / f"{dataset}_{sorter}"
            try:
                sorting, wall, (peak_rss, children_rss) = run_one(sorter, recording, folder, params,
                                                                  fresh_process=not args.in_process,
                                                                  time_limit=args.time_limit)
            except Exception as error:  # a peer failing must not lose the other rows
                print(f"# {sorter} failed on {dataset}: {error!r}")
                continue
            comparison = compare_sorter_to_ground_truth(gt_sorting, sorting, exhaustive_gt=True)
            performance = comparison.get_performance().loc[selected]
            rows.append(
                {
                    "set": set_name,
                    "dataset": dataset,
                    "sorter": sorter,
                    "sorter_seed": "" if sorter_seed is None else sorter_seed,
                    "gt_units": len(selected),
                    "found_units": len(sorting.unit_ids),
                    "accuracy": performance["accuracy"].astype(float).mean(),
                    "precision": performance["precision"].astype(float).mean(),
                    "recall": performance["recall"].astype(float).mean(),
                    "well_detected": int((performance["accuracy"].astype(float) >= 0.8).sum()),
                    "false_positive": len(comparison.get_false_positive_units()),
                    "redundant": len(comparison.get_redundant_units()),
                    "overmerged": len(comparison.get_overmerged_units()),
                    "wall_s": wall,
                    "xspeed": recording.get_total_duration() / wall,
                    "peak_rss_mib": peak_rss,
                    "children_peak_rss_mib": children_rss,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(folder, ignore_errors=True)

    table = pd.DataFrame(rows)
    table.to_csv(args.out / "results.csv", index=False)
    summary = table.groupby(["set", "sorter"]).agg(
        accuracy=("accuracy", "mean"), min_accuracy=("accuracy", "min"), precision=("precision", "mean"),
        recall=("recall", "mean"), wall_s=("wall_s", "mean"), xspeed=("xspeed", "mean"), runs=("accuracy", "size"),
    )
    header = report_header()
    markdown = header + "\n" + table.round(3).to_markdown(index=False) + "\n\n" + summary.round(3).to_markdown() + "\n"
    (args.out / "results.md").write_text(markdown)
    for set_name in table["set"].unique():
        plot_accuracy_vs_wall(summary, set_name, args.out / f"accuracy_vs_wall_{set_name}.png")
    print(markdown)


if __name__ == "__main__":
    main()
