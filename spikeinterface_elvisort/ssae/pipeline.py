"""The ``ssae`` data flow, top to bottom. Front end and clean-up are the package's shared stages
(``front_end.run_front_end`` and ``cleanup.clean_up``); the model, its training and the clustering are ssae's own:

hybrid labelled set -> cleaner -> semi-supervised ensemble -> (Atom fine-tuning) -> BIC ensemble clustering ->
labels of every event -> clean-up.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..checks import check_recording
from ..cleanup import clean_up, merge_near_identical
from ..device import blas_threads, resolve_device, seed_everything, torch_threads, uses_mixed_precision
from ..front_end import RunContext, StageLog, drop_cache, filtering_kwargs, log_run_start, run_front_end
from ..inference import encode
from ..models import build_model
from ..params import max_training_events
from ..jobs import blas_thread_limit
from ..preprocessing import preprocess
from ..results import ModelSettings, save_arrays, save_checkpoint, save_history, to_sorting
from ..snippets import extract_snippets, label_in_chunks, sample_training_events
from ..training import TrainConfig, train_model
from .cleaning import reject_noise, train_cleaner
from .clustering import BicEnsembleClustering, probe_regions
from .hybrid import aligned_noise_windows, make_hybrid_set

logger = logging.getLogger("spikeinterface_elvisort.ssae")


def run_ssae(recording, params: dict, folder: Path, verbose: bool = False):
    """Sort ``recording`` with ssae; writes model.pt, cleaner.pt, history.csv (and arrays) in ``folder``.

    Parameters
    ----------
    recording : BaseRecording
        Any SpikeInterface recording with a probe; it is never modified.
    params : dict
        A full, checked parameter dict (``spikeinterface_elvisort.ssae.params.SSAE_DEFAULT_PARAMS`` updated by the
        user).
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
    folder.mkdir(parents=True, exist_ok=True)
    device = resolve_device(params["device"])
    rng = seed_everything(params["seed"])
    # the caller's process keeps its own settings
    with torch_threads(params["torch_threads"]), blas_threads(blas_thread_limit(params["job_kwargs"])):
        return _run(recording, params, folder, verbose, device, rng)


def _run(recording, params, folder, verbose, device, rng):
    stages = StageLog()
    job_kwargs = log_run_start("ssae", recording, params, device, verbose)
    preprocessed, cache_info, noise_levels, peaks = run_front_end(recording, params, folder, job_kwargs, stages)
    run = RunContext.of(recording, params, noise_levels, device=device, rng=rng, job_kwargs=job_kwargs, stages=stages,
                        verbose=verbose)

    learned = None
    labels, num_units = np.full(peaks.size, -1, dtype=np.int64), 0
    if peaks.size >= 2 * params["clustering_min_cluster_size"]:
        learned = _learn_and_label(recording, preprocessed, peaks, run)
        labels, num_units = learned["labels"], learned["num_units"]
    else:
        logger.info("too few events to learn units from (%d): the sorting is empty", peaks.size)

    # clean-up, shared with elvisort: merges, weak units, template matching, auto-merge, duplicates
    peaks_out, labels_out, num_units, templates = clean_up(
        preprocessed, peaks, labels, num_units, noise_levels=noise_levels, nbefore=run.nbefore, nafter=run.nafter,
        params=params, job_kwargs=job_kwargs,
    )
    stages.done("clean-up", "%d units, %d spikes", num_units, int((labels_out >= 0).sum()))

    unit_ids = np.arange(num_units)
    sorting = to_sorting(peaks_out, labels_out, unit_ids, recording.sampling_frequency, recording.get_num_segments())
    if learned is not None:
        settings = ModelSettings.for_run(recording, params, noise_levels, run.nbefore, run.nafter, cache_info)
        settings.unit_ids, settings.templates = unit_ids, templates
        settings.cleaner_used = learned["cleaner_used"]
        extra = settings.to_dict()
        save_checkpoint(folder / "model.pt", learned["model"], "ssae", learned["history"], extra=extra)
        if learned["cleaner"] is not None:
            cleaner_history = [row for row in learned["history"] if row["stage"] == "cleaner"]
            save_checkpoint(folder / "cleaner.pt", learned["cleaner"], "cleaner", cleaner_history)
        save_history(folder / "history.csv", learned["history"])
    if params["save_arrays"]:
        save_arrays(folder, peaks=peaks, labels=labels, noise_levels=noise_levels, templates=templates)
    del preprocessed
    drop_cache(cache_info)
    logger.info("total %.1f s", time.perf_counter() - stages.start)
    return sorting


