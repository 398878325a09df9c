"""``rptdose cohort run``: many studies through the pipeline in parallel on Dask.

:func:`run_cohort` runs one study function (by default :func:`run_pipeline_study`, the whole
pipeline of :mod:`planning.workflow.pipeline`) per study manifest on a ``dask.distributed``
cluster: a :class:`~distributed.LocalCluster` of worker processes by default, or the scheduler at
``scheduler`` when the user has a cluster. Each study works in its own folder
``OUT_DIR/<name>/``, where ``name`` is the study's pseudonym (``patient_id`` of the manifest) or,
when the manifest cannot be read, the manifest's file stem; names repeated in the cohort get
``-2``, ``-3``, … in input order. Because the pipeline resumes finished stages, running the same
cohort again into the same folder redoes only what failed or changed.

A study that fails — any exception, our :class:`~dosimetry.errors.RptdoseError` or not, or a worker
process that dies — is recorded as failed with the stage (when the pipeline names one), the error
type and message; the other studies go on. Each failure's traceback is written to
``OUT_DIR/<name>/cohort_error.txt``; warnings a study issued are kept in its outcome.

The summary is written atomically when every study has finished:

* ``OUT_DIR/cohort.json`` — the :class:`CohortResult` (options, per study: status, stage, error,
  seconds, path of ``report/results.json``, per-VOI mean dose ± σ and dose coefficient).
* ``OUT_DIR/cohort.csv`` — one row per study: ``name, status, stage, error_type, error,
  seconds``, then for every VOI of the cohort (organs first, in order of first appearance)
  ``<voi>_mean_dose_gy``, ``<voi>_mean_dose_sigma_gy`` and ``<voi>_dose_gy_per_gbq``, empty
  where a study failed or lacks that VOI.

With a remote scheduler, the manifests, their images and ``out_dir`` must be on a file system
that every worker sees under the same paths (they are made absolute before submission).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dosimetry import __version__

# The cluster helpers live in dosimetry (split MC runs use them too); re-exported here for the
# callers that know them as cohort names.
from dosimetry.distributed import CONNECT_TIMEOUT_S as CONNECT_TIMEOUT_S
from dosimetry.distributed import MEMORY_FRACTION as MEMORY_FRACTION
from dosimetry.distributed import MIN_WORKER_MEMORY as MIN_WORKER_MEMORY
from dosimetry.distributed import dask_client, default_workers
from dosimetry.distributed import local_cluster as local_cluster
from dosimetry.errors import InputError, RptdoseError
from dosimetry.io.atomic import atomic_write_text
from planning.workflow.pipeline import PipelineOptions, StageError

#: A study function: ``(manifest, workdir, options) -> path of its results.json`` (the
#: :class:`planning.results.DosimetryResults` schema). It runs in a worker process, so it must be
#: picklable: a module-level function.
StudyFn = Callable[[Path, Path, PipelineOptions], Path]

#: File written into a failed study's folder with the traceback.
ERROR_LOG = "cohort_error.txt"
#: Summary file names in ``out_dir``.
SUMMARY_JSON, SUMMARY_CSV = "cohort.json", "cohort.csv"

_STAGE_MESSAGE = re.compile(r"^stage (\S+) failed: ", re.DOTALL)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_QUIET_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, ResourceWarning)


class StudyStatus(StrEnum):
    """How a study ended."""

    OK = "ok"
    FAILED = "failed"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VoiDose(_Model):
    """One VOI of a study's ``results.json``: what the cohort summary compares."""

    name: str
    kind: str
    mean_dose_gy: float = Field(description="Mean absorbed dose of the cycle [Gy].")
    mean_dose_sigma_gy: float = Field(description="Its standard uncertainty [Gy].")
    dose_gy_per_gbq: float = Field(description="Dose coefficient [Gy/GBq].")


