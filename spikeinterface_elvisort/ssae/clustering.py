"""ssae's clustering: a Gaussian mixture per ensemble member, the member with the lowest BIC wins.

"auto-GMM": per probe region, mixtures of 1..max_components components; the count with the lowest BIC is kept, and
the member whose best mixture has the lowest BIC labels the region. Then recursive re-clustering (NeuralSorter's
"subsequently split desired units"): a cluster is split in two again while BIC prefers two components to one.
"gt-GMM": one mixture of a given number of components over the whole probe (the event's position joins the
latent, since no region keeps distant units apart).

Every member's latent is standardised (zero mean, unit variance per dimension, within the region) before its
mixtures are fitted, so that BIC values of different members are measured on the same scale.
"""

from __future__ import annotations

import numpy as np


def probe_regions(channel_locations: np.ndarray, radius_um: float | None) -> np.ndarray:
    """Region of each channel: with ``radius_um`` None, one region per channel; otherwise region centres are picked
    greedily along the probe (depth, then x) so that every channel lies within ``radius_um`` of a centre, and each
    channel joins its nearest centre. (num_channels, 2) -> (num_channels,) region index."""
    locations = np.asarray(channel_locations, dtype=np.float64)[:, :2]
    if radius_um is None:
        return np.arange(locations.shape[0])
    centres = []
    for channel in np.lexsort((locations[:, 0], locations[:, 1])):
        if not centres or np.min(np.linalg.norm(locations[centres] - locations[channel], axis=1)) > radius_um:
            centres.append(channel)
    distance = np.linalg.norm(locations[:, None, :] - locations[None, centres, :], axis=2)
    return np.argmin(distance, axis=1)


def _standardise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    return (features - mean) / std, mean, std


def _gmm(features: np.ndarray, num_components: int, seed: int):
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(num_components, covariance_type="full", reg_covar=1e-3, random_state=seed).fit(features)


