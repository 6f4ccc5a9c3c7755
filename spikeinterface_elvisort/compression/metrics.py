"""Rate and quality of a spike compressor: entropy-based compression ratio (seed 004 eq. 5), SNDR (eq. 8), and the
size of the on-implant part (parameters, multiply-accumulates)."""

from __future__ import annotations

import numpy as np


def sndr(original: np.ndarray, reconstructed: np.ndarray) -> np.ndarray:
    """Signal to noise-and-distortion ratio of each spike, in dB (seed 004, eq. 8).

    ``20 log10(|x| / |x - x_hat|)`` with the norm over all samples and channels of one spike.

    Parameters
    ----------
    original, reconstructed : (num_spikes, num_samples, num_channels) arrays
        The reference spikes (noisy or noise-free) and their reconstructions.

    Returns
    -------
    (num_spikes,) float64
        Infinite where the reconstruction is exact.
    """
    original = np.asarray(original, dtype=np.float64)
    reconstructed = np.asarray(reconstructed, dtype=np.float64)
    if original.shape != reconstructed.shape:
        raise ValueError(f"original {original.shape} and reconstructed {reconstructed.shape} must have the same shape")
    if original.ndim < 2:
        raise ValueError(f"expected (num_spikes, ...) arrays, got shape {original.shape}")
    signal = np.sqrt((original.reshape(len(original), -1) ** 2).sum(axis=1))
    error = np.sqrt(((original - reconstructed).reshape(len(original), -1) ** 2).sum(axis=1))
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(signal / error)


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of a symbol stream, in bits per symbol."""
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        return 0.0
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def code_entropy(codes: np.ndarray, per_position: bool = True) -> float:
    """Entropy of code indices in bits per row (one row = one coded input).

    Parameters
    ----------
    codes : (num_rows, num_positions) int array
        E.g. codeword indices (num_inputs, n_features) or quantised coefficients (num_spikes, num_coefficients).
    per_position : bool, default: True
        True: the sum over positions of each position's entropy (one probability table per position, as the entropy
        coder uses). False: ``num_positions`` times the entropy of all indices pooled (the seed's reading of eq. 5,
        one table; never smaller).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (num_rows, num_positions), got shape {codes.shape}")
    if per_position:
        return float(sum(entropy_bits(codes[:, j]) for j in range(codes.shape[1])))
    return codes.shape[1] * entropy_bits(codes)


def compression_ratio(num_samples: int, num_channels: int, bits_per_spike: float, bits_per_sample: int = 16) -> float:
    """Raw bits of a spike over its coded bits: ``num_samples * num_channels * W / bits_per_spike``.

    With ``bits_per_spike = N_feat * H`` (codes per spike times the entropy per code) this is the seed's eq. 5 with
    log2 K replaced by the entropy; with ``8 * bytes_written / num_spikes`` it is the ratio a coder achieved.
    """
    if bits_per_spike <= 0:
        return float("inf")
    return num_samples * num_channels * bits_per_sample / bits_per_spike


def count_parameters(module) -> int:
    """Number of parameters (trainable or not, buffers excluded) of a torch module."""
    return int(sum(p.numel() for p in module.parameters()))


def count_macs(module, example) -> int:
    """Multiply-accumulates of one forward pass of ``module`` on ``example``, summed over its convolution, linear
    and transposed-convolution layers (normalisation, activations and pooling not counted, as in the seed).

    Parameters
    ----------
    module : torch.nn.Module
    example : torch.Tensor
        An input batch; divide the result by the batch size for a per-input count.
    """
    import torch
    from torch import nn

    total = [0]

    def hook(layer, inputs, output):
        if isinstance(layer, (nn.Conv1d, nn.ConvTranspose1d)):
            # each output element of a convolution sums in_channels / groups * kernel products
            if isinstance(layer, nn.Conv1d):
                per_output = layer.in_channels // layer.groups * layer.kernel_size[0]
                total[0] += output.numel() * per_output
            else:  # a transposed convolution scatters each input element into out_channels / groups * kernel outputs
                total[0] += inputs[0].numel() * layer.out_channels // layer.groups * layer.kernel_size[0]
        elif isinstance(layer, nn.Linear):
            total[0] += output.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if len(list(m.children())) == 0]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    return int(total[0])
