"""Training on tiny synthetic data (CPU, seconds): the loss falls, the classifier learns, checkpoints round-trip."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch

from spikeinterface_elvisort.inference import encode, predict_proba
from spikeinterface_elvisort.models import build_model
from spikeinterface_elvisort.results import load_checkpoint, save_checkpoint, save_history
from spikeinterface_elvisort.training import TrainConfig, train_model

pytestmark = pytest.mark.usefixtures("single_thread_torch")

NUM_SAMPLES, NUM_CHANNELS = 30, 4
SMALL_MODEL = dict(lstm_hidden=16, conv_channels=8, num_inception_blocks=1, decoder_hidden=16, latent_dim=8,
                   upper_latent_dim=2, classifier_hidden=32, dropout=0.1)


def _waveforms():
    """Three unit shapes (num_samples, num_channels): different channels, widths and polarities."""
    t = np.arange(NUM_SAMPLES)[:, None]
    shapes = np.zeros((3, NUM_SAMPLES, NUM_CHANNELS))
    shapes[0] = -60 * np.exp(-0.5 * ((t - 10) / 1.5) ** 2) * np.array([1.0, 0.5, 0.1, 0.0])
    shapes[1] = -50 * np.exp(-0.5 * ((t - 10) / 3.0) ** 2) * np.array([0.0, 0.2, 1.0, 0.6])
    shapes[2] = 40 * np.exp(-0.5 * ((t - 14) / 2.0) ** 2) * np.array([0.3, 1.0, 0.3, 0.0])
    return shapes


@pytest.fixture(scope="module")
def data():
    """300 snippets: 3 shapes x 100, amplitude jitter and N(0, 3) noise; (snippets float32, labels, positions)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 100)
    shapes = _waveforms()[labels] * rng.uniform(0.8, 1.2, size=(300, 1, 1))
    snippets = (shapes + rng.normal(0.0, 3.0, size=shapes.shape)).astype(np.float32)
    order = rng.permutation(300)
    positions = np.zeros((300, 2), dtype=np.float32)
    positions[:, 1] = np.array([0.0, 40.0, 20.0])[labels]  # peak channel depth of each unit
    return snippets[order], labels[order], positions[order]


def _model(snippets, seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(SMALL_MODEL, **overrides)
    return build_model("beta_vae", num_samples=NUM_SAMPLES, num_channels=NUM_CHANNELS,
                       input_scale=float(np.std(snippets)), **config)


def test_vae_loss_falls(data, torch_device):
    snippets, _, _ = data
    model = _model(snippets)
    config = TrainConfig(epochs=5, batch_size=32, learning_rate=3e-3, weights={"kl": 0.1}, stage="vae")
    history = train_model(model, snippets, config, device=torch_device)
    assert len(history) == 5
    assert [row["epoch"] for row in history] == list(range(5))
    assert all(row["stage"] == "vae" for row in history)
    for row in history:
        assert {"reconstruction", "kl", "total", "kl_weight"} <= set(row)
        assert all(np.isfinite(row[k]) for k in ("reconstruction", "kl", "total"))
    assert history[-1]["reconstruction"] < 0.8 * history[0]["reconstruction"]
    assert history[-1]["total"] < history[0]["total"]
    assert not model.training  # train_model leaves the model in eval mode


def test_kl_warmup_ramps_the_kl_weight(data, torch_device):
    snippets, _, _ = data
    model = _model(snippets)
    config = TrainConfig(epochs=5, batch_size=100, weights={"kl": 2.0}, kl_warmup_epochs=4)
    history = train_model(model, snippets[:200], config, device=torch_device)
    assert [row["kl_weight"] for row in history] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])


def test_training_is_reproducible(data, torch_device):
    snippets, _, _ = data
    config = TrainConfig(epochs=2, batch_size=64, seed=3)
    histories, latents = [], []
    for _ in range(2):
        model = _model(snippets, seed=7)
        torch.manual_seed(11)  # the reparameterisation noise
        histories.append(train_model(model, snippets[:128], config, device=torch_device))
        latents.append(encode(model, snippets[:32], torch_device))
    if torch_device.type == "cpu":
        assert histories[0] == histories[1]
        np.testing.assert_array_equal(latents[0], latents[1])
    else:
        np.testing.assert_allclose(latents[0], latents[1], rtol=1e-3, atol=1e-3)


