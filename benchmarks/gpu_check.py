"""The CUDA path end to end: elvisort on 32, 128 and 384 channels, on the GPU (mixed precision on and off) and on the
CPU, on the same recordings; accuracy, stage times and peak GPU memory in one table.

Recordings are generated (``generate_ground_truth_recording``, noise level 5, seed 0; nothing is downloaded) and saved
once as binary folders. Each case is one ``run_sorter`` call in this process; ``torch.cuda.max_memory_allocated``
is reset before each. Accuracy is ``compare_sorter_to_ground_truth`` averaged over ground-truth units with SNR >= 5
(the SNR of the benchmark studies, ``benchmarks.study.ground_truth_analyzer``).
Cases that would start after ``--budget-s`` seconds are skipped (and listed), so the whole check stays inside it.

Examples
--------
bash benchmarks/gpu_check.sh                      # the default check, at most 8 minutes
python benchmarks/gpu_check.py --devices cpu --channels 32 --duration 10 --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

# (device, mixed_precision) of each case
CASES = {"cuda": ("cuda", True), "cuda-fp32": ("cuda", False), "cpu": ("cpu", False)}
UNITS = {32: 15, 128: 60, 384: 100}
STAGE_LINE = re.compile(r"^\S+ (\S[\w -]*?)\s+(\d+\.\d) s  ")


def stage_times(log_file: Path) -> dict:
    """Seconds per stage from a run's ``elvisort.log`` (its one line per stage)."""
    times = {}
    for line in Path(log_file).read_text().splitlines():
        match = STAGE_LINE.match(line)
        if match:
            times[match.group(1).strip()] = float(match.group(2))
    return times


def recording_for(num_channels: int, duration: float, folder: Path):
    """The saved recording of ``num_channels`` (the 384-channel one on the Neuropixels-like probe of the benchmarks)
    and its ground truth; written on the first call."""
    from spikeinterface.core import generate_ground_truth_recording, load

    from spikeinterface_elvisort.benchmarks.datasets import neuropixels_probe

    folder = folder / f"ch{num_channels}_{int(duration)}s"
    if not (folder / "gt").exists():
        probe = dict(probe=neuropixels_probe(num_channels)) if num_channels == 384 else dict(num_channels=num_channels)
        recording, sorting = generate_ground_truth_recording(
            durations=[duration], sampling_frequency=30000.0, num_units=UNITS.get(num_channels, num_channels // 3),
            seed=0, noise_kwargs=dict(noise_levels=5.0, strategy="on_the_fly"), **probe,
        )
        recording.save(folder=folder / "recording", n_jobs=-1, progress_bar=False, verbose=False)
        sorting.save(folder=folder / "gt", format="numpy_folder")
    return load(folder / "recording"), load(folder / "gt")


def accuracy(gt_sorting, sorting, snr, min_snr=5.0) -> tuple[float, int, int]:
    """(mean accuracy over ground-truth units with ``snr`` >= min_snr, their number, well detected among them)."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    performance = compare_sorter_to_ground_truth(gt_sorting, sorting, exhaustive_gt=True).get_performance()
    scores = performance.loc[snr.index[snr.values >= min_snr], "accuracy"].astype(float)
    return float(scores.mean()), int(scores.size), int((scores >= 0.8).sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", nargs="+", type=int, default=[32, 128, 384])
    parser.add_argument("--devices", nargs="+", default=list(CASES), choices=list(CASES),
                        help="cases: cuda (mixed precision on), cuda-fp32 (off), cpu")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each recording")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no case starts after this many seconds")
    parser.add_argument("--params", type=json.loads, default={}, help="JSON dict of extra elvisort parameters")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    args = parser.parse_args(argv)

    import spikeinterface.sorters as ss
    import torch

    from spikeinterface_elvisort.benchmarks.study import ground_truth_analyzer

    start = time.perf_counter()
    if any(CASES[case][0] == "cuda" for case in args.devices) and not torch.cuda.is_available():
        print("# torch sees no CUDA device: the cuda cases are skipped", flush=True)
        args.devices = [case for case in args.devices if CASES[case][0] != "cuda"]
    rows, skipped = [], []
    for num_channels in args.channels:
        recording, gt_sorting = recording_for(num_channels, args.duration, args.out / "recordings")
        # the benchmarks' SNR of each ground-truth unit (SpikeInterface's convention), once per recording
        snr = ground_truth_analyzer(recording, gt_sorting, args.out / "analyzers" / f"ch{num_channels}").get_extension(
            "quality_metrics").get_data()["snr"]
        for case in args.devices:
            if time.perf_counter() - start > args.budget_s:
                skipped.append(f"{num_channels} channels, {case}")
                continue
            device, mixed = CASES[case]
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            folder = args.out / "runs" / f"ch{num_channels}_{case}"
            begin = time.perf_counter()
            sorting = ss.run_sorter("elvisort", recording, folder=folder, remove_existing_folder=True, verbose=False,
                                    **(args.params | {"device": device, "mixed_precision": mixed}))
            wall = time.perf_counter() - begin
            mean, num_gt, well = accuracy(gt_sorting, sorting, snr)
            row = {"channels": num_channels, "case": case, "accuracy": round(mean, 4), "gt_units": num_gt,
                   "well_detected": well, "units": int(sorting.get_num_units()), "wall_s": round(wall, 1),
                   "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None}
            row |= {f"{stage}_s": seconds for stage, seconds in stage_times(folder / "sorter_output" / "elvisort.log").items()}
            rows.append(row)
            print(json.dumps(row), flush=True)

    import pandas as pd

    table = pd.DataFrame(rows)
    header = (f"date {time.strftime('%Y-%m-%d %H:%M')}; {platform.node()}; "
              f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device'}; torch "
              f"{torch.__version__}; {len(rows)} cases in {time.perf_counter() - start:.0f} s")
    report = header + "\n\n" + (table.to_markdown(index=False) if rows else "(no case ran)") + "\n"
    if skipped:
        report += "\nskipped (past --budget-s): " + "; ".join(skipped) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "gpu_check.csv", index=False)
    (args.out / "gpu_check.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
