"""Batched, gradient-free passes of a trained model over snippets; numpy in, numpy out."""

from __future__ import annotations

import numpy as np


def _batched(model, method: str, snippets: np.ndarray, device, batch_size: int, positions=None) -> np.ndarray:
    """``model.<method>`` over ``snippets`` in batches; out of memory, smaller batches, then the CPU (with a
    warning)."""
    from .device import retry_on_out_of_memory

    def run(batch_size_, device_):
        return _batched_once(model, method, snippets, device_, batch_size_, positions)

    return retry_on_out_of_memory(run, batch_size, device, f"model.{method}")


def _batched_once(model, method: str, snippets: np.ndarray, device, batch_size: int, positions=None) -> np.ndarray:
    """One pass; on the CPU the batches run in :func:`~spikeinterface_elvisort.device.inference_workers` threads
    (each batch on one thread, so the output does not depend on how many there are)."""
    import torch

    from .device import inference_workers

    model.to(device)
    model.eval()

    def run(start):
        batch = [torch.as_tensor(np.ascontiguousarray(snippets[start : start + batch_size]), device=device)]
        if positions is not None:
            batch.append(torch.as_tensor(positions[start : start + batch_size], dtype=torch.float32, device=device))
        with torch.no_grad():  # (per thread: grad mode is thread-local)
            return getattr(model, method)(*batch).float().cpu().numpy()

    starts = range(0, len(snippets), batch_size)
    workers = inference_workers() if torch.device(device).type == "cpu" and len(starts) > 1 else 1
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            outputs = list(pool.map(run, starts))
    else:
        outputs = [run(start) for start in starts]
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outputs)


def encode(model, snippets: np.ndarray, device, batch_size: int = 1024) -> np.ndarray:
    """Latent means, (num, num_samples, num_channels) -> (num, latent_dim + upper_latent_dim)."""
    return _batched(model, "encode", snippets, device, batch_size)


def predict_proba(model, snippets: np.ndarray, positions: np.ndarray, device, batch_size: int = 1024) -> np.ndarray:
    """Classifier probabilities, (num, num_samples, num_channels), positions (num, 2) in um -> (num, num_classes);
    the last class is the non-spike class."""
    import torch

    logits = _batched(model, "classify", snippets, device, batch_size, positions=positions)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def spike_probability(cleaner, snippets: np.ndarray, device, batch_size: int = 1024) -> np.ndarray:
    """The cleaner's probability that each window holds a spike, (num, num_samples, num_channels) -> (num,)."""
    probability = _batched(cleaner, "spike_probability", snippets, device, batch_size)
    return probability.reshape(len(snippets))
