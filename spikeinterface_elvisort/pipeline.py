"""The whole ELVISort data flow, top to bottom: one call per stage, one log line per stage."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .checks import check_recording
from .cleanup import clean_up, merge_near_identical
from .clustering import cluster_latents, dec_soft_assignment, most_confident
from .curation import compute_templates, split_multimodal
from .device import blas_threads, resolve_device, seed_everything, thread_summary, torch_threads, uses_mixed_precision
from .front_end import RunContext, StageLog, drop_cache, log_run_start, run_front_end
from .inference import encode, predict_proba
from .models import build_model
from .params import max_training_events
from .jobs import blas_thread_limit, sorter_job_kwargs
from .results import ModelSettings, save_arrays, save_checkpoint, save_history, to_sorting
from .snippets import extract_snippets, label_in_chunks, noise_peaks, sample_training_events
from .training import TrainConfig, train_model

logger = logging.getLogger("spikeinterface_elvisort")

# a noise window must be a snippet's length away from every detection within this distance of its channel
NOISE_WINDOW_RADIUS_UM = 150.0


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
    stages = StageLog()
    if params["pretrained_model"] is not None:
        return _sort_pretrained(recording, params["pretrained_model"], params, folder=folder, verbose=verbose,
                                device=device, stages=stages)
    if params["training_sorting"] is not None:
        return _sort_supervised(recording, params, folder, verbose=verbose, device=device, rng=rng, stages=stages)
    job_kwargs = log_run_start("elvisort", recording, params, device, verbose)
    preprocessed, cache_info, noise_levels, peaks = run_front_end(recording, params, folder, job_kwargs, stages)
    run = RunContext.of(recording, params, noise_levels, device=device, rng=rng, job_kwargs=job_kwargs, stages=stages,
                        verbose=verbose)

    num_units = 0
    final_labels = np.full(peaks.size, -1, dtype=np.int64)
    history: list[dict] = []
    model = None
    if peaks.size >= 2 * params["clustering_min_cluster_size"]:
        model, history, final_labels, num_units, training_set = _learn_and_label(preprocessed, peaks, run)
    else:
        logger.info("too few events to learn units from (%d): the sorting is empty", peaks.size)

    # clean-up: templates, merges, weak units, optional template matching, duplicates
    peaks_out, labels_out, num_units, templates = clean_up(
        preprocessed, peaks, final_labels, num_units, noise_levels=noise_levels, nbefore=run.nbefore, nafter=run.nafter,
        params=params, job_kwargs=job_kwargs,
    )
    stages.done("clean-up", "%d units, %d spikes", num_units, int((labels_out >= 0).sum()))

    unit_ids = np.arange(num_units)
    sorting = to_sorting(peaks_out, labels_out, unit_ids, recording.sampling_frequency, recording.get_num_segments())
    if model is not None and num_units:
        # the saved model must label events with the final units: retrain its classifier head on them
        history += _classifier_for_units(model, training_set, sorting, run)
        stages.done("saved model", "classifier retrained on the %d final units", num_units)
        settings = ModelSettings.for_run(recording, params, noise_levels, run.nbefore, run.nafter, cache_info)
        settings.unit_ids, settings.templates = unit_ids, templates
        save_checkpoint(folder / "model.pt", model, "beta_vae", history, extra=settings.to_dict())
        save_history(folder / "history.csv", history)
    if params["save_arrays"]:
        save_arrays(folder, peaks=peaks, labels=final_labels, noise_levels=noise_levels, templates=templates)
    del preprocessed
    drop_cache(cache_info)
    logger.info("total %.1f s", time.perf_counter() - stages.start)
    return sorting


def _sort_supervised(target, params, folder, *, verbose, device, rng, stages):
    """Supervised mode: train on ``training_sorting``'s labels (of ``target``, or of ``training_recording``), save
    model.pt, then sort ``target`` with that model as instant sorting does."""
    labelled, recording = _read_labels(params, target)
    job_kwargs = log_run_start("elvisort", recording, params, device, verbose)
    preprocessed, cache_info, noise_levels, peaks = run_front_end(recording, params, folder, job_kwargs, stages)
    run = RunContext.of(recording, params, noise_levels, device=device, rng=rng, job_kwargs=job_kwargs, stages=stages,
                        verbose=verbose)
    model, history, training_set = _learn_from_labels(preprocessed, peaks, labelled, run)
    templates = compute_templates(preprocessed, training_set["events"], training_set["labels"],
                                  labelled.unit_ids.size, run.nbefore, run.nafter, job_kwargs=job_kwargs)
    settings = ModelSettings.for_run(recording, params, noise_levels, run.nbefore, run.nafter, cache_info)
    settings.unit_ids, settings.templates = np.asarray(labelled.unit_ids), templates
    save_checkpoint(folder / "model.pt", model, "beta_vae", history, extra=settings.to_dict())
    save_history(folder / "history.csv", history)
    del preprocessed
    drop_cache(cache_info)
    return _sort_pretrained(target, folder / "model.pt", params, folder=folder, verbose=verbose, device=device,
                            stages=stages, save=False)


def _train_vae(preprocessed, peaks, run: RunContext):
    """Training set (a bounded random subsample of the events plus noise windows for the non-spike class) and the
    unsupervised beta-VAE trained on it. Returns (model, history, training_set, base TrainConfig)."""
    params, rng, device, stages = run.params, run.rng, run.device, run.stages
    nbefore, nafter, neighbours, channel_locations = run.nbefore, run.nafter, run.neighbours, run.channel_locations
    seed = int(params["seed"])
    train_indices = sample_training_events(peaks.size, max_training_events(params, preprocessed.get_num_channels()),
                                           rng)
    num_train = train_indices.size
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
        noise_level=float(np.median(run.noise_levels)) or 1.0,
        **params["model_kwargs"],
    )
    base = TrainConfig(
        batch_size=params["train_batch_size"], learning_rate=params["train_learning_rate"],
        mixed_precision=uses_mixed_precision(params["mixed_precision"], device), seed=seed,
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
        device, verbose=run.verbose,
    )
    stages.done("training", "%d epochs, reconstruction %.1f, KL %.2f", params["train_epochs"],
                history[-1]["reconstruction"], history[-1]["kl"])
    return model, history, training_set, base


def _learn_and_label(preprocessed, peaks, run: RunContext):
    """Train the beta-VAE on a subsample, cluster, refine with DEC, self-train the classifier, label every event."""
    params, device, stages, verbose = run.params, run.device, run.stages, run.verbose
    if params["features"] != "vae":
        return _learn_and_label_features(preprocessed, peaks, run)
    positions = run.channel_locations[peaks["channel_index"]]
    model, history, training_set, base = _train_vae(preprocessed, peaks, run)
    beta = model.config.beta
    num_train = training_set["num_events"]
    train_events = training_set["events"]
    train_snippets = training_set["snippets"][:num_train]
    train_positions = training_set["positions"][:num_train]
    num_noise = training_set["snippets"].shape[0] - num_train

    # latent clustering, per peak channel, then merge clusters whose full-probe templates are near-identical
    latents = encode(model, train_snippets, device, batch_size=params["train_batch_size"] * 4)
    labels, num_clusters = _cluster(preprocessed, latents, train_events, run)
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
        q = dec_soft_assignment(model, train_snippets, train_positions, device=device,
                                batch_size=params["train_batch_size"] * 4)
        confidence = np.where(np.argmax(q, axis=1) == labels, q[np.arange(num_train), np.maximum(labels, 0)], -1.0)
    confident = most_confident(labels, confidence, params["clustering_confidence"])

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
    def classify(snippets, events):
        return np.argmax(predict_proba(model, snippets, positions[events], device, params["train_batch_size"] * 4),
                         axis=1)

    final_labels = label_in_chunks(preprocessed, peaks, run.neighbours, run.nbefore, run.nafter, classify)
    final_labels[final_labels == num_clusters] = -1  # the non-spike class
    stages.done("labelling", "%d events labelled as spikes, %d as noise", int((final_labels >= 0).sum()),
                int((final_labels < 0).sum()))
    return model, history, final_labels, num_clusters, training_set


def _cluster(preprocessed, features, train_events, run: RunContext):
    """Cluster the training events' features per peak channel, split clusters that hold two populations, merge
    near-identical ones; returns (labels, number of clusters), -1 = noise."""
    params, noise_levels, nbefore, nafter = run.params, run.noise_levels, run.nbefore, run.nafter
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
            preprocessed, train_events, labels, num_clusters, nbefore, nafter, noise_levels=noise_levels, seed=seed
        )
    num_split = num_clusters
    if num_clusters:
        labels, num_clusters = merge_near_identical(
            preprocessed, train_events, labels, num_clusters, nbefore=nbefore, nafter=nafter,
            noise_levels=noise_levels, params=params, job_kwargs=run.job_kwargs,
        )
    run.stages.done("clustering", "%d clusters (%s), %d after splits, %d after merging near-identical ones, %d events "
                "as noise", num_found, params["clustering_method"], num_split, num_clusters, int((labels < 0).sum()))
    return labels, num_clusters


def _learn_and_label_features(preprocessed, peaks, run: RunContext):
    """The ablation of the latent (features="pca" | "raw"): the same training subsample, clustering and merge of
    near-identical clusters as the beta-VAE path, on PCA features or raw waveforms; every event then takes the
    label of the nearest cluster centroid of its peak channel (no network, no DEC, no classifier, no model.pt)."""
    from .features import fit_features, group_centroids, nearest_centroid
    from .models.config import BetaVAEConfig

    params, noise_levels, neighbours = run.params, run.noise_levels, run.neighbours
    nbefore, nafter = run.nbefore, run.nafter
    seed = int(params["seed"])
    train_indices = sample_training_events(peaks.size, max_training_events(params, preprocessed.get_num_channels()),
                                           run.rng)
    num_train = train_indices.size
    train_events = peaks[train_indices]
    train_snippets = extract_snippets(preprocessed, train_events, neighbours, nbefore, nafter)
    # PCA keeps as many dimensions as the beta-VAE latent it replaces (both levels)
    config = BetaVAEConfig(num_samples=nbefore + nafter, num_channels=neighbours.shape[1], **params["model_kwargs"])
    transform = fit_features(train_snippets, params["features"], config.latent_dim + config.upper_latent_dim,
                             scale=float(np.median(noise_levels)) or 1.0, seed=seed)
    features = transform(train_snippets)
    run.stages.done("features", "%s features of %d training events: %d dimensions", params["features"], num_train,
                features.shape[1])

    labels, num_clusters = _cluster(preprocessed, features, train_events, run)
    final_labels = np.full(peaks.size, -1, dtype=np.int64)
    if num_clusters == 0:
        return None, [], final_labels, 0, None

    centroids = group_centroids(features, labels, train_events["channel_index"])
    final_labels = label_in_chunks(
        preprocessed, peaks, neighbours, nbefore, nafter,
        lambda snippets, events: nearest_centroid(transform(snippets), peaks["channel_index"][events], centroids),
    )
    run.stages.done("labelling", "%d events labelled by nearest centroid, %d on channels without clusters",
                int((final_labels >= 0).sum()), int((final_labels < 0).sum()))
    return None, [], final_labels, num_clusters, None


def _learn_from_labels(preprocessed, peaks, labelled, run: RunContext):
    """Supervised, as in the paper: the beta-VAE, then encoder and classifier branch trained on the labels (an event
    within 0.4 ms of a labelled spike takes its unit; other events and the noise windows are the non-spike class)."""
    if peaks.size < 2:
        raise ValueError(f"only {peaks.size} event(s) detected in the labelled recording: nothing to train on (check "
                         "detect_threshold and that the recording holds spikes)")
    params, device, verbose = run.params, run.device, run.verbose
    model, history, training_set, base = _train_vae(preprocessed, peaks, run)
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
    run.stages.done("supervised", "%d of %d training events labelled, %d units", int((labels >= 0).sum()), labels.size,
                labelled.unit_ids.size)
    return model, history, training_set


def _classifier_for_units(model, training_set, sorting, run: RunContext):
    """Retrain the classifier head alone so that its classes are ``sorting``'s units (+ the non-spike class): the
    training events take the unit of a final spike within 0.4 ms, the others and the noise windows are non-spikes."""
    params = run.params
    _, targets = _label_training_set(model, training_set, sorting)
    config = TrainConfig(epochs=params["train_classifier_epochs"], batch_size=params["train_batch_size"],
                         learning_rate=params["train_learning_rate"], trainable="classifier", seed=int(params["seed"]),
                         stage="final classifier", class_balance=1.0)
    return train_model(model, training_set["snippets"], config, run.device, labels=targets,
                       positions=training_set["positions"], verbose=run.verbose)


def _label_training_set(model, training_set, sorting):
    """Label the training events with ``sorting`` (an event within 0.4 ms of one of its spikes takes that unit) and
    size the classifier branch for its units + the non-spike class. Returns the events' labels (-1: none) and the
    classifier targets of every training snippet (unlabelled events and noise windows are the non-spike class)."""
    from .labels import label_events

    labels = label_events(training_set["events"], sorting)
    num_units = sorting.unit_ids.size
    num_noise = training_set["snippets"].shape[0] - labels.size
    model.set_num_classes(num_units + 1)
    targets = np.concatenate([np.where(labels >= 0, labels, num_units), np.full(num_noise, num_units)])
    return labels, targets


def _sort_pretrained(recording, model_path, params, *, folder, verbose, device, stages, save=True):
    """Inference only: the model saved at ``model_path`` sorts ``recording`` (ElvisortModel.sort), with template
    matching on its templates unless ``params["matching_method"]`` is "none" (then its detection and classifier)."""
    from .instant import load_model

    model = load_model(model_path, device=str(device))
    # threads for reading and filtering, as in the chunked stages of a full run (the result does not depend on them)
    n_jobs = sorter_job_kwargs(params["job_kwargs"], verbose)["n_jobs"]
    logger.info("elvisort inference with %r on %d channels, %.1f s; %s", model, recording.get_num_channels(),
                recording.get_total_duration(), thread_summary(n_jobs))
    sorting = model.sort(recording, matching=params["matching_method"], n_jobs=n_jobs, verbose=verbose)
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
    from spikeinterface.core import BaseRecording, load

    from .labels import _check_sorting, check_same_probe, read_labels

    sorting = read_labels(params["training_sorting"], "training_sorting")
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
