"""The clean-up both sorters end with: from labelled events to the units of the sorting (merges, weak units,
template matching, auto-merge, duplicates, noise units)."""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from .curation import (
    SplitTest, compute_templates, isi_violations_ratio, merge_similar_units, remove_duplicate_spikes,
    split_multimodal, template_snr,
)
from .numpy_kernels import numpy_kernels
from .jobs import matching_job_kwargs

logger = logging.getLogger("spikeinterface_elvisort")

MIN_TEMPLATE_SNR = 3.0  # units whose template peaks below this many noise levels are noise, not neurons


class CleanedUp(NamedTuple):
    """The clean-up's result: the sorting's spikes and the units' templates."""

    peaks: np.ndarray  #: the spikes, SpikeInterface's peak dtype
    labels: np.ndarray  #: each spike's unit, 0..num_units-1
    num_units: int
    templates: np.ndarray  #: (num_units, samples, channels), full probe, on the preprocessed traces


def merge_near_identical(recording, peaks, labels, num_units, *, nbefore, nafter, noise_levels, params, job_kwargs):
    """Full-probe templates of the labelled events, agglomerative merge of those closer than
    ``params["merge_threshold"]`` (aligned over +-0.3 ms) that the split test does not call distinct; returns the
    relabelled events (-1 stays -1) and the new unit count."""
    templates = compute_templates(recording, peaks, labels, num_units, nbefore, nafter, job_kwargs=job_kwargs)
    counts = np.bincount(labels[labels >= 0], minlength=num_units)
    max_lag = int(round(0.3e-3 * recording.sampling_frequency))
    distinct = None
    if params["merge_split_test"]:
        distinct = SplitTest(recording, peaks, labels, nbefore, nafter, noise_levels, max_lag=max_lag,
                             seed=int(params["seed"]))
    merged = merge_similar_units(
        templates, counts, params["merge_threshold"], max_lag=max_lag, distinct=distinct,
        noise_levels=noise_levels if params["merge_noise_corrected"] else None,
    )
    return np.where(labels >= 0, merged[np.maximum(labels, 0)], -1), int(merged.max()) + 1


def clean_up(recording, peaks, labels, num_units, *, noise_levels, nbefore, nafter, params, job_kwargs) -> CleanedUp:
    """From the labelled events to the units of the sorting, as both sorters end: merge near-identical units, drop
    weak and tiny units, re-find the spikes by template matching (``params["matching_method"]``) and auto-merge,
    remove duplicate spikes and noise units (ISI violations).

    Parameters
    ----------
    recording : BaseRecording
        The preprocessed recording (``FrontEnd.preprocessed``).
    peaks, labels : np.ndarray
        The detected events and their units (-1: none), ``num_units`` units.
    noise_levels : np.ndarray
        Per channel, of ``recording``.
    nbefore, nafter : int
        The template window in samples.
    params : dict
        A full, checked parameter dict of either sorter.
    job_kwargs : dict
        The chunked stages' job kwargs.

    Returns
    -------
    CleanedUp
        The spikes (events), their units 0..num_units-1, the number of units and their full-probe templates.
    """
    sampling_frequency = recording.sampling_frequency
    empty_templates = np.zeros((0, nbefore + nafter, recording.get_num_channels()), dtype=np.float32)
    if num_units == 0:
        return CleanedUp(peaks, labels, 0, empty_templates)

    if params.get("clustering_split", False) and params["matching_method"] != "none":
        # units the classifier joined (elvisort; ssae has no such parameter): split them on a sample of their spikes
        # (template matching finds the rest)
        labels, num_units = split_multimodal(
            recording, peaks, labels, num_units, nbefore, nafter, noise_levels=noise_levels, max_events=1000,
            seed=int(params["seed"]),
        )
    labels, num_units = merge_near_identical(
        recording, peaks, labels, num_units, nbefore=nbefore, nafter=nafter, noise_levels=noise_levels, params=params,
        job_kwargs=job_kwargs,
    )
    templates = compute_templates(recording, peaks, labels, num_units, nbefore, nafter, job_kwargs=job_kwargs)

    # weak (noise-like) and tiny units go
    counts = np.bincount(labels[labels >= 0], minlength=num_units)
    strong = (template_snr(templates, noise_levels) >= MIN_TEMPLATE_SNR) & (counts >= params["min_spikes_per_unit"])
    labels, num_units, templates = keep_units(labels, strong, templates)

    if params["matching_method"] != "none" and num_units:
        peaks, labels, kept, templates_object = match_templates(
            recording, templates, noise_levels=noise_levels, nbefore=nbefore, method=params["matching_method"],
            job_kwargs=matching_job_kwargs(params["job_kwargs"], job_kwargs),
        )
        num_units = int(kept.sum())
        if params["auto_merge"] and num_units > 1:
            labels, num_units = auto_merge(recording, peaks, labels, templates_object, noise_levels=noise_levels,
                                           job_kwargs=job_kwargs, min_spikes=params["auto_merge_min_spikes"])
        templates = compute_templates(recording, peaks, labels, num_units, nbefore, nafter, job_kwargs=job_kwargs)

    censor = max(int(round(params["duplicate_ms"] * sampling_frequency / 1000.0)), 1)
    keep = remove_duplicate_spikes(peaks["sample_index"], labels, peaks["segment_index"], censor) & (labels >= 0)
    peaks, labels = peaks[keep], labels[keep]
    # spikes whose window would reach past the end of the segment (SpikeInterface's remove_excess_spikes rule)
    lengths = np.array([recording.get_num_samples(s) for s in range(recording.get_num_segments())])
    inside = peaks["sample_index"] < lengths[peaks["segment_index"]]
    peaks, labels = peaks[inside], labels[inside]

    # no empty units, and no noise: a unit whose spikes come at random times (ISI violations) is a template that
    # fits the noise, found on near-threshold detections
    counts = np.bincount(labels, minlength=num_units)
    violations = isi_violations_ratio(
        peaks["sample_index"], labels, peaks["segment_index"], num_units, sampling_frequency,
        recording.get_total_duration(), min_isi_ms=params["duplicate_ms"],
    )
    noise = violations > params["max_isi_violations_ratio"]
    if noise.any():
        logger.info("removed %d unit(s) with ISI-violation ratios %s (above max_isi_violations_ratio=%g): noise",
                    int(noise.sum()), np.round(violations[noise], 2).tolist(), params["max_isi_violations_ratio"])
    labels, num_units, templates = keep_units(labels, (counts >= params["min_spikes_per_unit"]) & ~noise, templates)
    keep = labels >= 0
    return CleanedUp(peaks[keep], labels[keep], num_units, templates)


