"""The paper's transfer experiment: two recordings of the same units, and the paper's classification scores."""

from __future__ import annotations

import numpy as np


def generate_transfer_pair(*, num_channels: int = 32, num_units: int = 15, durations=(120.0,), seed_a: int = 0,
                           seed_b: int = 1, sampling_frequency: float = 30000.0, displacement_um: float = 0.0,
                           **kwargs):
    """Two ground-truth recordings of the same units on the same probe: the paper's transfer experiment.

    Recording A is ``spikeinterface.core.generate_ground_truth_recording(seed=seed_a)``; recording B holds the same
    templates on the same probe with new spike trains and new noise (``seed_b``). Both are lazy.

    Parameters
    ----------
    num_channels, num_units, durations, sampling_frequency :
        As in ``generate_ground_truth_recording``.
    seed_a, seed_b : int
        Seeds of A (probe, templates, spikes, noise) and of B (spikes, noise).
    displacement_um : float, default: 0
        B's units sit this far (um) along the probe's depth from where they are in A, as in a later session of a
        probe that moved: B's templates are A's moved by SpikeInterface's ``move_dense_templates`` (cubic).
    **kwargs :
        Passed to both calls (for instance ``noise_kwargs``).

    Returns
    -------
    recording_a, sorting_a, recording_b, sorting_b
    """
    from spikeinterface.core import generate_ground_truth_recording

    if seed_a == seed_b:
        raise ValueError("seed_a and seed_b must differ: B needs its own spike trains and noise")
    recording_a, sorting_a = generate_ground_truth_recording(
        durations=list(durations), sampling_frequency=sampling_frequency, num_channels=num_channels,
        num_units=num_units, seed=seed_a, **kwargs,
    )
    templates = np.asarray(recording_a._kwargs["templates"], dtype=np.float32)
    if displacement_um:
        from spikeinterface.generation.drift_tools import move_dense_templates

        templates = move_dense_templates(templates, np.array([[0.0, float(displacement_um)]]),
                                         recording_a.get_probe())[0].astype(np.float32)
    recording_b, sorting_b = generate_ground_truth_recording(
        durations=list(durations), sampling_frequency=sampling_frequency, num_units=num_units,
        probe=recording_a.get_probe(), templates=templates, seed=seed_b, **kwargs,
    )
    return recording_a, sorting_a, recording_b, sorting_b


def classification_scores(model, recording, ground_truth, match_ms: float = 0.4) -> dict:
    """The paper's classification scores of a trained model on the events it detects (eq. 7-11).

    Every detected event takes the ground-truth unit of a spike within ``match_ms`` (or "no spike"); the model
    predicts a unit or "no spike". A true positive is an event of unit u predicted as u; a false positive an event
    predicted as u that is not of u; a false negative an event of u predicted otherwise. Spikes never detected are
    not counted, as in the paper: this is a classification score, not a sorting accuracy.

    Returns
    -------
    dict
        ``micro_f1``, ``micro_precision``, ``micro_recall``, ``accuracy`` (TP / (TP + FP + FN), micro), the number of
        ``events`` and of ``spike_events``, ``per_unit_f1`` and ``per_unit_accuracy`` (unit id -> score; NaN for a
        unit never detected nor predicted).
    """
    from ..labels import label_events
    from ..streaming import scale_to_uV, sort_segment

    model.check_recording(recording)
    engine = model._engine()
    gt_ids = np.asarray(ground_truth.unit_ids)
    # model unit ids -> ground-truth unit index (the model learned from these labels)
    lookup = {str(u): i for i, u in enumerate(gt_ids)}
    model_to_gt = np.array([lookup.get(str(u), -2) for u in model.unit_ids] + [-1])
    truth, predicted = [], []
    for segment_index in range(recording.get_num_segments()):
        samples, labels, _, _ = sort_segment(engine, recording, segment_index, scale_to_uV(recording),
                                             censor=False)
        events = {"sample_index": samples, "segment_index": np.full(samples.size, segment_index)}
        truth.append(label_events(events, ground_truth, match_ms))
        predicted.append(model_to_gt[labels])  # -1 (non-spike class) maps to -1
    truth, predicted = np.concatenate(truth), np.concatenate(predicted)
    tp = int(np.sum((predicted == truth) & (truth >= 0)))
    fp = int(np.sum((predicted != -1) & (predicted != truth)))
    fn = int(np.sum((truth >= 0) & (predicted != truth)))
    per_unit, per_unit_accuracy = {}, {}
    for index, unit_id in enumerate(gt_ids):
        unit_tp = np.sum((predicted == index) & (truth == index))
        denominator = np.sum(predicted == index) + np.sum(truth == index)
        per_unit[unit_id] = float(2 * unit_tp / denominator) if denominator else float("nan")
        # TP / (TP + FP + FN) of the unit = TP / (predicted + true - TP)
        per_unit_accuracy[unit_id] = float(unit_tp / (denominator - unit_tp)) if denominator else float("nan")
    return {
        "micro_f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "micro_precision": tp / max(tp + fp, 1),
        "micro_recall": tp / max(tp + fn, 1),
        "accuracy": tp / max(tp + fp + fn, 1),
        "events": int(truth.size),
        "spike_events": int(np.sum(truth >= 0)),
        "per_unit_f1": per_unit,
        "per_unit_accuracy": per_unit_accuracy,
    }
