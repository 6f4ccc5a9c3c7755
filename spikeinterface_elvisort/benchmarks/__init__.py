"""Benchmarks: ground-truth study sets run through ``spikeinterface.benchmark.SorterStudy``, their tables and plots
(``elvisort-benchmark``), and the paper's transfer experiment.

* :mod:`.datasets`: the study sets (generated static / low-SNR / drifting recordings, MEArec, SpikeForest's MDA
  layout, transfer pairs);
* :mod:`.study`: the cases, :class:`~.study.ElvisortSorterStudy` (SorterStudy plus peak memory and SpikeForest's
  1 ms comparison), running cases one by one;
* :mod:`.tables`: tables and plots in SpikeForest's and SpikeInterface's conventions;
* :mod:`.cli`: the ``elvisort-benchmark`` console script;
* :mod:`.transfer`: :func:`generate_transfer_pair` and :func:`classification_scores`.
"""

from .transfer import classification_scores, generate_transfer_pair

__all__ = ["classification_scores", "generate_transfer_pair"]