def keep_units(labels, keep, templates):
    """Keep the units where ``keep`` is True, renumbered 0..kept-1 in order; the others' events become -1.
    Returns (labels, number of units, their templates)."""
    new_index = np.cumsum(keep) - 1
    labels = np.where((labels >= 0) & keep[np.maximum(labels, 0)], new_index[np.maximum(labels, 0)], -1)
    return labels, int(keep.sum()), templates[keep]


def match_templates(recording, templates_array, *, noise_levels, nbefore, method, job_kwargs):
    """SpikeInterface template matching (``method``: circus-omp, tdc-peeler, ...) with the units' full-probe
    templates ``templates_array`` (units, samples, channels), sparsified first; returns (events, labels, kept unit
    mask, the sparse Templates of the kept units)."""
    from spikeinterface.core import Templates
    from spikeinterface.core.node_pipeline import base_peak_dtype
    from spikeinterface.sortingcomponents.matching import find_spikes_from_templates

    templates, kept = matching_templates(templates_array, sampling_frequency=recording.sampling_frequency,
                                         nbefore=nbefore, channel_ids=recording.channel_ids,
                                         probe=recording.get_probe(), noise_levels=noise_levels)
    method_kwargs = {"noise_levels": noise_levels} if method == "tdc-peeler" else {}
    spikes = find_spikes_from_templates(
        recording, templates, method=method, method_kwargs=method_kwargs, job_kwargs=job_kwargs
    )
    events = np.zeros(spikes.size, dtype=base_peak_dtype)
    events["sample_index"] = spikes["sample_index"]
    events["segment_index"] = spikes["segment_index"]
    events["channel_index"] = spikes["channel_index"]
    events["amplitude"] = spikes["amplitude"]
    # templates.unit_ids are the original unit indices of the kept units; renumber 0..kept-1
    new_index = np.cumsum(kept) - 1
    labels = new_index[templates.unit_ids[spikes["cluster_index"]]].astype(np.int64)
    templates = Templates(
        templates_array=templates.templates_array,
        sampling_frequency=templates.sampling_frequency,
        nbefore=templates.nbefore,
        sparsity_mask=templates.sparsity_mask,
        channel_ids=templates.channel_ids,
        unit_ids=np.arange(int(kept.sum())),
        probe=templates.probe,
        is_in_uV=False,
    )
    return events, labels, kept, templates


