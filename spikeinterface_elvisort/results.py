"""What lands in sorter_output/: the sorting, the model checkpoint, the training history, optional arrays."""

from __future__ import annotations

import csv
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np


def to_sorting(peaks: np.ndarray, labels: np.ndarray, unit_ids, sampling_frequency: float, num_segments: int):
    """NumpySorting from events and their unit index (-1 = not a spike); segments are kept."""
    from spikeinterface.core import NumpySorting
    from spikeinterface.core.base import minimum_spike_dtype

    keep = labels >= 0
    spikes = np.zeros(int(keep.sum()), dtype=minimum_spike_dtype)
    spikes["sample_index"] = peaks["sample_index"][keep]
    spikes["unit_index"] = labels[keep]
    spikes["segment_index"] = peaks["segment_index"][keep]
    spikes = spikes[np.lexsort((spikes["unit_index"], spikes["sample_index"], spikes["segment_index"]))]
    unit_ids = np.asarray(unit_ids)
    sorting = NumpySorting(spikes, sampling_frequency, unit_ids)
    # NumpySorting counts segments up to the last spike: add the silent trailing ones
    from spikeinterface.core.basesorting import SpikeVectorSortingSegment

    for segment_index in range(sorting.get_num_segments(), num_segments):
        sorting.add_sorting_segment(SpikeVectorSortingSegment(spikes, segment_index, unit_ids))
    return sorting


def save_checkpoint(file_path: Path, model, model_name: str, history: list[dict], extra: dict | None = None) -> None:
    """Save what rebuilds the model: its name, config, weights and history, plus ``extra`` (pipeline settings)."""
    import torch

    from . import __version__

    checkpoint = {
        "model": model_name,
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": history,
        "version": __version__,
    }
    checkpoint.update(extra or {})
    # write, then rename: a run killed while saving leaves the previous file (or none), never a truncated one
    file_path = Path(file_path)
    partial = file_path.with_name(file_path.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, file_path)


def load_checkpoint(file_path: Path):
    """Rebuild a model saved by :func:`save_checkpoint`; returns ``(model, checkpoint_dict)`` (model on the CPU, in
    eval mode)."""
    import torch

    from .models import MODELS

    checkpoint = torch.load(Path(file_path), map_location="cpu", weights_only=False)
    model_class, config_class = MODELS[checkpoint["model"]]
    model = model_class(config_class(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, checkpoint


def save_history(file_path: Path, history: list[dict]) -> None:
    """Training history as CSV: one row per epoch and stage, one column per loss term."""
    columns = []
    for row in history:
        columns += [key for key in row if key not in columns]
    with open(file_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def save_arrays(folder: Path, **arrays) -> None:
    """Save named arrays as .npy files in ``folder``."""
    for name, array in arrays.items():
        np.save(Path(folder) / f"{name}.npy", array)
