"""Instant sorting: a saved model sorts new sessions of the same probe, no training.

``load_model(path)`` rebuilds what an ``elvisort`` run saved in ``sorter_output/model.pt``; the model's
``sort(recording)`` finds the spikes of its units by template matching with their saved templates (moved when the
session's units sit elsewhere on the probe), or, with ``matching="none"``, by detection and the classifier, both
on the fixed block grid of :mod:`spikeinterface_elvisort.streaming` that a stream shares;
``fine_tune(recording, labels)`` retrains the classifier branch alone on labels, for instance a Phy folder curated
for a new session.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from .blocks import DEFAULT_BLOCK_MS, BlockEngine
from .displacement import estimate_displacement, moved_templates
from .labels import check_same_probe, collect_events, measure_noise_levels, read_labels, _check_sorting
from .params import max_training_events
from .streaming import scale_to_uV, sort_on_grid

logger = logging.getLogger(__name__)


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
        self._warn_if_motion_corrected()
        return BlockEngine(self.network, self.settings, device, block_ms=block_ms, noise_levels=noise_levels)

    def _warn_if_motion_corrected(self):
        if self.settings.motion_corrected:
            warnings.warn(
                f"this model was trained on motion-corrected traces (motion_correction="
                f"{self.params['motion_correction']!r}) but inference corrects no motion: drift in the recording "
                "being sorted will cost accuracy (train a model on it with run_sorter to correct it)",
                stacklevel=4,
            )

    def sort(self, recording, *, matching: str = "model", displacement="auto", noise_levels="model",
             pipeline: str = "blocks", block_ms: float = DEFAULT_BLOCK_MS, device=None, n_jobs: int = 2,
             verbose: bool = False):
        """Sort ``recording`` with the trained model: inference only, no training.

        With matching (the default), the spikes are found by SpikeInterface's template matching with the saved
        units' templates on the traces preprocessed as at training (the same filter, reference and whitening
        matrix), as the last stage of a full run finds them: spikes in collisions and below the detection threshold
        are found too. With ``matching="none"``, detection and the classifier label the events instead; spikes
        that detection misses in a collision are lost. Both run block by block on the fixed grid of
        :class:`~spikeinterface_elvisort.OnlineSorter`, so a stream with the same options gives this exact result.

        Parameters
        ----------
        recording : BaseRecording
            A recording of the probe the model was trained on (same channels, order and sampling rate).
        matching : "model" | "circus-omp" | "tdc-peeler" | "none", default: "model"
            Template matching method: "model" is the ``matching_method`` of the training run (circus-omp by default;
            a model trained with "none" sorts without matching), "none" the classifier's forward pass only.
        displacement : "auto" | float | None, default: "auto"
            With matching: how far (um, along the probe's depth) this session's units sit from where they were at
            training. "auto" estimates it (:meth:`estimate_displacement`) and moves the templates when it is at
            least 5 um; a number moves them by that much; None not at all. The value used is in the sorting's
            annotation ``displacement_um``. The forward pass (``matching="none"``) is not corrected.
        noise_levels : "model" | "recording" | array, default: "model"
            Noise per channel for the detection threshold (and, with matching, for sparsifying the templates): the
            training recording's ("model"), measured on this recording ("recording", for sessions with another
            noise level), or given (the forward pass only).
        pipeline : "blocks" | "spikeinterface", default: "blocks"
            With matching: "blocks" matches on the fixed grid of ``block_ms`` blocks that
            :class:`~spikeinterface_elvisort.OnlineSorter` uses, so that a stream with the same ``matching``,
            ``displacement`` (as a number) and ``block_ms`` gives exactly these spikes; "spikeinterface" runs
            SpikeInterface's own chunked matching pipeline instead (as a full run's clean-up does). Both run in
            ``n_jobs`` worker processes and take about the same time; they differ by the few spikes whose matching
            depends on where the blocks end. The forward pass always runs on the grid.
        block_ms : float, default: 200
            Block length of the processing grid (forward pass, and matching with ``pipeline="blocks"``).
        device : str, optional
            Overrides the model's device.
        n_jobs : int, default: 2
            Threads (with matching: worker processes on Linux, threads elsewhere) for reading, filtering and
            matching; the result does not depend on it.
        verbose : bool
            Progress bar.

        Returns
        -------
        NumpySorting
            Units are the model's ``unit_ids``; same sampling frequency and segments as ``recording``.
        """
        from .device import blas_threads
        from .jobs import blas_thread_limit

        self.check_recording(recording)
        method = self._matching_method(matching)
        if pipeline not in ("spikeinterface", "blocks"):
            raise ValueError(f"pipeline must be 'spikeinterface' or 'blocks'; got {pipeline!r}")
        if block_ms <= 0:
            raise ValueError(f"block_ms must be > 0; got {block_ms}")
        # as in a full run: one BLAS thread per worker thread (BLAS's own threads fought the workers for the cores:
        # the forward pass of 120 s of 32 channels took 6.0 s instead of 4.4 s)
        with blas_threads(blas_thread_limit({"n_jobs": int(n_jobs)})):
            if method != "none" and pipeline == "spikeinterface":
                return self._match(recording, method, displacement, noise_levels, n_jobs, verbose)
            return self._sort_blocks(recording, method, displacement=displacement, noise_levels=noise_levels,
                                     block_ms=block_ms, device=device, n_jobs=n_jobs, verbose=verbose)

    def _sort_blocks(self, recording, method, *, displacement, noise_levels, block_ms, device, n_jobs, verbose):
        """The fixed block grid of the stream: the forward pass, or matching (``pipeline="blocks"``)."""
        from .jobs import sorter_job_kwargs

        if method == "none":
            engine = self._engine(block_ms, self._noise_levels(recording, noise_levels, block_ms), device)
            return sort_on_grid(engine, None, recording, self.unit_ids, n_jobs=int(n_jobs), verbose=verbose)
        engine = self._engine(block_ms, None, device)
        noise = self._matching_noise_levels(self.preprocessed(recording), noise_levels,
                                            sorter_job_kwargs({"n_jobs": int(n_jobs)}, verbose))
        templates, displacement = moved_templates(self, recording, displacement, n_jobs=n_jobs)
        sorting = sort_on_grid(engine, self.matcher(engine, method, templates, noise), recording, self.unit_ids,
                               n_jobs=int(n_jobs), verbose=verbose)
        sorting.annotate(displacement_um=displacement)
        return sorting

    def matcher(self, engine, method: str, templates=None, noise_levels=None):
        """The block matcher (:class:`~spikeinterface_elvisort.block_matching.BlockMatcher`) of ``engine``'s grid
        with ``templates`` (the saved ones when None) and the noise levels of the whitened traces (the model's
        when None)."""
        from .block_matching import BlockMatcher

        templates = self.templates if templates is None else templates
        noise = self.settings.noise_levels if noise_levels is None else noise_levels
        return BlockMatcher(engine, templates, nbefore=self.settings.nbefore, noise_levels=noise, method=method)

    def _matching_method(self, matching) -> str:
        methods = ("circus-omp", "tdc-peeler", "none")
        method = self.params.get("matching_method", "none") if matching == "model" else matching
        if method not in methods:
            raise ValueError(f"matching={matching!r} is not valid; choose 'model' or one of {list(methods)}")
        if method != "none" and self.templates.shape[0] != self.unit_ids.size:
            raise ValueError("this model holds no templates of its units (saved before templates were kept): sort "
                             "with matching='none', or fine-tune it on a sorting to compute them")
        return method

    def preprocessed(self, recording):
        """``recording`` filtered, referenced and whitened as the training run's traces were (the saved whitening
        matrix), lazily: the traces the templates and ``settings.noise_levels`` belong to."""
        import spikeinterface.preprocessing as spre

        from .front_end import filtering_kwargs
        from .preprocessing import preprocess

        preprocessed = preprocess(recording, **filtering_kwargs(self.params), whitening=False)
        whitening = self.settings.whitening
        if whitening:
            preprocessed = spre.whiten(preprocessed, W=whitening["W"], M=whitening.get("M"), dtype="float32",
                                       mode="local", radius_um=100.0)
        return preprocessed

    def estimate_displacement(self, recording, max_um: float = 60.0, n_jobs: int = 2) -> float:
        """How far (um, along the probe's depth, y) the units of ``recording`` sit from where they were in the
        training session: the shift of the saved templates whose spatial footprints (every channel's value at the
        alignment sample) best match those of the events detected on the first seconds of ``recording`` (every
        channel's value at the event's peak; noise, of zero mean, favours no shift).

        Each shift from -``max_um`` to ``max_um`` (1 um steps) moves the templates along the probe
        (SpikeInterface's ``move_dense_templates``, cubic interpolation); an event's score is the cosine similarity
        of its footprint with the closest moved template, and the shift with the best mean score wins. The first
        3000 events are used (about 1.5 s of a 384-channel probe with 100 units; at most 50 million samples x
        channels are read, 4.3 s of 384 channels or 52 s of 32), read ``n_jobs`` chunks of 1 s at a time.
        """
        return estimate_displacement(self, recording, max_um=max_um, n_jobs=n_jobs)

    def _match(self, recording, method, displacement, noise_levels, n_jobs, verbose):
        """Template matching with the saved templates, then the full run's duplicate rule (see :meth:`sort`)."""
        from .cleanup import match_templates
        from .curation import remove_duplicate_spikes
        from .jobs import matching_job_kwargs, sorter_job_kwargs
        from .results import to_sorting

        self._warn_if_motion_corrected()
        preprocessed = self.preprocessed(recording)
        job_kwargs = sorter_job_kwargs({"n_jobs": int(n_jobs)}, verbose)
        if not recording.check_serializability("pickle"):
            # a recording that lives in memory only (generated, say): SpikeInterface's matching pipeline cannot read
            # such a lazy chain (its segments lose their recording), so its preprocessed traces are kept in memory
            preprocessed = preprocessed.save(format="memory", **(job_kwargs | {"progress_bar": False}))
        noise = self._matching_noise_levels(preprocessed, noise_levels, job_kwargs)
        templates, displacement = moved_templates(self, recording, displacement, n_jobs=n_jobs)
        events, labels, kept, _ = match_templates(
            preprocessed, templates, noise_levels=noise, nbefore=self.settings.nbefore, method=method,
            job_kwargs=matching_job_kwargs({}, job_kwargs),
        )
        censor = max(int(round(self.params["duplicate_ms"] * recording.sampling_frequency / 1000.0)), 1)
        keep = remove_duplicate_spikes(events["sample_index"], labels, events["segment_index"], censor)
        lengths = np.array([recording.get_num_samples(s) for s in range(recording.get_num_segments())])
        keep &= events["sample_index"] < lengths[events["segment_index"]]
        # matching's unit indices are those of the kept templates: back to the model's units
        units = np.flatnonzero(kept)[labels[keep]]
        sorting = to_sorting(events[keep], units, self.unit_ids, recording.sampling_frequency,
                             recording.get_num_segments())
        sorting.annotate(displacement_um=displacement)
        return sorting

    def _matching_noise_levels(self, preprocessed, noise_levels, job_kwargs):
        """Noise of the whitened traces for matching: the model's, or measured on ``preprocessed``
        (:meth:`preprocessed` of the recording)."""
        from .preprocessing import seeded_noise_levels

        if isinstance(noise_levels, str) and noise_levels == "recording":
            return seeded_noise_levels(preprocessed, int(self.params["seed"]), job_kwargs)
        if isinstance(noise_levels, str) and noise_levels == "model":
            return np.asarray(self.settings.noise_levels, dtype=np.float32)
        raise ValueError("with matching, noise_levels must be 'model' or 'recording' (the noise of the whitened "
                         "traces); give an array with matching='none'")

    def _noise_levels(self, recording, noise_levels, block_ms):
        if isinstance(noise_levels, str):
            if noise_levels == "model":
                return None
            if noise_levels == "recording":
                return measure_noise_levels(self._engine(block_ms), recording, scale_to_uV(recording))
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
        sorting : BaseSorting, or str or Path
            Labels for ``recording``: a sorting, a saved sorting folder, or a Phy folder (for instance the session
            sorted, exported with ``export_to_phy`` and curated in Phy; clusters labelled "noise" are left out).
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
        sorting = read_labels(sorting)
        _check_sorting(sorting, recording)
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1; got {epochs}")
        engine = self._engine(noise_levels=self._noise_levels(recording, noise_levels, DEFAULT_BLOCK_MS))
        unit_ids = np.asarray(sorting.unit_ids)
        events, templates = collect_events(engine, recording, scale_to_uV(recording), sorting,
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
