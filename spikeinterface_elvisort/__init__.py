"""spikeinterface-elvisort: deep-learning spike sorters for SpikeInterface.

``import spikeinterface_elvisort`` is optional: once installed, ``run_sorter("elvisort", recording)`` works in any
interpreter. Importing this package is cheap; torch and SpikeInterface load when first needed.
"""

__version__ = "0.1.0"

from ._registration import arm as _arm

_arm()

_LAZY = {
    "ElvisortSorter": ".sorters",
    "SsaeSorter": ".sorters",
    "run_elvisort": ".pipeline",
    "run_ssae": ".ssae.pipeline",
    "register_sorters": "._registration",
    "DEFAULT_PARAMS": ".params",
    "PARAMS": ".params",
    "check_params": ".checks",
    "resolve_device": ".device",
    "load_checkpoint": ".results",
    "load_model": ".instant",
    "ElvisortModel": ".instant",
    "OnlineSorter": ".streaming",
    "BetaVAE": ".models",
    "BetaVAEConfig": ".models",
    "SemiSupervisedAE": ".models",
    "SemiSupervisedAEConfig": ".models",
    "Cleaner": ".models",
    "CleanerConfig": ".models",
    "SSAE_DEFAULT_PARAMS": ".ssae.params",
    "SSAE_PARAMS": ".ssae.params",
    "check_ssae_params": ".ssae.params",
    "BicEnsembleClustering": ".ssae.clustering",
    "make_hybrid_set": ".ssae.hybrid",
    "SpikeCompressor": ".compression",
    "AutoencoderCompressor": ".compression",
    "compress_sorting_analyzer": ".compression",
    "load_compressed": ".compression",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'spikeinterface_elvisort' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["__version__", *_LAZY]
