"""Phy round trip: a sorter result -> sparse SortingAnalyzer -> export_to_phy -> phylib's TemplateModel and
SpikeInterface's read_phy, with more than 64 channels (where SpikeInterface asks for sparsity)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fast_params, make_ground_truth, save_binary

pytest.importorskip("phylib")


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory, sorter_device):
    """elvisort (fast params) on 96 channels x 10 s: (recording, sorting)."""
    import spikeinterface.sorters as ss

    folder = tmp_path_factory.mktemp("phy")
    recording, _ = make_ground_truth(num_channels=96, num_units=10, durations=[10.0], seed=0)
    recording = save_binary(recording, folder / "recording")
    sorting = ss.run_sorter("elvisort", recording, folder=folder / "elvisort", **fast_params(sorter_device))
    return recording, sorting


def export(sorting, recording, folder):
    """What a user does after sorting: a sparse analyzer of the preprocessed recording, then export_to_phy."""
    import spikeinterface.preprocessing as spre
    from spikeinterface.core import create_sorting_analyzer
    from spikeinterface.exporters import export_to_phy

    preprocessed = spre.common_reference(spre.bandpass_filter(recording, freq_min=300.0, freq_max=6000.0))
    analyzer = create_sorting_analyzer(sorting, preprocessed, sparse=True, format="memory")
    analyzer.compute(["random_spikes", "waveforms", "templates", "noise_levels", "spike_amplitudes"],
                     extension_params={"random_spikes": {"seed": 0}}, progress_bar=False)
    export_to_phy(analyzer, folder, copy_binary=False, verbose=False, progress_bar=False)
    return analyzer


def check_phy_folder(folder, sorting, num_channels):
    """phylib reads the folder back with the sorting's clusters, spikes and channels."""
    from phylib.io.model import load_model

    counts = sorting.count_num_spikes_per_unit(outputs="array")
    model = load_model(folder / "params.py")
    try:
        assert model.n_channels == num_channels
        assert model.n_templates == sorting.unit_ids.size == np.unique(model.spike_clusters).size
        assert model.n_spikes == counts.sum()
        # Phy's cluster k is the sorting's k-th unit, with all its spikes at the same samples
        assert np.bincount(model.spike_clusters, minlength=sorting.unit_ids.size).tolist() == counts.tolist()
        vector = sorting.to_spike_vector()
        np.testing.assert_array_equal(model.spike_samples, vector["sample_index"])
        np.testing.assert_array_equal(model.spike_clusters, vector["unit_index"])
        return model
    finally:
        model.close()


def test_elvisort_result_to_phy_with_96_channels(wide_run, tmp_path):
    recording, sorting = wide_run
    assert sorting.unit_ids.size >= 2
    analyzer = export(sorting, recording, tmp_path / "phy")
    assert analyzer.is_sparse()
    model = check_phy_folder(tmp_path / "phy", sorting, num_channels=96)
    # sparse templates: each unit on a few channels, not the 96
    assert model.sparse_templates.cols is not None
    assert model.sparse_templates.cols.shape[1] < 96
    assert model.features is not None  # PC features for Phy's feature view

    # curation in Phy writes cluster_group.tsv; read_phy reads the curated result, without the noise clusters
    from spikeinterface.extractors import read_phy

    lines = ["cluster_id\tgroup"] + [f"{k}\t{'noise' if k == 0 else 'good'}" for k in range(sorting.unit_ids.size)]
    (tmp_path / "phy" / "cluster_group.tsv").write_text("\n".join(lines) + "\n")
    curated = read_phy(tmp_path / "phy", exclude_cluster_groups=["noise"])
    # read_phy gives the units their ids in our sorting back (export_to_phy writes them to cluster_si_unit_ids.tsv)
    assert list(curated.unit_ids) == list(sorting.unit_ids[1:])
    for unit_id in curated.unit_ids:
        np.testing.assert_array_equal(curated.get_unit_spike_train(unit_id), sorting.get_unit_spike_train(unit_id))


def test_ssae_result_to_phy(small_recording, tmp_path, sorter_device):
    import spikeinterface.sorters as ss

    from conftest import ssae_fast_params

    recording, _ = small_recording
    sorting = ss.run_sorter("ssae", recording, folder=tmp_path / "ssae", **ssae_fast_params(sorter_device))
    assert sorting.unit_ids.size >= 1
    export(sorting, recording, tmp_path / "phy")
    check_phy_folder(tmp_path / "phy", sorting, num_channels=recording.get_num_channels())
