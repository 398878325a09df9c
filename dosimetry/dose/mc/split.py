"""Monte Carlo runs split into independent jobs by seed, run on Dask, merged with uncertainty.

A long MC run of N decays is split into jobs (:func:`split_decays`): job *i* simulates nᵢ
decays (Σ nᵢ = N, as even as possible) with its own seed, derived reproducibly from one root
seed by :class:`numpy.random.SeedSequence` spawning (each child hashes the root seed with the
job's index; NumPy's recommended way to seed parallel streams, see its "Parallel Random Number
Generation" guide). Each job returns a :class:`PartialTally` — its estimate of a per-decay
quantity (mean energy deposited per decay and voxel, or any other per-decay mean) with the
standard error of that estimate — and :func:`merge_partials` combines them into the estimate of
the whole run (:class:`MergedTally`). The engine does not matter: our fast voxel MC
(:func:`simulate_job`, :func:`dose_mc_split`) and GATE jobs use the same jobs and the same merge.

:func:`run_jobs` runs a job function on a ``dask.distributed`` cluster: a
:func:`~dosimetry.distributed.local_cluster` of worker processes by default, or the scheduler at
``scheduler`` (an address), or — with ``scheduler="serial"`` (:data:`SERIAL`) — one after the
other in this process, without Dask. Large inputs shared by every job (the source and density
arrays) are sent to each worker once (``Client.scatter(..., broadcast=True)``), not with every
task. A task that raises is retried ``retries`` times; a task whose worker process dies is
rescheduled on another worker by the Dask scheduler (up to its ``allowed-failures``, 3 by
default); jobs whose shared inputs died with every worker holding them are submitted again with
the inputs sent again. A job that still fails makes the run incomplete:
:class:`IncompleteRunError`, or with ``allow_partial`` the merge of the finished jobs, flagged
``complete=False`` and announced by a warning. A partial merge is never reported as complete.

Reproducibility
    A job's result depends only on its :class:`SplitJob` (decays and seed) and the inputs, not
    on the worker that ran it or how often it was retried; the merge adds the jobs in the order
    of their index whatever the order they finished in. The same root seed therefore gives the
    same bits on a cluster, after a worker was killed, and serially in this process.
"""

from __future__ import annotations

import math
import numbers
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from dosimetry.errors import InputError, RptdoseError

if TYPE_CHECKING:  # heavy (SimpleITK, torch); imported where used
    import SimpleITK as sitk

    from dosimetry.dose.emissions import Emission, SourceSpectrum
    from dosimetry.dose.engines import DoseResult
    from dosimetry.materials.compositions import Material

__all__ = [
    "SERIAL",
    "IncompleteRunError",
    "MCJobInputs",
    "MergedTally",
    "PartialTally",
    "SplitJob",
    "dose_mc_split",
    "merge_partials",
    "run_jobs",
    "simulate_job",
    "split_decays",
]

#: ``scheduler`` value that runs the jobs one after the other in the calling process (no Dask).
SERIAL = "serial"
#: Seeds are drawn below 2³¹ so that every engine takes them (Geant4 seeds are 32-bit signed).
_SEED_LIMIT = 2**31


def _as_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class SplitJob:
    """One job of a split run.

    Attributes
    ----------
    index : int
        Position of the job in the run (0, 1, …); unique within a run.
    n_decays : int
        Decays the job simulates (≥ 1). An engine may round it up (our MC to a multiple of its
        batches); the decays actually simulated are in :attr:`PartialTally.n_decays`.
    seed : int
        Seed of the job's random stream, 0 ≤ seed < 2³¹.
    """

    index: int
    n_decays: int
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", _as_int("job index", self.index, 0))
        object.__setattr__(self, "n_decays", _as_int("job n_decays", self.n_decays, 1))
        seed = _as_int("job seed", self.seed, 0)
        if seed >= _SEED_LIMIT:
            raise InputError(f"job seed must be below 2**31, got {seed}")
        object.__setattr__(self, "seed", seed)


