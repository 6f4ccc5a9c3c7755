"""Spike waveform compression with a vector-quantised compressive autoencoder (seed 004: Wu et al. 2018).

The on-implant part (encoder and quantiser) turns a spike into a few codeword indices, an entropy coder turns
those into bytes, the decoder restores the waveform. Modules, one concept each:

* ``model``: the ResNeXt encoder and transposed-convolution decoder (``CompressiveAutoencoder``)
* ``quantiser``: the vector quantiser (``VectorQuantiser``) and its residual chain (``ResidualVectorQuantiser``)
* ``compressor``: ``SpikeCompressor``, the scikit-learn style front (fit, encode, decode, save, load)
* ``training``: the joint epochs (warm-up, k-means codebook start, restarts) and the decoder-only epochs
* ``entropy_coding``: ``StaticEntropyCoder``, a range coder with tables learned on training data
* ``metrics``: SNDR, entropy-based compression ratio, parameter and multiply-accumulate counts
* ``adaptive``: ``AdaptiveCodebookCompressor``, a codebook of unit shapes learned from the spike stream
* ``baselines``: PCA, DCT and DWT compressors (seed and strong versions) and k-means (``KMeansCompressor``)
* ``inputs``: validation of the spike arrays
* ``sorting``: sorting accuracy before and after a compression round trip
* ``spikeinterface_io``: cut spikes from SpikeInterface objects, compress them into one file, restore them
"""

from .adaptive import AdaptiveCodebookCompressor
from .baselines import DCTCompressor, DWTCompressor, KMeansCompressor, PCACompressor
from .compressor import SpikeCompressor
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
