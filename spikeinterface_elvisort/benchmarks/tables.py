"""Tables and plots of finished studies, in SpikeForest's and SpikeInterface's conventions.

Per ground-truth unit (``units``), per case and dataset (``runs``) and per study set and case (``summary``):

* ``sf_*``: SpikeForest's convention: spikes match within 1 ms; means over ground-truth units with SNR >= 8, the SNR
  computed on the recording band-passed 300-6000 Hz (see :func:`~.study.ground_truth_analyzer`);
* ``si_*``: SpikeInterface's defaults: 0.4 ms; SNR >= 5, SpikeInterface's ``snr`` on the recording as sorted.

Accuracy = TP / (TP + FN + FP), precision, recall and F1 = 2 TP / (2 TP + FN + FP) are per ground-truth unit (its
best-matching sorted unit, ``compare_sorter_to_ground_truth``), then averaged. ``*_well_detected`` counts the averaged
units with accuracy >= 0.8. ``*_false_positive``, ``*_redundant``, ``*_overmerged`` count sorted units as
SpikeInterface's comparison does (over all units; only with an exhaustive ground truth). ``wall_s`` is SorterStudy's
``run_time``, the whole ``run_sorter`` call; ``xspeed`` = recording duration / ``wall_s``.
"""

from __future__ import annotations

import numpy as np

from .study import SPIKEFOREST, SPIKEINTERFACE, is_done

CONVENTIONS = {"sf": SPIKEFOREST, "si": SPIKEINTERFACE}
SCORES = ("accuracy", "precision", "recall", "f1")
COUNTS = ("well_detected", "false_positive", "redundant", "overmerged")
RUN_COLUMNS = (
    ["set", "dataset", "case", "sorter", "status", "duration_s", "num_channels", "num_gt", "num_sorter"]
    + [f"{prefix}_{name}" for prefix in CONVENTIONS for name in ("units",) + SCORES + COUNTS]
    + ["wall_s", "xspeed", "peak_rss_mb", "added_rss_mb", "peak_gpu_mb", "train_s"]
)


def _performance(comparison):
    performance = comparison.get_performance(method="by_unit", output="pandas").astype(float)
    precision, recall = performance["precision"], performance["recall"]
    performance["f1"] = (2 * precision * recall / (precision + recall)).fillna(0.0)
    return performance


def _unit_counts(comparison, prefix):
    if not comparison.exhaustive_gt:
        return {f"{prefix}_{name}": np.nan for name in COUNTS[1:]}
    return {
        f"{prefix}_false_positive": comparison.count_false_positive_units(),
        f"{prefix}_redundant": comparison.count_redundant_units(),
        f"{prefix}_overmerged": comparison.count_overmerged_units(),
    }


def study_tables(study, set_name: str, snrs: dict, notes: dict | None = None, failures: dict | None = None):
    """The ``units`` and ``runs`` tables of one finished study.

    Parameters
    ----------
    study : ElvisortSorterStudy
        With ``compute_results()`` done for the cases that ran.
    snrs : dict
        Dataset name -> ``{"sf": pandas.Series, "si": pandas.Series}``, the SNR of each ground-truth unit.
    notes : dict | None
        Case key -> extra values of its row (``train_s`` of the transfer case).
    failures : dict | None
        Case key -> error message, for cases that did not run.

    Returns
    -------
    units, runs : pandas.DataFrame
    """
    import pandas as pd

    notes, failures = notes or {}, failures or {}
    unit_rows, run_rows = [], []
    for key, case in study.cases.items():
        name, dataset = key
        recording, gt_sorting = study.datasets[dataset]
        duration = recording.get_total_duration()
        row = dict(set=set_name, dataset=dataset, case=name, sorter=case["params"]["sorter_name"],
                   duration_s=duration, num_channels=recording.get_num_channels(),
                   num_gt=len(gt_sorting.unit_ids)) | notes.get(key, {})
        if not is_done(study, key) or "gt_comparison" not in study.get_result(key):
            row["status"] = "failed: " + failures[key] if key in failures else "not run"
            run_rows.append(row)
            continue
        result = study.get_result(key)
        row |= dict(status="ok", num_sorter=len(result["sorting"].unit_ids), wall_s=result["run_time"],
                    xspeed=duration / result["run_time"]) | result.get("memory", {})
        per_unit = {}
        for prefix, convention in CONVENTIONS.items():
            comparison = result["gt_comparison_spikeforest" if prefix == "sf" else "gt_comparison"]
            performance = _performance(comparison)
            snr = snrs[dataset][prefix].reindex(performance.index)
            selected = performance[snr.to_numpy() >= convention["min_snr"]]
            row[f"{prefix}_units"] = len(selected)
            for score in SCORES:
                row[f"{prefix}_{score}"] = selected[score].mean() if len(selected) else np.nan
            row[f"{prefix}_well_detected"] = int((selected["accuracy"] >= convention["well_detected"]).sum())
            row |= _unit_counts(comparison, prefix)
            per_unit[prefix] = performance.assign(snr=snr)
        for unit_id in per_unit["si"].index:
            unit_row = dict(set=set_name, dataset=dataset, case=name, unit_id=unit_id)
            for prefix in CONVENTIONS:
                for column in ("snr",) + SCORES:
                    unit_row[f"{prefix}_{column}"] = per_unit[prefix].at[unit_id, column]
            unit_rows.append(unit_row)
        run_rows.append(row)
    runs = pd.DataFrame(run_rows).reindex(columns=RUN_COLUMNS)
    return pd.DataFrame(unit_rows), runs


