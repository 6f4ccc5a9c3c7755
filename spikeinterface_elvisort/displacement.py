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
# the displacement is estimated on at most this many samples x channels of the recording (about 4 s of 384
# channels, 20 s of 32 at 30 kHz) and at most DISPLACEMENT_EVENTS events
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
    from .detection import detect_spikes
    from .jobs import sorter_job_kwargs
    from .snippets import extract_snippets

    model.check_recording(recording)
    if model.templates.shape[0] == 0:
        raise ValueError("this model holds no templates: the displacement cannot be estimated")
    num_channels, fs = recording.get_num_channels(), recording.sampling_frequency
    length = int(min(recording.get_num_samples(0), DISPLACEMENT_SAMPLES // num_channels))
    excerpt = model.preprocessed(_first_samples(recording, length))
    noise = np.asarray(model.settings.noise_levels, dtype=np.float32)
    nbefore, nafter = model.settings.nbefore, model.settings.nafter
    peaks = detect_spikes(
        excerpt, noise, method="locally_exclusive", peak_sign=model.params["peak_sign"],
        detect_threshold=model.params["detect_threshold"], exclude_sweep_ms=model.params["detect_exclude_sweep_ms"],
        radius_um=model.params["detect_radius_um"], snippet_samples=nbefore + nafter,
        job_kwargs=sorter_job_kwargs({"n_jobs": int(n_jobs)}, False),
    )
    inside = (peaks["sample_index"] >= nbefore) & (peaks["sample_index"] < length - nafter)
    peaks = peaks[inside]
    if peaks.size < 50:
        raise ValueError(f"only {peaks.size} events in the first {length / fs:.1f} s: too few to estimate the "
                         "displacement; give displacement= in um, or None")
    if peaks.size > DISPLACEMENT_EVENTS:
        peaks = peaks[np.sort(np.random.default_rng(0).choice(peaks.size, DISPLACEMENT_EVENTS, replace=False))]
    # footprints: every channel's value at the event's peak (at the templates' alignment sample for them);
    # the noise, of zero mean, favours no shift
    every_channel = np.tile(np.arange(num_channels), (num_channels, 1))
    footprints = np.concatenate([extract_snippets(excerpt, peaks[start:start + 500], every_channel, 0, 1)[:, 0]
                                 for start in range(0, peaks.size, 500)])
    footprints /= np.linalg.norm(footprints, axis=1, keepdims=True) + 1e-12
    shifts = np.arange(-max_um, max_um + DISPLACEMENT_STEP_UM / 2, DISPLACEMENT_STEP_UM)
    displacements = np.stack([np.zeros_like(shifts), shifts], axis=1)
    # the move is per sample: only the alignment sample is moved (121 shifts of 100 units x 384 channels)
    moved = move_whitened_templates(model.templates[:, nbefore:nbefore + 1], displacements, recording.get_probe(),
                                    model.settings.whitening)[:, :, 0]
    moved /= np.linalg.norm(moved, axis=2, keepdims=True) + 1e-12  # (shifts, units, channels)
    scores = np.array([(footprints @ templates.T).max(axis=1).mean() for templates in moved])
    return float(shifts[int(np.argmax(scores))])


def moved_templates(model, recording, displacement, *, n_jobs: int = 2):
    """``model``'s templates for matching on ``recording``, moved by ``displacement`` (um along the probe's depth;
    "auto": estimated, and moved only from :data:`MIN_DISPLACEMENT_UM` on; None: not moved), and that value."""
    if displacement is None:
        return model.templates, 0.0
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
    moved = move_whitened_templates(model.templates, np.array([[0.0, displacement]]), recording.get_probe(),
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
