"""Register our sorters with SpikeInterface the moment ``spikeinterface.sorters`` is imported.

SpikeInterface has no plugin entry point: ``run_sorter`` looks names up in ``sorterlist.sorter_dict``, a static
dict. The ``spikeinterface_elvisort.pth`` file installed with the package calls :func:`arm` at interpreter start;
``arm`` only puts a finder on ``sys.meta_path`` (nothing heavy is imported), and the finder registers the sorters
right after ``spikeinterface.sorters`` has executed, in the user's process and in every worker process alike.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

TARGET = "spikeinterface.sorters"


def register_sorters() -> None:
    """Add our sorters to SpikeInterface's sorter list (idempotent)."""
    from spikeinterface.sorters import sorterlist

    ours = sys.modules.get(__package__ + ".sorters")
    if ours is not None and not hasattr(ours, "SsaeSorter"):
        # our sorters module is importing spikeinterface.sorters right now; it registers itself when it is done
        return
    from .sorters import ElvisortSorter, SsaeSorter

    for sorter_class in (ElvisortSorter, SsaeSorter):
        if sorter_class.sorter_name not in sorterlist.sorter_dict:
            sorterlist.sorter_full_list.append(sorter_class)
            sorterlist.sorter_dict[sorter_class.sorter_name] = sorter_class


def _register_quietly() -> None:
    try:
        register_sorters()
    except Exception as error:  # never break the user's `import spikeinterface`
        warnings.warn(f"spikeinterface-elvisort could not register its sorters: {error!r}")


class _Loader(importlib.abc.Loader):
    """Wraps the real loader of ``spikeinterface.sorters`` and registers once the module has executed."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _disarm()
        _register_quietly()

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def _disarm() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _Finder)]


def arm() -> None:
    """Register now if ``spikeinterface.sorters`` is already imported, otherwise when it is."""
    if TARGET in sys.modules:
        _register_quietly()
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