def _learn_and_label(recording, preprocessed, peaks, run: RunContext):
    """Hybrid set, cleaner, ensemble training, (Atom), clustering, labelling of every event; returns a dict with the
    model, the cleaner (or None), whether it was used (its check on strong events can switch it off), the history,
    the labels of all events (-1 = none) and the number of units."""
    params, device, rng, job_kwargs, stages, verbose = (run.params, run.device, run.rng, run.job_kwargs, run.stages,
                                                        run.verbose)
    noise_levels, neighbours, channel_locations = run.noise_levels, run.neighbours, run.channel_locations
    nbefore, nafter = run.nbefore, run.nafter
    seed = int(params["seed"])
    batch = params["train_batch_size"]

    # snippets: a bounded random subsample of the events
    train_indices = sample_training_events(peaks.size, max_training_events(params, preprocessed.get_num_channels()),
                                           rng)
    num_train = train_indices.size
    train_snippets = extract_snippets(preprocessed, peaks[train_indices], neighbours, nbefore, nafter)
    stages.done("snippets", "%d training events, snippet %s", num_train, train_snippets.shape[1:])

    # the labelled half: generated templates for this probe in the recording's own noise
    hybrid = make_hybrid_set(
        recording, peaks, neighbours, nbefore, nafter, preprocess=lambda r: _preprocess(r, params),
        num_templates=params["hybrid_num_templates"], spikes_per_template=params["hybrid_spikes_per_template"],
        peak_sign=params["peak_sign"], rng=rng, seed=seed,
        band=(params["freq_min"], params["freq_max"]) if params["apply_preprocessing"] else None,
    )
    stages.done("hybrid", "%d labelled events of %d synthetic units, amplitudes %.1f to %.1f",
                hybrid.labels.size, params["hybrid_num_templates"], hybrid.amplitudes.min(), hybrid.amplitudes.max())

    # cleaner: hybrid spikes against pure-noise windows
    history: list[dict] = []
    cleaner = None
    cleaner_used = bool(params["train_cleaner_epochs"])
    if cleaner_used:
        noise = aligned_noise_windows(preprocessed, peaks, hybrid.labels.size, neighbours, nbefore, nafter,
                                      peak_sign=params["peak_sign"], rng=rng)
        cleaner, cleaner_history = train_cleaner(
            hybrid.snippets, noise, epochs=params["train_cleaner_epochs"], batch_size=batch,
            learning_rate=params["train_learning_rate"], seed=seed, device=device, verbose=verbose,
        )
        history += cleaner_history
        kept = reject_noise(cleaner, train_snippets, params["cleaner_threshold"], device, batch * 4)
        strong_kept = _strong_kept_fraction(kept, peaks[train_indices], noise_levels, params["detect_threshold"])
        stages.done("cleaner", "%d epochs on %d spike and %d noise windows (loss %.3f); keeps %d of %d events (%s of "
                    "the strong ones)", params["train_cleaner_epochs"], hybrid.labels.size, len(noise),
                    cleaner_history[-1]["classification"], int(kept.sum()), num_train,
                    "n/a" if strong_kept is None else f"{strong_kept:.2f}")
        if strong_kept is not None and strong_kept < params["cleaner_min_strong_kept"]:
            warnings.warn(f"ssae: the cleaner keeps only {strong_kept:.0%} of the strong events (amplitude >= 2 x "
                          f"detect_threshold), which are spikes: it has not learned this recording's spikes and is "
                          f"switched off, every event is kept (cleaner_min_strong_kept="
                          f"{params['cleaner_min_strong_kept']})")
            logger.warning("cleaner switched off: it keeps %.2f of the strong events (cleaner_min_strong_kept %.2f)",
                           strong_kept, params["cleaner_min_strong_kept"])
            cleaner_used = False
    if not cleaner_used:
        kept = np.ones(num_train, dtype=bool)

    # the ensemble: the recording's events (reconstruction) alternate with labelled batches (+ cross-entropy)
    model = build_model(
        "ssae",
        num_samples=nbefore + nafter,
        num_channels=neighbours.shape[1],
        num_classes=params["hybrid_num_templates"],
        input_scale=float(np.std(train_snippets)) or 1.0,
        **params["model_kwargs"],
    )
    base = TrainConfig(batch_size=batch, learning_rate=params["train_learning_rate"],
                       mixed_precision=uses_mixed_precision(params["mixed_precision"], device), seed=seed)
    snippets = np.concatenate([train_snippets, hybrid.snippets])
    targets = np.concatenate([np.full(num_train, -1), hybrid.labels])
    history += train_model(
        model, snippets,
        replace(base, epochs=params["train_epochs"], weights={"classification": params["train_classification_weight"]},
                alternate_labelled=True, stage="ssae"),
        device, labels=targets, verbose=verbose,
    )
    stages.done("training", "%d epochs of %d members, reconstruction %.3f, classification %.3f",
                params["train_epochs"], model.num_members, history[-1]["reconstruction"],
                history[-1]["classification"])

    positions = channel_locations[peaks["channel_index"]]
    regions = probe_regions(channel_locations, params["clustering_region_um"])[peaks["channel_index"]]
    clustering = BicEnsembleClustering(
        num_units=params["clustering_num_units"], max_components=params["clustering_max_components"],
        min_cluster_size=params["clustering_min_cluster_size"], max_splits=params["clustering_max_splits"],
        random_state=seed,
    )
    fit_indices = np.flatnonzero(kept)
    fit_snippets = train_snippets[fit_indices]
    events = train_indices[fit_indices]

    def member_latents(snippets_):
        latents = encode(model, snippets_, device, batch * 4)
        return np.split(latents, model.num_members, axis=1)

    # optional Atom-loss fine-tuning (seed 001 v2): centroids of the current clusters, refitted every epoch
    if params["train_atom_epochs"]:
        clustering.fit(member_latents(fit_snippets), regions[events], positions[events])
        history += _atom_fine_tuning(model, fit_snippets, clustering.labels_, base, params=params, device=device,
                                     verbose=verbose)
        stages.done("atom", "%d epochs on %d clusters, atom loss %.3f", params["train_atom_epochs"],
                    clustering.num_clusters_, history[-1]["atom"])

    # clustering of the cleaned training events
    clustering.fit(member_latents(fit_snippets), regions[events], positions[events])
    labels, num_clusters = clustering.labels_, clustering.num_clusters_
    mode = "auto-GMM" if params["clustering_num_units"] is None else f"gt-GMM ({params['clustering_num_units']})"
    wins = np.bincount(list(clustering.winners_.values()), minlength=model.num_members).tolist()
    mapping = np.arange(num_clusters)
    if num_clusters:
        merged, num_merged = merge_near_identical(
            preprocessed, peaks[events], labels, num_clusters, nbefore=nbefore, nafter=nafter,
            noise_levels=noise_levels, params=params, job_kwargs=job_kwargs,
        )
        for cluster in range(num_clusters):
            mapping[cluster] = merged[np.flatnonzero(labels == cluster)[0]]
    else:
        num_merged = 0
    stages.done("clustering", "%d clusters (%s; %d from re-clustering; regions won per member %s), %d after merging "
                "near-identical ones", num_clusters, mode, clustering.num_splits_, wins, num_merged)
    if num_merged == 0:
        empty = np.full(peaks.size, -1, dtype=np.int64)
        return {"model": model, "cleaner": cleaner, "cleaner_used": cleaner_used, "history": history, "labels": empty,
                "num_units": 0}

    # one labelling pass over every event, chunk by chunk: cleaner, latents, the fitted clusters
    rejected = 0

    def label(snippets, events):
        nonlocal rejected
        predicted = clustering.predict(member_latents(snippets), regions[events], positions[events])
        chunk_labels = np.where(predicted >= 0, mapping[np.maximum(predicted, 0)], -1)
        if cleaner_used:
            keep = reject_noise(cleaner, snippets, params["cleaner_threshold"], device, batch * 4)
            rejected += int((~keep).sum())
            chunk_labels[~keep] = -1
        return chunk_labels

    final = label_in_chunks(preprocessed, peaks, neighbours, nbefore, nafter, label)
    stages.done("labelling", "%d events labelled as spikes, %d rejected by the cleaner, %d unlabelled",
                int((final >= 0).sum()), rejected, int((final < 0).sum()) - rejected)
    return {"model": model, "cleaner": cleaner, "cleaner_used": cleaner_used, "history": history, "labels": final,
            "num_units": num_merged}


