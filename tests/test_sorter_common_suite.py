"""SpikeInterface's own SorterCommonTestSuite, when available.

The suite ships only with a source install of SpikeInterface, not in the PyPI wheel (as of 0.105), so it is imported
guarded; test_sorter_contract.py re-implements the same contract and always runs.
"""

import unittest

import pytest

common_tests = pytest.importorskip("spikeinterface.sorters.tests.common_tests")

from spikeinterface_elvisort.sorters import ElvisortSorter  # noqa: E402


@pytest.mark.slow
class TestElvisortCommonSuite(common_tests.SorterCommonTestSuite, unittest.TestCase):
    SorterClass = ElvisortSorter
