"""elvisort-benchmark: run study sets through SpikeInterface's SorterStudy and write tables and plots.

Each study set becomes one ``SorterStudy`` in ``OUT/<set>/study`` (its recordings in ``OUT/<set>/recordings``); a
second call with the same ``--out`` resumes: finished cases are kept, missing ones run. Outputs in ``OUT``:
``results.csv`` (one row per case and dataset), ``summary.csv`` and ``results.md`` (per study set and case, both
scoring conventions), ``units.csv`` (per ground-truth unit), ``<set>_accuracy_vs_snr.png``,
``<set>_f1_vs_xspeed.png`` and ``run_info.json`` (versions, device, machine, command).

Examples
--------
elvisort-benchmark --sets static --seeds 0 1 --channels 32 128
elvisort-benchmark --sets lowsnr drift --cases elvisort kilosort4 --out /tmp/bench
elvisort-benchmark --sets neuropixels --seeds 2026 --np-drift-modes static zigzag --cases elvisort lupin tridesclous2
elvisort-benchmark --sets static --cases elvisort elvisort-fast=elvisort --params 'elvisort-fast={"train_epochs": 5}'
elvisort-benchmark --sets spikeforest --spikeforest-folders ~/spikeforest/hybrid_janelia
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from .datasets import (MEAREC_FOLDER, drift_set, lowsnr_set, mearec_set, neuropixels_set, noise10_set,
                       spikeforest_set, static_set, transfer_set)
from .study import CASES, SPIKEFOREST, ground_truth_analyzer, open_study, run_study, select_cases
from .tables import markdown_report, plot_accuracy_vs_snr, plot_f1_vs_xspeed, study_tables, summary_table

STUDY_SETS = ("static", "noise10", "lowsnr", "drift", "neuropixels", "mearec", "spikeforest", "transfer")
TRANSFER_CASE = "elvisort-transfer"


def parse_cases(names, params) -> dict:
    """``--cases`` (``NAME`` from :data:`CASES`, or ``NAME=SORTER`` for a new case) and ``--params NAME=JSON``
    (merged into that case's sorter params) -> ``{name: (sorter name, params)}``."""
    cases = {}
    for item in names:
        name, _, sorter_name = item.partition("=")
        if sorter_name:
            cases[name] = (sorter_name, {})
        elif name in CASES:
            cases[name] = (CASES[name][0], dict(CASES[name][1]))
        else:
            raise SystemExit(f"unknown case {name!r}: choose among {list(CASES)} or write NAME=SORTER")
    for item in params:
        name, _, text = item.partition("=")
        if name not in cases:
            raise SystemExit(f"--params {name}=...: {name!r} is not among the cases {list(cases)}")
        try:
            cases[name][1].update(json.loads(text))
        except (json.JSONDecodeError, TypeError) as error:
            raise SystemExit(f"--params {name}=...: not a JSON object ({error})")
    return cases


def build_study_set(name: str, folder: Path, args, cases: dict):
    if name == "static":
        return static_set(folder, args.seeds, args.channels, args.duration)
    if name == "noise10":
        return noise10_set(folder, args.seeds, args.channels, args.duration)
    if name == "lowsnr":
        return lowsnr_set(folder, args.seeds, args.channels, args.duration)
    if name == "drift":
        return drift_set(folder, args.seeds, args.duration, args.drift_modes, args.drift_units)
    if name == "neuropixels":
        return neuropixels_set(folder, args.seeds, args.np_durations, args.np_units, args.np_drift_modes,
                               args.np_contacts)
    if name == "mearec":
        return mearec_set(args.mearec_folder)
    if name == "spikeforest":
        return spikeforest_set(args.spikeforest_folders, exhaustive_gt=args.spikeforest_exhaustive_gt)
    if name == "transfer":
        train_params = cases.get("elvisort", CASES["elvisort"])[1]
        return transfer_set(folder, args.transfer_pairs, args.channels[0], args.duration, train_params,
                            case_name=TRANSFER_CASE)
    raise ValueError(f"unknown study set {name!r}: choose among {STUDY_SETS}")


def run_info(argv) -> dict:
    import spikeinterface

    from .. import __version__

    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "elvisort-benchmark " + " ".join(argv),
            "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "spikeinterface": spikeinterface.__version__, "spikeinterface_elvisort": __version__}
    for module in ("torch", "kilosort", "mountainsort5", "numpy", "sklearn"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # not installed, or no __version__
            pass
    try:
        import torch

        info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["device"] = "cpu"
    return info


def make_parser():
    parser = argparse.ArgumentParser(prog="elvisort-benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["static"], choices=STUDY_SETS, help="study sets to run")
    parser.add_argument("--cases", nargs="+", default=list(CASES),
                        help=f"cases: names among {list(CASES)}, or NAME=SORTER (default: all; the ones not "
                             "installed are skipped)")
    parser.add_argument("--params", nargs="+", default=[], metavar="NAME=JSON",
                        help="sorter params of a case, as a JSON object, e.g. 'elvisort={\"device\": \"cuda\"}'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds of the generated sets")
    parser.add_argument("--channels", nargs="+", type=int, default=[32, 128],
                        help="probe sizes of static and lowsnr (transfer uses the first)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of each generated recording")
    parser.add_argument("--drift-modes", nargs="+", default=["zigzag", "bump"], choices=["zigzag", "bump"])
    parser.add_argument("--drift-units", type=int, default=100, help="units of the drifting Neuropixels recordings")
    parser.add_argument("--np-durations", nargs="+", type=float, default=[60.0],
                        help="seconds of each recording of the neuropixels set (60 to 1800)")
    parser.add_argument("--np-units", type=int, default=100, help="units of each recording of the neuropixels set")
    parser.add_argument("--np-drift-modes", nargs="+", default=["static"], choices=["static", "zigzag", "bump"],
                        help="recordings of the neuropixels set: static, or drifting (zigzag, bump)")
    parser.add_argument("--np-contacts", type=int, default=384, help="contacts of the neuropixels set's probe")
    parser.add_argument("--mearec-folder", type=Path, default=MEAREC_FOLDER, help="folder of MEArec *.h5 files")
    parser.add_argument("--spikeforest-folders", nargs="+", type=Path, default=[],
                        help="folders in SpikeForest's MDA layout, or folders holding such folders")
    parser.add_argument("--spikeforest-exhaustive-gt", action="store_true",
                        help="the MDA ground truth labels every unit (count false-positive, redundant, over-merged)")
    parser.add_argument("--transfer-pairs", nargs="+", default=["0:1"], metavar="SEED_A:SEED_B")
    parser.add_argument("--keep-sorter-output", action="store_true",
                        help="keep each sorter's sorter_output/ (deleted by default: the study keeps the sorting)")
    parser.add_argument("--out", type=Path, default=Path("elvisort_benchmark"), help="output folder")
    return parser


def main(argv=None):
    import pandas as pd

    argv = sys.argv[1:] if argv is None else list(argv)
    args = make_parser().parse_args(argv)
    args.transfer_pairs = [tuple(int(seed) for seed in pair.split(":")) for pair in args.transfer_pairs]
    cases, skipped = select_cases(parse_cases(args.cases, args.params))
    for message in skipped.values():
        print(f"# {message}", flush=True)
    if not cases:
        raise SystemExit("no case to run")

    args.out.mkdir(parents=True, exist_ok=True)
    info = run_info(argv)
    (args.out / "run_info.json").write_text(json.dumps(info | {"cases": cases, "skipped": skipped}, indent=1,
                                                       default=str))
    all_units, all_runs = [], []
    for set_name in args.sets:
        set_folder = args.out / set_name
        study_set = build_study_set(set_name, set_folder / "recordings", args, cases)
        if not study_set.datasets:
            print(f"# {set_name}: no datasets, skipped", flush=True)
            continue
        study = open_study(set_folder, study_set, cases, args.keep_sorter_output)
        failures = run_study(study)
        done = [key for key in study.cases if key not in failures]
        study.compute_results(case_keys=done, exhaustive_gt=study_set.exhaustive_gt,
                              spikeforest_delta_time_ms=SPIKEFOREST["delta_time_ms"])
        snrs = {}
        for dataset in study.datasets:
            recording, gt_sorting = study.datasets[dataset]
            si_analyzer = study.get_sorting_analyzer(dataset_key=dataset)
            sf_analyzer = ground_truth_analyzer(recording, gt_sorting, set_folder / "analyzers_spikeforest" / dataset,
                                                spikeforest=True)
            snrs[dataset] = {prefix: analyzer.get_extension("quality_metrics").get_data()["snr"]
                             for prefix, analyzer in (("si", si_analyzer), ("sf", sf_analyzer))}
        units, runs = study_tables(study, set_name, snrs, study_set.notes, failures)
        all_units.append(units)
        all_runs.append(runs)

    if not all_runs:
        raise SystemExit("no study set had datasets")
    units, runs = pd.concat(all_units, ignore_index=True), pd.concat(all_runs, ignore_index=True)
    summary = summary_table(runs)
    units.to_csv(args.out / "units.csv", index=False)
    runs.to_csv(args.out / "results.csv", index=False)
    summary.to_csv(args.out / "summary.csv", index=False)
    header = (f"# elvisort-benchmark\n\n{info['date']}; {info['machine']}, {info['cpu_count']} CPUs, device "
              f"{info['device']}; spikeinterface {info['spikeinterface']}, spikeinterface-elvisort "
              f"{info['spikeinterface_elvisort']}, torch {info.get('torch', '-')}\n\n`{info['command']}`")
    report = markdown_report(summary, runs, header)
    (args.out / "results.md").write_text(report)
    for set_name in dict.fromkeys(runs["set"]):
        if not units.empty:
            plot_accuracy_vs_snr(units, set_name, args.out / f"{set_name}_accuracy_vs_snr.png")
        plot_f1_vs_xspeed(summary, set_name, args.out / f"{set_name}_f1_vs_xspeed.png")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
