"""Instant sorting: the paper's transfer experiment, inference-only speed, and streaming latency.

* transfer: ``generate_transfer_pair`` gives recordings A and B of the same units on the same probe (B: new spike
  trains and noise). ``run_sorter("elvisort", A, training_sorting=<A's ground truth>)`` trains (the paper's
  supervised "ELVISort (S)"), then ``run_sorter("elvisort", B, pretrained_model=<A's run>)`` sorts B with inference
  only, with template matching on the saved templates (the default) and without (``matching_method="none"``); a
  full ``run_sorter("elvisort", B)`` is the reference. Scores on B: SpikeInterface's accuracy (compare_sorter_to_ground_truth, exhaustive_gt, 0.4 ms, mean over
  units with SNR >= 5) and the paper's classification scores on the detected events (micro-F1, accuracy).
* speed: wall time of the inference-only ``run_sorter`` call on B (filtering, detection, classification and writing
  the result, everything) and of ``ElvisortModel.sort`` (with matching: SpikeInterface's pipeline and the stream's
  block grid, ``pipeline="blocks"``), with its accuracy; xRT = recording duration / wall time. 32 and 128 channels.
* displaced: B's units moved along the probe (0, 10, 20, 40 um): accuracy of the forward pass, of matching with A's
  templates where they were, and of matching after the estimated displacement (``displacement="auto"``).
* streaming: ``OnlineSorter`` (with matching and without) fed with B in blocks of 10, 50 and 200 ms: time per call
  (median, 99th percentile, max), throughput (xRT) and the worst delay between a spike and the call that reported
  it.

Examples
--------
python benchmarks/bench_instant.py --out benchmarks/results
python benchmarks/bench_instant.py --parts speed --channels 32 --duration 60
python benchmarks/bench_instant.py --parts displaced --duration 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spikeinterface_elvisort.benchmarks.runner import mean_accuracy, unit_snr, versions  # noqa: E402


def make_pair(folder, num_channels, duration, seed_a, seed_b):
    from spikeinterface_elvisort.benchmarks import generate_transfer_pair

    num_units = 15 if num_channels <= 32 else 40
    recording_a, gt_a, recording_b, gt_b = generate_transfer_pair(
        num_channels=num_channels, num_units=num_units, durations=[duration], seed_a=seed_a, seed_b=seed_b
    )
    name = f"ch{num_channels}_{int(duration)}s_seeds{seed_a}{seed_b}"
    if (folder / f"{name}_gt_a").exists():  # written by an earlier part of this run
        from spikeinterface.core import load

        recording_a, recording_b = load(folder / f"{name}_a"), load(folder / f"{name}_b")
    else:
        recording_a = recording_a.save(folder=folder / f"{name}_a", overwrite=True, n_jobs=1)
        recording_b = recording_b.save(folder=folder / f"{name}_b", overwrite=True, n_jobs=1)
        gt_a.save(folder=folder / f"{name}_gt_a", overwrite=True)
    return name, (folder / f"{name}_a", recording_a), gt_a, recording_b, gt_b, folder / f"{name}_gt_a"


def train_supervised(folder, recording_a_path, recording_a, gt_a_path):
    import spikeinterface.sorters as ss

    start = time.perf_counter()
    ss.run_sorter("elvisort", recording_a, folder=folder, remove_existing_folder=True,
                  training_sorting=str(gt_a_path))
    return time.perf_counter() - start


def sort_inference_only(folder, model_folder, recording, matching="circus-omp"):
    import spikeinterface.sorters as ss

    start = time.perf_counter()
    sorting = ss.run_sorter("elvisort", recording, folder=folder, remove_existing_folder=True,
                            pretrained_model=str(model_folder), matching_method=matching)
    return sorting, time.perf_counter() - start


def sort_fully(folder, recording):
    import spikeinterface.sorters as ss

    start = time.perf_counter()
    sorting = ss.run_sorter("elvisort", recording, folder=folder, remove_existing_folder=True)
    return sorting, time.perf_counter() - start


def part_transfer(args, work):
    from spikeinterface_elvisort import load_model
    from spikeinterface_elvisort.benchmarks import classification_scores

    rows = []
    for seed_a, seed_b in args.pairs:
        name, (path_a, recording_a), gt_a, recording_b, gt_b, gt_a_path = make_pair(
            work, 32, args.duration, seed_a, seed_b)
        train_s = train_supervised(work / f"{name}_train", path_a, recording_a, gt_a_path)
        snr = unit_snr(recording_b, gt_b)
        units = snr.index[snr.values >= args.min_snr]
        classified = classification_scores(load_model(work / f"{name}_train"), recording_b, gt_b)
        unit_accuracy = np.nanmean([classified["per_unit_accuracy"][u] for u in units])
        # the instant sort with and without matching, and a full run on B (trained on B itself) for reference
        runs = {matching: sort_inference_only(work / f"{name}_sort_{matching}", work / f"{name}_train", recording_b,
                                              matching) for matching in args.matching}
        runs["full run on B"] = sort_fully(work / f"{name}_full", recording_b)
        for mode, (sorting, sort_s) in runs.items():
            scores = mean_accuracy(gt_b, sorting, units)
            row = dict(pair=name, mode=mode, units=len(units), accuracy=scores["accuracy"],
                       precision=scores["precision"], recall=scores["recall"], micro_f1=classified["micro_f1"],
                       classification_accuracy=classified["accuracy"], classification_unit_accuracy=unit_accuracy,
                       train_s=train_s, sort_s=sort_s, xRT=args.duration / sort_s)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def part_speed(args, work):
    from spikeinterface_elvisort import load_model

    rows = []
    for num_channels in args.channels:
        name, (path_a, recording_a), gt_a, recording_b, gt_b, gt_a_path = make_pair(
            work, num_channels, args.duration, *args.pairs[0])
        if not (work / f"{name}_train" / "sorter_output" / "model.pt").exists():
            train_supervised(work / f"{name}_train", path_a, recording_a, gt_a_path)
        model = load_model(work / f"{name}_train", device=args.device)
        snr = unit_snr(recording_b, gt_b)
        units = snr.index[snr.values >= args.min_snr]
        for matching in args.matching:
            _, run_s = sort_inference_only(work / f"{name}_sort", work / f"{name}_train", recording_b, matching)
            for pipeline in ("spikeinterface", "blocks") if matching != "none" else ("blocks",):
                # compile numba, warm torch up
                model.sort(recording_b.frame_slice(0, 30000), matching=matching, pipeline=pipeline)
                start = time.perf_counter()
                sorting = model.sort(recording_b, matching=matching, pipeline=pipeline)
                sort_s = time.perf_counter() - start
                row = dict(channels=num_channels, matching=matching, pipeline=pipeline, duration_s=args.duration,
                           device=str(model.device), spikes=sorting.to_spike_vector().size,
                           accuracy=mean_accuracy(gt_b, sorting, units)["accuracy"],
                           sort_s=sort_s, sort_xRT=args.duration / sort_s)
                if pipeline == "blocks":  # what run_sorter(pretrained_model=) runs (model.sort's default)
                    row.update(run_sorter_s=run_s, run_sorter_xRT=args.duration / run_s)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def part_displaced(args, work):
    """B's units moved along the probe by 0-40 um: the forward pass, matching without and with the correction."""
    from spikeinterface.core import load

    from spikeinterface_elvisort import load_model
    from spikeinterface_elvisort.benchmarks import generate_transfer_pair

    seed_a, seed_b = args.pairs[0]
    rows = []
    for displacement in args.displacements:
        recording_a, gt_a, recording_b, gt_b = generate_transfer_pair(
            num_channels=32, num_units=10, durations=[args.duration], seed_a=seed_a, seed_b=seed_b,
            displacement_um=displacement)
        name = f"displaced_{int(args.duration)}s_seeds{seed_a}{seed_b}"
        if not (work / f"{name}_train" / "sorter_output" / "model.pt").exists():
            recording_a = recording_a.save(folder=work / f"{name}_a", overwrite=True, n_jobs=1)
            gt_a.save(folder=work / f"{name}_gt_a", overwrite=True)
            train_supervised(work / f"{name}_train", work / f"{name}_a", recording_a, work / f"{name}_gt_a")
        model = load_model(work / f"{name}_train", device=args.device)
        recording_b = recording_b.save(folder=work / f"{name}_b{displacement:g}", overwrite=True, n_jobs=1)
        recording_b = load(work / f"{name}_b{displacement:g}")
        snr = unit_snr(recording_b, gt_b)
        units = snr.index[snr.values >= args.min_snr]
        for mode, kwargs in (("forward pass", dict(matching="none")), ("matching", dict(displacement=None)),
                             ("matching, corrected", {})):
            start = time.perf_counter()
            sorting = model.sort(recording_b, **kwargs)
            row = dict(displacement_um=displacement, mode=mode, units=len(units),
                       accuracy=mean_accuracy(gt_b, sorting, units)["accuracy"],
                       estimated_um=sorting.get_annotation("displacement_um"), sort_s=time.perf_counter() - start)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def part_streaming(args, work):
    from spikeinterface_elvisort import OnlineSorter, load_model

    name, (path_a, recording_a), gt_a, recording_b, gt_b, gt_a_path = make_pair(work, 32, args.duration,
                                                                                *args.pairs[0])
    if not (work / f"{name}_train" / "sorter_output" / "model.pt").exists():
        train_supervised(work / f"{name}_train", path_a, recording_a, gt_a_path)
    model = load_model(work / f"{name}_train", device=args.device)
    fs = recording_b.sampling_frequency
    traces = recording_b.get_traces(end_frame=int(min(args.duration, 60) * fs))
    rows = []
    for matching, input_ms in ((matching, input_ms) for matching in args.matching for input_ms in (10, 50, 200)):
        sorter = OnlineSorter(model, matching=matching)
        block = int(input_ms * fs / 1000)
        sorter.process(traces[:block])  # warm-up call (numba compilation)
        sorter = OnlineSorter(model, matching=matching)
        times, worst = [], 0
        for start in range(0, traces.shape[0], block):
            tic = time.perf_counter()
            spikes = sorter.process(traces[start : start + block])
            times.append(time.perf_counter() - tic)
            if spikes.size:
                worst = max(worst, int(min(start + block, traces.shape[0]) - spikes["sample_index"].min()))
        times = np.array(times) * 1000
        row = dict(matching=matching, input_block_ms=input_ms,
                   internal_block_ms=1000 * sorter.engine.block_samples / fs,
                   call_median_ms=float(np.median(times)), call_p99_ms=float(np.percentile(times, 99)),
                   call_max_ms=float(times.max()), xRT=traces.shape[0] / fs / (times.sum() / 1000),
                   worst_delay_ms=1000 * worst / fs, latency_bound_ms=sorter.latency_ms)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    import pandas as pd
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["transfer", "speed", "streaming"],
                        choices=["transfer", "speed", "streaming", "displaced"])
    parser.add_argument("--displacements", nargs="+", type=float, default=[0.0, 10.0, 20.0, 40.0],
                        help="um; the displaced part (32 channels, 10 units, --duration, the first pair's seeds)")
    parser.add_argument("--pairs", nargs="+", default=["0:1", "2:3"],
                        help="seed_a:seed_b of the transfer pairs; speed and streaming use the first")
    parser.add_argument("--channels", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--matching", nargs="+", default=["circus-omp", "none"],
                        help="matching methods of the instant sort (none: the classifier's forward pass only)")
    parser.add_argument("--min-snr", type=float, default=5.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=Path("/tmp/elvisort_bench_instant"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    args.pairs = [tuple(int(x) for x in pair.split(":")) for pair in args.pairs]
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    print("#", json.dumps(versions()), f"torch threads {torch.get_num_threads()}",
          f"cuda {torch.cuda.is_available()}", time.strftime("%Y-%m-%d"))
    parts = {"transfer": part_transfer, "speed": part_speed, "streaming": part_streaming,
             "displaced": part_displaced}
    for part in args.parts:
        table = pd.DataFrame(parts[part](args, args.work))
        table.to_csv(args.out / f"instant_{part}.csv", index=False)
        print(f"\n## {part}\n")
        print(table.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
