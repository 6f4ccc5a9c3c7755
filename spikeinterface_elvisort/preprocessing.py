"""Preprocessing: SpikeInterface's filters, referencing, optional whitening and motion correction, then an optional
cache of the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from spikeinterface.preprocessing.common_reference import CommonReferenceRecording


# whitening="auto" whitens from this many channels on: it raised accuracy on the 32-channel benchmark recordings,
# kept the 8-channel accuracy test above its bound (not compared without it) and lowered accuracy on 4-channel
# generated recordings, whose covariance is dominated by spikes
AUTO_WHITENING_MIN_CHANNELS = 8


def preprocess(
    recording,
    *,
    apply_preprocessing: bool = True,
    freq_min: float = 300.0,
    freq_max: float = 6000.0,
    common_reference: bool = True,
    whitening: bool | str = False,
    motion=None,
    interpolate_motion_kwargs: dict | None = None,
    seed: int | None = None,
):
    """Return a lazy float32 recording: Butterworth band-pass, common median reference, optional local whitening
    (``whitening="auto"``: when the recording has at least ``AUTO_WHITENING_MIN_CHANNELS`` channels), then optional
    motion correction (interpolation of the traces by ``motion``, see :func:`estimate_motion`).

    The input recording is never modified: SpikeInterface preprocessing returns new lazy objects.
    ``freq_max`` is lowered to 0.45 x the sampling rate when it would sit above the Nyquist frequency.
    """
    import spikeinterface.preprocessing as spre

    if recording.get_dtype().kind in "iu":
        # int16 files with gains and offsets: filter in microvolts so that thresholds in MAD units keep their meaning
        if recording.has_scaleable_traces():
            recording = spre.scale_to_uV(recording)
    if not apply_preprocessing:
        recording = spre.astype(recording, "float32") if recording.get_dtype() != np.float32 else recording
    else:
        freq_max = min(freq_max, 0.45 * recording.sampling_frequency)
        recording = spre.bandpass_filter(recording, freq_min=freq_min, freq_max=freq_max, dtype="float32")
        if common_reference and recording.get_num_channels() > 1:
            recording = GlobalMedianReference(recording)
        if whitens(recording, True, whitening):
            recording = whiten(recording, seed)
    if motion is not None:
        from spikeinterface.sortingcomponents.motion import interpolate_motion

        # the whitened traces (when whitening is on) are interpolated, as Tridesclous2 and SpykingCircus2 do: the
        # whitening matrix then comes from the recording's own, stationary noise, not from interpolated traces whose
        # noise correlations change with the drift (drift study, dredge_fast, mean over 4 recordings 0.977; the
        # bump recording of seed 0 rose from 0.893 to 0.963). The motion is still estimated on unwhitened traces.
        recording = interpolate_motion(recording, motion, **(interpolate_motion_kwargs or {}))
    return recording


def median_of_channels(traces: np.ndarray) -> np.ndarray:
    """The median over channels of each sample of ``traces`` (samples, channels), as a (samples, 1) column: the
    values of ``np.median(traces, axis=1, keepdims=True)`` to the bit (the mean of the two middle samples for an
    even count, rounded as numpy rounds it, NaN where a row holds NaN), about 4x faster on hundreds of channels: one
    partition around the upper middle, then the largest sample below it, where numpy partitions around both."""
    traces = np.asarray(traces)
    count = traces.shape[1]
    if count == 0 or traces.dtype.kind != "f":
        return np.median(traces, axis=1, keepdims=True)
    middle = count // 2
    ordered = np.partition(traces, middle, axis=1)
    median = ordered[:, middle : middle + 1]
    if count % 2 == 0:
        median = (ordered[:, :middle].max(axis=1, keepdims=True) + median) * traces.dtype.type(0.5)
    with_nan = np.isnan(ordered[:, -1:])  # partition puts NaN last
    return np.where(with_nan, traces.dtype.type(np.nan), median) if with_nan.any() else median


class GlobalMedianReference(CommonReferenceRecording):
    """SpikeInterface's common median reference over all channels (``common_reference(recording,
    reference="global", operator="median")``, the same traces to the bit) with the faster median of
    :func:`median_of_channels`: on 384 channels numpy's median took about as long as the band-pass filter."""

    def __init__(self, recording):
        super().__init__(recording, reference="global", operator="median")
        for segment in self._recording_segments:
            segment.operator_func = _median_operator
        self._kwargs = dict(recording=recording)


def _median_operator(traces, axis=1, keepdims=True):
    # the call CommonReferenceRecordingSegment makes: operator_func(traces, axis=1, keepdims=True)
    if axis != 1 or not keepdims:
        return np.median(traces, axis=axis, keepdims=keepdims)
    return median_of_channels(traces)


