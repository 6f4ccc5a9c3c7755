"""Cases and studies: each study set runs through ``spikeinterface.benchmark.SorterStudy``.

:class:`ElvisortSorterStudy` is SpikeInterface's ``SorterStudy`` with two additions: each case's peak memory is
measured while the sorter runs, and results hold a second comparison with SpikeForest's 1 ms match window beside
SpikeInterface's default 0.4 ms one.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from pathlib import Path

from spikeinterface.benchmark.benchmark_sorter import SorterBenchmark, SorterStudy

logger = logging.getLogger(__name__)

# case name -> (sorter name, sorter params). A case is one line, so parameter variants sit beside the sorters, e.g.
# "elvisort-pca": ("elvisort", {"features": "pca"}) once elvisort has that parameter.
CASES = {
    "elvisort": ("elvisort", {}),
    "ssae": ("ssae", {}),
    "kilosort4": ("kilosort4", {}),
    "spykingcircus2": ("spykingcircus2", {}),
    "tridesclous2": ("tridesclous2", {}),
    "lupin": ("lupin", {}),
    "mountainsort5": ("mountainsort5", {}),
}
INSTALL_HINT = "pip install 'spikeinterface-elvisort[bench]'"

# the two scoring conventions of the tables: spike match window (ms) and the SNR threshold of the averaged units
SPIKEFOREST = {"delta_time_ms": 1.0, "min_snr": 8.0, "well_detected": 0.8}
SPIKEINTERFACE = {"delta_time_ms": 0.4, "min_snr": 5.0, "well_detected": 0.8}


def select_cases(cases: dict) -> tuple[dict, dict]:
    """Split ``cases`` (name -> (sorter name, params)) into those whose sorter is installed and the others.

    Returns
    -------
    available : dict
        The runnable cases, as given.
    skipped : dict
        Case name -> a one-line reason (unknown sorter, or not installed and how to install it).
    """
    from spikeinterface.sorters import sorterlist

    import spikeinterface_elvisort  # noqa: F401 (registers elvisort and ssae)

    available, skipped = {}, {}
    for name, (sorter_name, params) in cases.items():
        sorter_class = sorterlist.sorter_dict.get(sorter_name)
        if sorter_class is None:
            skipped[name] = f"{name}: sorter {sorter_name!r} is unknown to spikeinterface.sorters, skipped"
        elif not sorter_class.is_installed():
            skipped[name] = f"{name}: sorter {sorter_name!r} is not installed, skipped ({INSTALL_HINT})"
        else:
            available[name] = (sorter_name, params)
    return available, skipped


class PeakMemory:
    """Peak resident memory (RSS) of this process and its child processes while a block runs.

    A thread samples ``psutil`` every ``interval_s``: ``peak_rss_mb`` is the highest sum seen, ``added_rss_mb`` that
    peak minus the RSS when the block started (what the block added on top of what the process already held).
    Peaks shorter than the interval can be missed. ``peak_gpu_mb`` is torch's ``max_memory_allocated`` on the
    current CUDA device (tensors allocated through torch in this process only; NaN without CUDA).
    """

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_rss_mb = self.start_rss_mb = float("nan")
        self.peak_gpu_mb = float("nan")

    def _rss(self) -> int:
        import psutil

        total = self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:  # the child ended between the listing and the read
                pass
        return total

    def _sample(self):
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self._rss())

    def __enter__(self):
        import psutil

        self._process = psutil.Process()
        self._peak = self._start = self._rss()
        self._cuda = _cuda_available()
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        self.start_rss_mb, self.peak_rss_mb = self._start / 2**20, self._peak / 2**20
        if self._cuda:
            import torch

            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
        return False

    def as_dict(self) -> dict:
        return {"peak_rss_mb": self.peak_rss_mb, "added_rss_mb": self.peak_rss_mb - self.start_rss_mb,
                "peak_gpu_mb": self.peak_gpu_mb}


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class ElvisortSorterBenchmark(SorterBenchmark):
    """SpikeInterface's ``SorterBenchmark``, plus the case's peak memory and a SpikeForest-convention comparison."""

    def run(self):
        with PeakMemory() as memory:
            super().run()
        self.result["memory"] = memory.as_dict()

    def compute_result(self, match_score=0.5, exhaustive_gt=True, with_analyzer=False,
                       spikeforest_delta_time_ms=SPIKEFOREST["delta_time_ms"], **job_kwargs):
        from spikeinterface.comparison import compare_sorter_to_ground_truth

        super().compute_result(match_score=match_score, exhaustive_gt=exhaustive_gt, with_analyzer=with_analyzer,
                               **job_kwargs)
        self.result["gt_comparison_spikeforest"] = compare_sorter_to_ground_truth(
            self.gt_sorting, self.result["sorting"], exhaustive_gt=exhaustive_gt, match_score=match_score,
            delta_time=spikeforest_delta_time_ms,
        )

    _run_key_saved = SorterBenchmark._run_key_saved + [("memory", "pickle")]
    _result_key_saved = SorterBenchmark._result_key_saved + [("gt_comparison_spikeforest", "pickle")]


class ElvisortSorterStudy(SorterStudy):
    """``SorterStudy`` whose cases record peak memory and both conventions' comparisons (see the module)."""

    benchmark_class = ElvisortSorterBenchmark

    def create_benchmark(self, key):
        recording, gt_sorting = self.datasets[self.cases[key]["dataset"]]
        sorter_folder = self.folder / "sorters" / self.key_to_str(key)
        return ElvisortSorterBenchmark(recording, gt_sorting, self.cases[key]["params"], sorter_folder)


