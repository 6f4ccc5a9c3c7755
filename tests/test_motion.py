"""Motion correction in the shared front end: a small drifting recording sorted with ``motion_correction``."""

from __future__ import annotations

import numpy as np
import pytest

import spikeinterface.sorters as ss
from spikeinterface.sorters.utils import SpikeSortingError

from conftest import fast_params, save_binary

DRIFT_UM = 30.0  # peak to peak, a zigzag of period 6 s


def _drifting_recording(num_units, rows, drift_um, drift_step_um, seed=0):
    """``generate_drifting_recording`` on 2 columns of ``rows`` contacts 20 um apart, 15 s, a zigzag drift of
    ``drift_um`` peak to peak (period 6 s), units at least 50 um apart: (recording, ground truth, extra outputs)."""
    from spikeinterface.generation import generate_drifting_recording

    _, recording, sorting, extra = generate_drifting_recording(
        num_units=num_units,
        duration=15.0,
        generate_probe_kwargs=dict(num_columns=2, num_contact_per_column=rows, xpitch=16.0, ypitch=20.0,
                                   contact_shapes="square", contact_shape_params={"width": 12}),
        generate_displacement_vector_kwargs=dict(
            displacement_sampling_frequency=5.0, drift_start_um=[0, drift_um / 2], drift_stop_um=[0, -drift_um / 2],
            drift_step_um=drift_step_um, motion_list=[dict(drift_mode="zigzag", non_rigid_gradient=None,
                                                           t_start_drift=0.0, t_end_drift=None, period_s=6.0)],
        ),
        generate_sorting_kwargs=dict(firing_rates=(10.0, 15.0), refractory_period_ms=4.0),
        generate_unit_locations_kwargs=dict(margin_um=20.0, minimum_z=5.0, maximum_z=20.0, minimum_distance=50.0,
                                            max_iteration=100, distance_strict=False),
        extra_outputs=True,
        seed=seed,
    )
    return recording, sorting, extra


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """5 units at least 50 um apart on 32 channels (2 columns, 20 um pitch), 15 s drifting +-15 um: (recording, ground
    truth, true displacement (num_steps,) in um, its times in s). Units far apart keep this a test of the motion
    step, not of telling neighbouring units apart."""
    recording, sorting, extra = _drifting_recording(num_units=5, rows=16, drift_um=DRIFT_UM, drift_step_um=2)
    recording = save_binary(recording, tmp_path_factory.mktemp("drift") / "recording")
    displacement = extra["displacement_vectors"][:, 1, 0]  # (steps,) y displacement of the rigid drift
    times = np.arange(displacement.size) / extra["displacement_sampling_frequency"]
    return recording, sorting, displacement, times


@pytest.mark.slow
def test_motion_correction_estimates_saves_and_sorts(drifting, tmp_path, sorter_device):
    import spikeinterface.comparison as sc
    from spikeinterface.preprocessing import load_motion_info

    recording, ground_truth, displacement, times = drifting
    folder = tmp_path / "run"
    params = fast_params(sorter_device, motion_correction="dredge_fast", train_epochs=5, train_max_snippets=2000,
                         model_kwargs={})
    sorting = ss.run_sorter("elvisort", recording, folder=folder, **params)

    # the motion is saved where SpikeInterface's tools read it, and it follows the true drift
    motion = load_motion_info(folder / "sorter_output" / "motion")["motion"]
    estimated = motion.displacement[0].mean(axis=1)  # rigid drift: the mean over spatial windows
    estimated_times = motion.temporal_bins_s[0]
    truth = np.interp(estimated_times, times, displacement)
    assert np.ptp(estimated) > 0.3 * DRIFT_UM  # measured: half the true range (1 s bins of a 6 s zigzag)
    assert abs(np.corrcoef(estimated, truth)[0, 1]) > 0.8  # the sign depends on the convention: any is fine
    assert "motion" in (folder / "sorter_output" / "elvisort.log").read_text()

    accuracy = sc.compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True).get_performance()[
        "accuracy"
    ].astype(float)
    print(f"\nelvisort with motion correction, accuracy per unit {np.round(accuracy.to_numpy(), 2).tolist()}")
    assert accuracy.mean() >= 0.9  # measured: 0.99 to 1.0 per unit (0.9 for one unit without motion correction)

    # the saved model remembers the setting; its inference corrects no motion and says so
    from spikeinterface_elvisort import load_model

    model = load_model(folder, device="cpu")
    assert model.params["motion_correction"] == "dredge_fast"
    # the whitening (on, 32 channels) comes before the interpolation and its matrix is still saved with the model
    whitening = model.checkpoint["whitening"]
    assert whitening is not None and np.asarray(whitening["W"]).shape == (32, 32)
    with pytest.warns(UserWarning, match="corrects no motion"):
        model.sort(recording.frame_slice(0, int(recording.sampling_frequency)))


def test_bad_motion_preset_fails_before_sorting(drifting, tmp_path):
    recording = drifting[0]
    folder = tmp_path / "bad"
    with pytest.raises((ValueError, SpikeSortingError), match="motion_correction"):
        ss.run_sorter("elvisort", recording, folder=folder, motion_correction="dredge_slow")
    assert not (folder / "spikeinterface_log.json").exists()
    with pytest.raises((ValueError, SpikeSortingError), match="motion_correction"):
        ss.run_sorter("ssae", recording, folder=tmp_path / "bad_ssae", motion_correction="nope")


