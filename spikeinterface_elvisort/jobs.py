"""How the chunked stages and the template matching share this process's cores: the job kwargs of each stage and the
BLAS threads of the whole run.

``n_jobs`` follows :func:`~spikeinterface_elvisort.device.cpu_share` (all the cores, except in a worker of a process
pool), in threads, unless the sorter parameter ``job_kwargs`` says otherwise.
"""

from __future__ import annotations


def sorter_job_kwargs(job_kwargs: dict, verbose: bool) -> dict:
    """The job kwargs the chunked stages run with: one thread per core of this process's share
    (:func:`~spikeinterface_elvisort.device.cpu_share`: all the cores, except in a worker of a process pool) unless
    ``job_kwargs`` says otherwise (the sorter parameter), SpikeInterface's defaults for the rest, progress bars when
    ``verbose`` and on a terminal.

    In threads, ``max_threads_per_worker`` is turned off: the pipelines limit BLAS threads once for the whole run to
    :func:`blas_thread_limit` instead (see :func:`~spikeinterface_elvisort.device.blas_threads`, why)."""
    from .progress import on_terminal

    fixed = _with_defaults(job_kwargs) | {"progress_bar": verbose and on_terminal()}
    if fixed["pool_engine"] == "thread":
        fixed["max_threads_per_worker"] = None
    return fixed


def _with_defaults(job_kwargs: dict) -> dict:
    """``job_kwargs`` over the sorters' defaults (threads, one per core of this process's share), completed by
    SpikeInterface's ``fix_job_kwargs``."""
    from spikeinterface.core.job_tools import fix_job_kwargs

    from .device import cpu_share

    return fix_job_kwargs({"n_jobs": cpu_share(), "pool_engine": "thread"} | dict(job_kwargs))


def blas_thread_limit(job_kwargs: dict) -> int:
    """The BLAS threads a run gets (:func:`~spikeinterface_elvisort.device.blas_threads`): the user's
    ``max_threads_per_worker`` (SpikeInterface's default, 1) when the chunked stages run in threads on more than one
    job, else :func:`~spikeinterface_elvisort.device.default_blas_threads`."""
    from .device import default_blas_threads

    fixed = _with_defaults(job_kwargs)
    if fixed["pool_engine"] != "thread" or fixed["n_jobs"] <= 1:
        return default_blas_threads()
    return fixed["max_threads_per_worker"]


def matching_job_kwargs(user_job_kwargs: dict, job_kwargs: dict) -> dict:
    """The job kwargs template matching runs with: ``job_kwargs`` (:func:`sorter_job_kwargs`'s), except that where
    the user's ``job_kwargs`` parameter names no ``pool_engine``, the matching runs in forked worker processes, one
    thread each, instead of threads. circus-omp and tdc-peeler pick spikes one at a time in a Python loop that
    holds the GIL, so threads take turns on one core: on static seed 0 of ``benchmarks/bench_sorters.py`` (120 s,
    32 channels, two cores) circus-omp took 16.5 s in two threads and 9.0-9.7 s in two processes, with the same
    27117 spikes. Threads stay where forking is not safe or not possible: one job, not Linux (macOS and Windows
    do not fork safely), or inside a daemonic process (which may not have children): see :func:`can_fork`."""
    if "pool_engine" in user_job_kwargs or job_kwargs["n_jobs"] <= 1 or not can_fork():
        return job_kwargs
    return job_kwargs | {"pool_engine": "process", "mp_context": "fork", "max_threads_per_worker": 1}


def can_fork() -> bool:
    """Whether worker processes may be forked here: on Linux (macOS and Windows do not fork safely), outside a
    daemonic process (which may not have children)."""
    import multiprocessing
    import sys

    return sys.platform.startswith("linux") and not multiprocessing.current_process().daemon
