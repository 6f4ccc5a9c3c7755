"""What lands in sorter_output/: the sorting, the model checkpoint, the training history, optional arrays."""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, fields
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


MODEL_FORMAT = 1  # the layout of the settings in model.pt; raise it when a field changes meaning


@dataclass
class ModelSettings:
    """What ``model.pt`` holds beside the network (its name, config, weights and history): the settings a saved
    model sorts new recordings with. Both sorters write it (:meth:`for_run`, :meth:`to_dict`); :func:`load_model
    <spikeinterface_elvisort.instant.load_model>`, the block engine of instant sorting and ``OnlineSorter`` read it
    (:meth:`from_checkpoint`).

    Attributes
    ----------
    params : dict
        The run's sorter parameters.
    sampling_frequency : float
        Hz.
    channel_ids, channel_locations : list, (num_channels, 2) array
        The probe, in um.
    noise_levels : (num_channels,) array
        Noise of the preprocessed (whitened) traces, in their units.
    nbefore, nafter : int
        Samples of a snippet before and after the peak.
    whitening : dict or None
        The whitening the traces got ({"W": matrix, "M": means or None}); None without.
    motion_corrected : bool
        Whether the traces were interpolated to undo drift.
    detection_noise_levels : (num_channels,) array or None
        Noise of the traces before whitening, when events were detected on those (None: on the preprocessed ones).
    unit_ids, templates : array or None
        The final units and their templates (num_units, num_samples, num_channels), once known.
    cleaner_used : bool or None
        ssae: whether its cleaner filtered the events.
    """

    params: dict
    sampling_frequency: float
    channel_ids: list
    channel_locations: np.ndarray
    noise_levels: np.ndarray
    nbefore: int
    nafter: int
    whitening: dict | None = None
    motion_corrected: bool = False
    detection_noise_levels: np.ndarray | None = None
    unit_ids: np.ndarray | None = None
    templates: np.ndarray | None = None
    cleaner_used: bool | None = None

    @classmethod
    def for_run(cls, recording, params: dict, noise_levels, nbefore: int, nafter: int, cache_info: dict):
        """The settings of a run on ``recording``; ``cache_info`` is the front end's (whitening, motion, detection
        noise levels)."""
        return cls(
            params=params,
            sampling_frequency=recording.sampling_frequency,
            channel_ids=list(map(str, recording.channel_ids)),
            channel_locations=recording.get_channel_locations()[:, :2],
            noise_levels=noise_levels,
            nbefore=nbefore,
            nafter=nafter,
            whitening=cache_info.get("whitening"),
            motion_corrected=bool(cache_info.get("motion_corrected")),
            detection_noise_levels=cache_info.get("detection_noise_levels"),
        )

    def to_dict(self) -> dict:
        """The fields as ``model.pt`` stores them (flat, beside the network's entries), with the format number."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        if self.cleaner_used is None:
            del values["cleaner_used"]
        return values | {"format": MODEL_FORMAT}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "ModelSettings":
        """The settings of a loaded ``model.pt``. Files written before a field existed get its default, except
        ``motion_corrected``: before it existed, any motion preset meant corrected traces.

        Raises
        ------
        ValueError
            When the file is of a newer format than this version of the package reads.
        """
        if int(checkpoint.get("format", 0)) > MODEL_FORMAT:
            raise ValueError(f"this model file has format {checkpoint['format']}, newer than the {MODEL_FORMAT} this "
                             "version of spikeinterface-elvisort reads: upgrade the package")
        values = {field.name: checkpoint[field.name] for field in fields(cls) if field.name in checkpoint}
        if "motion_corrected" not in checkpoint:
            values["motion_corrected"] = dict(checkpoint["params"]).get("motion_correction") not in (None, "auto")
        return cls(**values)


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
