"""Does compression hurt spike sorting? Cluster spikes before and after a compression round trip and score both
against the true labels (seed 004, section 3.5)."""

from __future__ import annotations

import numpy as np


def matched_accuracy(true_labels: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of spikes whose cluster is matched to their true unit, clusters and units paired one to one by the
    Hungarian algorithm on the contingency table (unpaired clusters and noise, label -1, count as errors)."""
    from scipy.optimize import linear_sum_assignment

    true_labels, labels = np.asarray(true_labels), np.asarray(labels)
    if true_labels.shape != labels.shape:
        raise ValueError(f"true_labels {true_labels.shape} and labels {labels.shape} must have the same shape")
    if true_labels.size == 0:
        return float("nan")
    units, true_index = np.unique(true_labels, return_inverse=True)
    clusters, cluster_index = np.unique(labels[labels >= 0], return_inverse=True)
    table = np.zeros((units.size, max(clusters.size, 1)), dtype=np.int64)
    np.add.at(table, (true_index[labels >= 0], cluster_index), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / true_labels.size)


def cluster_spikes(
    waveforms: np.ndarray,
    method: str = "pca_kmeans",
    n_clusters: int | None = None,
    n_components: int = 3,
    n_init: int = 50,
    seed: int = 0,
) -> np.ndarray:
    """Cluster spikes (num_spikes, num_samples, num_channels).

    Parameters
    ----------
    method : "pca_kmeans" | "gmm_bic", default: "pca_kmeans"
        "pca_kmeans": the seed's protocol, ``n_components`` principal components then k-means with ``n_clusters``
        clusters and ``n_init`` random restarts (the seed used 500). "gmm_bic": this package's clustering
        (:func:`spikeinterface_elvisort.clustering.gmm_bic`: Gaussian mixtures on 6 principal components, the
        number of clusters chosen by BIC, up to ``n_clusters`` or 8).
    n_clusters : int | None
        Required for "pca_kmeans" (the seed gives k-means the true count); the upper bound for "gmm_bic".

    Returns
    -------
    (num_spikes,) int64 labels
    """
    from sklearn.decomposition import PCA

    flat = np.asarray(waveforms, dtype=np.float64).reshape(len(waveforms), -1)
    if method == "pca_kmeans":
        from sklearn.cluster import KMeans

        if n_clusters is None:
            raise ValueError("method='pca_kmeans' needs n_clusters (the seed gives k-means the number of units)")
        features = PCA(n_components=n_components, random_state=seed).fit_transform(flat)
        # restored spikes may take fewer distinct values than n_clusters (a codebook's): no more clusters than those
        n_clusters = min(n_clusters, len(np.unique(np.round(features, 6), axis=0)))
        return KMeans(n_clusters, n_init=n_init, random_state=seed).fit_predict(features).astype(np.int64)
    if method == "gmm_bic":
        from ..clustering import gmm_bic

        features = PCA(n_components=6, random_state=seed).fit_transform(flat)
        # restored spikes may take few distinct values (a codebook's): no more components than those
        distinct = len(np.unique(np.round(features, 6), axis=0))
        max_components = max(1, min(n_clusters or 8, distinct))
        return gmm_bic(features, max_components=max_components, min_cluster_size=20, seed=seed).astype(np.int64)
    raise ValueError(f"method={method!r} is not valid; choose 'pca_kmeans' or 'gmm_bic'")


def sorting_change(
    original: np.ndarray,
    reconstructed: np.ndarray,
    true_labels: np.ndarray,
    methods=("pca_kmeans", "gmm_bic"),
    seed: int = 0,
) -> dict:
    """Sorting accuracy before and after compression, per clustering method.

    Parameters
    ----------
    original, reconstructed : (num_spikes, num_samples, num_channels) arrays
    true_labels : (num_spikes,) array
        Ground-truth unit of each spike.

    Returns
    -------
    dict
        ``{method: {"before": accuracy, "after": accuracy, "change": after - before}}``.
    """
    if np.shape(original) != np.shape(reconstructed):
        raise ValueError(f"original {np.shape(original)} and reconstructed {np.shape(reconstructed)} differ in shape")
    num_units = int(np.unique(true_labels).size)
    out = {}
    for method in methods:
        n_clusters = num_units if method == "pca_kmeans" else max(num_units + 4, 8)
        before = matched_accuracy(true_labels, cluster_spikes(original, method, n_clusters, seed=seed))
        after = matched_accuracy(true_labels, cluster_spikes(reconstructed, method, n_clusters, seed=seed))
        out[method] = {"before": before, "after": after, "change": after - before}
    return out
