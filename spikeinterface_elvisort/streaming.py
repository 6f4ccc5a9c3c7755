"""Inference on a fixed grid of blocks: the one code path behind ``ElvisortModel.sort`` and ``OnlineSorter``.

A recording (or a stream) is cut into consecutive blocks of ``block_samples`` samples, counted from the start of the
segment, and each block goes through :class:`~spikeinterface_elvisort.blocks.BlockEngine` (filter, reference,
whitening, detection, snippets, classifier), or with matching through
:class:`~spikeinterface_elvisort.block_matching.BlockMatcher` (filter, reference, whitening, template matching),
from its raw traces plus fixed margins. Because the grid and the margins do not depend on how the data arrive, a
stream cut into blocks of any size gives exactly the offline result, and a spike is reported at most one block plus
the margins after it happened.
"""

from __future__ import annotations

import numpy as np

from . import progress
from .blocks import DEFAULT_BLOCK_MS, BlockEngine, read_block

GROUP_EVENTS = 4096  # offline: blocks are labelled together once this many events are waiting


def _spike_dtype(unit_ids: np.ndarray) -> np.dtype:
    return np.dtype([("sample_index", "int64"), ("unit_id", np.asarray(unit_ids).dtype), ("channel_index", "int64"),
                     ("amplitude", "float32")])


def _to_spikes(unit_ids, samples, labels, channels, amplitudes) -> np.ndarray:
    keep = labels >= 0
    spikes = np.zeros(int(keep.sum()), dtype=_spike_dtype(unit_ids))
    spikes["sample_index"] = samples[keep]
    spikes["unit_id"] = np.asarray(unit_ids)[labels[keep]]
    spikes["channel_index"] = channels[keep]
    spikes["amplitude"] = amplitudes[keep]
    return spikes


