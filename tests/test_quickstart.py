"""The README's first command ends in ``python examples/quickstart.py``: it sorts, prints each unit's SNR beside its
scores and the mean over detectable units, prints no warning, and leaves no temporary folder behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


@pytest.mark.slow
def test_quickstart_explains_its_result_and_cleans_up(tmp_path):
    environment = os.environ | {"TMPDIR": str(tmp_path)}
    process = subprocess.run([sys.executable, str(QUICKSTART)], capture_output=True, text=True, env=environment,
                             cwd=tmp_path, timeout=900)
    assert process.returncode == 0, process.stderr[-3000:]
    output = process.stdout
    header = next(line for line in output.splitlines() if "accuracy" in line and "precision" in line)
    assert header.split()[:4] == ["snr", "accuracy", "precision", "recall"]
    mean = re.search(r"mean over the (\d) of 5 units with SNR >= 5: accuracy ([0-9.]+)", output)
    assert mean is not None, output[-2000:]
    assert int(mean.group(1)) == 4  # one generated unit of this seed has an SNR of about 1
    assert float(mean.group(2)) >= 0.9
    assert "Warning" not in process.stderr and "warn" not in process.stderr.lower(), process.stderr[-3000:]
    assert not list(tmp_path.glob("elvisort_quickstart_*"))