def summary_table(runs):
    """Per study set and case: means of the scores, times and memory over the datasets that ran, sums of the unit
    counts, and how many datasets ran (``runs``) out of how many (``datasets``)."""
    import pandas as pd

    ok = runs[runs["status"] == "ok"]
    mean_columns = [c for c in RUN_COLUMNS if c.endswith(SCORES) or c in
                    ("wall_s", "xspeed", "peak_rss_mb", "added_rss_mb", "peak_gpu_mb", "train_s")]
    sum_columns = ["num_gt", "num_sorter"] + [c for c in RUN_COLUMNS if c.endswith(("_units",) + COUNTS)]
    group = ["set", "case"]
    summary = ok.groupby(group, sort=False)[mean_columns].mean(numeric_only=False)
    summary = summary.join(ok.groupby(group, sort=False)[sum_columns].sum(min_count=1))
    counts = pd.DataFrame({"runs": ok.groupby(group, sort=False).size(),
                           "datasets": runs.groupby(group, sort=False).size()})
    summary = counts.join(summary, how="left")
    summary["runs"] = summary["runs"].fillna(0).astype(int)
    order = ["runs", "datasets"] + [column for column in RUN_COLUMNS if column in summary.columns]
    return summary[order].reset_index()


def markdown_report(summary, runs, header: str = "") -> str:
    """The summary in both conventions, then every run, as Markdown (needs ``tabulate``)."""
    common = ["set", "case", "runs", "datasets"]
    blocks = [header]
    for prefix, title in (("sf", "SpikeForest's convention (1 ms, SNR >= 8 on 300-6000 Hz)"),
                          ("si", "SpikeInterface's defaults (0.4 ms, SNR >= 5)")):
        columns = common + [f"{prefix}_{name}" for name in ("units",) + SCORES + COUNTS]
        blocks.append(f"## {title}\n\n" + summary[columns].to_markdown(index=False, floatfmt=".3f"))
    resources = common + ["wall_s", "xspeed", "peak_rss_mb", "added_rss_mb", "peak_gpu_mb", "train_s"]
    blocks.append("## Time and memory\n\n" + summary[resources].to_markdown(index=False, floatfmt=".3g"))
    blocks.append("## Every run\n\n" + runs.to_markdown(index=False, floatfmt=".3g"))
    return "\n\n".join(block for block in blocks if block) + "\n"


def plot_accuracy_vs_snr(units, set_name: str, file_path):
    """SpikeForest's view: accuracy of every ground-truth unit against its SNR, one panel per case (1 ms window,
    SNR on 300-6000 Hz; the dashed line is the SNR threshold of the tables)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = units[units["set"] == set_name]
    cases = list(dict.fromkeys(units["case"]))
    fig, axes = plt.subplots(1, max(len(cases), 1), figsize=(3.2 * max(len(cases), 1), 3.2), sharey=True,
                             squeeze=False)
    for ax, case in zip(axes[0], cases):
        rows = units[units["case"] == case]
        ax.scatter(rows["sf_snr"], rows["sf_accuracy"], s=10)
        ax.axvline(SPIKEFOREST["min_snr"], color="grey", linestyle="--", linewidth=1)
        ax.set_title(case)
        ax.set_xlabel("SNR (300-6000 Hz)")
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("accuracy (1 ms)")
    fig.suptitle(f"{set_name}: accuracy against SNR (SpikeForest's convention)")
    fig.tight_layout()
    fig.savefig(file_path, dpi=100)
    plt.close(fig)


def plot_f1_vs_xspeed(summary, set_name: str, file_path):
    """The paper's Figure 7: mean F1 (SpikeForest's convention) against xSpeed, one point per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary[(summary["set"] == set_name) & (summary["runs"] > 0)]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for _, row in rows.iterrows():
        ax.scatter(row["xspeed"], row["sf_f1"], s=30)
        ax.annotate(row["case"], (row["xspeed"], row["sf_f1"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("xSpeed (recording duration / wall time)")
    ax.set_ylabel("mean F1 (1 ms, SNR >= 8)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{set_name}: F1 against speed")
    fig.tight_layout()
    fig.savefig(file_path, dpi=100)
    plt.close(fig)


def plot_accuracy_vs_wall(summary, set_name: str, file_path):
    """Mean accuracy against mean wall time, one point per sorter, for ``bench_sorters.py``'s summary (a DataFrame
    indexed by (set, sorter) with ``accuracy`` and ``wall_s`` columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary.xs(set_name, level="set")
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for sorter, row in rows.iterrows():
        ax.scatter(row["wall_s"], row["accuracy"], s=30)
        ax.annotate(sorter, (row["wall_s"], row["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("wall time of run_sorter (s)")
    ax.set_ylabel("mean accuracy (0.4 ms, SNR >= 5)")
    ax.set_title(f"{set_name}: accuracy against time")
    fig.tight_layout()
    fig.savefig(file_path, dpi=100)
    plt.close(fig)
