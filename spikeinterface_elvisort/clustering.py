"""Latent clustering with an automatic number of clusters, one clustering per peak channel."""

from __future__ import annotations

import numpy as np


def cluster_latents(
    latents: np.ndarray,
    groups: np.ndarray,
    *,
    method: str = "gmm_bic",
    max_components: int = 8,
    pca_components: int = 6,
    min_cluster_size: int = 20,
    seed: int = 0,
) -> np.ndarray:
    """Cluster latent means separately within each group (the events' peak channel), so that units far apart on
    the probe never share a cluster; the count per group is automatic.

    Parameters
    ----------
    latents : np.ndarray (num_events, latent_dim)
    groups : np.ndarray (num_events,)
        Group of each event (its peak channel).
    method : "gmm_bic" | "hdbscan", default: "gmm_bic"
        "gmm_bic": Gaussian mixtures of 1 to ``max_components`` components, the lowest BIC wins.
        "hdbscan": scikit-learn's HDBSCAN, events outside dense regions become noise.
    pca_components : int
        Latents are reduced to this many principal components within each group first.
    min_cluster_size : int
        Smaller clusters (and groups) are labelled -1 (noise).

    Returns
    -------
    labels : np.ndarray (num_events,)
        Cluster index, unique across groups, or -1.
    """
    labels = np.full(latents.shape[0], -1, dtype=np.int64)
    next_label = 0
    for group in np.unique(groups):
        indices = np.flatnonzero(groups == group)
        if indices.size < min_cluster_size:
            continue
        local = _cluster_group(latents[indices], method, max_components, pca_components, min_cluster_size, seed)
        for value in np.unique(local[local >= 0]):
            members = indices[local == value]
            if members.size >= min_cluster_size:
                labels[members] = next_label
                next_label += 1
    return labels


def _cluster_group(features, method, max_components, pca_components, min_cluster_size, seed):
    from sklearn.decomposition import PCA

    num_components = min(pca_components, features.shape[1], features.shape[0] - 1)
    if num_components >= 1:
        features = PCA(n_components=num_components, random_state=seed).fit_transform(features)
    if method == "gmm_bic":
        return gmm_bic(features, max_components=max_components, min_cluster_size=min_cluster_size, seed=seed)
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        labels = HDBSCAN(min_cluster_size=min_cluster_size, allow_single_cluster=True, copy=True).fit_predict(features)
        if not np.any(labels >= 0):
            return np.zeros(features.shape[0], dtype=np.int64)
        if np.mean(labels < 0) > 0.5:
            # with a single unit on the channel HDBSCAN keeps only the densest core as a cluster: give the rest
            # to the nearest cluster centre instead of calling most of the unit noise
            centres = np.stack([features[labels == k].mean(axis=0) for k in np.unique(labels[labels >= 0])])
            nearest = np.argmin(((features[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
            labels = np.where(labels >= 0, labels, np.unique(labels[labels >= 0])[nearest])
        return labels
    raise ValueError(f"clustering method={method!r} is not valid; choose 'gmm_bic' or 'hdbscan'")


def gmm_bic(features: np.ndarray, max_components: int = 8, min_cluster_size: int = 20, seed: int = 0) -> np.ndarray:
    """Fit Gaussian mixtures with 1..max_components components (full covariance) and keep the one with the lowest
    Bayesian information criterion; never more components than ``len(features) // min_cluster_size``.

    features (num, dim) -> labels (num,)
    """
    from sklearn.mixture import GaussianMixture

    largest = max(1, min(max_components, features.shape[0] // max(min_cluster_size, 1)))
    best, best_bic = None, np.inf
    for num in range(1, largest + 1):
        gmm = GaussianMixture(num, covariance_type="full", random_state=seed, reg_covar=1e-4, n_init=1)
        gmm.fit(features)
        bic = gmm.bic(features)
        if bic < best_bic:
            best, best_bic = gmm, bic
        elif num > 2 and bic > best_bic:
            break  # past the minimum BIC (from 3 components on): more components will not win
    return best.predict(features)


def most_confident(labels: np.ndarray, confidence: np.ndarray, fraction: float) -> np.ndarray:
    """Per cluster, the ``fraction`` of its events with the highest confidence (events with confidence < 0, those
    DEC moved to another cluster, never count)."""
    confident = np.zeros(labels.size, dtype=bool)
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero((labels == label) & (confidence >= 0))
        if members.size == 0:
            continue
        cut = np.quantile(confidence[members], 1.0 - fraction)
        confident[members[confidence[members] >= cut]] = True
    return confident


def dec_soft_assignment(model, snippets: np.ndarray, positions: np.ndarray, *, device, batch_size: int) -> np.ndarray:
    """The DEC head's soft assignment of each event to the model's clusters, (num_events, num_clusters): the latent
    means of ``snippets`` embedded with their ``positions`` (um), on the CPU."""
    import torch

    from .inference import encode

    latents = encode(model, snippets, device, batch_size)
    embedding = model.embed(torch.from_numpy(latents), torch.as_tensor(positions, dtype=torch.float32))
    model.cpu()
    with torch.no_grad():
        q = model.soft_assignment(embedding).numpy()
    model.to(device)
    return q
