"""Parameters of the ``ssae`` sorter: the front-end and clean-up declarations of ``elvisort`` (the same ``Param``
objects, declared once in :mod:`spikeinterface_elvisort.params`) plus ssae's own, by stage.
"""

from __future__ import annotations

import numbers
from dataclasses import fields

from ..params import PARAMS, Param
from ..checks import check_declared

# elvisort's declarations that mean the same thing in ssae: preprocessing, detection, snippets, the clean-up after
# clustering, the run settings and the generic training knobs. Listed by name (not by stage), so that a parameter
# added to elvisort later does not silently appear in ssae.
SHARED = (
    "apply_preprocessing", "freq_min", "freq_max", "common_reference", "whitening", "motion_correction",
    "motion_correction_kwargs", "cache_preprocessing",
    "detection_method", "peak_sign", "detect_threshold", "detect_exclude_sweep_ms", "detect_radius_um",
    "ms_before", "ms_after", "snippet_channels",
    "train_max_snippets", "train_batch_size", "train_learning_rate", "mixed_precision",
    "clustering_min_cluster_size",
    "merge_threshold", "merge_noise_corrected", "merge_split_test", "duplicate_ms", "min_spikes_per_unit",
    "max_isi_violations_ratio",
    "matching_method", "auto_merge", "auto_merge_min_spikes",
    "device", "seed", "torch_threads", "save_arrays", "job_kwargs",
)  # fmt: skip

OWN = {
    # detection: elvisort's parameter, with the earlier behaviour as the default here
    "detect_before_whitening": Param(
        False,
        "Detect events on the filtered, referenced traces before whitening (True) or on the whitened traces (False); "
        "snippets, the cleaner and template matching always read the whitened traces. elvisort's default is True; ssae "
        "keeps False, the setting it was measured with.",
        "detection",
    ),
    # model
    "model_kwargs": Param(
        {},
        "Overrides of the ensemble's config, e.g. {'latent_dim': 4}: latent_dim (6, each autoencoder's latent), depths "
        "([2, 3, 4], dense layers of each member's encoder), conv_channels (16), hidden (64), classifier_hidden (32); "
        "every field: spikeinterface_elvisort.models.SemiSupervisedAEConfig.",
        "model",
    ),
    # hybrid labelled set
    "hybrid_num_templates": Param(
        24,
        "Number of synthetic units in the labelled half: templates from SpikeInterface's generate_templates for "
        "this probe's geometry and sampling rate, at random positions along the probe.",
        "hybrid",
        bounds=(2, 500, True),
    ),
    "hybrid_spikes_per_template": Param(
        150,
        "Labelled events per synthetic unit: its template, scaled to an amplitude drawn from the detected events' "
        "amplitudes (1st to 99th percentile), added into a noise window cut from a quiet stretch of the recording "
        "itself.",
        "hybrid",
        bounds=(10, 100000, True),
    ),
    # training
    "train_epochs": Param(
        15,
        "Epochs of semi-supervised training of the ensemble: batches of the recording's events (reconstruction) "
        "alternate with batches of the labelled hybrid events (reconstruction + cross-entropy of the MLP head).",
        "training",
        bounds=(1, None, True),
    ),
    "train_classification_weight": Param(
        1.0, "Weight of the classification (cross-entropy) term on the labelled batches.", "training",
        bounds=(0.0, None, False),
    ),
    "train_cleaner_epochs": Param(
        8,
        "Epochs of the cleaner, a small CNN trained on the same hybrid data to tell spike windows from pure-noise "
        "windows; 0 turns the cleaner off (every detected event is kept).",
        "training",
        bounds=(0, None, True),
    ),
    "cleaner_threshold": Param(
        0.5,
        "Events whose spike probability (from the cleaner) is below this value are rejected: assigned to no unit.",
        "training",
        bounds=(0.0, 1.0, False),
    ),
    "cleaner_min_strong_kept": Param(
        0.5,
        "A check of the cleaner: when it keeps less than this fraction of the strong training events (amplitude at "
        "least twice detect_threshold, when there are 20 or more), it has not learned this recording's spikes and is "
        "switched off, with a warning. 0: never switched off.",
        "training",
        bounds=(0.0, 1.0, False),
    ),
    "train_atom_epochs": Param(
        0,
        "Epochs of Atom-loss fine-tuning (the seed's v2) after the semi-supervised training: each latent is "
        "attracted to its GMM centroid and repelled from the others, the centroids refitted each epoch; 0 skips "
        "it (the measured default, see the ssae page).",
        "training",
        bounds=(0, None, True),
    ),
    "train_atom_weight": Param(
        1.0, "Weight of the Atom loss during its fine-tuning epochs.", "training",
        bounds=(0.0, None, False),
    ),
    # clustering
    "clustering_num_units": Param(
        None,
        'None: the number of components of each Gaussian mixture is chosen by BIC ("auto-GMM"), per probe region '
        "and recursively. An integer: one mixture of exactly this many components over the whole probe "
        '("gt-GMM", for a known unit count), no regions and no re-clustering.',
        "clustering",
    ),
    "clustering_max_components": Param(
        6, "Largest number of components tried by BIC in a probe region (auto-GMM).", "clustering",
        bounds=(1, 100, True),
    ),
    "clustering_region_um": Param(
        None,
        "Radius of a probe region: events are clustered together when their peak channels lie within this "
        "distance of the region's centre channel (None: one region per peak channel), so that distant units "
        "never merge.",
        "clustering",
    ),
    "clustering_max_splits": Param(
        3,
        "Depth of the recursive re-clustering: a cluster is split in two again while BIC favours two components "
        "over one (and both halves keep clustering_min_cluster_size events), at most this many times; 0 turns "
        "it off.",
        "clustering",
        bounds=(0, 20, True),
    ),
}

