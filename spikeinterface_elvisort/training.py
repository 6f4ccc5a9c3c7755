"""One training loop for every model: weighted sum of the model's named loss terms, history per epoch."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

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


def train_model(
    model, snippets, config: TrainConfig, device, labels=None, positions=None, verbose: bool = False
) -> list[dict]:
    """Train ``model`` in place on ``snippets`` (num, num_samples, num_channels); ``labels`` (num,) with -1 for
    unlabelled events feeds the classifier branch, ``positions`` (num, 2) its side features and DEC's. Returns one dict per epoch: stage, epoch, each unweighted loss
    term (mean over batches), weighted total and the KL weight used."""
    import torch
    from tqdm.auto import tqdm

    model.to(device)
    data = torch.as_tensor(np.ascontiguousarray(snippets), dtype=torch.float32, device=device)
    target = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=device)
    where = None if positions is None else torch.as_tensor(positions, dtype=torch.float32, device=device)
    reconstruct = config.trainable == "all"
    if config.trainable == "classifier":
        parameters = list(model.classifier.parameters())
    else:
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
    epochs = tqdm(range(config.epochs), desc=f"elvisort {config.stage}", disable=not verbose, leave=False)
    for epoch in epochs:
        model.train()
        if config.trainable == "classifier":
            model.eval()  # frozen encoder: keep batch-norm statistics and dropout of the encoder fixed
            model.classifier.train()
        weights = dict(config.weights)
        if config.kl_warmup_epochs:
            weights["kl"] = weights.get("kl", 1.0) * min(1.0, (epoch + 1) / config.kl_warmup_epochs)
        order = torch.randperm(num, generator=generator).to(device)
        sums, count = {}, 0
        for start in range(0, num, config.batch_size):
            batch = order[start : start + config.batch_size]
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
            sums["total"] = sums.get("total", 0.0) + float(total.detach())
            count += 1
        row = {"stage": config.stage, "epoch": epoch}
        row.update({name: value / max(count, 1) for name, value in sums.items()})
        row["kl_weight"] = weights.get("kl", 1.0)
        history.append(row)
        epochs.set_postfix(loss=f"{row.get('total', float('nan')):.3g}")
        logger.debug("%s epoch %d: %s", config.stage, epoch, row)
    model.eval()
    return history
