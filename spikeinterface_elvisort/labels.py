"""Labels and probes for saved models: a labelled sorting from a sorting, a sorting folder or a Phy folder; the check
that a recording comes from a model's probe; the events a model detects, labelled by a sorting (fine-tuning and the
classification scores); the noise levels a model's detector measures on a new recording."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .blocks import BlockEngine, read_block

LABEL_MATCH_MS = 0.4  # a detected event takes the label of a labelled spike at most this far away


def read_labels(labels, name: str = "sorting"):
    """A labelled sorting from what a user has: a sorting object, a saved SpikeInterface sorting folder, or a Phy
    folder (clusters labelled "noise" in Phy are left out, "mua" and unlabelled ones kept, as in a curated export).
    ``name`` is the argument's name in the error message."""
    from spikeinterface.core import BaseSorting, load

    if isinstance(labels, BaseSorting):
        return labels
    path = Path(labels)
    if (path / "params.py").is_file() and (path / "spike_times.npy").is_file():
        from spikeinterface.extractors import read_phy

        sorting = read_phy(path, exclude_cluster_groups=["noise"])
    else:
        try:
            sorting = load(path)
        except Exception as error:
            raise ValueError(f"{name}={str(path)!r} is neither a saved SpikeInterface sorting nor a Phy "
                             f"folder ({type(error).__name__}: {error})") from None
    if not isinstance(sorting, BaseSorting):
        raise ValueError(f"{name}={str(path)!r} holds a {type(sorting).__name__}, not a sorting")
    return sorting


def check_same_probe(recording, channel_locations, sampling_frequency: float, reference: str, fix: str) -> None:
    """Raise ValueError, before any work, when ``recording`` is not from the probe described by ``channel_locations``
    and ``sampling_frequency`` (same channel count, rate, and locations in the same order within 1 um).
    ``reference`` names that probe's source in the message ("the model was trained"), ``fix`` says what to do."""
    num_channels = len(channel_locations)
    if recording.get_num_channels() != num_channels:
        raise ValueError(f"{reference} on {num_channels} channels but the recording has "
                         f"{recording.get_num_channels()}: {fix}")
    if abs(recording.sampling_frequency - sampling_frequency) > 1e-6 * sampling_frequency:
        raise ValueError(
            f"{reference} at {sampling_frequency:g} Hz but the recording is sampled at "
            f"{recording.sampling_frequency:g} Hz: resample it (spikeinterface.preprocessing.resample) or {fix}"
        )
    if not recording.has_probe() and "location" not in recording.get_property_keys():
        raise ValueError("the recording has no channel locations: attach its probe (recording.set_probe) first")
    locations = recording.get_channel_locations()[:, :2]
    reference_locations = np.asarray(channel_locations, dtype=np.float64)[:, :2]
    if not np.allclose(locations, reference_locations, atol=1.0):
        raise ValueError(
            f"the recording's channel locations differ from those {reference} on (largest difference "
            f"{np.abs(locations - reference_locations).max():.1f} um): the channels must be the same, in the same "
            f"order; {fix}"
        )


def _check_sorting(sorting, recording) -> None:
    if sorting.get_num_segments() != recording.get_num_segments():
        raise ValueError(f"the labelled sorting has {sorting.get_num_segments()} segment(s), the recording "
                         f"{recording.get_num_segments()}: labels must belong to this recording")
    if abs(sorting.sampling_frequency - recording.sampling_frequency) > 1e-6 * recording.sampling_frequency:
        raise ValueError(f"the labelled sorting is at {sorting.sampling_frequency:g} Hz, the recording at "
                         f"{recording.sampling_frequency:g} Hz: labels must belong to this recording")
    if sorting.unit_ids.size == 0:
        raise ValueError("the labelled sorting has no units")


def measure_noise_levels(engine: BlockEngine, recording, scale: bool, num_blocks: int = 20, seed: int = 0):
    """Median absolute deviation / 0.6745 per channel of the traces the engine detects on (its preprocessed
    traces, or those before whitening: :meth:`BlockEngine.detection_traces`), on random blocks."""
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(num_blocks):
        segment_index = int(rng.integers(recording.get_num_segments()))
        num_samples = recording.get_num_samples(segment_index)
        length = min(engine.block_samples, num_samples)
        start = int(rng.integers(0, max(num_samples - length, 0) + 1))
        raw = read_block(recording, segment_index, start, start + length, engine.margin, scale)
        pieces.append(engine.detection_traces(raw)[0][engine.inner_margin : engine.inner_margin + length])
    traces = np.concatenate(pieces)
    return (np.median(np.abs(traces - np.median(traces, axis=0)), axis=0) / 0.6744897501960817).astype(np.float32)


