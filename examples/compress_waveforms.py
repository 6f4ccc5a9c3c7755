"""
Compress spike waveforms
========================

High-channel-count implants must cut their bandwidth before transmitting. This example:

1. generates two small ground-truth recordings with different neurons (two sessions);
2. cuts every spike on the 4 channels around its unit (spatial order);
3. fits the package's codec, :class:`~spikeinterface_elvisort.compression.SpikeCompressor` (an adaptive codebook,
   :class:`~spikeinterface_elvisort.compression.AdaptiveCodebookCompressor`), on the first session and compresses
   the second, whose neurons it learns from the stream, next to k-means and PCA fitted the same way;
4. trains the vector-quantised autoencoder of seed 004
   (:class:`~spikeinterface_elvisort.compression.AutoencoderCompressor`), a documented option;
5. compresses every spike of a ``SortingAnalyzer`` into one file and restores it.

It takes about 20 s of CPU time (a small network, few epochs); the documentation build does not execute it: run
it with ``python examples/compress_waveforms.py``.
"""

# %%
# A ground-truth recording and its spikes
# ---------------------------------------
import tempfile
from pathlib import Path

import numpy as np
import spikeinterface.full as si
import torch

from spikeinterface_elvisort.compression import (
    AutoencoderCompressor,
    KMeansCompressor,
    PCACompressor,
    SpikeCompressor,
    compress_sorting_analyzer,
    compression_ratio,
    extract_spike_waveforms,
    load_compressed,
    sndr,
)

torch.set_num_threads(1)
recording, sorting = si.generate_ground_truth_recording(
    durations=[20.0], num_channels=16, num_units=6, sampling_frequency=32000.0, seed=0
)
# every spike on the 4 channels nearest its unit's extremum channel, 0.5 ms before and 1 ms after: (n, 48, 4)
waveforms, spikes, channels = extract_spike_waveforms(recording, sorting, num_channels=4)
order = np.random.default_rng(0).permutation(len(waveforms))
train, test = waveforms[order[: len(order) // 2]], waveforms[order[len(order) // 2 :]]
print(f"{len(waveforms)} spikes of shape {waveforms.shape[1:]}; training on {len(train)}")
# another session: other neurons; its noise-free twin (same seed, no noise) holds the true spikes
session = dict(durations=[20.0], num_channels=16, num_units=6, sampling_frequency=32000.0, seed=7)
other_recording, other_sorting = si.generate_ground_truth_recording(**session)
twin_recording, _ = si.generate_ground_truth_recording(**session, noise_kwargs=dict(noise_levels=0.0))
other, other_spikes, _ = extract_spike_waveforms(other_recording, other_sorting, num_channels=4)
truth, _, _ = extract_spike_waveforms(twin_recording, peaks=other_spikes, num_channels=4)
print(f"second session: {len(other)} spikes, the recorded ones {sndr(truth, other).mean():.1f} dB from the truth")

# %%
# Compress a session with a codec fitted on another
# -------------------------------------------------
# The adaptive codec starts from a k-means codebook of the first session and learns the second session's neurons
# from its stream (spikes in time order). k-means and PCA (coefficients quantised and entropy-coded) are fitted on
# the same spikes. Fidelity: the mean SNDR against the true spikes; ratio: 16-bit samples over the bytes written.

adaptive = SpikeCompressor().fit(waveforms)
data = adaptive.compress(other)
codecs = {"adaptive codebook": (adaptive.decompress(data, len(other)), len(data))}
kmeans = KMeansCompressor((16,)).fit(waveforms)
codes = kmeans.encode(other)
codecs["k-means K=16"] = (kmeans.decode(codes), kmeans.coded_bytes(codes))
pca = PCACompressor(8, n_levels=16).fit(waveforms)
codes = pca.encode(other)
codecs["PCA m=8, 16 levels"] = (pca.decode(codes), pca.coded_bytes(codes))
for name, (restored_other, num_bytes) in codecs.items():
    print(f"{name}: {sndr(truth, restored_other).mean():.1f} dB, ratio {other.size * 16 / (8 * num_bytes):.0f}x")

# %%
# The autoencoder
# ---------------
# Two codeword indices per spike from a codebook of 64 (the codebook follows moving averages of the encoder outputs,
# and the decoder restores each codeword as the mean of its training spikes). ``width`` and ``epochs`` are reduced
# from the defaults so that the example is quick; the defaults are what the benchmark measures.

compressor = AutoencoderCompressor(
    n_features=2, codebook_size=64, width=64, epochs=8, warmup_epochs=2, decoder_epochs=5, device="auto", random_state=0
).fit(train)
codes = compressor.encode(test)  # (num_spikes, num_groups, codes_per_group) int64
restored = compressor.decode(codes)
bits = compressor.bits_per_group(codes)
print(
    f"autoencoder: mean SNDR {sndr(test, restored).mean():.1f} dB, {bits:.1f} bits per spike, "
    f"ratio {compression_ratio(48, 4, bits):.0f}x (entropy), "
    f"{compression_ratio(48, 4, 8 * len(compressor.compress(test)) / len(test)):.0f}x (bytes written)"
)
print("on-implant part:", compressor.encoder_size())

# %%
# A strong baseline
# -----------------
# PCA with its coefficients quantised and entropy-coded, as the autoencoder's indices are.

for m, levels in ((4, 16), (8, 32)):
    pca = PCACompressor(m, n_levels=levels).fit(train)
    pca_codes = pca.encode(test)
    pca_bits = pca.bits_per_spike(pca_codes)
    print(
        f"PCA m={m} levels={levels}: mean SNDR {sndr(test, pca.decode(pca_codes)).mean():.1f} dB, "
        f"ratio {compression_ratio(48, 4, pca_bits):.0f}x"
    )

# %%
# Every spike of a SortingAnalyzer in one file
# --------------------------------------------
# The file holds the entropy-coded stream, the spike times and channels, and the compressor itself, so it
# restores on its own. Without ``compressor=`` an adaptive codec is fitted on the analyzer's spikes.

analyzer = si.create_sorting_analyzer(sorting, recording, format="memory", sparse=False)
file_path = Path(tempfile.mkdtemp()) / "spikes.npz"
summary = compress_sorting_analyzer(analyzer, file_path)
print(
    f"{summary['num_spikes']} spikes: {summary['raw_bytes']} raw bytes -> {summary['payload_bytes']} bytes of codes "
    f"({summary['payload_ratio']:.0f}x); file with the compressor: {summary['file_bytes']} bytes"
)
restored_all = load_compressed(file_path)
print(
    "restored waveforms:",
    restored_all["waveforms"].shape,
    "mean SNDR",
    f"{sndr(waveforms, restored_all['waveforms']).mean():.1f} dB",
)

# %%
# Original and restored spikes
# ----------------------------
import matplotlib.pyplot as plt  # noqa: E402

figure, axes = plt.subplots(1, 4, figsize=(10, 2.5), sharey=True)
for axis, index in zip(axes, range(4)):
    axis.plot(test[index], color="0.6")
    axis.plot(restored[index], color="k", linewidth=1)
    axis.set_title(f"spike {index}", fontsize=9)
axes[0].set_ylabel("uV (4 channels overlaid)")
figure.suptitle("grey: original, black: restored by the autoencoder from 2 indices")
figure.tight_layout()
plt.show()