def split_decays(n_decays: int, n_jobs: int, seed: int) -> tuple[SplitJob, ...]:
    """Split ``n_decays`` into ``n_jobs`` jobs with independent seeds derived from ``seed``.

    Parameters
    ----------
    n_decays : int
        Decays of the whole run (≥ ``n_jobs``).
    n_jobs : int
        Jobs (≥ 1).
    seed : int
        Root seed (≥ 0).

    Returns
    -------
    tuple of SplitJob
        Indices 0 … n_jobs−1. The first ``n_decays mod n_jobs`` jobs get one decay more than the
        others, so the decays differ by at most one between jobs and sum to ``n_decays``
        exactly. Job *i*'s seed comes from the *i*-th child of
        ``numpy.random.SeedSequence(seed).spawn(n_jobs)`` (a 32-bit word of its state, reduced
        to 31 bits): the same ``seed`` always gives job *i* the same seed, and the children's
        words are statistically independent. Seeds are distinct within a run: a repeated
        31-bit value (probability ≈ n_jobs²/2³²) is replaced by the child's next state word,
        since two jobs with the same seed would repeat the same histories and the merged
        uncertainty would be too small.

    Raises
    ------
    InputError
        A value is not an integer in range, or there are fewer decays than jobs.
    """
    n = _as_int("n_decays", n_decays, 1)
    k = _as_int("n_jobs", n_jobs, 1)
    root = _as_int("seed", seed, 0)
    if n < k:
        raise InputError(f"n_decays ({n}) must be at least n_jobs ({k}): every job needs a decay")
    base, extra = divmod(n, k)
    used: set[int] = set()
    jobs = []
    for i, child in enumerate(np.random.SeedSequence(root).spawn(k)):
        words = 1
        while True:
            s = int(child.generate_state(words, dtype=np.uint32)[-1]) % _SEED_LIMIT
            if s not in used:
                break
            words += 1
        used.add(s)
        jobs.append(SplitJob(index=i, n_decays=base + (1 if i < extra else 0), seed=s))
    return tuple(jobs)


def _check_jobs(jobs: Iterable[SplitJob]) -> tuple[SplitJob, ...]:
    out = tuple(jobs)
    if not out:
        raise InputError("no jobs given")
    bad = [j for j in out if not isinstance(j, SplitJob)]
    if bad:
        raise InputError(f"jobs must be SplitJob, got {type(bad[0]).__name__}: {bad[0]!r}")
    seen: set[int] = set()
    for j in out:
        if j.index in seen:
            raise InputError(f"job index {j.index} appears more than once in the jobs")
        seen.add(j.index)
    return out


