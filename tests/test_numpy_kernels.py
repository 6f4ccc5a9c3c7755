"""The NumPy stand-ins for SpikeInterface's numba kernels: the same numbers, nothing compiled."""

from __future__ import annotations

import numpy as np
import pytest


def test_template_similarity_runs_without_compiling_and_is_restored():
    from spikeinterface.core import sorting_tools
    from spikeinterface.curation import auto_merge
    from spikeinterface.postprocessing import template_similarity as module

    from spikeinterface_elvisort.numpy_kernels import NUMPY_SIMILARITY_MAX_UNITS, numpy_kernels

    original = module._compute_similarity_matrix
    originals = (sorting_tools.HAVE_NUMBA, auto_merge.compute_nb_coincidence, auto_merge.compute_nb_violations)
    templates = np.random.default_rng(0).normal(size=(5, 40, 6)).astype(np.float32)
    with pytest.raises(RuntimeError):
        with numpy_kernels(5):
            assert module._compute_similarity_matrix is module._compute_similarity_matrix_numpy
            assert not sorting_tools.HAVE_NUMBA
            similarity, lags = module.compute_similarity_with_templates_array(templates, templates, "l1", num_shifts=3)
            raise RuntimeError("the originals must come back whatever happens inside")
    assert module._compute_similarity_matrix is original
    assert (sorting_tools.HAVE_NUMBA, auto_merge.compute_nb_coincidence, auto_merge.compute_nb_violations) == originals
    np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-6)
    assert np.all(similarity < 1.0 - 1e-3, where=~np.eye(5, dtype=bool))
    with numpy_kernels(NUMPY_SIMILARITY_MAX_UNITS + 1):  # many units: SpikeInterface's kernel
        assert module._compute_similarity_matrix is original


def test_numpy_kernels_count_as_spikeinterface_numba_kernels():
    """The NumPy counts of refractory-period violations and coincidences equal SpikeInterface's numba kernels',
    bit for bit, at integer and fractional windows, with repeated spike times and empty trains."""
    pytest.importorskip("numba")
    from spikeinterface.curation import auto_merge
    from spikeinterface.metrics.quality import misc_metrics

    from spikeinterface_elvisort import numpy_kernels as ours

    rng = np.random.default_rng(0)
    for _ in range(60):
        span = int(rng.integers(50, 20_000))
        train1, train2 = (np.sort(rng.integers(0, span, int(rng.integers(0, 300)))).astype(np.int64) for _ in "12")
        for max_time in (0.0, 0.5, 1.0, 9.0, 9.6, 44.99, float(rng.uniform(0, 60))):
            assert ours.compute_nb_violations(train1, max_time) == auto_merge.compute_nb_violations(train1, max_time)
            assert ours.compute_nb_coincidence(train1, train2, max_time) == auto_merge.compute_nb_coincidence(
                train1, train2, max_time
            )
        for t_r in (0, 1, 30):
            assert ours.compute_rp_violations(train1, 9, t_r) == misc_metrics._compute_rp_violations_numba(
                train1, 9, t_r
            )
