"""Instant sorting: a saved model sorts new sessions of the same probe with one forward pass, no training.

``load_model(path)`` rebuilds what an ``elvisort`` run saved in ``sorter_output/model.pt``; the model's
``sort(recording)`` runs the fixed-grid block engine of :mod:`spikeinterface_elvisort.streaming` (filter, reference,
detect, classify) and ``fine_tune(recording, sorting)`` retrains the classifier branch alone on labels, for instance
a Phy-curated sorting of a new session.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .params import max_training_events
from .streaming import DEFAULT_BLOCK_MS, BlockEngine, read_block, sort_segment

LABEL_MATCH_MS = 0.4  # a detected event takes the label of a labelled spike at most this far away


def load_model(path, device: str = "auto") -> "ElvisortModel":
    """Load a trained ELVISort model for inference-only sorting.

    Parameters
    ----------
    path : str or Path
        ``model.pt`` itself, a ``sorter_output`` folder holding it, or the folder given to ``run_sorter`` (which
        holds ``sorter_output/model.pt``).
    device : "auto" | "cpu" | "cuda" | "cuda:N", default: "auto"

    Returns
    -------
    ElvisortModel
    """
    from .results import load_checkpoint

    path = Path(path)
    candidates = [path, path / "model.pt", path / "sorter_output" / "model.pt"]
    file_path = next((p for p in candidates if p.is_file()), None)
    if file_path is None:
        raise FileNotFoundError(
            f"no ELVISort model at {str(path)!r}: give model.pt, the sorter_output folder of an elvisort run, or the "
            "run_sorter output folder (a run that found no units saves no model)"
        )
    if file_path != path:  # found in a folder: only the model of a run that finished
        _check_run_finished(file_path.parent.parent)
    try:
        network, checkpoint = load_checkpoint(file_path)
    except Exception as error:  # a corrupt or foreign file: say so, not a pickle traceback
        raise ValueError(f"{str(file_path)!r} is not an ELVISort model file ({type(error).__name__}: {error})") from None
    missing = [key for key in ("params", "sampling_frequency", "channel_locations", "noise_levels", "unit_ids")
               if key not in checkpoint]
    if missing or network.classifier is None:
        raise ValueError(f"{str(file_path)!r} holds no complete ELVISort model (missing: {missing or ['classifier']})")
    return ElvisortModel(network, checkpoint, device=device, path=file_path)


def _check_run_finished(run_folder: Path) -> None:
    """A model found in a ``run_sorter`` folder is only used when that run finished without error."""
    import json

    if not (run_folder / "spikeinterface_params.json").is_file():
        return  # not a run_sorter folder (run_elvisort called directly): nothing to check
    rerun = ("rerun it (run_sorter(..., remove_existing_folder=True)), or give the model.pt file itself if you trust "
             "it")
    try:
        log = json.loads((run_folder / "spikeinterface_log.json").read_text(encoding="utf8"))
    except (OSError, ValueError):
        raise ValueError(f"the run in {str(run_folder)!r} did not finish (interrupted?): {rerun}") from None
    if log.get("error"):
        raise ValueError(f"the run in {str(run_folder)!r} failed (see its spikeinterface_log.json): {rerun}")


class ElvisortModel:
    """A trained ELVISort network with the settings it was trained with: sorts new recordings of the same probe.

    Build it with :func:`load_model`. Attributes: ``unit_ids``, ``templates`` (num_units, num_samples,
    num_channels, preprocessed units), ``sampling_frequency``, ``channel_locations``, ``params`` (the run's sorter
    parameters), ``network`` (the torch module), ``history`` (training history rows).
    """

    def __init__(self, network, checkpoint: dict, device: str = "auto", path=None):
        from .device import resolve_device
        from .results import ModelSettings

        self.network = network
        self.checkpoint = checkpoint
        self.settings = ModelSettings.from_checkpoint(checkpoint)
        self.path = path
        self.device = resolve_device(device)
        self.unit_ids = np.asarray(self.settings.unit_ids)
        templates = self.settings.templates
        self.templates = np.asarray(np.zeros((0, 0, 0)) if templates is None else templates, dtype=np.float32)
        self.sampling_frequency = float(self.settings.sampling_frequency)
        self.channel_locations = np.asarray(self.settings.channel_locations, dtype=np.float64)
        self.params = dict(self.settings.params)
        self.history = list(checkpoint.get("history", []))
        if network.config.num_classes != self.unit_ids.size + 1:
            raise ValueError(
                f"inconsistent model: {network.config.num_classes} classifier classes for {self.unit_ids.size} units "
                "(+1 non-spike class expected)"
            )

    def __repr__(self) -> str:
        return (f"ElvisortModel({self.unit_ids.size} units, {self.channel_locations.shape[0]} channels, "
                f"{self.sampling_frequency:.0f} Hz{', ' + str(self.path) if self.path else ''})")

    # -- checks --------------------------------------------------------------------------------------------------
    def check_recording(self, recording) -> None:
        """Raise ValueError when ``recording`` does not come from the probe the model was trained on."""
        check_same_probe(
            recording, self.channel_locations, self.sampling_frequency, "the model was trained",
            "use a model trained on this probe (or train one: run_sorter('elvisort', recording))",
        )

    # -- inference -----------------------------------------------------------------------------------------------
    def _engine(self, block_ms: float = DEFAULT_BLOCK_MS, noise_levels=None, device=None) -> BlockEngine:
        from .device import resolve_device

        if block_ms <= 0:
            raise ValueError(f"block_ms must be > 0; got {block_ms}")
        device = self.device if device is None else resolve_device(device)
        if self.settings.motion_corrected:
            warnings.warn(
                f"this model was trained on motion-corrected traces (motion_correction="
                f"{self.params['motion_correction']!r}) but inference corrects no motion: drift in the recording "
                "being sorted will cost accuracy (train a model on it with run_sorter to correct it)",
                stacklevel=3,
            )
        return BlockEngine(self.network, self.settings, device, block_ms=block_ms, noise_levels=noise_levels)

    def sort(self, recording, *, noise_levels="model", block_ms: float = DEFAULT_BLOCK_MS, device=None,
             n_jobs: int = 2, verbose: bool = False):
        """Sort ``recording`` with the trained network: inference only, no training.

        Filtering, referencing, detection and the classifier run block by block (the same grid as
        :class:`~spikeinterface_elvisort.OnlineSorter`, so a stream gives this exact result).

        Parameters
        ----------
        recording : BaseRecording
            A recording of the probe the model was trained on (same channels, order and sampling rate).
        noise_levels : "model" | "recording" | array, default: "model"
            Noise per channel for the detection threshold: the training recording's ("model"), measured on this
            recording ("recording", for sessions with another noise level), or given.
        block_ms : float, default: 200
            Block length of the processing grid.
        device : str, optional
            Overrides the model's device.
        n_jobs : int, default: 2
            Threads for reading and filtering; the result does not depend on it.
        verbose : bool
            Progress bar.

        Returns
        -------
        NumpySorting
            Units are the model's ``unit_ids``; same sampling frequency and segments as ``recording``.
        """
        from .results import to_sorting

        self.check_recording(recording)
        noise = self._noise_levels(recording, noise_levels, block_ms)
        engine = self._engine(block_ms, noise, device)
        scale = _scale_to_uV(recording)
        parts = []
        for segment_index in range(recording.get_num_segments()):
            samples, labels, channels, amplitudes = sort_segment(
                engine, recording, segment_index, scale, num_workers=int(n_jobs), progress_bar=verbose
            )
            events = np.zeros(samples.size, dtype=[("sample_index", "int64"), ("segment_index", "int64")])
            events["sample_index"], events["segment_index"] = samples, segment_index
            parts.append((events, labels))
        events = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return to_sorting(events, labels, self.unit_ids, recording.sampling_frequency, recording.get_num_segments())

    def _noise_levels(self, recording, noise_levels, block_ms):
        if isinstance(noise_levels, str):
            if noise_levels == "model":
                return None
            if noise_levels == "recording":
                return measure_noise_levels(self._engine(block_ms), recording, _scale_to_uV(recording))
            raise ValueError(f"noise_levels must be 'model', 'recording' or an array; got {noise_levels!r}")
        return np.asarray(noise_levels, dtype=np.float32)

    # -- training on labels --------------------------------------------------------------------------------------
    def fine_tune(self, recording, sorting, epochs: int = 10, learning_rate: float = 1e-2,
                  noise_levels="model", verbose: bool = False) -> list[dict]:
        """Retrain the classifier branch alone on the labels of ``sorting`` (the rest of the network is frozen).

        Events are detected in ``recording`` as :meth:`sort` detects them; an event within 0.4 ms of a spike of
        ``sorting`` takes that spike's unit, the others train the non-spike class. When ``sorting`` has the model's
        unit ids the classifier continues from its weights, otherwise it restarts with ``sorting``'s units, which
        become the model's ``unit_ids``; templates are recomputed.

        Parameters
        ----------
        recording : BaseRecording
            A recording of the model's probe.
        sorting : BaseSorting
            Labels for ``recording`` (for instance a Phy-curated sorting read back with ``read_phy``).
        epochs : int, default: 10
        learning_rate : float, default: 0.01
            Adam's step for the classifier head (it trains on cached embeddings; a restarted head needs a larger
            step than the run's ``train_learning_rate`` to converge in 10 epochs).

        Returns
        -------
        history : list of dict
            One row per epoch (also appended to ``self.history``).
        """
        from .training import TrainConfig, train_model

        self.check_recording(recording)
        _check_sorting(sorting, recording)
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1; got {epochs}")
        engine = self._engine(noise_levels=self._noise_levels(recording, noise_levels, DEFAULT_BLOCK_MS))
        unit_ids = np.asarray(sorting.unit_ids)
        events, templates = collect_events(engine, recording, _scale_to_uV(recording), sorting,
                                           max_training_events(self.params, recording.get_num_channels()) * 5,
                                           seed=int(self.params["seed"]))
        labels = events["label"]
        if labels.size and (labels >= 0).sum() == 0:
            raise ValueError("no detected event lies near a spike of the labelled sorting: are they of this recording?")
        same_units = unit_ids.size == self.unit_ids.size and np.array_equal(unit_ids, self.unit_ids)
        targets = np.where(labels >= 0, labels, unit_ids.size)
        config = TrainConfig(epochs=int(epochs), batch_size=int(self.params["train_batch_size"]),
                             learning_rate=float(learning_rate),
                             trainable="classifier", seed=int(self.params["seed"]), stage="fine-tune")
        import torch

        with torch.random.fork_rng(devices=[]):  # new head weights and dropout masks depend on the seed only
            torch.manual_seed(int(self.params["seed"]))
            if not same_units:
                self.network.set_num_classes(unit_ids.size + 1)
            history = train_model(self.network, events["snippets"], config, self.device, labels=targets,
                                  positions=engine.locations[events["channel_index"]], verbose=verbose)
        self.unit_ids = unit_ids
        self.templates = templates
        self.checkpoint.update(unit_ids=unit_ids, templates=self.templates)
        self.settings.unit_ids, self.settings.templates = unit_ids, self.templates
        self.history += history
        return history

    def save(self, path) -> Path:
        """Save the model (weights, config, settings, unit ids, templates) to ``path`` (a file, or a folder that
        receives model.pt); :func:`load_model` reads it back."""
        from .results import save_checkpoint

        path = Path(path)
        if path.suffix != ".pt":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "model.pt"
        self.settings.unit_ids, self.settings.templates = self.unit_ids, self.templates
        extra = self.settings.to_dict()
        save_checkpoint(path, self.network, self.checkpoint.get("model", "beta_vae"), self.history, extra=extra)
        return path


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


def _scale_to_uV(recording) -> bool:
    # the rule of preprocessing.preprocess: integer traces with gains are filtered in microvolts
    return recording.get_dtype().kind in "iu" and recording.has_scaleable_traces()


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