def whitens(recording, apply_preprocessing: bool, whitening: bool | str) -> bool:
    """Whether :func:`preprocess` whitens ``recording`` with these settings (``whitening="auto"``: from
    ``AUTO_WHITENING_MIN_CHANNELS`` channels on; never without preprocessing or with one channel)."""
    if whitening == "auto":
        whitening = recording.get_num_channels() >= AUTO_WHITENING_MIN_CHANNELS
    return bool(apply_preprocessing and whitening and recording.get_num_channels() > 1)


def whiten(recording, seed: int | None = None):
    """The local whitening of :func:`preprocess`: SpikeInterface's ``whiten`` (mode "local", radius 100 um,
    float32), its matrix from random chunks drawn with ``seed``."""
    import spikeinterface.preprocessing as spre

    return spre.whiten(recording, mode="local", radius_um=100.0, dtype="float32", seed=seed)


def whiten_in_place(cached, whitened, block_samples: int = 65_536) -> bool:
    """Overwrite the traces of ``cached`` (a recording cached by :func:`cache_recording`, in shared memory or in a
    binary folder) with those of ``whitened`` (a lazy whitening of ``cached``, :func:`whiten`), block by block, so
    that every later read is a plain read instead of a matrix product over all the channels. Returns False, and
    changes nothing, when ``cached`` is neither (no cache, or a lazy chain): the whitening then stays lazy.

    From then on ``cached`` holds the whitened traces (its provenance still names the unwhitened chain): it is the
    pipeline's own cache, read by its worker processes through the shared buffer or the same file."""
    blocks = _writable_blocks(cached)
    if blocks is None:
        return False
    for segment_index in range(cached.get_num_segments()):
        num_samples = cached.get_num_samples(segment_index)
        for start in range(0, num_samples, block_samples):
            end = min(start + block_samples, num_samples)
            # the block is read (and whitened into a new array) before it is overwritten; rows do not mix
            whitened_block = whitened.get_traces(segment_index=segment_index, start_frame=start, end_frame=end)
            with blocks(segment_index, start, end) as traces:
                traces[:] = whitened_block
    return True


def _writable_blocks(cached):
    """For a memory or binary-folder cache, a context manager ``blocks(segment_index, start, end)`` giving a
    writable (end - start, num_channels) view of those samples; None for any other recording. A file is mapped one
    block at a time, so that its written pages do not all count in the process's memory."""
    from contextlib import contextmanager

    from spikeinterface.core.binaryfolder import BinaryFolderRecording
    from spikeinterface.core.numpyextractors import SharedMemoryRecording

    from spikeinterface.preprocessing.astype import AstypeRecording

    if isinstance(cached, AstypeRecording):  # a float16 folder read as float32: written cast to float16
        cached = cached._kwargs["recording"]
    num_segments, num_channels, dtype = cached.get_num_segments(), cached.get_num_channels(), cached.get_dtype()
    segments = cached._recording_segments
    if isinstance(cached, SharedMemoryRecording) and len(getattr(cached, "shms", ())) == num_segments:
        shape = [(cached.get_num_samples(segment), num_channels) for segment in range(num_segments)]
        views = [np.ndarray(shape[segment], dtype=dtype, buffer=shm.buf) for segment, shm in enumerate(cached.shms)]

        @contextmanager
        def blocks(segment_index, start, end):
            yield views[segment_index][start:end]

        return blocks
    if isinstance(cached, BinaryFolderRecording) and all(segment.time_axis == 0 for segment in segments):
        row_bytes = num_channels * np.dtype(dtype).itemsize

        @contextmanager
        def blocks(segment_index, start, end):
            segment = segments[segment_index]
            traces = np.memmap(segment.file_path, dtype=dtype, mode="r+", shape=(end - start, num_channels),
                               offset=int(segment.file_offset) + start * row_bytes)
            yield traces
            traces.flush()
            del traces

        return blocks
    return None


MAX_MEMORY_CACHE_BYTES = 2**30  # "auto" caches in memory only below this: memory must not grow with duration
MAX_DISK_CACHE_FRACTION = 0.8  # "auto" caches in a folder only when the traces take less of the free disk than this