def matching_templates(templates_array, *, sampling_frequency, nbefore, channel_ids, probe, noise_levels):
    """The templates template matching looks for: ``templates_array`` (units, samples, channels, full probe)
    sparsified, without the templates whose peak sits more than 0.2 ms off the alignment point (events caught on
    another phase of a unit that has its own, aligned template) and those below :data:`MIN_TEMPLATE_SNR`. These are
    SpikeInterface's ``clean_templates`` steps in its order (sparsify, empty, jitter, SNR), with the jitter step's
    peak sign given (its own call leaves it out and warns on every run). Returns (Templates whose ``unit_ids`` are
    the kept units' indices, kept unit mask)."""
    from spikeinterface.core import Templates
    from spikeinterface.core.template_tools import get_template_peak_shift_on_main_channel
    from spikeinterface.sortingcomponents.tools import clean_templates

    num_units = templates_array.shape[0]
    templates = Templates(templates_array=templates_array, sampling_frequency=sampling_frequency, nbefore=nbefore,
                          channel_ids=channel_ids, unit_ids=np.arange(num_units), probe=probe, is_in_uV=False)
    templates = clean_templates(templates, sparsify_threshold=1.5, noise_levels=noise_levels, remove_empty=True)
    shifts = get_template_peak_shift_on_main_channel(templates, peak_sign="both", with_dict=False)
    templates = templates.select_units(templates.unit_ids[np.abs(shifts) <= int(0.2 * sampling_frequency / 1000.0)])
    templates = clean_templates(templates, sparsify_threshold=None, noise_levels=noise_levels,
                                min_snr=MIN_TEMPLATE_SNR, remove_empty=False)
    return templates, np.isin(np.arange(num_units), templates.unit_ids)


def auto_merge(recording, events, labels, templates, *, noise_levels, job_kwargs, min_spikes):
    """Merge over-split units with SpikeInterface's auto-merge (template similarity, then cross-contamination
    presets at growing template differences), as Tridesclous2 and SpykingCircus2 do after matching: the steps of
    SpykingCircus2's ``final_cleaning_circus``, with units from ``min_spikes`` spikes on taking part."""
    from spikeinterface.core import NumpySorting
    from spikeinterface.core.base import minimum_spike_dtype

    spikes = np.zeros(events.size, dtype=minimum_spike_dtype)
    spikes["sample_index"] = events["sample_index"]
    spikes["unit_index"] = labels
    spikes["segment_index"] = events["segment_index"]
    sorting = NumpySorting(spikes, recording.sampling_frequency, templates.unit_ids)
    merged = _merged_sorting(recording, sorting, templates, amplitudes=events["amplitude"], noise_levels=noise_levels,
                             min_spikes=min_spikes, job_kwargs=job_kwargs)
    # map every unit to its merged unit: the merged spikes (the auto-merge may censor some of them) are found
    # among the events by (segment, sample); each original unit goes to the merged unit most of its spikes went to
    merged_vector = merged.to_spike_vector()
    if merged_vector.size == 0:
        return np.full(labels.size, -1, dtype=np.int64), 0
    span = int(events["sample_index"].max()) + 1 if events.size else 1
    event_keys = events["segment_index"].astype(np.int64) * span + events["sample_index"]
    merged_keys = merged_vector["segment_index"].astype(np.int64) * span + merged_vector["sample_index"]
    order = np.argsort(event_keys, kind="stable")
    position = np.clip(np.searchsorted(event_keys[order], merged_keys), 0, max(events.size - 1, 0))
    found = event_keys[order][position] == merged_keys
    votes = np.zeros((int(labels.max()) + 1, int(merged_vector["unit_index"].max(initial=-1)) + 1), dtype=np.int64)
    np.add.at(votes, (labels[order][position][found], merged_vector["unit_index"][found]), 1)
    old_to_new = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), -1)
    _, new_index = np.unique(old_to_new[old_to_new >= 0], return_inverse=True)
    mapping = np.full(old_to_new.size, -1)
    mapping[old_to_new >= 0] = new_index
    return mapping[labels], int(new_index.max()) + 1


def _merged_sorting(recording, sorting, templates, *, amplitudes, noise_levels, min_spikes, job_kwargs):
    """SpikeInterface's auto-merge with the steps of SpykingCircus2's ``final_cleaning_circus`` (x_contaminations
    presets at template differences 0.05 to 0.35, units at most 50 um apart), units from ``min_spikes`` spikes
    on; returns the merged sorting."""
    from spikeinterface.curation.auto_merge import auto_merge_units
    from spikeinterface.sortingcomponents.tools import create_sorting_analyzer_with_existing_templates

    job_kwargs = job_kwargs | {"progress_bar": False}
    with numpy_kernels(templates.unit_ids.size):
        analyzer = create_sorting_analyzer_with_existing_templates(
            sorting, recording, templates, noise_levels=noise_levels, amplitude_scalings=amplitudes
        )
        analyzer.compute("unit_locations", method="center_of_mass", **job_kwargs)
        analyzer.compute("template_similarity", method="l1", support="union", max_lag_ms=0.3)
        thresholds = np.arange(0.05, 0.4, 0.05)
        steps_params = [
            {
                "num_spikes": {"min_spikes": min_spikes},
                "template_similarity": {"template_diff_thresh": threshold},
                "unit_locations": {"max_distance_um": 50},
            }
            for threshold in thresholds
        ]
        analyzer = auto_merge_units(
            analyzer, presets=["x_contaminations"] * thresholds.size, steps_params=steps_params, recursive=True,
            censor_ms=3.0, sparsity_overlap=0.5, **job_kwargs,
        )
    return analyzer.sorting
