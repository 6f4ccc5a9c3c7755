"""The labelled half of ssae's training, made for each recording without outside data.

Templates come from SpikeInterface's template generator (``generate_templates``) for *this* probe's geometry and
sampling rate, at random unit positions along the probe. They are injected (``InjectTemplatesRecording``) into the
raw recording at quiet times (no detection within two snippet lengths), at amplitudes drawn from the recording's
detected events, and the result goes through the recording's own preprocessing (band-pass, common median reference,
whitening): the labelled events carry the recording's real noise and every transformation its real spikes went
through. The labelled events are then cut like real ones: on the peak channel's neighbours, aligned on their own
(noisy) extremum.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..results import to_sorting
from ..snippets import extract_snippets, noise_peaks

JITTER = 3  # samples (0.1 ms at 30 kHz) a hybrid event may move when it is realigned on its noisy extremum
MAX_SPAN_S = 120.0  # labelled events are injected into at most this much of the first segment (bounds the cost)


@dataclass
class HybridSet:
    """Labelled hybrid events, cut exactly like the recording's own snippets."""

    snippets: np.ndarray  # (num_events, num_samples, snippet_channels) float32: template + real noise, preprocessed
    labels: np.ndarray  # (num_events,) int64: index of the synthetic unit, 0..num_templates-1
    peak_channels: np.ndarray  # (num_events,) the template's peak channel (the snippet's centre channel)
    amplitudes: np.ndarray  # (num_events,) peak amplitude given to the template, in preprocessed units
    sample_index: np.ndarray  # (num_events,) where it was injected (segment 0)
    templates: object  # spikeinterface.core.Templates: the templates after filtering, peak 1, every channel


def generate_probe_templates(recording, num_templates: int, nbefore: int, nafter: int, *, peak_sign: str = "neg",
                             band: tuple[float, float] | None = None, seed: int = 0):
    """Templates from SpikeInterface's generator for ``recording``'s probe and sampling rate.

    Returns ``(raw, peak_index, templates)``: ``raw`` (num_templates, wide_samples, num_channels) the unfiltered
    waveforms to inject, scaled and shifted so that after the band-pass ``band`` (None: no filter) their peak on
    their peak channel is 1 (``peak_sign``'s polarity) at sample ``peak_index``, the same for every unit;
    ``templates`` the filtered ones cut to ``nbefore + nafter`` samples around that peak, as a
    ``spikeinterface.core.Templates`` with the recording's channels, probe and sampling frequency.
    """
    from spikeinterface.core import Templates
    from spikeinterface.core.generate import generate_templates, generate_unit_locations

    sampling_frequency = recording.sampling_frequency
    channel_locations = recording.get_channel_locations()[:, :2]
    with warnings.catch_warnings():
        # the minimum distance between units is a wish, not a need, on a small probe
        warnings.simplefilter("ignore")
        unit_locations = generate_unit_locations(
            num_templates, channel_locations, margin_um=20.0, minimum_z=5.0, maximum_z=40.0, minimum_distance=10.0,
            seed=seed,
        )
    # generate wider than needed: realignment on the filtered peak moves the window
    pad = max(nbefore, nafter) // 2 + 2
    ms_before = (nbefore + pad) * 1000.0 / sampling_frequency
    ms_after = (nafter + pad) * 1000.0 / sampling_frequency
    raw = generate_templates(channel_locations, unit_locations, sampling_frequency, ms_before, ms_after, seed=seed)
    if peak_sign == "pos":
        raw = -raw  # the generator's action potentials are negative
    filtered = _bandpass(raw, band, sampling_frequency) if band is not None else raw.copy()
    centre = int(round(ms_before * sampling_frequency / 1000.0))  # generate_templates' own nbefore
    signed = filtered if peak_sign == "pos" else -filtered
    templates = np.zeros((num_templates, nbefore + nafter, raw.shape[2]), dtype=np.float32)
    for unit in range(num_templates):
        channel = int(np.argmax(np.abs(filtered[unit]).max(axis=0)))
        peak = centre - pad + int(np.argmax(signed[unit, centre - pad : centre + pad, channel]))
        scale = max(float(np.abs(filtered[unit, peak, channel])), 1e-12)
        templates[unit] = filtered[unit, peak - nbefore : peak + nafter] / scale
        # move the raw waveform so that its filtered peak sits at `centre`, as for every unit
        shift = centre - peak
        moved = np.zeros_like(raw[unit])
        if shift >= 0:
            moved[shift:] = raw[unit, : raw.shape[1] - shift]
        else:
            moved[:shift] = raw[unit, -shift:]
        raw[unit] = moved / scale
    templates = Templates(
        templates_array=templates,
        sampling_frequency=sampling_frequency,
        nbefore=nbefore,
        channel_ids=recording.channel_ids,
        unit_ids=np.arange(num_templates),
        probe=recording.get_probe(),
        is_in_uV=False,
    )
    return raw.astype(np.float32), centre, templates


