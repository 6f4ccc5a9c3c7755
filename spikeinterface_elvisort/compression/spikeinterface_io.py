"""From SpikeInterface objects to spike waveforms and back: cut every spike of a sorting (or every peak) on its
channel neighbourhood, compress them all into one file and restore them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _peak_vector(sample_index, channel_index, segment_index) -> np.ndarray:
    peaks = np.zeros(
        len(sample_index), dtype=[("sample_index", "i8"), ("channel_index", "i8"), ("segment_index", "i8")]
    )
    peaks["sample_index"] = sample_index
    peaks["channel_index"] = channel_index
    peaks["segment_index"] = segment_index
    return peaks


def unit_extremum_channels(
    recording, sorting, ms_before: float = 0.5, ms_after: float = 1.0, max_spikes_per_unit: int = 200, seed: int = 0
) -> np.ndarray:
    """Channel index of each unit's largest template peak (|amplitude|), templates averaged over at most
    ``max_spikes_per_unit`` random spikes per unit; (num_units,) int64 in ``sorting.unit_ids`` order."""
    from spikeinterface.core import estimate_templates
    from spikeinterface.core.sorting_tools import random_spikes_selection

    from ..snippets import window_samples

    nbefore, nafter = window_samples(ms_before, ms_after, recording.sampling_frequency)
    spikes = sorting.to_spike_vector()
    selected = random_spikes_selection(sorting, method="uniform", max_spikes_per_unit=max_spikes_per_unit, seed=seed)
    templates = estimate_templates(
        recording, spikes[selected], sorting.unit_ids, nbefore, nafter, return_in_uV=False, n_jobs=1, progress_bar=False
    )
    return np.abs(templates).max(axis=1).argmax(axis=1).astype(np.int64)


def extract_spike_waveforms(
    recording,
    sorting=None,
    *,
    peaks=None,
    num_channels: int = 4,
    ms_before: float = 0.5,
    ms_after: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut every spike on the ``num_channels`` channels nearest its channel, in spatial order.

    Give either a ``sorting`` (each spike is cut around its unit's extremum channel) or ``peaks`` (SpikeInterface's
    peak vector: each spike around its own ``channel_index``).

    Parameters
    ----------
    recording : BaseRecording
        With channel locations (a probe).
    sorting : BaseSorting | None
    peaks : structured array with ``sample_index``, ``channel_index``, ``segment_index`` | None
    num_channels : int, default: 4
        Channels per spike: the centre channel and its nearest neighbours, sorted by depth then x (see
        :func:`spikeinterface_elvisort.snippets.channel_neighbours`). A multiple of the compressor's
        ``channels_per_group``.
    ms_before, ms_after : float, default: 0.5, 1.0
        Window around each spike time (1.5 ms = 48 samples at 32 kHz, the seed's spike length).
    seed : int, default: 0
        For the random spikes that estimate the unit templates.

    Returns
    -------
    waveforms : (num_spikes, num_samples, num_channels) float32
        In the recording's units (call with a recording scaled to uV for uV).
    spikes : structured array
        ``sample_index``, ``channel_index`` (centre channel), ``segment_index`` and, from a sorting, ``unit_index``.
    channel_indices : (num_spikes, num_channels) int64
        The channels of each waveform, in order.
    """
    from ..snippets import channel_neighbours, extract_snippets, window_samples

    if (sorting is None) == (peaks is None):
        raise ValueError("give exactly one of sorting= (spikes at ground-truth or sorted times) or peaks=")
    if not isinstance(num_channels, (int, np.integer)) or num_channels < 1:
        raise ValueError(f"num_channels must be a positive integer, got {num_channels!r}")
    if num_channels > recording.get_num_channels():
        raise ValueError(
            f"num_channels={num_channels} but the recording has only {recording.get_num_channels()} channels"
        )
    nbefore, nafter = window_samples(ms_before, ms_after, recording.sampling_frequency)
    if nbefore < 0 or nafter < 1:
        raise ValueError(f"ms_before must be >= 0 and ms_after > 0, got {ms_before}, {ms_after}")
    neighbours = channel_neighbours(recording.get_channel_locations(), num_channels)
    if sorting is not None:
        vector = sorting.to_spike_vector()
        centres = unit_extremum_channels(recording, sorting, ms_before, ms_after, seed=seed)[vector["unit_index"]]
        spikes = np.zeros(
            vector.size,
            dtype=[("sample_index", "i8"), ("channel_index", "i8"), ("segment_index", "i8"), ("unit_index", "i8")],
        )
        spikes["unit_index"] = vector["unit_index"]
        spikes["sample_index"], spikes["segment_index"], spikes["channel_index"] = (
            vector["sample_index"],
            vector["segment_index"],
            centres,
        )
    else:
        for field in ("sample_index", "channel_index", "segment_index"):
            if field not in (peaks.dtype.names or ()):
                raise ValueError(f"peaks must be SpikeInterface's peak vector with a {field!r} field")
        spikes = _peak_vector(peaks["sample_index"], peaks["channel_index"], peaks["segment_index"])
    waveforms = extract_snippets(
        recording,
        _peak_vector(spikes["sample_index"], spikes["channel_index"], spikes["segment_index"]),
        neighbours,
        nbefore,
        nafter,
    )
    return waveforms, spikes, neighbours[spikes["channel_index"]].astype(np.int64)