class StudyOutcome(_Model):
    """What happened to one study of the cohort."""

    name: str = Field(description="Folder name under out_dir (pseudonym or manifest stem).")
    manifest: Path
    workdir: Path
    status: StudyStatus
    seconds: float = Field(ge=0.0, description="Wall time of the study on its worker [s].")
    stage: str | None = Field(default=None, description="Pipeline stage that failed, if known.")
    error_type: str | None = None
    error: str | None = Field(default=None, description="One-line error message.")
    error_log: Path | None = Field(default=None, description="Traceback of the failure.")
    results_json: Path | None = None
    patient_id: str | None = None
    vois: tuple[VoiDose, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the study succeeded."""
        return self.status is StudyStatus.OK


class CohortResult(_Model):
    """The outcome of a cohort run (written as ``cohort.json``)."""

    out_dir: Path
    scheduler: str = Field(description="'local' or the scheduler address used.")
    n_workers: int | None = Field(default=None, description="Workers of the local cluster.")
    options: PipelineOptions
    seconds: float = Field(ge=0.0, description="Wall time of the whole cohort [s].")
    studies: tuple[StudyOutcome, ...]
    rptdose_version: str = __version__

    @property
    def failed(self) -> tuple[StudyOutcome, ...]:
        """The studies that failed, in input order."""
        return tuple(s for s in self.studies if not s.ok)

    @property
    def ok(self) -> bool:
        """True when every study succeeded."""
        return not self.failed

    @property
    def summary_json(self) -> Path:
        """Path of ``cohort.json``."""
        return self.out_dir / SUMMARY_JSON

    @property
    def summary_csv(self) -> Path:
        """Path of ``cohort.csv``."""
        return self.out_dir / SUMMARY_CSV


# ----------------------------------------------------------------------------------- the study
def run_pipeline_study(manifest: Path, workdir: Path, options: PipelineOptions) -> Path:
    """The default study function: the whole pipeline; returns ``report/results.json``."""
    from planning.workflow.pipeline import run_pipeline

    result = run_pipeline(manifest, workdir, options)
    if result.results_json is None:
        raise StageError(f"{manifest}: the pipeline finished without a results.json")
    return result.results_json


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _read_vois(path: Path) -> tuple[str, tuple[VoiDose, ...]]:
    from planning.results import load_results

    res = load_results(path)
    return res.patient_id, tuple(
        VoiDose(name=v.name, kind=str(v.kind), mean_dose_gy=v.mean_dose_gy,
                mean_dose_sigma_gy=v.mean_dose_sigma_gy, dose_gy_per_gbq=v.dose_gy_per_gbq)
        for v in res.vois)


def _failure(exc: BaseException) -> dict[str, Any]:
    """Stage, type and message of a failure (a StageError names the stage in its message)."""
    stage = None
    cause: BaseException = exc
    message = _one_line(str(exc))
    if isinstance(exc, StageError):
        m = _STAGE_MESSAGE.match(message)
        if m:  # the stage has its own field; keep the reason
            stage, message = m.group(1), message[m.end():]
        cause = exc.__cause__ or exc
    kind = type(cause).__name__
    return {"stage": stage, "error_type": kind,
            "error": message.removeprefix(f"{kind}: ") or kind}


def _run_study(study_fn: StudyFn, name: str, manifest: Path, workdir: Path,
               options: PipelineOptions) -> StudyOutcome:
    """Run one study on a worker; every exception becomes a failed outcome, never a raise."""
    t0 = time.perf_counter()
    log = workdir / ERROR_LOG
    base = {"name": name, "manifest": manifest, "workdir": workdir}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            results_json = Path(study_fn(manifest, workdir, options))
            patient_id, vois = _read_vois(results_json)
        except Exception as exc:
            failure = _failure(exc)
            error_log = None
            with contextlib.suppress(OSError):
                error_log = atomic_write_text(log, "".join(traceback.format_exception(exc)))
            outcome = StudyOutcome(**base, status=StudyStatus.FAILED,
                                   seconds=time.perf_counter() - t0, error_log=error_log,
                                   **failure)
        else:
            log.unlink(missing_ok=True)  # a failure of an earlier run no longer applies
            outcome = StudyOutcome(**base, status=StudyStatus.OK,
                                   seconds=time.perf_counter() - t0, results_json=results_json,
                                   patient_id=patient_id, vois=vois)
    seen: dict[str, None] = {}
    for w in caught:
        if not issubclass(w.category, _QUIET_CATEGORIES):
            seen.setdefault(f"{w.category.__name__}: {_one_line(str(w.message))}")
    return outcome.model_copy(update={"warnings": tuple(seen)})


# ----------------------------------------------------------------------------------- inputs
def _pseudonym(manifest: Path) -> str | None:
    from dosimetry.io.models import read_mapping

    try:
        data = read_mapping(manifest, "study manifest")
    except RptdoseError:
        return None  # the study itself reports the bad manifest
    pid = data.get("patient_id") if isinstance(data, dict) else None
    return pid if isinstance(pid, str) and pid.strip() else None


def _folder_name(text: str) -> str:
    return _UNSAFE.sub("_", text.strip()).lstrip(".") or "study"


def study_names(manifests: Sequence[Path]) -> list[str]:
    """Unique folder names of the studies (see the module docstring), in input order."""
    names: list[str] = []
    taken: set[str] = set()
    for m in manifests:
        base = _folder_name(_pseudonym(m) or m.name.split(".")[0])
        name, k = base, 1
        while name.casefold() in taken or name in (SUMMARY_JSON, SUMMARY_CSV):
            k += 1
            name = f"{base}-{k}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _check_inputs(manifests: Sequence[str | os.PathLike[str]], out_dir: Path,
                  options: PipelineOptions, scheduler: str | None, n_workers: int | None,
                  threads_per_worker: int) -> tuple[list[Path], PipelineOptions]:
    if not manifests:
        raise InputError("no study manifest given")
    paths = [Path(m).expanduser().resolve() for m in manifests]
    missing = [str(m) for m, p in zip(manifests, paths, strict=True) if not p.is_file()]
    if missing:
        raise InputError(f"study manifest not found: {', '.join(missing)}")
    repeated = sorted({str(p) for p in paths if paths.count(p) > 1})
    if repeated:
        raise InputError(f"study manifest given more than once: {', '.join(repeated)}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: output exists and is not a folder")
    if n_workers is not None and n_workers < 1:
        raise InputError(f"workers must be ≥ 1, got {n_workers}")
    if threads_per_worker < 1:
        raise InputError(f"threads per worker must be ≥ 1, got {threads_per_worker}")
    if scheduler is not None and n_workers is not None:
        raise InputError(f"the number of workers is set by the cluster at {scheduler}, not "
                         "here; give either a scheduler or a number of workers")
    # Workers may run elsewhere and in another folder: an imported-masks path must be absolute.
    from dosimetry.segmentation.stage import Backend, BackendSpec

    spec = BackendSpec.parse(options.segmenter)
    if spec.backend is Backend.MASKS and spec.path is not None:
        masks = spec.path.resolve()
        if not masks.exists():
            raise InputError(f"--segmenter {options.segmenter}: {spec.path} not found")
        options = options.model_copy(update={"segmenter": f"masks:{masks}"})
    if options.truth_dir is not None:
        raise InputError("a truth folder belongs to one study; a cohort takes none")
    return paths, options


# ----------------------------------------------------------------------------------- the cohort
def run_cohort(manifests: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
               options: PipelineOptions, scheduler: str | None = None,
               n_workers: int | None = None, threads_per_worker: int = 1,
               progress: Callable[[StudyOutcome], None] | None = None,
               study_fn: StudyFn = run_pipeline_study) -> CohortResult:
    """Run every study of a cohort in parallel and write the cohort summary.

    Parameters
    ----------
    manifests : sequence of path
        Study manifests (YAML/JSON). Each must exist (checked before any cluster starts).
    out_dir : path
        Output folder: one work folder per study, ``cohort.json`` and ``cohort.csv``.
    options : PipelineOptions
        Pipeline options, the same for every study (``truth_dir`` must be None).
        ``segmenter="masks"`` takes each manifest's own ``labels``; ``masks:PATH`` one file
        for all.
    scheduler : str, optional
        Address of a running Dask scheduler (e.g. ``tcp://10.0.0.5:8786``). Default: a local
        cluster of worker processes, closed at the end.
    n_workers : int, optional
        Workers of the local cluster (default :func:`default_workers`). Not with ``scheduler``.
    threads_per_worker : int
        Threads per local worker; studies run one per thread. Python's warning filters are
        per process, so with more than one thread a study's recorded warnings may include
        another's.
    progress : callable(StudyOutcome), optional
        Called in this process as each study finishes.
    study_fn : callable(manifest, workdir, options) -> Path
        What is run per study (default the whole pipeline); must be a picklable module-level
        function returning the path of its ``results.json``.

    Returns
    -------
    CohortResult
        Per study in input order; ``.ok`` is False when any study failed.

    Raises
    ------
    InputError
        A manifest is missing or given twice, an option is invalid, or the scheduler cannot be
        reached. A failing study does not raise: it is recorded in the result.
    """
    out = Path(out_dir).expanduser().resolve()
    paths, options = _check_inputs(manifests, out, options, scheduler, n_workers,
                                   threads_per_worker)
    names = study_names(paths)
    workers = None if scheduler is not None else (n_workers or default_workers(len(paths)))
    out.mkdir(parents=True, exist_ok=True)
    notify = progress or (lambda outcome: None)

    t0 = time.perf_counter()
    outcomes: dict[str, StudyOutcome] = {}
    with dask_client(scheduler, workers or 1, threads_per_worker) as client:
        from distributed import as_completed

        futures = {client.submit(_run_study, study_fn, name, path, out / name, options,
                                 pure=False, key=f"rptdose-study-{name}-{time.time_ns()}"): name
                   for name, path in zip(names, paths, strict=True)}
        for future in as_completed(futures, loop=client.loop):
            name = futures[future]
            if future.status == "finished":
                outcome = future.result()
            else:  # the worker died or the task was lost: the study failed, the rest go on
                exc = future.exception()
                outcome = StudyOutcome(
                    name=name, manifest=paths[names.index(name)], workdir=out / name,
                    status=StudyStatus.FAILED, seconds=0.0, error_type=type(exc).__name__,
                    error=_one_line(str(exc)) or type(exc).__name__)
            future.release()
            outcomes[name] = outcome
            notify(outcome)

    result = CohortResult(out_dir=out, scheduler=scheduler or "local", n_workers=workers,
                          options=options, seconds=time.perf_counter() - t0,
                          studies=tuple(outcomes[n] for n in names))
    write_summary(result)
    return result


# ----------------------------------------------------------------------------------- summary
def _voi_columns(result: CohortResult) -> list[str]:
    organs: dict[str, None] = {}
    lesions: dict[str, None] = {}
    for s in result.studies:
        for v in s.vois:
            (lesions if v.kind == "lesion" else organs).setdefault(v.name)
    return [*organs, *lesions]


def summary_csv_text(result: CohortResult) -> str:
    """The text of ``cohort.csv`` (see the module docstring)."""
    quantities = ("mean_dose_gy", "mean_dose_sigma_gy", "dose_gy_per_gbq")
    vois = _voi_columns(result)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "status", "stage", "error_type", "error", "seconds",
                *(f"{v}_{q}" for v in vois for q in quantities)])
    for s in result.studies:
        by = {v.name: v for v in s.vois}
        row: list[Any] = [s.name, s.status.value, s.stage or "", s.error_type or "",
                          s.error or "", f"{s.seconds:.1f}"]
        for v in vois:
            row += [f"{getattr(by[v], q):.6g}" if v in by else "" for q in quantities]
        w.writerow(row)
    return buf.getvalue()


def write_summary(result: CohortResult) -> tuple[Path, Path]:
    """Write ``cohort.json`` and ``cohort.csv`` atomically; returns their paths."""
    data = result.model_dump(mode="json")
    data["n_studies"] = len(result.studies)
    data["n_failed"] = len(result.failed)
    data["failed"] = [s.name for s in result.failed]
    atomic_write_text(result.summary_json, json.dumps(data, indent=2) + "\n")
    atomic_write_text(result.summary_csv, summary_csv_text(result))
    return result.summary_json, result.summary_csv


def load_summary(path: str | os.PathLike[str]) -> CohortResult:
    """Read a ``cohort.json`` back (the derived counts are dropped)."""
    from dosimetry.io.models import read_mapping, validate

    data = read_mapping(path, "cohort summary")
    if isinstance(data, dict):
        for key in ("n_studies", "n_failed", "failed"):
            data.pop(key, None)
    return validate(CohortResult, data, str(path), "cohort summary")
