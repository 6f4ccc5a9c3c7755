"""ssae's stages on their own: the ensemble model, alternating batches, the Atom loss, the hybrid labelled set, the
cleaner and the BIC clustering. Small data, fixed seeds, CPU, seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikeinterface_elvisort.models import build_model
from spikeinterface_elvisort.models.semi_supervised_ae import atom_loss
from spikeinterface_elvisort.ssae.clustering import BicEnsembleClustering, bic_choose, probe_regions, recursive_split
from spikeinterface_elvisort.training import TrainConfig, _alternating_batches, train_model

from conftest import make_ground_truth

pytestmark = pytest.mark.usefixtures("single_thread_torch")

NUM_SAMPLES, NUM_CHANNELS = 45, 4


# -- the model -------------------------------------------------------------------------------------------------------


def test_ensemble_shapes_losses_and_gradients(torch_device):
    torch.manual_seed(0)
    model = build_model("ssae", num_samples=NUM_SAMPLES, num_channels=NUM_CHANNELS, num_classes=5, input_scale=20.0)
    model.to(torch_device)
    assert model.num_members == 3
    # encoders of depth 2, 3 and 4: that many dense layers down to the latent
    assert [sum(isinstance(m, torch.nn.Linear) for m in member.encoder) for member in model.members] == [2, 3, 4]
    x = 20.0 * torch.randn(16, NUM_SAMPLES, NUM_CHANNELS, device=torch_device)
    labels = torch.tensor([-1] * 8 + [0, 1, 2, 3, 4, 0, 1, 2], device=torch_device)
    reconstruction, losses = model(x, labels)
    assert reconstruction.shape == x.shape
    assert set(losses) == {"reconstruction", "classification"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    for index, member in enumerate(model.members):
        for part in (member.conv, member.encoder, member.decoder, member.deconv, member.head):
            grads = [p.grad for p in part.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads), index
            assert any(g.abs().sum() > 0 for g in grads), index
    latents = model.encode(x)
    assert latents.shape == (16, 3 * model.config.latent_dim)
    # unlabelled batches have no classification term
    assert "classification" not in model(x, torch.full((16,), -1, device=torch_device))[1]


def test_cleaner_model_needs_labels():
    cleaner = build_model("cleaner", num_samples=NUM_SAMPLES, num_channels=NUM_CHANNELS)
    x = torch.randn(6, NUM_SAMPLES, NUM_CHANNELS)
    _, losses = cleaner(x, torch.tensor([0, 1, 0, 1, 0, 1]))
    assert set(losses) == {"classification"} and torch.isfinite(losses["classification"])
    probability = cleaner.spike_probability(x)
    assert probability.shape == (6,) and torch.all((probability >= 0) & (probability <= 1))
    # it reads shapes, not sizes: a window and the same window scaled give the same answer
    torch.testing.assert_close(cleaner.spike_probability(7.0 * x), probability)
    with pytest.raises(ValueError, match="labelled"):
        cleaner(x)


def test_alternating_batches_alternate_and_cover_both_sets():
    labels = np.array([-1] * 50 + list(range(5)) * 4)  # 50 unlabelled, 20 labelled
    batches = _alternating_batches(labels, 8, torch.Generator().manual_seed(0))
    kinds = [bool((labels[b.numpy()] >= 0).all()) for b in batches]
    unlabelled = [bool((labels[b.numpy()] < 0).all()) for b in batches]
    assert all(k or u for k, u in zip(kinds, unlabelled))  # never mixed
    assert kinds == [False, True] * (len(batches) // 2)
    seen = np.concatenate([b.numpy() for b in batches])
    assert set(seen) == set(range(labels.size))
    with pytest.raises(ValueError, match="labelled"):
        _alternating_batches(np.full(10, -1), 4, torch.Generator())


def test_train_model_records_the_classification_term_of_labelled_batches_only():
    rng = np.random.default_rng(0)
    snippets = rng.normal(size=(120, NUM_SAMPLES, NUM_CHANNELS)).astype(np.float32)
    labels = np.concatenate([np.full(80, -1), rng.integers(0, 3, 40)])
    torch.manual_seed(0)
    model = build_model("ssae", num_samples=NUM_SAMPLES, num_channels=NUM_CHANNELS, num_classes=3)
    history = train_model(model, snippets, TrainConfig(epochs=3, batch_size=20, alternate_labelled=True, stage="ssae"),
                          torch.device("cpu"), labels=labels)
    assert len(history) == 3
    assert all(row["classification"] > 0.2 for row in history)  # averaged over labelled batches, not all
    assert history[-1]["reconstruction"] < history[0]["reconstruction"]


def test_atom_loss_attracts_to_the_own_centroid_and_ignores_scale():
    centroids = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    near = torch.tensor([[0.1, 0.0], [3.9, 0.0], [0.0, 0.2], [4.0, -0.1]])
    between = torch.tensor([[1.9, 0.0], [2.1, 0.0], [1.8, 0.3], [2.2, -0.3]])
    assert atom_loss(near, centroids) < atom_loss(between, centroids)
    torch.testing.assert_close(atom_loss(10 * near, 10 * centroids), atom_loss(near, centroids))
    # a gradient step moves points towards their centroid
    points = between.clone().requires_grad_(True)
    atom_loss(points, centroids).backward()
    moved = points.detach() - 0.01 * points.grad
    own = torch.cdist(moved, centroids).min(dim=1).values
    assert torch.all(own <= torch.cdist(between, centroids).min(dim=1).values + 1e-6)


# -- hybrid set and cleaner ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hybrid_setup():
    from spikeinterface.core import get_noise_levels

    from spikeinterface_elvisort.detection import detect_spikes
    from spikeinterface_elvisort.preprocessing import preprocess
    from spikeinterface_elvisort.snippets import channel_neighbours
    from spikeinterface_elvisort.ssae.hybrid import aligned_noise_windows, make_hybrid_set

    recording, _ = make_ground_truth(num_channels=8, num_units=5, durations=[20.0], sampling_frequency=25000.0, seed=3)
    recording = recording.save(format="memory", n_jobs=1, progress_bar=False)  # generated lazily: read once
    preprocessed = preprocess(recording)
    noise_levels = get_noise_levels(preprocessed, return_in_uV=False, random_slices_kwargs={"seed": 0})
    peaks = detect_spikes(preprocessed, noise_levels, detect_threshold=4.5, exclude_sweep_ms=1.0, radius_um=100.0)
    neighbours = channel_neighbours(recording.get_channel_locations(), 6)
    nbefore, nafter = 25, 37
    rng = np.random.default_rng(0)
    hybrid = make_hybrid_set(recording, peaks, neighbours, nbefore, nafter, preprocess=preprocess, num_templates=6,
                             spikes_per_template=100, rng=rng, seed=0)
    noise = aligned_noise_windows(preprocessed, peaks, 1200, neighbours, nbefore, nafter, peak_sign="neg", rng=rng)
    return recording, preprocessed, peaks, neighbours, nbefore, nafter, hybrid, noise, noise_levels


def test_hybrid_set_has_the_recordings_geometry_and_sampling_rate(hybrid_setup):
    recording, _, peaks, neighbours, nbefore, nafter, hybrid, _, noise_levels = hybrid_setup
    templates = hybrid.templates
    assert templates.sampling_frequency == recording.sampling_frequency == 25000.0
    assert list(templates.channel_ids) == list(recording.channel_ids)
    np.testing.assert_array_equal(templates.probe.contact_positions, recording.get_probe().contact_positions)
    assert templates.templates_array.shape == (6, nbefore + nafter, 8)
    assert templates.nbefore == nbefore
    # each template peaks (negative, 1) at nbefore on its peak channel
    peak_channel = np.argmax(np.abs(templates.templates_array).max(axis=1), axis=1)
    np.testing.assert_allclose(templates.templates_array[np.arange(6), nbefore, peak_channel], -1.0, atol=1e-5)
    # labelled events: snippets cut like the recording's, balanced labels, within the recording
    assert hybrid.snippets.shape == (600, nbefore + nafter, neighbours.shape[1])
    assert np.bincount(hybrid.labels).tolist() == [100] * 6
    assert hybrid.sample_index.min() >= 0 and hybrid.sample_index.max() < recording.get_num_samples(0)
    # amplitudes span the detected events', and the injected events come out of the preprocessing at about the
    # amplitude asked for (the common median reference takes a little)
    magnitude = np.abs(peaks["amplitude"])
    assert hybrid.amplitudes.min() >= np.quantile(magnitude, 0.01) - 1e-4
    assert hybrid.amplitudes.max() <= np.quantile(magnitude, 0.99) + 1e-4
    centre = np.argmax(neighbours[hybrid.peak_channels] == hybrid.peak_channels[:, None], axis=1)
    measured = -hybrid.snippets[np.arange(600), nbefore, centre]
    large = hybrid.amplitudes > 10 * np.median(noise_levels)
    ratio = np.median(measured[large] / hybrid.amplitudes[large])
    assert 0.7 < ratio < 1.2, ratio


def test_cleaner_rejects_pure_noise_windows(hybrid_setup):
    from spikeinterface_elvisort.ssae.cleaning import reject_noise, train_cleaner

    _, _, _, _, _, _, hybrid, noise, _ = hybrid_setup
    train_spikes, test_spikes = hybrid.snippets[::2], hybrid.snippets[1::2]
    train_noise, test_noise = noise[:600], noise[600:]
    torch.manual_seed(0)
    cleaner, history = train_cleaner(train_spikes, train_noise, epochs=6, batch_size=64, learning_rate=2e-3, seed=0,
                                     device=torch.device("cpu"))
    assert len(history) == 6 and history[-1]["classification"] < history[0]["classification"]
    kept_noise = reject_noise(cleaner, test_noise, 0.5, torch.device("cpu"))
    kept_spikes = reject_noise(cleaner, test_spikes, 0.5, torch.device("cpu"))
    assert kept_noise.mean() <= 0.05, kept_noise.mean()
    # spikes are kept, all but some of the smallest (drawn down to the detection threshold, where noise is half the
    # shape)
    large = hybrid.amplitudes[1::2] >= np.median(hybrid.amplitudes)
    assert kept_spikes[large].mean() >= 0.95, kept_spikes[large].mean()
    assert kept_spikes.mean() >= 0.8, kept_spikes.mean()


# -- clustering ------------------------------------------------------------------------------------------------------


def _mixture(num_clusters, per_cluster, dim, seed, spread=8.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(num_clusters, dim))
    labels = np.repeat(np.arange(num_clusters), per_cluster)
    return centres[labels] + rng.normal(size=(labels.size, dim)), labels


def _agreement(found, planted):
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(planted, found)


@pytest.mark.parametrize("planted", [1, 3, 5])
def test_bic_picks_the_planted_number_of_clusters(planted):
    features, labels = _mixture(planted, 150, 4, seed=planted)
    found, bic, num = bic_choose(features, max_components=8, min_cluster_size=20, seed=0)
    assert num == planted
    assert np.isfinite(bic)
    if planted > 1:
        assert _agreement(found, labels) > 0.99


def test_the_member_with_the_lowest_bic_wins():
    informative, labels = _mixture(4, 100, 3, seed=1)
    rng = np.random.default_rng(2)
    uninformative = rng.normal(size=informative.shape)  # one Gaussian blob: no structure
    clustering = BicEnsembleClustering(max_components=6, min_cluster_size=20, max_splits=0, random_state=0)
    clustering.fit([uninformative, informative], np.zeros(labels.size, dtype=int))
    assert clustering.winners_ == {0: 1}
    assert clustering.bics_[0][1] < clustering.bics_[0][0]
    assert clustering.num_clusters_ == 4
    assert _agreement(clustering.labels_, labels) > 0.99
    # new events of the same mixture get the clusters of their kind
    new_features, new_labels = _mixture(4, 30, 3, seed=1)
    predicted = clustering.predict([rng.normal(size=new_features.shape), new_features], np.zeros(120, dtype=int))
    assert _agreement(predicted, new_labels) > 0.95


def test_gt_gmm_gives_exactly_the_given_count():
    features, labels = _mixture(3, 100, 3, seed=4)
    positions = np.zeros((labels.size, 2))
    clustering = BicEnsembleClustering(num_units=5, random_state=0).fit([features], np.arange(labels.size), positions)
    assert clustering.num_clusters_ == 5
    assert set(np.unique(clustering.labels_)) == set(range(5))


def test_recursive_split_splits_while_bic_favours_it():
    two, labels = _mixture(2, 200, 3, seed=5)
    split = recursive_split(two, max_splits=3, min_cluster_size=20, seed=0)
    assert np.unique(split).size == 2 and _agreement(split, labels) > 0.99
    one = np.random.default_rng(6).normal(size=(400, 3))
    assert np.unique(recursive_split(one, max_splits=3, min_cluster_size=20, seed=0)).size == 1
    assert np.unique(recursive_split(two, max_splits=0, min_cluster_size=20, seed=0)).size == 1


def test_regions_keep_distant_events_apart():
    # two identical units 400 um apart: one region each, so they never share a cluster
    features, labels = _mixture(1, 200, 3, seed=7)
    features = np.concatenate([features, features + 0.01])
    locations = np.array([[0.0, 0.0], [0.0, 20.0], [0.0, 400.0], [0.0, 420.0]])
    regions_of_channels = probe_regions(locations, 50.0)
    assert regions_of_channels[0] == regions_of_channels[1] != regions_of_channels[2] == regions_of_channels[3]
    np.testing.assert_array_equal(probe_regions(locations, None), np.arange(4))
    channels = np.repeat([0, 2], 200)
    clustering = BicEnsembleClustering(min_cluster_size=20, random_state=0)
    clustering.fit([features], regions_of_channels[channels])
    first, second = clustering.labels_[:200], clustering.labels_[200:]
    assert not set(first) & set(second)
