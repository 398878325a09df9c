"""Split Monte Carlo runs: job splitting, the merge's statistics, Dask execution and failures.

Real components throughout: the fast MC (:func:`simulate_job`), real ``LocalCluster`` worker
processes, a real SIGKILL. All seeds are fixed, so every statistical verdict below is the same on
every run; the tolerances say how likely a correct code would be to fail them with another seed.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.distributed import local_cluster
from dosimetry.dose.emissions import source_spectrum
from dosimetry.dose.engines import DoseEngine, dose_mc
from dosimetry.dose.mc.split import (
    SERIAL,
    IncompleteRunError,
    MCJobInputs,
    PartialTally,
    SplitJob,
    dose_mc_split,
    merge_partials,
    run_jobs,
    simulate_job,
    split_decays,
)
from dosimetry.errors import InputError, RptdoseError
from dosimetry.materials import get_material

SOFT = get_material("soft-tissue-icru")
#: Seconds a "slow" job sleeps before its (short) simulation: long enough to kill its worker
#: mid-job, without taking CPU from the other people on this 2-core machine.
SLOW_S = 3.0
#: Index of the job that always fails in the failure tests.
BAD_JOB = 2


def _image(arr, spacing=(3.0, 3.0, 3.0), origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _tia(n=16):
    """A 16³ TIA map (3 mm voxels): an 8³ active cube with a 4× hotter 4³ core (Bq·s)."""
    a = np.zeros((n, n, n))
    a[4:12, 4:12, 4:12] = 1e6
    a[6:10, 6:10, 6:10] = 4e6
    return a


def _small_inputs(n=10, n_batches=5):
    """Shared inputs of a tiny homogeneous Lu-177 fast-MC job (fractions of a second each)."""
    src = np.zeros((n, n, n))
    src[3:7, 3:7, 3:7] = 1.0
    return MCJobInputs(source=src, material_index=np.zeros(src.shape, dtype=np.int16),
                       density_gcm3=np.full(src.shape, SOFT.density_gcm3, dtype=np.float32),
                       materials=(SOFT,), spacing_xyz_mm=(4.0, 4.0, 4.0),
                       spectrum=source_spectrum("Lu-177", "all"), n_batches=n_batches)


# Job functions run in worker processes. They are module-level (as run_jobs asks), and the
# cluster fixtures register this module to be pickled by value, so the workers need not import
# this file (tests/dosimetry/dose is not a package).
def slow_job(job, inputs):
    """:func:`simulate_job` after a pause: a job that lasts a few seconds."""
    time.sleep(SLOW_S)
    return simulate_job(job, inputs)


def failing_job(job, inputs):
    """:func:`simulate_job`, except that job ``BAD_JOB`` raises every time it is tried."""
    if job.index == BAD_JOB:
        raise RuntimeError(f"detector on fire in job {job.index}")
    return simulate_job(job, inputs)


def sleepy_job(job, shared):
    """A job without torch: a pause, then a tally made from ``shared`` (see ``_sleepy_tally``)."""
    time.sleep(1.5)
    return _sleepy_tally(job, shared)


def _sleepy_tally(job, shared):
    return PartialTally(mean=shared * (job.index + 1), sem=0.1 * shared, n_decays=job.n_decays,
                        job=job)


def _executing(dask_worker):
    """Keys of the tasks a worker is executing right now (run on the worker by client.run)."""
    return [str(ts.key) for ts in dask_worker.state.executing]


@pytest.fixture(scope="module")
def _pickled_by_value():
    """Send this module's functions to the workers by value while its tests run."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def scheduler(_pickled_by_value):
    """Address of a local cluster of 2 single-thread worker processes, shared by the module."""
    with local_cluster(n_workers=2, threads_per_worker=1) as cluster:
        yield cluster.scheduler_address


# ----------------------------------------------------------------------------------- split_decays
@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 5), (10, 3), (1000, 7), (10**9 + 7, 16)])
def test_split_decays_sums_exactly_evenly_with_distinct_reproducible_seeds(n, k):
    jobs = split_decays(n, k, seed=42)
    assert [j.index for j in jobs] == list(range(k))
    assert sum(j.n_decays for j in jobs) == n  # exact, no rounding
    sizes = [j.n_decays for j in jobs]
    assert max(sizes) - min(sizes) <= 1  # as even as integers allow
    assert sizes == sorted(sizes, reverse=True)  # the remainder goes to the first jobs
    seeds = [j.seed for j in jobs]
    assert len(set(seeds)) == k and all(0 <= s < 2**31 for s in seeds)
    assert split_decays(n, k, seed=42) == jobs  # reproducible
    if k > 1:  # another root seed gives other streams
        assert not set(seeds) & {j.seed for j in split_decays(n, k, seed=43)}


