"""SpikeInterface adapters: thin, stateless sorter classes; the algorithms live in pipeline.py (elvisort) and
ssae/pipeline.py, on the shared stages of front_end.py and cleanup.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from importlib.util import find_spec
from pathlib import Path

from spikeinterface.sorters.internal.si_based import ComponentsBasedSorter

from .checks import check_recording
from .params import DEFAULT_PARAMS, PARAMS_DESCRIPTION
from .checks import check_params
from .ssae.params import SSAE_DEFAULT_PARAMS, SSAE_PARAMS_DESCRIPTION, check_ssae_params


class ElvisortSorter(ComponentsBasedSorter):
    """ELVISort: a beta-VAE (BiLSTM + inception encoder, hierarchical 32 + 8 latent, LSTM + attention decoder,
    classifier and DEC branches) trained on the recording itself, latent clustering, self-trained classifier."""

    sorter_name = "elvisort"
    gpu_capability = "nvidia-optional"
    requires_locations = True
    handle_multi_segment = True
    compatible_with_parallel = {"loky": True, "multiprocessing": True, "threading": False}
    _default_params = DEFAULT_PARAMS
    _params_description = PARAMS_DESCRIPTION
    installation_mesg = "pip install spikeinterface-elvisort  (torch: pip install torch)"

    @classmethod
    def is_installed(cls) -> bool:
        return find_spec("torch") is not None and find_spec("sklearn") is not None

    @classmethod
    def get_sorter_version(cls) -> str:
        from . import __version__

        return __version__

    @classmethod
    def use_gpu(cls, params) -> bool:
        return params.get("device", "auto") != "cpu"

    @classmethod
    def initialize_folder(cls, recording, output_folder, verbose, remove_existing_folder):
        from spikeinterface.core import BaseRecording

        from .checks import _check_locations

        # SpikeInterface's own messages ("Channel locations are required ...", "Folder ... already exists") do not
        # say what to do
        if isinstance(recording, BaseRecording):
            _check_locations(recording)
        folder = Path(output_folder if output_folder is not None else f"{cls.sorter_name}_output").absolute()
        if folder.is_dir() and not remove_existing_folder:
            raise ValueError(
                f"the output folder {str(folder)!r} already exists: pass remove_existing_folder=True to replace it, or "
                "choose another folder (read an earlier result with spikeinterface.sorters.read_sorter_folder)"
            )
        return super().initialize_folder(recording, output_folder, verbose, remove_existing_folder)

    @classmethod
    def set_params_to_folder(cls, recording, output_folder, new_params, verbose):
        # SpikeInterface makes the output folder before it checks the parameters: a run refused for its parameters
        # (or for device="cuda" without CUDA) removes the folder it had just made, which holds nothing yet
        try:
            # a misspelt parameter gets the names it was probably meant to be, before SpikeInterface's check, whose
            # message lists all of them
            unknown = [name for name in new_params if name not in cls._default_params]
            if unknown:
                raise ValueError(
                    f"{cls.sorter_name}: unknown parameter(s): "
                    + "; ".join(_suggestion(name, cls._default_params) for name in unknown)
                    + f". The parameters and what they do: spikeinterface.sorters.get_sorter_params_description("
                    f"{cls.sorter_name!r})"
                )
            return super().set_params_to_folder(recording, output_folder, new_params, verbose)
        except Exception:
            _remove_if_unused(Path(output_folder))
            raise

    @classmethod
    def _check_params(cls, recording, output_folder, params):
        params = check_params(params)
        check_recording(recording, params)
        return params

    @classmethod
    def _run_from_folder(cls, sorter_output_folder, params, verbose):
        from .pipeline import run_elvisort

        cls._run_and_save(run_elvisort, sorter_output_folder, params, verbose)

    @classmethod
    def _run_and_save(cls, run, sorter_output_folder, params, verbose):
        """Run the pipeline, then save the sorting into a temporary sibling renamed to ``sorting`` at the very end:
        an interrupted run never leaves a ``sorting`` folder that reads as a result."""
        sorter_output_folder = Path(sorter_output_folder)
        recording = cls.load_recording_from_folder(sorter_output_folder.parent, with_warnings=False)
        with _log_to(sorter_output_folder / f"{cls.sorter_name}.log", verbose):
            sorting = run(recording, params, folder=sorter_output_folder, verbose=verbose)
        incomplete = sorter_output_folder / "sorting.incomplete"
        if incomplete.exists():
            shutil.rmtree(incomplete)
        with warnings.catch_warnings():
            # the sorting is built in memory (a NumpySorting): it has no provenance to save, SpikeInterface warns
            warnings.filterwarnings("ignore", message="The extractor is not serializable")
            sorting.save(folder=incomplete)
        os.replace(incomplete, sorter_output_folder / "sorting")

    @classmethod
    def get_result_from_folder(cls, output_folder, register_recording=True, sorting_info=True):
        """SpikeInterface's reader, with a message that says what to do when the run did not finish."""
        from spikeinterface.sorters.utils import SpikeSortingError

        output_folder = Path(output_folder)
        log_file = output_folder / "spikeinterface_log.json"
        rerun = (f"rerun with run_sorter({cls.sorter_name!r}, recording, folder={str(output_folder)!r}, "
                 "remove_existing_folder=True)")
        try:
            log = json.loads(log_file.read_text(encoding="utf8"))
        except (OSError, ValueError):
            raise SpikeSortingError(
                f"{str(output_folder)!r} holds no finished {cls.sorter_name} run (no readable spikeinterface_log.json: "
                f"the run was interrupted or is still running): {rerun}"
            ) from None
        if not log.get("error") and not (output_folder / "sorter_output" / "sorting").is_dir():
            raise SpikeSortingError(
                f"{str(output_folder)!r} has no sorter_output/sorting (deleted, e.g. by delete_output_folder=True?): "
                f"{rerun}"
            )
        return super().get_result_from_folder(output_folder, register_recording, sorting_info)


