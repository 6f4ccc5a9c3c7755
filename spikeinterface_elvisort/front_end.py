"""The front end both sorters share: preprocessing (and its cache), the drift decision, noise levels and detection,
with the log of the run's stages.

``run_front_end(recording, params, folder, job_kwargs, stages)`` returns a :class:`FrontEnd`; the learning stages
(``pipeline`` for elvisort, ``ssae.pipeline``) read its preprocessed traces and peaks, then ``cleanup.clean_up``
turns their labels into the sorting.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .detection import detect_spikes
from .preprocessing import (
    AUTO_MOTION_MIN_DISPLACEMENT_UM, AUTO_MOTION_MIN_SPAN_UM, cache_recording, displacement_range_um, estimate_drift,
    estimate_motion, interpolation_kwargs, preprocess, probe_span_um, seeded_noise_levels, whiten, whiten_in_place,
    whitens,
)
from .snippets import channel_neighbours, window_samples

logger = logging.getLogger("spikeinterface_elvisort")


def peak_rss_mib() -> float | None:
    """This process's peak resident memory since it started, in MiB (``getrusage``; it includes whatever the
    process did before this run), or None where the OS has no such call (Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class StageLog:
    """Times each stage and logs one line per stage (with the process's peak RSS so far, where known)."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.times = {}
        self.aside = 0.0  # seconds since `last` already logged by `timed`

    def done(self, stage: str, message: str, *args) -> None:
        """Log ``stage`` with the time since the previous stage (less what ``timed`` logged meanwhile)."""
        now = time.perf_counter()
        self._log(stage, now - self.last - self.aside, message, *args)
        self.last, self.aside = now, 0.0

    def timed(self, stage: str, seconds: float, message: str, *args) -> None:
        """Log ``stage``, which took ``seconds`` inside the stage now running (not counted in that one)."""
        self._log(stage, seconds, message, *args)
        self.aside += seconds

    def _log(self, stage, seconds, message, *args):
        self.times[stage] = seconds
        peak = peak_rss_mib()
        memory = "" if peak is None else f"  (peak RSS {peak:.0f} MiB)"
        logger.info(f"%-14s %6.1f s  {message}{memory}", stage, seconds, *args)


def log_run_start(sorter_name: str, recording, params: dict, device, verbose: bool) -> dict:
    """Log the run's first line (channels, duration, device, threads); returns the chunked stages' job kwargs."""
    from .device import thread_summary
    from .jobs import sorter_job_kwargs

    job_kwargs = sorter_job_kwargs(params["job_kwargs"], verbose)
    logger.info(
        "%s on %d channels, %d segment(s), %.1f s at %.0f Hz; device %s, %s", sorter_name,
        recording.get_num_channels(), recording.get_num_segments(), recording.get_total_duration(),
        recording.sampling_frequency, device, thread_summary(job_kwargs["n_jobs"]),
    )
    return job_kwargs


class FrontEnd(NamedTuple):
    """What the front end hands the learning stages."""

    preprocessed: object  #: the filtered, referenced, whitened (and motion-corrected) recording, cached
    cache_info: dict  #: SpikeInterface's cache description, plus "whitening", "motion_corrected" and, when detection
    #: ran before whitening, "detection_noise_levels" (saved with the model)
    noise_levels: np.ndarray  #: per channel, of ``preprocessed``
    peaks: np.ndarray  #: the detected events (SpikeInterface's peak dtype); amplitudes on ``preprocessed``


@dataclass
class RunContext:
    """What the learning stages of one run share, fixed once the front end has run."""

    params: dict  #: the full, checked parameters
    device: object  #: the torch device
    rng: np.random.Generator  #: the run's generator (training subsample, noise windows)
    job_kwargs: dict  #: the chunked stages' job kwargs
    stages: StageLog
    verbose: bool
    noise_levels: np.ndarray  #: per channel, of the preprocessed traces
    nbefore: int  #: the snippet window, in samples
    nafter: int
    channel_locations: np.ndarray  #: (channels, 2), um
    neighbours: np.ndarray  #: each channel's snippet channels (``snippets.channel_neighbours``)

    @classmethod
    def of(cls, recording, params: dict, noise_levels: np.ndarray, *, device, rng, job_kwargs: dict,
           stages: StageLog, verbose: bool) -> "RunContext":
        """The context of a run on ``recording`` (window, channel locations and neighbours from ``params``)."""
        nbefore, nafter = window_samples(params["ms_before"], params["ms_after"], recording.sampling_frequency)
        channel_locations = recording.get_channel_locations()[:, :2]
        return cls(params, device, rng, job_kwargs, stages, verbose, noise_levels, nbefore, nafter, channel_locations,
                   channel_neighbours(channel_locations, params["snippet_channels"]))


def filtering_kwargs(params: dict) -> dict:
    """The preprocessing parameters (band-pass and common reference) of either sorter, as ``preprocess``'s
    keyword arguments."""
    return dict(
        apply_preprocessing=params["apply_preprocessing"],
        freq_min=params["freq_min"],
        freq_max=params["freq_max"],
        common_reference=params["common_reference"],
    )


def drop_cache(cache_info: dict) -> None:
    """Remove the preprocessing cache folder, when there is one (the caller drops its recording first)."""
    if cache_info["mode"] == "folder":
        from spikeinterface.sortingcomponents.tools import clean_cache_preprocessing

        clean_cache_preprocessing(cache_info)


def run_front_end(recording, params: dict, folder: Path, job_kwargs: dict, stages: StageLog, motion=None) -> FrontEnd:
    """Preprocessing (cached), noise levels and detection: the stages both sorters of the package share.

    Parameters
    ----------
    recording : BaseRecording
        The recording to sort (never modified).
    params : dict
        A full, checked parameter dict of either sorter (the front end reads the parameters they share).
    folder : Path
        Where the preprocessing cache and the estimated motion go.
    job_kwargs : dict
        The chunked stages' job kwargs (``jobs.sorter_job_kwargs``).
    stages : StageLog
        Logs one line per stage.
    motion : Motion, optional
        A drift to correct, already estimated (``motion_correction="auto"`` passes the one it found).

    Returns
    -------
    FrontEnd
        The preprocessed recording, the cache's description, the noise levels and the detected peaks.
    """
    seed = int(params["seed"])
    nbefore, nafter = window_samples(params["ms_before"], params["ms_after"], recording.sampling_frequency)

    # preprocessing, with the drift estimated on the filtered, referenced traces (before whitening) when asked
    filtering = filtering_kwargs(params)
    interpolate_kwargs = interpolation_kwargs(params["motion_correction_kwargs"])
    if motion is None and params["motion_correction"] not in (None, "auto"):
        motion, interpolate_kwargs = estimate_motion(
            preprocess(recording, **filtering), params["motion_correction"], folder / "motion",
            job_kwargs, params["motion_correction_kwargs"], seed=seed,
        )
        displacement = np.concatenate([np.ravel(d) for d in motion.displacement])
        stages.done("motion", "%s: displacement %.1f to %.1f um, saved in motion/", params["motion_correction"],
                    displacement.min(), displacement.max())
    # detection on the traces before whitening (see the parameter's description): without motion correction those
    # traces are cached and whitened as they are read (one filtering pass in all), else they are filtered again
    cache_before_whitening = motion is None and params["detect_before_whitening"] and whitens(
        recording, params["apply_preprocessing"], params["whitening"]
    )
    detection_recording = None
    try:
        if cache_before_whitening:
            detection_recording, cache_info = cache_recording(
                preprocess(recording, **filtering, whitening=False), params["cache_preprocessing"],
                folder / "cache_preprocessing", job_kwargs,
            )
            preprocessed = whiten(detection_recording, seed)
        else:
            preprocessed = preprocess(
                recording, **filtering, whitening=params["whitening"], motion=motion,
                interpolate_motion_kwargs=interpolate_kwargs, seed=seed,
            )
    except np.linalg.LinAlgError as error:  # the whitening matrix's SVD, on random chunks of the filtered traces
        raise ValueError(
            f"whitening failed ({error}), as it does when the recording holds NaN or Inf samples: replace them "
            "before sorting (spikeinterface.preprocessing.silence_periods(recording, list_periods, mode='zeros') or "
            "recording.remove_channels), or sort with whitening=False"
        ) from None
    whitening = whitening_matrix(preprocessed)  # saved with the model; the cache loses the chain
    if not cache_before_whitening:
        preprocessed, cache_info = cache_recording(
            preprocessed, params["cache_preprocessing"], folder / "cache_preprocessing", job_kwargs
        )
    cache_info["whitening"] = whitening
    cache_info["motion_corrected"] = motion is not None
    noise_levels = seeded_noise_levels(preprocessed, seed, job_kwargs)
    if not np.all(np.isfinite(noise_levels)):
        bad = np.asarray(recording.channel_ids)[~np.isfinite(noise_levels)].tolist()
        raise ValueError(
            f"the recording holds NaN or Inf samples (the noise level of channel(s) {bad} is not finite after "
            "filtering): replace them before sorting, e.g. zero the bad periods "
            "(spikeinterface.preprocessing.silence_periods(recording, list_periods, mode='zeros')) or remove the "
            "channels (recording.remove_channels)"
        )
    detection_noise_levels = noise_levels
    if whitening is not None and params["detect_before_whitening"]:
        if detection_recording is None:  # motion correction: the interpolated, unwhitened traces
            detection_recording = preprocess(
                recording, **filtering, whitening=False, motion=motion, interpolate_motion_kwargs=interpolate_kwargs,
                seed=seed,
            )
        detection_noise_levels = seeded_noise_levels(detection_recording, seed, job_kwargs)
        cache_info["detection_noise_levels"] = detection_noise_levels  # saved with the model, for instant sorting
    else:
        detection_recording = preprocessed
    stages.done("preprocessing", "cache: %s%s", cache_info["mode"],
                " (float16)" if cache_info.get("dtype") == "float16" else "")

    peaks = detect_spikes(
        detection_recording,
        detection_noise_levels,
        method=params["detection_method"],
        peak_sign=params["peak_sign"],
        detect_threshold=params["detect_threshold"],
        exclude_sweep_ms=params["detect_exclude_sweep_ms"],
        radius_um=params["detect_radius_um"],
        snippet_samples=nbefore + nafter,
        job_kwargs=job_kwargs,
    )
    if motion is None and estimates_drift(recording, params):
        start = time.perf_counter()
        # the drift from the events just detected, on traces before whitening
        unwhitened = detection_recording if detection_recording is not preprocessed else preprocess(recording,
                                                                                                    **filtering)
        drift = estimate_drift(unwhitened, peaks, detection_noise_levels, job_kwargs, seed=seed)
        moved = 0.0 if drift is None else displacement_range_um(drift)
        if moved >= AUTO_MOTION_MIN_DISPLACEMENT_UM:
            drift.save(folder / "motion", overwrite=True)
            stages.done("motion", "auto: the probe moved by up to %.1f um (>= %.0f um): traces interpolated, "
                        "preprocessing and detection again; motion saved in motion/", moved,
                        AUTO_MOTION_MIN_DISPLACEMENT_UM)
            del preprocessed, detection_recording, unwhitened
            drop_cache(cache_info)
            return run_front_end(recording, params, folder, job_kwargs, stages, motion=drift)
        stages.timed("motion", time.perf_counter() - start, "auto: the probe moved by up to %.1f um (< %.0f um): "
                     "no correction", moved, AUTO_MOTION_MIN_DISPLACEMENT_UM)
    before_whitening = detection_recording is not preprocessed
    if cache_before_whitening and whiten_in_place(detection_recording, preprocessed):
        # the unwhitened traces are not read again: whitening them once, in their memory, spares every later pass
        # (training, labelling, clean-up, the matching workers) its own matrix product over the traces
        preprocessed = detection_recording
    if before_whitening:
        # amplitudes on the traces everything after detection reads, in the units of ``noise_levels``
        peaks["amplitude"] = values_at(preprocessed, peaks)
    stages.done("detection", "%d events (%.1f per channel per s)%s", peaks.size,
                peaks.size / max(recording.get_num_channels() * recording.get_total_duration(), 1e-9),
                ", before whitening" if before_whitening else "")
    return FrontEnd(preprocessed, cache_info, noise_levels, peaks)


def estimates_drift(recording, params) -> bool:
    """Whether ``motion_correction="auto"`` estimates the drift of ``recording``: on probes of at least
    ``AUTO_MOTION_MIN_SPAN_UM``, when sorting from clustering (a model trained on labels sorts the recording with
    instant sorting, which corrects no motion)."""
    return (params["motion_correction"] == "auto" and params.get("training_sorting") is None
            and params.get("pretrained_model") is None and probe_span_um(recording) >= AUTO_MOTION_MIN_SPAN_UM)


def values_at(recording, peaks, chunk_bytes: int = 2**26) -> np.ndarray:
    """``recording``'s sample at each peak's (segment, sample, channel), read in chunks of at most ``chunk_bytes``
    of float32 traces (about 64 MB whatever the number of channels)."""
    values = np.zeros(peaks.size, dtype=np.float32)
    chunk_samples = max(chunk_bytes // (4 * recording.get_num_channels()), 1)
    for segment_index in range(recording.get_num_segments()):
        in_segment = np.flatnonzero(peaks["segment_index"] == segment_index)
        samples = peaks["sample_index"][in_segment]
        for start in range(0, recording.get_num_samples(segment_index), chunk_samples):
            inside = in_segment[(samples >= start) & (samples < start + chunk_samples)]
            if inside.size:
                traces = recording.get_traces(segment_index=segment_index, start_frame=start,
                                              end_frame=start + chunk_samples)
                values[inside] = traces[peaks["sample_index"][inside] - start, peaks["channel_index"][inside]]
    return values


def whitening_matrix(recording) -> dict | None:
    """The whitening matrix (and mean) SpikeInterface's whiten computed, for the saved model; None without
    whitening."""
    from spikeinterface.preprocessing.whiten import WhitenRecording
    from spikeinterface.sortingcomponents.motion import InterpolateMotionRecording

    if isinstance(recording, InterpolateMotionRecording):  # motion correction interpolates the whitened traces
        recording = recording._kwargs["recording"]
    if not isinstance(recording, WhitenRecording):
        return None
    M = recording._kwargs.get("M")
    return {"W": np.asarray(recording._kwargs["W"], dtype=np.float32),
            "M": None if M is None else np.asarray(M, dtype=np.float32)}
