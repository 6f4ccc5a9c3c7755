"""The checks run before any heavy work, of the parameters and of the input recording: each failure names the problem
and what to do.

``run_sorter`` calls :func:`check_params` and :func:`check_recording` through the sorters' ``_check_params`` (after
SpikeInterface's own probe checks and before the run); ``run_elvisort`` and ``run_ssae`` call :func:`check_recording`
again, for direct use. It reads a few random chunks of the recording and nothing else.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import fields
from os import PathLike
from pathlib import Path

import numpy as np

from .params import PARAMS

MIN_SAMPLING_FREQUENCY = 10_000.0  # Hz: below this a 1 ms spike is fewer than 10 samples
NUM_CHECK_CHUNKS = 20  # random chunks read to look for NaN and Inf samples
CHECK_CHUNK_SAMPLES = 10_000


def check_recording(recording, params: dict) -> None:
    """Raise, before any heavy work, when ``recording`` cannot be sorted with ``params``.

    Checks: a recording object; channel locations (a probe) that are unique; a sampling rate of at least 10 kHz and
    above the band-pass filter; a segment at least one snippet long; no NaN or Inf in random chunks (and a warning
    for flat, dead channels). Integer recordings with gains and offsets need nothing: the sorters filter them in
    microvolts.

    Parameters
    ----------
    recording : BaseRecording
        The recording to sort.
    params : dict
        The sorter's full, checked parameters (elvisort's or ssae's).

    Raises
    ------
    TypeError
        When ``recording`` is not a SpikeInterface recording.
    ValueError
        Naming the problem and the fix.
    """
    from spikeinterface.core import BaseRecording

    if not isinstance(recording, BaseRecording):
        raise TypeError(f"expected a SpikeInterface recording (BaseRecording), got {type(recording).__name__}")
    _check_locations(recording)

    sampling_frequency = recording.sampling_frequency
    if sampling_frequency < MIN_SAMPLING_FREQUENCY:
        raise ValueError(
            f"the recording is sampled at {sampling_frequency:g} Hz, below the {MIN_SAMPLING_FREQUENCY:g} Hz the "
            "sorters need (a spike lasts about 1 ms): record extracellular spikes at 20-30 kHz. Resampling up "
            "(spikeinterface.preprocessing.resample) only helps when the signal kept its band above 3 kHz."
        )
    if params["apply_preprocessing"] and params["freq_min"] >= 0.45 * sampling_frequency:
        raise ValueError(
            f"freq_min={params['freq_min']:g} Hz is above 0.45 x the sampling rate ({sampling_frequency:g} Hz), where "
            "the band-pass filter ends: lower freq_min (default 300)"
        )

    num_samples = [recording.get_num_samples(s) for s in range(recording.get_num_segments())]
    snippet = int(round(params["ms_before"] * sampling_frequency / 1000.0)) + int(
        round(params["ms_after"] * sampling_frequency / 1000.0)
    )
    if max(num_samples) < snippet:
        raise ValueError(
            f"the recording is {max(num_samples)} samples long, shorter than one snippet ({snippet} samples = "
            f"ms_before + ms_after): there is nothing to sort; give a longer recording (a few minutes for training)"
        )
    _check_samples(recording, params)


def _check_locations(recording) -> None:
    if not recording.has_probe():
        raise ValueError(
            "the recording has no channel locations: attach its probe first (recording.set_probe(probe) with a "
            "probeinterface Probe, e.g. probeinterface.read_prb, or recording.set_dummy_probe_from_locations(xy))"
        )
    # probeinterface refuses a probe with duplicated contacts; this guards the other ways of attaching locations
    locations = np.asarray(recording.get_channel_locations())
    _, first, counts = np.unique(locations, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        location = locations[first[np.argmax(counts > 1)]]
        same = np.flatnonzero(np.all(locations == location, axis=1))
        raise ValueError(
            f"channels {np.asarray(recording.channel_ids)[same].tolist()} share the location {location.tolist()}: "
            "each channel needs its own location. Sort each shank or group on its own "
            "(spikeinterface.sorters.run_sorter_by_property(..., grouping_property='group')) or fix the probe."
        )


def _check_samples(recording, params: dict) -> None:
    """A few random chunks: NaN or Inf (an error), flat channels (a warning: dead channels carry no spikes)."""
    import warnings

    from spikeinterface.core import get_random_data_chunks

    shortest = min(recording.get_num_samples(s) for s in range(recording.get_num_segments()))
    chunk_size = min(CHECK_CHUNK_SAMPLES, shortest)
    seed = params["seed"] if params["seed"] is not None else 0
    traces = get_random_data_chunks(
        recording, num_chunks_per_segment=NUM_CHECK_CHUNKS, chunk_size=chunk_size, seed=int(seed),
        return_in_uV=False,
    )
    channel_ids = np.asarray(recording.channel_ids)
    bad = ~np.isfinite(traces) if traces.dtype.kind == "f" else np.zeros(traces.shape, dtype=bool)
    if bad.any():
        raise ValueError(
            f"the recording holds NaN or Inf samples (found on channel(s) {channel_ids[bad.any(axis=0)].tolist()}): "
            "replace them before sorting, e.g. remove bad channels (recording.remove_channels) or zero the bad "
            "periods (spikeinterface.preprocessing.silence_periods(recording, list_periods, mode='zeros'))"
        )
    flat = np.ptp(traces, axis=0) == 0
    if flat.any() and traces.shape[0] > 1:
        warnings.warn(
            f"channel(s) {channel_ids[flat].tolist()} are flat (dead): they carry no spikes and, with "
            "common_reference=True, receive the negative of the reference. Remove them first "
            f"(recording.remove_channels({channel_ids[flat].tolist()})) unless they are needed for the probe layout.",
            UserWarning,
            stacklevel=3,
        )


def _describe_range(low, high):
    if high is None:
        return f">= {low}"
    return f"between {low} and {high}"


def check_params(params: dict) -> dict:
    """Validate a full parameter dict and return it (with ``device`` checked as far as possible without torch).

    Raises
    ------
    ValueError
        Naming the parameter, the value given and the valid values.
    """
    check_declared(params, PARAMS, "elvisort")
    for name in ("pretrained_model", "training_sorting", "training_recording"):
        value = params[name]
        if value is not None and not isinstance(value, (str, PathLike)):
            raise ValueError(f"{name}={value!r} must be None or a path (str or pathlib.Path)")
        if value is not None and not Path(value).exists():
            raise ValueError(f"{name}={str(value)!r} does not exist")
    if params["pretrained_model"] is not None and params["training_sorting"] is not None:
        raise ValueError("give either pretrained_model (inference only) or training_sorting (train on labels), not both")
    for name in ("pretrained_model", "training_sorting"):
        if params[name] is not None and params["features"] != "vae":
            raise ValueError(f"features={params['features']!r} is an ablation without a network: {name} needs "
                             "features='vae'")
        if params[name] is not None and params["motion_correction"] not in (None, "auto"):
            # both sort with the block engine of instant sorting, which reads raw blocks and corrects no motion
            raise ValueError(f"motion_correction is not available with {name}: the saved model's inference does not "
                             "correct motion; use motion_correction=None")
    if params["training_recording"] is not None and params["training_sorting"] is None:
        raise ValueError("training_recording is the recording of training_sorting's labels: give training_sorting too")
    model_kwargs = params["model_kwargs"]
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"model_kwargs={model_kwargs!r} must be a dict such as {{'beta': 4.0}}")
    from .models.config import BetaVAEConfig

    tunable = {f.name for f in fields(BetaVAEConfig)} - BetaVAEConfig.derived_fields
    bad = sorted(set(model_kwargs) - tunable)
    if bad:
        raise ValueError(f"model_kwargs has unknown key(s) {bad}; valid keys are {sorted(tunable)}")
    BetaVAEConfig(num_samples=32, num_channels=4, **model_kwargs).validate()
    return params


def check_declared(params: dict, declared: dict, sorter_name: str) -> dict:
    """The checks every sorter of the package shares: exactly the ``declared`` names (name -> :class:`Param`), each
    value among its parameter's choices, bounds or bools. ``model_kwargs`` is left to the sorter's own check.
    """
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"Unknown parameter(s) {unknown}; valid parameters are {sorted(declared)}")
    missing = sorted(set(declared) - set(params))
    if missing:
        raise ValueError(f"Missing parameter(s) {missing}; start from get_default_sorter_params({sorter_name!r})")
    for name, param in declared.items():
        value = params[name]
        if param.choices is not None:
            # True == 1 in Python: compare types too so that 1 is not accepted for a boolean choice
            if not any(value == choice and type(value) is type(choice) for choice in param.choices):
                raise ValueError(f"{name}={value!r} is not valid; choose one of {list(param.choices)}")
        elif isinstance(param.default, bool) and not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be True or False")
    for name, param in declared.items():
        value = params[name]
        if param.bounds is None or any(value == special and type(value) is type(special) for special in param.also):
            continue
        low, high, integer = param.bounds
        ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
        if isinstance(value, bool) or not ok_type:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{name}={value!r} must be {kind} {_describe_range(low, high)}")
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            raise ValueError(f"{name}={value!r} is out of range; it must be {_describe_range(low, high)}")
    if "freq_min" in declared and params["freq_min"] >= params["freq_max"]:
        raise ValueError(f"freq_min={params['freq_min']} must be below freq_max={params['freq_max']}")

    device = params["device"]
    if not isinstance(device, str) or not (
        device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ValueError(f'device={device!r} is not valid; use "auto", "cpu", "cuda" or "cuda:N"')
    if device.startswith("cuda"):  # CUDA asked for but absent: said now, before any work
        from .device import resolve_device

        resolve_device(device)
    threads = params["torch_threads"]
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1):
        raise ValueError(f"torch_threads={threads!r} must be None or an integer >= 1")

    if "motion_correction" in declared:
        check_motion_correction(params["motion_correction"], params["motion_correction_kwargs"])

    if not isinstance(params["job_kwargs"], dict):
        raise ValueError(f"job_kwargs={params['job_kwargs']!r} must be a dict such as {{'n_jobs': 2}}")
    return params


def check_motion_correction(preset, kwargs) -> None:
    """``motion_correction`` is None or a preset of SpikeInterface's ``compute_motion``; ``motion_correction_kwargs``
    a dict of dicts for its steps, whose interpolation keeps every channel."""
    from importlib.util import find_spec

    from spikeinterface.preprocessing.motion import get_motion_presets

    from .preprocessing import MOTION_STEPS

    if preset not in (None, "auto"):
        presets = get_motion_presets()
        if not isinstance(preset, str) or preset not in presets:
            raise ValueError(f"motion_correction={preset!r} is not valid; choose None, 'auto' or one of {presets}")
        if preset == "medicine" and find_spec("medicine") is None:
            raise ValueError("motion_correction='medicine' needs the medicine package: pip install medicine-neuro")
    if not isinstance(kwargs, dict) or not all(isinstance(value, dict) for value in kwargs.values()):
        raise ValueError(f"motion_correction_kwargs={kwargs!r} must be a dict of dicts such as "
                         "{'estimate_motion_kwargs': {'win_step_um': 200.0}}")
    bad = sorted(set(kwargs) - set(MOTION_STEPS))
    if bad:
        raise ValueError(f"motion_correction_kwargs has unknown key(s) {bad}; valid keys are {list(MOTION_STEPS)}")
    if kwargs and preset is None:
        raise ValueError("motion_correction_kwargs is given but motion_correction is None: choose a preset too")
    if preset == "auto" and set(kwargs) - {"interpolate_motion_kwargs"}:
        raise ValueError(f"motion_correction_kwargs {sorted(set(kwargs) - {'interpolate_motion_kwargs'})} apply to a "
                         "preset; motion_correction='auto' takes only interpolate_motion_kwargs: choose a preset "
                         "(e.g. 'dredge_fast') to change the estimate")
    border_mode = kwargs.get("interpolate_motion_kwargs", {}).get("border_mode", "force_extrapolate")
    if border_mode not in ("force_extrapolate", "force_zeros"):
        raise ValueError(f"motion_correction_kwargs: interpolate_motion_kwargs border_mode={border_mode!r} is not "
                         "valid; choose 'force_extrapolate' or 'force_zeros' (the sorter keeps every channel)")
