"""The only place that picks the torch device and seeds the random generators."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager

import numpy as np


def resolve_device(device: str = "auto"):
    """Turn a ``device`` parameter into a ``torch.device``.

    Parameters
    ----------
    device : "auto" | "cpu" | "cuda" | "cuda:N", default: "auto"
        "auto" picks CUDA when torch sees a GPU, the CPU otherwise.

    Raises
    ------
    ValueError
        When CUDA (or GPU number N) is asked for and not available.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} was requested but CUDA is not available to torch "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). Use device='cpu' or 'auto', "
                "or install a CUDA build of torch."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(device)!r} was requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return device


def uses_mixed_precision(setting, device) -> bool:
    """The ``mixed_precision`` parameter's rule: True always, False never, "auto" on CUDA only (bfloat16/float16
    autocast gains nothing on the CPU)."""
    return setting is True or (setting == "auto" and device.type == "cuda")


def seed_everything(seed: int | None) -> np.random.Generator:
    """Seed python, numpy and torch; return a numpy ``Generator`` for the caller's own draws."""
    import torch

    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def _omp_num_threads() -> int | None:
    """``OMP_NUM_THREADS`` as an integer (the first level of a nested list such as "4,2"), or None."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def _pool_workers(parent) -> int:
    """How many worker processes the pool that started this process has (this one included): the children of
    its parent that run a worker (spawn: ``spawn_main``; fork: the parent's own command line), or, under the
    forkserver start method, every child of the fork server. Zombies and other children (multiprocessing's
    resource tracker and fork server, unrelated subprocesses) do not count."""
    import psutil

    server = os.getppid() != parent.pid  # forkserver: the workers are forks of the server, not of the pool's owner
    pool_owner = psutil.Process(os.getppid())
    owner_command = pool_owner.cmdline()
    workers = 0
    for child in pool_owner.children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            command = child.cmdline()
        except psutil.Error:
            continue
        if server or "multiprocessing.spawn" in " ".join(command) or command == owner_command:
            workers += 1
    return max(workers, 1)


def cpu_share() -> int:
    """CPU threads this process should use when the user chose none: its share of the cores.

    * In a plain process (not started by ``multiprocessing``): every core of :func:`available_cores`.
    * In a worker process with ``OMP_NUM_THREADS`` set: that many (joblib's loky workers get cores / ``n_jobs``
      that way unless the parent set it, dask's nanny workers get 1).
    * In other workers (``multiprocessing`` and ``concurrent.futures`` pools, e.g.
      ``run_sorter_jobs(engine="processpoolexecutor")``): the cores divided among the worker processes that the
      pool's owner has started, idle ones included (:func:`_pool_workers`).

    Without this, every worker of a pool runs as many threads as there are cores, and the threads of several
    processes fighting over the same cores slow each of them down (3.7x for two workers on two cores, see the
    docs' benchmarks).
    """
    import multiprocessing

    cores = available_cores()
    parent = multiprocessing.parent_process()
    if parent is None:
        return cores
    omp = _omp_num_threads()
    if omp is not None:
        return min(omp, cores)
    try:
        workers = _pool_workers(parent)
    except Exception:  # psutil cannot see the parent (gone, or not permitted): no way to count, keep every core
        return cores
    return max(cores // workers, 1)


def default_blas_threads() -> int:
    """The BLAS threads of a run whose job kwargs set none: ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` or
    ``OMP_NUM_THREADS`` when set (what the libraries start with), else :func:`cpu_share`. The run sets it explicitly:
    a limit that other code left in the process (SpikeInterface's thread pools leave OpenBLAS at one thread) would
    otherwise change how the matrix products round, and so the sorting."""
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return cpu_share()


def thread_summary(n_jobs: int) -> str:
    """What a run got, for its first log line: torch's CPU threads now and the chunked stages' ``n_jobs``."""
    import torch

    return f"{torch.get_num_threads()} torch thread(s), {n_jobs} job(s) for the chunked stages"


@contextmanager
def blas_threads(num_threads: int | None):
    """Limit numpy's and scipy's BLAS (OpenBLAS, MKL) to ``num_threads`` threads inside the block, once for the
    whole block (None: no limit); the previous limits come back afterwards.

    The sorters' chunked stages run in threads with SpikeInterface's ``max_threads_per_worker`` off
    (:func:`~spikeinterface_elvisort.jobs.sorter_job_kwargs`) and this limit around the whole run instead.
    SpikeInterface applies ``max_threads_per_worker`` per chunk with ``threadpool_limits``, a process-wide setting,
    from every worker thread at once: one thread leaving its block restores the limit while another computes, so
    chunks ran with one or two BLAS threads at random, and OpenBLAS's matrix products round differently with each.
    The whitened traces, and from them the training set and the sorting, then changed from run to run with the same
    seed (MEArec dev_rec3: 0.942, 0.947, 0.995 and 0.996 in four runs)."""
    from threadpoolctl import threadpool_limits

    if num_threads is None:
        yield
        return
    load_thread_pools()
    with threadpool_limits(limits=int(num_threads), user_api="blas"):
        yield


def load_thread_pools() -> None:
    """Load the native libraries whose thread pools a run limits: SciPy's own OpenBLAS (scipy.linalg, beside
    numpy's) and scikit-learn's OpenMP runtime (its k-means). A limit reaches only the libraries loaded when it is
    set: SciPy's OpenBLAS, loaded later by the first Gaussian mixture, kept one thread per core, and ssae's
    clustering took 4x longer beside one busy process (2.1 s idle, 8.4 s)."""
    import scipy.linalg  # noqa: F401
    import sklearn.cluster  # noqa: F401


def default_torch_threads() -> int:
    """The torch threads a run gets on the CPU when the user chose none: all the cores of this process's share
    (:func:`cpu_share`) but one, at least one.

    A parallel region of torch (one per operation) waits for its slowest thread. When another program keeps one core
    busy, a thread that shares that core gets half of it, and every operation waits for it: with one thread per core,
    one CPU-bound process beside a sort on two cores made training 3.5x and the whole run 2.6x slower; with one
    core left over, the run took 1.2x its idle time. The chunked stages (a queue of chunks that the free threads
    take) and the batched passes of a trained model (:func:`inference_workers`) still use every core."""
    return max(cpu_share() - 1, 1)


def inference_workers() -> int:
    """Threads for a batched pass of a trained model on the CPU: the cores of this process's share divided by
    torch's threads per operation (each batch runs on one thread, whole: a busy core slows one batch, not all)."""
    import torch

    return max(cpu_share() // max(torch.get_num_threads(), 1), 1)


@contextmanager
def torch_threads(num_threads: int | None):
    """Let torch use ``num_threads`` CPU threads inside the block (None: :func:`default_torch_threads`, or fewer
    when torch was already set to fewer), and the OpenMP loops of other libraries (scikit-learn's k-means, which
    initialises its Gaussian mixtures) as many; the caller's process gets its own settings back afterwards."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    if num_threads is None:
        num_threads = min(previous, default_torch_threads())
    if num_threads != previous:
        torch.set_num_threads(num_threads)
    try:
        load_thread_pools()
        with threadpool_limits(limits=int(num_threads), user_api="openmp"):
            yield
    finally:
        torch.set_num_threads(previous)


MIN_OOM_BATCH_SIZE = 8  # below this, halving the batch no longer helps: move to the CPU


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error and the RuntimeErrors that report running out of memory."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def retry_on_out_of_memory(run, batch_size: int, device, what: str):
    """Call ``run(batch_size, device)``; when it runs out of memory, halve the batch and call it again, down to
    ``MIN_OOM_BATCH_SIZE``; on a GPU, then fall back to the CPU at the original batch size. Each retry warns.

    ``run`` must start its work afresh at each call (a training loop restores the weights it started from).

    Parameters
    ----------
    run : callable
        ``run(batch_size, device)``, returning the result.
    batch_size : int
        The batch size to start with.
    device : torch.device
    what : str
        What runs, for the warnings ("vae training").

    Raises
    ------
    RuntimeError
        When even the smallest batch on the CPU runs out of memory (the original error is chained).
    """
    import warnings

    import torch

    device = torch.device(device)
    current = int(batch_size)
    while True:
        try:
            return run(current, device)
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(error):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if current // 2 >= MIN_OOM_BATCH_SIZE:
                current //= 2
                warnings.warn(f"{what}: out of memory on {device}; retrying with batches of {current}",
                              RuntimeWarning, stacklevel=2)
            elif device.type != "cpu":
                device, current = torch.device("cpu"), int(batch_size)
                warnings.warn(f"{what}: out of memory on the GPU even with small batches; continuing on the CPU "
                              "(slower). Free GPU memory or lower train_batch_size to stay on the GPU.",
                              RuntimeWarning, stacklevel=2)
            else:
                raise RuntimeError(f"{what}: out of memory on the CPU even with batches of {current}: free memory "
                                   "or lower train_max_snippets") from error
