#!/usr/bin/env bash
# The CUDA path end to end on one GPU, in at most 8 minutes, nothing downloaded: elvisort on 32, 128 and 384
# channels (30 s recordings), device="cuda" with mixed precision on and off and device="cpu", on the same recordings;
# prints a table of accuracy, stage times and peak GPU memory and writes it to OUT (default gpu_check/).
# Run from the repository root, in an environment where `pip install -e .` and a CUDA build of torch are installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-gpu_check}"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.version.cuda)"
timeout 480 python benchmarks/gpu_check.py --out "$OUT" --budget-s "${BUDGET_S:-400}" "$@"
