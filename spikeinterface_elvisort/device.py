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
