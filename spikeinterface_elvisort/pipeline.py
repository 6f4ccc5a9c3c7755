"""The whole ELVISort data flow, top to bottom: one call per stage, one log line per stage."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .checks import check_recording
from .clustering import cluster_latents
from .curation import (
    SplitTest, compute_templates, isi_violations_ratio, merge_similar_units, remove_duplicate_spikes,
    split_multimodal, template_snr,
)
from .detection import detect_spikes
from .device import blas_threads, resolve_device, seed_everything, thread_summary, torch_threads
from .inference import encode, predict_proba
from .models import build_model
from .numpy_kernels import numpy_kernels
from .params import blas_thread_limit, matching_job_kwargs, max_training_events, sorter_job_kwargs
from .preprocessing import (
    AUTO_MOTION_MIN_DISPLACEMENT_UM, AUTO_MOTION_MIN_SPAN_UM, cache_recording, displacement_range_um, estimate_drift,
    estimate_motion, interpolation_kwargs, preprocess, probe_span_um, seeded_noise_levels, whiten, whiten_in_place,
    whitens,
)
from .results import ModelSettings, save_arrays, save_checkpoint, save_history, to_sorting
from .snippets import channel_neighbours, extract_snippets, noise_peaks, window_samples
from .training import TrainConfig, train_model

logger = logging.getLogger("spikeinterface_elvisort")

MIN_TEMPLATE_SNR = 3.0  # units whose template peaks below this many noise levels are noise, not neurons
# a noise window must be a snippet's length away from every detection within this distance of its channel
NOISE_WINDOW_RADIUS_UM = 150.0
LABEL_CHUNK = 20_000  # events labelled per pass: memory of the labelling pass does not grow with the recording


def peak_rss_mib() -> float | None:
    """This process's peak resident memory since it started, in MiB (``getrusage``; it includes whatever the
    process did before this run), or None where the OS has no such call (Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class _Stages:
    """Times each stage and logs one line per stage (with the process's peak RSS so far, where known)."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.times = {}
        self.aside = 0.0  # seconds since `last` already logged by `timed`

    def done(self, stage: str, message: str, *args) -> None:
        """Log ``stage`` with the time since the previous stage (less what ``timed`` logged meanwhile)."""
        now = time.perf_counter()
        self._log(stage, now - self.last - self.aside, message, *args)
        self.last, self.aside = now, 0.0

    def timed(self, stage: str, seconds: float, message: str, *args) -> None:
        """Log ``stage``, which took ``seconds`` inside the stage now running (not counted in that one)."""
        self._log(stage, seconds, message, *args)
        self.aside += seconds

    def _log(self, stage, seconds, message, *args):
        self.times[stage] = seconds
        peak = peak_rss_mib()
        memory = "" if peak is None else f"  (peak RSS {peak:.0f} MiB)"
        logger.info(f"%-14s %6.1f s  {message}{memory}", stage, seconds, *args)


def run_elvisort(recording, params: dict, folder: Path, verbose: bool = False):
    """Sort ``recording`` with ELVISort; writes model.pt, history.csv (and arrays) in ``folder``.

    Parameters
    ----------
    recording : BaseRecording
        Any SpikeInterface recording with a probe; it is never modified.
    params : dict
        A full, checked parameter dict (``spikeinterface_elvisort.params.DEFAULT_PARAMS`` updated by the user).
    folder : Path
        Output folder (``sorter_output/`` under ``run_sorter``).
    verbose : bool
        Progress bars for the chunked stages and training.

    Returns
    -------
    sorting : NumpySorting
        Same sampling frequency and segments as ``recording``.
    """
    folder = Path(folder)
    check_recording(recording, params)  # cheap; run_sorter already ran it, direct callers need it too
    device = resolve_device(params["device"])
    rng = seed_everything(params["seed"])
    # the caller's process keeps its own settings
    with torch_threads(params["torch_threads"]), blas_threads(blas_thread_limit(params["job_kwargs"])):
        return _run(recording, params, folder, verbose, device, rng)


def _run(recording, params, folder, verbose, device, rng):
    stages = _Stages()
    if params["pretrained_model"] is not None:
        return _sort_pretrained(recording, params, folder, verbose, device, stages)
    target = recording  # the recording to sort; the stages below learn from `recording`
    labelled = None
    if params["training_sorting"] is not None:
        # supervised: learn from the labelled recording (this one unless training_recording is given), then sort
        # `target` with the trained model
        labelled, recording = _read_labels(params, target)
    job_kwargs = sorter_job_kwargs(params["job_kwargs"], verbose)
    sampling_frequency = recording.sampling_frequency
    num_segments = recording.get_num_segments()
    nbefore, nafter = window_samples(params["ms_before"], params["ms_after"], sampling_frequency)
    channel_locations = recording.get_channel_locations()[:, :2]
    logger.info(
        "elvisort on %d channels, %d segment(s), %.1f s at %.0f Hz; device %s, %s",
        recording.get_num_channels(), num_segments, recording.get_total_duration(), sampling_frequency, device,
        thread_summary(job_kwargs["n_jobs"]),
    )

    preprocessed, cache_info, noise_levels, peaks = _front_end(recording, params, folder, job_kwargs, stages)

    neighbours = channel_neighbours(channel_locations, params["snippet_channels"])
    num_units = 0
    final_labels = np.full(peaks.size, -1, dtype=np.int64)
    history: list[dict] = []
    model = None
    settings = ModelSettings.for_run(recording, params, noise_levels, nbefore, nafter, cache_info)
    if labelled is not None:
        model, history, training_set = _learn_from_labels(
            preprocessed, peaks, labelled, noise_levels, neighbours, channel_locations, nbefore, nafter, params,
            device, rng, stages, verbose,
        )
        templates = compute_templates(preprocessed, training_set["events"], training_set["labels"],
                                      labelled.unit_ids.size, nbefore, nafter, job_kwargs)
        settings.unit_ids, settings.templates = np.asarray(labelled.unit_ids), templates
        save_checkpoint(folder / "model.pt", model, "beta_vae", history, extra=settings.to_dict())
        save_history(folder / "history.csv", history)
        del preprocessed
        _drop_cache(cache_info)
        return _sort_pretrained(target, params | {"pretrained_model": folder / "model.pt"}, folder, verbose, device,
                                stages, save=False)
    if peaks.size >= 2 * params["clustering_min_cluster_size"]:
        model, history, final_labels, num_units, training_set = _learn_and_label(
            preprocessed, peaks, noise_levels, neighbours, channel_locations, nbefore, nafter, params, device, rng,
            job_kwargs, stages, verbose,
        )
    else:
        logger.info("too few events to learn units from (%d): the sorting is empty", peaks.size)

    # clean-up: templates, merges, weak units, optional template matching, duplicates
    peaks_out, labels_out, num_units, templates = _clean_up(
        preprocessed, peaks, final_labels, num_units, noise_levels, nbefore, nafter, params, job_kwargs
    )
    stages.done("clean-up", "%d units, %d spikes", num_units, int((labels_out >= 0).sum()))

    unit_ids = np.arange(num_units)
    sorting = to_sorting(peaks_out, labels_out, unit_ids, sampling_frequency, num_segments)
    if model is not None and num_units:
        # the saved model must label events with the final units: retrain its classifier head on them
        history += _classifier_for_units(model, training_set, sorting, params, device, verbose)
        stages.done("saved model", "classifier retrained on the %d final units", num_units)
        settings.unit_ids, settings.templates = unit_ids, templates
        save_checkpoint(folder / "model.pt", model, "beta_vae", history, extra=settings.to_dict())
        save_history(folder / "history.csv", history)
    if params["save_arrays"]:
        save_arrays(folder, peaks=peaks, labels=final_labels, noise_levels=noise_levels, templates=templates)
    del preprocessed
    _drop_cache(cache_info)
    logger.info("total %.1f s", time.perf_counter() - stages.start)
    return sorting


def _drop_cache(cache_info):
    """Remove the preprocessing cache folder, when there is one (the caller drops its recording first)."""
    if cache_info["mode"] == "folder":
        from spikeinterface.sortingcomponents.tools import clean_cache_preprocessing

        clean_cache_preprocessing(cache_info)


def _front_end(recording, params, folder, job_kwargs, stages, motion=None):
    """Preprocessing (cached), noise levels and detection: the stages every sorter of the package shares.
    ``motion``: a drift to correct, already estimated (by ``motion_correction="auto"``).
    Returns (preprocessed recording, cache info, noise levels, peaks)."""
    seed = int(params["seed"])
    nbefore, nafter = window_samples(params["ms_before"], params["ms_after"], recording.sampling_frequency)

    # preprocessing, with the drift estimated on the filtered, referenced traces (before whitening) when asked
    filtering = dict(
        apply_preprocessing=params["apply_preprocessing"],
        freq_min=params["freq_min"],
        freq_max=params["freq_max"],
        common_reference=params["common_reference"],
    )
    interpolate_kwargs = interpolation_kwargs(params["motion_correction_kwargs"])
    if motion is None and params["motion_correction"] not in (None, "auto"):
        motion, interpolate_kwargs = estimate_motion(
            preprocess(recording, **filtering), params["motion_correction"], folder / "motion",
            job_kwargs, params["motion_correction_kwargs"], seed=seed,
        )
        displacement = np.concatenate([np.ravel(d) for d in motion.displacement])
        stages.done("motion", "%s: displacement %.1f to %.1f um, saved in motion/", params["motion_correction"],
                    displacement.min(), displacement.max())
    # detection on the traces before whitening (see the parameter's description): without motion correction those
    # traces are cached and whitened as they are read (one filtering pass in all), else they are filtered again
    cache_before_whitening = motion is None and params["detect_before_whitening"] and whitens(
        recording, params["apply_preprocessing"], params["whitening"]
    )
    detection_recording = None
    try:
        if cache_before_whitening:
            detection_recording, cache_info = cache_recording(
                preprocess(recording, **filtering, whitening=False), params["cache_preprocessing"],
                folder / "cache_preprocessing", job_kwargs,
            )
            preprocessed = whiten(detection_recording, seed)
        else:
            preprocessed = preprocess(
                recording, **filtering, whitening=params["whitening"], motion=motion,
                interpolate_motion_kwargs=interpolate_kwargs, seed=seed,
            )
    except np.linalg.LinAlgError as error:  # the whitening matrix's SVD, on random chunks of the filtered traces
        raise ValueError(
            f"whitening failed ({error}), as it does when the recording holds NaN or Inf samples: replace them "
            "before sorting (spikeinterface.preprocessing.silence_periods(recording, list_periods, mode='zeros') or "
            "recording.remove_channels), or sort with whitening=False"
        ) from None
    whitening = _whitening_matrix(preprocessed)  # saved with the model; the cache loses the chain
    if not cache_before_whitening:
        preprocessed, cache_info = cache_recording(
            preprocessed, params["cache_preprocessing"], folder / "cache_preprocessing", job_kwargs
        )
    cache_info["whitening"] = whitening
    cache_info["motion_corrected"] = motion is not None
    noise_levels = seeded_noise_levels(preprocessed, seed, job_kwargs)
    if not np.all(np.isfinite(noise_levels)):
        bad = np.asarray(recording.channel_ids)[~np.isfinite(noise_levels)].tolist()
        raise ValueError(
            f"the recording holds NaN or Inf samples (the noise level of channel(s) {bad} is not finite after "
            "filtering): replace them before sorting, e.g. zero the bad periods "
            "(spikeinterface.preprocessing.silence_periods(recording, list_periods, mode='zeros')) or remove the "
            "channels (recording.remove_channels)"
        )
    detection_noise_levels = noise_levels
    if whitening is not None and params["detect_before_whitening"]:
        if detection_recording is None:  # motion correction: the interpolated, unwhitened traces
            detection_recording = preprocess(
                recording, **filtering, whitening=False, motion=motion, interpolate_motion_kwargs=interpolate_kwargs,
                seed=seed,
            )
        detection_noise_levels = seeded_noise_levels(detection_recording, seed, job_kwargs)
        cache_info["detection_noise_levels"] = detection_noise_levels  # saved with the model, for instant sorting
    else:
        detection_recording = preprocessed
    stages.done("preprocessing", "cache: %s", cache_info["mode"])

    peaks = detect_spikes(
        detection_recording,
        detection_noise_levels,
        method=params["detection_method"],
        peak_sign=params["peak_sign"],
        detect_threshold=params["detect_threshold"],
        exclude_sweep_ms=params["detect_exclude_sweep_ms"],
        radius_um=params["detect_radius_um"],
        snippet_samples=nbefore + nafter,
        job_kwargs=job_kwargs,
    )
    if motion is None and _estimates_drift(recording, params):
        start = time.perf_counter()
        # the drift from the events just detected, on traces before whitening
        unwhitened = detection_recording if detection_recording is not preprocessed else preprocess(recording,
                                                                                                    **filtering)
        drift = estimate_drift(unwhitened, peaks, detection_noise_levels, job_kwargs, seed=seed)
        moved = 0.0 if drift is None else displacement_range_um(drift)
        if moved >= AUTO_MOTION_MIN_DISPLACEMENT_UM:
            drift.save(folder / "motion", overwrite=True)
            stages.done("motion", "auto: the probe moved by up to %.1f um (>= %.0f um): traces interpolated, "
                        "preprocessing and detection again; motion saved in motion/", moved,
                        AUTO_MOTION_MIN_DISPLACEMENT_UM)
            del preprocessed, detection_recording, unwhitened
            _drop_cache(cache_info)
            return _front_end(recording, params, folder, job_kwargs, stages, motion=drift)
        stages.timed("motion", time.perf_counter() - start, "auto: the probe moved by up to %.1f um (< %.0f um): "
                     "no correction", moved, AUTO_MOTION_MIN_DISPLACEMENT_UM)
    before_whitening = detection_recording is not preprocessed
    if cache_before_whitening and whiten_in_place(detection_recording, preprocessed):
        # the unwhitened traces are not read again: whitening them once, in their memory, spares every later pass
        # (training, labelling, clean-up, the matching workers) its own matrix product over the traces
        preprocessed = detection_recording
    if before_whitening:
        # amplitudes on the traces everything after detection reads, in the units of ``noise_levels``
        peaks["amplitude"] = _values_at(preprocessed, peaks)
    stages.done("detection", "%d events (%.1f per channel per s)%s", peaks.size,
                peaks.size / max(recording.get_num_channels() * recording.get_total_duration(), 1e-9),
                ", before whitening" if before_whitening else "")
    return preprocessed, cache_info, noise_levels, peaks


def _estimates_drift(recording, params) -> bool:
    """Whether ``motion_correction="auto"`` estimates the drift of ``recording``: on probes of at least
    ``AUTO_MOTION_MIN_SPAN_UM``, when sorting from clustering (a model trained on labels sorts the recording with
    instant sorting, which corrects no motion)."""
    return (params["motion_correction"] == "auto" and params.get("training_sorting") is None
            and params.get("pretrained_model") is None and probe_span_um(recording) >= AUTO_MOTION_MIN_SPAN_UM)


def _values_at(recording, peaks, chunk_bytes: int = 2**26) -> np.ndarray:
    """``recording``'s sample at each peak's (segment, sample, channel), read in chunks of at most ``chunk_bytes``
    of float32 traces (about 64 MB whatever the number of channels)."""
    values = np.zeros(peaks.size, dtype=np.float32)
    chunk_samples = max(chunk_bytes // (4 * recording.get_num_channels()), 1)
    for segment_index in range(recording.get_num_segments()):
        in_segment = np.flatnonzero(peaks["segment_index"] == segment_index)
        samples = peaks["sample_index"][in_segment]
        for start in range(0, recording.get_num_samples(segment_index), chunk_samples):
            inside = in_segment[(samples >= start) & (samples < start + chunk_samples)]
            if inside.size:
                traces = recording.get_traces(segment_index=segment_index, start_frame=start,
                                              end_frame=start + chunk_samples)
                values[inside] = traces[peaks["sample_index"][inside] - start, peaks["channel_index"][inside]]
    return values


def _train_vae(preprocessed, peaks, noise_levels, neighbours, channel_locations, nbefore, nafter, params, device, rng,
               stages, verbose):
    """Training set (a bounded random subsample of the events plus noise windows for the non-spike class) and the
    unsupervised beta-VAE trained on it. Returns (model, history, training_set, base TrainConfig)."""
    seed = int(params["seed"])
    num_train = min(max_training_events(params, preprocessed.get_num_channels()), peaks.size)
    train_indices = np.sort(rng.choice(peaks.size, size=num_train, replace=False))
    noise = noise_peaks(peaks, preprocessed, int(params["train_noise_fraction"] * num_train), nbefore + nafter, rng,
                        radius_um=NOISE_WINDOW_RADIUS_UM)
    train_snippets = extract_snippets(preprocessed, peaks[train_indices], neighbours, nbefore, nafter)
    noise_snippets = extract_snippets(preprocessed, noise, neighbours, nbefore, nafter)
    stages.done("snippets", "%d training events, %d noise windows, snippet %s",
                num_train, noise.size, train_snippets.shape[1:])

    model = build_model(
        "beta_vae",
        num_samples=nbefore + nafter,
        num_channels=neighbours.shape[1],
        input_scale=float(np.std(train_snippets)) or 1.0,
        noise_level=float(np.median(noise_levels)) or 1.0,
        **params["model_kwargs"],
    )
    mixed = params["mixed_precision"] is True or (params["mixed_precision"] == "auto" and device.type == "cuda")
    base = TrainConfig(
        batch_size=params["train_batch_size"], learning_rate=params["train_learning_rate"], mixed_precision=mixed,
        seed=seed,
    )
    training_set = {
        "events": peaks[train_indices],  # the training events (noise windows follow them in snippets/positions)
        "num_events": num_train,
        "snippets": np.concatenate([train_snippets, noise_snippets]),
        "positions": np.concatenate([channel_locations[peaks["channel_index"][train_indices]],
                                     channel_locations[noise["channel_index"]]]),
    }
    history = train_model(
        model, training_set["snippets"],
        replace(base, epochs=params["train_epochs"], weights={"kl": model.config.beta},
                kl_warmup_epochs=params["train_kl_warmup_epochs"], stage="vae"),
        device, verbose=verbose,
    )
    stages.done("training", "%d epochs, reconstruction %.1f, KL %.2f", params["train_epochs"],
                history[-1]["reconstruction"], history[-1]["kl"])
    return model, history, training_set, base


def _learn_and_label(preprocessed, peaks, noise_levels, neighbours, channel_locations, nbefore, nafter, params,
                     device, rng, job_kwargs, stages, verbose):
    """Train the beta-VAE on a subsample, cluster, refine with DEC, self-train the classifier, label every event."""
    if params["features"] != "vae":
        return _learn_and_label_features(preprocessed, peaks, noise_levels, neighbours, nbefore, nafter, params, rng,
                                         job_kwargs, stages)
    positions = channel_locations[peaks["channel_index"]]
    model, history, training_set, base = _train_vae(
        preprocessed, peaks, noise_levels, neighbours, channel_locations, nbefore, nafter, params, device, rng,
        stages, verbose,
    )
    beta = model.config.beta
    num_train = training_set["num_events"]
    train_events = training_set["events"]
    train_snippets = training_set["snippets"][:num_train]
    train_positions = training_set["positions"][:num_train]
    num_noise = training_set["snippets"].shape[0] - num_train

    # latent clustering, per peak channel, then merge clusters whose full-probe templates are near-identical
    latents = encode(model, train_snippets, device, batch_size=params["train_batch_size"] * 4)
    labels, num_clusters = _cluster(preprocessed, latents, train_events, noise_levels, nbefore, nafter, params,
                                    job_kwargs, stages)
    if num_clusters == 0:
        return model, history, np.full(peaks.size, -1, dtype=np.int64), 0, training_set

    # DEC refinement: Student-t soft assignment to centres initialised at the cluster means of the embedding
    embedding = np.concatenate([latents, train_positions / model.config.position_scale_um], axis=1)
    centres = np.stack([embedding[labels == k].mean(axis=0) for k in range(num_clusters)])
    model.set_centres(centres)
    confidence = np.ones(num_train)
    if params["train_dec_epochs"]:
        history += train_model(
            model, train_snippets,
            replace(base, epochs=params["train_dec_epochs"], weights={"kl": beta, "dec": params["train_dec_weight"]},
                    stage="dec"),
            device, positions=train_positions, verbose=verbose,
        )
        q = _soft_assignment(model, train_snippets, train_positions, device, params["train_batch_size"] * 4)
        confidence = np.where(np.argmax(q, axis=1) == labels, q[np.arange(num_train), np.maximum(labels, 0)], -1.0)
    confident = _most_confident(labels, confidence, params["clustering_confidence"])

    # self-training of the classifier branch: confident events + the non-spike class
    model.set_num_classes(num_clusters + 1)
    targets = np.concatenate([np.where(confident, labels, -1), np.full(num_noise, num_clusters)])
    history += train_model(
        model, training_set["snippets"],
        replace(base, epochs=params["train_classifier_epochs"], trainable="classifier", stage="classifier",
                class_balance=params["train_classifier_balance"]),
        device, labels=targets, positions=training_set["positions"], verbose=verbose,
    )
    stages.done("self-training", "%d of %d events confident, %d classes", int(confident.sum()), num_train,
                num_clusters + 1)

    # one batched labelling pass over every event, chunk by chunk
    final_labels = np.empty(peaks.size, dtype=np.int64)
    for start in range(0, peaks.size, LABEL_CHUNK):
        chunk = slice(start, start + LABEL_CHUNK)
        snippets = extract_snippets(preprocessed, peaks[chunk], neighbours, nbefore, nafter)
        probabilities = predict_proba(model, snippets, positions[chunk], device, params["train_batch_size"] * 4)
        final_labels[chunk] = np.argmax(probabilities, axis=1)
    final_labels[final_labels == num_clusters] = -1  # the non-spike class
    stages.done("labelling", "%d events labelled as spikes, %d as noise", int((final_labels >= 0).sum()),
                int((final_labels < 0).sum()))
    return model, history, final_labels, num_clusters, training_set


def _cluster(preprocessed, features, train_events, noise_levels, nbefore, nafter, params, job_kwargs, stages):
    """Cluster the training events' features per peak channel, split clusters that hold two populations, merge
    near-identical ones; returns (labels, number of clusters), -1 = noise."""
    seed = int(params["seed"])
    labels = cluster_latents(
        features,
        train_events["channel_index"],
        method=params["clustering_method"],
        max_components=params["clustering_max_components"],
        pca_components=params["clustering_pca_components"],
        min_cluster_size=params["clustering_min_cluster_size"],
        seed=seed,
    )
    num_clusters = num_found = int(labels.max()) + 1
    if num_clusters and params["clustering_split"]:
        labels, num_clusters = split_multimodal(
            preprocessed, train_events, labels, num_clusters, nbefore, nafter, noise_levels, seed=seed
        )
    num_split = num_clusters
    if num_clusters:
        labels, num_clusters = _merge_near_identical(
            preprocessed, train_events, labels, num_clusters, nbefore, nafter, noise_levels, params, job_kwargs
        )
    stages.done("clustering", "%d clusters (%s), %d after splits, %d after merging near-identical ones, %d events "
                "as noise", num_found, params["clustering_method"], num_split, num_clusters, int((labels < 0).sum()))
    return labels, num_clusters


def _learn_and_label_features(preprocessed, peaks, noise_levels, neighbours, nbefore, nafter, params, rng,
                              job_kwargs, stages):
    """The ablation of the latent (features="pca" | "raw"): the same training subsample, clustering and merge of
    near-identical clusters as the beta-VAE path, on PCA features or raw waveforms; every event then takes the
    label of the nearest cluster centroid of its peak channel (no network, no DEC, no classifier, no model.pt)."""
    from .features import fit_features, group_centroids, nearest_centroid
    from .models.config import BetaVAEConfig

    seed = int(params["seed"])
    num_train = min(max_training_events(params, preprocessed.get_num_channels()), peaks.size)
    train_indices = np.sort(rng.choice(peaks.size, size=num_train, replace=False))
    train_events = peaks[train_indices]
    train_snippets = extract_snippets(preprocessed, train_events, neighbours, nbefore, nafter)
    # PCA keeps as many dimensions as the beta-VAE latent it replaces (both levels)
    config = BetaVAEConfig(num_samples=nbefore + nafter, num_channels=neighbours.shape[1], **params["model_kwargs"])
    transform = fit_features(train_snippets, params["features"], config.latent_dim + config.upper_latent_dim,
                             scale=float(np.median(noise_levels)) or 1.0, seed=seed)
    features = transform(train_snippets)
    stages.done("features", "%s features of %d training events: %d dimensions", params["features"], num_train,
                features.shape[1])

    labels, num_clusters = _cluster(preprocessed, features, train_events, noise_levels, nbefore, nafter, params,
                                    job_kwargs, stages)
    final_labels = np.full(peaks.size, -1, dtype=np.int64)
    if num_clusters == 0:
        return None, [], final_labels, 0, None

    centroids = group_centroids(features, labels, train_events["channel_index"])
    for start in range(0, peaks.size, LABEL_CHUNK):
        chunk = slice(start, start + LABEL_CHUNK)
        snippets = extract_snippets(preprocessed, peaks[chunk], neighbours, nbefore, nafter)
        final_labels[chunk] = nearest_centroid(transform(snippets), peaks["channel_index"][chunk], centroids)
    stages.done("labelling", "%d events labelled by nearest centroid, %d on channels without clusters",
                int((final_labels >= 0).sum()), int((final_labels < 0).sum()))
    return None, [], final_labels, num_clusters, None


def _learn_from_labels(preprocessed, peaks, labelled, noise_levels, neighbours, channel_locations, nbefore, nafter,
                       params, device, rng, stages, verbose):
    """Supervised, as in the paper: the beta-VAE, then encoder and classifier branch trained on the labels (an event
    within 0.4 ms of a labelled spike takes its unit; other events and the noise windows are the non-spike class)."""
    if peaks.size < 2:
        raise ValueError(f"only {peaks.size} event(s) detected in the labelled recording: nothing to train on (check "
                         "detect_threshold and that the recording holds spikes)")
    model, history, training_set, base = _train_vae(
        preprocessed, peaks, noise_levels, neighbours, channel_locations, nbefore, nafter, params, device, rng,
        stages, verbose,
    )
    labels, targets = _label_training_set(model, training_set, labelled)
    history += train_model(
        model, training_set["snippets"],
        replace(base, epochs=params["train_epochs"], trainable="encoder_classifier", stage="supervised"),
        device, labels=targets, positions=training_set["positions"], verbose=verbose,
    )
    history += train_model(
        model, training_set["snippets"],
        replace(base, epochs=params["train_classifier_epochs"], trainable="classifier", stage="classifier"),
        device, labels=targets, positions=training_set["positions"], verbose=verbose,
    )
    training_set["labels"] = labels
    stages.done("supervised", "%d of %d training events labelled, %d units", int((labels >= 0).sum()), labels.size,
                labelled.unit_ids.size)
    return model, history, training_set


def _classifier_for_units(model, training_set, sorting, params, device, verbose):
    """Retrain the classifier head alone so that its classes are ``sorting``'s units (+ the non-spike class): the
    training events take the unit of a final spike within 0.4 ms, the others and the noise windows are non-spikes."""
    _, targets = _label_training_set(model, training_set, sorting)
    config = TrainConfig(epochs=params["train_classifier_epochs"], batch_size=params["train_batch_size"],
                         learning_rate=params["train_learning_rate"], trainable="classifier", seed=int(params["seed"]),
                         stage="final classifier", class_balance=1.0)
    return train_model(model, training_set["snippets"], config, device, labels=targets,
                       positions=training_set["positions"], verbose=verbose)


def _label_training_set(model, training_set, sorting):
    """Label the training events with ``sorting`` (an event within 0.4 ms of one of its spikes takes that unit) and
    size the classifier branch for its units + the non-spike class. Returns the events' labels (-1: none) and the
    classifier targets of every training snippet (unlabelled events and noise windows are the non-spike class)."""
    from .instant import label_events

    labels = label_events(training_set["events"], sorting)
    num_units = sorting.unit_ids.size
    num_noise = training_set["snippets"].shape[0] - labels.size
    model.set_num_classes(num_units + 1)
    targets = np.concatenate([np.where(labels >= 0, labels, num_units), np.full(num_noise, num_units)])
    return labels, targets


def _sort_pretrained(recording, params, folder, verbose, device, stages, save=True):
    """Inference only: the saved model's settings, detection and classifier (see ElvisortModel.sort)."""
    from .instant import load_model

    model = load_model(params["pretrained_model"], device=str(device))
    # threads for reading and filtering, as in the chunked stages of a full run (the result does not depend on them)
    n_jobs = sorter_job_kwargs(params["job_kwargs"], verbose)["n_jobs"]
    logger.info("elvisort inference with %r on %d channels, %.1f s; %s", model, recording.get_num_channels(),
                recording.get_total_duration(), thread_summary(n_jobs))
    sorting = model.sort(recording, n_jobs=n_jobs, verbose=verbose)
    # units of the model that did not fire in this recording are left out, as every sorter's output has no empty
    # units (export_to_phy and quality metrics break on them); the others keep the model's unit ids
    counts = sorting.count_num_spikes_per_unit(outputs="array")
    if np.any(counts == 0):
        logger.info("units without spikes left out: %s", sorting.unit_ids[counts == 0].tolist())
        sorting = sorting.remove_empty_units()
    stages.done("instant sort", "%d units, %d spikes", sorting.unit_ids.size, sorting.to_spike_vector().size)
    if save:
        model.save(Path(folder) / "model.pt")
    logger.info("total %.1f s", time.perf_counter() - stages.start)
    return sorting


def _read_labels(params, recording):
    """The labelled sorting (SpikeInterface folder or Phy folder) and the recording it labels, checked."""
    from spikeinterface.core import BaseRecording, BaseSorting, load

    from .instant import _check_sorting, check_same_probe

    path = Path(params["training_sorting"])
    if (path / "params.py").is_file() and (path / "spike_times.npy").is_file():
        from spikeinterface.extractors import read_phy

        sorting = read_phy(path, exclude_cluster_groups=["noise"])
    else:
        try:
            sorting = load(path)
        except Exception as error:
            raise ValueError(f"training_sorting={str(path)!r} is neither a saved SpikeInterface sorting nor a Phy "
                             f"folder ({type(error).__name__}: {error})") from None
    if not isinstance(sorting, BaseSorting):
        raise ValueError(f"training_sorting={str(path)!r} holds a {type(sorting).__name__}, not a sorting")
    labelled_recording = recording
    if params["training_recording"] is not None:
        labelled_recording = load(Path(params["training_recording"]))
        if not isinstance(labelled_recording, BaseRecording):
            raise ValueError(f"training_recording={params['training_recording']!r} holds a "
                             f"{type(labelled_recording).__name__}, not a recording")
        check_same_probe(
            recording, labelled_recording.get_channel_locations(), labelled_recording.sampling_frequency,
            "training_recording was recorded", "labels must come from the probe of the recording being sorted",
        )

    _check_sorting(sorting, labelled_recording)
    return sorting, labelled_recording


def _whitening_matrix(recording):
    """The whitening matrix (and mean) SpikeInterface's whiten computed, for the saved model; None without
    whitening."""
    from spikeinterface.preprocessing.whiten import WhitenRecording
    from spikeinterface.sortingcomponents.motion import InterpolateMotionRecording

    if isinstance(recording, InterpolateMotionRecording):  # motion correction interpolates the whitened traces
        recording = recording._kwargs["recording"]
    if not isinstance(recording, WhitenRecording):
        return None
    M = recording._kwargs.get("M")
    return {"W": np.asarray(recording._kwargs["W"], dtype=np.float32),
            "M": None if M is None else np.asarray(M, dtype=np.float32)}


def _most_confident(labels, confidence, fraction):
    """Per cluster, the ``fraction`` of its events with the highest confidence (events with confidence < 0, those
    DEC moved to another cluster, never count)."""
    confident = np.zeros(labels.size, dtype=bool)
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero((labels == label) & (confidence >= 0))
        if members.size == 0:
            continue
        cut = np.quantile(confidence[members], 1.0 - fraction)
        confident[members[confidence[members] >= cut]] = True
    return confident


def _soft_assignment(model, snippets, positions, device, batch_size):
    import torch

    latents = encode(model, snippets, device, batch_size)
    embedding = model.embed(torch.from_numpy(latents), torch.as_tensor(positions, dtype=torch.float32))
    model.cpu()
    with torch.no_grad():
        q = model.soft_assignment(embedding).numpy()
    model.to(device)
    return q


def _merge_near_identical(recording, peaks, labels, num_units, nbefore, nafter, noise_levels, params, job_kwargs):
    """Full-probe templates of the labelled events, agglomerative merge of those closer than
    ``params["merge_threshold"]`` (aligned over +-0.3 ms) that the split test does not call distinct; returns the
    relabelled events (-1 stays -1) and the new unit count."""
    templates = compute_templates(recording, peaks, labels, num_units, nbefore, nafter, job_kwargs)
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


def _clean_up(recording, peaks, labels, num_units, noise_levels, nbefore, nafter, params, job_kwargs):
    """Merge near-identical units, drop weak and tiny units, optionally re-find spikes by template matching,
    remove duplicates. Returns (events, labels, num_units, templates)."""
    sampling_frequency = recording.sampling_frequency
    empty_templates = np.zeros((0, nbefore + nafter, recording.get_num_channels()), dtype=np.float32)
    if num_units == 0:
        return peaks, labels, 0, empty_templates

    if params.get("clustering_split", False) and params["matching_method"] != "none":
        # units the classifier joined (elvisort; ssae has no such parameter): split them on a sample of their spikes
        # (template matching finds the rest)
        labels, num_units = split_multimodal(
            recording, peaks, labels, num_units, nbefore, nafter, noise_levels, max_events=1000,
            seed=int(params["seed"]),
        )
    labels, num_units = _merge_near_identical(
        recording, peaks, labels, num_units, nbefore, nafter, noise_levels, params, job_kwargs
    )
    templates = compute_templates(recording, peaks, labels, num_units, nbefore, nafter, job_kwargs)

    # weak (noise-like) and tiny units go
    counts = np.bincount(labels[labels >= 0], minlength=num_units)
    keep_units = (template_snr(templates, noise_levels) >= MIN_TEMPLATE_SNR) & (
        counts >= params["min_spikes_per_unit"]
    )
    labels, num_units, templates = _keep(labels, keep_units, templates)

    if params["matching_method"] != "none" and num_units:
        peaks, labels, kept, templates_object = _match(
            recording, templates, noise_levels, nbefore, params["matching_method"],
            matching_job_kwargs(params["job_kwargs"], job_kwargs),
        )
        num_units = int(kept.sum())
        if params["auto_merge"] and num_units > 1:
            labels, num_units = _auto_merge(recording, peaks, labels, templates_object, noise_levels, job_kwargs,
                                            min_spikes=params["auto_merge_min_spikes"])
        templates = compute_templates(recording, peaks, labels, num_units, nbefore, nafter, job_kwargs)

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
    labels, num_units, templates = _keep(labels, (counts >= params["min_spikes_per_unit"]) & ~noise, templates)
    keep = labels >= 0
    return peaks[keep], labels[keep], num_units, templates


def _keep(labels, keep_units, templates):
    new_index = np.cumsum(keep_units) - 1
    labels = np.where((labels >= 0) & keep_units[np.maximum(labels, 0)], new_index[np.maximum(labels, 0)], -1)
    return labels, int(keep_units.sum()), templates[keep_units]


def _match(recording, templates_array, noise_levels, nbefore, method, job_kwargs):
    """SpikeInterface template matching with the units' templates; returns (events, labels, kept unit mask)."""
    from spikeinterface.core import Templates
    from spikeinterface.core.node_pipeline import base_peak_dtype
    from spikeinterface.sortingcomponents.matching import find_spikes_from_templates
    from spikeinterface.sortingcomponents.tools import clean_templates

    num_units = templates_array.shape[0]
    templates = Templates(
        templates_array=templates_array,
        sampling_frequency=recording.sampling_frequency,
        nbefore=nbefore,
        channel_ids=recording.channel_ids,
        unit_ids=np.arange(num_units),
        probe=recording.get_probe(),
        is_in_uV=False,
    )
    # sparsify, and drop templates whose peak sits more than 0.2 ms off the alignment point: those come from
    # events caught on another phase of a unit that has its own, aligned template
    templates = clean_templates(
        templates, sparsify_threshold=1.5, noise_levels=noise_levels, min_snr=MIN_TEMPLATE_SNR, max_jitter_ms=0.2,
        remove_empty=True,
    )
    kept = np.isin(np.arange(num_units), templates.unit_ids)
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


def _auto_merge(recording, events, labels, templates, noise_levels, job_kwargs, min_spikes):
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
    merged = _merged_sorting(recording, sorting, templates, events["amplitude"], noise_levels, min_spikes, job_kwargs)
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


def _merged_sorting(recording, sorting, templates, amplitudes, noise_levels, min_spikes, job_kwargs):
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
