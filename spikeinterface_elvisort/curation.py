"""Clean-up: unit templates, merging of near-identical units, duplicate spikes and weak units."""

from __future__ import annotations

import numpy as np


def compute_templates(recording, peaks: np.ndarray, labels: np.ndarray, num_units: int, nbefore: int, nafter: int,
                      *, job_kwargs: dict | None = None) -> np.ndarray:
    """Mean waveform of each unit on every channel, (num_units, nbefore + nafter, num_channels).

    Uses SpikeInterface's ``estimate_templates_with_accumulator`` (chunked; memory does not grow with the number
    of spikes), in one worker whatever ``job_kwargs`` say, so that the result is the same at every run. Events with
    label -1 are ignored.
    """
    from spikeinterface.core import estimate_templates_with_accumulator
    from spikeinterface.core.base import minimum_spike_dtype

    keep = labels >= 0
    spikes = np.zeros(int(keep.sum()), dtype=minimum_spike_dtype)
    spikes["sample_index"] = peaks["sample_index"][keep]
    spikes["unit_index"] = labels[keep]
    spikes["segment_index"] = peaks["segment_index"][keep]
    order = np.lexsort((spikes["sample_index"], spikes["segment_index"]))
    spikes = spikes[order]
    # spikes too close to a segment edge cannot be cut by the accumulator
    lengths = np.array([recording.get_num_samples(s) for s in range(recording.get_num_segments())])
    inside = (spikes["sample_index"] >= nbefore) & (spikes["sample_index"] < lengths[spikes["segment_index"]] - nafter)
    spikes = spikes[inside]
    if num_units == 0:
        return np.zeros((0, nbefore + nafter, recording.get_num_channels()), dtype=np.float32)
    # one worker: the accumulator adds each worker's partial sums in the order the workers finish, so with several
    # the templates (and the sorting that depends on them) would change in their last digits from run to run
    job_kwargs = dict(job_kwargs or {}) | {"n_jobs": 1, "progress_bar": False}
    templates = estimate_templates_with_accumulator(
        recording, spikes, np.arange(num_units), nbefore, nafter, return_in_uV=False, **job_kwargs
    )
    return templates.astype(np.float32)


def template_distance(first: np.ndarray, second: np.ndarray, max_lag: int,
                      noise_power: tuple[float, float] = (0.0, 0.0)) -> float:
    """Normalised distance between two templates (num_samples, num_channels), minimised over time lags of up to
    ``max_lag`` samples: ||a - b|| / max(||a||, ||b||) on the overlapping samples. 0 = identical; 1 or more =
    unrelated (or one of them negligible).

    ``noise_power`` (one value per template): the noise a template carries per sample, summed over channels, e.g.
    ``sum(noise_levels**2) / num_spikes`` for the mean of ``num_spikes`` waveforms. It is taken out of the squared
    norms (a noisy mean's expected squared norm is the true template's plus the number of samples times this), so
    that two halves of one unit measure close whatever their spike counts. (0, 0): the plain distance."""
    return _aligned_distance(first, second, max_lag, noise_power)[0]


def _overlap(lag: int, num_samples: int) -> tuple[slice, slice]:
    """The samples of the first and of the second template that face each other when the second lags by ``lag``."""
    return slice(max(lag, 0), num_samples + min(lag, 0)), slice(max(-lag, 0), num_samples + min(-lag, 0))


def _aligned_distance(first, second, max_lag, noise_power=(0.0, 0.0)):
    """(distance, lag) of ``template_distance``, with the lag that achieves it."""
    best, best_lag = np.inf, 0
    power_a, power_b = noise_power
    for lag in range(-max_lag, max_lag + 1):
        in_first, in_second = _overlap(lag, first.shape[0])
        a, b = first[in_first], second[in_second]
        if power_a or power_b:
            length = a.shape[0]
            difference = max(float(np.sum((a - b) ** 2)) - length * (power_a + power_b), 0.0)
            norm2 = max(float(np.sum(a**2)) - length * power_a, float(np.sum(b**2)) - length * power_b)
            distance = float(np.sqrt(difference / norm2)) if norm2 > 1e-24 else np.inf
        else:
            norm = max(np.linalg.norm(a), np.linalg.norm(b), 1e-12)
            distance = float(np.linalg.norm(a - b) / norm)
        if distance < best:
            best, best_lag = distance, lag
    return best, best_lag


