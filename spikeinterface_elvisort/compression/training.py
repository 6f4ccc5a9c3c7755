"""Training of the compressive autoencoder: the joint epochs (warm-up, k-means codebook start, dead-codeword
restarts), the decoder-only epochs on the final codes and the closed-form step that sets the decoder's per-codeword
waveforms (``fit_codeword_outputs``).

The package's ``training.train_model`` is not reused: the quantiser needs steps between epochs (its k-means start,
restarts and refreshes) and a second, decoder-only stage.
"""

from __future__ import annotations

import logging

from ..progress import bar

logger = logging.getLogger(__name__)


def train_autoencoder(
    model,
    data,
    *,
    epochs: int,
    warmup_epochs: int,
    kmeans_refresh_every: int,
    batch_size: int,
    learning_rate: float,
    commitment_weight: float,
    seed: int,
    generator,
    verbose: bool = False,
) -> list[dict]:
    """Train ``model`` (a :class:`CompressiveAutoencoder`) in place on ``data`` (num, num_samples, channels), a
    tensor on the training device; return one dict per epoch (mean of each loss term, restarted codewords).

    The first ``warmup_epochs`` skip the quantiser; the codebook then starts as k-means centroids of the encoder
    outputs (residual k-means with several stages), and the decoder's per-codeword waveforms, when the model has
    them, start as the mean spike of each codeword (:func:`fit_codeword_outputs`). Until 80 % of the epochs,
    codewords unused during an epoch restart on random encoder outputs, or, every ``kmeans_refresh_every`` epochs
    when that is > 0, the whole codebook is reset to k-means centroids. Adam with cosine decay to 5 % of
    ``learning_rate``; the loss is reconstruction + codebook (none with an EMA codebook) + commitment_weight *
    commitment.
    """
    import torch
    code_dim = model.config.code_dim
    device = data.device
    model.train()
    with torch.no_grad():
        sample = data[torch.randperm(len(data), generator=generator)[: max(4 * model.config.codebook_size, 1024)]]
        model.quantiser.initialise(model.latents(sample.to(device)).reshape(-1, code_dim), generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.05 * learning_rate)
    weights = {"reconstruction": 1.0, "codebook": 1.0, "commitment": commitment_weight}
    restart_until = int(0.8 * epochs)  # let the codebook settle before the end
    sample_size = min(len(data), 8192)
    history = []
    progress = bar(range(epochs), name="fitting the compressor", verbose=verbose, unit="epoch")
    for epoch in progress:
        quantise = epoch >= warmup_epochs
        if epoch == warmup_epochs and epoch > 0:
            model.eval()  # running batch-norm statistics: the latents the trained encoder will produce
            with torch.no_grad():
                sample = data[torch.randperm(len(data), generator=generator)[:sample_size].to(device)]
                model.quantiser.initialise_kmeans(model.latents(sample), seed=seed)
            if model.config.codeword_outputs:
                fit_codeword_outputs(model, data)
        model.train()
        order = torch.randperm(len(data), generator=generator).to(device)
        sums, count = {}, 0
        for start in range(0, len(data), batch_size):
            batch = order[start : start + batch_size]
            if batch.numel() < 2:
                continue  # batch norm needs two samples
            _, losses = model(data[batch], quantise=quantise)
            total = sum(weights[name] * value for name, value in losses.items())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            count += 1
        scheduler.step()
        restarted = 0
        refresh = kmeans_refresh_every
        if quantise and refresh and epoch < restart_until and (epoch - warmup_epochs + 1) % refresh == 0:
            model.eval()
            with torch.no_grad():
                sample = data[torch.randperm(len(data), generator=generator)[:sample_size].to(device)]
                model.quantiser.initialise_kmeans(model.latents(sample), seed=seed + epoch)
            if model.config.codeword_outputs:
                fit_codeword_outputs(model, data)
            model.train()
        elif quantise and epoch < restart_until:
            with torch.no_grad():
                sample = data[torch.randperm(len(data), generator=generator)[:4096].to(device)]
                restarted = model.quantiser.restart_dead(model.latents(sample).reshape(-1, code_dim), generator)
        row = {"epoch": epoch, **{name: value / max(count, 1) for name, value in sums.items()}, "restarted": restarted}
        history.append(row)
        progress.set_postfix(reconstruction=f"{row.get('reconstruction', float('nan')):.3g}", restarted=restarted)
        logger.debug("AutoencoderCompressor epoch %d: %s", epoch, row)
    model.eval()
    return history