def save_compressed(
    file_path,
    compressor,
    waveforms,
    *,
    spikes,
    channel_indices,
    sampling_frequency: float,
    ms_before: float,
    ms_after: float,
    include_compressor: bool = True,
) -> dict:
    """Entropy-code ``waveforms`` with a fitted ``compressor`` and write them, with the spike times and channels,
    into one ``.npz`` file that :func:`load_compressed` restores.

    Returns
    -------
    dict
        ``num_spikes``, ``payload_bytes`` (the coded indices), ``file_bytes``, ``raw_bytes`` (the waveforms at 16
        bits per sample) and ``payload_ratio`` = raw_bytes / payload_bytes.
    """
    import io

    import torch

    file_path = Path(file_path)
    if file_path.suffix != ".npz":
        raise ValueError(f"file_path must end in .npz, got {file_path.name!r}")
    payload = compressor.compress(waveforms)
    num_groups = waveforms.shape[2] // getattr(compressor, "channels_per_group", waveforms.shape[2])
    meta = {
        "sampling_frequency": float(sampling_frequency),
        "ms_before": float(ms_before),
        "ms_after": float(ms_after),
        "num_spikes": int(len(waveforms)),
        "num_groups": int(num_groups),
        "codec": type(compressor).__name__,
    }
    arrays = {
        "payload": np.frombuffer(payload, dtype=np.uint8),
        "spikes": np.asarray(spikes),
        "channel_indices": np.asarray(channel_indices, dtype=np.int64),
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    }
    if include_compressor:
        buffer = io.BytesIO()
        torch.save(compressor.state(), buffer)
        arrays["compressor"] = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
    np.savez(file_path, **arrays)
    raw_bytes = int(waveforms.size * 2)
    return {
        "num_spikes": int(len(waveforms)),
        "payload_bytes": len(payload),
        "file_bytes": file_path.stat().st_size,
        "raw_bytes": raw_bytes,
        "payload_ratio": raw_bytes / max(len(payload), 1),
    }