def test_classifier_learns_labelled_blobs(data, torch_device):
    snippets, labels, positions = data
    model = _model(snippets)
    base = TrainConfig(batch_size=32, learning_rate=3e-3, weights={"kl": 0.1})
    history = train_model(model, snippets, replace(base, epochs=3, stage="vae"), device=torch_device)
    model.set_num_classes(4)  # 3 units + the non-spike class
    # a third of the events stay unlabelled (-1): they must not feed the classification term
    targets = np.where(np.arange(300) % 3 == 0, -1, labels)
    history += train_model(
        model, snippets, replace(base, epochs=8, trainable="encoder_classifier", stage="classifier"),
        device=torch_device, labels=targets, positions=positions,
    )
    classifier_rows = [row for row in history if row["stage"] == "classifier"]
    assert len(classifier_rows) == 8 and all("classification" in row for row in classifier_rows)
    assert classifier_rows[-1]["classification"] < classifier_rows[0]["classification"]

    probabilities = predict_proba(model, snippets, positions, torch_device, batch_size=64)
    assert probabilities.shape == (300, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    predicted = probabilities.argmax(axis=1)
    assert (predicted == labels).mean() >= 0.95
    assert (predicted[targets == -1] == labels[targets == -1]).mean() >= 0.9  # also on the unlabelled third


def _state(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def test_trainable_parts(data, torch_device):
    snippets, labels, positions = data
    model = _model(snippets)
    model.set_num_classes(4)
    before = _state(model)
    train_model(model, snippets[:96], TrainConfig(epochs=1, batch_size=32, trainable="classifier"), torch_device,
                labels=labels[:96], positions=positions[:96])
    after = _state(model)
    changed = {name for name in before if not torch.equal(before[name].cpu(), after[name].cpu())}
    assert changed and all(name.startswith("classifier") for name in changed), changed

    before = after
    train_model(model, snippets[:96], TrainConfig(epochs=1, batch_size=32, trainable="encoder_classifier"),
                torch_device, labels=labels[:96], positions=positions[:96])
    after = _state(model)
    changed = {name for name in before if not torch.equal(before[name].cpu(), after[name].cpu())}
    assert any(name.startswith("lstm") for name in changed)
    assert any(name.startswith("classifier") for name in changed)
    assert not any(name.startswith("decoder") for name in changed), changed


def test_encode_batches_do_not_change_the_result(data, torch_device):
    snippets, _, _ = data
    model = _model(snippets)
    whole = encode(model, snippets[:50], torch_device, batch_size=1024)
    pieces = encode(model, snippets[:50], torch_device, batch_size=7)
    assert whole.shape == (50, SMALL_MODEL["latent_dim"] + SMALL_MODEL["upper_latent_dim"])
    assert whole.dtype == np.float32
    np.testing.assert_allclose(whole, pieces, rtol=1e-5, atol=1e-5)



def test_inference_threads_do_not_change_the_result(data, monkeypatch):
    """On the CPU the batches of a pass run in worker threads, each batch on one thread: the output is the same
    bit for bit with one worker or several."""
    import spikeinterface_elvisort.device as device

    snippets, _, positions = data
    model = _model(snippets, num_classes=4)
    results = {}
    for workers in (1, 3):
        monkeypatch.setattr(device, "inference_workers", lambda: workers)
        results[workers] = (encode(model, snippets, "cpu", batch_size=32),
                            predict_proba(model, snippets, positions, "cpu", batch_size=32))
    for one, several in zip(results[1], results[3]):
        assert one.shape[0] == len(snippets)
        np.testing.assert_array_equal(one, several)


def test_checkpoint_round_trip(data, torch_device, tmp_path):
    snippets, labels, positions = data
    model = _model(snippets)
    history = train_model(model, snippets[:128], TrainConfig(epochs=1, batch_size=64), torch_device)
    # heads sized after clustering must survive the round trip too
    model.set_num_classes(4)
    embedding_dim = SMALL_MODEL["latent_dim"] + SMALL_MODEL["upper_latent_dim"] + 2
    model.set_centres(torch.randn(3, embedding_dim))
    history += train_model(model, snippets[:128], TrainConfig(epochs=1, batch_size=64, stage="classifier"),
                           torch_device, labels=labels[:128], positions=positions[:128])
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, "beta_vae", history, extra={"nbefore": 10, "unit_ids": np.arange(3)})

    loaded, checkpoint = load_checkpoint(path)
    assert not loaded.training
    assert next(loaded.parameters()).device.type == "cpu"
    assert loaded.config == model.config
    assert checkpoint["model"] == "beta_vae"
    assert checkpoint["history"] == history
    assert checkpoint["nbefore"] == 10 and checkpoint["unit_ids"].tolist() == [0, 1, 2]
    assert isinstance(checkpoint["version"], str)
    np.testing.assert_array_equal(
        encode(loaded, snippets[:40], torch.device("cpu")), encode(model, snippets[:40], torch.device("cpu"))
    )
    np.testing.assert_array_equal(
        predict_proba(loaded, snippets[:40], positions[:40], torch.device("cpu")),
        predict_proba(model, snippets[:40], positions[:40], torch.device("cpu")),
    )
    torch.testing.assert_close(loaded.centres.detach(), model.centres.detach().cpu())


def test_save_history_writes_one_row_per_epoch_with_every_loss_column(tmp_path):
    history = [
        {"stage": "vae", "epoch": 0, "reconstruction": 10.0, "kl": 1.0, "total": 11.0, "kl_weight": 0.5},
        {"stage": "vae", "epoch": 1, "reconstruction": 8.0, "kl": 1.5, "total": 9.5, "kl_weight": 1.0},
        {"stage": "classifier", "epoch": 0, "reconstruction": 7.0, "kl": 1.2, "classification": 1.1, "total": 9.3,
         "kl_weight": 1.0},
    ]
    path = tmp_path / "history.csv"
    save_history(path, history)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames
    assert columns[:6] == ["stage", "epoch", "reconstruction", "kl", "total", "kl_weight"]
    assert "classification" in columns
    assert len(rows) == 3
    assert [float(row["reconstruction"]) for row in rows] == [10.0, 8.0, 7.0]
    assert rows[0]["classification"] == "" and float(rows[2]["classification"]) == 1.1
    assert [row["stage"] for row in rows] == ["vae", "vae", "classifier"]


def test_class_balanced_head_does_not_drown_small_classes(data, torch_device):
    """The saved model's head is retrained with most targets in the non-spike class when the final sorting keeps
    few events: weighted by inverse class counts, the few labelled events of a unit still win their class."""
    snippets, labels, positions = data
    model = _model(snippets)
    train_model(model, snippets, TrainConfig(epochs=3, batch_size=32, learning_rate=3e-3, weights={"kl": 0.1}),
                torch_device)
    # unit 0: 12 of its 100 events labelled; the 288 others (units 1 and 2 too) in the non-spike class 1
    labelled = np.flatnonzero(labels == 0)[:12]
    targets = np.ones(labels.size, dtype=np.int64)
    targets[labelled] = 0
    recall = {}
    for balanced in (False, True):
        torch.manual_seed(0)
        model.set_num_classes(2)
        train_model(model, snippets, TrainConfig(epochs=10, batch_size=32, learning_rate=3e-3, trainable="classifier",
                                                 class_balance=float(balanced)), torch_device, labels=targets,
                    positions=positions)
        predicted = predict_proba(model, snippets, positions, torch_device, batch_size=64).argmax(axis=1)
        recall[balanced] = (predicted[labels == 0] == 0).mean()
    assert recall[True] >= 0.8 and recall[True] >= recall[False] + 0.3, recall
