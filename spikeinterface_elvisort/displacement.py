"""The displacement of a new session against a saved model: how far along the probe its units moved, estimated from
the spatial footprints of its first events and the model's templates, and the templates moved by it for matching.

Used by :meth:`~spikeinterface_elvisort.instant.ElvisortModel.sort` (``displacement="auto"``).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger("spikeinterface_elvisort.instant")

# displacement="auto": the templates are moved when a new session's estimated displacement is at least this large
# (about a quarter of a typical 20 um contact pitch; smaller shifts cost no measurable accuracy)
MIN_DISPLACEMENT_UM = 5.0
DISPLACEMENT_STEP_UM = 1.0
# the displacement is estimated on the first DISPLACEMENT_EVENTS events, found within at most this many
# samples x channels of the recording (4.3 s of 384 channels, 52 s of 32 at 30 kHz)
DISPLACEMENT_SAMPLES = 50_000_000
DISPLACEMENT_EVENTS = 3000


def estimate_displacement(model, recording, *, max_um: float = 60.0, n_jobs: int = 2) -> float:
    """The displacement (um, along the probe's depth) of ``recording``'s units from where they were in ``model``'s
    training session: see :meth:`~spikeinterface_elvisort.instant.ElvisortModel.estimate_displacement`."""
    try:
        return _estimate_displacement(model, recording, max_um, n_jobs)
    finally:
        # SpikeInterface's select_segments (for several segments) re-points the user's segments to its copy
        for segment in recording._recording_segments:
            segment.set_parent_extractor(recording)


def _estimate_displacement(model, recording, max_um, n_jobs):
    model.check_recording(recording)
    if model.templates.shape[0] == 0:
        raise ValueError("this model holds no templates: the displacement cannot be estimated")
    num_channels = recording.get_num_channels()
    length = int(min(recording.get_num_samples(0), DISPLACEMENT_SAMPLES // num_channels))
    footprints = first_footprints(model, _first_samples(recording, length), DISPLACEMENT_EVENTS, n_jobs=n_jobs)
    if footprints.shape[0] < 50:
        raise ValueError(f"only {footprints.shape[0]} events in the first {length / recording.sampling_frequency:.1f}"
                         " s: too few to estimate the displacement; give displacement= in um, or None")
    footprints /= np.linalg.norm(footprints, axis=1, keepdims=True) + 1e-12
    nbefore = model.settings.nbefore
    shifts = np.arange(-max_um, max_um + DISPLACEMENT_STEP_UM / 2, DISPLACEMENT_STEP_UM)
    displacements = np.stack([np.zeros_like(shifts), shifts], axis=1)
    # the move is per sample: only the alignment sample is moved (121 shifts of 100 units x 384 channels)
    moved = move_whitened_templates(model.templates[:, nbefore:nbefore + 1], displacements, recording.get_probe(),
                                    model.settings.whitening)[:, :, 0]
    moved /= np.linalg.norm(moved, axis=2, keepdims=True) + 1e-12  # (shifts, units, channels)
    scores = np.array([(footprints @ templates.T).max(axis=1).mean() for templates in moved])
    return float(shifts[int(np.argmax(scores))])


def first_footprints(model, recording, max_events: int, *, chunk_s: float = 1.0, n_jobs: int = 2) -> np.ndarray:
    """Spatial footprints (every channel's value at the event's peak, (events, channels)) of the first
    ``max_events`` events of ``recording`` (first segment), preprocessed as ``model``'s training traces were and
    detected there with the training run's locally exclusive detector. Chunks of ``chunk_s`` are read in order,
    ``n_jobs`` at a time in threads, until enough events are found: a busy probe needs a second or two, a quiet one
    reads further. The result does not depend on ``n_jobs``."""
    from concurrent.futures import ThreadPoolExecutor

    from .detection import locally_exclusive_peaks

    preprocessed = model.preprocessed(recording)
    params, fs = model.params, recording.sampling_frequency
    num_samples = recording.get_num_samples(0)
    nbefore, nafter = model.settings.nbefore, model.settings.nafter
    thresholds = np.asarray(model.settings.noise_levels, dtype=np.float32) * float(params["detect_threshold"])
    sweep = int(params["detect_exclude_sweep_ms"] * fs / 1000.0)
    locations = np.asarray(model.channel_locations)[:, :2]
    neighbours = np.linalg.norm(locations[:, None] - locations[None, :], axis=2) <= params["detect_radius_um"]
    chunk, margin = max(int(chunk_s * fs), 1), sweep + 1

    def chunk_footprints(start):
        stop = min(start + chunk, num_samples)
        lo, hi = max(start - margin, 0), min(stop + margin, num_samples)
        traces = preprocessed.get_traces(segment_index=0, start_frame=lo, end_frame=hi)
        samples, _ = locally_exclusive_peaks(traces, params["peak_sign"], thresholds, sweep, neighbours)
        absolute = samples + lo
        samples = samples[(absolute >= max(start, nbefore)) & (absolute < min(stop, num_samples - nafter))]
        return np.asarray(traces[np.sort(samples)], dtype=np.float32)

    starts = list(range(0, num_samples, chunk))
    workers = max(int(n_jobs), 1)
    parts, found = [], 0
    with ThreadPoolExecutor(workers) as pool:
        for first in range(0, len(starts), workers):
            parts += list(pool.map(chunk_footprints, starts[first : first + workers]))
            found = sum(part.shape[0] for part in parts)
            if found >= max_events:
                break
    if not parts:
        return np.zeros((0, recording.get_num_channels()), dtype=np.float32)
    return np.concatenate(parts)[:max_events]


def moved_templates(model, recording, displacement, *, n_jobs: int = 2):
    """``model``'s templates for matching on ``recording``, moved by ``displacement`` (um along the probe's depth;
    "auto": estimated, and moved only from :data:`MIN_DISPLACEMENT_UM` on; None: not moved), and that value.
    ``recording`` is only read for "auto" (a stream gives None and a number)."""
    from .block_matching import geometry_recording

    if displacement is None:
        return model.templates, 0.0
    if isinstance(displacement, (bool, np.bool_)) or not isinstance(displacement, (str, int, float, np.number)):
        raise ValueError(f"displacement must be 'auto', a number (um) or None; got {displacement!r}")
    if isinstance(displacement, str):
        if displacement != "auto":
            raise ValueError(f"displacement must be 'auto', a number (um) or None; got {displacement!r}")
        try:
            displacement = model.estimate_displacement(recording, n_jobs=n_jobs)
        except ValueError as error:  # too few events (a short piece): sorted where the templates are
            logger.info("displacement not estimated (%s): templates not moved", error)
            return model.templates, 0.0
        if abs(displacement) < MIN_DISPLACEMENT_UM:
            return model.templates, 0.0
    displacement = float(displacement)
    if not np.isfinite(displacement):
        raise ValueError(f"displacement must be a finite number of um; got {displacement}")
    if displacement == 0.0:
        return model.templates, 0.0
    # the model's contact positions (those of any recording it sorts: check_same_probe)
    probe = geometry_recording(model.sampling_frequency, model.channel_locations).get_probe()
    moved = move_whitened_templates(model.templates, np.array([[0.0, displacement]]), probe,
                                    model.settings.whitening)[0]
    return moved, displacement


def move_whitened_templates(templates, displacements, probe, whitening):
    """Templates of whitened traces (units, samples, channels), moved by each of ``displacements`` (um, (n, 2)):
    (n, units, samples, channels).

    The whitening matrix was learned on the training session, spikes included, so it shrinks the spatial patterns
    of the units where they were; the same unit one contact further has another pattern, which that matrix does not
    shrink. Moving the whitened template would keep the shrunk pattern, so the templates are unwhitened with the
    saved matrix, moved on the probe (SpikeInterface's ``move_dense_templates``, cubic) and whitened again: the
    templates the moved units have in the new session's whitened traces. Without whitening (``whitening`` None)
    they are moved as they are.
    """
    from spikeinterface.generation.drift_tools import move_dense_templates

    if not whitening:
        return move_dense_templates(templates, displacements, probe).astype(np.float32)
    W = np.asarray(whitening["W"], dtype=np.float64)
    M = 0.0 if whitening.get("M") is None else np.asarray(whitening["M"], dtype=np.float64)
    # SpikeInterface's whitening: white = (traces - M) @ W
    raw = np.asarray(templates, dtype=np.float64) @ np.linalg.pinv(W) + M
    return ((move_dense_templates(raw, displacements, probe) - M) @ W).astype(np.float32)


def _first_samples(recording, length: int):
    """The first ``length`` samples of the first segment (for several segments, SpikeInterface's select_segments
    re-points the segments to the new recording: :func:`estimate_displacement` points them back)."""
    if recording.get_num_segments() > 1:
        recording = recording.select_segments([0])
    return recording.frame_slice(0, length)
