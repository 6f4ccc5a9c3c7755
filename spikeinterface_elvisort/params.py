"""Every sorter parameter, declared once: default, description and the stage that reads it.

SpikeInterface merges the user's parameters into ``DEFAULT_PARAMS``, rejects unknown top-level keys and then calls
``checks.check_params`` (through the sorter's ``_check_params``), so every value here stays plain JSON.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    """One sorter parameter: its default, its description (what it does, its unit, when to change it) and the stage
    that reads it, with the values :func:`~spikeinterface_elvisort.checks.check_declared` accepts: one of ``choices`` (compared with their types,
    so that 1 is not True), a number within ``bounds`` = (minimum, maximum or None, integer?), inclusive, or one of
    the special values ``also`` beside the bounds ("auto", None). A parameter whose default is a bool and has no
    choices must be True or False."""

    default: object
    description: str
    stage: str  # "preprocessing" | "detection" | "snippets" | "model" | "training" | "clustering" | "cleanup" | "run"
    choices: tuple | None = None
    bounds: tuple | None = None
    also: tuple = ()


STAGES = ("preprocessing", "detection", "snippets", "model", "training", "clustering", "cleanup", "instant", "run")

PARAMS = {
    # preprocessing
    "apply_preprocessing": Param(
        True,
        "Band-pass filter and common-median-reference the recording. Set False only when it is already filtered.",
        "preprocessing",
    ),
    "freq_min": Param(
        300.0, "Low cut-off of the Butterworth band-pass filter (Hz).", "preprocessing",
        bounds=(0.0, None, False),
    ),
    "freq_max": Param(
        6000.0, "High cut-off of the band-pass filter (Hz); lowered to 0.45 x sampling rate if above.", "preprocessing",
        bounds=(0.0, None, False),
    ),
    "common_reference": Param(
        True, "Subtract the median across channels (common median reference) after filtering.", "preprocessing"
    ),
    "whitening": Param(
        "auto",
        '"auto" | True | False: whiten locally after filtering and referencing (SpikeInterface whiten, mode "local", '
        'radius 100 um), decorrelating the noise of neighbouring channels. "auto": whiten recordings of 8 channels or '
        "more. A saved model keeps the matrix for the sessions it sorts.",
        "preprocessing",
        choices=('auto', True, False),
    ),
    "motion_correction": Param(
        "auto",
        '"auto" | None | a SpikeInterface motion preset ("dredge_fast", "dredge", "nonrigid_accurate", ...). "auto": '
        "on probes of 600 um or more, estimate the drift from the detected events and correct it when some part moved "
        "10 um or more. A preset always corrects; None never. Saved in sorter_output/motion/.",
        "preprocessing",
    ),
    "motion_correction_kwargs": Param(
        {},
        "Overrides of the motion preset's steps, each a dict: detect_kwargs, select_kwargs, localize_peaks_kwargs, "
        "estimate_motion_kwargs, interpolate_motion_kwargs, e.g. {'estimate_motion_kwargs': {'win_step_um': 200.0}}. "
        "With motion_correction='auto' only interpolate_motion_kwargs applies.",
        "preprocessing",
    ),
    "cache_preprocessing": Param(
        "auto",
        '"auto" | "memory" | "folder" | "folder_float16" | "no": where the preprocessed traces are kept. "auto": in '
        'memory below 1 GiB and a quarter of the free RAM, else in sorter_output/ below 80 % of the free disk, else '
        'as float16 there (half the disk; 30 min of 384 channels take 41 GB), else not at all. "no" recomputes the '
        "filter at every pass (slower, the same sorting).",
        "preprocessing",
        choices=('auto', 'memory', 'folder', 'folder_float16', 'no'),
    ),
    # detection
    "detection_method": Param(
        "locally_exclusive",
        '"locally_exclusive" (SpikeInterface detect_peaks: a peak must be the largest within detect_radius_um and '
        'detect_exclude_sweep_ms) | "algorithm1" (the ELVISort paper\'s Algorithm 1: summed supra-threshold '
        "mask, one event per snippet span, centred on the largest sample).",
        "detection",
        choices=('locally_exclusive', 'algorithm1'),
    ),
    "peak_sign": Param(
        'neg', '"neg" | "pos" | "both": polarity of the detected peaks.', "detection",
        choices=('neg', 'pos', 'both'),
    ),
    "detect_threshold": Param(
        4.5,
        "Detection threshold in units of the channel's noise level (MAD). For detection_method='algorithm1' this "
        "is theta of the paper's eq. 6.",
        "detection",
        bounds=(0.5, None, False),
    ),
    "detect_exclude_sweep_ms": Param(
        1.0, "Two peaks closer in time than this (and within detect_radius_um) count as one event.", "detection",
        bounds=(0.0, 10.0, False),
    ),
    "detect_before_whitening": Param(
        True,
        "Detect events on the filtered, referenced traces before whitening; snippets, clustering and template matching "
        "still read the whitened traces. Local whitening flattens units whose spike spreads over many channels (far "
        "from the probe). No effect without whitening.",
        "detection",
    ),
    "detect_radius_um": Param(
        100.0,
        "Spatial radius of the locally exclusive detection (um). Wide enough that a large spike is one event, not "
        "one per distant channel; template matching recovers the spikes this hides in collisions.",
        "detection",
        bounds=(0.0, None, False),
    ),
    # snippets
    "ms_before": Param(1.0, "Snippet length before the peak (ms).", "snippets", bounds=(0.1, 10.0, False)),
    "ms_after": Param(1.5, "Snippet length after the peak (ms).", "snippets", bounds=(0.1, 10.0, False)),
    "snippet_channels": Param(
        8,
        "Number of channels in a snippet: the peak channel and its nearest neighbours, in spatial order "
        "(capped at the number of channels of the recording).",
        "snippets",
        bounds=(1, None, True),
    ),
    # model
    "features": Param(
        "vae",
        '"vae" | "pca" | "raw": what the events are clustered and labelled on. "vae": the beta-VAE latent, DEC and the '
        'self-trained classifier (the sorter). "pca" and "raw": ablations without a network (a PCA of the snippets, or '
        "the raw snippets); faster, and no model.pt.",
        "model",
        choices=('vae', 'pca', 'raw'),
    ),
    "model_kwargs": Param(
        {},
        "Overrides of the beta-VAE's config, e.g. {'beta': 4.0}: latent_dim (32), upper_latent_dim (8), beta (15, "
        "weight of the KL term), dropout (0.5), lstm_hidden, conv_channels, num_inception_blocks, decoder_hidden, ...; "
        "every field: spikeinterface_elvisort.models.BetaVAEConfig.",
        "model",
    ),
    # training
    "train_max_snippets": Param(
        "auto",
        'Most events the model is trained on (a uniform random subsample): an integer, or "auto" = 30 per channel '
        "and at least 4000 (4000 up to 133 channels, 11520 at 384). Bounds training time and memory whatever the "
        "recording's length; raise it when many units share the probe.",
        "training",
        bounds=(100, None, True), also=("auto",),
    ),
    "train_epochs": Param(
        10, "Epochs of unsupervised beta-VAE training (reconstruction + beta * KL).", "training",
        bounds=(1, None, True),
    ),
    "train_kl_warmup_epochs": Param(
        4, "Epochs over which the KL weight ramps linearly from 0 to beta (avoids posterior collapse).", "training",
        bounds=(0, None, True),
    ),
    "train_dec_epochs": Param(
        2, "Epochs of DEC refinement of the latent (clustering branch) after the first clustering; 0 skips.",
        "training",
        bounds=(0, None, True),
    ),
    "train_dec_weight": Param(
        0.1, "Weight of the DEC clustering loss during refinement.", "training",
        bounds=(0.0, None, False),
    ),
    "train_classifier_epochs": Param(
        40,
        "Epochs of self-training of the classifier branch on confident cluster assignments (the encoder is frozen "
        "and runs once, so these epochs are cheap).",
        "training",
        bounds=(1, None, True),
    ),
    "train_classifier_balance": Param(
        0.5,
        "How far self-training evens out the classes (the clusters and the non-spike class): each weighs count ** "
        "-value in the cross-entropy, 0 to 1. 0: every event alike (a small, faint cluster can vanish into noise); 1: "
        "every class the same total weight (a tiny cluster grows); 0.5 lies between.",
        "training",
        bounds=(0.0, 1.0, False),
    ),
    "train_batch_size": Param(
        256, "Mini-batch size for training and for the labelling pass.", "training",
        bounds=(2, None, True),
    ),
    "train_learning_rate": Param(2e-3, "Adam learning rate.", "training", bounds=(1e-07, 1.0, False)),
    "train_noise_fraction": Param(
        0.1,
        "Noise windows (far from every detection) added to training, as a fraction of the training events; they "
        "teach the classifier its non-spike class.",
        "training",
        bounds=(0.0, 10.0, False),
    ),
    "mixed_precision": Param(
        "auto",
        '"auto" | true | false: bfloat16/float16 autocast on CUDA ("auto" = on for CUDA, always off on the CPU, '
        "where it would only cost time and determinism).",
        "training",
        choices=('auto', True, False),
    ),
    # clustering
    "clustering_method": Param(
        "gmm_bic",
        '"gmm_bic" (Gaussian mixture, component count chosen by BIC) | "hdbscan" (density based, scikit-learn) '
        "on the latent means, one clustering per peak channel so that distant units never mix.",
        "clustering",
        choices=('gmm_bic', 'hdbscan'),
    ),
    "clustering_max_components": Param(
        8, "Largest number of clusters tried per peak channel by clustering_method='gmm_bic'.", "clustering",
        bounds=(1, 100, True),
    ),
    "clustering_pca_components": Param(
        6, "Latent means are reduced to this many principal components per channel before clustering.", "clustering",
        bounds=(1, None, True),
    ),
    "clustering_min_cluster_size": Param(
        20, "Clusters with fewer training events are treated as noise before self-training.", "clustering",
        bounds=(2, None, True),
    ),
    "clustering_split": Param(
        True,
        "Split clusters whose waveforms hold two populations (k-means in two on their principal components, kept when "
        "Hartigan's dip test rejects one mode at p < 0.001 and the halves lie 6 SD apart). The clean-up repeats it on "
        "each unit's spikes when template matching is on.",
        "clustering",
    ),
    "clustering_confidence": Param(
        0.8,
        "Fraction of each cluster's events the classifier is self-trained on: those DEC still assigns to the "
        "cluster, with the highest soft assignment to it (1.0 keeps every event DEC agrees with).",
        "clustering",
        bounds=(0.0, 1.0, False),
    ),
    # clean-up
    "merge_threshold": Param(
        0.3,
        "Two units merge when the normalised distance between their templates (aligned over +-0.3 ms, on the "
        "union of their channels) is below this value and the split test (merge_split_test) does not object.",
        "cleanup",
        bounds=(0.0, 2.0, False),
    ),
    "merge_noise_corrected": Param(
        True,
        "Take the noise that a template (the mean of n noisy waveforms) carries out of the merge distance. Without it, "
        "two halves of one unit of a few hundred spikes on a noisy probe measure about 0.3 apart and stay split. "
        "False: the plain distance.",
        "cleanup",
    ),
    "merge_split_test": Param(
        True,
        "Before two units with close templates merge, project a sample of their spikes (on their strongest "
        "channels, in noise units) on the difference of the templates: two separated modes mean two units, and "
        "they stay apart (curation.SplitTest). False merges on template distance alone.",
        "cleanup",
    ),
    "duplicate_ms": Param(
        0.3, "Spikes of the same unit closer than this are duplicates and only the first is kept (ms).", "cleanup",
        bounds=(0.0, 10.0, False),
    ),
    "min_spikes_per_unit": Param(10, "Units with fewer spikes are removed.", "cleanup", bounds=(1, None, True)),
    "max_isi_violations_ratio": Param(
        0.4,
        "Remove units whose ISI-violation ratio (Hill et al. 2011; 1.5 ms refractory period) is above this value: "
        "noise templates that template matching fits everywhere score about 0.5, two merged units about 0.25, a clean "
        "unit near 0. A large value (e.g. 100) keeps every unit.",
        "cleanup",
        bounds=(0.0, None, False),
    ),
    "matching_method": Param(
        "circus-omp",
        '"circus-omp" | "tdc-peeler" | "none": after labelling, re-find every spike with SpikeInterface template '
        "matching (sortingcomponents.matching) using the units' templates; recovers spikes hidden in collisions. "
        '"none" keeps the classifier labels of the detected events.',
        "cleanup",
        choices=('circus-omp', 'tdc-peeler', 'none'),
    ),
    "auto_merge": Param(
        True,
        "After template matching, merge over-split units with SpikeInterface's auto-merge (template similarity "
        "and cross-contamination presets, as Tridesclous2 and SpykingCircus2 do).",
        "cleanup",
    ),
    "auto_merge_min_spikes": Param(
        10,
        "Units with at least this many spikes take part in the auto-merge. SpikeInterface's default (100, for "
        "correlograms) left pieces of 25-83 spikes of real units apart; below 100 spikes the merge rests on template "
        "similarity and distance, the cross-contamination test having little to go on.",
        "cleanup",
        bounds=(1, None, True),
    ),
    # saved models and labels
    "pretrained_model": Param(
        None,
        "Path to a model saved by an earlier elvisort run (its model.pt, sorter_output/ or run folder): sort with "
        "inference only, no training (see load_model). The recording must come from the same probe, channel order "
        "and sampling rate.",
        "instant",
    ),
    "training_sorting": Param(
        None,
        "Path to labels to train on instead of clustering: a saved SpikeInterface sorting folder or a Phy folder "
        "(clusters labelled 'noise' are left out). The output has these unit ids; units without a spike in the sorted "
        "recording are left out.",
        "instant",
    ),
    "training_recording": Param(
        None,
        "Path to the saved SpikeInterface recording that training_sorting labels, when it is not the recording being "
        "sorted (it must come from the same probe and sampling rate).",
        "instant",
    ),
    # run
    "device": Param('auto', '"auto" | "cpu" | "cuda" | "cuda:N": where the network runs; "auto" picks CUDA when present.', "run"),
    "seed": Param(
        0, "Random seed (numpy, scikit-learn and torch); the same seed gives the same sorting on the CPU.", "run",
        bounds=(0, 2**32 - 1, True), also=(None,),
    ),
    "torch_threads": Param(
        None,
        "Threads per torch operation on the CPU. None: one per core but one, at least one (in a run_sorter_jobs "
        "worker, of its share of the cores); the trained model's passes over the events use the rest. Set it to the "
        "number of cores on a machine that runs nothing else. The sorting depends on it.",
        "run",
    ),
    "save_arrays": Param(
        False, "Also save peaks, latents and labels as .npy files in sorter_output/ (for inspection).", "run"
    ),
    "job_kwargs": Param(
        {},
        "SpikeInterface job kwargs of the chunked stages (preprocessing, detection, template matching): n_jobs, "
        "pool_engine, chunk_duration, ... Default: one thread per core of this process's share (matching: forked "
        "processes on Linux), whatever the global job kwargs say. The sorting does not depend on them.",
        "run",
    ),
}


DEFAULT_PARAMS = {name: param.default for name, param in PARAMS.items()}
PARAMS_DESCRIPTION = {name: param.description for name, param in PARAMS.items()}

# train_max_snippets="auto": this many training events per channel, and at least the minimum
TRAIN_SNIPPETS_PER_CHANNEL = 30
MIN_TRAIN_SNIPPETS = 4000


def max_training_events(params: dict, num_channels: int) -> int:
    """The ``train_max_snippets`` of a run on ``num_channels`` channels ("auto": 30 per channel, at least 4000)."""
    value = params["train_max_snippets"]
    if value == "auto":
        return max(MIN_TRAIN_SNIPPETS, TRAIN_SNIPPETS_PER_CHANNEL * int(num_channels))
    return int(value)
