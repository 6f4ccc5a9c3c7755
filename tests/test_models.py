"""Models: shapes, finite loss terms, backward, heads sized after clustering, config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikeinterface_elvisort.models import MODELS, BetaVAEConfig, build_model

BATCH = 8
NUM_SAMPLES = 31  # odd, and not a multiple of samples_per_step (5 by default, nor of 3)
NUM_CHANNELS = 4

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def _snippets(batch=BATCH, num_samples=NUM_SAMPLES, num_channels=NUM_CHANNELS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return 20.0 * torch.randn(batch, num_samples, num_channels, generator=generator)


def _positions(batch=BATCH):
    return torch.stack([torch.zeros(batch), 20.0 * torch.arange(batch, dtype=torch.float32)], dim=1)


@pytest.fixture
def model(torch_device):
    torch.manual_seed(0)
    return build_model("beta_vae", num_samples=NUM_SAMPLES, num_channels=NUM_CHANNELS, input_scale=20.0).to(
        torch_device
    )


# the variational models (ssae's ensemble and cleaner have their own tests in test_ssae_components.py)
@pytest.mark.parametrize("name", sorted(name for name in MODELS if name not in ("ssae", "cleaner")))
def test_model_shapes_losses_backward_encode(name, torch_device):
    torch.manual_seed(0)
    model = build_model(name, num_samples=NUM_SAMPLES, num_channels=NUM_CHANNELS, input_scale=20.0).to(torch_device)
    x = _snippets().to(torch_device)
    config = model.config
    total_latent = config.latent_dim + config.upper_latent_dim

    model.train()
    reconstruction, losses = model(x)
    assert reconstruction.shape == x.shape
    assert {"reconstruction", "kl"} <= set(losses)
    for term, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), term
    assert losses["reconstruction"] > 0 and losses["kl"] >= 0

    total = losses["reconstruction"] + config.beta * losses["kl"]
    model.zero_grad()
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # every encoder and decoder weight receives a gradient
    for prefix in ("lstm", "conv", "to_latent", "to_upper", "upper_prior", "decoder_lstm1", "decoder_output"):
        assert any(
            n.startswith(prefix) and p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
        ), prefix

    model.eval()
    with torch.no_grad():
        latents = model.encode(x)
        again = model.encode(x)
    assert latents.shape == (BATCH, total_latent)
    assert torch.equal(latents, again)  # deterministic in eval mode (means, no dropout)


def test_default_latent_is_the_papers_32_plus_8(model, torch_device):
    assert (model.config.latent_dim, model.config.upper_latent_dim) == (32, 8)
    with torch.no_grad():
        assert model.eval().encode(_snippets().to(torch_device)).shape == (BATCH, 40)


def test_classification_term_needs_classes_labels_and_positions(model, torch_device):
    x, positions = _snippets().to(torch_device), _positions().to(torch_device)
    labels = torch.tensor([0, 1, 2, -1, 0, 1, -1, 2], device=torch_device)
    _, losses = model(x, labels, positions)
    assert "classification" not in losses  # no classifier branch yet
    with pytest.raises(RuntimeError, match="set_num_classes"):
        model.classify(x, positions)

    model.set_num_classes(3)
    assert model.config.num_classes == 3
    _, losses = model(x, labels, positions)
    assert torch.isfinite(losses["classification"]) and losses["classification"] > 0
    _, losses = model(x, labels)  # without positions no head runs
    assert "classification" not in losses
    _, losses = model(x, torch.full((BATCH,), -1, device=torch_device), positions)  # nothing labelled
    assert "classification" not in losses

    model.eval()
    with torch.no_grad():
        logits = model.classify(x, positions)
    assert logits.shape == (BATCH, 3)

    _, losses = model.train()(x, labels, positions)
    losses["classification"].backward()
    assert all(p.grad is not None for p in model.classifier.parameters())


def test_dec_term_with_centres(model, torch_device):
    x, positions = _snippets().to(torch_device), _positions().to(torch_device)
    embedding_dim = model.config.latent_dim + model.config.upper_latent_dim + 2
    model.set_centres(torch.randn(5, embedding_dim))
    assert model.config.num_clusters == 5
    assert model.centres.shape == (5, embedding_dim)
    _, losses = model(x, None, positions)
    assert torch.isfinite(losses["dec"]) and losses["dec"] >= 0
    losses["dec"].backward()
    assert model.centres.grad is not None and torch.isfinite(model.centres.grad).all()

    with torch.no_grad():
        q = model.soft_assignment(model.embed(model.eval().encode(x), positions))
    assert q.shape == (BATCH, 5)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(BATCH, device=torch_device))

    model.set_centres(None)
    assert model.centres is None and model.config.num_clusters == 0
    _, losses = model(x, None, positions)
    assert "dec" not in losses


def test_reconstruct_false_still_gives_the_head_terms(model, torch_device):
    x, positions = _snippets().to(torch_device), _positions().to(torch_device)
    model.set_num_classes(3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1], device=torch_device)
    _, losses = model(x, labels, positions, reconstruct=False)
    assert set(losses) == {"classification"}  # the VAE terms need the decoder's sample path: skipped
    assert torch.isfinite(losses["classification"])


def test_reconstruct_false_skips_the_decoder(model, torch_device):
    x, positions = _snippets().to(torch_device), _positions().to(torch_device)
    reconstruction, losses = model(x, None, positions, reconstruct=False)
    assert reconstruction is None
    assert "reconstruction" not in losses


@pytest.mark.parametrize("num_samples", [30, 31, 32, 63, 75])
@pytest.mark.parametrize("num_channels", [1, 3, 8])
def test_any_snippet_size(num_samples, num_channels, torch_device):
    torch.manual_seed(0)
    model = build_model("beta_vae", num_samples=num_samples, num_channels=num_channels).to(torch_device)
    x = _snippets(batch=4, num_samples=num_samples, num_channels=num_channels).to(torch_device)
    reconstruction, losses = model(x)
    assert reconstruction.shape == (4, num_samples, num_channels)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize(
    "overrides",
    [
        {"samples_per_step": 1},
        {"samples_per_step": 5},
        {"num_inception_blocks": 0},
        {"num_inception_blocks": 1},
        {"latent_dim": 4, "upper_latent_dim": 1},
        {"dropout": 0.0},
        {"attention_heads": 1, "decoder_hidden": 8},
    ],
)
def test_config_variants_build_and_run(overrides, torch_device):
    torch.manual_seed(0)
    model = build_model("beta_vae", num_samples=NUM_SAMPLES, num_channels=NUM_CHANNELS, **overrides).to(torch_device)
    x = _snippets(batch=4).to(torch_device)
    reconstruction, losses = model(x)
    assert reconstruction.shape == x.shape
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        latents = model.eval().encode(x)
    assert latents.shape == (4, model.config.latent_dim + model.config.upper_latent_dim)


def test_input_scale_makes_the_model_scale_free(torch_device):
    # the network sees snippets / input_scale: 100 x the data with 100 x the scale gives the same latents
    x = _snippets(batch=4).to(torch_device)
    latents = []
    for factor in (1.0, 100.0):
        torch.manual_seed(0)
        model = build_model("beta_vae", num_samples=NUM_SAMPLES, num_channels=NUM_CHANNELS, input_scale=20.0 * factor)
        with torch.no_grad():
            latents.append(model.to(torch_device).eval().encode(factor * x))
    torch.testing.assert_close(latents[0], latents[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": True}, "latent_dim"),
        ({"upper_latent_dim": 2.0}, "upper_latent_dim"),
        ({"samples_per_step": 0}, "samples_per_step"),
        ({"lstm_hidden": -3}, "lstm_hidden"),
        ({"decoder_hidden": 10, "attention_heads": 4}, "attention_heads"),
        ({"num_inception_blocks": 9}, "num_inception_blocks"),
        ({"num_inception_blocks": -1}, "num_inception_blocks"),
        ({"beta": -1}, "beta"),
        ({"beta": None}, "beta"),
        ({"dropout": 1.0}, "dropout"),
        ({"dec_alpha": 0}, "dec_alpha"),
        ({"position_scale_um": 0}, "position_scale_um"),
    ],
)
def test_config_validate_names_the_bad_field(overrides, match):
    config = BetaVAEConfig(num_samples=31, num_channels=4, **overrides)
    with pytest.raises(ValueError, match=match):
        config.validate()
    with pytest.raises(ValueError, match=match):
        build_model("beta_vae", num_samples=31, num_channels=4, **overrides)


def test_config_validate_returns_the_config():
    config = BetaVAEConfig(num_samples=31, num_channels=4)
    assert config.validate() is config


def test_build_model_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("transformer", num_samples=31, num_channels=4)


def test_models_registry_matches_the_config_classes():
    assert "beta_vae" in MODELS
    model_class, config_class = MODELS["beta_vae"]
    assert config_class is BetaVAEConfig
    assert isinstance(build_model("beta_vae", num_samples=31, num_channels=4), model_class)
    assert np.all([isinstance(f, str) for f in BetaVAEConfig.derived_fields])


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), ((1, 2), None, 0), ((3, 5), 1, (1, 2))])
def test_fast_max_pool_equals_torch(kernel, stride, padding):
    """The inference path of our MaxPool2d (maxima of shifted views) gives exactly torch's values."""
    import torch

    from spikeinterface_elvisort.models.layers import MaxPool2d

    x = torch.randn(7, 5, 8, 25, generator=torch.Generator().manual_seed(0))
    reference = torch.nn.MaxPool2d(kernel, stride=stride, padding=padding)
    fast = MaxPool2d(kernel, stride=stride, padding=padding)
    with torch.no_grad():
        assert torch.equal(fast(x), reference(x))
    assert torch.equal(fast(x), reference(x))  # training path: torch's own op
