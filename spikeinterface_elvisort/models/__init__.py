"""Models, looked up by name so that checkpoints can rebuild them: ``MODELS[name] = (ModelClass, ConfigClass)``."""

from __future__ import annotations

from .config import BetaVAEConfig, CleanerConfig, SemiSupervisedAEConfig


def _models():
    from .beta_vae import BetaVAE
    from .cleaner import Cleaner
    from .semi_supervised_ae import SemiSupervisedAE

    return {
        "beta_vae": (BetaVAE, BetaVAEConfig),
        "ssae": (SemiSupervisedAE, SemiSupervisedAEConfig),
        "cleaner": (Cleaner, CleanerConfig),
    }


def build_model(name: str, **config_kwargs):
    """Build a model from its name and config fields, e.g. ``build_model("beta_vae", num_samples=75, num_channels=8)``."""
    models = _models()
    if name not in models:
        raise ValueError(f"unknown model {name!r}; available: {sorted(models)}")
    model_class, config_class = models[name]
    return model_class(config_class(**config_kwargs))


def __getattr__(name):
    # BetaVAE needs torch: import it only when asked for
    if name == "BetaVAE":
        from .beta_vae import BetaVAE

        return BetaVAE
    if name == "SemiSupervisedAE":
        from .semi_supervised_ae import SemiSupervisedAE

        return SemiSupervisedAE
    if name == "Cleaner":
        from .cleaner import Cleaner

        return Cleaner
    if name == "MODELS":
        return _models()
    raise AttributeError(name)


__all__ = [
    "BetaVAE", "BetaVAEConfig", "SemiSupervisedAE", "SemiSupervisedAEConfig", "Cleaner", "CleanerConfig",
    "build_model", "MODELS",
]