def bic_choose(features: np.ndarray, max_components: int, min_cluster_size: int, seed: int = 0):
    """Gaussian mixtures of 1..max_components components (never more than ``len(features) // min_cluster_size``);
    returns ``(labels, bic, num_components)`` of the one with the lowest BIC. Stops two counts past the best one."""
    largest = max(1, min(max_components, features.shape[0] // max(min_cluster_size, 1)))
    best = (None, np.inf, 0)
    for num in range(1, largest + 1):
        gmm = _gmm(features, num, seed)
        bic = gmm.bic(features)
        if bic < best[1]:
            best = (gmm.predict(features), bic, num)
        elif num >= best[2] + 2:
            break
    labels, bic, num = best
    _, labels = np.unique(labels, return_inverse=True)  # components left empty by predict do not count
    return labels.astype(np.int64), float(bic), num


def recursive_split(features: np.ndarray, max_splits: int, min_cluster_size: int, seed: int = 0) -> np.ndarray:
    """Split a cluster in two while BIC prefers two components to one and both halves keep ``min_cluster_size``
    events, at most ``max_splits`` levels deep; each level re-standardises its events. Returns labels 0..n-1."""
    labels = np.zeros(features.shape[0], dtype=np.int64)
    pending = [(np.arange(features.shape[0]), 0)]
    parts = []
    while pending:
        members, depth = pending.pop()
        if depth >= max_splits or members.size < 2 * min_cluster_size:
            parts.append(members)
            continue
        local, _, _ = _standardise(features[members])
        one, two = _gmm(local, 1, seed), _gmm(local, 2, seed)
        halves = two.predict(local)
        sizes = np.bincount(halves, minlength=2)
        if two.bic(local) < one.bic(local) and sizes.min() >= min_cluster_size:
            pending += [(members[halves == 0], depth + 1), (members[halves == 1], depth + 1)]
        else:
            parts.append(members)
    for index, members in enumerate(sorted(parts, key=lambda m: m.min())):
        labels[members] = index
    return labels


class BicEnsembleClustering:
    """Cluster the latents of an ensemble's members; scikit-learn style (``fit`` then ``predict``).

    Parameters
    ----------
    num_units : int | None, default: None
        None: "auto-GMM" (counts by BIC, per region, recursive re-clustering). An integer: "gt-GMM", one mixture of
        exactly this many components over all events, on the latent plus the event's position.
    max_components : int, default: 6
        Largest count tried per region by auto-GMM.
    min_cluster_size : int, default: 20
        Regions with fewer events are left unlabelled (-1); no split leaves a part smaller than this.
    max_splits : int, default: 3
        Depth of the recursive re-clustering (auto-GMM); 0 turns it off.
    random_state : int, default: 0

    Attributes
    ----------
    labels_ : np.ndarray (num_events,)
        Cluster of each training event, unique across regions, or -1.
    winners_ : dict
        Region -> index of the member whose mixture had the lowest BIC.
    bics_ : dict
        Region -> list of each member's lowest BIC.
    num_splits_ : int
        Clusters added by the recursive re-clustering.
    """

    def __init__(self, num_units: int | None = None, max_components: int = 6, min_cluster_size: int = 20,
                 max_splits: int = 3, random_state: int = 0):
        self.num_units = num_units
        self.max_components = max_components
        self.min_cluster_size = min_cluster_size
        self.max_splits = max_splits
        self.random_state = random_state

    def _features(self, member_latents, region, indices, positions):
        """Each member's features for the events ``indices`` of ``region`` (standardised with the region's fit)."""
        mean, std = self._scalers[region]
        out = []
        for m, latents in enumerate(member_latents):
            features = latents[indices]
            if self.num_units is not None:
                features = np.concatenate([features, positions[indices]], axis=1)
            out.append((features - mean[m]) / std[m])
        return out

    def fit(self, member_latents: list[np.ndarray], regions: np.ndarray, positions: np.ndarray | None = None):
        """``member_latents``: one (num_events, latent_dim) array per member; ``regions`` (num_events,) the region of
        each event's peak channel; ``positions`` (num_events, 2) in um, needed by gt-GMM."""
        num_events = member_latents[0].shape[0]
        if self.num_units is not None:
            if positions is None:
                raise ValueError("gt-GMM (num_units set) needs the events' positions")
            regions = np.zeros(num_events, dtype=np.int64)
        self.labels_ = np.full(num_events, -1, dtype=np.int64)
        self.winners_, self.bics_, self._scalers, self._classifiers, self._offsets = {}, {}, {}, {}, {}
        self.num_splits_ = 0
        next_label = 0
        for region in np.unique(regions):
            indices = np.flatnonzero(regions == region)
            if indices.size < self.min_cluster_size:
                continue
            scaled = []
            for latents in member_latents:
                features = latents[indices]
                if self.num_units is not None:
                    features = np.concatenate([features, positions[indices]], axis=1)
                scaled.append(_standardise(features))
            self._scalers[region] = ([s[1] for s in scaled], [s[2] for s in scaled])
            features = [s[0] for s in scaled]
            results = []
            for member_features in features:
                if self.num_units is None:
                    results.append(bic_choose(member_features, self.max_components, self.min_cluster_size,
                                              self.random_state))
                else:
                    num = min(self.num_units, indices.size)
                    gmm = _gmm(member_features, num, self.random_state)
                    _, labels = np.unique(gmm.predict(member_features), return_inverse=True)
                    results.append((labels, float(gmm.bic(member_features)), num))
            winner = int(np.argmin([r[1] for r in results]))
            self.winners_[region] = winner
            self.bics_[region] = [r[1] for r in results]
            local = _drop_small(results[winner][0], self.min_cluster_size)
            if local.max() < 0:
                continue
            if self.num_units is None and self.max_splits:
                refined = np.full_like(local, -1)
                offset = 0
                for value in range(int(local.max()) + 1):
                    members = np.flatnonzero(local == value)
                    parts = recursive_split(features[winner][members], self.max_splits, self.min_cluster_size,
                                            self.random_state)
                    refined[members] = parts + offset
                    offset += int(parts.max()) + 1
                self.num_splits_ += offset - (int(local.max()) + 1)
                local = refined
            clustered = local >= 0
            self._classifiers[region] = _fit_classifier(features[winner][clustered], local[clustered])
            self.labels_[indices] = np.where(clustered, local + next_label, -1)
            self._offsets[region] = next_label
            next_label += int(local.max()) + 1
        self.num_clusters_ = next_label
        return self

    def predict(self, member_latents: list[np.ndarray], regions: np.ndarray, positions: np.ndarray | None = None):
        """Label new events with the fitted clusters (each region's winning member, quadratic discriminant analysis
        on its clusters: every event of a fitted region joins one of its clusters); events of regions that had too
        few training events get -1."""
        num_events = member_latents[0].shape[0]
        if self.num_units is not None:
            regions = np.zeros(num_events, dtype=np.int64)
        labels = np.full(num_events, -1, dtype=np.int64)
        for region, classifier in self._classifiers.items():
            indices = np.flatnonzero(regions == region)
            if indices.size == 0:
                continue
            features = self._features(member_latents, region, indices, positions)[self.winners_[region]]
            labels[indices] = classifier(features) + self._offsets[region]
        return labels


def _drop_small(labels: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """Clusters smaller than ``min_cluster_size`` become -1 (noise); the others are renumbered 0..n-1."""
    counts = np.bincount(labels)
    keep = counts >= min_cluster_size
    new_index = np.cumsum(keep) - 1
    return np.where(keep[labels], new_index[labels], -1)


def _fit_classifier(features: np.ndarray, labels: np.ndarray):
    """A function features -> cluster: QDA on the clusters (a Gaussian per cluster, as the mixture had)."""
    values = np.unique(labels)
    if values.size == 1:
        return lambda x: np.full(x.shape[0], values[0], dtype=np.int64)
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    qda = QuadraticDiscriminantAnalysis(reg_param=0.05).fit(features, labels)
    return lambda x: qda.predict(x).astype(np.int64)