def finetune_decoder(
    model,
    data,
    *,
    epochs: int,
    first_epoch: int,
    batch_size: int,
    learning_rate: float,
    generator,
    verbose: bool = False,
) -> list[dict]:
    """Decoder-only epochs on the final codes (encoder and codebook frozen, codes computed once): the decoder moves
    towards the mean spike of each code combination, the step k-means takes for its centroids. Returns one dict per
    epoch (``stage="decoder"``, epochs numbered from ``first_epoch``)."""
    import torch
    if epochs == 0:
        return []
    model.eval()
    with torch.no_grad():
        codes = _codes(model, data)
        inputs = model.quantised(codes)  # (num, n_features, code_dim): what the decoder will receive
    parameters = list(model.decoder.parameters())
    if model.config.codeword_outputs:
        parameters.append(model.codeword_outputs)
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.05 * learning_rate)
    history = []
    model.decoder.train()
    progress = bar(range(epochs), name="fitting the compressor's decoder", verbose=verbose, unit="epoch")
    for epoch in progress:
        order = torch.randperm(len(data), generator=generator).to(data.device)
        total, count = 0.0, 0
        for start in range(0, len(data), batch_size):
            batch = order[start : start + batch_size]
            if batch.numel() < 2:
                continue
            loss = model.reconstruction_error(model.synthesis(inputs[batch], codes[batch]), data[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            count += 1
        scheduler.step()
        history.append({"epoch": first_epoch + epoch, "stage": "decoder", "reconstruction": total / max(count, 1)})
        progress.set_postfix(reconstruction=f"{history[-1]['reconstruction']:.3g}")
    model.eval()
    return history


def _codes(model, data, chunk: int = 4096):
    import torch

    return torch.cat([model.encode(data[start : start + chunk]) for start in range(0, len(data), chunk)])


def fit_codeword_outputs(model, data, passes: int = 3, chunk: int = 4096) -> None:
    """Set the decoder's per-codeword waveforms (``model.codeword_outputs``) in closed form, in place.

    With the encoder, codebook and decoder fixed, each index position's waveform for codeword ``k`` becomes the
    (weighted) mean, over the inputs of ``data`` (num, num_samples, channels) coded ``k`` there, of what the decoder
    and the other positions leave: the centroid step of k-means. With one index per input this is exact in one
    pass: the decoder then restores every codeword as the mean of its inputs, k-means' centroids being the special
    case of an encoder that partitions the inputs as k-means does. With several positions, ``passes`` rounds of
    this coordinate descent, each lowering the training error. The weights follow the reconstruction loss: 1
    ("mse") or one over the input's energy ("relative").
    """
    import torch

    config = model.config
    model.eval()
    with torch.no_grad():
        codes = _codes(model, data, chunk)  # (num, positions)
        base = torch.cat(
            [model.decoder(model.quantised(codes[start : start + chunk])) for start in range(0, len(data), chunk)]
        )  # (num, channels, padded_samples)
        target = base.clone()
        target[:, :, : config.num_samples] = data.transpose(1, 2)  # the padding is not restored: no residual there
        base, target = base.reshape(len(data), -1), target.reshape(len(data), -1)
        if config.reconstruction_loss == "relative":
            weights = 1.0 / data.pow(2).sum(dim=(1, 2)).clamp_min(1e-6)
        else:
            weights = torch.ones(len(data), dtype=data.dtype, device=data.device)
        table = model.codeword_outputs
        current = base + model.codeword_output(codes)
        for _ in range(passes if codes.shape[1] > 1 else 1):
            for position in range(codes.shape[1]):
                index = codes[:, position]
                current -= table[position, index]
                sums = torch.zeros_like(table[position]).index_add_(0, index, (target - current) * weights[:, None])
                totals = torch.zeros(config.codebook_size, dtype=data.dtype, device=data.device)
                totals.index_add_(0, index, weights)
                used = totals > 0
                table[position, used] = sums[used] / totals[used, None]
                current += table[position, index]