def test_split_decays_seeds_distinct_for_many_jobs():
    # 20 000 31-bit draws collide with probability ≈ 1 − exp(−k²/2³²) ≈ 9 %: the split must
    # still hand out distinct seeds (a repeat would repeat histories)
    jobs = split_decays(10**6, 20_000, seed=7)
    assert len({j.seed for j in jobs}) == 20_000


@pytest.mark.parametrize(("args", "message"), [
    ((0, 1, 0), r"n_decays must be an integer ≥ 1, got 0"),
    ((10.5, 2, 0), r"n_decays must be an integer ≥ 1, got 10\.5"),
    ((True, 1, 0), r"n_decays must be an integer ≥ 1, got True"),
    ((10, 0, 0), r"n_jobs must be an integer ≥ 1, got 0"),
    ((10, 2, -1), r"seed must be an integer ≥ 0, got -1"),
    ((3, 4, 0), r"n_decays \(3\) must be at least n_jobs \(4\): every job needs a decay"),
])
def test_split_decays_rejects_bad_input(args, message):
    with pytest.raises(InputError, match=message):
        split_decays(*args)


def test_split_job_validates_its_fields():
    with pytest.raises(InputError, match=r"job seed must be below 2\*\*31, got 2147483648"):
        SplitJob(index=0, n_decays=1, seed=2**31)
    with pytest.raises(InputError, match=r"job n_decays must be an integer ≥ 1, got 0"):
        SplitJob(index=0, n_decays=0, seed=1)
    assert SplitJob(np.int64(3), np.int32(5), np.uint32(9)) == SplitJob(3, 5, 9)


# ----------------------------------------------------------------------------------- merge maths
def _gaussian_partials(rng, truth, sigma, sizes):
    """Job i's estimate of ``truth``: Gaussian with its exact standard error σ/√nᵢ."""
    jobs = [SplitJob(i, n, 1000 + i) for i, n in enumerate(sizes)]
    return jobs, [PartialTally(mean=truth + rng.standard_normal(truth.shape) * sigma / math.sqrt(n),
                               sem=np.full(truth.shape, sigma / math.sqrt(n)), n_decays=n, job=j)
                  for j, n in zip(jobs, sizes, strict=True)]


def test_merge_formula_and_statistics_on_gaussian_estimates_with_unequal_sizes():
    rng = np.random.default_rng(2024)
    sizes = [100, 400, 1500, 8000]  # unequal nᵢ: the weights nᵢ/N matter
    truth = rng.uniform(1.0, 5.0, (20, 30, 40))  # 24 000 voxels = independent replicas
    sigma = 2.0  # per-decay standard deviation
    jobs, parts = _gaussian_partials(rng, truth, sigma, sizes)
    m = merge_partials(parts[::-1], expected=jobs)  # any order in
    big_n = sum(sizes)
    # the formulas, to float rounding
    expect_mean = sum(n * p.mean for n, p in zip(sizes, parts, strict=True)) / big_n
    expect_sem = np.sqrt(sum((n / big_n) ** 2 * p.sem ** 2 for n, p in zip(sizes, parts,
                                                                             strict=True)))
    np.testing.assert_allclose(m.mean, expect_mean, rtol=1e-13)
    np.testing.assert_allclose(m.sem, expect_sem, rtol=1e-13)
    # with exact sᵢ = σ/√nᵢ the merged standard error is that of one run of N decays
    np.testing.assert_allclose(m.sem, sigma / math.sqrt(big_n), rtol=1e-13)
    assert (m.n_decays, m.n_jobs, m.jobs_done, m.complete) == (big_n, 4, (0, 1, 2, 3), True)
    # statistics: z = (m − truth)/s is N(0, 1) in each of M = 24 000 independent voxels; its
    # sample mean has sd 1/√M = 0.0065 and its sample sd has sd 1/√(2M) = 0.0046: 5σ bounds
    z = ((m.mean - truth) / m.sem).ravel()
    assert abs(z.mean()) < 5 / math.sqrt(z.size)
    assert abs(z.std() - 1.0) < 5 / math.sqrt(2 * z.size)
    # the unweighted mean of the jobs, by contrast, has sd √(Σ σ²/nᵢ)/4 = 0.058 against
    # σ/√N = 0.020: its z-spread (2.9, known to ±0.02) fails the check above by far
    naive = np.mean([p.mean for p in parts], axis=0)
    assert ((naive - truth) / m.sem).std() > 2.5


