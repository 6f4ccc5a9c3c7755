"""The latent ablation: features="pca" | "raw" instead of the beta-VAE latent (the "vae" mode is test_accuracy's)."""

from __future__ import annotations

import numpy as np
import pytest

import spikeinterface.comparison as sc
import spikeinterface.sorters as ss

from spikeinterface_elvisort.features import fit_features, group_centroids, nearest_centroid

from conftest import default_params
from spikeinterface_elvisort.benchmarks.runner import unit_snr


def test_fit_features_shapes_and_scale():
    rng = np.random.default_rng(0)
    snippets = rng.normal(size=(200, 30, 4)).astype(np.float32)
    raw = fit_features(snippets, "raw", 10, scale=2.0)(snippets[:5])
    assert raw.shape == (5, 120)
    np.testing.assert_allclose(raw, snippets[:5].reshape(5, -1) / 2.0)
    pca = fit_features(snippets, "pca", 10, scale=2.0, seed=0)
    assert pca(snippets[:5]).shape == (5, 10)
    np.testing.assert_allclose(pca(snippets[:5]), pca(snippets[:5]))
    with pytest.raises(ValueError, match="features"):
        fit_features(snippets, "vae", 10, scale=1.0)


def test_nearest_centroid_stays_within_the_peak_channel():
    features = np.array([[0.0], [0.2], [10.0], [10.2], [0.1], [9.0], [5.0], [0.0]])
    labels = np.array([0, 0, 1, 1, 2, 2, -1, -1])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 2])  # group 2 has no cluster
    centroids = group_centroids(features, labels, groups)
    assert sorted(centroids) == [0, 1]
    new = nearest_centroid(np.array([[1.0], [8.0], [1.0], [20.0], [0.0]]), np.array([0, 0, 1, 1, 2]), centroids)
    # group 1 holds cluster 2 only (its members at 0.1 and 9.0, centroid 4.55)
    assert new.tolist() == [0, 1, 2, 2, -1]


@pytest.mark.slow
@pytest.mark.parametrize("features", ["pca", "raw"])
def test_ablation_modes_sort_the_accuracy_recording(features, accuracy_recording, tmp_path, sorter_device):
    recording, ground_truth = accuracy_recording
    params = default_params(sorter_device) | {"features": features, "torch_threads": 1}
    folder = tmp_path / features
    sorting = ss.run_sorter("elvisort", recording, folder=folder, **params)
    snr = unit_snr(recording, ground_truth)
    performance = sc.compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True).get_performance()
    accuracy = performance.loc[snr.index[snr.values >= 5], "accuracy"].astype(float)
    print(f"\nfeatures={features}: accuracy {np.round(accuracy.to_numpy(), 3).tolist()}, mean {accuracy.mean():.3f}")
    assert accuracy.mean() >= 0.8
    log = (folder / "sorter_output" / "elvisort.log").read_text()
    assert f"{features} features" in log and "nearest centroid" in log
    assert not (folder / "sorter_output" / "model.pt").exists()  # no network was trained
