"""spikeinterface-elvisort: deep-learning spike sorters for SpikeInterface.

``import spikeinterface_elvisort`` is optional: once installed, ``run_sorter("elvisort", recording)`` works in any
interpreter. Importing this package is cheap; torch and SpikeInterface load when first needed.
"""

__version__ = "0.1.0"

from ._registration import arm as _arm

_arm()

_LAZY = {
    "ElvisortSorter": ".sorters",
    "run_elvisort": ".pipeline",
    "register_sorters": "._registration",
    "DEFAULT_PARAMS": ".params",
    "PARAMS": ".params",
    "check_params": ".params",
    "resolve_device": ".device",
    "load_checkpoint": ".results",
    "BetaVAE": ".models",
    "BetaVAEConfig": ".models",
    "SpikeCompressor": ".compression",
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
