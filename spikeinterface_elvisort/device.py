"""The only place that picks the torch device and seeds the random generators."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np


def resolve_device(device: str = "auto"):
    """Turn a ``device`` parameter into a ``torch.device``.

    Parameters
    ----------
    device : "auto" | "cpu" | "cuda" | "cuda:N", default: "auto"
        "auto" picks CUDA when torch sees a GPU, the CPU otherwise.

    Raises
    ------
    ValueError
        When CUDA (or GPU number N) is asked for and not available.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} was requested but CUDA is not available to torch "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). Use device='cpu' or 'auto', "
                "or install a CUDA build of torch."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(device)!r} was requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return device


def seed_everything(seed: int | None) -> np.random.Generator:
    """Seed python, numpy and torch; return a numpy ``Generator`` for the caller's own draws."""
    import torch

    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@contextmanager
def torch_threads(num_threads: int | None):
    """Let torch use ``num_threads`` CPU threads inside the block (None: leave torch's setting); the caller's
    process gets its own setting back afterwards."""
    import torch

    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


MIN_OOM_BATCH_SIZE = 8  # below this, halving the batch no longer helps: move to the CPU


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error and the RuntimeErrors that report running out of memory."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def retry_on_out_of_memory(run, batch_size: int, device, what: str):
    """Call ``run(batch_size, device)``; when it runs out of memory, halve the batch and call it again, down to
    ``MIN_OOM_BATCH_SIZE``; on a GPU, then fall back to the CPU at the original batch size. Each retry warns.

    ``run`` must start its work afresh at each call (a training loop restores the weights it started from).

    Parameters
    ----------
    run : callable
        ``run(batch_size, device)``, returning the result.
    batch_size : int
        The batch size to start with.
    device : torch.device
    what : str
        What runs, for the warnings ("vae training").

    Raises
    ------
    RuntimeError
        When even the smallest batch on the CPU runs out of memory (the original error is chained).
    """
    import warnings

    import torch

    device = torch.device(device)
    current = int(batch_size)
    while True:
        try:
            return run(current, device)
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(error):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if current // 2 >= MIN_OOM_BATCH_SIZE:
                current //= 2
                warnings.warn(f"{what}: out of memory on {device}; retrying with batches of {current}",
                              RuntimeWarning, stacklevel=2)
            elif device.type != "cpu":
                device, current = torch.device("cpu"), int(batch_size)
                warnings.warn(f"{what}: out of memory on the GPU even with small batches; continuing on the CPU "
                              "(slower). Free GPU memory or lower train_batch_size to stay on the GPU.",
                              RuntimeWarning, stacklevel=2)
            else:
                raise RuntimeError(f"{what}: out of memory on the CPU even with batches of {current}: free memory "
                                   "or lower train_max_snippets") from error