def _strong_kept_fraction(kept, peaks, noise_levels, detect_threshold, min_events=20):
    """Fraction of the strong events (amplitude >= 2 x ``detect_threshold`` noise levels) that the cleaner keeps, or
    None with fewer than ``min_events`` of them (a recording of noise has none, and there rejecting is right).

    The cleaner judges shape only (it reads each window divided by its own peak); an event twice the detection
    threshold is a spike whatever its shape, so a cleaner that rejects most of them learned the hybrid templates'
    shape rather than this recording's spikes (measured on MEArec's noisiest recording: 1.5 % of them kept, against
    79-100 % on recordings where it helps)."""
    amplitude = np.abs(peaks["amplitude"]) / noise_levels[peaks["channel_index"]]
    strong = amplitude >= 2.0 * detect_threshold
    if strong.sum() < min_events:
        return None
    return float(kept[strong].mean())


def _preprocess(recording, params):
    """The front end's preprocessing, uncached (the hybrid recording is read once)."""
    return preprocess(recording, **filtering_kwargs(params), whitening=params["whitening"], seed=int(params["seed"]))


def _atom_fine_tuning(model, snippets, labels, base, *, params, device, verbose):
    """Reconstruction + Atom loss on the recording's events; before each epoch every member's centroids are refitted:
    a Gaussian mixture with one component per current cluster, started at the clusters' means in that member's
    latent (seed 001 v2: "we fit a GMM at each epoch, which gives a new set of centroids")."""
    from sklearn.mixture import GaussianMixture

    clustered = labels >= 0
    values = np.unique(labels[clustered])
    seed = int(params["seed"])

    def refit(epoch):
        latents = np.split(encode(model, snippets, device, base.batch_size * 4), model.num_members, axis=1)
        centroids = []
        for member in latents:
            current = np.stack([member[labels == v].mean(axis=0) for v in values])
            if values.size < 2:
                centroids.append(current)
                continue
            gmm = GaussianMixture(values.size, covariance_type="diag", means_init=current, random_state=seed,
                                  reg_covar=1e-4, max_iter=50)
            centroids.append(gmm.fit(member[clustered]).means_)
        model.set_atom_centroids(centroids)

    history = train_model(
        model, snippets,
        replace(base, epochs=params["train_atom_epochs"], weights={"atom": params["train_atom_weight"]},
                before_epoch=refit, stage="atom"),
        device, verbose=verbose,
    )
    model.set_atom_centroids(None)
    return history
