"""Study sets: ground-truth recordings for the benchmark studies, saved once so every sorter reads the same files.

Every builder returns a :class:`StudySet`: ``datasets`` maps a dataset name to ``(recording, ground-truth sorting)``.
Generated recordings are lazy (their noise is recomputed at every read) and are written to binary folders first, so
sorters are timed on a plain file read, as they would be on real data.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SAMPLING_FREQUENCY = 30000.0
MEAREC_FOLDER = Path("/tmp/mearec_recordings/dev")
SPIKEFOREST_FILES = ("raw.mda", "geom.csv", "params.json", "firings_true.mda")


@dataclass
class StudySet:
    """The datasets of one study set, and the cases that only make sense on it.

    ``extra_cases`` maps ``(case name, dataset name)`` to ``(sorter name, sorter params)``; ``notes`` maps a case key
    ``(case name, dataset name)`` to extra columns of its row (the training time ``train_s`` of a transfer model).
    """

    name: str
    datasets: dict = field(default_factory=dict)
    extra_cases: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    exhaustive_gt: bool = True


def num_units_for(num_channels: int) -> int:
    """Units of a generated recording: 15 on 32 channels (the earlier benchmark), proportionally more on larger
    probes, at least 10."""
    return max(10, (15 * num_channels) // 32)


def save_dataset(recording, sorting, folder: Path):
    """Write a generated recording (binary) and its ground truth (numpy folder) once; reload them afterwards."""
    from spikeinterface.core import load

    if (folder / "gt_sorting").exists():  # written by an earlier run (``recording`` and ``sorting`` may be None)
        return load(folder / "recording"), load(folder / "gt_sorting")
    with warnings.catch_warnings():
        # a generated recording has no provenance to save beside the binary copy; SpikeInterface warns about it
        warnings.filterwarnings("ignore", message="The extractor is not serializable")
        recording = recording.save(folder=folder / "recording", format="binary", overwrite=True,
                                   n_jobs=1 if recording.get_num_channels() < 128 else -1, progress_bar=False,
                                   verbose=False)
    sorting = sorting.save(folder=folder / "gt_sorting", format="numpy_folder", overwrite=True)
    return recording, sorting


def generated_set(name: str, folder: Path, seeds=(0, 1), *, channels=(32, 128), duration: float = 120.0,
                  noise_level: float = 5.0, alpha=None, depth_um=None) -> StudySet:
    """``generate_ground_truth_recording`` at several seeds and probe sizes (the "static", "noise10" and "lowsnr"
    sets).

    Parameters
    ----------
    noise_level : float
        Noise standard deviation (the generator's ``noise_levels``).
    alpha : tuple of float | None
        Range of the templates' amplitudes (``unit_params["alpha"]``); None keeps the generator's (100, 500).
    depth_um : tuple of float | None
        Range of the units' distance to the probe plane (``minimum_z``, ``maximum_z``); None keeps (5, 50).
    """
    from spikeinterface.core import generate_ground_truth_recording

    study_set = StudySet(name)
    for num_channels in channels:
        for seed in seeds:
            dataset = f"{name}_ch{num_channels}_seed{seed}"
            extra = {}
            if alpha is not None:
                extra["generate_templates_kwargs"] = dict(unit_params=dict(alpha=tuple(alpha)))
            if depth_um is not None:
                extra["generate_unit_locations_kwargs"] = dict(margin_um=10.0, minimum_z=depth_um[0],
                                                               maximum_z=depth_um[1], minimum_distance=20)
            recording, sorting = generate_ground_truth_recording(
                durations=[duration], sampling_frequency=SAMPLING_FREQUENCY, num_channels=num_channels,
                num_units=num_units_for(num_channels), seed=seed,
                noise_kwargs=dict(noise_levels=noise_level, strategy="on_the_fly"), **extra,
            )
            study_set.datasets[dataset] = save_dataset(recording, sorting, folder / dataset)
    return study_set


def static_set(folder: Path, seeds=(0, 1), channels=(32, 128), duration: float = 120.0) -> StudySet:
    """Generated recordings, noise level 5: most units have a comfortable SNR."""
    return generated_set("static", folder, seeds, channels=channels, duration=duration, noise_level=5.0)


def lowsnr_set(folder: Path, seeds=(0, 1), channels=(32, 128), duration: float = 120.0) -> StudySet:
    """Generated recordings, noise level 10, templates of amplitude 70-140 instead of 100-500, units 10-30 um from the
    probe instead of 5-50 um: on 32 channels, 8 and 11 units of 15 have an SNR between 3 and 6 (seeds 0 and 1;
    SpikeInterface's snr on the recording, range 1.4-8.9; higher on the 300-6000 Hz band)."""
    return generated_set("lowsnr", folder, seeds, channels=channels, duration=duration, noise_level=10.0,
                         alpha=(70.0, 140.0),
                         depth_um=(10.0, 30.0))


def noise10_set(folder: Path, seeds=(0, 1), channels=(32, 128), duration: float = 120.0) -> StudySet:
    """Generated recordings as in the static set but with noise level 10 (the generator's templates and unit depths
    kept): the harder of the two generated sets of ``benchmarks/bench_sorters.py``, milder than "lowsnr"."""
    return generated_set("noise10", folder, seeds, channels=channels, duration=duration, noise_level=10.0)


def neuropixels1_128():
    """The first 128 channels of a Neuropixels 1.0 probe, SpikeInterface's "Neuropixels1-128".

    probeinterface downloads that probe (imec NP1000) from its online library; offline, the same layout is built
    here: four staggered columns at x = 43, 11, 59, 27 um, two contacts per 20 um row, 12 um square contacts.
    """
    import numpy as np
    from probeinterface import Probe, get_probe

    try:
        return get_probe("imec", "NP1000").get_slice(np.arange(128))
    except OSError as error:  # no network (urllib's URLError is an OSError)
        logger.info("probeinterface's NP1000 is not reachable (%s): building its layout", error)
    index = np.arange(128)
    positions = np.stack([np.array([43.0, 11.0, 59.0, 27.0])[index % 4], 20.0 * (index // 2)], axis=1)
    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=positions, shapes="square", shape_params={"width": 12})
    probe.set_device_channel_indices(index)
    probe.create_auto_shape(probe_type="tip")
    return probe


def drift_set(folder: Path, seeds=(0,), duration: float = 120.0, drift_modes=("zigzag", "bump"),
              num_units: int = 100) -> StudySet:
    """``generate_drifting_recording`` on a Neuropixels1-128 probe (:func:`neuropixels1_128`), one recording per seed
    and drift mode.

    The drift is rigid, 40 um peak to peak (SpikeInterface's default range), starting after 10% of the recording:
    "zigzag" is a triangle of period ``duration / 2``; "bump" (SpikeInterface's name; its docstring says "bumps")
    jumps between the two extremes at random intervals of ``duration / 12`` to ``duration / 4``.
    """
    from spikeinterface.generation import generate_drifting_recording

    study_set = StudySet("drift")
    for drift_mode in drift_modes:
        if drift_mode not in ("zigzag", "bump"):
            raise ValueError(f"drift mode {drift_mode!r}: choose 'zigzag' or 'bump'")
        motion = _drift_motion(drift_mode, duration)
        for seed in seeds:
            dataset = f"drift_{drift_mode}_seed{seed}"
            _, recording, sorting = generate_drifting_recording(
                num_units=num_units, duration=duration, sampling_frequency=SAMPLING_FREQUENCY,
                probe=neuropixels1_128(), seed=seed,
                generate_displacement_vector_kwargs=dict(
                    displacement_sampling_frequency=5.0, drift_start_um=[0, 20], drift_stop_um=[0, -20],
                    drift_step_um=1, motion_list=[motion],
                ),
            )
            study_set.datasets[dataset] = save_dataset(recording, sorting, folder / dataset)
    return study_set


def neuropixels_probe(num_contacts: int = 384):
    """A Neuropixels-1.0-like probe that builds offline: four staggered columns of ``num_contacts / 4`` contacts,
    16 um apart across and 40 um along the shank (rows of two 20 um apart), 3.84 mm for 384 contacts
    (``probeinterface.generate_multi_columns_probe``)."""
    import numpy as np
    from probeinterface import generate_multi_columns_probe

    if num_contacts % 4:
        raise ValueError(f"num_contacts={num_contacts}: the probe has four columns, give a multiple of 4")
    probe = generate_multi_columns_probe(num_columns=4, num_contact_per_column=num_contacts // 4, xpitch=16,
                                         ypitch=40, y_shift_per_column=[0, 20, 0, 20])
    probe.set_device_channel_indices(np.arange(num_contacts))
    return probe


def neuropixels_set(folder: Path, seeds=(2026,), durations=(60.0,), num_units: int = 100,
                    drift_modes=("static",), num_contacts: int = 384) -> StudySet:
    """Neuropixels-scale recordings on :func:`neuropixels_probe`: for each drift mode, seed and duration, one
    recording of ``num_units`` units, noise level 5.

    "static" is ``generate_ground_truth_recording`` (the recording of the package's 384-channel benchmark with seed
    2026 and 60 s); "zigzag" and "bump" are ``generate_drifting_recording`` on the same probe, rigid drift of 40 um
    peak to peak as in :func:`drift_set`. Recordings are written once as binary folders (60 s of 384 channels
    take 2.8 GB in float32; 30 minutes, 83 GB).
    """
    from spikeinterface.core import generate_ground_truth_recording
    from spikeinterface.generation import generate_drifting_recording

    study_set = StudySet("neuropixels")
    for drift_mode in drift_modes:
        if drift_mode not in ("static", "zigzag", "bump"):
            raise ValueError(f"drift mode {drift_mode!r}: choose 'static', 'zigzag' or 'bump'")
        for duration in durations:
            for seed in seeds:
                dataset = f"np{num_contacts}_{drift_mode}_{int(duration)}s_seed{seed}"
                if (folder / dataset / "gt_sorting").exists():
                    study_set.datasets[dataset] = save_dataset(None, None, folder / dataset)
                    continue
                if drift_mode == "static":
                    recording, sorting = generate_ground_truth_recording(
                        durations=[duration], sampling_frequency=SAMPLING_FREQUENCY,
                        probe=neuropixels_probe(num_contacts), num_units=num_units, seed=seed,
                        noise_kwargs=dict(noise_levels=5.0, strategy="on_the_fly"),
                    )
                else:
                    _, recording, sorting = generate_drifting_recording(
                        num_units=num_units, duration=duration, sampling_frequency=SAMPLING_FREQUENCY,
                        probe=neuropixels_probe(num_contacts), seed=seed,
                        generate_displacement_vector_kwargs=dict(
                            displacement_sampling_frequency=5.0, drift_start_um=[0, 20], drift_stop_um=[0, -20],
                            drift_step_um=1, motion_list=[_drift_motion(drift_mode, duration)],
                        ),
                    )
                study_set.datasets[dataset] = save_dataset(recording, sorting, folder / dataset)
    return study_set


def _drift_motion(drift_mode: str, duration: float) -> dict:
    """The rigid drift of :func:`drift_set` and :func:`neuropixels_set`: 40 um peak to peak from 10% of the
    recording on, a triangle of period ``duration / 2`` ("zigzag") or jumps at random intervals of ``duration / 12``
    to ``duration / 4`` ("bump")."""
    motion = dict(drift_mode=drift_mode, non_rigid_gradient=None, t_start_drift=0.1 * duration, t_end_drift=None)
    if drift_mode == "zigzag":
        motion["period_s"] = duration / 2
    else:
        motion["bump_interval_s"] = (duration / 12, duration / 4)
    return motion


def mearec_set(mearec_folder: Path = MEAREC_FOLDER) -> StudySet:
    """The MEArec recordings (``*.h5``) of ``mearec_folder``, read with ``read_mearec`` (needs MEArec and h5py).

    The recordings of ``../shared/data/mearec`` are rebuilt by its ``make_recordings.py`` (see its README); they are
    32-channel, 60 s, already band-passed 300-6000 Hz.
    """
    import spikeinterface.extractors as se

    study_set = StudySet("mearec")
    files = sorted(Path(mearec_folder).glob("*.h5"))
    if not files:
        logger.warning("mearec: no *.h5 recordings in %s (see shared/data/mearec/README.md)", mearec_folder)
    for file_path in files:
        study_set.datasets[file_path.stem] = se.read_mearec(file_path)
    return study_set


def is_spikeforest_folder(folder: Path) -> bool:
    return all((Path(folder) / name).exists() for name in SPIKEFOREST_FILES)


def read_spikeforest_folder(folder: Path):
    """One recording in SpikeForest's MDA layout: ``raw.mda`` (channels x samples), ``geom.csv`` (x, y per channel),
    ``params.json`` (``samplerate``), ``firings_true.mda`` (ground truth), read with SpikeInterface's MDA extractors.

    Returns
    -------
    recording, gt_sorting
    """
    import spikeinterface.extractors as se

    folder = Path(folder)
    missing = [name for name in SPIKEFOREST_FILES if not (folder / name).exists()]
    if missing:
        raise ValueError(f"{folder} is not in SpikeForest's MDA layout: missing {', '.join(missing)}")
    recording = se.read_mda_recording(folder)
    sorting = se.read_mda_sorting(folder / "firings_true.mda", sampling_frequency=recording.sampling_frequency)
    return recording, sorting


def write_spikeforest_folder(recording, sorting, folder: Path, dtype="float32"):
    """Write a recording and its ground truth in SpikeForest's MDA layout with SpikeInterface's MDA writers (for
    tests, or to hand a recording to tools that read SpikeForest's layout)."""
    from spikeinterface.extractors.mdaextractors import MdaRecordingExtractor, MdaSortingExtractor

    MdaRecordingExtractor.write_recording(recording, folder, dtype=dtype, n_jobs=1, progress_bar=False)
    MdaSortingExtractor.write_sorting(sorting, Path(folder) / "firings_true.mda")


def spikeforest_set(folders, exhaustive_gt: bool = False) -> StudySet:
    """Every folder in SpikeForest's MDA layout among ``folders`` or directly below them (a study folder of
    SpikeForest holds one subfolder per recording); the dataset name is the folder's name.

    Parameters
    ----------
    exhaustive_gt : bool, default: False
        SpikeForest's paired and hybrid recordings label only some units, so by default false-positive, redundant
        and over-merged units are not counted; set True for fully synthetic sets.
    """
    study_set = StudySet("spikeforest", exhaustive_gt=exhaustive_gt)
    for folder in map(Path, folders):
        candidates = [folder] if is_spikeforest_folder(folder) else sorted(p for p in folder.iterdir() if p.is_dir())
        for candidate in candidates:
            if is_spikeforest_folder(candidate):
                study_set.datasets[candidate.name] = read_spikeforest_folder(candidate)
    if not study_set.datasets:
        logger.warning("spikeforest: no folder with %s in %s", ", ".join(SPIKEFOREST_FILES), list(map(str, folders)))
    return study_set


def transfer_set(folder: Path, pairs=((0, 1),), num_channels: int = 32, duration: float = 120.0,
                 train_params: dict | None = None, case_name: str = "elvisort-transfer") -> StudySet:
    """The paper's transfer experiment as study datasets: recording B of each pair, with a case that sorts it with
    the model elvisort trained on A.

    For each ``(seed_a, seed_b)``, :func:`generate_transfer_pair` gives A and B (same units, same probe, new spikes
    and noise). ``run_sorter("elvisort", A, training_sorting=<A's ground truth>, **train_params)`` trains (the
    paper's supervised protocol; timed here, outside the study); the extra case ``case_name`` is
    ``run_sorter("elvisort", B, pretrained_model=<A's run>, **train_params)``: inference only. The other cases of
    the study sort B as any other recording.
    """
    import spikeinterface.sorters as ss

    from .transfer import generate_transfer_pair

    train_params = dict(train_params or {})
    study_set = StudySet("transfer")
    for seed_a, seed_b in pairs:
        dataset = f"transfer_ch{num_channels}_seeds{seed_a}{seed_b}"
        recording_a, gt_a, recording_b, gt_b = generate_transfer_pair(
            num_channels=num_channels, num_units=num_units_for(num_channels), durations=(duration,),
            seed_a=seed_a, seed_b=seed_b, sampling_frequency=SAMPLING_FREQUENCY,
        )
        recording_a, gt_a = save_dataset(recording_a, gt_a, folder / f"{dataset}_a")
        study_set.datasets[dataset] = save_dataset(recording_b, gt_b, folder / dataset)
        train_folder = folder / f"{dataset}_a_train"
        notes_file = train_folder / "transfer_training.json"
        if not notes_file.exists():
            start = time.perf_counter()
            ss.run_sorter("elvisort", recording_a, folder=train_folder, remove_existing_folder=True, verbose=False,
                          training_sorting=str(folder / f"{dataset}_a" / "gt_sorting"), **train_params)
            notes_file.write_text(json.dumps({"train_s": time.perf_counter() - start}))
        study_set.notes[(case_name, dataset)] = json.loads(notes_file.read_text())
        params = {key: value for key, value in train_params.items() if key != "training_sorting"}
        study_set.extra_cases[(case_name, dataset)] = ("elvisort", params | {"pretrained_model": str(train_folder)})
    return study_set


def recordings_of_sets(sets, seeds, duration: float, folder: Path, np_options: dict | None = None):
    """Yield (set name, dataset name, recording, ground-truth sorting) for the scripts of ``benchmarks/``: static,
    noise10 and lowsnr on 32 channels (15 units, ``duration`` seconds, one per seed), the MEArec recordings, the
    neuropixels set (``np_options``: its "durations", "units" and "drift_modes"), all written under ``folder``."""
    generated = {"static": static_set, "noise10": noise10_set, "lowsnr": lowsnr_set}
    for name in sets:
        if name in generated:
            study_set = generated[name](Path(folder) / name, seeds, channels=(32,), duration=duration)
        elif name == "mearec":
            study_set = mearec_set()
        elif name == "neuropixels":
            options = np_options or {}
            study_set = neuropixels_set(Path(folder) / "neuropixels", seeds, options.get("durations", (60.0,)),
                                        options.get("units", 100), options.get("drift_modes", ("static",)))
        else:
            raise ValueError(f"unknown set {name!r}: choose among static, noise10, lowsnr, mearec, neuropixels")
        for dataset, (recording, sorting) in study_set.datasets.items():
            yield name, dataset, recording, sorting