def free_disk_bytes(folder: Path) -> int:
    """The free bytes of the file system that ``folder`` (or its nearest existing parent) lies on."""
    import shutil

    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def cache_mode(recording, mode: str, folder: Path) -> str:
    """The cache a run gets for ``cache_preprocessing=mode``: "memory", "folder", "folder_float16" or "no".

    "auto" uses memory when the traces take less than 1 GiB and less than a quarter of the available RAM, else a
    binary folder when they take less than 80 % of the free disk, else a float16 binary folder (half the size) when
    that fits, else no cache (the filter is recomputed at every pass: slower, but a recording of hours sorts on a
    small disk).

    Raises
    ------
    ValueError
        For "folder" or "folder_float16" when the traces do not fit on the free disk (before anything is written).
    """
    import psutil

    size = recording.get_total_memory_size()
    if mode == "auto":
        if size < min(MAX_MEMORY_CACHE_BYTES, 0.25 * psutil.virtual_memory().available):
            return "memory"
        free = MAX_DISK_CACHE_FRACTION * free_disk_bytes(folder)
        return "folder" if size < free else "folder_float16" if size * 2 / recording.get_dtype().itemsize < free else "no"
    if mode in ("folder", "folder_float16"):
        needed = size if mode == "folder" else size * 2 / recording.get_dtype().itemsize
        free = free_disk_bytes(folder)
        if needed >= free:
            raise ValueError(
                f"cache_preprocessing={mode!r} needs {needed / 2**30:.1f} GiB for the preprocessed traces but only "
                f"{free / 2**30:.1f} GiB are free under {Path(folder).absolute().parent}: free disk "
                "space, sort into a folder on a larger disk, or use cache_preprocessing='auto' or 'no' (no cache)"
            )
    return mode


FLOAT16_MAX = float(np.finfo(np.float16).max)


def cache_recording(recording, mode: str, folder: Path, job_kwargs: dict):
    """Cache preprocessed traces ("memory", "folder", "folder_float16", "no" or "auto", see :func:`cache_mode`) with
    SpikeInterface's ``cache_preprocessing``. Returns the cached recording and the info needed to remove the cache
    afterwards (its "mode" is SpikeInterface's: "memory", "folder" or "no-cache"; "dtype" is the cache's samples').

    A float16 cache is written clipped to float16's range and read back as float32: its samples keep 11 significant
    bits (a relative error below 0.05 %, far below the noise of a filtered or whitened trace)."""
    from spikeinterface.preprocessing import astype, clip
    from spikeinterface.sortingcomponents.tools import cache_preprocessing

    mode = cache_mode(recording, mode, folder)
    if mode == "folder_float16":
        saved = clip(recording, a_min=-FLOAT16_MAX, a_max=FLOAT16_MAX).save(
            folder=Path(folder), format="binary", dtype="float16", **job_kwargs
        )
        return astype(saved, recording.get_dtype()), dict(mode="folder", folder=Path(folder), dtype="float16")
    si_mode = "no-cache" if mode == "no" else mode
    cached, cache_info = cache_preprocessing(recording, mode=si_mode, memory_limit=0.25, folder=Path(folder),
                                             job_kwargs=job_kwargs)
    return cached, cache_info | {"dtype": str(cached.get_dtype())}


MOTION_STEPS = ("detect_kwargs", "select_kwargs", "localize_peaks_kwargs", "estimate_motion_kwargs",
                "interpolate_motion_kwargs")
# kriging interpolation that keeps every channel: the pipeline's channel neighbours and the sorting's channels are
# those of the recording (the presets' "remove_channels" would drop the channels the probe drifts off)
INTERPOLATE_MOTION_KWARGS = dict(border_mode="force_extrapolate", spatial_interpolation_method="kriging",
                                 sigma_um=20.0, p=2)


def interpolation_kwargs(motion_kwargs: dict) -> dict:
    """The arguments of ``interpolate_motion`` for the sorter's ``motion_correction_kwargs``: kriging that keeps every
    channel (``INTERPOLATE_MOTION_KWARGS``), updated by their ``interpolate_motion_kwargs``."""
    return INTERPOLATE_MOTION_KWARGS | motion_kwargs.get("interpolate_motion_kwargs", {})


def seeded_noise_levels(recording, seed: int | None, job_kwargs: dict) -> np.ndarray:
    """SpikeInterface's ``get_noise_levels`` (MAD, in the traces' units) from random chunks drawn with ``seed``,
    without a progress bar. SpikeInterface caches the result on ``recording``: later unseeded calls with the same
    method and units (``compute_motion``'s) return these values."""
    from spikeinterface.core import get_noise_levels

    return get_noise_levels(recording, return_in_uV=False, random_slices_kwargs={"seed": seed},
                            **(job_kwargs | {"progress_bar": False}))


# motion_correction="auto": the drift is estimated when the probe spans at least this much along its depth (a
# few of dredge_fast's 400 um windows; the 32-channel generated probes span 300 um, Neuropixels 1.0 3840 um) and
# corrected only when the estimated displacement moves by at least this much in some part of the probe
AUTO_MOTION_MIN_SPAN_UM = 600.0
AUTO_MOTION_MIN_DISPLACEMENT_UM = 10.0
AUTO_MOTION_PRESET = "dredge_fast"
AUTO_MOTION_EVENTS_PER_S = 300


