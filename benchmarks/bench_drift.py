"""Drift benchmark: elvisort with and without motion correction beside Tridesclous2 on a drifting recording.

The recording is SpikeInterface's ``generate_drifting_recording`` (128 channels in the layout of a Neuropixels 1.0
probe, a rigid zigzag drift starting at t = 0). Every case runs through ``run_sorter`` one after the other in this
process and is scored with ``compare_sorter_to_ground_truth(exhaustive_gt=True)`` (match window 0.4 ms), averaged
over ground-truth units with SNR >= --min-snr (SNR measured on the static twin of the recording: same units and
spikes, no drift).

Examples
--------
python benchmarks/bench_drift.py --duration 60 --num-units 30
python benchmarks/bench_drift.py --cases elvisort elvisort_mc --elvisort-params '{"train_epochs": 5}'
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

from spikeinterface_elvisort.benchmarks.runner import run_in_fresh_process, unit_snr, versions  # noqa: E402

CASES = {
    "elvisort": ("elvisort", {}),
    "elvisort_mc": ("elvisort", {"motion_correction": "dredge_fast"}),
    "tridesclous2": ("tridesclous2", {"apply_motion_correction": False}),
    "tridesclous2_mc": ("tridesclous2", {"apply_motion_correction": True, "motion_correction_preset": "dredge_fast"}),
}


def drifting(duration: float, num_units: int, period_s: float, amplitude_um: float, seed: int):
    """(static recording, drifting recording, ground truth) on 128 channels laid out as Neuropixels 1.0 (4 staggered
    columns 16 um apart, 20 um vertical pitch); generated here because probeinterface's library needs a download."""
    from spikeinterface.generation import generate_drifting_recording

    return generate_drifting_recording(
        num_units=num_units,
        duration=duration,
        generate_probe_kwargs=dict(num_columns=4, num_contact_per_column=32, xpitch=16.0, ypitch=40.0,
                                   y_shift_per_column=[20.0, 0.0, 20.0, 0.0], contact_shapes="square",
                                   contact_shape_params={"width": 12}),
        generate_displacement_vector_kwargs=dict(
            displacement_sampling_frequency=5.0,
            drift_start_um=[0, amplitude_um / 2],
            drift_stop_um=[0, -amplitude_um / 2],
            drift_step_um=1,
            motion_list=[dict(drift_mode="zigzag", non_rigid_gradient=None, t_start_drift=0.0, t_end_drift=None,
                              period_s=period_s)],
        ),
        seed=seed,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--num-units", type=int, default=30)
    parser.add_argument("--period-s", type=float, default=30.0, help="zigzag period")
    parser.add_argument("--amplitude-um", type=float, default=40.0, help="peak-to-peak drift")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-snr", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results_drift"))
    parser.add_argument("--elvisort-params", type=json.loads, default={}, help="JSON dict added to elvisort cases")
    parser.add_argument("--static", action="store_true", help="sort the static twin instead (the no-drift bound)")
    args = parser.parse_args(argv)

    import pandas as pd
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import load

    args.out.mkdir(parents=True, exist_ok=True)
    static, recording, gt_sorting = drifting(args.duration, args.num_units, args.period_s, args.amplitude_um,
                                             args.seed)
    if args.static:
        recording = static
    name = f"{'static' if args.static else 'drift'}_{int(args.duration)}s_{args.num_units}u_seed{args.seed}"
    folder = args.out / "recordings" / name
    if (folder / "binary.json").exists():
        recording = load(folder)
    else:
        recording = recording.save(folder=folder, overwrite=True, n_jobs=1)
    snr = unit_snr(static, gt_sorting)
    selected = snr.index[snr.values >= args.min_snr]

    rows = []
    for case in args.cases:
        sorter, params = CASES[case]
        params = params | (args.elvisort_params if sorter == "elvisort" else {})
        work = args.out / "work" / f"{name}_{case}"
        try:
            run = run_in_fresh_process(sorter, recording, work, params)
            sorting, wall = run.sorting, run.wall_s
        except Exception as error:  # a failing case must not lose the other rows
            print(f"# {case} failed: {error!r}", flush=True)
            continue
        performance = compare_sorter_to_ground_truth(gt_sorting, sorting, exhaustive_gt=True).get_performance()
        performance = performance.loc[selected]
        rows.append({
            "dataset": name, "case": case, "gt_units": len(selected), "found_units": len(sorting.unit_ids),
            "accuracy": performance["accuracy"].astype(float).mean(),
            "precision": performance["precision"].astype(float).mean(),
            "recall": performance["recall"].astype(float).mean(),
            "wall_s": wall,
        })
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(work, ignore_errors=True)

    table = pd.DataFrame(rows)
    table.to_csv(args.out / "results.csv", index=False)
    header = (f"date: {time.strftime('%Y-%m-%d')}; machine: {platform.node()} ({platform.machine()}, "
              f"{__import__('os').cpu_count()} cores); versions: {versions()}\ncommand: python {' '.join(sys.argv)}\n")
    markdown = header + "\n" + table.round(3).to_markdown(index=False) + "\n"
    (args.out / "results.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
