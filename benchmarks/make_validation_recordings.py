"""Two MEArec recordings, and their noise-free twins, that no compressor setting was chosen on.

The compression defaults were chosen on the four dev recordings (``../shared/data/mearec``). These two use the same
stored templates (the dev cell models) with other seeds: other cells, positions, spike trains and noise. They check
that the defaults carry over to recordings they were not tuned on. Each takes about a minute and ~0.3-0.4 GB.

Examples
--------
python benchmarks/make_validation_recordings.py            # -> /tmp/mearec_recordings/validation
python benchmarks/bench_compression.py --folder /tmp/mearec_recordings/validation \
    --recordings val_rec5_static_15c_noise10 val_rec6_drift_10c_noise15 \
    --cross-fit /tmp/mearec_recordings/dev/dev_rec3_static_20c_noise10.h5 --vq 2:64 1:16 \
    --out benchmarks/results_compression_validation
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import warnings
from pathlib import Path

MEAREC_SCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mearec"
OUT_FOLDER = Path("/tmp/mearec_recordings/validation")
# name -> make_recordings.py settings; seeds 15xx and 16xx are used by no dev recording
VALIDATION = {
    "val_rec5_static_15c_noise10": dict(n_exc=10, n_inh=5, duration=60.0, noise_level=10, drifting=False,
        seeds=dict(spiketrains=1501, templates=1502, convolution=1503, noise=1504)),
    "val_rec6_drift_10c_noise15": dict(n_exc=7, n_inh=3, duration=60.0, noise_level=15, drifting=True,
        slow_drift_velocity=60.0, seeds=dict(spiketrains=1601, templates=1602, convolution=1603, noise=1604)),
}


def load_make_recordings(folder: Path):
    """``make_recordings.py`` of the shared MEArec data, as a module."""
    script = folder / "make_recordings.py"
    if not script.is_file():
        raise SystemExit(f"{script} not found: pass --mearec-scripts, the folder of shared/data/mearec")
    spec = importlib.util.spec_from_file_location("make_recordings", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mearec-scripts", type=Path, default=MEAREC_SCRIPTS,
                        help="folder of make_recordings.py and the templates (shared/data/mearec)")
    parser.add_argument("--out-dir", type=Path, default=OUT_FOLDER)
    parser.add_argument("--only", nargs="*", choices=list(VALIDATION), help="names to make (default: all)")
    args = parser.parse_args(argv)

    make_recordings = load_make_recordings(args.mearec_scripts)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(VALIDATION):
        for out_name, spec in ((name, VALIDATION[name]), (f"{name}_noisefree", dict(VALIDATION[name], noise_level=0))):
            print(f"generating {out_name} ...", flush=True)
            with warnings.catch_warnings():  # MEArec divides by the noise level for its SNR printout
                warnings.filterwarnings("ignore", "divide by zero", RuntimeWarning)
                info = make_recordings.generate(out_name, spec, args.mearec_scripts, args.out_dir, n_jobs=1, verbose=0)
            print(json.dumps({k: info[k] for k in ("file", "n_units", "n_spikes", "gen_and_save_s")}), flush=True)


if __name__ == "__main__":
    main()
