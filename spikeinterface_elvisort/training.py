"""One training loop for every model: weighted sum of the model's named loss terms, history per epoch."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .progress import bar

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How to train: epochs, batches, optimiser and the weight of each loss term the model reports."""

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 2e-3
    weights: dict = field(default_factory=dict)  # loss term -> weight; terms not listed weigh 1
    kl_warmup_epochs: int = 0  # the "kl" weight ramps linearly over these epochs
    # "all" | "encoder_classifier" (self-training: decoder idle) | "classifier" (fine-tuning: everything else frozen)
    trainable: str = "all"
    mixed_precision: bool = False  # autocast on CUDA only
    seed: int = 0
    stage: str = "train"  # a name for the history rows
    # batches of unlabelled events (label -1) alternate with batches of labelled ones, the smaller set cycled (seed
    # 001's v1: "we train by alternating batches from both datasets"); needs ``labels``
    alternate_labelled: bool = False
    before_epoch: Callable[[int], None] | None = None  # called with the epoch index (Atom loss refits centroids)
    # classifier head only: each class weighs count ** -class_balance in the cross-entropy. 0: every target alike;
    # 1: scikit-learn's "balanced" (every class the same total weight), so that a class holding most targets (the
    # non-spike class of a sorting that kept few events) cannot win by labelling everything; 0.5: square root
    class_balance: float = 0.0


def train_model(
    model, snippets, config: TrainConfig, device, *, labels=None, positions=None, verbose: bool = False
) -> list[dict]:
    """Train ``model`` in place on ``snippets`` (num, num_samples, num_channels); ``labels`` (num,) with -1 for
    unlabelled events feeds the classifier branch, ``positions`` (num, 2) its side features and DEC's. Returns one
    dict per epoch: stage, epoch, each unweighted loss term (mean over batches), weighted total and the KL weight
    used.

    When the device runs out of memory, training starts again from the initial weights with half the batch size,
    then on the CPU, with a warning each time (see :func:`~spikeinterface_elvisort.device.retry_on_out_of_memory`).
    """
    from dataclasses import replace

    from .device import retry_on_out_of_memory

    initial = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
    attempts = []

    def attempt(batch_size, device_):
        if attempts:  # a retry starts from the weights the first attempt started from
            model.load_state_dict(initial)
        attempts.append(batch_size)
        return _train(model, snippets, replace(config, batch_size=batch_size), device_, labels=labels,
                      positions=positions, verbose=verbose)

    return retry_on_out_of_memory(attempt, config.batch_size, device, f"{config.stage} training")


def _train(model, snippets, config: TrainConfig, device, *, labels, positions, verbose: bool) -> list[dict]:
    import torch
    model.to(device)
    if config.trainable == "classifier":
        return _train_classifier_head(model, snippets, labels, positions, config=config, device=device, verbose=verbose)
    data = torch.as_tensor(np.ascontiguousarray(snippets), dtype=torch.float32, device=device)
    target = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=device)
    where = None if positions is None else torch.as_tensor(positions, dtype=torch.float32, device=device)
    reconstruct = config.trainable == "all"
    parameters = [p for name, p in model.named_parameters() if reconstruct or not name.startswith("decoder")]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if config.mixed_precision and device.type == "cuda"
        else nullcontext()
    )
    num = data.shape[0]
    history = []
    epochs = bar(range(config.epochs), name=config.stage, verbose=verbose, unit="epoch")
    first_loss = None
    for epoch in epochs:
        model.train()
        weights = dict(config.weights)
        if config.kl_warmup_epochs:
            weights["kl"] = weights.get("kl", 1.0) * min(1.0, (epoch + 1) / config.kl_warmup_epochs)
        if config.before_epoch is not None:
            config.before_epoch(epoch)
            model.to(device)  # the callback may have run the model elsewhere (after a fall back to the CPU)
        if config.alternate_labelled:
            batches = _alternating_batches(labels, config.batch_size, generator)
        else:
            order = torch.randperm(num, generator=generator)
            batches = [order[start : start + config.batch_size] for start in range(0, num, config.batch_size)]
        sums, counts, count = {}, {}, 0
        for batch in batches:
            batch = batch.to(device)
            if batch.numel() < 2:
                continue  # batch norm needs two samples
            with autocast:
                _, losses = model(
                    data[batch],
                    None if target is None else target[batch],
                    None if where is None else where[batch],
                    reconstruct=reconstruct,
                )
            total = sum(weights.get(name, 1.0) * value.float() for name, value in losses.items())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
                counts[name] = counts.get(name, 0) + 1  # a term may be missing from some batches (unlabelled ones)
            sums["total"] = sums.get("total", 0.0) + float(total.detach())
            count += 1
        counts["total"] = count
        row = {"stage": config.stage, "epoch": epoch}
        row.update({name: value / max(counts[name], 1) for name, value in sums.items()})
        row["kl_weight"] = weights.get("kl", 1.0)
        history.append(row)
        first_loss = first_loss or row.get("total")
        if first_loss:  # the loss is a sum over each event's terms: its size says little, its fall says how it goes
            epochs.set_postfix_str(f"loss {row.get('total', float('nan')) / first_loss:.2f} x the first epoch's")
        logger.debug("%s epoch %d: %s", config.stage, epoch, row)
    model.eval()
    return history


