"""Hand-made snippet features for the ablation of the beta-VAE latent (``features="pca"`` or ``"raw"``), and the
nearest-centroid labelling that replaces the classifier branch with them."""

from __future__ import annotations

from typing import Callable

import numpy as np


def fit_features(snippets: np.ndarray, method: str, num_components: int, scale: float,
                 seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Learn a feature map on training snippets; returns ``transform(snippets) -> features``.

    Parameters
    ----------
    snippets : np.ndarray (num_events, num_samples, num_channels)
    method : "pca" | "raw"
        "pca": scikit-learn PCA of the flattened snippets, ``num_components`` components.
        "raw": the flattened snippets themselves (num_samples * num_channels values).
    scale : float
        Snippets are divided by it (the median noise level: features in noise units).
    """
    if method == "raw":
        return lambda batch: _flat(batch, scale)
    if method == "pca":
        from sklearn.decomposition import PCA

        flat = _flat(snippets, scale)
        pca = PCA(n_components=min(num_components, *flat.shape), random_state=seed).fit(flat)
        return lambda batch: pca.transform(_flat(batch, scale))
    raise ValueError(f"features method={method!r} is not valid; choose 'pca' or 'raw'")


def _flat(snippets, scale):
    # (num, num_samples, num_channels) -> (num, num_samples * num_channels); float64 because spikes reach tens of
    # noise units, and the Gaussian mixtures' covariances of such features lose positive definiteness in float32
    return (np.asarray(snippets, dtype=np.float64) / scale).reshape(len(snippets), -1)


def group_centroids(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict:
    """Per group (peak channel), the mean features of each cluster's members in that group: ``{group: (cluster
    labels (k,), centroids (k, dim))}``; events labelled -1 do not count."""
    centroids = {}
    for group in np.unique(groups):
        members = (groups == group) & (labels >= 0)
        values = np.unique(labels[members])
        if values.size:
            centroids[group] = (values, np.stack([features[members & (labels == v)].mean(axis=0) for v in values]))
    return centroids


def nearest_centroid(features: np.ndarray, groups: np.ndarray, centroids: dict) -> np.ndarray:
    """Label of the nearest centroid (Euclidean) among those of the event's group; -1 where the group has none.
    With ``features="raw"`` the centroids are templates and this is the assignment step of template k-means."""
    labels = np.full(len(features), -1, dtype=np.int64)
    for group, (values, group_centroids_) in centroids.items():
        members = np.flatnonzero(groups == group)
        if members.size:
            distances = ((features[members, None, :] - group_centroids_[None]) ** 2).sum(axis=2)
            labels[members] = values[np.argmin(distances, axis=1)]
    return labels