class SsaeSorter(ElvisortSorter):
    """ssae: an ensemble of three convolutional autoencoders trained on the recording's events alternating with a
    hybrid labelled set made for this probe, a noise-rejecting cleaner CNN, Gaussian mixtures with BIC-chosen
    counts. Front end and clean-up are elvisort's."""

    sorter_name = "ssae"
    _default_params = SSAE_DEFAULT_PARAMS
    _params_description = SSAE_PARAMS_DESCRIPTION

    @classmethod
    def _check_params(cls, recording, output_folder, params):
        params = check_ssae_params(params)
        check_recording(recording, params)
        return params

    @classmethod
    def _run_from_folder(cls, sorter_output_folder, params, verbose):
        from .ssae.pipeline import run_ssae

        cls._run_and_save(run_ssae, sorter_output_folder, params, verbose)


def _suggestion(name: str, known) -> str:
    """``name`` and the known names closest to it (difflib), as "'x' (did you mean 'y'?)"."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    if not close:
        return repr(name)
    return f"{name!r} (did you mean {' or '.join(repr(c) for c in close)}?)"


class _log_to:
    """Route the package's log records to ``file_path`` (always) and to the console (when verbose)."""

    def __init__(self, file_path: Path, verbose: bool):
        self.logger = logging.getLogger("spikeinterface_elvisort")
        self.handlers = [logging.FileHandler(file_path, mode="w", encoding="utf8")]
        if verbose:
            self.handlers.append(logging.StreamHandler())
        formatter = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
        for handler in self.handlers:
            handler.setFormatter(formatter)

    def __enter__(self):
        self.previous_level, self.previous_propagate = self.logger.level, self.logger.propagate
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # a user's logging.basicConfig() must not print our lines when not verbose
        for handler in self.handlers:
            self.logger.addHandler(handler)

    def __exit__(self, *exc):
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self.logger.setLevel(self.previous_level)
        self.logger.propagate = self.previous_propagate


def _register_when_imported():
    # importing this module first (before spikeinterface.sorters) must register too: see _registration.py
    from ._registration import register_sorters

    register_sorters()


_register_when_imported()


def _remove_if_unused(folder: Path) -> None:
    """Remove ``folder`` when it holds only what SpikeInterface's ``initialize_folder`` writes (the recording's
    description and an empty sorter_output/): nothing of a run, nothing of the user's."""
    made = {"spikeinterface_recording.json", "spikeinterface_recording.pickle", "recording_attributes.json",
            "sorter_output"}
    if folder.is_dir() and {path.name for path in folder.iterdir()} <= made and not (
        (folder / "sorter_output").is_dir() and any((folder / "sorter_output").iterdir())
    ):
        shutil.rmtree(folder)
