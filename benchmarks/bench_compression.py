"""Rate-quality benchmark of the spike compressor (issue 7, seed 004's Figure 3 redrawn with strong baselines).

For each MEArec recording: every ground-truth spike is cut on the 4 channels nearest its unit's extremum channel
(spatial order), 0.5 ms before and 1.0 ms after the spike time (48 samples at 32 kHz); the spikes are split at
random in two halves (--seed): every compressor is trained on one half and measured on the other.

Measured per compressor and setting, on the test half:

* ``sndr_db``: mean SNDR (eq. 8) against the noisy spike; ``sndr_clean_db``: against the noise-free reference, the
  mean of all the recording's spikes of the same unit (both halves; MEArec's per-spike jitter and amplitude
  modulation are not undone, so this reference is itself slightly off for each spike);
* ``ratio``: raw bits (16 per sample) over the entropy of the codes (eq. 5 with log2 K replaced by the entropy, one
  table per code position); ``coded_ratio``: raw bits over the bytes the range coder wrote (tables learned on the
  training half); ``seed_ratio``: the seed's formula (section 2.6) for the unquantised baselines.

Baselines: PCA, DCT, DWT (sym4) in the seed's version (16 bits per kept coefficient) and the strong version
(coefficients quantised, entropy-coded per position), swept over the number of coefficients and of levels; the
"best strong ratio at SNDR >= s" is the upper envelope of that sweep.

Examples
--------
python benchmarks/bench_compression.py                                # dev_rec1, the default compressor + curve
python benchmarks/bench_compression.py --recordings all --out benchmarks/results_compression
python benchmarks/bench_compression.py --vq 1:64 2:64 --epochs 20      # other autoencoder settings
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

MEAREC_FOLDER = Path("/tmp/mearec_recordings/dev")
DEFAULT_RECORDINGS = ["dev_rec1_static_10c_noise10"]


def load_spikes(file_path: Path, num_channels: int, ms_before: float, ms_after: float):
    import spikeinterface.extractors as se

    from spikeinterface_elvisort.compression import extract_spike_waveforms

    recording, sorting = se.read_mearec(file_path)
    waveforms, spikes, _ = extract_spike_waveforms(
        recording, sorting, num_channels=num_channels, ms_before=ms_before, ms_after=ms_after
    )
    return waveforms, spikes["unit_index"]


def clean_reference(waveforms: np.ndarray, units: np.ndarray) -> np.ndarray:
    means = {unit: waveforms[units == unit].mean(axis=0) for unit in np.unique(units)}
    return np.stack([means[unit] for unit in units])


def measure(family, setting, test, clean, restored, bits_per_spike, coded_bytes, seed_ratio=None, **extra):
    from spikeinterface_elvisort.compression import compression_ratio, sndr

    num_samples, num_channels = test.shape[1:]
    row = {
        "family": family,
        "setting": setting,
        "sndr_db": float(sndr(test, restored).mean()),
        "sndr_clean_db": float(sndr(clean, restored).mean()),
        "bits_per_spike": bits_per_spike,
        "ratio": compression_ratio(num_samples, num_channels, bits_per_spike) if bits_per_spike else None,
        "coded_ratio": (
            compression_ratio(num_samples, num_channels, 8 * coded_bytes / len(test)) if coded_bytes else None
        ),
        "seed_ratio": seed_ratio,
    }
    row.update(extra)
    return row


def baseline_rows(train, test, clean):
    from spikeinterface_elvisort.compression import DCTCompressor, DWTCompressor, PCACompressor

    num_samples = train.shape[1]
    rows = []
    seed_grid = {"pca": [1, 2, 4, 6, 8, 10, 12], "dct": [4, 6, 8, 10, 12, 16], "dwt": [2, 4, 6, 8, 10, 12]}
    strong_grid = {
        "pca": [2, 3, 4, 5, 6, 8, 10, 12, 16, 20],
        "dct": [6, 8, 10, 12, 16, 24],
        "dwt": [12, 24, num_samples],
    }
    classes = {"pca": PCACompressor, "dct": DCTCompressor, "dwt": DWTCompressor}
    for name, cls in classes.items():
        for m in seed_grid[name]:
            compressor = cls(m).fit(train)
            rows.append(
                measure(
                    f"{name} (seed)",
                    f"m={m}",
                    test,
                    clean,
                    compressor.reconstruct(test),
                    None,
                    None,
                    seed_ratio=compressor.seed_ratio(),
                )
            )
        for m in strong_grid[name]:
            for levels in (4, 8, 12, 16, 24, 32, 48, 64):
                for shared in (True, False):
                    compressor = cls(m, n_levels=levels, shared_step=shared).fit(train)
                    codes = compressor.encode(test)
                    rows.append(
                        measure(
                            f"{name} (strong)",
                            f"m={m} levels={levels} {'shared' if shared else 'per'}",
                            test,
                            clean,
                            compressor.decode(codes),
                            compressor.bits_per_spike(codes),
                            compressor.coded_bytes(codes),
                        )
                    )
    return rows


def vq_rows(train, test, clean, settings, epochs, seed, verbose):
    import torch

    from spikeinterface_elvisort.compression import SpikeCompressor

    rows, models = [], {}
    for setting in settings:
        n_features, codebook_size = (int(v) for v in setting.split(":"))
        kwargs = dict(n_features=n_features, codebook_size=codebook_size, random_state=seed, verbose=verbose)
        if epochs is not None:
            kwargs.update(epochs=epochs, warmup_epochs=min(2, epochs - 1))
        start = time.perf_counter()
        compressor = SpikeCompressor(**kwargs).fit(train)
        fit_s = time.perf_counter() - start
        codes = compressor.encode(test)
        size = compressor.encoder_size()
        rows.append(
            measure(
                "autoencoder",
                f"n_features={n_features} K={codebook_size}",
                test,
                clean,
                compressor.decode(codes),
                compressor.bits_per_group(codes) * codes.shape[1],
                len(compressor.compress(test)),
                fit_s=fit_s,
                device=str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
                encoder_parameters=size["parameters"],
                encoder_macs=size["macs"],
            )
        )
        models[setting] = compressor
        print(json.dumps({k: v for k, v in rows[-1].items() if v is not None}), flush=True)
    return rows, models


def residual_kmeans_rows(train, test, clean, settings, seed):
    """Residual vector quantisation of the raw waveforms (k-means on the spikes, then on what is left, ...), coded
    like the autoencoder's indices: a reference for what a learned VQ without a network reaches."""
    from sklearn.cluster import KMeans

    from spikeinterface_elvisort.compression import StaticEntropyCoder, code_entropy

    rows = []
    for setting in settings:
        sizes = [int(v) for v in setting.split(",")]
        left_train = train.reshape(len(train), -1).astype(np.float64)
        left_test = test.reshape(len(test), -1).astype(np.float64)
        restored = np.zeros_like(left_test)
        codes_train, codes_test = [], []
        for size in sizes:
            kmeans = KMeans(size, n_init=1, random_state=seed).fit(left_train)
            labels_train, labels_test = kmeans.predict(left_train), kmeans.predict(left_test)
            left_train -= kmeans.cluster_centers_[labels_train]
            left_test -= kmeans.cluster_centers_[labels_test]
            restored += kmeans.cluster_centers_[labels_test]
            codes_train.append(labels_train)
            codes_test.append(labels_test)
        codes_train, codes_test = np.stack(codes_train, axis=1), np.stack(codes_test, axis=1)
        coder = StaticEntropyCoder(sizes).fit(codes_train)
        rows.append(
            measure(
                "residual k-means (raw)",
                f"K={setting}",
                test,
                clean,
                restored.reshape(test.shape),
                code_entropy(codes_test),
                len(coder.encode(codes_test)),
            )
        )
    return rows


