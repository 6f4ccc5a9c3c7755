"""Rate-quality benchmark of the spike compressors, judged against the true spike.

For each MEArec recording: every ground-truth spike is cut on the 4 channels nearest its unit's extremum channel
(spatial order), 0.5 ms before and 1.0 ms after the spike time (48 samples at 32 kHz), and the same spike, on the same
channels, is cut from the recording's noise-free twin (same seeds, ``noise_level=0``: the true spike under the
recorded one). Two protocols:

* ``half``: the spikes are split at random (--seed) into halves; every compressor is fitted on one half and
  measured on the other (the same neurons in both);
* ``cross``: every compressor is fitted on the first half of another recording (``CROSS``, or ``--cross-fit``:
  other neurons) and measured on the same test half.

Measured per compressor and setting, on the test half (in time order):

* ``sndr_twin_db``: mean SNDR (seed eq. 8) against the noise-free twin, the fidelity figure;
  ``sndr_db``: against the recorded (noisy) spike; ``sndr_unit_mean_db``: against the mean of the unit's spikes;
* ``ratio``: raw bits (16 per sample) over the ideal code length under the tables learned at fit (the
  cross-entropy; the adaptive codebook's tables adapt in the stream, so its ratio is from the bytes written);
  ``coded_ratio``: raw bits over the bytes the range coder wrote.

Methods: the autoencoder (``AutoencoderCompressor``, --vq settings), the adaptive codebook
(``AdaptiveCodebookCompressor``), k-means and residual k-means of the raw waveforms (``KMeansCompressor``), and
PCA, DCT, DWT in the strong version (quantised, entropy-coded; swept) and the seed's (16 bits per coefficient).

Examples
--------
python benchmarks/bench_compression.py --recordings all --vq 2:64 1:16 1:64  # both protocols, all dev recordings
python benchmarks/bench_compression.py --protocols half --vq 2:64 1:64  # other autoencoder settings
python benchmarks/bench_compression.py --folder /tmp/mearec_recordings/validation \
    --recordings val_rec5_static_15c_noise10 val_rec6_drift_10c_noise15 \
    --cross-fit /tmp/mearec_recordings/dev/dev_rec3_static_20c_noise10.h5  # benchmarks/make_validation_recordings.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

MEAREC_FOLDER = Path("/tmp/mearec_recordings/dev")
DEFAULT_RECORDINGS = ["dev_rec1_static_10c_noise10"]
# protocol "cross": each recording's compressors are fitted on this other recording (other neurons)
CROSS = {
    "dev_rec1_static_10c_noise10": "dev_rec3_static_20c_noise10",
    "dev_rec2_static_15c_noise20": "dev_rec3_static_20c_noise10",
    "dev_rec3_static_20c_noise10": "dev_rec1_static_10c_noise10",
    "dev_rec4_drift_12c_noise10": "dev_rec1_static_10c_noise10",
}
BASELINES = ("pca (strong)", "dct (strong)", "dwt (strong)", "k-means")
LEVELS = (4, 8, 12, 16, 24, 32, 48, 64)  # quantiser levels of the strong transform baselines
KMEANS_SIZES = ((4,), (8,), (16,), (32,), (64,), (128,), (256,), (16, 16), (64, 64), (128, 128, 128))


def load_spikes(folder: Path, name: str, num_channels: int, ms_before: float, ms_after: float):
    """Spikes of recording ``name`` and the same spikes cut from its noise-free twin: (noisy, twin, units)."""
    import spikeinterface.extractors as se

    from spikeinterface_elvisort.compression import extract_spike_waveforms

    twin_path = folder / f"{name}_noisefree.h5"
    if not twin_path.is_file():
        sys.exit(f"{twin_path} not found: run ../shared/data/mearec/make_recordings.py --noise-free --out-dir {folder}")
    recording, sorting = se.read_mearec(folder / f"{name}.h5")
    window = dict(num_channels=num_channels, ms_before=ms_before, ms_after=ms_after)
    noisy, spikes, channels = extract_spike_waveforms(recording, sorting, **window)
    twin_recording, _ = se.read_mearec(twin_path)
    twin, _, twin_channels = extract_spike_waveforms(twin_recording, peaks=spikes, **window)
    assert np.array_equal(channels, twin_channels)
    return noisy, twin, spikes["unit_index"]


def unit_means(waveforms: np.ndarray, units: np.ndarray) -> np.ndarray:
    means = {unit: waveforms[units == unit].mean(axis=0) for unit in np.unique(units)}
    return np.stack([means[unit] for unit in units])


class Test:
    """The test half of one recording under one protocol, and how a restored version of it scores."""

    def __init__(self, noisy, twin, unit_mean, units):
        self.noisy, self.twin, self.unit_mean, self.units = noisy, twin, unit_mean, units

    def row(self, family, setting, reconstruction, bits_per_spike=None, coded_bytes=None, **extra):
        from spikeinterface_elvisort.compression import compression_ratio, sndr

        num_samples, num_channels = self.noisy.shape[1:]
        coded_bits = 8 * coded_bytes / len(self.noisy) if coded_bytes else None
        bits = bits_per_spike if bits_per_spike is not None else coded_bits
        row = {
            "family": family,
            "setting": setting,
            "sndr_twin_db": float(sndr(self.twin, reconstruction).mean()),
            "sndr_db": float(sndr(self.noisy, reconstruction).mean()),
            "sndr_unit_mean_db": float(sndr(self.unit_mean, reconstruction).mean()),
            "bits_per_spike": bits,
            "ratio": compression_ratio(num_samples, num_channels, bits) if bits else None,
            "coded_ratio": compression_ratio(num_samples, num_channels, coded_bits) if coded_bits else None,
            "restored": reconstruction,
        }
        row.update(extra)
        return row


def baseline_rows(train, test: Test, levels=LEVELS, kmeans_sizes=KMEANS_SIZES):
    from spikeinterface_elvisort.compression import DCTCompressor, DWTCompressor, KMeansCompressor, PCACompressor

    rows = []
    seed_grid = {"pca": [1, 2, 4, 6, 8, 10, 12], "dct": [4, 6, 8, 10, 12, 16], "dwt": [2, 4, 6, 8, 10, 12]}
    strong_grid = {
        "pca": [2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32],
        "dct": [6, 8, 10, 12, 16, 24],
        "dwt": [12, 24, train.shape[1]],
    }
    classes = {"pca": PCACompressor, "dct": DCTCompressor, "dwt": DWTCompressor}
    for name, cls in classes.items():
        for m in seed_grid[name]:
            compressor = cls(m).fit(train)
            row = test.row(f"{name} (seed)", f"m={m}", compressor.reconstruct(test.noisy))
            row["ratio"] = compressor.seed_ratio()
            rows.append(row)
        for m in strong_grid[name]:
            for level in levels:
                for shared in (True, False):
                    compressor = cls(m, n_levels=level, shared_step=shared).fit(train)
                    codes = compressor.encode(test.noisy)
                    rows.append(
                        test.row(
                            f"{name} (strong)",
                            f"m={m} levels={level} {'shared' if shared else 'per'}",
                            compressor.decode(codes),
                            compressor.coder_.cross_entropy_bits(codes) / len(codes),
                            compressor.coded_bytes(codes),
                        )
                    )
    for sizes in kmeans_sizes:
        compressor = KMeansCompressor(sizes).fit(train)
        codes = compressor.encode(test.noisy)
        rows.append(
            test.row(
                "k-means",
                "K=" + "+".join(map(str, sizes)),
                compressor.decode(codes),
                compressor.coder_.cross_entropy_bits(codes) / len(codes),
                compressor.coded_bytes(codes),
                candidate=sizes in ((16,), (64,), (64, 64)),
            )
        )
    return rows


def adaptive_rows(train, test: Test, settings):
    from spikeinterface_elvisort.compression import AdaptiveCodebookCompressor

    rows = []
    for setting in settings:
        kwargs = {key: float(value) if "." in value else int(value) for key, value in
                  (item.split("=") for item in setting.split(",") if item)}
        start = time.perf_counter()
        compressor = AdaptiveCodebookCompressor(**kwargs).fit(train)
        data = compressor.compress(test.noisy)
        seconds = time.perf_counter() - start
        restored = compressor.decompress(data, len(test.noisy))
        rows.append(
            test.row("adaptive codebook", setting or "default", restored, None, len(data), fit_s=seconds,
                     candidate=setting == settings[0])
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "restored" and v is not None}), flush=True)
    return rows


def parse_vq(setting: str):
    """``"n_features:codebook_size[,name=value...]"`` -> (n_features, codebook_size, other AutoencoderCompressor
    arguments), e.g. ``"1:64,residual_stages=2,ema_decay=0.99,codeword_outputs=1"``."""
    head, *items = setting.split(",")
    n_features, codebook_size = (int(v) for v in head.split(":"))
    extra = {}
    for item in items:
        key, value = item.split("=")
        extra[key] = None if value == "none" else float(value) if "." in value else int(value)
    if "codeword_outputs" in extra:
        extra["codeword_outputs"] = bool(extra["codeword_outputs"])
    return n_features, codebook_size, extra


def autoencoder_rows(train, test: Test, settings, epochs, seed, verbose):
    from spikeinterface_elvisort.compression import AutoencoderCompressor

    rows = []
    for setting in settings:
        n_features, codebook_size, extra = parse_vq(setting)
        kwargs = dict(n_features=n_features, codebook_size=codebook_size, random_state=seed, verbose=verbose, **extra)
        if epochs is not None:
            kwargs.update(epochs=epochs, warmup_epochs=min(2, epochs - 1))
        start = time.perf_counter()
        compressor = AutoencoderCompressor(**kwargs).fit(train)
        fit_s = time.perf_counter() - start
        codes = compressor.encode(test.noisy)
        restored = compressor.decode(codes)
        size = compressor.encoder_size()
        rows.append(
            test.row(
                "autoencoder",
                f"n_features={n_features} K={codebook_size}" + "".join(f" {k}={v}" for k, v in extra.items()),
                restored,
                compressor.coder_.cross_entropy_bits(codes.reshape(-1, codes.shape[-1])) / len(codes),
                len(compressor.compress(test.noisy)),
                fit_s=fit_s,
                encoder_parameters=size["parameters"],
                encoder_macs=size["macs"],
                candidate=setting == settings[0],
            )
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "restored" and v is not None}), flush=True)
    return rows


def best_baseline(rows, level):
    """The baseline row (BASELINES families) with the highest ratio whose SNDR against the twin reaches ``level``."""
    candidates = [r for r in rows if r["family"] in BASELINES and r["ratio"] and r["sndr_twin_db"] >= level]
    return max(candidates, key=lambda r: r["ratio"]) if candidates else None


def envelope(points):
    """Upper-left envelope: the points not beaten by another with both a higher ratio and a higher SNDR."""
    kept = [p for p in points if not any(q[0] > p[0] and q[1] > p[1] for q in points)]
    return sorted(kept)


def plot(rows, title, file_path):
    """Per protocol: rate-quality curves, SNDR (a) against the noise-free twin and (b) against the recorded spike,
    and (c) the clustering accuracy after the round trip of the points on the (a) envelopes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "autoencoder": ("k", "o"),
        "adaptive": ("tab:red", "*"),
        "k-means": ("tab:purple", "x"),
        "pca": ("tab:blue", "s"),
        "dct": ("tab:orange", "^"),
        "dwt": ("tab:green", "v"),
    }
    families = sorted({r["family"] for r in rows} - {"input"})
    panels = (("sndr_twin_db", "mean SNDR against the noise-free twin (dB)", (0, 22)),
              ("sndr_db", "mean SNDR against the recorded spike (dB)", (0, 22)),
              ("pca_kmeans_after", "PCA + k-means accuracy after the round trip", (0, 1)))
    figure, axes = plt.subplots(2, 3, figsize=(17, 9))
    for line, protocol in enumerate(("half", "cross")):
        protocol_rows = [r for r in rows if r["protocol"] == protocol]
        recorded = next(r for r in protocol_rows if r["family"] == "input")
        for column, (key, label, limits) in enumerate(panels):
            axis = axes[line, column]
            if key != "sndr_db":
                axis.axhline(recorded[key], color="tab:red", linestyle=":", linewidth=1, label="recorded spike")
            for family in families:
                colour, marker = styles[family.split()[0]]
                family_rows = [r for r in protocol_rows if r["family"] == family and r.get(key) is not None]
                points = envelope([(r["ratio"], r[key]) for r in family_rows])
                if key == "pca_kmeans_after":
                    points = sorted((r["ratio"], r[key]) for r in family_rows)
                if points:
                    x, y = zip(*points)
                    axis.plot(x, y, "--" if "seed" in family else "-", color=colour, marker=marker, markersize=4,
                              label=family)
            axis.set_xscale("log")
            axis.set_ylim(*limits)
            axis.set_xlabel("compression ratio")
            axis.set_ylabel(label)
            axis.set_title(f"protocol {protocol}", fontsize=9)
            axis.legend(fontsize=7)
    figure.suptitle(title + "; (a), (b): each family's upper envelope; (c): the points of the (a) envelope",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(file_path, dpi=100)
    plt.close(figure)


def sort_envelopes(rows, units):
    """Waveform clustering accuracy (PCA + k-means with the true number of units, as ``sorting_change``) of the
    recorded spikes and, after the round trip, of every point on each family's envelope (SNDR against the twin):
    the ``pca_kmeans_after`` of those rows. The recorded row also gets ``pca_kmeans_twin``, the accuracy on the
    noise-free spikes: what the clusterer reaches without any noise."""
    from spikeinterface_elvisort.compression import cluster_spikes, matched_accuracy

    num_units = int(np.unique(units).size)
    recorded = next(r for r in rows if r["family"] == "input")
    labels = cluster_spikes(recorded["restored"], "pca_kmeans", num_units)
    recorded["pca_kmeans_after"] = matched_accuracy(units, labels)
    labels = cluster_spikes(recorded["test"].twin, "pca_kmeans", num_units)
    recorded["pca_kmeans_twin"] = matched_accuracy(units, labels)
    for family in {r["family"] for r in rows} - {"input"}:
        group = [r for r in rows if r["family"] == family and r["ratio"]]
        points = envelope([(r["ratio"], r["sndr_twin_db"]) for r in group])
        for row in group:
            if (row["ratio"], row["sndr_twin_db"]) in points:
                labels = cluster_spikes(row["restored"], "pca_kmeans", num_units)
                row["pca_kmeans_after"] = matched_accuracy(units, labels)


def summarise(rows, name, protocol, units):
    """Per candidate (each family's first setting): the targets, and the sorting accuracy after the round trip
    (with ``pca_kmeans_twin`` when :func:`sort_envelopes` has scored the rows)."""
    from spikeinterface_elvisort.compression import sorting_change

    recorded = next(r for r in rows if r["family"] == "input")
    test = recorded["test"]
    summaries = []
    for row in rows:
        if not row.get("candidate"):
            continue
        best = best_baseline(rows, row["sndr_twin_db"])
        change = sorting_change(test.noisy, row["restored"], units)
        summaries.append(
            {
                "recording": name,
                "protocol": protocol,
                "method": f"{row['family']} {row['setting']}",
                "sndr_twin_db": row["sndr_twin_db"],
                "recorded_sndr_twin_db": recorded["sndr_twin_db"],
                "sndr_db": row["sndr_db"],
                "ratio": row["ratio"],
                "coded_ratio": row["coded_ratio"],
                "best_baseline": f"{best['family']} {best['setting']}" if best else "none reaches it",
                "best_baseline_ratio": best["ratio"] if best else None,
                "gain": row["ratio"] / best["ratio"] if best else None,
                "closer_than_recorded": row["sndr_twin_db"] >= recorded["sndr_twin_db"],
                "pca_kmeans_before": change["pca_kmeans"]["before"],
                "pca_kmeans_twin": recorded.get("pca_kmeans_twin"),
                "pca_kmeans_after": change["pca_kmeans"]["after"],
                "gmm_bic_before": change["gmm_bic"]["before"],
                "gmm_bic_after": change["gmm_bic"]["after"],
            }
        )
    return summaries


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", nargs="+", default=DEFAULT_RECORDINGS, help="names in --folder, or 'all'")
    parser.add_argument("--folder", type=Path, default=MEAREC_FOLDER)
    parser.add_argument(
        "--cross-fit", default=None,
        help="what the cross protocol fits on: a recording name in --folder or the path of a MEArec .h5 (with its "
        "_noisefree twin beside it); default: CROSS's pairs of the dev recordings",
    )
    parser.add_argument("--protocols", nargs="+", default=["half", "cross"], choices=["half", "cross"])
    parser.add_argument("--vq", nargs="*", default=["2:64", "1:16"],
                        help="autoencoder settings n_features:codebook_size[,name=value...] (AutoencoderCompressor "
                        "arguments)")
    parser.add_argument(
        "--adaptive", nargs="*", default=[""], help="adaptive codebook settings, e.g. '' (default) 'match_db=3.0'"
    )
    parser.add_argument("--epochs", type=int, default=None,
                        help="autoencoder epochs (default: AutoencoderCompressor's)")
    parser.add_argument("--num-channels", type=int, default=4)
    parser.add_argument("--ms-before", type=float, default=0.5)
    parser.add_argument("--ms-after", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results_compression"))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from spikeinterface_elvisort.benchmarks.runner import report_header

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(CROSS) if args.recordings == ["all"] else args.recordings

    def locate(name):  # (folder, name) of a name in --folder or of a path to an .h5
        return (Path(name).parent, Path(name).stem) if name.endswith(".h5") else (args.folder, name)

    def cross_fit(name):
        return args.cross_fit or CROSS.get(name)

    if "cross" in args.protocols and any(cross_fit(n) is None for n in names):
        sys.exit(f"no cross-protocol pair for {[n for n in names if cross_fit(n) is None]}: pass --cross-fit")
    needed = names + [cross_fit(n) for n in names if "cross" in args.protocols]
    missing = [n for n in needed if not (locate(n)[0] / f"{locate(n)[1]}.h5").is_file()]
    if missing:
        sys.exit(f"recordings {missing} not found (--folder {args.folder}); run "
                 "../shared/data/mearec/make_recordings.py or benchmarks/make_validation_recordings.py")
    window = (args.num_channels, args.ms_before, args.ms_after)
    cache = {}

    def spikes(name):
        if name not in cache:
            noisy, twin, units = load_spikes(*locate(name), *window)
            order = np.random.default_rng(args.seed).permutation(len(noisy))
            cache[name] = noisy, twin, units, np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
        return cache[name]

    all_rows, summaries = [], []
    for name in names:
        noisy, twin, units, train, test_index = spikes(name)
        test = Test(noisy[test_index], twin[test_index], unit_means(noisy, units)[test_index], units[test_index])
        recording_rows = []
        for protocol in args.protocols:
            fit_name = name if protocol == "half" else cross_fit(name)
            fit = spikes(fit_name)[0][spikes(fit_name)[3]]
            print(f"# {name}, {protocol}: fitted on {len(fit)} spikes of {locate(fit_name)[1]}", flush=True)
            rows = [test.row("input", "recorded spike, uncompressed", test.noisy, test=test)]
            rows += baseline_rows(fit, test)
            rows += adaptive_rows(fit, test, args.adaptive)
            rows += autoencoder_rows(fit, test, args.vq, args.epochs, args.seed, args.verbose)
            sort_envelopes(rows, test.units)
            summaries += summarise(rows, name, protocol, test.units)
            for row in rows:
                row.update(recording=name, protocol=protocol, fitted_on=locate(fit_name)[1])
                del row["restored"]  # hundreds of restored test halves: keep the scores only
            recording_rows += rows
        plot(recording_rows, f"{name}: test half, {len(test.noisy)} spikes, {noisy.shape[2]} channels x "
             f"{noisy.shape[1]} samples", args.out / f"rate_quality_{name}.png")
        all_rows += recording_rows

    table = pd.DataFrame([{k: v for k, v in r.items() if k != "test"} for r in all_rows])
    table.to_csv(args.out / "results.csv", index=False)
    summary = pd.DataFrame(summaries)
    header = report_header() + f"torch threads {args.threads}, CUDA: {torch.cuda.is_available()}\n"
    markdown = header + "\n## Each method's first setting against the best baseline at its SNDR (twin)\n\n"
    markdown += summary.round(3).to_markdown(index=False) + "\n\n## Envelopes (SNDR against the twin)\n\n"
    for (name, protocol, family), group in table.groupby(["recording", "protocol", "family"]):
        points = envelope(list(zip(group["ratio"], group["sndr_twin_db"])))
        kept = group[[(r, s) in points for r, s in zip(group["ratio"], group["sndr_twin_db"])]].sort_values("ratio")
        columns = ["recording", "protocol", "family", "setting", "sndr_twin_db", "sndr_db", "ratio", "coded_ratio",
                   "pca_kmeans_after"]
        markdown += kept[columns].round(2).to_markdown(index=False) + "\n\n"
    (args.out / "results.md").write_text(markdown)
    (args.out / "summary.json").write_text(json.dumps(summaries, indent=1, default=float))
    print(summary.round(3).to_markdown(index=False))


if __name__ == "__main__":
    main()
