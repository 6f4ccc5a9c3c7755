"""
Compress spike waveforms with the vector-quantised autoencoder
==============================================================

High-channel-count implants must cut their bandwidth before transmitting. Seed 004 (Wu et al. 2018) compresses
each spike into a few codeword indices of a learned codebook. This example:

1. generates a small ground-truth recording;
2. cuts every spike on the 4 channels around its unit (spatial order);
3. trains a :class:`~spikeinterface_elvisort.compression.SpikeCompressor` on one half of the spikes;
4. measures SNDR and compression ratio on the other half, next to PCA with quantised, entropy-coded coefficients;
5. compresses every spike of a ``SortingAnalyzer`` into one file and restores it.

It takes about 20 s of CPU time (a small network, few epochs); the documentation build does not execute it: run
it with ``python examples/compress_waveforms.py``. The file written at the end holds the compressor too (its
decoder dominates the file size); the codes alone are the "bytes of codes".
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

# %%
# Train the compressor
# --------------------
# Two codeword indices per spike from a codebook of 64. ``width`` and ``epochs`` are reduced from the defaults so
# that the example is quick; the defaults are what the benchmark measures.

compressor = SpikeCompressor(
    n_features=2, codebook_size=64, width=64, epochs=8, warmup_epochs=2, decoder_epochs=5, device="auto", random_state=0
).fit(train)
codes = compressor.encode(test)  # (num_spikes, num_groups, n_features) int64
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
# The file holds the entropy-coded indices, the spike times and channels, and the compressor itself, so it
# restores on its own.

analyzer = si.create_sorting_analyzer(sorting, recording, format="memory", sparse=False)
file_path = Path(tempfile.mkdtemp()) / "spikes.npz"
summary = compress_sorting_analyzer(analyzer, file_path, compressor=compressor)
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
figure.suptitle("grey: original, black: restored from 2 indices")
figure.tight_layout()
plt.show()
