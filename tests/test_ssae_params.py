"""ssae's parameters: elvisort's front-end and clean-up declarations are shared (the same objects), ssae's own are
described, and bad values fail early, naming the parameter."""

from __future__ import annotations

import copy
import json

import pytest

import spikeinterface.sorters as ss

from spikeinterface_elvisort.params import PARAMS
from spikeinterface_elvisort.ssae.params import (
    OWN,
    SHARED,
    SSAE_DEFAULT_PARAMS,
    SSAE_PARAMS,
    SSAE_PARAMS_DESCRIPTION,
    check_ssae_params,
)


def ssae_defaults():
    return copy.deepcopy(SSAE_DEFAULT_PARAMS)


def test_shared_parameters_are_elvisorts_declarations():
    for name in SHARED:
        assert SSAE_PARAMS[name] is PARAMS[name], name
    assert set(SSAE_PARAMS) == set(SHARED) | set(OWN)
    # ssae's own model_kwargs describe ssae's model, not the beta-VAE
    assert "SemiSupervisedAEConfig" in SSAE_PARAMS["model_kwargs"].description


def test_descriptions_read_well_through_spikeinterface():
    assert ss.get_default_sorter_params("ssae") == SSAE_DEFAULT_PARAMS
    descriptions = ss.get_sorter_params_description("ssae")
    assert descriptions == SSAE_PARAMS_DESCRIPTION
    for name, text in descriptions.items():
        assert isinstance(text, str) and len(text.split()) >= 3, name
        assert text[0].isupper() or text[0] in "\"'", name


def test_defaults_are_plain_json_and_pass_their_own_check():
    assert json.loads(json.dumps(SSAE_DEFAULT_PARAMS)) == SSAE_DEFAULT_PARAMS
    assert check_ssae_params(ssae_defaults()) == SSAE_DEFAULT_PARAMS


BAD_VALUES = [
    ("hybrid_num_templates", 1),
    ("hybrid_num_templates", "24"),
    ("hybrid_spikes_per_template", 0),
    ("train_epochs", 0),
    ("train_cleaner_epochs", -1),
    ("cleaner_threshold", 1.5),
    ("train_atom_epochs", 1.5),
    ("clustering_num_units", 0),
    ("clustering_num_units", 2.5),
    ("clustering_num_units", True),
    ("clustering_region_um", -5.0),
    ("clustering_max_splits", -1),
    ("clustering_max_components", 0),
    # shared declarations keep their checks
    ("peak_sign", "up"),
    ("matching_method", "x"),
    ("detect_threshold", 0),
    ("device", "gpu"),
    ("model_kwargs", None),
]


@pytest.mark.parametrize("name, value", BAD_VALUES, ids=[f"{n}={v!r}" for n, v in BAD_VALUES])
def test_bad_value_is_rejected_naming_the_parameter(name, value):
    params = ssae_defaults()
    params[name] = value
    with pytest.raises(ValueError, match=name):
        check_ssae_params(params)


@pytest.mark.parametrize(
    "model_kwargs, match",
    [
        ({"beta": 4.0}, "beta"),  # a beta-VAE field is not an ssae field
        ({"latent_dim": 1}, "latent_dim"),
        ({"depths": []}, "depths"),
        ({"depths": [2, 0]}, "depths"),
        ({"num_classes": 3}, "num_classes"),  # set from the hybrid set, not by users
    ],
)
def test_bad_model_kwargs_are_rejected_by_name(model_kwargs, match):
    params = ssae_defaults()
    params["model_kwargs"] = model_kwargs
    with pytest.raises(ValueError, match=match):
        check_ssae_params(params)


def test_elvisort_only_parameters_are_unknown_to_ssae():
    params = ssae_defaults()
    params["train_dec_epochs"] = 2
    with pytest.raises(ValueError, match="train_dec_epochs"):
        check_ssae_params(params)


@pytest.mark.parametrize(
    "name, value",
    [
        ("clustering_num_units", 7),
        ("clustering_region_um", 60.0),
        ("model_kwargs", {"latent_dim": 3, "depths": [2, 4]}),
    ],
)
def test_good_values_pass(name, value):
    params = ssae_defaults()
    params[name] = value
    assert check_ssae_params(params)[name] == value


def test_merge_noise_corrected_is_on_for_ssae_and_reaches_the_merge(monkeypatch):
    """ssae shares elvisort's merge_noise_corrected, on by default; when True the merge of near-identical units
    gets the noise levels, as elvisort's does, and when False it measures the plain distance."""
    import numpy as np
    from spikeinterface.core import generate_ground_truth_recording
    from spikeinterface.core.node_pipeline import base_peak_dtype

    from spikeinterface_elvisort import cleanup

    assert SSAE_DEFAULT_PARAMS["merge_noise_corrected"] is True and PARAMS["merge_noise_corrected"].default is True
    seen = []

    def merge(templates, counts, threshold, max_lag, distinct=None, noise_levels=None):
        seen.append(noise_levels)
        return np.arange(templates.shape[0])

    monkeypatch.setattr(cleanup, "merge_similar_units", merge)
    recording, sorting = generate_ground_truth_recording(num_channels=4, durations=[5.0], num_units=2, seed=0)
    spikes = sorting.to_spike_vector()
    peaks = np.zeros(spikes.size, dtype=base_peak_dtype)
    peaks["sample_index"] = spikes["sample_index"]
    noise_levels = np.ones(4)
    for value in (False, True):
        params = check_ssae_params(dict(ssae_defaults(), merge_noise_corrected=value, merge_split_test=False))
        cleanup.merge_near_identical(recording, peaks, spikes["unit_index"], 2, nbefore=20, nafter=40,
                                     noise_levels=noise_levels, params=params,
                                     job_kwargs={"n_jobs": 1, "progress_bar": False})
    assert seen[0] is None and seen[1] is noise_levels