def best_ratio(rows, families, level, key="sndr_db"):
    """Highest entropy ratio among ``rows`` of ``families`` whose mean SNDR (``key``) reaches ``level``;
    (ratio, row)."""
    candidates = [r for r in rows if r["family"] in families and r["ratio"] and r[key] >= level]
    if not candidates:
        return None, None
    best = max(candidates, key=lambda r: r["ratio"])
    return best["ratio"], best


def plot(rows, title, file_path):
    """Rate-quality curves: (a) SNDR against the noisy spike, (b) against the noise-free reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "autoencoder": ("k", "o"),
        "residual": ("tab:purple", "x"),
        "pca": ("tab:blue", "s"),
        "dct": ("tab:orange", "^"),
        "dwt": ("tab:green", "v"),
    }
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for axis, key, label in (
        (axes[0], "sndr_db", "(a) mean SNDR against the noisy spike (dB)"),
        (axes[1], "sndr_clean_db", "(b) mean SNDR against the noise-free unit mean (dB)"),
    ):
        for row in rows:
            if row["family"] == "reference" and key == "sndr_db":
                axis.axhline(
                    row[key],
                    color="tab:red",
                    linestyle=":",
                    linewidth=1,
                    label="noise-free unit mean (a perfect denoiser)",
                )
            if row["family"] == "input" and key == "sndr_clean_db":
                axis.axhline(row[key], color="tab:red", linestyle=":", linewidth=1, label="uncompressed noisy spike")
        for family in sorted({r["family"] for r in rows} - {"reference", "input"}):
            colour, marker = styles[family.split()[0]]
            points = [((r["ratio"] or r["seed_ratio"]), r[key]) for r in rows if r["family"] == family]
            points = envelope(points)
            if not points:
                continue
            x, y = zip(*points)
            axis.plot(x, y, "--" if "seed" in family else "-", color=colour, marker=marker, markersize=4, label=family)
        axis.set_xscale("log")
        axis.set_ylim(4, 20)
        axis.set_xlabel("compression ratio (entropy of the codes; seed versions: the seed's formula)")
        axis.set_ylabel(label)
        for level in (8, 11, 14):
            axis.axhline(level, color="0.85", linewidth=0.8, zorder=0)
        axis.legend(fontsize=7)
    figure.suptitle(title + "; each curve: its upper envelope", fontsize=9)
    figure.tight_layout()
    figure.savefig(file_path, dpi=110)
    plt.close(figure)


def envelope(points):
    """Upper-left envelope: the points not beaten by another with both a higher ratio and a higher SNDR."""
    kept = [p for p in points if not any(q[0] > p[0] and q[1] > p[1] for q in points)]
    return sorted(kept)


def versions():
    import spikeinterface
    import torch

    import spikeinterface_elvisort

    return {
        "python": platform.python_version(),
        "spikeinterface": spikeinterface.__version__,
        "torch": torch.__version__,
        "spikeinterface_elvisort": spikeinterface_elvisort.__version__,
        "numpy": np.__version__,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--recordings", nargs="+", default=DEFAULT_RECORDINGS, help="names in --folder (without .h5), or 'all'"
    )
    parser.add_argument("--folder", type=Path, default=MEAREC_FOLDER)
    parser.add_argument(
        "--vq",
        nargs="*",
        default=["2:64", "1:64", "1:256", "4:64"],
        help="autoencoder settings n_features:codebook_size; the first is the default compressor",
    )
    parser.add_argument(
        "--kmeans", nargs="*", default=[], help="also residual k-means of the raw waveforms, e.g. 64 64,64 128,128,128"
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: SpikeCompressor's)")
    parser.add_argument("--num-channels", type=int, default=4)
    parser.add_argument("--ms-before", type=float, default=0.5)
    parser.add_argument("--ms-after", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-sorting", action="store_true", help="skip the sorting-after-compression step")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results_compression"))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from spikeinterface_elvisort.compression import sorting_change

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.recordings
    if names == ["all"]:
        names = sorted(p.stem for p in args.folder.glob("*.h5"))
    if not names or not all((args.folder / f"{n}.h5").is_file() for n in names):
        sys.exit(f"recordings {names} not all found in {args.folder}; run ../shared/data/mearec/make_recordings.py")

    all_rows, summaries = [], []
    for name in names:
        waveforms, units = load_spikes(args.folder / f"{name}.h5", args.num_channels, args.ms_before, args.ms_after)
        clean = clean_reference(waveforms, units)
        order = np.random.default_rng(args.seed).permutation(len(waveforms))
        train, test = order[: len(order) // 2], order[len(order) // 2 :]
        print(
            f"# {name}: {len(waveforms)} spikes {waveforms.shape[1:]}, train {len(train)}, test {len(test)}", flush=True
        )
        noise_cap = measure(
            "reference", "unit mean (noise-free)", waveforms[test], clean[test], clean[test], None, None
        )
        uncompressed = measure(
            "input", "noisy spike, uncompressed", waveforms[test], clean[test], waveforms[test], None, None
        )
        rows = [noise_cap, uncompressed] + baseline_rows(waveforms[train], waveforms[test], clean[test])
        vq, models = vq_rows(
            waveforms[train], waveforms[test], clean[test], args.vq, args.epochs, args.seed, args.verbose
        )
        rows += vq + residual_kmeans_rows(waveforms[train], waveforms[test], clean[test], args.kmeans, args.seed)
        for row in rows:
            row["recording"] = name
        all_rows += rows

        strong = ["pca (strong)", "dct (strong)", "dwt (strong)"]
        seed_rows = [r for r in rows if "(seed)" in r["family"]]
        for row in vq:
            pca_ratio, pca_row = best_ratio(rows, ["pca (strong)"], row["sndr_db"])
            any_ratio, any_row = best_ratio(rows, strong, row["sndr_db"])
            clean_ratio, clean_row = best_ratio(rows, strong, row["sndr_clean_db"], key="sndr_clean_db")
            seed_best = max((r["seed_ratio"] for r in seed_rows if r["sndr_db"] >= row["sndr_db"]), default=None)
            summaries.append(
                {
                    "recording": name,
                    "autoencoder": row["setting"],
                    "sndr_db": row["sndr_db"],
                    "sndr_clean_db": row["sndr_clean_db"],
                    "ratio": row["ratio"],
                    "coded_ratio": row["coded_ratio"],
                    "best_strong_pca_ratio": pca_ratio,
                    "gain_vs_strong_pca": row["ratio"] / pca_ratio if pca_ratio else None,
                    "best_strong_pca_setting": pca_row["setting"] if pca_row else None,
                    "best_strong_any_ratio": any_ratio,
                    "gain_vs_best_strong": row["ratio"] / any_ratio if any_ratio else None,
                    "best_strong_any": f"{any_row['family']} {any_row['setting']}" if any_row else None,
                    "best_seed_ratio": seed_best,
                    "fit_s": row["fit_s"],
                    "best_strong_ratio_same_clean_sndr": clean_ratio if clean_ratio else "none reaches it",
                    "gain_clean": row["ratio"] / clean_ratio if clean_ratio else "inf",
                    "best_strong_same_clean": f"{clean_row['family']} {clean_row['setting']}" if clean_row else None,
                }
            )
        if not args.no_sorting and args.vq:
            default = models[args.vq[0]]
            restored = default.reconstruct(waveforms[test])
            change = sorting_change(waveforms[test], restored, units[test], seed=args.seed)
            for method, values in change.items():
                summaries[-len(vq)].setdefault("sorting", {})[method] = values
            print(f"# sorting accuracy before/after ({args.vq[0]}): {json.dumps(change)}", flush=True)
        plot(
            rows,
            f"{name}: test half, {len(test)} spikes, {waveforms.shape[2]} channels x {waveforms.shape[1]} samples",
            args.out / f"rate_quality_{name}.png",
        )

    table = pd.DataFrame(all_rows)
    table.to_csv(args.out / "results.csv", index=False)
    summary = pd.DataFrame(summaries)
    header = (
        f"date: {time.strftime('%Y-%m-%d')}; machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} "
        f"cores, torch threads {args.threads}, CUDA: {torch.cuda.is_available()}); versions: {versions()}\n"
        f"command: python {' '.join(sys.argv)}\n"
    )
    columns = [
        "recording",
        "autoencoder",
        "sndr_db",
        "sndr_clean_db",
        "ratio",
        "coded_ratio",
        "best_strong_pca_ratio",
        "gain_vs_strong_pca",
        "best_strong_any_ratio",
        "gain_vs_best_strong",
        "best_strong_any",
        "best_seed_ratio",
        "best_strong_ratio_same_clean_sndr",
        "gain_clean",
        "fit_s",
    ]
    frontier = table[table["family"].str.contains("strong|autoencoder|residual")]
    markdown = (
        header
        + "\n## Autoencoder against the best strong baseline reaching the same SNDR\n\n"
        + (summary[columns].round(2).to_markdown(index=False) if summaries else "(no autoencoder run)")
        + "\n\n``gain_clean``: the same comparison on the SNDR against the noise-free reference "
        + "(best strong baseline: "
        + "; ".join(f"{s['autoencoder']}: {s['best_strong_same_clean']}" for s in summaries)
        + ")"
        + "\n\n## References: the noise-free unit mean as the reconstruction (a perfect denoiser), and the "
        + "uncompressed noisy spike\n\n"
        + table[table["family"].isin(["reference", "input"])][["recording", "setting", "sndr_db", "sndr_clean_db"]]
        .round(2)
        .to_markdown(index=False)
        + "\n\n## Sorting accuracy before / after a round trip through the first autoencoder setting\n\n"
        + json.dumps({s["recording"]: s.get("sorting") for s in summaries if s.get("sorting")}, indent=1)
        + "\n\n## Strong baselines and autoencoders, best points (envelope per family)\n\n"
    )
    for (name, family), group in frontier.groupby(["recording", "family"]):
        points = envelope(list(zip(group["ratio"], group["sndr_db"])))
        kept = group[[(r, s) in points for r, s in zip(group["ratio"], group["sndr_db"])]].sort_values("ratio")
        markdown += (
            kept[["recording", "family", "setting", "sndr_db", "sndr_clean_db", "ratio", "coded_ratio"]]
            .round(2)
            .to_markdown(index=False)
            + "\n\n"
        )
    (args.out / "results.md").write_text(markdown)
    (args.out / "summary.json").write_text(json.dumps(summaries, indent=1, default=float))
    print(markdown)


if __name__ == "__main__":
    main()
