"""benchmarks/gpu_check.py, the prepared CUDA check, on its CPU path (CI has no GPU): it sorts, scores and tabulates
what a person with a GPU would get for the cuda cases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_its_cpu_case_and_reports_accuracy_and_stage_times(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--devices", "cpu", "cuda", "--channels", "32",
         "--duration", "20", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "gpu_check.csv")
    assert table["case"].tolist() == ["cpu"]  # no CUDA here: the cuda case is skipped, and said so
    assert "torch sees no CUDA device" in result.stdout
    row = table.iloc[0]
    assert row["channels"] == 32 and row["gt_units"] >= 5
    # a sanity check of the scoring, on 20 s (few spikes per unit): measured 0.857 (12 of 14 units well detected)
    # with sorter seeds 0 and 1, 0.929 with seed 2 or torch_threads=2; the accuracy tests are elsewhere
    assert row["accuracy"] >= 0.8 and row["well_detected"] >= 11, row.to_dict()
    for stage in ("preprocessing", "detection", "training", "clean-up"):
        assert row[f"{stage}_s"] > 0
    report = (tmp_path / "gpu_check.md").read_text()
    assert report.count("| cpu ") == 1 and "no CUDA device" in report