def test_merge_equals_the_average_over_all_decays_and_its_batch_error():
    # real per-decay samples: the merge of job means is exactly the mean of all samples
    rng = np.random.default_rng(5)
    sizes = [10, 40, 150, 800]
    samples = [rng.exponential(2.0, (n, 50)) for n in sizes]  # skewed, like energy deposits
    parts = [PartialTally(mean=x.mean(axis=0), sem=x.std(axis=0, ddof=1) / math.sqrt(len(x)),
                          n_decays=len(x), job=SplitJob(i, len(x), i))
             for i, x in enumerate(samples)]
    m = merge_partials(parts)
    allx = np.concatenate(samples)
    np.testing.assert_allclose(m.mean, allx.mean(axis=0), rtol=1e-13)
    # and its standard error agrees with the all-sample estimate sd/√N (both estimate the same
    # σ/√N; the per-job sample variances differ from the pooled one by their own noise: over
    # 50 voxels, the rms ratio is within 5 %, several times its ≈ 1 % sampling sd here)
    ref = allx.std(axis=0, ddof=1) / math.sqrt(len(allx))
    assert math.sqrt(np.mean(m.sem**2) / np.mean(ref**2)) == pytest.approx(1.0, abs=0.05)


def test_merge_is_bit_identical_in_any_order():
    rng = np.random.default_rng(3)
    jobs, parts = _gaussian_partials(rng, np.ones((4, 5, 6)), 1.0, [7, 3, 11, 5, 9])
    ref = merge_partials(parts, expected=jobs)
    for order in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        m = merge_partials([parts[i] for i in order], expected=jobs)
        assert np.array_equal(m.mean, ref.mean) and np.array_equal(m.sem, ref.sem)


def test_merge_checks_and_completeness():
    rng = np.random.default_rng(0)
    jobs, parts = _gaussian_partials(rng, np.ones((2, 3, 4)), 1.0, [10, 20, 30])
    with pytest.raises(InputError, match="no partial tallies to merge"):
        merge_partials([])
    with pytest.raises(InputError, match="job 1 is given more than once"):
        merge_partials([parts[0], parts[1], parts[1]], expected=jobs)
    with pytest.raises(InputError, match="job 1 is given more than once"):
        merge_partials([parts[1], parts[1]])
    odd = PartialTally(mean=np.ones((2, 3, 5)), sem=np.ones((2, 3, 5)), n_decays=5,
                       job=jobs[2])
    with pytest.raises(InputError, match=r"job 2 has shape \(2, 3, 5\), the others \(2, 3, 4\)"):
        merge_partials([parts[0], odd], expected=jobs)
    stranger = PartialTally(mean=np.ones((2, 3, 4)), sem=np.ones((2, 3, 4)), n_decays=5,
                            job=SplitJob(1, 20, 999))  # index of job 1, another seed
    with pytest.raises(InputError, match=r"job 1 \(seed 999, 20 decays\) is not one of the "
                                         "expected jobs"):
        merge_partials([parts[0], stranger], expected=jobs)
    with pytest.raises(InputError, match="expected PartialTally objects, got dict"):
        merge_partials([{"mean": 1}])
    with pytest.raises(InputError, match=r"job 0: mean \(2,\) and sem \(3,\) differ in shape"):
        PartialTally(mean=np.ones(2), sem=np.ones(3), n_decays=1, job=jobs[0])
    with pytest.raises(InputError, match="job 0: standard errors must be finite and ≥ 0"):
        PartialTally(mean=np.ones(2), sem=-np.ones(2), n_decays=1, job=jobs[0])

    part = merge_partials([parts[0], parts[2]], expected=jobs)  # job 1 missing
    assert not part.complete and part.jobs_done == (0, 2) and part.jobs_missing == (1,)
    assert part.n_jobs == 3 and part.n_decays == 40
    # without `expected`, indices 0 … n−1 are taken as the whole run, a gap is not
    assert merge_partials(parts[:2]).complete
    assert not merge_partials([parts[0], parts[2]]).complete


