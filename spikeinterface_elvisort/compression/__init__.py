"""Spike waveform compression: ``SpikeCompressor``, the best codec measured (an adaptive codebook of unit shapes
learned from the spike stream), and the vector-quantised compressive autoencoder of seed 004 (Wu et al. 2018,
``AutoencoderCompressor``), with the baselines they are measured against.

Modules, one concept each:

* ``model``: the ResNeXt encoder and transposed-convolution decoder (``CompressiveAutoencoder``)
* ``quantiser``: the vector quantiser (``VectorQuantiser``) and its residual chain (``ResidualVectorQuantiser``)
* ``autoencoder``: ``AutoencoderCompressor``, the autoencoder's scikit-learn style front (fit, encode, decode, save)
* ``training``: the joint epochs (warm-up, k-means codebook start, restarts) and the decoder-only epochs
* ``entropy_coding``: ``StaticEntropyCoder``, a range coder with tables learned on training data
* ``metrics``: SNDR, entropy-based compression ratio, parameter and multiply-accumulate counts
* ``adaptive``: ``AdaptiveCodebookCompressor`` (``SpikeCompressor``), a codebook of unit shapes learned from the
  spike stream
* ``baselines``: PCA, DCT and DWT compressors (seed and strong versions) and k-means (``KMeansCompressor``)
* ``inputs``: validation of the spike arrays
* ``sorting``: sorting accuracy before and after a compression round trip
* ``spikeinterface_io``: cut spikes from SpikeInterface objects, compress them into one file, restore them
"""

from .adaptive import AdaptiveCodebookCompressor, SpikeCompressor
from .autoencoder import AutoencoderCompressor
from .baselines import DCTCompressor, DWTCompressor, KMeansCompressor, PCACompressor
from .entropy_coding import StaticEntropyCoder
from .metrics import code_entropy, compression_ratio, count_macs, count_parameters, entropy_bits, sndr
from .model import CompressiveAutoencoder, CompressorConfig
from .quantiser import ResidualVectorQuantiser, VectorQuantiser
from .sorting import cluster_spikes, matched_accuracy, sorting_change
from .spikeinterface_io import (
    compress_peaks,
    compress_sorting_analyzer,
    extract_spike_waveforms,
    load_compressed,
    save_compressed,
)

__all__ = [
    "SpikeCompressor",
    "AdaptiveCodebookCompressor",
    "AutoencoderCompressor",
    "KMeansCompressor",
    "CompressiveAutoencoder",
    "CompressorConfig",
    "VectorQuantiser",
    "ResidualVectorQuantiser",
    "StaticEntropyCoder",
    "PCACompressor",
    "DCTCompressor",
    "DWTCompressor",
    "sndr",
    "entropy_bits",
    "code_entropy",
    "compression_ratio",
    "count_parameters",
    "count_macs",
    "cluster_spikes",
    "matched_accuracy",
    "sorting_change",
    "extract_spike_waveforms",
    "compress_sorting_analyzer",
    "compress_peaks",
    "save_compressed",
    "load_compressed",
]
