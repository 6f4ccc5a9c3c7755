"""The ``ssae`` sorter (seeds 001 and 003): semi-supervised autoencoder ensemble, cleaner, BIC-chosen clusters.

Modules: ``params`` (its parameters, sharing elvisort's front-end and clean-up declarations), ``hybrid`` (the
labelled set made from the recording), ``cleaning`` (the event-or-noise CNN), ``clustering`` (a GMM per member,
BIC, regions, recursive splits) and ``pipeline`` (``run_ssae``). The models live in ``spikeinterface_elvisort.models``.
"""