# ----------------------------------------------------------------------------------- fast MC
@pytest.mark.mc
def test_split_fast_mc_equals_one_run_of_the_same_decays():
    img = _image(_tia())
    n = 80_000
    single = dose_mc(img, "Lu-177", n_decays=n, seed=100, n_batches=20)
    split = dose_mc_split(img, "Lu-177", n_decays=n, n_jobs=4, seed=200, scheduler=SERIAL,
                          n_batches=20)
    assert split.engine is DoseEngine.MC and split.metadata["complete"]
    assert split.metadata["n_decays"] == single.metadata["n_decays"] == n
    assert [j["n_decays"] for j in split.metadata["jobs"]] == [n // 4] * 4
    d1, s1, d2, s2 = (sitk.GetArrayFromImage(x).astype(np.float64)
                      for x in (single.dose, single.uncertainty, split.dose, split.uncertainty))
    # voxels with meaningful dose: the active region, chosen from the TIA (not from either
    # run's σ, which would favour voxels whose σ happens to be underestimated in that run)
    mask = _tia() > 0
    assert mask.sum() == 512 and np.all(s1[mask] < 0.25 * d1[mask])
    z = (d2[mask] - d1[mask]) / np.sqrt(s1[mask] ** 2 + s2[mask] ** 2)
    # σ₁ has 19 degrees of freedom (20 batches), σ₂ 76 (4 jobs × 20 batches): z is Student-t
    # with ≈ 60 effective d.o.f. (Welch–Satterthwaite), P(|z| < 2) = 0.950. Lu-177 β ranges
    # (< 2 mm) are short against the 3 mm voxels, so the 512 z-values are nearly independent:
    # the fraction has sd √(0.05·0.95/512) ≈ 0.01. Bounds [0.90, 0.99] are 5σ below / 4σ above:
    # too low means a biased merge or a σ too small, too high a σ too large.
    frac = float(np.mean(np.abs(z) < 2))
    assert 0.90 <= frac <= 0.99, frac
    # no systematic shift: the mean of 512 nearly independent unit-variance z has sd 0.044
    assert abs(float(z.mean())) < 0.25
    # merged σ ≈ single-run σ (same N): each voxel's σ² estimate has a relative sd of
    # √(2/19) ≈ 0.32 (single) and √(2/76) ≈ 0.16 (merged); over 512 voxels the rms ratio has
    # a sd ≈ 1 %, so ±10 % is a 5σ band (the split's σ is not √(jobs) too small or too large)
    ratio = math.sqrt(np.mean(s2[mask] ** 2) / np.mean(s1[mask] ** 2))
    assert 0.9 < ratio < 1.1, ratio
    bal = split.metadata["energy_balance_mev_per_decay"]
    assert bal["deposited"] + bal["escaped"] == pytest.approx(bal["emitted"], rel=1e-9)


@pytest.mark.mc
def test_run_jobs_serial_equals_merge_of_the_jobs_and_reports_progress():
    inputs = _small_inputs()
    jobs = split_decays(6000, 3, seed=1)
    seen = []
    m = run_jobs(simulate_job, jobs, scheduler=SERIAL, shared=inputs,
                 progress=lambda done, total: seen.append((done, total)))
    ref = merge_partials([simulate_job(j, inputs) for j in jobs], expected=jobs)
    assert np.array_equal(m.mean, ref.mean) and np.array_equal(m.sem, ref.sem)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert m.complete and m.metadata["scheduler"] == SERIAL
    assert [j["worker"] for j in m.metadata["jobs"]] == [SERIAL] * 3


def test_run_jobs_rejects_bad_options():
    jobs = split_decays(10, 2, seed=0)
    with pytest.raises(InputError, match="give either a scheduler or a number of workers"):
        run_jobs(simulate_job, jobs, scheduler="tcp://127.0.0.1:1", n_workers=2)
    with pytest.raises(InputError, match=r"scheduler 'serial' runs the jobs in this process; "
                                         r"give no number of workers \(got 2\)"):
        run_jobs(simulate_job, jobs, scheduler=SERIAL, n_workers=2)
    with pytest.raises(InputError, match="retries must be an integer ≥ 0, got -1"):
        run_jobs(simulate_job, jobs, scheduler=SERIAL, retries=-1)
    with pytest.raises(InputError, match="no jobs given"):
        run_jobs(simulate_job, [], scheduler=SERIAL)
    with pytest.raises(InputError, match="job index 0 appears more than once"):
        run_jobs(simulate_job, [jobs[0], jobs[0]], scheduler=SERIAL)
    with pytest.raises(InputError, match=r"timeout_s must be a number > 0, got 0"):
        run_jobs(simulate_job, jobs, scheduler=SERIAL, timeout_s=0)


def test_run_jobs_retries_a_failing_job_and_rejects_a_wrong_result():
    inputs = _small_inputs(n=6, n_batches=2)
    jobs = split_decays(40, 2, seed=3)
    attempts: dict[int, int] = {}

    def flaky(job, shared):  # in-process: a closure is fine
        attempts[job.index] = attempts.get(job.index, 0) + 1
        if job.index == 1 and attempts[1] == 1:
            raise OSError("transient")
        return simulate_job(job, shared)

    assert run_jobs(flaky, jobs, scheduler=SERIAL, shared=inputs, retries=1).complete
    assert attempts == {0: 1, 1: 2}
    attempts.clear()
    with pytest.raises(IncompleteRunError, match=r"1 of 2 jobs failed: job 1: OSError: transient"):
        run_jobs(flaky, jobs, scheduler=SERIAL, shared=inputs, retries=0)
    with pytest.raises(IncompleteRunError, match=r"all 2 jobs failed: job 0: the job function "
                                                 r"returned dict, not a PartialTally"):
        run_jobs(lambda job, shared: {}, jobs, scheduler=SERIAL)


def test_imports_stay_cheap():
    # importing our modules must not import Dask or torch (they load when a run starts)
    code = ("import sys, dosimetry.distributed, dosimetry.dose.mc.split, "
            "planning.workflow.cohort; "
            "print(sorted(m for m in ('distributed', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.getcwd())
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------- on Dask
def _ct_phantom(n=12):
    """CT (HU) with a lung slab and a bone slab beside an active soft-tissue cube, 4 mm voxels."""
    hu = np.zeros((n, n, n))
    hu[:, :, :3] = -700.0
    hu[:, :, 9:] = 1000.0
    tia = np.zeros((n, n, n))
    tia[3:9, 3:9, 3:9] = 2e6
    return _image(tia, spacing=(4.0, 4.0, 4.0)), _image(hu, spacing=(4.0, 4.0, 4.0))


@pytest.mark.mc
def test_dose_mc_split_on_a_cluster_is_bit_identical_to_serial(scheduler):
    tia, ct = _ct_phantom()
    kw = {"n_decays": 24_000, "n_jobs": 4, "seed": 5, "n_batches": 10}
    seen = []
    on_dask = dose_mc_split(tia, "Lu-177", ct, scheduler=scheduler, timeout_s=300,
                            progress=lambda d, t: seen.append((d, t)), **kw)
    serial = dose_mc_split(tia, "Lu-177", ct, scheduler=SERIAL, **kw)
    # each job's decays come from its own seed, whichever worker runs it, and the merge adds
    # the jobs in index order: the same bits
    for a, b in ((on_dask.dose, serial.dose), (on_dask.uncertainty, serial.uncertainty)):
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert on_dask.dose.GetSpacing() == tia.GetSpacing()
    meta = on_dask.metadata
    assert meta["complete"] and meta["jobs_done"] == [0, 1, 2, 3] and meta["n_jobs"] == 4
    assert meta["scheduler"] == scheduler and meta["density"].startswith("CT")
    assert [(j["seed"], j["n_decays"]) for j in meta["jobs"]] == [
        (j.seed, j.n_decays) for j in split_decays(24_000, 4, 5)]
    assert all(j["worker"].startswith("tcp://") for j in meta["jobs"])  # ran on the workers
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert meta["energy_balance_mev_per_decay"] == serial.metadata["energy_balance_mev_per_decay"]


@pytest.mark.mc
def test_a_job_that_always_fails_makes_the_run_incomplete(scheduler):
    inputs = _small_inputs()
    jobs = split_decays(8000, 4, seed=11)
    with pytest.raises(IncompleteRunError) as info:
        run_jobs(failing_job, jobs, scheduler=scheduler, shared=inputs, retries=1,
                 timeout_s=300)
    err = info.value
    assert isinstance(err, RptdoseError)
    assert re.search(r"1 of 4 jobs failed: job 2: RuntimeError: detector on fire in job 2",
                     str(err))
    assert list(err.failures) == [BAD_JOB]
    assert err.partial is not None and not err.partial.complete

    with pytest.warns(UserWarning, match=r"incomplete run: 1 of 4 jobs failed: job 2"):
        part = run_jobs(failing_job, jobs, scheduler=scheduler, shared=inputs, retries=1,
                        allow_partial=True, timeout_s=300)
    assert not part.complete and part.jobs_done == (0, 1, 3) and part.jobs_missing == (2,)
    assert part.n_decays == sum(j.n_decays for j in jobs if j.index != BAD_JOB)
    assert part.metadata["failures"] == [
        {"index": 2, "cause": "RuntimeError: detector on fire in job 2"}]
    # the partial result is the merge of the other jobs, run anywhere
    ref = merge_partials([simulate_job(j, inputs) for j in jobs if j.index != BAD_JOB],
                         expected=jobs)
    assert not ref.complete
    assert np.array_equal(part.mean, ref.mean) and np.array_equal(part.sem, ref.sem)


def _kill_a_worker_mid_job(client, run, prefix, after_s):
    """SIGKILL a worker ``after_s`` into a job whose key starts with ``prefix``.

    Returns the worker's address and the key of the job it was executing.
    """
    victim, key = None, None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and not run.done():
        for address, keys in client.run(_executing).items():
            ours = [k for k in keys if k.startswith(prefix)]
            if ours:
                victim, key = address, ours[0]
                break
        else:
            time.sleep(0.1)
    assert victim is not None, "no job of the run started within 60 s"
    assert key in client.processing()[victim]  # the scheduler's view agrees
    time.sleep(after_s)  # well into the job
    pid = client.run(os.getpid)[victim]
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)  # a worker process of the cluster this test started
    return victim, key


@pytest.mark.slow  # 13–21 s measured: its own cluster, 4 jobs of 3 s on 2 workers, a restart
@pytest.mark.mc
def test_a_killed_worker_has_its_job_rerun_and_the_run_completes(_pickled_by_value):
    from distributed import Client

    inputs = _small_inputs()
    jobs = split_decays(8000, 4, seed=17)
    with local_cluster(n_workers=2, threads_per_worker=1) as cluster, \
            Client(cluster, set_as_default=False) as client, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        # the run has a time limit, and so has every wait here: a failure never hangs
        run = pool.submit(run_jobs, slow_job, jobs, scheduler=cluster.scheduler_address,
                          shared=inputs, timeout_s=120, name="killtest")
        victim, key = _kill_a_worker_mid_job(client, run, "rptdose-killtest-", SLOW_S / 3)
        merged = run.result(timeout=180)
    killed = int(re.search(r"-(\d+)-[0-9a-f]+$", key).group(1))
    assert merged.complete and merged.jobs_done == (0, 1, 2, 3)
    # the scheduler rescheduled the job (the other worker still held the inputs): no job
    # had to be submitted again, none failed
    assert not merged.metadata["failures"] and not merged.metadata["resubmitted"]
    by_index = {j["index"]: j for j in merged.metadata["jobs"]}
    # the killed job's result came from another (or the restarted) worker process
    assert by_index[killed]["worker"] != victim
    serial = run_jobs(simulate_job, jobs, scheduler=SERIAL, shared=inputs)
    assert np.array_equal(merged.mean, serial.mean) and np.array_equal(merged.sem, serial.sem)


def test_shared_inputs_lost_with_the_only_worker_are_sent_again(_pickled_by_value):
    # One worker: killing it loses the scattered inputs too, and the scheduler cancels the jobs
    # that need them; run_jobs must send the inputs again and resubmit those jobs.
    from distributed import Client

    shared = np.linspace(0.0, 1.0, 6).reshape(1, 2, 3)
    jobs = split_decays(30, 3, seed=4)
    with local_cluster(n_workers=1, threads_per_worker=1) as cluster, \
            Client(cluster, set_as_default=False) as client, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_jobs, sleepy_job, jobs, scheduler=cluster.scheduler_address,
                          shared=shared, retries=1, timeout_s=120, name="losttest")
        _kill_a_worker_mid_job(client, run, "rptdose-losttest-", 0.5)
        merged = run.result(timeout=180)
    assert merged.complete and merged.jobs_done == (0, 1, 2)
    assert merged.metadata["resubmitted"]  # the path under test was taken
    ref = merge_partials([_sleepy_tally(j, shared) for j in jobs], expected=jobs)
    assert np.array_equal(merged.mean, ref.mean) and np.array_equal(merged.sem, ref.sem)
