"""NumPy stand-ins for the numba kernels SpikeInterface's auto-merge compiles in every new process.

SpikeInterface jit-compiles these kernels with ``cache=False``, so each sorter process spends seconds compiling
them (about 3 s of a 35 s run on the 2-core benchmark machine) to count the spikes of a few dozen units, which
NumPy does in milliseconds. :func:`numpy_kernels` swaps them for NumPy versions that give the same numbers, for
the duration of a ``with`` block, and puts the originals back afterwards. Where SpikeInterface no longer has one
of them (another version), that one is left as it is: slower, never wrong.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager

import numpy as np

# beyond this many units, SpikeInterface's compiled (parallel) template similarity pays back its compilation time
NUMPY_SIMILARITY_MAX_UNITS = 200


def border_probabilities(max_time: float) -> tuple[int, int, float, float]:
    """SpikeInterface's ``_get_border_probabilities``: the integer borders around ``max_time`` (samples) and the
    probabilities that two spikes that far apart are closer than ``max_time``."""
    border_high = math.ceil(max_time)
    border_low = math.floor(max_time)
    p_high = 0.5 * (max_time - border_high + 1) ** 2
    p_low = 0.5 * (1 - (max_time - border_low) ** 2) + (max_time - border_low)
    if border_low == 0:
        p_low -= 0.5 * (-max_time + 1) ** 2
    return border_low, border_high, p_low, p_high


def _pairs_within(spike_train: np.ndarray, lag: int) -> int:
    """Pairs i < j of a sorted spike train with ``train[j] - train[i] <= lag``."""
    if lag < 0 or spike_train.size < 2:
        return 0
    ends = np.searchsorted(spike_train, spike_train + lag, side="right")
    return int((ends - np.arange(1, spike_train.size + 1)).sum())


def _coincidences_within(train1: np.ndarray, train2: np.ndarray, lag: int) -> int:
    """Pairs (i, j) of two sorted spike trains with ``|train1[i] - train2[j]| <= lag``."""
    if lag < 0 or train1.size == 0 or train2.size == 0:
        return 0
    ends = np.searchsorted(train2, train1 + lag, side="right")
    starts = np.searchsorted(train2, train1 - lag, side="left")
    return int((ends - starts).sum())


def _weighted_count(within, max_time: float) -> float:
    """The border-weighted pair count of SpikeInterface's kernels, from ``within(lag)``, the number of pairs at
    most ``lag`` samples apart: pairs at the high border weigh p_high, at the low border p_low, closer ones 1."""
    border_low, border_high, p_low, p_high = border_probabilities(max_time)
    high = within(border_high) - within(border_high - 1)
    if border_low == border_high:  # an integer max_time: its pairs count at the high border
        low, closer = 0, within(border_high - 1)
    else:
        low, closer = within(border_low) - within(border_low - 1), within(border_low - 1)
    return closer + p_high * high + p_low * low


def compute_nb_violations(spike_train, max_time) -> float:
    """SpikeInterface's ``auto_merge.compute_nb_violations``: the border-weighted number of spike pairs of one
    sorted spike train closer than ``max_time`` samples."""
    if max_time <= 0.0:
        return 0.0
    spike_train = np.asarray(spike_train, dtype=np.int64)
    return _weighted_count(lambda lag: _pairs_within(spike_train, lag), max_time)


def compute_nb_coincidence(spike_train1, spike_train2, max_time) -> float:
    """SpikeInterface's ``auto_merge.compute_nb_coincidence``: the border-weighted number of spike pairs of two
    sorted spike trains closer than ``max_time`` samples."""
    if max_time <= 0:
        return 0.0
    train1 = np.asarray(spike_train1, dtype=np.int64)
    train2 = np.asarray(spike_train2, dtype=np.int64)
    return _weighted_count(lambda lag: _coincidences_within(train1, train2, lag), max_time)


def compute_rp_violations(spike_train, t_c, t_r) -> int:
    """SpikeInterface's ``misc_metrics._compute_rp_violations_numba``: the number of spike pairs of one sorted
    spike train at most ``t_r`` samples apart (its ``t_c`` is unused there too)."""
    return _pairs_within(np.asarray(spike_train, dtype=np.int64), int(t_r))


@contextmanager
def _patched(module, name, replacement):
    original = getattr(module, name, None)
    if original is None:
        yield
        return
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextmanager
def numpy_kernels(num_units: int):
    """Within the block, SpikeInterface's auto-merge and the analyzer steps it runs use NumPy instead of numba
    kernels compiled on the spot: spike-vector reordering, the refractory-period and cross-contamination counts,
    and (up to ``NUMPY_SIMILARITY_MAX_UNITS`` units, ``num_units``) the template similarity. The numbers are the
    same; the originals come back when the block ends, whatever happens inside it."""
    from spikeinterface.core import sorting_tools
    from spikeinterface.curation import auto_merge
    from spikeinterface.metrics.quality import misc_metrics
    from spikeinterface.postprocessing import template_similarity

    with ExitStack() as stack:
        # SpikeInterface's own NumPy fallbacks (a stable argsort instead of a counting sort)
        stack.enter_context(_patched(sorting_tools, "HAVE_NUMBA", False))
        stack.enter_context(_patched(auto_merge, "compute_nb_violations", compute_nb_violations))
        stack.enter_context(_patched(auto_merge, "compute_nb_coincidence", compute_nb_coincidence))
        stack.enter_context(_patched(misc_metrics, "_compute_rp_violations_numba", compute_rp_violations))
        numpy_similarity = getattr(template_similarity, "_compute_similarity_matrix_numpy", None)
        if numpy_similarity is not None and num_units <= NUMPY_SIMILARITY_MAX_UNITS:
            # (the numba one is parallel and not cached: 20-40 s of compilation to compare a few dozen templates
            # that NumPy compares in a tenth of a second; the two agree within 1e-6)
            stack.enter_context(_patched(template_similarity, "_compute_similarity_matrix", numpy_similarity))
        yield