def _alternating_batches(labels, batch_size: int, generator) -> list:
    """Index batches: unlabelled, labelled, unlabelled, ... each set shuffled; the smaller set is cycled (reshuffled)
    until the larger one is used up, so an epoch sees every event of both sets at least once."""
    import torch

    labels = np.asarray(labels)
    sets = [np.flatnonzero(labels < 0), np.flatnonzero(labels >= 0)]
    if not all(s.size for s in sets):
        raise ValueError("alternate_labelled needs both labelled (>= 0) and unlabelled (-1) events")
    num_steps = max(-(-s.size // batch_size) for s in sets)
    streams = []
    for indices in sets:
        stream = []
        while len(stream) < num_steps:
            order = torch.as_tensor(indices)[torch.randperm(indices.size, generator=generator)]
            stream += [order[start : start + batch_size] for start in range(0, indices.size, batch_size)]
        streams.append(stream[:num_steps])
    return [batch for pair in zip(*streams) for batch in pair]


MIN_HEAD_BATCH = 16  # the classifier head's smallest batch (see _train_classifier_head)


def _train_classifier_head(model, snippets, labels, positions, *, config: TrainConfig, device,
                           verbose: bool) -> list[dict]:
    """Classifier branch only, everything else frozen: the encoder runs once (eval mode, no gradients) and the
    head trains on the cached embeddings, so many epochs cost about as much as one encoder pass."""
    import torch
    from torch.nn import functional as F
    from .inference import encode

    known = np.flatnonzero(np.asarray(labels) >= 0)
    latents = torch.as_tensor(encode(model, snippets[known], device), device=device)
    features = model.embed(latents, torch.as_tensor(positions[known], dtype=torch.float32, device=device))
    known_labels = np.asarray(labels)[known]
    target = torch.as_tensor(known_labels, dtype=torch.long, device=device)
    class_weights = None
    if config.class_balance:  # count ** -power, scaled to a mean weight of 1 per target; absent classes weigh 0
        counts = np.bincount(known_labels, minlength=model.config.num_classes).astype(np.float64)
        present = counts > 0
        weights = np.zeros(counts.size)
        weights[present] = counts[present] ** -config.class_balance
        weights *= known.size / (weights[present] * counts[present]).sum()
        class_weights = torch.as_tensor(weights, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    # at least four steps per epoch: with fewer targets than one batch the head took one step per epoch and, on a
    # small recording (251 confident events, batch 256), labelled every event with one class
    batch_size = min(config.batch_size, max(MIN_HEAD_BATCH, -(-known.size // 4)))
    history = []
    for epoch in bar(range(config.epochs), name=config.stage, verbose=verbose, unit="epoch"):
        model.classifier.train()
        order = torch.randperm(known.size, generator=generator).to(device)
        total, count = 0.0, 0
        for start in range(0, known.size, batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model.classifier(features[batch]), target[batch], weight=class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            count += 1
        history.append({"stage": config.stage, "epoch": epoch, "classification": total / max(count, 1),
                        "total": total / max(count, 1)})
    model.eval()
    return history
