"""Dask clusters for the parallel parts of rptdose (cohorts, split Monte Carlo runs).

One machine is the default: :func:`local_cluster` starts a quiet
:class:`~distributed.LocalCluster` of worker processes; when the user has a cluster,
:func:`dask_client` connects to its scheduler instead. ``distributed`` is imported inside the
functions, so importing this module stays cheap (it is an optional, heavy dependency).

The worker processes of a local cluster start with ``OMP_NUM_THREADS=1`` (and the MKL/OpenBLAS
equivalents; dask's ``distributed.nanny.pre-spawn-environ``), so torch and numpy in each worker
use one thread and the workers do not oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dosimetry.errors import InputError

if TYPE_CHECKING:  # distributed is imported when a cluster is needed, not on import
    from distributed import Client, LocalCluster

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MEMORY_FRACTION",
    "MIN_WORKER_MEMORY",
    "dask_client",
    "default_workers",
    "local_cluster",
]

#: Share of the machine's memory given to the workers of a local cluster; the rest is left to
#: the scheduler, the client and the system.
MEMORY_FRACTION = 0.8
#: Memory a worker of a local cluster is given at least [bytes]. One study of the pipeline
#: peaks near 0.5 GiB resident on the small test phantom (3 timepoints, 6 mm CT voxels) and grows
#: with the grid; fewer workers with room are better than more that the nanny kills.
MIN_WORKER_MEMORY = 2 * 1024**3
#: Seconds to wait for a remote scheduler to answer.
CONNECT_TIMEOUT_S = 20


def _one_line(text: str) -> str:
    return " ".join(text.split())


def default_workers(n_tasks: int, min_worker_memory: int = MIN_WORKER_MEMORY) -> int:
    """Workers of a local cluster: one per task, at most one per core and per worker memory.

    Parameters
    ----------
    n_tasks : int
        Tasks to run (studies of a cohort, jobs of a split MC run).
    min_worker_memory : int
        Memory each worker should have at least [bytes] (default :data:`MIN_WORKER_MEMORY`);
        the workers share :data:`MEMORY_FRACTION` of the machine's memory.

    Returns
    -------
    int
        At least 1.
    """
    from distributed.system import MEMORY_LIMIT

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    by_memory = int(MEMORY_LIMIT * MEMORY_FRACTION // min_worker_memory)
    return max(1, min(n_tasks, cores or 1, by_memory))


def local_cluster(n_workers: int, threads_per_worker: int = 1,
                  min_worker_memory: int = MIN_WORKER_MEMORY) -> LocalCluster:
    """A quiet :class:`~distributed.LocalCluster` of worker processes.

    The workers share :data:`MEMORY_FRACTION` of the machine's memory equally (a warning says
    when that is below ``min_worker_memory`` each); no dashboard is served; dask's own log
    lines below ERROR are dropped. Each worker has a nanny that restarts it if it dies. Use it
    as a context manager so that it is closed.

    Parameters
    ----------
    n_workers : int
        Worker processes (≥ 1).
    threads_per_worker : int
        Threads of each worker (≥ 1); tasks run one per thread.
    min_worker_memory : int
        Memory a worker needs [bytes] (default :data:`MIN_WORKER_MEMORY`), for the warning.

    Raises
    ------
    InputError
        ``n_workers`` or ``threads_per_worker`` below 1.
    """
    from distributed import LocalCluster
    from distributed.system import MEMORY_LIMIT

    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise InputError(f"workers must be an integer ≥ 1, got {n_workers!r}")
    if isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int) \
            or threads_per_worker < 1:
        raise InputError(f"threads per worker must be an integer ≥ 1, got {threads_per_worker!r}")
    memory = int(MEMORY_LIMIT * MEMORY_FRACTION / n_workers)
    if memory < min_worker_memory:
        warnings.warn(f"{n_workers} workers get {memory / 1024**3:.1f} GiB of memory each; a "
                      f"task may need {min_worker_memory / 1024**3:.1f} GiB (a worker over its "
                      "limit is restarted and its task fails): use fewer workers",
                      stacklevel=2)
    return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                        processes=True, memory_limit=memory, silence_logs=logging.ERROR,
                        # No dashboard; the scheduler's small HTTP server takes a free port
                        # instead of 8787, which another cluster may hold.
                        dashboard_address=None,
                        scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"})


@contextlib.contextmanager
def dask_client(scheduler: str | None, n_workers: int = 1, threads_per_worker: int = 1,
                min_worker_memory: int = MIN_WORKER_MEMORY) -> Iterator[Client]:
    """A Dask client: to the scheduler at ``scheduler``, or to a local cluster started here.

    Parameters
    ----------
    scheduler : str or None
        Address of a running scheduler (e.g. ``tcp://10.0.0.5:8786``); None starts a
        :func:`local_cluster`, closed with the client when the context ends.
    n_workers, threads_per_worker, min_worker_memory
        For the local cluster (ignored with ``scheduler``).

    Yields
    ------
    distributed.Client
        Not set as dask's default client.

    Raises
    ------
    InputError
        The scheduler cannot be reached within :data:`CONNECT_TIMEOUT_S` seconds.
    """
    from distributed import Client

    if scheduler is None:
        with local_cluster(n_workers, threads_per_worker, min_worker_memory) as cluster, \
                Client(cluster, set_as_default=False) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {scheduler!r}: "
                         f"{_one_line(str(exc))}") from None
    with client:
        yield client