def collect_events(engine: BlockEngine, recording, scale: bool, sorting, max_events: int, seed: int = 0):
    """Detect events as the engine does, label them with ``sorting`` (:func:`label_events`) and keep a random
    subset of at most ``max_events`` with their snippets; memory stays bounded whatever the duration.

    Returns
    -------
    events : dict of arrays
        sample_index, segment_index, channel_index, label (-1: no labelled spike near), snippets.
    templates : (num_units, num_samples, num_channels)
        Mean full-probe waveform of every labelled event (all of them, not only the kept subset).
    """
    rng = np.random.default_rng(seed)
    num_units = sorting.unit_ids.size
    sums = np.zeros((num_units, engine.nbefore + engine.nafter, engine.num_channels), dtype=np.float64)
    counts = np.zeros(num_units, dtype=np.int64)
    kept = None
    offsets = np.arange(-engine.nbefore, engine.nafter)
    for segment_index in range(recording.get_num_segments()):
        engine.reset()
        num_samples = recording.get_num_samples(segment_index)
        for start in range(0, num_samples, engine.block_samples):
            end = min(start + engine.block_samples, num_samples)
            detection, traces = engine.detection_traces(
                read_block(recording, segment_index, start, end, engine.margin, scale)
            )
            samples, channels = engine.detect(detection, start, end - start)
            block = dict(
                sample_index=samples - engine.inner_margin + start,
                segment_index=np.full(samples.size, segment_index, dtype=np.int64),
                channel_index=channels,
            )
            block["label"] = label_events(block, sorting)
            for unit in np.unique(block["label"][block["label"] >= 0]):
                rows = samples[block["label"] == unit][:, None] + offsets[None, :]
                sums[unit] += traces[rows].sum(axis=0)
                counts[unit] += rows.shape[0]
            block["snippets"] = engine.snippets(traces, samples, channels)
            block["key"] = rng.random(samples.size)  # reservoir: keep the events with the smallest random keys
            kept = block if kept is None else {k: np.concatenate([kept[k], block[k]]) for k in kept}
            if kept["key"].size > max_events:
                keep = np.sort(np.argpartition(kept["key"], max_events)[:max_events])
                kept = {k: v[keep] for k, v in kept.items()}
    if kept is None or kept["sample_index"].size == 0:
        raise ValueError("no event was detected in the recording: nothing to train on")
    templates = (sums / np.maximum(counts, 1)[:, None, None]).astype(np.float32)
    return kept, templates


def label_events(events, sorting, match_ms: float = LABEL_MATCH_MS) -> np.ndarray:
    """Unit index (into ``sorting.unit_ids``) of the labelled spike nearest each event, -1 beyond ``match_ms``.
    ``events`` needs sample_index and segment_index (samples at the sorting's rate)."""
    max_distance = int(round(match_ms * sorting.sampling_frequency / 1000.0))
    labels = np.full(events["sample_index"].size, -1, dtype=np.int64)
    spikes = sorting.to_spike_vector()
    for segment_index in np.unique(events["segment_index"]):
        mine = np.flatnonzero(events["segment_index"] == segment_index)
        theirs = spikes[spikes["segment_index"] == segment_index]
        if theirs.size == 0:
            continue
        theirs = theirs[np.argsort(theirs["sample_index"], kind="stable")]
        times = theirs["sample_index"].astype(np.int64)
        position = np.searchsorted(times, events["sample_index"][mine])
        left = np.clip(position - 1, 0, times.size - 1)
        right = np.clip(position, 0, times.size - 1)
        distance_left = np.abs(events["sample_index"][mine] - times[left])
        distance_right = np.abs(times[right] - events["sample_index"][mine])
        nearest = np.where(distance_left <= distance_right, left, right)
        close = np.minimum(distance_left, distance_right) <= max_distance
        labels[mine[close]] = theirs["unit_index"][nearest[close]]
    return labels