def ground_truth_analyzer(recording, sorting, folder: Path, spikeforest: bool = False, seed: int = 0):
    """A saved ``SortingAnalyzer`` of the ground truth with templates, noise levels and SpikeInterface's ``snr``.

    ``spikeforest=False``: on the recording as the sorters get it (SpikeInterface's convention). ``spikeforest=True``:
    on the recording band-passed 300-6000 Hz, with the main channel chosen by peak-to-peak amplitude, as SpikeForest
    computes its SNR (peak absolute amplitude of the unit's template on that channel over the channel's MAD noise).
    Differences left: SpikeForest's template is the median of 100 random spikes and its noise the MAD of the second
    second of the recording; here the template is the average of up to 500 random spikes and the noise the MAD of
    random chunks.
    """
    from spikeinterface.core import create_sorting_analyzer, load_sorting_analyzer
    from spikeinterface.preprocessing import bandpass_filter

    folder = Path(folder)
    if (folder / "extensions" / "quality_metrics").exists():
        return load_sorting_analyzer(folder)
    peak_mode = "extremum"
    if spikeforest:
        recording = bandpass_filter(recording, freq_min=300.0, freq_max=6000.0, dtype="float32")
        peak_mode = "peak_to_peak"
    analyzer = create_sorting_analyzer(sorting, recording, format="binary_folder", folder=folder, sparse=True,
                                       peak_mode=peak_mode, seed=seed, overwrite=True)
    analyzer.compute({"random_spikes": {"seed": seed}, "templates": {}, "noise_levels": {"random_slices_kwargs": {"seed": seed}}})
    analyzer.compute("quality_metrics", metric_names=["snr"])
    return analyzer


def build_cases(study_set, cases: dict, keep_sorter_output: bool = False) -> dict:
    """SorterStudy cases, keyed ``(case name, dataset name)``: every case on every dataset, plus the set's own."""
    all_cases = {}
    for dataset in study_set.datasets:
        for name, (sorter_name, params) in cases.items():
            all_cases[(name, dataset)] = (sorter_name, params)
    all_cases.update(study_set.extra_cases)
    study_cases = {}
    for (name, dataset), (sorter_name, params) in all_cases.items():
        run_params = {"sorter_name": sorter_name, "remove_existing_folder": True, "verbose": False,
                      "delete_output_folder": not keep_sorter_output} | params
        study_cases[(name, dataset)] = {"label": name, "dataset": dataset, "params": run_params}
    return study_cases


def open_study(folder: Path, study_set, cases: dict, keep_sorter_output: bool = False) -> ElvisortSorterStudy:
    """Create the study of ``study_set`` in ``folder``, or open it and add the requested cases it lacks (a second
    call resumes a study: cases already run are kept)."""
    folder = Path(folder)
    study_cases = build_cases(study_set, cases, keep_sorter_output)
    if not (folder / "study").exists():
        analyzers = {name: ground_truth_analyzer(recording, sorting, folder / "analyzers" / name)
                     for name, (recording, sorting) in study_set.datasets.items()}
        return ElvisortSorterStudy.create(folder / "study", datasets=analyzers, cases=study_cases,
                                          levels=["case", "dataset"])
    study = ElvisortSorterStudy(folder / "study")
    missing = sorted(set(study_set.datasets) - set(study.datasets))
    if missing:
        raise ValueError(f"{folder / 'study'} was made with other datasets (not {missing}): choose another output")
    new = {key: case for key, case in study_cases.items() if key not in study.cases}
    if new:
        study.add_cases(new)
    return study


def is_done(study, key) -> bool:
    """Whether the case has run (SorterStudy keeps a case's results in ``results/<key>``)."""
    return (study.folder / "results" / study.key_to_str(key) / "run_time.pickle").exists()


def run_study(study: ElvisortSorterStudy, case_keys=None, verbose: bool = True) -> dict:
    """Run the cases one by one; a case that fails is logged (with its error) and the others go on.

    Returns
    -------
    failures : dict
        ``case key -> error message``, also written to ``<study>/failures.json`` (and cleared on success).
    """
    failures_file = study.folder / "failures.json"
    failures = {tuple(k): v for k, v in json.loads(failures_file.read_text())} if failures_file.exists() else {}
    for key in case_keys if case_keys is not None else list(study.cases):
        if is_done(study, key):
            continue
        if verbose:
            print(f"# running {key[0]} on {key[1]}", flush=True)
        try:
            study.run(case_keys=[key], keep=True)
            failures.pop(key, None)
        except Exception as error:  # one sorter failing must not lose the other cases
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            logger.debug("case %s failed:\n%s", key, traceback.format_exc())
            print(f"# {key[0]} failed on {key[1]}: {message}", flush=True)
            failures[key] = message
    failures_file.write_text(json.dumps([[list(k), v] for k, v in failures.items()], indent=1))
    return failures