def _ordered_params() -> dict:
    # shared and own parameters together, grouped by stage in the order elvisort's table uses
    from ..params import STAGES

    merged = {name: PARAMS[name] for name in SHARED} | OWN
    stages = [s for s in STAGES if s not in ("cleanup", "run")] + ["hybrid", "cleanup", "run"]
    return {name: param for stage in stages for name, param in merged.items() if param.stage == stage}


SSAE_PARAMS = _ordered_params()
SSAE_STAGES = tuple(dict.fromkeys(param.stage for param in SSAE_PARAMS.values()))
SSAE_DEFAULT_PARAMS = {name: param.default for name, param in SSAE_PARAMS.items()}
SSAE_PARAMS_DESCRIPTION = {name: param.description for name, param in SSAE_PARAMS.items()}


def check_ssae_params(params: dict) -> dict:
    """Validate a full ``ssae`` parameter dict and return it.

    Raises
    ------
    ValueError
        Naming the parameter, the value given and the valid values.
    """
    check_declared(params, SSAE_PARAMS, "ssae")
    for name, low in (("clustering_num_units", 1), ("clustering_region_um", 0)):
        value = params[name]
        if value is None:
            continue
        if name == "clustering_num_units":
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
            kind = "an integer >= 1"
        else:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value > low
            kind = "a number > 0 (um)"
        if not ok:
            raise ValueError(f"{name}={value!r} must be None or {kind}")

    model_kwargs = params["model_kwargs"]
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"model_kwargs={model_kwargs!r} must be a dict such as {{'latent_dim': 4}}")
    from ..models.config import SemiSupervisedAEConfig

    tunable = {f.name for f in fields(SemiSupervisedAEConfig)} - SemiSupervisedAEConfig.derived_fields
    bad = sorted(set(model_kwargs) - tunable)
    if bad:
        raise ValueError(f"model_kwargs has unknown key(s) {bad}; valid keys are {sorted(tunable)}")
    SemiSupervisedAEConfig(num_samples=32, num_channels=4, num_classes=2, **model_kwargs).validate()
    return params