class OnlineSorter:
    """Sort a stream of raw traces block by block with a trained model: inference only, bounded latency.

    Feed consecutive (samples x channels) blocks of any size to :meth:`process`; each call returns the spikes decided
    since the previous call. :meth:`flush` ends the stream (the last samples are treated as the end of the
    recording) and returns the rest. Internally the stream is cut into the model's fixed grid of ``block_ms``
    blocks, so the result does not depend on the block sizes given: it equals ``model.sort(recording,
    matching=matching, displacement=displacement, block_ms=block_ms)`` on the same data.

    Parameters
    ----------
    model : ElvisortModel
        From :func:`spikeinterface_elvisort.load_model`.
    block_ms : float, default: 200
        Internal block length: a spike is reported at most ``block_ms`` plus the margins (about 20 ms of filter
        margin, and with matching two template lengths) after it occurred (see :attr:`latency_ms`).
    matching : "model" | "circus-omp" | "tdc-peeler" | "none", default: "model"
        As in ``model.sort``: template matching with the saved templates (finds spikes in collisions; 8.3x real
        time at 32 channels on two cores, against 10-13x without), or "none" for detection plus classifier only.
    displacement : float or None, default: None
        With matching: how far (um, along the probe's depth) the session's units sit from where they were at
        training; the templates are moved by it. A stream cannot look ahead to estimate it: take it from
        ``model.estimate_displacement`` on a first piece of the session (or a previous ``sort``'s annotation
        ``displacement_um``).
    noise_levels : array or None
        Detection noise level per channel (after preprocessing) for the forward pass; the model's when None.
    gain_to_uV, offset_to_uV : float or array, optional
        Scale integer traces to microvolts (``traces * gain + offset``) when the model was trained in microvolts,
        as SpikeInterface does for int16 recordings with gains.
    device : str, optional
        "auto" | "cpu" | "cuda" | "cuda:N"; the model's device when None.
    n_jobs : int, default: 2
        Worker threads for the model-free part of the blocks (filter, reference, detection): the blocks that one
        call completes are processed side by side, and a single block shares its filter and median among them, as
        ``model.sort``'s offline pass does. The classifier runs in the calling thread. The spikes do not depend on
        it; 1 processes everything in the calling thread.

    Examples
    --------
    >>> sorter = OnlineSorter(load_model("elvisort_output"))
    >>> for block in blocks:                     # each (num_samples, num_channels)
    ...     spikes = sorter.process(block)       # fields sample_index, unit_id, channel_index, amplitude
    >>> spikes = sorter.flush()
    """

    def __init__(self, model, block_ms: float = DEFAULT_BLOCK_MS, noise_levels=None, gain_to_uV=None,
                 offset_to_uV=None, device=None, n_jobs: int = 2, *, matching: str = "model", displacement=None):
        from .displacement import moved_templates

        if int(n_jobs) < 1:
            raise ValueError(f"n_jobs must be >= 1; got {n_jobs}")
        method = model._matching_method(matching)
        if method != "none" and noise_levels is not None:
            raise ValueError("noise_levels sets the forward pass's detection threshold: give it with "
                             "matching='none' (matching uses the model's noise levels)")
        if isinstance(displacement, str):
            raise ValueError(f"displacement must be a number (um) or None for a stream; got {displacement!r} (estimate "
                             "it with model.estimate_displacement on a first piece of the session)")
        self.model = model
        self.engine = model._engine(block_ms=block_ms, noise_levels=noise_levels, device=device)
        self.matcher = None
        if method != "none":
            templates, _ = moved_templates(model, None, displacement)
            self.matcher = model.matcher(self.engine, method, templates)
        self.unit_ids = model.unit_ids
        self.gain = None if gain_to_uV is None else np.asarray(gain_to_uV, dtype=np.float32)
        self.offset = None if offset_to_uV is None else np.asarray(offset_to_uV, dtype=np.float32)
        # raw samples needed on each side of a block: the forward pass's, or the matching's
        self.margin = margin = self.engine.margin if self.matcher is None else self.matcher.margin
        # buffer: raw samples from (next block start - margin) on; zeros stand for the time before the stream
        self._buffer = np.zeros((margin, self.engine.num_channels), dtype=np.float32)
        self._buffer_start = -margin  # absolute sample of the buffer's first row
        self._next_block = 0
        self._received = 0
        self._done = False
        self.n_jobs = int(n_jobs)
        self._pool = None  # WorkerThreads, started on the first block (and closed by flush)

    @property
    def latency_ms(self) -> float:
        """How much data past a spike a call must have received to report it: one internal block plus the margin
        (the filter's, plus with matching the matching window of two template lengths). Measured from the end of a
        call's data, the delay is at most this plus one input block."""
        return 1000.0 * (self.engine.block_samples + self.margin) / self.engine.sampling_frequency

    @property
    def samples_received(self) -> int:
        return self._received

    def _check(self, traces) -> np.ndarray:
        traces = np.asarray(traces)
        if traces.ndim != 2 or traces.shape[1] != self.engine.num_channels:
            raise ValueError(
                f"a block must be (num_samples, num_channels) with {self.engine.num_channels} channels, the model's; "
                f"got shape {traces.shape}"
            )
        if not np.issubdtype(traces.dtype, np.number) or np.issubdtype(traces.dtype, np.complexfloating):
            raise ValueError(f"a block must hold real numbers; got dtype {traces.dtype}")
        traces = traces.astype(np.float32)  # a copy: the caller's array is never modified
        if self.gain is not None:
            traces *= self.gain
        if self.offset is not None:
            traces += self.offset
        if not np.all(np.isfinite(traces)):
            raise ValueError("the block holds NaN or Inf samples; replace them (for example with zeros) first")
        return traces

    def process(self, traces) -> np.ndarray:
        """Append a block of raw traces; return the spikes decided since the last call, in time order.

        Returns
        -------
        spikes : numpy structured array
            Fields ``sample_index`` (from the start of the stream), ``unit_id`` (the model's unit ids),
            ``channel_index`` (peak channel) and ``amplitude``.
        """
        if self._done:
            raise RuntimeError("this stream was flushed; create a new OnlineSorter for a new stream")
        traces = self._check(traces)
        self._received += traces.shape[0]
        self._buffer = np.concatenate([self._buffer, traces])
        return self._run(final=False)

    def flush(self) -> np.ndarray:
        """End the stream: sort the last blocks (samples after the end count as zeros) and return their spikes."""
        if self._done:
            return np.zeros(0, dtype=_spike_dtype(self.unit_ids))
        self._done = True
        return self._run(final=True)

    def _run(self, final: bool) -> np.ndarray:
        engine, margin = self.engine, self.margin
        ready = []  # (start, length, raw with margins) of the blocks this call completes, in order
        while self._next_block < self._received:
            start = self._next_block
            end = min(start + engine.block_samples, self._received) if final else start + engine.block_samples
            needed = end + margin
            if not final and needed > self._received:  # needed >= end: the block and its right margin
                break
            lo = start - margin - self._buffer_start
            raw = self._buffer[lo : needed - self._buffer_start]
            if raw.shape[0] < needed - start + margin:  # past the end of the stream: zeros
                raw = np.pad(raw, ((0, needed - start + margin - raw.shape[0]), (0, 0)))
            ready.append((start, end - start, raw))
            self._next_block = end
        if self.matcher is None:
            out = [_to_spikes(self.unit_ids, samples, engine.censor(samples, engine.label(snippets, channels)),
                              channels, amplitudes)
                   for samples, channels, amplitudes, snippets in self._fronts(ready)]
        else:
            out = [_to_spikes(self.unit_ids, samples, engine.censor(samples, units), channels, amplitudes)
                   for samples, units, channels, amplitudes in self._fronts(ready)]
        # keep only what the next block needs
        drop = self._next_block - margin - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start += drop
        if final:
            self.close()
        if not out:
            return np.zeros(0, dtype=_spike_dtype(self.unit_ids))
        return np.concatenate(out)

    def _fronts(self, ready):
        """The model-free part of the ready blocks (with matching: the matching), in order: side by side in the
        worker threads when there are several (not with Algorithm 1, whose scan runs from block to block), or one
        block sharing its filter and median among them."""
        engine = self.engine
        front = engine.front if self.matcher is None else self.matcher.match
        if self.n_jobs > 1 and ready and self._pool is None:
            from .blocks import WorkerThreads

            self._pool = WorkerThreads(self.n_jobs)
        side_by_side = self.matcher is not None or engine.detection != "algorithm1"
        if self._pool is not None and len(ready) > 1 and side_by_side:
            return self._pool.map(lambda block: front(block[2], block[0], block[1]), ready)
        return (front(raw, start, length, pool=self._pool) for start, length, raw in ready)

    def close(self) -> None:
        """Stop the worker threads (:meth:`flush` does; a stream that is abandoned can call it)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def scale_to_uV(recording) -> bool:
    """Whether the raw traces are read in microvolts: the rule of ``preprocessing.preprocess`` (integer traces with
    gains are filtered in microvolts)."""
    return recording.get_dtype().kind in "iu" and recording.has_scaleable_traces()


def sort_on_grid(engine: BlockEngine, matcher, recording, unit_ids, *, n_jobs: int = 1, verbose: bool = False):
    """Every segment of ``recording`` on the engine's block grid: the forward pass (``matcher`` None,
    :func:`sort_segment`) or template matching (a :class:`~spikeinterface_elvisort.block_matching.BlockMatcher`,
    :func:`~spikeinterface_elvisort.block_matching.match_segment`); returns the sorting of ``unit_ids``."""
    from .block_matching import match_segment
    from .results import to_sorting

    scale = scale_to_uV(recording)
    parts = []
    for segment_index in range(recording.get_num_segments()):
        if matcher is None:
            samples, labels, _, _ = sort_segment(engine, recording, segment_index, scale, num_workers=n_jobs,
                                                 progress_bar=verbose)
        else:
            samples, labels, _, _ = match_segment(matcher, recording, segment_index, scale, num_workers=n_jobs,
                                                  progress_bar=verbose)
        events = np.zeros(samples.size, dtype=[("sample_index", "int64"), ("segment_index", "int64")])
        events["sample_index"], events["segment_index"] = samples, segment_index
        parts.append((events, labels))
    events = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    return to_sorting(events, labels, unit_ids, recording.sampling_frequency, recording.get_num_segments())


def sort_segment(engine: BlockEngine, recording, segment_index: int, scale: bool, *, num_workers: int = 1,
                 progress_bar: bool = False, censor: bool = True):
    """Offline pass over one segment on the engine's block grid; returns (samples, labels, channels, amplitudes).

    Raw reads and the model-free front end run in ``num_workers`` threads (SciPy and numba release the GIL); the
    classifier labels the blocks' events in the calling thread, in time order, so the result does not depend on
    ``num_workers``. ``censor=False`` keeps duplicate spikes (every detected event keeps its label).
    """
    engine.reset()
    num_samples = recording.get_num_samples(segment_index)
    starts = list(range(0, num_samples, engine.block_samples))

    def read(start):
        end = min(start + engine.block_samples, num_samples)
        return engine.front(read_block(recording, segment_index, start, end, engine.margin, scale), start, end - start)

    # algorithm 1 carries its scan state from block to block: its front end runs in order, in this thread
    threaded = num_workers > 1 and engine.detection != "algorithm1"
    fronts = _fronts(read, starts, num_workers if threaded else 0)
    results, waiting = [], []
    bar = progress.bar(total=len(starts), name="sorting blocks", verbose=progress_bar, unit="block")
    for index, front in enumerate(fronts):
        waiting.append(front)
        bar.update()
        if sum(f[0].size for f in waiting) >= GROUP_EVENTS or index == len(starts) - 1:
            samples, channels, amplitudes, snippets = (np.concatenate(parts) for parts in zip(*waiting))
            labels = engine.label(snippets, channels)
            if censor:
                labels = engine.censor(samples, labels)
            results.append((samples, labels, channels, amplitudes))
            waiting = []
    bar.close()
    if not results:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0, dtype=np.float32)
    return tuple(np.concatenate(parts) for parts in zip(*results))


def _fronts(read, starts, num_workers):
    """``read(start)`` for every start, in order; with workers, a few blocks ahead in threads."""
    from concurrent.futures import ThreadPoolExecutor

    if not num_workers:
        for start in starts:
            yield read(start)
        return
    with ThreadPoolExecutor(num_workers) as pool:
        yield from in_order(pool, read, starts, ahead=2 * num_workers)


def in_order(pool, work, arguments, *, ahead: int):
    """``work(argument)`` for every argument, computed in ``pool`` (an executor) at most ``ahead`` at a time, and
    returned in the arguments' order."""
    from collections import deque

    pending = deque()
    for argument in arguments:
        pending.append(pool.submit(work, argument))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