def _strongest_channels(amplitude: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest values of ``amplitude`` (per channel, in noise units), in channel order."""
    return np.sort(np.argsort(amplitude, kind="stable")[::-1][:count])


def _sample(members: np.ndarray, max_events: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_events`` of ``members`` drawn at random, in order (all of them when there are fewer)."""
    if max_events is None or members.size <= max_events:
        return members
    return np.sort(rng.choice(members, max_events, replace=False))


# events cut per pass over the traces by _cut_groups: about 130 MB of float32 snippets at 80 samples x 8 channels
CUT_EVENTS_PER_PASS = 50_000


def _cut(recording, peaks, members, channels, nbefore, nafter, *, noise_levels):
    """Waveforms (num, nbefore + nafter, len(channels)) of ``peaks[members]`` on ``channels``, in noise units."""
    return next(_cut_groups(recording, peaks, [(members, channels)], nbefore, nafter, noise_levels))


def _cut_groups(recording, peaks, groups, nbefore, nafter, noise_levels, *, max_events: int = CUT_EVENTS_PER_PASS):
    """``_cut`` of each ``(members, channels)`` of ``groups`` (every ``channels`` of the same length), yielded group
    by group. Consecutive groups share a pass over the traces up to ``max_events`` events: a pass over a lazily
    whitened recording whitens all of it, so one pass per group would whiten it once per group."""
    from .snippets import extract_snippets

    start = 0
    while start < len(groups):
        stop, total = start + 1, groups[start][0].size
        while stop < len(groups) and total + groups[stop][0].size <= max_events:
            total += groups[stop][0].size
            stop += 1
        batch = groups[start:stop]
        sizes = [members.size for members, _ in batch]
        events = peaks[np.concatenate([members for members, _ in batch])].copy()
        events["channel_index"] = np.repeat(np.arange(len(batch)), sizes)  # row of `channels` to cut on
        channels = np.stack([group_channels for _, group_channels in batch])
        snippets = extract_snippets(recording, events, channels, nbefore, nafter)
        offsets = np.cumsum([0] + sizes)
        for index, group_channels in enumerate(channels):
            yield snippets[offsets[index] : offsets[index + 1]] / noise_levels[group_channels]
        start = stop


def _separation(first: np.ndarray, second: np.ndarray) -> float:
    """Distance between the means of two 1-d samples in pooled standard deviations."""
    return abs(first.mean() - second.mean()) / max(np.sqrt(0.5 * (first.var() + second.var())), 1e-12)


class SplitTest:
    """Are two groups of events two units, although their templates are close? The ``distinct`` test of
    ``merge_similar_units``.

    A sample of each group's events is cut on the pair's strongest channels (both groups in one pass over the
    traces), in units of each channel's noise level, and projected on the difference of the two (aligned)
    templates. One unit split in two gives one mode along that axis; two units give two modes. The pair is called distinct when Hartigan's dip test (the
    ``diptest`` package) rejects a unimodal pooled projection at ``max_p_value``, and, when ``min_separation`` is
    above 0, the two groups' projections are that many pooled standard deviations apart.

    Parameters
    ----------
    recording : BaseRecording
        The (preprocessed) recording the events come from.
    peaks : np.ndarray
        Events with fields sample_index, segment_index (and channel_index).
    labels : np.ndarray (num_events,)
        The unit of each event, -1 for none; the units are those passed to ``merge_similar_units``.
    nbefore, nafter : int
        The templates' window.
    noise_levels : np.ndarray (num_channels,)
        Noise level of each channel of ``recording``.
    max_events : int
        Events drawn per group.
    num_channels : int
        Channels used: the pair's strongest.
    min_separation, max_p_value : float
        See above.
    max_lag : int
        Lags (samples) over which the two templates are aligned, as in ``template_distance``.
    seed : int
        Seed of the event draw.
    """

    def __init__(self, recording, peaks, labels, nbefore, nafter, noise_levels, *, max_events=300, num_channels=8,
                 min_separation=0.0, max_p_value=0.01, max_lag=0, seed=0):
        self.recording, self.peaks, self.labels = recording, peaks, labels
        self.nbefore, self.nafter, self.max_lag = nbefore, nafter, max_lag
        self.noise_levels = np.maximum(np.asarray(noise_levels, dtype=np.float64), 1e-12)
        self.max_events, self.num_channels = max_events, num_channels
        self.min_separation, self.max_p_value = min_separation, max_p_value
        self.seed = seed

    def projections(self, units_a, units_b, template_a, template_b):
        """The projections of the two groups' sampled events on the template difference, in noise units."""
        _, lag = _aligned_distance(template_a, template_b, self.max_lag)
        in_a, in_b = _overlap(lag, template_a.shape[0])
        amplitude = np.maximum(np.abs(template_a).max(axis=0), np.abs(template_b).max(axis=0)) / self.noise_levels
        channels = _strongest_channels(amplitude, self.num_channels)
        scale = self.noise_levels[channels]
        axis = (template_a[in_a][:, channels] - template_b[in_b][:, channels]) / scale
        axis = axis / max(np.linalg.norm(axis), 1e-12)
        rng = np.random.default_rng(self.seed)
        groups = [(_sample(np.flatnonzero(np.isin(self.labels, units)), self.max_events, rng), channels)
                  for units in (units_a, units_b)]
        cuts = _cut_groups(self.recording, self.peaks, groups, self.nbefore, self.nafter, self.noise_levels)
        return [np.einsum("nsc,sc->n", waveforms[:, window], axis) for waveforms, window in zip(cuts, (in_a, in_b))]

    def __call__(self, units_a, units_b, template_a, template_b) -> bool:
        import diptest

        first, second = self.projections(units_a, units_b, template_a, template_b)
        if first.size < 2 or second.size < 2:
            return False
        if _separation(first, second) < self.min_separation:
            return False
        _, p_value = diptest.diptest(np.concatenate([first, second]).astype(np.float64))
        return bool(p_value < self.max_p_value)


def split_multimodal(recording, peaks: np.ndarray, labels: np.ndarray, num_units: int, nbefore: int, nafter: int,
                     *, noise_levels: np.ndarray, num_channels: int = 8, num_features: int = 3,
                     max_p_value: float = 1e-3, min_separation: float = 6.0, min_size: int = 20, max_depth: int = 3,
                     max_events: int | None = None, seed: int = 0):
    """Split clusters whose waveforms hold two populations: the counterpart of ``SplitTest`` for one cluster.

    Each cluster's events are cut on its ``num_channels`` strongest channels (in units of each channel's noise
    level) and reduced to ``num_features`` principal components; k-means cuts them in two, and the cut is kept when
    the projection on the line between the two centres is not unimodal (Hartigan's dip test, p < ``max_p_value``),
    the two halves lie ``min_separation`` pooled standard deviations apart along it (k-means cuts one Gaussian
    cluster into halves about 2.7 apart; two units sit much further apart) and both halves hold ``min_size``
    events. Halves are tested again, ``max_depth`` levels deep. With ``max_events``, a larger cluster is tested on a
    random sample of that many events; when it splits, its other events get -1 (for the clean-up, where templates
    need only a sample and template matching then finds every spike).

    Returns
    -------
    labels : np.ndarray (num_events,)
        New labels, 0..num_new-1 (-1 stays -1); the parts of a cluster are numbered together.
    num_new : int
    """
    import diptest
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    noise_levels = np.maximum(np.asarray(noise_levels, dtype=np.float64), 1e-12)
    templates = compute_templates(recording, peaks, labels, num_units, nbefore, nafter)

    def parts(members, waveforms, depth):
        if depth >= max_depth or members.size < 2 * min_size:
            return [members]
        features = waveforms.reshape(members.size, -1)
        features = PCA(min(num_features, *features.shape), random_state=seed).fit_transform(features)
        halves = KMeans(2, n_init=3, random_state=seed).fit(features)
        axis = halves.cluster_centers_[1] - halves.cluster_centers_[0]
        sizes = np.bincount(halves.labels_, minlength=2)
        if sizes.min() < min_size or not np.linalg.norm(axis) > 0:
            return [members]
        projection = (features @ axis).astype(np.float64)
        _, p_value = diptest.diptest(projection)
        separation = _separation(projection[halves.labels_ == 0], projection[halves.labels_ == 1])
        if p_value >= max_p_value or separation < min_separation:
            return [members]
        return [part for half in (0, 1)
                for part in parts(members[halves.labels_ == half], waveforms[halves.labels_ == half], depth + 1)]

    rng = np.random.default_rng(seed)
    units, groups = [], []  # per non-empty unit: (all its events, the sample tested); (that sample, its channels)
    for unit in range(num_units):
        everyone = np.flatnonzero(labels == unit)
        if everyone.size:
            members = _sample(everyone, max_events, rng)
            units.append((everyone, members))
            groups.append((members, _strongest_channels(np.abs(templates[unit]).max(axis=0) / noise_levels,
                                                        num_channels)))

    new_labels = np.full(labels.shape, -1, dtype=np.int64)
    num_new = 0
    cuts = _cut_groups(recording, peaks, groups, nbefore, nafter, noise_levels)  # all units in few passes
    for (everyone, members), waveforms in zip(units, cuts):
        found = parts(members, waveforms, 0)
        if len(found) == 1:
            found = [everyone]
        for part in found:
            new_labels[part] = num_new
            num_new += 1
    return new_labels, num_new


def merge_similar_units(templates: np.ndarray, counts: np.ndarray, threshold: float, max_lag: int,
                        distinct=None, noise_levels: np.ndarray | None = None) -> np.ndarray:
    """Agglomerative merge of units whose templates are closer than ``threshold`` (``template_distance``).

    The closest pair is merged first; the merged template is the spike-count-weighted mean. Returns
    ``new_index`` (num_units,): the merged unit of each input unit, numbered 0..num_merged-1 in order of first
    appearance.

    ``distinct``, when given, is asked before each merge: ``distinct(units_a, units_b, template_a, template_b)``
    gets the input units of the two groups and their merged templates and returns True when the two groups are
    distinct units after all (for instance ``SplitTest``); the pair is then not merged.

    ``noise_levels`` (num_channels,), when given, are the noise levels of the traces the templates were averaged
    from: each template's noise (``sum(noise_levels**2) / count`` per sample) is then taken out of the distance
    (``template_distance``'s ``noise_power``). Without it, two halves of a unit of a few hundred spikes on a noisy
    32-channel probe measure about 0.3 apart from the noise of their means alone.
    """
    num_units = templates.shape[0]
    group = np.arange(num_units)
    if num_units < 2:
        return group
    templates = templates.astype(np.float64).copy()
    counts = counts.astype(np.float64).copy()
    alive = np.ones(num_units, dtype=bool)
    per_spike = 0.0 if noise_levels is None else float(np.sum(np.asarray(noise_levels, dtype=np.float64) ** 2))

    def noise(i, j):
        return per_spike / max(counts[i], 1.0), per_spike / max(counts[j], 1.0)

    # only neighbours can be near-identical: a pair is compared when one unit reaches half the other's peak
    # amplitude on that unit's peak channel (units that share no channel never are); the others stay at inf
    footprint = np.abs(templates).max(axis=1)  # (num_units, num_channels)
    distance = np.full((num_units, num_units), np.inf)
    for i, j in np.argwhere(np.triu(_neighbouring(footprint), k=1)):
        distance[i, j] = template_distance(templates[i], templates[j], max_lag, noise(i, j))
    while True:
        i, j = np.unravel_index(np.argmin(distance), distance.shape)
        if not distance[i, j] < threshold:
            break
        if distinct is not None and distinct(np.flatnonzero(group == i), np.flatnonzero(group == j), templates[i],
                                             templates[j]):
            distance[i, j] = np.inf
            continue
        total = counts[i] + counts[j]
        templates[i] = (counts[i] * templates[i] + counts[j] * templates[j]) / max(total, 1.0)
        counts[i] = total
        alive[j] = False
        group[group == j] = i
        distance[j, :] = np.inf
        distance[:, j] = np.inf
        footprint[i] = np.abs(templates[i]).max(axis=0)
        distance[i, :] = np.inf
        distance[:, i] = np.inf
        near = _neighbouring(footprint, i) & alive
        near[i] = False
        for k in np.flatnonzero(near):
            pair = (min(i, k), max(i, k))
            distance[pair] = template_distance(templates[pair[0]], templates[pair[1]], max_lag, noise(*pair))
    _, new_index = np.unique(group, return_inverse=True)
    return new_index


def _neighbouring(footprint: np.ndarray, unit: int | None = None) -> np.ndarray:
    """Which units can be near-identical: ``u`` and ``v`` are neighbours when one reaches at least half of the
    other's peak amplitude on that other's peak channel. ``footprint`` (num_units, num_channels) is each template's
    largest absolute value per channel. Returns the symmetric (num_units, num_units) mask, or, with ``unit``, its
    row (num_units,)."""
    peak_channel = np.argmax(footprint, axis=1)
    peak = footprint[np.arange(footprint.shape[0]), peak_channel]
    if unit is not None:
        # v reaches half of unit's peak on unit's peak channel, or unit reaches half of v's peak on v's
        return (footprint[:, peak_channel[unit]] >= 0.5 * peak[unit]) | (footprint[unit, peak_channel] >= 0.5 * peak)
    reaches = footprint[:, peak_channel].T >= 0.5 * peak[:, None]  # [u, v]: v reaches half of u's peak on u's
    return reaches | reaches.T


def _spike_trains(sample_index: np.ndarray, unit_index: np.ndarray, segment_index: np.ndarray):
    """Events in spike-train order (segment, then unit, then sample): ``(order, samples, units, segments, same)``,
    ``same[i]`` telling whether events ``i`` and ``i + 1`` of that order belong to the same train."""
    order = np.lexsort((sample_index, unit_index, segment_index))
    s, u, g = sample_index[order].astype(np.int64), unit_index[order], segment_index[order]
    return order, s, u, g, (u[1:] == u[:-1]) & (g[1:] == g[:-1])


def remove_duplicate_spikes(sample_index: np.ndarray, unit_index: np.ndarray, segment_index: np.ndarray,
                            censor_samples: int) -> np.ndarray:
    """Boolean mask keeping the first of any spikes of the same unit (and segment) closer than
    ``censor_samples``."""
    keep = np.ones(sample_index.size, dtype=bool)
    order, s, u, g, same = _spike_trains(sample_index, unit_index, segment_index)
    # iterative censoring: a spike is dropped if it follows the last *kept* spike too closely
    last_kept = 0
    for position in range(1, order.size):
        if same[position - 1] and s[position] - s[last_kept] < censor_samples and u[last_kept] == u[position] \
                and g[last_kept] == g[position]:
            keep[order[position]] = False
        else:
            last_kept = position
    return keep


def template_snr(templates: np.ndarray, noise_levels: np.ndarray) -> np.ndarray:
    """Peak amplitude of each template on its best channel, in units of that channel's noise level."""
    amplitude = np.abs(templates).max(axis=1)  # (num_units, num_channels)
    return (amplitude / np.maximum(noise_levels[None, :], 1e-12)).max(axis=1)


def isi_violations_ratio(sample_index: np.ndarray, unit_index: np.ndarray, segment_index: np.ndarray,
                         num_units: int, sampling_frequency: float, total_duration: float,
                         *, isi_threshold_ms: float = 1.5, min_isi_ms: float = 0.0) -> np.ndarray:
    """Refractory-period violations of each unit's spike train, as the ratio of Hill et al. (2011, J. Neurosci.
    31:8699), the ``isi_violations_ratio`` of SpikeInterface's quality metrics: the rate of inter-spike intervals
    shorter than ``isi_threshold_ms`` (and at least ``min_isi_ms``, the censored period) over the rate expected if
    every spike were random, times the unit's firing rate. A unit with a refractory period scores near 0, two
    merged units about 0.25 and events at random times (noise) about 0.5. Units with fewer than two spikes score 0.

    ``total_duration`` is in seconds (all segments); intervals are only taken within a segment.
    """
    threshold = isi_threshold_ms * sampling_frequency / 1000.0
    _, s, u, _, same = _spike_trains(sample_index, unit_index, segment_index)
    violation = same & (np.diff(s) < threshold)
    violations = np.bincount(u[1:][violation], minlength=num_units).astype(np.float64)
    counts = np.bincount(u, minlength=num_units).astype(np.float64)
    window = 2.0 * (isi_threshold_ms - min_isi_ms) / 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = violations * total_duration / (counts**2 * window)
    return np.where(counts > 1, ratio, 0.0)