def _bandpass(templates: np.ndarray, band: tuple[float, float], sampling_frequency: float) -> np.ndarray:
    """SpikeInterface's bandpass_filter (Butterworth of order 5, second-order sections, forward-backward) along the
    time axis of (num_units, num_samples, num_channels) templates, zero-padded by three periods of the low cut-off.
    Used only to calibrate and align the injected templates; the injected events go through the real filter."""
    from scipy.signal import butter, sosfiltfilt

    freq_min, freq_max = band
    sos = butter(5, [freq_min, min(freq_max, 0.45 * sampling_frequency)], btype="bandpass", fs=sampling_frequency,
                 output="sos")
    pad = int(3 * sampling_frequency / freq_min)
    padded = np.pad(templates, ((0, 0), (pad, pad), (0, 0)))
    return sosfiltfilt(sos, padded, axis=1)[:, pad:-pad].astype(np.float32)


def _float_recording(recording):
    """The recording in float32 and, for integer files with gains, in microvolts: what ``preprocess`` would filter."""
    import spikeinterface.preprocessing as spre

    if recording.get_dtype().kind in "iu":
        if recording.has_scaleable_traces():
            return spre.scale_to_uV(recording)
        return spre.astype(recording, "float32")
    return recording


def make_hybrid_set(
    recording,
    peaks: np.ndarray,
    neighbours: np.ndarray,
    nbefore: int,
    nafter: int,
    *,
    preprocess: Callable,
    num_templates: int = 24,
    spikes_per_template: int = 150,
    peak_sign: str = "neg",
    band: tuple[float, float] | None = (300.0, 6000.0),
    rng: np.random.Generator,
    seed: int = 0,
) -> HybridSet:
    """The labelled hybrid set of ``recording``: generated templates injected into its own quiet stretches.

    Parameters
    ----------
    recording : BaseRecording
        The raw recording (as given to the sorter).
    peaks : np.ndarray
        Its detected events (SpikeInterface peak dtype): they set the amplitude range, and injections keep two
        snippet lengths away from all of them.
    neighbours : np.ndarray (num_channels, snippet_channels)
        Snippet channels of each peak channel (:func:`~spikeinterface_elvisort.snippets.channel_neighbours`).
    preprocess : callable
        recording -> preprocessed recording, the sorter's own preprocessing.
    num_templates, spikes_per_template : int
        Synthetic units, and labelled events per unit (fewer when the recording lacks quiet stretches).
    peak_sign : "neg" | "pos" | "both", default: "neg"
        Polarity of the recording's spikes ("both": negative templates, the common case).
    band : (freq_min, freq_max) | None, default: (300.0, 6000.0)
        The band-pass of ``preprocess``, to calibrate the templates' amplitudes after filtering (None: no filter).
    rng : np.random.Generator
    seed : int
        Seed of the template generator.
    """
    from spikeinterface.core.generate import InjectTemplatesRecording
    from spikeinterface.core.node_pipeline import base_peak_dtype

    num_samples = nbefore + nafter
    raw, peak_index, templates = generate_probe_templates(
        recording, num_templates, nbefore, nafter, peak_sign=peak_sign, band=band, seed=seed
    )
    template_channels = np.argmax(np.abs(templates.templates_array).max(axis=1), axis=1)

    # quiet times in the first segment's first MAX_SPAN_S seconds, at least one snippet (plus jitter) apart (the
    # recording is not sliced: select_segments would re-parent the caller's segment objects)
    base = _float_recording(recording)
    span = int(min(recording.get_num_samples(0), MAX_SPAN_S * recording.sampling_frequency))
    count = num_templates * spikes_per_template
    fraction = span / sum(recording.get_num_samples(s) for s in range(recording.get_num_segments()))
    candidates = noise_peaks(peaks, base, int(2 * count / fraction), 2 * num_samples, rng)
    candidates = candidates[(candidates["segment_index"] == 0) & (candidates["sample_index"] < span)]
    times = np.unique(candidates["sample_index"])
    spaced = [times[0]] if times.size else []
    for time in times[1:]:
        if time - spaced[-1] >= num_samples + 2 * JITTER:
            spaced.append(time)
    times = rng.permutation(np.asarray(spaced, dtype=np.int64))
    per_template = min(spikes_per_template, times.size // num_templates)
    if per_template < 1:
        raise ValueError(
            f"the recording has too few quiet stretches ({times.size}) for {num_templates} synthetic units; lower "
            "hybrid_num_templates"
        )
    labels = np.repeat(np.arange(num_templates), per_template)
    times = times[: labels.size]
    order = np.argsort(times)
    times, labels = times[order], labels[order]

    # amplitudes drawn from the detected events' own distribution (1st to 99th percentile), so that the labelled
    # events are as small, and as noisy, as the recording's
    magnitude = np.abs(peaks["amplitude"]) if peaks.size else np.ones(1)
    low, high = np.quantile(magnitude, [0.01, 0.99])
    pool = magnitude[(magnitude >= low) & (magnitude <= high)]
    amplitudes = rng.choice(pool if pool.size else magnitude, size=labels.size).astype(np.float32)

    events = np.zeros(labels.size, dtype=base_peak_dtype)
    events["sample_index"] = times
    events["channel_index"] = template_channels[labels]
    # a sorting with every segment of the recording (the injections are all in the first); its spike vector is
    # ordered by (segment, sample), the order of `times`, so the amplitudes line up
    sorting = to_sorting(events, labels, np.arange(num_templates), recording.sampling_frequency,
                         recording.get_num_segments())
    injected = InjectTemplatesRecording(sorting, raw, nbefore=peak_index, amplitude_factor=amplitudes,
                                        parent_recording=base)
    hybrid_recording = preprocess(injected)

    # cut wider, then align each event on its own extremum on the peak channel, as the detector aligns real events
    wide = extract_snippets(hybrid_recording, events, neighbours, nbefore + JITTER, nafter + JITTER)
    channels = neighbours[template_channels[labels]]
    centre_column = np.argmax(channels == template_channels[labels][:, None], axis=1)
    trace = wide[np.arange(labels.size), :, centre_column]
    signed = trace if peak_sign == "pos" else -trace
    shift = np.argmax(signed[:, nbefore : nbefore + 2 * JITTER + 1], axis=1)  # JITTER = unmoved
    rows = np.arange(num_samples)[None, :] + shift[:, None]
    snippets = np.take_along_axis(wide, rows[:, :, None], axis=1).astype(np.float32)
    return HybridSet(
        snippets=snippets,
        labels=labels.astype(np.int64),
        peak_channels=template_channels[labels],
        amplitudes=amplitudes,
        sample_index=times + shift - JITTER,
        templates=templates,
    )


def aligned_noise_windows(recording, peaks: np.ndarray, count: int, neighbours: np.ndarray, nbefore: int,
                          nafter: int, *, peak_sign: str, rng: np.random.Generator) -> np.ndarray:
    """Pure-noise snippets that look like threshold crossings: quiet stretches (a snippet's length away from every
    detection) of the preprocessed ``recording``, each re-centred on its own largest excursion (``peak_sign``) on a
    random channel, so that the cleaner learns shapes, not the position of the peak.
    (count, num_samples, snippet_channels)."""
    num_samples = nbefore + nafter
    windows = noise_peaks(peaks, recording, count, 3 * num_samples, rng)
    wide = extract_snippets(recording, windows, neighbours, num_samples, num_samples)  # +- one snippet length
    centre_column = np.argmax(neighbours[windows["channel_index"]] == windows["channel_index"][:, None], axis=1)
    trace = wide[np.arange(windows.size), :, centre_column]  # the window's own channel
    signed = {"neg": -trace, "pos": trace, "both": np.abs(trace)}[peak_sign]
    search = slice(num_samples - nbefore, num_samples + nafter)  # stay inside the quiet stretch
    shift = np.argmax(signed[:, search], axis=1) - nbefore
    windows["sample_index"] = windows["sample_index"] + shift
    return extract_snippets(recording, windows, neighbours, nbefore, nafter)