def test_motion_estimate_is_deterministic(drifting, tmp_path):
    """compute_motion draws its noise-level chunks unseeded; estimate_motion seeds them, so one seed, one motion
    (before, the displacement of the drift study's bump recording differed by 0.1 um between runs and the sorting
    by 4 units)."""
    from spikeinterface.core import get_noise_levels

    from spikeinterface_elvisort.preprocessing import estimate_motion, preprocess

    recording = drifting[0]
    job_kwargs = dict(n_jobs=1, progress_bar=False)
    filtered = [preprocess(recording) for _ in range(2)]
    motions = [
        estimate_motion(rec, "dredge_fast", tmp_path / f"motion{run}", job_kwargs, seed=0)[0]
        for run, rec in enumerate(filtered)
    ]
    np.testing.assert_array_equal(motions[0].displacement[0], motions[1].displacement[0])
    # the noise levels compute_motion used (cached on the recording) are the seeded ones
    seeded = get_noise_levels(preprocess(recording), return_in_uV=False, random_slices_kwargs={"seed": 0})
    np.testing.assert_array_equal(filtered[0].get_property("noise_level_mad_raw"), seeded)


def test_motion_peak_selection_works_or_says_why(drifting, tmp_path):
    """``select_kwargs`` takes compute_motion's other branch, which SpikeInterface 0.105 breaks (a TypeError from
    detect_peaks): the user gets a ValueError that names the parameter, or, where SpikeInterface works, a motion."""
    from spikeinterface_elvisort.preprocessing import estimate_motion, preprocess

    kwargs = {"select_kwargs": {"method": "uniform", "n_peaks": 500}}
    try:
        motion, _ = estimate_motion(preprocess(drifting[0]), "dredge_fast", tmp_path / "motion",
                                    dict(n_jobs=1, progress_bar=False), kwargs=kwargs, seed=0)
    except ValueError as error:
        assert "select_kwargs" in str(error)
    else:
        assert np.all(np.isfinite(motion.displacement[0]))


def _long_probe_recording(folder, drift_um, seed=0):
    """8 units on 64 channels (2 columns, 32 rows 20 um apart: 620 um), 15 s, zigzag drift of ``drift_um`` peak to
    peak (0: static), saved."""
    recording, sorting, _ = _drifting_recording(num_units=8, rows=32, drift_um=drift_um, drift_step_um=1, seed=seed)
    return save_binary(recording, folder), sorting


@pytest.mark.slow
def test_auto_motion_correction_corrects_a_drifting_long_probe_and_leaves_a_static_one(tmp_path, sorter_device):
    """The default (motion_correction="auto") estimates the drift on a 620 um probe, interpolates the drifting
    recording (30 um zigzag) and sorts it as well as an explicit preset would, and leaves the static recording of
    the same probe uncorrected; a 300 um probe is not even estimated."""
    import spikeinterface.comparison as sc

    from spikeinterface_elvisort.params import DEFAULT_PARAMS
    from spikeinterface_elvisort.preprocessing import probe_span_um

    assert DEFAULT_PARAMS["motion_correction"] == "auto"
    params = fast_params(sorter_device, train_epochs=5, train_max_snippets=2000, model_kwargs={})
    assert params["motion_correction"] == "auto"
    results, recordings = {}, {}
    for drift_um in (30.0, 0.0):
        recording, ground_truth = recordings[drift_um] = _long_probe_recording(tmp_path / f"drift{drift_um:.0f}",
                                                                               drift_um)
        assert probe_span_um(recording) == 620.0
        folder = tmp_path / f"run{drift_um:.0f}"
        sorting = ss.run_sorter("elvisort", recording, folder=folder, **params)
        log = (folder / "sorter_output" / "elvisort.log").read_text()
        accuracy = sc.compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True).get_performance()[
            "accuracy"].astype(float)
        results[drift_um] = (log, (folder / "sorter_output" / "motion").exists(), accuracy.mean())
        print(f"\ndrift {drift_um} um: accuracy {accuracy.mean():.3f}; " + [line for line in log.splitlines()
                                                                          if "auto:" in line][0])
    drifting_log, drifting_motion, drifting_accuracy = results[30.0]
    static_log, static_motion, static_accuracy = results[0.0]
    assert "traces interpolated" in drifting_log and drifting_motion
    assert "no correction" in static_log and not static_motion

    # the correction pays: the same drifting recording without it sorts worse
    recording, ground_truth = recordings[30.0]
    sorting = ss.run_sorter("elvisort", recording, folder=tmp_path / "uncorrected", **(params | {
        "motion_correction": None}))
    uncorrected = sc.compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True).get_performance()[
        "accuracy"].astype(float).mean()
    print(f"drift 30 um without correction: accuracy {uncorrected:.3f}")
    assert drifting_accuracy >= uncorrected + 0.05, (drifting_accuracy, uncorrected)
    assert drifting_accuracy >= 0.75 and static_accuracy >= 0.8, results

    # a 300 um probe: no estimate at all
    short, _ = _short_probe(tmp_path / "short")
    folder = tmp_path / "short_run"
    ss.run_sorter("elvisort", short, folder=folder, **params)
    assert "motion" not in (folder / "sorter_output" / "elvisort.log").read_text()


def _short_probe(folder):
    from spikeinterface.core import generate_ground_truth_recording

    recording, sorting = generate_ground_truth_recording(num_channels=32, durations=[10.0], num_units=5, seed=0)
    return save_binary(recording, folder), sorting