# ----------------------------------------------------------------------------------- tallies
@dataclass(frozen=True, eq=False)
class PartialTally:
    """One job's estimate of a per-decay quantity.

    Attributes
    ----------
    mean : numpy.ndarray
        (z, y, x) float64 estimate of the per-decay mean (e.g. energy deposited per decay in
        each voxel, MeV).
    sem : numpy.ndarray
        (z, y, x) float64 standard error of ``mean`` (same units), ≥ 0.
    n_decays : int
        Decays the estimate is made of (the merge weight).
    job : SplitJob
        The job that made it.
    metadata : dict
        Engine details of the job (energy balance, timing, worker, …); small, JSON-ready values.
    """

    mean: np.ndarray
    sem: np.ndarray
    n_decays: int
    job: SplitJob
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.job, SplitJob):
            raise InputError(f"PartialTally.job must be a SplitJob, got {self.job!r}")
        where = f"partial tally of job {self.job.index}"
        object.__setattr__(self, "n_decays", _as_int(f"{where}: n_decays", self.n_decays, 1))
        mean = np.asarray(self.mean, dtype=np.float64)
        sem = np.asarray(self.sem, dtype=np.float64)
        if mean.shape != sem.shape:
            raise InputError(f"{where}: mean {mean.shape} and sem {sem.shape} differ in shape")
        if not np.isfinite(mean).all():
            raise InputError(f"{where}: {int(np.count_nonzero(~np.isfinite(mean)))} mean values "
                             "are not finite")
        if not (np.isfinite(sem).all() and (sem >= 0).all()):
            raise InputError(f"{where}: standard errors must be finite and ≥ 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "sem", sem)


@dataclass(frozen=True, eq=False)
class MergedTally:
    """The merge of the partial tallies of a split run.

    Attributes
    ----------
    mean : numpy.ndarray
        (z, y, x) float64 per-decay mean over all merged decays.
    sem : numpy.ndarray
        (z, y, x) float64 its standard error.
    n_decays : int
        Decays of the merged jobs (Σ nᵢ over the jobs present, not over the jobs planned).
    n_jobs : int
        Jobs of the run (planned).
    jobs_done : tuple of int
        Indices of the merged jobs, ascending.
    complete : bool
        True only when every planned job is merged.
    metadata : dict
        ``jobs``: per merged job, its index, seed, decays asked for (``n_decays_requested``) and
        simulated (``n_decays``) and the job's own metadata; ``failures``: per failed job its
        index and cause; ``missing``: indices of planned jobs not merged. :func:`run_jobs` adds
        ``scheduler`` and ``n_workers``.
    """

    mean: np.ndarray
    sem: np.ndarray
    n_decays: int
    n_jobs: int
    jobs_done: tuple[int, ...]
    complete: bool
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def jobs_missing(self) -> tuple[int, ...]:
        """Indices of the planned jobs that are not merged."""
        return tuple(self.metadata.get("missing", ()))


class IncompleteRunError(RptdoseError):
    """Jobs of a split run failed and a partial result was not allowed.

    Attributes
    ----------
    failures : dict of int to str
        Failed job index → cause (error type and message).
    partial : MergedTally or None
        The merge of the jobs that did finish (``complete=False``), or None when none did.
    """

    def __init__(self, message: str, failures: Mapping[int, str] | None = None,
                 partial: MergedTally | None = None) -> None:
        super().__init__(message)
        self.failures: dict[int, str] = dict(sorted((failures or {}).items()))
        self.partial = partial


class _Merger:
    """Adds partial tallies in ascending job index, whatever order they arrive in.

    A partial is folded into the running sums as soon as every job of lower index has been
    folded or declared failed; until then it waits. The sums are therefore always formed in the
    same order (bit-identical results), and at most the out-of-order partials are held.
    """

    def __init__(self, expected: Sequence[SplitJob]) -> None:
        self.expected = {j.index: j for j in expected}
        self.order = sorted(self.expected)
        self.pos = 0
        self.waiting: dict[int, PartialTally] = {}
        self.failed: set[int] = set()
        self.done: list[int] = []
        self.jobs_meta: list[dict[str, Any]] = []
        self.shape: tuple[int, ...] | None = None
        self.sum: np.ndarray | None = None
        self.var: np.ndarray | None = None
        self.n = 0

    def check(self, p: PartialTally) -> None:
        """Raise InputError unless ``p`` can be merged (type, expected job, shape, repeat)."""
        if not isinstance(p, PartialTally):
            raise InputError(f"expected a PartialTally, got {type(p).__name__}")
        idx = p.job.index
        want = self.expected.get(idx)
        if want is None or want != p.job:
            raise InputError(f"partial tally of job {idx} (seed {p.job.seed}, {p.job.n_decays} "
                             "decays) is not one of the expected jobs")
        if idx in self.waiting or idx in self.done or idx in self.failed:
            raise InputError(f"job {idx} is given more than once")
        if self.shape is not None and p.mean.shape != self.shape:
            raise InputError(f"partial tally of job {idx} has shape {p.mean.shape}, the others "
                             f"{self.shape}")

    def add(self, p: PartialTally) -> None:
        self.check(p)
        if self.shape is None:
            self.shape = p.mean.shape
        self.waiting[p.job.index] = p
        self._advance()

    def fail(self, index: int) -> None:
        self.failed.add(index)
        self._advance()

    def _advance(self) -> None:
        while self.pos < len(self.order):
            idx = self.order[self.pos]
            if idx in self.waiting:
                self._fold(self.waiting.pop(idx))
            elif idx not in self.failed:
                return
            self.pos += 1

    def _fold(self, p: PartialTally) -> None:
        n = p.n_decays
        if self.sum is None:
            self.sum = p.mean * n
            self.var = np.square(p.sem * n)
        else:
            self.sum += p.mean * n
            self.var += np.square(p.sem * n)
        self.n += n
        self.done.append(p.job.index)
        self.jobs_meta.append({"index": p.job.index, "seed": p.job.seed,
                               "n_decays_requested": p.job.n_decays, "n_decays": n,
                               **p.metadata})

    def result(self, failures: Mapping[int, str] | None = None) -> MergedTally:
        for idx in sorted(self.waiting):  # only left when a lower job never came
            self._fold(self.waiting.pop(idx))
        if self.sum is None or self.var is None:
            raise InputError("no partial tallies to merge")
        mean = self.sum / self.n
        sem = np.sqrt(self.var) / self.n
        done = set(self.done)
        missing = [i for i in self.order if i not in done]
        meta: dict[str, Any] = {
            "jobs": sorted(self.jobs_meta, key=lambda m: m["index"]),
            "failures": [{"index": i, "cause": c} for i, c in sorted((failures or {}).items())],
            "missing": missing,
        }
        return MergedTally(mean=mean, sem=sem, n_decays=self.n, n_jobs=len(self.order),
                           jobs_done=tuple(sorted(self.done)), complete=not missing,
                           metadata=meta)


def merge_partials(partials: Iterable[PartialTally],
                   expected: Sequence[SplitJob] | None = None) -> MergedTally:
    """Merge independent jobs' estimates of a per-decay mean into the estimate of the whole run.

    Parameters
    ----------
    partials : iterable of PartialTally
        One per job; any order.
    expected : sequence of SplitJob, optional
        The jobs of the run (e.g. from :func:`split_decays`). Every partial must belong to one
        of them (same index, decays and seed), and the merge is ``complete`` only when all are
        present. Without it the partials are taken as the run's jobs: ``n_jobs`` is their
        number and ``complete`` is True when their indices are 0 … n−1 — a missing *last* job
        cannot be noticed then, so pass ``expected`` whenever you have it.

    Returns
    -------
    MergedTally

    Raises
    ------
    InputError
        No partials, a partial that is not a :class:`PartialTally`, shapes that differ, a job
        index given twice, or a job that is not in ``expected``.

    Notes
    -----
    Job *i* estimates the per-decay mean μ by mᵢ, the average over its nᵢ decays, with
    standard error sᵢ; the jobs use independent random streams, so the mᵢ are independent.
    With N = Σ nᵢ the merged estimate is the decay-weighted mean

        m = Σ (nᵢ/N) mᵢ,

    which is exactly the average over all N decays — the estimate a single run of N decays
    would give — and is unbiased for any split. Its variance, the weights being fixed numbers,
    is the sum of the weighted variances of independent terms (propagation of uncertainty,
    JCGM 100:2008 GUM eq. 10 without correlation terms):

        Var(m) = Σ (nᵢ/N)² Var(mᵢ)   ⇒   s = √(Σ (nᵢ/N)² sᵢ²).

    For jobs of equal size and equal per-decay variance σ², sᵢ² = σ²/nᵢ and s² = σ²/N, the
    standard error of a single run of N decays. The sᵢ come from the batch method inside each
    job (Walters, Kawrakow & Rogers 2002, Med Phys 29:2745, doi:10.1118/1.1517611): the merge
    is the batch method with the jobs' batches pooled. Inverse-variance weights (1/sᵢ²) are not
    used on purpose: in MC the estimated sᵢ is correlated with mᵢ in sparsely scored voxels,
    and weighting by it biases the mean.
    """
    items = list(partials)
    if not items:
        raise InputError("no partial tallies to merge")
    wrong = [p for p in items if not isinstance(p, PartialTally)]
    if wrong:
        raise InputError(f"expected PartialTally objects, got {type(wrong[0]).__name__}")
    if expected is None:
        jobs = [p.job for p in items]
        # repeated indices would make these jobs invalid; report them as the merger does
        seen: set[int] = set()
        for j in jobs:
            if j.index in seen:
                raise InputError(f"job {j.index} is given more than once")
            seen.add(j.index)
        merger = _Merger(jobs)
        complete_by_index = sorted(seen) == list(range(len(items)))
    else:
        merger = _Merger(_check_jobs(expected))
        complete_by_index = True
    for p in sorted(items, key=lambda p: p.job.index):
        merger.add(p)
    merged = merger.result()
    if not complete_by_index:
        merged = replace(merged, complete=False)
    return merged


# ----------------------------------------------------------------------------------- running
#: A job function: ``fn(job, shared) -> PartialTally``; module-level, so that it pickles.
JobFn = Callable[[SplitJob, Any], PartialTally]


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return SERIAL


def _run_one(fn: JobFn, job: SplitJob, shared: Any, where: str | None = None) -> Any:
    """Run ``fn`` for ``job`` (in a worker); note the worker and the job's wall time."""
    t0 = time.perf_counter()
    result = fn(job, shared)
    if isinstance(result, PartialTally):
        result = replace(result, metadata={**result.metadata,
                                           "worker": where or _worker_address(),
                                           "job_seconds": time.perf_counter() - t0})
    return result


def _cause(exc: BaseException) -> str:
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _collect(client: Any, fn: JobFn, jobs: Sequence[SplitJob], shared: Any, retries: int,
             timeout_s: float | None, name: str,
             end: Callable[..., None]) -> dict[int, int]:
    """Submit the jobs to ``client`` and call ``end(job, result)`` or ``end(job, cause=…)``.

    ``shared`` is scattered to every worker once. The scheduler reschedules the task of a
    worker that died; when the shared inputs were lost with every worker that held them, the
    scheduler cancels the tasks that need them: they are resubmitted (at most ``retries``
    times each) with the inputs scattered again. Returns job index → resubmissions (> 0 only).
    """
    from distributed import as_completed

    by_index = {j.index: j for j in jobs}
    sent = {"arg": None, "generation": 0}
    pending: dict[Any, tuple[int, int]] = {}
    resubmitted = dict.fromkeys(by_index, 0)
    queue = as_completed(loop=client.loop, timeout=timeout_s)

    def scatter() -> None:
        sent["arg"] = (client.scatter([shared], broadcast=True, hash=False)[0]
                       if shared is not None else None)
        sent["generation"] += 1

    def submit(job: SplitJob) -> None:
        future = client.submit(_run_one, fn, job, sent["arg"], retries=retries, pure=False,
                               key=f"rptdose-{name}-{job.index}-{uuid.uuid4().hex[:12]}")
        pending[future] = (job.index, sent["generation"])
        queue.add(future)

    scatter()
    for job in jobs:
        submit(job)
    try:
        for future in queue:
            idx, generation = pending.pop(future)
            job = by_index[idx]
            status = future.status
            if status == "cancelled" and resubmitted[idx] < retries:
                resubmitted[idx] += 1
                if generation == sent["generation"]:  # these inputs are gone: send them again
                    scatter()
                future.release()
                submit(job)
                continue
            try:
                if status == "finished":
                    end(job, future.result())
                elif status == "cancelled":
                    end(job, cause=f"cancelled by the Dask scheduler {resubmitted[idx] + 1} "
                                   "times (the workers holding its inputs were lost)")
                else:
                    exc = future.exception()
                    end(job, cause=_cause(exc) if exc is not None else f"task {status}")
            except Exception as exc:  # e.g. the result could not be fetched
                end(job, cause=_cause(exc))
            future.release()
    except TimeoutError:
        for future, (idx, _) in pending.items():
            future.cancel()
            end(by_index[idx], cause=f"not finished within {timeout_s:g} s")
    return {i: n for i, n in resubmitted.items() if n}


def run_jobs(
    fn: JobFn,
    jobs: Iterable[SplitJob],
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    retries: int = 2,
    allow_partial: bool = False,
    progress: Callable[[int, int], None] | None = None,
    shared: Any = None,
    threads_per_worker: int = 1,
    timeout_s: float | None = None,
    name: str = "job",
) -> MergedTally:
    """Run ``fn(job, shared)`` for every job, in parallel on Dask, and merge the results.

    Parameters
    ----------
    fn : callable(SplitJob, shared) -> PartialTally
        A module-level function (it is pickled by reference and runs in a worker process); it
        raises when the job fails. Its result must be a :class:`PartialTally` of that job.
    jobs : iterable of SplitJob
        The jobs of the run (:func:`split_decays`); indices unique.
    scheduler : str, optional
        Address of a running Dask scheduler (e.g. ``tcp://10.0.0.5:8786``); default: a local
        cluster of worker processes started here and closed at the end
        (:func:`dosimetry.distributed.local_cluster`); ``"serial"`` (:data:`SERIAL`): the jobs
        one after the other in this process, without Dask.
    n_workers : int, optional
        Workers of the local cluster (default :func:`dosimetry.distributed.default_workers`);
        not with a scheduler address.
    retries : int
        Times a job that raised is run again (≥ 0). A job whose worker died is rescheduled by
        the scheduler independently of this.
    allow_partial : bool
        When jobs still fail, return the merge of the others (``complete=False``, failures in
        its metadata, a warning issued) instead of raising.
    progress : callable(done, total), optional
        Called in this process each time a job ends (finished or failed for good).
    shared : object, optional
        Inputs common to all jobs, passed as ``fn``'s second argument; sent to every worker once
        (scattered with ``broadcast=True``), not pickled with each task.
    threads_per_worker : int
        Threads of each local worker (jobs run one per thread).
    timeout_s : float, optional
        Jobs not finished this many seconds after submission count as failed (they are
        cancelled). Default: no limit.
    name : str
        Label in the Dask task keys (``rptdose-<name>-<index>-<token>``).

    Returns
    -------
    MergedTally
        ``complete`` is True only when every job finished; ``metadata`` as for
        :func:`merge_partials` plus ``scheduler`` (``"local"``, the address or ``"serial"``),
        ``n_workers`` (local cluster only) and ``resubmitted`` (jobs submitted again after
        their shared inputs were lost, with the number of times).

    Raises
    ------
    InputError
        Invalid jobs or options, or the scheduler cannot be reached.
    IncompleteRunError
        A job failed after its retries (and ``allow_partial`` is False), or no job finished at
        all. The message names every failed job and its cause.

    Notes
    -----
    The shared inputs live in the workers' memory. If every worker holding them dies (a
    one-worker cluster, or all at once), the scheduler cancels the jobs that need them; those
    jobs are submitted again, at most ``retries`` times each, with the inputs sent again.
    """
    jobs = _check_jobs(jobs)
    if not callable(fn):
        raise InputError(f"fn must be callable, got {fn!r}")
    retries = _as_int("retries", retries, 0)
    if n_workers is not None:
        n_workers = _as_int("n_workers", n_workers, 1)
    threads_per_worker = _as_int("threads_per_worker", threads_per_worker, 1)
    if timeout_s is not None and not (isinstance(timeout_s, numbers.Real) and timeout_s > 0):
        raise InputError(f"timeout_s must be a number > 0, got {timeout_s!r}")
    if scheduler is not None and not (isinstance(scheduler, str) and scheduler.strip()):
        raise InputError(f"scheduler must be an address or {SERIAL!r}, got {scheduler!r}")
    if scheduler == SERIAL and n_workers is not None:
        raise InputError(f"scheduler {SERIAL!r} runs the jobs in this process; give no number "
                         f"of workers (got {n_workers})")
    if scheduler is not None and n_workers is not None:
        raise InputError(f"the number of workers is set by the cluster at {scheduler}, not "
                         "here; give either a scheduler or a number of workers")

    total = len(jobs)
    merger = _Merger(jobs)
    failures: dict[int, str] = {}
    ended = 0

    def end(job: SplitJob, result: Any = None, cause: str | None = None) -> None:
        nonlocal ended
        if cause is None:
            if not isinstance(result, PartialTally):
                cause = f"the job function returned {type(result).__name__}, not a PartialTally"
            else:
                try:
                    merger.add(result)
                except InputError as exc:
                    cause = f"InputError: {exc}"
        if cause is not None:
            failures[job.index] = cause
            merger.fail(job.index)
        ended += 1
        if progress is not None:
            progress(ended, total)

    where: str
    workers: int | None = None
    resubmitted: dict[int, int] = {}
    if scheduler == SERIAL:
        where = SERIAL
        deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
        for job in jobs:
            if deadline is not None and time.monotonic() > deadline:
                end(job, cause=f"not finished within {timeout_s:g} s")
                continue
            for attempt in range(retries + 1):
                try:
                    result = _run_one(fn, job, shared, SERIAL)
                except Exception as exc:
                    if attempt == retries:
                        end(job, cause=_cause(exc))
                else:
                    end(job, result)
                    break
    else:
        from dosimetry.distributed import dask_client, default_workers

        where = scheduler or "local"
        workers = None if scheduler is not None else (n_workers or default_workers(total))
        with dask_client(scheduler, workers or 1, threads_per_worker) as client:
            resubmitted = _collect(client, fn, jobs, shared, retries, timeout_s, name, end)

    run_meta = {"scheduler": where, "n_workers": workers,
                "resubmitted": [{"index": i, "times": n} for i, n in sorted(resubmitted.items())]}
    done = len(merger.done) + len(merger.waiting)
    if done == 0:
        raise IncompleteRunError(
            f"all {total} jobs failed: {_failure_list(failures)}", failures, None)
    merged = merger.result(failures)
    merged = replace(merged, metadata={**merged.metadata, **run_meta})
    if failures:
        message = (f"{len(failures)} of {total} jobs failed: {_failure_list(failures)}")
        if not allow_partial:
            raise IncompleteRunError(
                f"{message}; the {done} finished jobs ({merged.n_decays} decays) are not a "
                "complete run (allow_partial to use them)", failures, merged)
        warnings.warn(f"incomplete run: {message}; the result is the merge of the other {done} "
                      f"jobs ({merged.n_decays} decays) and is marked incomplete", UserWarning,
                      stacklevel=2)
    return merged


def _failure_list(failures: Mapping[int, str]) -> str:
    return "; ".join(f"job {i}: {c}" for i, c in sorted(failures.items()))


# ----------------------------------------------------------------------------------- fast MC
@dataclass(frozen=True, eq=False)
class MCJobInputs:
    """What every job of a split fast-MC run needs (sent to each worker once).

    Attributes
    ----------
    source : numpy.ndarray
        (z, y, x) float64 source weights (TIA, Bq·s per voxel; only relative values matter).
    material_index : numpy.ndarray
        (z, y, x) int index into ``materials``.
    density_gcm3 : numpy.ndarray
        (z, y, x) float32 densities (g/cm³).
    materials : tuple of Material
    spacing_xyz_mm : tuple of float
        Voxel size along x, y, z (mm).
    spectrum : SourceSpectrum
    n_batches : int
        Statistical batches per job (see :class:`~dosimetry.dose.mc.engine.MCSettings`).
    device : str
        ``cpu``, ``cuda`` or ``cuda:N`` (in every worker).
    """

    source: np.ndarray
    material_index: np.ndarray
    density_gcm3: np.ndarray
    materials: tuple[Material, ...]
    spacing_xyz_mm: tuple[float, float, float]
    spectrum: SourceSpectrum
    n_batches: int = 20
    device: str = "cpu"


def simulate_job(job: SplitJob, inputs: MCJobInputs) -> PartialTally:
    """One job of a split fast-MC run: :func:`~dosimetry.dose.mc.engine.simulate` with its seed.

    Returns
    -------
    PartialTally
        Mean energy deposited per decay (MeV) per voxel and its batch-method standard error;
        ``n_decays`` is the decays simulated (``job.n_decays`` rounded up to a multiple of
        ``n_batches``); metadata: ``emitted_mev``, ``deposited_mev``, ``escaped_mev`` (totals
        of the job), ``n_batches`` and ``transport_time_s``.
    """
    from dosimetry.dose.mc.engine import MCSettings, simulate

    settings = MCSettings(n_decays=job.n_decays, seed=job.seed, device=inputs.device,
                          n_batches=inputs.n_batches)
    t = simulate(inputs.source, inputs.material_index, inputs.density_gcm3, inputs.materials,
                 inputs.spacing_xyz_mm, inputs.spectrum, settings)
    return PartialTally(mean=t.energy_mev, sem=t.energy_sem_mev, n_decays=t.n_decays, job=job,
                        metadata={"emitted_mev": t.emitted_mev, "deposited_mev": t.deposited_mev,
                                  "escaped_mev": t.escaped_mev, "n_batches": t.n_batches,
                                  "transport_time_s": t.elapsed_s})


def dose_mc_split(
    tia: sitk.Image,
    nuclide: str,
    ct: sitk.Image | None = None,
    *,
    n_decays: int,
    n_jobs: int,
    seed: int = 0,
    scheduler: str | None = None,
    n_workers: int | None = None,
    emissions: str | Iterable[Emission | str] | None = None,
    n_batches: int = 20,
    device: str = "cpu",
    allow_partial: bool = False,
    progress: Callable[[int, int], None] | None = None,
    material: Material | str | None = None,
    retries: int = 2,
    timeout_s: float | None = None,
) -> DoseResult:
    """Fast-MC dose (:func:`~dosimetry.dose.engines.dose_mc`) split into jobs run on Dask.

    The inputs are prepared once as for ``dose_mc`` (same TIA checks, CT → Schneider materials
    and densities, emission selection), the decays are split into ``n_jobs`` jobs with seeds
    derived from ``seed`` (:func:`split_decays`), each job runs
    :func:`~dosimetry.dose.mc.engine.simulate` (:func:`simulate_job`), and the per-decay
    energies are merged (:func:`merge_partials`) and converted to Gy with the total TIA.

    Parameters
    ----------
    tia : SimpleITK.Image
        Decays per voxel (Bq·s); its shape is the source distribution, its sum scales the dose.
    nuclide : str
    ct : SimpleITK.Image, optional
        CT (HU); without it the grid is homogeneous ``material``.
    n_decays : int
        Decays of the whole run (each job's are rounded up to a multiple of ``n_batches``).
    n_jobs : int
        Jobs (≥ 1, ≤ ``n_decays``).
    seed : int
        Root seed. The result depends on ``seed``, ``n_decays``, ``n_jobs`` and ``n_batches``,
        not on the scheduler or the workers; it differs from ``dose_mc`` with the same seed
        (the jobs' seeds are derived from it).
    scheduler, n_workers, allow_partial, retries, timeout_s
        See :func:`run_jobs` (``scheduler="serial"`` runs the jobs in this process).
    emissions : optional
        Selection (default all).
    n_batches : int
        Statistical batches per job.
    device : str
        ``cpu``, ``cuda`` or ``cuda:N`` for each job.
    progress : callable(done, total), optional
        Called as jobs end (jobs, not decays).
    material : Material or str, optional
        Medium when no CT is given (default
        :data:`dosimetry.dose.engines.DEFAULT_MATERIAL`, ICRU soft tissue).

    Returns
    -------
    DoseResult
        Engine ``mc``; dose (Gy) and its statistical standard uncertainty (Gy) from the merged
        standard errors. ``metadata`` adds to ``dose_mc``'s: ``n_jobs``, ``jobs_done``,
        ``complete``, ``failures``, ``resubmitted``, ``jobs`` (index, seed, decays, worker,
        time of each merged job), ``scheduler``, ``n_workers``, ``n_decays_requested`` and the
        energy balance of the merged jobs.

    Raises
    ------
    InputError
        Bad inputs or options (checked before any cluster starts).
    IncompleteRunError
        A job failed and ``allow_partial`` is False.
    """
    from dosimetry.dose.engines import (
        DEFAULT_MATERIAL,
        DoseEngine,
        DoseResult,
        _mc_inputs,
        _to_image,
    )
    from dosimetry.dose.mc.engine import MCSettings, energy_to_dose_gy

    jobs = split_decays(n_decays, n_jobs, seed)
    # the settings every job will use, checked here rather than in n_jobs workers
    MCSettings(n_decays=jobs[0].n_decays, seed=jobs[0].seed, device=device, n_batches=n_batches)
    p = _mc_inputs(tia, nuclide, ct, emissions, DEFAULT_MATERIAL if material is None else material)
    inputs = MCJobInputs(source=p.source, material_index=p.material_index,
                         density_gcm3=p.density, materials=p.materials,
                         spacing_xyz_mm=p.spacing, spectrum=p.spectrum, n_batches=n_batches,
                         device=device)
    t0 = time.perf_counter()
    merged = run_jobs(simulate_job, jobs, scheduler=scheduler, n_workers=n_workers,
                      retries=retries, allow_partial=allow_partial, progress=progress,
                      shared=inputs, timeout_s=timeout_s, name="mc")
    wall = time.perf_counter() - t0
    total = p.total_tia_bq_s
    dose = energy_to_dose_gy(merged.mean, p.density, p.spacing) * total
    sigma = energy_to_dose_gy(merged.sem, p.density, p.spacing) * total
    done = merged.metadata["jobs"]
    n = merged.n_decays
    meta = dict(p.metadata)
    meta.update({
        "n_decays": n,
        "n_decays_requested": int(n_decays),
        "n_batches": int(n_batches),
        "seed": int(seed),
        "device": str(device),
        "scheduler": merged.metadata["scheduler"],
        "n_workers": merged.metadata["n_workers"],
        "n_jobs": merged.n_jobs,
        "jobs_done": list(merged.jobs_done),
        "complete": merged.complete,
        "failures": merged.metadata["failures"],
        "resubmitted": merged.metadata["resubmitted"],
        "jobs": [{k: m[k] for k in ("index", "seed", "n_decays_requested", "n_decays",
                                    "worker", "job_seconds", "transport_time_s")}
                 for m in done],
        "total_tia_bq_s": total,
        "transport_time_s": math.fsum(m["transport_time_s"] for m in done),
        "wall_time_s": wall,
        "decays_per_second": n / wall if wall > 0 else float("inf"),
        "energy_balance_mev_per_decay": {
            key: math.fsum(m[f"{key}_mev"] for m in done) / n
            for key in ("emitted", "deposited", "escaped")
        },
    })
    return DoseResult(_to_image(dose, tia), _to_image(sigma, tia), DoseEngine.MC,
                      p.spectrum.nuclide, p.spectrum.emissions, meta)