def probe_span_um(recording) -> float:
    """Extent of the recording's contacts along the probe's depth (y), in um."""
    depth = recording.get_channel_locations()[:, 1]
    return float(depth.max() - depth.min()) if depth.size else 0.0


def displacement_range_um(motion) -> float:
    """The largest movement of any part of the probe over the recording: max over segments and spatial windows of
    (largest - smallest displacement over time), in um."""
    return max((float(np.ptp(np.asarray(d), axis=0).max()) if np.size(d) else 0.0) for d in motion.displacement)


def estimate_drift(recording, peaks: np.ndarray, noise_levels: np.ndarray, job_kwargs: dict,
                   seed: int | None = None):
    """The drift of ``recording`` (filtered, referenced, not whitened) estimated from events already detected on it,
    as the ``dredge_fast`` preset of ``compute_motion`` would from its own detection: the events of at least the
    preset's detection threshold (8 noise levels), at most ``AUTO_MOTION_EVENTS_PER_S`` per second drawn with
    ``seed``, localised by ``grid_convolution`` (seeded), then DREDge's non-rigid estimate. Returns a ``Motion``, or None when fewer than 100 events are that strong."""
    from spikeinterface.preprocessing.motion import motion_options_preset
    from spikeinterface.sortingcomponents.motion import estimate_motion as si_estimate_motion
    from spikeinterface.sortingcomponents.peak_localization import localize_peaks

    preset = motion_options_preset[AUTO_MOTION_PRESET]
    threshold = preset["detect_kwargs"]["detect_threshold"]
    strong = peaks[np.abs(peaks["amplitude"]) >= threshold * np.asarray(noise_levels)[peaks["channel_index"]]]
    if strong.size < 100:
        return None
    # localisation is the cost: at most AUTO_MOTION_EVENTS_PER_S events per second of recording, drawn at random
    most = max(int(AUTO_MOTION_EVENTS_PER_S * recording.get_total_duration()), 100)
    if strong.size > most:
        strong = strong[np.sort(np.random.default_rng(seed).choice(strong.size, most, replace=False))]
    locations = localize_peaks(recording, strong, method_kwargs=dict(preset["localize_peaks_kwargs"]),
                               job_kwargs=job_kwargs | {"progress_bar": False}, seed=seed)
    return si_estimate_motion(recording, strong, locations, progress_bar=False, **preset["estimate_motion_kwargs"])


def estimate_motion(recording, preset: str, folder: Path, job_kwargs: dict, kwargs: dict | None = None,
                    seed: int | None = None):
    """Estimate the probe's drift with SpikeInterface's ``compute_motion`` (``preset`` and ``kwargs``' overrides of
    its steps) on a filtered, referenced, not whitened recording; the motion info is saved in ``folder``.

    ``seed`` fixes the random chunks the detection's noise levels come from (``compute_motion`` draws them
    unseeded) and, when ``kwargs`` select peaks (``select_kwargs``), the selection, so that the same seed gives the
    same motion. (With ``select_kwargs``, ``compute_motion`` localises the selected peaks with
    ``localize_peaks``, whose ``grid_convolution`` prototype it cannot seed.)

    Returns
    -------
    motion : spikeinterface.core.motion.Motion
    interpolate_motion_kwargs : dict
        The arguments of ``interpolate_motion`` to correct the traces with it (channels are kept).
    """
    from spikeinterface.preprocessing import compute_motion

    kwargs = dict(kwargs or {})
    if kwargs.get("select_kwargs"):
        kwargs["select_kwargs"] = {"seed": seed} | kwargs["select_kwargs"]
    interpolate_kwargs = interpolation_kwargs(kwargs)
    kwargs.pop("interpolate_motion_kwargs", None)
    # compute_motion calls get_noise_levels(recording, return_in_uV=False) with unseeded random chunks; that call
    # returns the values cached on the recording, so compute them first, seeded
    seeded_noise_levels(recording, seed, job_kwargs)
    try:
        motion = compute_motion(recording, preset=preset, folder=Path(folder), overwrite=True, **kwargs,
                                **job_kwargs)
    except TypeError as error:
        if not kwargs.get("select_kwargs"):
            raise
        # SpikeInterface 0.105's compute_motion passes an argument detect_peaks no longer takes when peaks are
        # selected
        raise ValueError(
            f"motion_correction_kwargs['select_kwargs'] makes SpikeInterface's compute_motion fail in this version "
            f"of SpikeInterface ({error}); leave select_kwargs out"
        ) from None
    return motion, interpolate_kwargs
