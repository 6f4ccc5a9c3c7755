"""Inference on a fixed grid of blocks: the one code path behind ``ElvisortModel.sort`` and ``OnlineSorter``.

A recording (or a stream) is cut into consecutive blocks of ``block_samples`` samples, counted from the start of
the segment. Each block is processed from the raw traces of the block plus fixed margins (zeros outside the
recording): band-pass filter (SpikeInterface's Butterworth design, forward-backward), common median reference,
whitening with the matrix learned at training, peak detection (on the traces before whitening, as the training run
detected, unless it ran with ``detect_before_whitening=False``), snippets of the whitened traces, and one batched
classifier pass. Because the grid and the margins do not depend on how the data arrive, a stream cut into blocks of
any size gives exactly the offline result, and a spike is reported at most one block plus the margins after it
happened.
"""

from __future__ import annotations

import numpy as np

from . import progress

DEFAULT_BLOCK_MS = 200.0
LABEL_BATCH = 128  # events per classifier call (padded): fixed, so that labels do not depend on the grouping
GROUP_EVENTS = 4096  # offline: blocks are labelled together once this many events are waiting


class BlockEngine:
    """Raw traces of one block (with margins) -> the block's spikes; plus the duplicate censor carried across blocks.

    Parameters
    ----------
    model : BetaVAE
        Trained model with a classifier branch (the last class is the non-spike class).
    settings : ModelSettings or dict
        The settings saved with the model (:class:`~spikeinterface_elvisort.results.ModelSettings`, or the dict of
        a loaded ``model.pt``).
    device : torch.device
    block_ms : float
        Block length; latency of a stream is at most one block plus the margins.
    noise_levels : array or None
        Noise level per channel of the traces events are detected on (see :meth:`detection_traces`), for the
        detection threshold; the model's when None.
    """

    def __init__(self, model, settings, device, block_ms: float = DEFAULT_BLOCK_MS, noise_levels=None):
        from scipy.signal import iirfilter
        from spikeinterface.preprocessing.filter import adjust_margin_ms_for_highpass

        from .results import ModelSettings
        from .snippets import channel_neighbours

        if not isinstance(settings, ModelSettings):  # a checkpoint's dict
            settings = ModelSettings.from_checkpoint(settings)
        params = settings.params
        fs = float(settings.sampling_frequency)
        self.model = model.to(device).eval()
        self.device = device
        self.params = params
        self.sampling_frequency = fs
        self.nbefore, self.nafter = int(settings.nbefore), int(settings.nafter)
        self.locations = np.asarray(settings.channel_locations, dtype=np.float64)[:, :2]
        self.num_channels = self.locations.shape[0]
        self.neighbours = channel_neighbours(self.locations, params["snippet_channels"])
        self.block_samples = max(int(round(block_ms * fs / 1000.0)), 1)
        whitening = settings.whitening
        self.W = None if not whitening else np.asarray(whitening["W"], dtype=np.float32)
        self.M = None if not whitening or whitening.get("M") is None else np.asarray(whitening["M"], dtype=np.float32)
        # models saved with detect_before_whitening carry the noise levels of the unwhitened traces; older models
        # (and models without whitening) detect on the preprocessed traces
        detection_noise_levels = settings.detection_noise_levels
        self.detect_before_whitening = self.W is not None and detection_noise_levels is not None
        if noise_levels is None:
            noise_levels = detection_noise_levels if self.detect_before_whitening else settings.noise_levels
        self.noise_levels = np.asarray(noise_levels, "float32")
        if self.noise_levels.shape != (self.num_channels,):
            raise ValueError(f"noise_levels must have one value per channel ({self.num_channels})")

        self.filter = params["apply_preprocessing"]
        if self.filter:
            freq_max = min(params["freq_max"], 0.45 * fs)
            self.sos = iirfilter(5, [params["freq_min"], freq_max], btype="bandpass", ftype="butter", output="sos", fs=fs)
            self.filter_margin = int(adjust_margin_ms_for_highpass(params["freq_min"]) * fs / 1000.0)
        else:
            self.filter_margin = 0
        self.common_reference = self.filter and params["common_reference"] and self.num_channels > 1

        self.detection = params["detection_method"]
        self.peak_sign = params["peak_sign"]
        self.thresholds = (self.noise_levels * params["detect_threshold"]).astype(np.float32)
        self.sweep = int(params["detect_exclude_sweep_ms"] * fs / 1000.0)
        distances = np.linalg.norm(self.locations[:, None] - self.locations[None, :], axis=2)
        self.neighbours_mask = distances <= params["detect_radius_um"]
        self.span = self.nbefore + self.nafter
        # samples of preprocessed traces needed around a block: snippets, detection sweep, and algorithm 1's window
        # (an event opened in the block may be centred up to half a snippet after it)
        self.inner_margin = max(self.nbefore, self.nafter) + self.span // 2 + self.sweep + 2
        self.margin = self.inner_margin + self.filter_margin  # raw samples needed on each side of a block
        self.censor_samples = max(int(round(params["duplicate_ms"] * fs / 1000.0)), 1)
        self.batch_size = LABEL_BATCH
        self.reset()

    def reset(self) -> None:
        """Forget the state carried across blocks (start of a new segment or stream)."""
        self.last_kept = {}  # unit index -> sample of its last kept spike (duplicate censor)
        self.next_free = -1  # algorithm 1: the scan resumes after this sample

    # -- one block -----------------------------------------------------------------------------------------------
    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """Raw block with ``margin`` samples on each side -> preprocessed block with ``inner_margin`` on each side."""
        return self.whiten(self.reference(raw))

    def detection_traces(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(traces events are detected on, preprocessed traces) of a raw block: the filtered, referenced traces
        before whitening when the model was trained so, else the preprocessed ones twice."""
        referenced = self.reference(raw)
        traces = self.whiten(referenced)
        return (referenced if self.detect_before_whitening else traces), traces

    def whiten(self, traces: np.ndarray) -> np.ndarray:
        """The whitening learned at training (no-op without it)."""
        if self.W is not None:
            traces = (traces - self.M) @ self.W if self.M is not None else traces @ self.W
        return np.ascontiguousarray(traces, dtype=np.float32)

    def reference(self, raw: np.ndarray) -> np.ndarray:
        """Band-pass filter and common median reference, without whitening; ``inner_margin`` on each side."""
        from scipy.signal import sosfiltfilt

        from .preprocessing import median_of_channels

        traces = np.asarray(raw, dtype=np.float32)
        if self.filter:
            traces = sosfiltfilt(self.sos, traces, axis=0).astype(np.float32)
            if self.filter_margin:
                traces = traces[self.filter_margin : traces.shape[0] - self.filter_margin]
        if self.common_reference:
            traces = traces - median_of_channels(traces)
        return np.ascontiguousarray(traces, dtype=np.float32)

    def detect(self, traces: np.ndarray, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Peaks of a preprocessed block whose sample lies in the block proper; returns (sample in ``traces``,
        channel), sorted by sample then channel."""
        lo, hi = self.inner_margin, self.inner_margin + length
        if self.detection == "algorithm1":
            from .detection import _signed, algorithm1_scan

            centres, self.next_free = algorithm1_scan(
                traces, self.thresholds, self.span, peak_sign=self.peak_sign, first=lo, stop=hi,
                next_free=self.next_free - start + lo,
            )
            self.next_free += start - lo
            channels = np.argmax(_signed(traces[centres], self.peak_sign), axis=1) if centres.size else centres
            return centres, channels
        from .detection import locally_exclusive_peaks

        samples, channels = locally_exclusive_peaks(
            traces, self.peak_sign, self.thresholds, self.sweep, self.neighbours_mask
        )
        inside = (samples >= lo) & (samples < hi)
        samples, channels = samples[inside], channels[inside]
        order = np.lexsort((channels, samples))
        return samples[order].astype(np.int64), channels[order].astype(np.int64)

    def snippets(self, traces: np.ndarray, samples: np.ndarray, channels: np.ndarray) -> np.ndarray:
        offsets = np.arange(-self.nbefore, self.nafter)
        rows = samples[:, None] + offsets[None, :]
        return traces[rows[:, :, None], self.neighbours[channels][:, None, :]]

    def front(self, raw: np.ndarray, start: int, length: int):
        """The model-free part of a block (thread-safe for the locally exclusive detector): returns samples
        (absolute), channels, amplitudes and snippets."""
        detection, traces = self.detection_traces(raw)
        samples, channels = self.detect(detection, start, length)
        snippets = self.snippets(traces, samples, channels)
        amplitudes = traces[samples, channels]
        return samples - self.inner_margin + start, channels, amplitudes, snippets

    def label(self, snippets: np.ndarray, channels: np.ndarray) -> np.ndarray:
        """Classifier labels (unit index, -1 for the non-spike class) of any number of events.

        The network always runs on padded batches of the same shape: on the CPU a row's result then does not
        depend on which other events share its batch, so grouping events differently (per block in a stream, many
        blocks at once offline) gives bit-identical labels.
        """
        import torch

        labels = np.empty(snippets.shape[0], dtype=np.int64)
        batch = self.batch_size
        with torch.no_grad():
            for start in range(0, snippets.shape[0], batch):
                stop = min(start + batch, snippets.shape[0])
                x = np.zeros((batch,) + snippets.shape[1:], dtype=np.float32)
                where = np.zeros((batch, 2), dtype=np.float32)
                x[: stop - start] = snippets[start:stop]
                where[: stop - start] = self.locations[channels[start:stop]]
                logits = self.model.classify(torch.from_numpy(x).to(self.device), torch.from_numpy(where).to(self.device))
                labels[start:stop] = logits[: stop - start].float().argmax(dim=1).cpu().numpy()
        labels[labels == self.model.config.num_classes - 1] = -1
        return labels

    def censor(self, samples: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Drop (label -1) the second of two spikes of a unit closer than ``duplicate_ms``; events must come in time
        order, block after block (the state carries over)."""
        labels = labels.copy()
        for position in range(samples.size):
            unit = int(labels[position])
            if unit < 0:
                continue
            if samples[position] - self.last_kept.get(unit, -(1 << 62)) < self.censor_samples:
                labels[position] = -1
            else:
                self.last_kept[unit] = int(samples[position])
        return labels


def read_block(recording, segment_index: int, start: int, end: int, margin: int, scale: bool) -> np.ndarray:
    """Raw float32 traces of samples [start - margin, end + margin) of a segment; zeros outside the segment."""
    num_samples = recording.get_num_samples(segment_index)
    lo, hi = start - margin, end + margin
    raw = recording.get_traces(segment_index=segment_index, start_frame=max(lo, 0), end_frame=min(hi, num_samples),
                               return_in_uV=scale)
    return np.pad(np.asarray(raw, dtype=np.float32), ((max(-lo, 0), max(hi - num_samples, 0)), (0, 0)))


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
    recording) and returns the rest. The result equals ``model.sort(recording, matching="none")`` on the same
    data, whatever the block sizes: internally the stream is cut into the model's fixed grid of ``block_ms`` blocks.

    Parameters
    ----------
    model : ElvisortModel
        From :func:`spikeinterface_elvisort.load_model`.
    block_ms : float, default: 200
        Internal block length: a spike is reported at most ``block_ms`` plus about 20 ms of filter margin after it
        occurred (see :attr:`latency_ms`).
    noise_levels : array or None
        Detection noise level per channel (after preprocessing); the model's when None.
    gain_to_uV, offset_to_uV : float or array, optional
        Scale integer traces to microvolts (``traces * gain + offset``) when the model was trained in microvolts,
        as SpikeInterface does for int16 recordings with gains.
    device : str, optional
        "auto" | "cpu" | "cuda" | "cuda:N"; the model's device when None.

    Examples
    --------
    >>> sorter = OnlineSorter(load_model("elvisort_output"))
    >>> for block in blocks:                     # each (num_samples, num_channels)
    ...     spikes = sorter.process(block)       # fields sample_index, unit_id, channel_index, amplitude
    >>> spikes = sorter.flush()
    """

    def __init__(self, model, block_ms: float = DEFAULT_BLOCK_MS, noise_levels=None, gain_to_uV=None,
                 offset_to_uV=None, device=None):
        self.model = model
        self.engine = model._engine(block_ms=block_ms, noise_levels=noise_levels, device=device)
        self.unit_ids = model.unit_ids
        self.gain = None if gain_to_uV is None else np.asarray(gain_to_uV, dtype=np.float32)
        self.offset = None if offset_to_uV is None else np.asarray(offset_to_uV, dtype=np.float32)
        margin = self.engine.margin
        # buffer: raw samples from (next block start - margin) on; zeros stand for the time before the stream
        self._buffer = np.zeros((margin, self.engine.num_channels), dtype=np.float32)
        self._buffer_start = -margin  # absolute sample of the buffer's first row
        self._next_block = 0
        self._received = 0
        self._done = False

    @property
    def latency_ms(self) -> float:
        """How much data past a spike a call must have received to report it: one internal block plus the margin.
        Measured from the end of a call's data, the delay is at most this plus one input block."""
        return 1000.0 * (self.engine.block_samples + self.engine.margin) / self.engine.sampling_frequency

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
        engine = self.engine
        out = []
        while self._next_block < self._received:
            start = self._next_block
            end = min(start + engine.block_samples, self._received) if final else start + engine.block_samples
            needed = end + engine.margin
            if not final and needed > self._received:  # needed >= end: the block and its right margin
                break
            lo = start - engine.margin - self._buffer_start
            raw = self._buffer[lo : needed - self._buffer_start]
            if raw.shape[0] < needed - start + engine.margin:  # past the end of the stream: zeros
                raw = np.pad(raw, ((0, needed - start + engine.margin - raw.shape[0]), (0, 0)))
            samples, channels, amplitudes, snippets = engine.front(raw, start, end - start)
            labels = engine.censor(samples, engine.label(snippets, channels))
            out.append(_to_spikes(self.unit_ids, samples, labels, channels, amplitudes))
            self._next_block = end
            # keep only what the next block needs
            drop = self._next_block - engine.margin - self._buffer_start
            if drop > 0:
                self._buffer = self._buffer[drop:]
                self._buffer_start += drop
        if not out:
            return np.zeros(0, dtype=_spike_dtype(self.unit_ids))
        return np.concatenate(out)


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
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if not num_workers:
        for start in starts:
            yield read(start)
        return
    with ThreadPoolExecutor(num_workers) as pool:
        pending = deque()
        for start in starts:
            pending.append(pool.submit(read, start))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
