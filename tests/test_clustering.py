"""Clustering of latent features on planted blobs."""

from __future__ import annotations

import numpy as np
import pytest

from spikeinterface_elvisort.clustering import cluster_latents, gmm_bic


def _blobs(centres, per_blob, dim, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    points, truth = [], []
    for index, centre in enumerate(centres):
        c = np.zeros(dim)
        c[: len(centre)] = centre
        points.append(c + spread * rng.normal(size=(per_blob, dim)))
        truth.append(np.full(per_blob, index))
    return np.concatenate(points), np.concatenate(truth)


def _same_partition(labels, truth):
    pairs = set(zip(labels.tolist(), truth.tolist()))
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


def test_gmm_bic_finds_the_planted_number_of_clusters():
    features, truth = _blobs([(0, 0), (12, 0), (0, 12)], per_blob=150, dim=2, seed=0)
    labels = gmm_bic(features, max_components=8, min_cluster_size=20, seed=0)
    assert len(np.unique(labels)) == 3
    assert _same_partition(labels, truth)
    single, _ = _blobs([(0, 0)], per_blob=200, dim=2, seed=1)
    assert len(np.unique(gmm_bic(single, max_components=8, min_cluster_size=20, seed=0))) == 1


def test_gmm_bic_is_bounded_by_min_cluster_size():
    features, _ = _blobs([(0, 0), (12, 0), (0, 12)], per_blob=15, dim=2, seed=0)
    # 45 points and clusters of at least 20: at most 2 components
    assert len(np.unique(gmm_bic(features, max_components=8, min_cluster_size=20, seed=0))) <= 2


@pytest.mark.parametrize("method", ["gmm_bic", "hdbscan"])
def test_cluster_latents_keeps_groups_apart(method):
    # group 0 and group 1 hold the same two blobs (same latents) but different peak channels: different clusters;
    # group 2 is too small to cluster
    first, truth0 = _blobs([(0, 0), (15, 0)], per_blob=100, dim=10, seed=0)
    second, truth1 = _blobs([(0, 0), (15, 0)], per_blob=100, dim=10, seed=1)
    third, _ = _blobs([(30, 30)], per_blob=5, dim=10, seed=2)
    latents = np.concatenate([first, second, third])
    groups = np.r_[np.zeros(200, int), np.ones(200, int), np.full(5, 2)]
    labels = cluster_latents(latents, groups, method=method, min_cluster_size=20, seed=0)
    assert labels.shape == (405,)
    assert np.all(labels[groups == 2] == -1)
    group0, group1 = labels[groups == 0], labels[groups == 1]
    assert not set(group0[group0 >= 0].tolist()) & set(group1[group1 >= 0].tolist())
    # within each group the two blobs are told apart and most events are clustered
    for group_labels, truth in ((group0, truth0), (group1, truth1)):
        kept = group_labels >= 0
        assert kept.mean() > 0.8
        assert len(np.unique(group_labels[kept])) == 2
        assert _same_partition(group_labels[kept], truth[kept])
    # labels are 0..n-1
    assert sorted(np.unique(labels[labels >= 0]).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "method",
    [
        "gmm_bic",
        "hdbscan",
    ],
)
def test_cluster_latents_single_unit_group_is_one_cluster(method):
    # the usual case on a probe: a peak channel that only one unit peaks on
    latents, _ = _blobs([(0, 0)], per_blob=200, dim=10, seed=1)
    labels = cluster_latents(latents, np.zeros(200, int), method=method, min_cluster_size=20, seed=0)
    assert (labels >= 0).mean() > 0.8
    assert len(np.unique(labels[labels >= 0])) == 1


def test_cluster_latents_is_deterministic():
    latents, _ = _blobs([(0, 0), (8, 0), (0, 8)], per_blob=80, dim=6, seed=4)
    groups = np.zeros(latents.shape[0], int)
    first = cluster_latents(latents, groups, seed=0)
    second = cluster_latents(latents, groups, seed=0)
    np.testing.assert_array_equal(first, second)
