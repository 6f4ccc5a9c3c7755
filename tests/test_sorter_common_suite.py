"""SpikeInterface's common sorter checks (``SorterCommonTestSuite``, which ships in SpikeInterface's source tree but
not in its PyPI wheel), written out here for both sorters: a 4-channel, 60 s recording saved as binary, sorted with
the sorter's defaults and ``delete_output_folder=True``; the sorting carries its ``sorting_info``; only the three
json files stay in the folder; the sorter reports its version."""

from __future__ import annotations

import pytest

import spikeinterface.sorters as ss

from conftest import make_ground_truth, save_binary


@pytest.fixture(scope="module")
def common_recording(tmp_path_factory):
    recording, _ = make_ground_truth(num_channels=4, durations=[60.0], seed=0)
    return save_binary(recording, tmp_path_factory.mktemp("common") / "rec")


@pytest.mark.slow
@pytest.mark.parametrize("sorter_name", ["elvisort", "ssae"])
def test_with_run(common_recording, tmp_path, sorter_name, sorter_device):
    folder = tmp_path / sorter_name
    params = ss.get_default_sorter_params(sorter_name) | {"device": sorter_device}
    sorting = ss.run_sorter(sorter_name, common_recording, folder=folder, remove_existing_folder=True,
                            delete_output_folder=True, verbose=False, raise_error=True, **params)
    assert sorting.sorting_info is not None
    assert {"recording", "params", "log"} <= set(sorting.sorting_info)
    assert sorting.get_num_units() > 0
    del sorting
    assert not (folder / "sorter_output").is_dir()
    for name in ("spikeinterface_recording.json", "spikeinterface_params.json", "spikeinterface_log.json"):
        assert (folder / name).is_file()


@pytest.mark.parametrize("sorter_name", ["elvisort", "ssae"])
def test_get_version(sorter_name):
    from spikeinterface_elvisort import __version__

    sorter_class = ss.sorter_dict[sorter_name]
    assert sorter_class.get_sorter_version() == __version__
    assert sorter_class.is_installed()
