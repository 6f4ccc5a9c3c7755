"""Template matching on the fixed grid of blocks, which ``ElvisortModel.sort`` (``pipeline="blocks"``, the default)
and ``OnlineSorter`` share.

Each block of the grid (:mod:`~spikeinterface_elvisort.streaming`) is filtered, referenced and whitened from its raw
traces plus a fixed margin, as the block engine does, and SpikeInterface's matching node (circus-omp or tdc-peeler)
finds the saved units' spikes in it, with its own margin of preprocessed samples on each side. A block's spikes
depend only on its raw traces and margins, so a stream cut into blocks of any size gives the offline result on the
same grid exactly. The duplicate rule of a full run (the second of two spikes of a unit closer than
``duplicate_ms`` goes) then runs in time order, block after block.
"""

from __future__ import annotations

import numpy as np

from . import progress
from .blocks import read_block

MATCHING_METHODS = ("circus-omp", "tdc-peeler")


class BlockMatcher:
    """Raw traces of one block (with :attr:`margin` samples on each side) -> the spikes of the saved units in it.

    Parameters
    ----------
    engine : BlockEngine
        Filter, reference and whitening of the model (its duplicate censor is used too).
    templates : (num_units, num_samples, num_channels) array
        The units' templates on the whitened traces (the model's, or moved ones), full probe.
    nbefore : int
        Samples of a template before its peak.
    noise_levels : (num_channels,) array
        Noise of the whitened traces: sparsifies the templates (and tdc-peeler's threshold).
    method : "circus-omp" | "tdc-peeler"
    """

    def __init__(self, engine, templates, *, nbefore: int, noise_levels, method: str = "circus-omp"):
        from spikeinterface.sortingcomponents.matching.method_list import matching_methods

        from .cleanup import matching_templates

        if method not in MATCHING_METHODS:
            raise ValueError(f"method must be one of {list(MATCHING_METHODS)}; got {method!r}")
        self.engine = engine
        self.method = method
        noise_levels = np.asarray(noise_levels, dtype=np.float32)
        # the matching nodes read the probe and the sampling rate from a recording: one of zeros with the model's
        geometry = geometry_recording(engine.sampling_frequency, engine.locations)
        sparse, kept = matching_templates(np.asarray(templates, dtype=np.float32),
                                          sampling_frequency=engine.sampling_frequency, nbefore=int(nbefore),
                                          channel_ids=geometry.channel_ids, probe=geometry.get_probe(),
                                          noise_levels=noise_levels)
        self.units = np.flatnonzero(kept)  # the model's unit index of each matched template
        self.node = None
        if self.units.size:
            kwargs = {"noise_levels": noise_levels} if method == "tdc-peeler" else {"shared_memory": False}
            self.node = matching_methods[method](geometry, sparse, **kwargs)
            if hasattr(self.node, "_push_to_torch"):  # circus-omp's lazy set-up, done once (not in the threads)
                self.node._push_to_torch()
        self.node_margin = self.node.get_margin() if self.node is not None else 0
        self.margin = engine.filter_margin + self.node_margin  # raw samples needed on each side of a block

    def match(self, raw: np.ndarray, start: int, length: int, pool=None):
        """The spikes of block [start, start + length) from its raw traces with :attr:`margin` on each side:
        (samples (absolute), model unit indices, peak channels, amplitudes), by sample then unit."""
        if self.node is None:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, np.zeros(0, dtype=np.float32)
        traces = self.engine.whiten(self.engine.reference(raw, pool))  # node_margin on each side
        (spikes,) = self.node.compute(traces, start, start + length, 0, self.node_margin)
        samples = spikes["sample_index"].astype(np.int64) - self.node_margin + start
        units = self.units[spikes["cluster_index"]]
        order = np.lexsort((units, samples))
        return (samples[order], units[order].astype(np.int64), spikes["channel_index"][order].astype(np.int64),
                spikes["amplitude"][order].astype(np.float32))


def match_segment(matcher: BlockMatcher, recording, segment_index: int, scale: bool, *, num_workers: int = 1,
                  progress_bar: bool = False):
    """Matching over one segment on the engine's block grid; returns (samples, units, channels, amplitudes) of the
    spikes the duplicate rule keeps, in time order.

    Blocks are read and matched in ``num_workers`` forked worker processes where forking is safe (Linux, not inside
    a daemonic process), else threads: the matching picks spikes in a Python loop that holds the GIL, so threads
    take turns on one core (120 s of 32 channels on two cores: 13.9 s in threads). The duplicate rule runs here, in
    time order; the result does not depend on ``num_workers``."""
    from .jobs import can_fork
    from .streaming import _fronts

    engine = matcher.engine
    engine.reset()
    num_samples = recording.get_num_samples(segment_index)
    starts = list(range(0, num_samples, engine.block_samples))

    def read(start):
        end = min(start + engine.block_samples, num_samples)
        raw = read_block(recording, segment_index, start, end, matcher.margin, scale)
        return matcher.match(raw, start, end - start)

    if num_workers > 1 and can_fork():
        matches = _in_processes(read, starts, num_workers)
    else:
        matches = _fronts(read, starts, num_workers if num_workers > 1 else 0)
    results = []
    bar = progress.bar(total=len(starts), name="matching blocks", verbose=progress_bar, unit="block")
    for samples, units, channels, amplitudes in matches:
        keep = engine.censor(samples, units) >= 0
        results.append((samples[keep], units[keep], channels[keep], amplitudes[keep]))
        bar.update()
    bar.close()
    if not results:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0, dtype=np.float32)
    return tuple(np.concatenate(parts) for parts in zip(*results))


_WORK = None  # the function the forked workers call (inherited by the fork: closures cannot be pickled)


def _call_work(argument):
    return _WORK(argument)


def _limit_worker_threads(num_threads):
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=num_threads, user_api="blas")


def _in_processes(work, arguments, num_workers: int):
    """``work(argument)`` for every argument, in order, computed in ``num_workers`` forked processes a few ahead,
    each with the BLAS threads this process has (the matrix products round the same way as here)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from threadpoolctl import threadpool_info

    from .streaming import in_order

    global _WORK
    blas = min((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1)
    _WORK = work
    try:
        with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_limit_worker_threads, initargs=(blas,)) as pool:
            yield from in_order(pool, _call_work, arguments, ahead=2 * num_workers)
    finally:
        _WORK = None


def geometry_recording(sampling_frequency: float, locations):
    """A one-sample recording of zeros with the probe's contact ``locations`` (um): what SpikeInterface's matching
    nodes and template tools read the geometry from, where there is a model and no recording (a stream)."""
    from spikeinterface.core import NumpyRecording

    locations = np.asarray(locations, dtype=np.float64)[:, :2]
    recording = NumpyRecording([np.zeros((1, locations.shape[0]), dtype=np.float32)], float(sampling_frequency))
    recording.set_dummy_probe_from_locations(locations)
    return recording
