"""The ssae seed's Table 1 on generated data: gt-GMM against auto-GMM (and with/without the Atom loss).

Seed 001 reports accuracy, precision and recall for units with SNR > 4, averaged over Pedreira et al.'s simulated
sessions of 2 to 20 units, for "gt-GMM" (the number of clusters set to the ground truth) and "auto-GMM" (chosen by
BIC). Here the sessions are SpikeInterface's generated recordings with 2 to 20 units; every configuration runs the
whole sorter (``run_sorter("ssae", ...)``, default parameters otherwise), and is scored with
``compare_sorter_to_ground_truth(exhaustive_gt=True)`` (0.4 ms window) over the ground-truth units with SNR > 4.

Example
-------
python benchmarks/bench_ssae_table1.py --units 2 5 10 20 --atom-epochs 0 5 --out /tmp/bench/table1
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", nargs="+", type=int, default=[2, 5, 10, 15, 20])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-snr", type=float, default=4.0)
    parser.add_argument("--atom-epochs", nargs="+", type=int, default=[0])
    parser.add_argument("--params", type=json.loads, default={}, help="JSON dict of further ssae parameters")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/table1"))
    args = parser.parse_args(argv)

    import pandas as pd
    import spikeinterface.sorters as ss
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import generate_ground_truth_recording

    from spikeinterface_elvisort.benchmarks.runner import unit_snr, versions

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for num_units in args.units:
        recording, gt_sorting = generate_ground_truth_recording(
            durations=[args.duration], sampling_frequency=30000.0, num_channels=args.channels, num_units=num_units,
            noise_kwargs=dict(noise_levels=5.0, strategy="on_the_fly"), seed=args.seed + num_units,
        )
        recording = recording.save(folder=args.out / "recordings" / f"units{num_units}", overwrite=True, n_jobs=1,
                                   progress_bar=False)
        snr = unit_snr(recording, gt_sorting)
        selected = snr.index[snr.values > args.min_snr]
        for atom_epochs in args.atom_epochs:
            for mode in ("gt-GMM", "auto-GMM"):
                params = dict(args.params, train_atom_epochs=atom_epochs,
                              clustering_num_units=num_units if mode == "gt-GMM" else None)
                folder = args.out / "work" / f"units{num_units}_{mode}_atom{atom_epochs}"
                start = time.perf_counter()
                try:
                    sorting = ss.run_sorter("ssae", recording, folder=folder, remove_existing_folder=True,
                                            verbose=False, **params)
                except Exception as error:  # one failed configuration must not lose the others
                    print(f"# ssae failed on {num_units} units, {mode}, atom {atom_epochs}: {error!r}"[:2000])
                    continue
                wall = time.perf_counter() - start
                performance = compare_sorter_to_ground_truth(gt_sorting, sorting, exhaustive_gt=True).get_performance()
                performance = performance.loc[selected]
                rows.append({
                    "units": num_units, "scored_units": len(selected), "mode": mode, "atom_epochs": atom_epochs,
                    "found_units": len(sorting.unit_ids),
                    "accuracy": performance["accuracy"].astype(float).mean(),
                    "precision": performance["precision"].astype(float).mean(),
                    "recall": performance["recall"].astype(float).mean(),
                    "wall_s": wall,
                })
                print(json.dumps(rows[-1]), flush=True)
                shutil.rmtree(folder, ignore_errors=True)

    table = pd.DataFrame(rows)
    table.to_csv(args.out / "table1.csv", index=False)
    summary = table.groupby(["atom_epochs", "mode"])[["accuracy", "precision", "recall", "found_units", "wall_s"]]
    header = (
        f"date: {time.strftime('%Y-%m-%d')}; machine: {platform.node()} ({platform.machine()}, "
        f"{__import__('os').cpu_count()} cores); versions: {versions()}\ncommand: python {' '.join(sys.argv)}\n"
    )
    markdown = header + "\n" + table.round(3).to_markdown(index=False) + "\n\n" + summary.mean().round(3).to_markdown()
    (args.out / "table1.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
