"""A busy machine: each sorter idle and beside 1 or 2 CPU-bound processes, and the slowdown it suffers.

Every run is one ``run_sorter`` call in a fresh Python process. The competing processes (``python -c "while True:
pass"``, as a notebook's loop or another job would) start before the sort and stop after it. Reported for each
sorter, recording and load: the wall time of the call, its ratio to the idle run (with one competing process on two
cores, 2.0 is losing half of the machine), the mean accuracy over ground-truth units with SNR >= 5 (0.4 ms,
exhaustive), whether the sorting equals the idle one spike for spike, and for elvisort and ssae the stage times of
their log.

Recordings (``--recordings``), each written once to a binary folder under ``--out``:

* ``quickstart``: the recording of ``examples/quickstart.py`` (30 s, 8 channels, 5 units, seed 0);
* ``32ch``: 120 s, 32 channels, 15 units, noise level 5, seed 0 (the 32-channel recording of the static study set);
* ``neuropixels``: the 384-channel, 60 s, 100-unit recording of the Neuropixels benchmark (seed 2026).

Run nothing else meanwhile: this benchmark is about the load it makes itself.

Example
-------
python benchmarks/bench_contention.py --sorters elvisort ssae tridesclous2 spykingcircus2 lupin --loads 0 1 2
python benchmarks/bench_contention.py --recordings 32ch neuropixels --sorters elvisort tridesclous2 --loads 0 1
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from spikeinterface_elvisort.benchmarks.runner import report_header, run_in_fresh_process

STAGE_LINE = re.compile(r"^\S+ (?P<stage>[a-z][a-z -]*?)\s+(?P<seconds>[0-9.]+) s  ", re.MULTILINE)


def make_recordings(names, folder: Path) -> dict:
    """{name: (recording, ground truth)}, written once under ``folder`` and read back from there."""
    from spikeinterface.core import generate_ground_truth_recording

    from spikeinterface_elvisort.benchmarks.datasets import (
        SAMPLING_FREQUENCY, neuropixels_set, save_dataset, static_set,
    )

    recordings = {}
    for name in names:
        if name == "neuropixels":
            (recordings[name],) = neuropixels_set(folder / "neuropixels").datasets.values()
        elif name == "32ch":
            (recordings[name],) = static_set(folder, seeds=(0,), channels=(32,)).datasets.values()
        else:  # the recording of examples/quickstart.py
            target = folder / name
            generated = (None, None) if (target / "gt_sorting").exists() else generate_ground_truth_recording(
                durations=[30.0], num_channels=8, num_units=5, sampling_frequency=SAMPLING_FREQUENCY, seed=0)
            recordings[name] = save_dataset(*generated, target)
    return recordings


def stage_seconds(folder: Path, sorter: str) -> dict:
    """{stage: seconds} from the sorter's log (elvisort and ssae), else {}."""
    log = folder / "sorter_output" / f"{sorter}.log"
    if not log.exists():
        return {}
    return {match["stage"]: float(match["seconds"]) for match in STAGE_LINE.finditer(log.read_text())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", nargs="+", default=["quickstart", "32ch"],
                        choices=["quickstart", "32ch", "neuropixels"])
    parser.add_argument("--sorters", nargs="+", default=["elvisort", "ssae", "tridesclous2", "spykingcircus2", "lupin"])
    parser.add_argument("--loads", nargs="+", type=int, default=[0, 1, 2],
                        help="numbers of competing CPU-bound processes (0: idle)")
    parser.add_argument("--elvisort-params", type=json.loads, default={}, help="JSON dict of elvisort parameters")
    parser.add_argument("--min-snr", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/contention"))
    args = parser.parse_args(argv)

    import pandas as pd
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    from spikeinterface_elvisort.benchmarks.study import ground_truth_analyzer

    args.out.mkdir(parents=True, exist_ok=True)
    loads = sorted(set(args.loads) | {0})  # the ratios need the idle run
    rows = []
    for name, (recording, gt_sorting) in make_recordings(args.recordings, args.out / "recordings").items():
        snr = ground_truth_analyzer(recording, gt_sorting, args.out / "recordings" / f"{name}_analyzer") \
            .get_extension("quality_metrics").get_data()["snr"]
        selected = snr.index[snr.values >= args.min_snr]
        for sorter in args.sorters:
            idle_wall, idle_spikes = None, None
            for load in loads:
                folder = args.out / "work" / f"{name}_{sorter}_load{load}"
                params = args.elvisort_params if sorter == "elvisort" else {}
                try:
                    run = run_in_fresh_process(sorter, recording, folder, params, competing_processes=load)
                except Exception as error:  # a peer failing must not lose the other rows
                    print(f"# {sorter} failed on {name} with load {load}: {error!r}")
                    continue
                sorting, wall = run.sorting, run.wall_s
                spikes = sorting.to_spike_vector()
                if load == 0:
                    idle_wall, idle_spikes = wall, spikes
                performance = compare_sorter_to_ground_truth(gt_sorting, sorting, exhaustive_gt=True) \
                    .get_performance().loc[selected]
                row = {"recording": name, "sorter": sorter, "load": load, "wall_s": wall,
                       "ratio": wall / idle_wall if idle_wall else float("nan"), "peak_rss_mib": run.peak_rss_mib,
                       "accuracy": performance["accuracy"].astype(float).mean(),
                       "same_as_idle": bool(idle_spikes is not None and idle_spikes.shape == spikes.shape
                                            and (idle_spikes == spikes).all())}
                row.update({f"{stage}_s": seconds for stage, seconds in stage_seconds(folder, sorter).items()})
                rows.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(folder, ignore_errors=True)

    table = pd.DataFrame(rows)
    table.to_csv(args.out / "results.csv", index=False)
    write_report(table, args.out / "results.md")


def write_report(table, file_path: Path) -> None:
    """The results as markdown: one row per run, then the stage times of the runs that have them."""
    main_columns = ["recording", "sorter", "load", "wall_s", "ratio", "accuracy", "same_as_idle"]
    header = report_header()
    stages = [column for column in table.columns if column.endswith("_s") and column != "wall_s"]
    markdown = (header + "\n" + table[main_columns].round(3).to_markdown(index=False) + "\n\nstages (s):\n\n"
                + table[["recording", "sorter", "load"] + stages].dropna(how="all", subset=stages).round(1)
                .to_markdown(index=False) + "\n")
    file_path.write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
