"""One block of raw traces in, its spikes out: the per-block computation that ``ElvisortModel.sort`` and
``OnlineSorter`` (:mod:`~spikeinterface_elvisort.streaming`) share.

A block is processed from the raw traces of the block plus fixed margins (zeros outside the recording): band-pass
filter (SpikeInterface's Butterworth design, forward-backward), common median reference, whitening with the matrix
learned at training, peak detection (on the traces before whitening, as the training run detected, unless it ran
with ``detect_before_whitening=False``), snippets of the whitened traces, and one batched classifier pass.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

DEFAULT_BLOCK_MS = 200.0
LABEL_BATCH = 128  # events per classifier call (padded): fixed, so that labels do not depend on the grouping


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

        from .device import default_torch_threads
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
        # on the CPU the classifier runs on one core fewer than this process's share (at least one), as the sorters'
        # runs do (see device.default_torch_threads): the front end's threads and BLAS keep the other busy, and torch's
        # threads waiting on a shared core made each classifier call 3.5x slower (8 ms alone, 30 ms between blocks)
        self.torch_threads = None if torch_device_type(device) != "cpu" else default_torch_threads()
        self.reset()

    def reset(self) -> None:
        """Forget the state carried across blocks (start of a new segment or stream)."""
        self.last_kept = {}  # unit index -> sample of its last kept spike (duplicate censor)
        self.next_free = -1  # algorithm 1: the scan resumes after this sample

    # -- one block -----------------------------------------------------------------------------------------------
    def preprocess(self, raw: np.ndarray, pool=None) -> np.ndarray:
        """Raw block with ``margin`` samples on each side -> preprocessed block with ``inner_margin`` on each side."""
        return self.whiten(self.reference(raw, pool))

    def detection_traces(self, raw: np.ndarray, pool=None) -> tuple[np.ndarray, np.ndarray]:
        """(traces events are detected on, preprocessed traces) of a raw block: the filtered, referenced traces
        before whitening when the model was trained so, else the preprocessed ones twice."""
        referenced = self.reference(raw, pool)
        traces = self.whiten(referenced)
        return (referenced if self.detect_before_whitening else traces), traces

    def whiten(self, traces: np.ndarray) -> np.ndarray:
        """The whitening learned at training (no-op without it)."""
        if self.W is not None:
            traces = (traces - self.M) @ self.W if self.M is not None else traces @ self.W
        return np.ascontiguousarray(traces, dtype=np.float32)

    def reference(self, raw: np.ndarray, pool=None) -> np.ndarray:
        """Band-pass filter and common median reference, without whitening; ``inner_margin`` on each side.

        With a thread ``pool`` (:class:`WorkerThreads`), the filter runs on groups of channels and the
        median on groups of samples in its threads (SciPy's filter and NumPy's partition release the GIL): each
        channel is filtered, and each sample's median taken, as in one piece, so the result is the same to the bit.
        """
        from scipy.signal import sosfiltfilt

        from .preprocessing import median_of_channels

        traces = np.asarray(raw, dtype=np.float32)
        if self.filter:
            def band_pass(part):
                return sosfiltfilt(self.sos, part, axis=0).astype(np.float32)

            traces = _in_parts(band_pass, traces, axis=1, pool=pool)
            if self.filter_margin:
                traces = traces[self.filter_margin : traces.shape[0] - self.filter_margin]
        if self.common_reference:
            traces = traces - _in_parts(median_of_channels, traces, axis=0, pool=pool)
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

    def front(self, raw: np.ndarray, start: int, length: int, pool=None):
        """The model-free part of a block (thread-safe for the locally exclusive detector): returns samples
        (absolute), channels, amplitudes and snippets. ``pool``: threads that share the block's filter and median
        (see :meth:`reference`); the result does not depend on it."""
        detection, traces = self.detection_traces(raw, pool)
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
        previous = torch.get_num_threads()
        if self.torch_threads and self.torch_threads != previous:
            torch.set_num_threads(self.torch_threads)
        try:
            self._label_batches(snippets, channels, labels, batch)
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)
        labels[labels == self.model.config.num_classes - 1] = -1
        return labels

    def _label_batches(self, snippets, channels, labels, batch):
        import torch

        with torch.no_grad():
            for start in range(0, snippets.shape[0], batch):
                stop = min(start + batch, snippets.shape[0])
                x = np.zeros((batch,) + snippets.shape[1:], dtype=np.float32)
                where = np.zeros((batch, 2), dtype=np.float32)
                x[: stop - start] = snippets[start:stop]
                where[: stop - start] = self.locations[channels[start:stop]]
                logits = self.model.classify(torch.from_numpy(x).to(self.device), torch.from_numpy(where).to(self.device))
                labels[start:stop] = logits[: stop - start].float().argmax(dim=1).cpu().numpy()

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


class WorkerThreads(ThreadPoolExecutor):
    """A pool of ``num_workers`` threads that says how many it has (for :meth:`BlockEngine.reference`)."""

    def __init__(self, num_workers: int):
        super().__init__(int(num_workers), thread_name_prefix="elvisort-block")
        self.num_workers = int(num_workers)


def _in_parts(function, array: np.ndarray, *, axis: int, pool=None) -> np.ndarray:
    """``function(array)`` computed on pieces of ``array`` along ``axis`` in the threads of ``pool`` (a
    :class:`WorkerThreads`) and put back together (``function`` must treat each row or column on its own); in one
    piece without a pool."""
    workers = 0 if pool is None else min(pool.num_workers, array.shape[axis] // 2)
    if workers < 2:
        return function(array)
    pieces = np.array_split(array, workers, axis=axis)
    return np.concatenate(list(pool.map(function, pieces)), axis=axis)


def torch_device_type(device) -> str:
    """"cpu" or "cuda" for a torch device or its name."""
    return getattr(device, "type", str(device).split(":")[0])


def read_block(recording, segment_index: int, start: int, end: int, margin: int, scale: bool) -> np.ndarray:
    """Raw float32 traces of samples [start - margin, end + margin) of a segment; zeros outside the segment."""
    num_samples = recording.get_num_samples(segment_index)
    lo, hi = start - margin, end + margin
    raw = recording.get_traces(segment_index=segment_index, start_frame=max(lo, 0), end_frame=min(hi, num_samples),
                               return_in_uV=scale)
    return np.pad(np.asarray(raw, dtype=np.float32), ((max(-lo, 0), max(hi - num_samples, 0)), (0, 0)))