def load_compressed(file_path, compressor=None) -> dict:
    """Restore a file written by :func:`save_compressed`, :func:`compress_sorting_analyzer` or :func:`compress_peaks`.

    Parameters
    ----------
    file_path : str | Path
    compressor : SpikeCompressor (AdaptiveCodebookCompressor) | AutoencoderCompressor | None
        Needed only when the file was written without its compressor.

    Returns
    -------
    dict
        ``waveforms`` (num_spikes, num_samples, num_channels) float32, ``spikes`` (structured array),
        ``channel_indices`` (num_spikes, num_channels), ``compressor`` and the metadata
        (``sampling_frequency``, ``ms_before``, ``ms_after``).
    """
    import io

    import torch

    from .adaptive import AdaptiveCodebookCompressor
    from .autoencoder import AutoencoderCompressor

    file_path = Path(file_path)
    if not file_path.is_file():
        raise ValueError(f"no compressed-spikes file at {file_path}")
    with np.load(file_path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    # files written before the codec was recorded, and those of version 0.1.0 ("SpikeCompressor"), hold the
    # autoencoder
    codec = meta.get("codec", "AutoencoderCompressor")
    codec = "AutoencoderCompressor" if codec == "SpikeCompressor" else codec
    if compressor is None:
        if "compressor" not in arrays:
            raise ValueError(
                f"{file_path.name} was written without its compressor: pass the one that wrote it, "
                f"compressor={codec}.load(...)"
            )
        state = torch.load(io.BytesIO(arrays["compressor"].tobytes()), map_location="cpu", weights_only=False)
        compressor = {"AutoencoderCompressor": AutoencoderCompressor,
                      "AdaptiveCodebookCompressor": AdaptiveCodebookCompressor}[codec].from_state(state)
    if type(compressor).__name__ != codec:
        raise ValueError(
            f"{file_path.name} was written by {codec}, not by {type(compressor).__name__}: pass the {codec} that "
            "wrote it"
        )
    payload = arrays["payload"].tobytes()
    if isinstance(compressor, AutoencoderCompressor):
        waveforms = compressor.decompress(payload, meta["num_spikes"], meta["num_groups"])
    else:
        waveforms = compressor.decompress(payload, meta["num_spikes"])
    return {
        "waveforms": waveforms,
        "spikes": arrays["spikes"],
        "channel_indices": arrays["channel_indices"],
        "compressor": compressor,
        **meta,
    }


def _compress_recording_spikes(
    recording,
    file_path,
    compressor,
    *,
    sorting,
    peaks,
    num_channels,
    ms_before,
    ms_after,
    include_compressor,
    verbose,
    compressor_kwargs,
) -> dict:
    from .adaptive import AdaptiveCodebookCompressor

    waveforms, spikes, channel_indices = extract_spike_waveforms(
        recording, sorting=sorting, peaks=peaks, num_channels=num_channels, ms_before=ms_before, ms_after=ms_after
    )
    if compressor is None:
        if verbose:
            logger.info("fitting an AdaptiveCodebookCompressor on %d spikes", len(waveforms))
        compressor = AdaptiveCodebookCompressor(**(compressor_kwargs or {})).fit(waveforms)
    summary = save_compressed(
        file_path,
        compressor,
        waveforms,
        spikes=spikes,
        channel_indices=channel_indices,
        sampling_frequency=recording.sampling_frequency,
        ms_before=ms_before,
        ms_after=ms_after,
        include_compressor=include_compressor,
    )
    summary["compressor"] = compressor
    return summary


def compress_sorting_analyzer(
    analyzer,
    file_path,
    compressor=None,
    *,
    num_channels: int = 4,
    ms_before: float = 0.5,
    ms_after: float = 1.0,
    include_compressor: bool = True,
    verbose: bool = False,
    compressor_kwargs: dict | None = None,
) -> dict:
    """Compress every spike of a ``SortingAnalyzer`` (all spikes, not a random subset) into one file.

    Each spike is cut from the analyzer's recording on the ``num_channels`` channels nearest its unit's extremum
    channel (see :func:`extract_spike_waveforms`), encoded and entropy-coded; :func:`load_compressed` restores them.

    Parameters
    ----------
    analyzer : SortingAnalyzer
        Must have its recording attached.
    file_path : str | Path
        A ``.npz`` file.
    compressor : SpikeCompressor (AdaptiveCodebookCompressor) | AutoencoderCompressor | None
        A fitted compressor; None fits an :class:`AdaptiveCodebookCompressor` (the best measured codec, see the
        compression page) on these spikes, ``compressor_kwargs`` going to its constructor.
    num_channels, ms_before, ms_after : int, float, float, default: 4, 0.5, 1.0
        How each spike is cut, see :func:`extract_spike_waveforms`.
    include_compressor : bool, default: True
        Store the compressor in the file, so that the file restores on its own.
    verbose : bool, default: False
        Log the fit of a new compressor.
    compressor_kwargs : dict | None
        Constructor arguments of the compressor fitted when ``compressor`` is None.

    Returns
    -------
    dict
        As :func:`save_compressed`, plus the ``compressor`` used.
    """
    if not analyzer.has_recording():
        raise ValueError(
            "the SortingAnalyzer has no recording attached: load it with its recording "
            "(load_sorting_analyzer(..., load_extensions=False) then analyzer.set_temporary_recording(rec))"
        )
    return _compress_recording_spikes(
        analyzer.recording,
        file_path,
        compressor,
        sorting=analyzer.sorting,
        peaks=None,
        num_channels=num_channels,
        ms_before=ms_before,
        ms_after=ms_after,
        include_compressor=include_compressor,
        verbose=verbose,
        compressor_kwargs=compressor_kwargs,
    )


def compress_peaks(
    recording,
    peaks,
    *,
    file_path,
    compressor=None,
    num_channels: int = 4,
    ms_before: float = 0.5,
    ms_after: float = 1.0,
    include_compressor: bool = True,
    verbose: bool = False,
    compressor_kwargs: dict | None = None,
) -> dict:
    """Compress the waveform of every peak (SpikeInterface's peak vector, e.g. from ``detect_peaks``) into one
    file, each cut on the ``num_channels`` channels nearest its ``channel_index``; see
    :func:`compress_sorting_analyzer` for the parameters and the result."""
    return _compress_recording_spikes(
        recording,
        file_path,
        compressor,
        sorting=None,
        peaks=peaks,
        num_channels=num_channels,
        ms_before=ms_before,
        ms_after=ms_after,
        include_compressor=include_compressor,
        verbose=verbose,
        compressor_kwargs=compressor_kwargs,
    )
