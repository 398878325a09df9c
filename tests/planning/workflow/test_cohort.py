"""Cohorts on a real Dask cluster of worker processes.

The fast tests run :mod:`cohort_studies`' study functions (manifest and image checks for real, a
closed-form dose) on one local cluster shared by the module; the slow test runs the whole
pipeline on digital patients through the default local cluster.
"""

from __future__ import annotations

import csv
import json

import pytest

from dosimetry.errors import InputError
from planning.workflow.cohort import (
    ERROR_LOG,
    StudyStatus,
    load_summary,
    local_cluster,
    run_cohort,
)
from planning.workflow.pipeline import PipelineOptions
from tests.planning.workflow.cohort_studies import (
    DOSE_GY_PER_GBQ,
    checked_study,
    crashing_study,
    write_study,
)

OPTIONS = PipelineOptions(dose_engine="led")


@pytest.fixture(scope="module")
def scheduler():
    """Address of a local cluster of 2 single-thread worker processes, shared by the module."""
    with local_cluster(n_workers=2, threads_per_worker=1) as cluster:
        yield cluster.scheduler_address


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_every_study_runs_in_its_own_folder_and_the_summary_compares_them(scheduler, tmp_path):
    # Two manifests share the stem "study" and a third is a second cycle of the same patient:
    # folder names must still be unique.
    activities = {"PSEUDO-A": 7400.0, "PSEUDO-B": 3700.0, "PSEUDO-A-2": 5550.0}
    manifests = [write_study(tmp_path / "a", "PSEUDO-A", 7400.0),
                 write_study(tmp_path / "b", "PSEUDO-B", 3700.0),
                 write_study(tmp_path / "a2", "PSEUDO-A", 5550.0)]
    seen = []
    res = run_cohort(manifests, tmp_path / "out", OPTIONS, scheduler=scheduler,
                     progress=seen.append, study_fn=checked_study)

    assert res.ok and res.scheduler == scheduler
    assert [s.name for s in res.studies] == ["PSEUDO-A", "PSEUDO-B", "PSEUDO-A-2"]
    assert sorted(o.name for o in seen) == sorted(activities)  # once per study, as it ended
    for s in res.studies:
        assert s.status is StudyStatus.OK and s.error is None and s.seconds > 0
        assert s.workdir == tmp_path / "out" / s.name
        assert s.results_json == s.workdir / "report" / "results.json"
        assert (s.workdir / "study.yaml").is_file()  # the study's own work folder
        (voi,) = s.vois
        # Each study's dose comes from its own manifest's activity: nothing was swapped.
        assert voi.mean_dose_gy == pytest.approx(DOSE_GY_PER_GBQ * activities[s.name] / 1000)
        assert voi.dose_gy_per_gbq == DOSE_GY_PER_GBQ

    rows = _rows(res.summary_csv)
    assert set(rows) == set(activities)
    for name, a_mbq in activities.items():
        r = rows[name]
        assert r["status"] == "ok" and r["error"] == ""
        assert float(r["kidney_left_mean_dose_gy"]) == pytest.approx(
            DOSE_GY_PER_GBQ * a_mbq / 1000, rel=1e-5)
        assert float(r["kidney_left_dose_gy_per_gbq"]) == DOSE_GY_PER_GBQ
    data = json.loads(res.summary_json.read_text())
    assert data["n_studies"] == 3 and data["n_failed"] == 0 and data["failed"] == []
    assert load_summary(res.summary_json) == res


def test_one_failing_study_does_not_stop_the_others(scheduler, tmp_path):
    good = write_study(tmp_path / "good", "PSEUDO-OK", 7400.0)
    corrupt = tmp_path / "broken" / "broken.yaml"
    corrupt.parent.mkdir()
    corrupt.write_text("patient_id: [never closed\n")
    invalid = write_study(tmp_path / "neg", "PSEUDO-NEG", 7400.0)
    invalid.write_text(invalid.read_text().replace("administered_activity_mbq: 7400.0",
                                                   "administered_activity_mbq: -5.0"))
    crash = write_study(tmp_path / "crash", "CRASH-1", 7400.0)

    res = run_cohort([corrupt, good, invalid, crash], tmp_path / "out", OPTIONS,
                     scheduler=scheduler, study_fn=crashing_study)

    assert not res.ok
    by = {s.name: s for s in res.studies}
    assert [s.name for s in res.failed] == ["broken", "PSEUDO-NEG", "CRASH-1"]
    assert by["PSEUDO-OK"].ok and by["PSEUDO-OK"].vois[0].mean_dose_gy == pytest.approx(3.7)

    broken = by["broken"]  # unreadable: named after its file, the message names the file
    assert broken.error_type == "InputError" and str(corrupt) in broken.error
    assert "not valid YAML" in broken.error
    neg = by["PSEUDO-NEG"]
    assert neg.error_type == "InputError"
    assert "administered_activity_mbq" in neg.error and "-5.0" in neg.error
    crashed = by["CRASH-1"]  # not one of ours: kept with its type and message
    assert crashed.error_type == "RuntimeError"
    assert crashed.error == "CRASH-1: worker ran out of luck"
    log = crashed.error_log.read_text()
    assert crashed.error_log == tmp_path / "out" / "CRASH-1" / ERROR_LOG
    assert "Traceback" in log and "crashing_study" in log
    for s in res.failed:
        assert s.status is StudyStatus.FAILED and s.results_json is None and s.vois == ()

    rows = _rows(res.summary_csv)
    assert rows["PSEUDO-OK"]["status"] == "ok"
    assert rows["CRASH-1"]["status"] == "failed"
    assert rows["CRASH-1"]["error_type"] == "RuntimeError"
    assert rows["CRASH-1"]["kidney_left_mean_dose_gy"] == ""
    data = json.loads(res.summary_json.read_text())
    assert data["n_failed"] == 3 and data["failed"] == ["broken", "PSEUDO-NEG", "CRASH-1"]


def test_a_rerun_that_succeeds_drops_the_old_failure(scheduler, tmp_path):
    manifest = write_study(tmp_path / "p", "CRASH-2", 1000.0)
    first = run_cohort([manifest], tmp_path / "out", OPTIONS, scheduler=scheduler,
                       study_fn=crashing_study)
    assert not first.ok and first.studies[0].error_log.is_file()
    again = run_cohort([manifest], tmp_path / "out", OPTIONS, scheduler=scheduler,
                       study_fn=checked_study)
    assert again.ok and not (tmp_path / "out" / "CRASH-2" / ERROR_LOG).exists()
    assert load_summary(tmp_path / "out" / "cohort.json").ok


@pytest.mark.parametrize(("case", "match"), [
    ("missing", r"study manifest not found: .*nowhere\.yaml"),
    ("twice", r"given more than once: .*study\.yaml"),
    ("workers", r"number of workers is set by the cluster"),
    ("masks", r"--segmenter masks:.*no_labels\.nii\.gz not found"),
])
def test_bad_input_is_refused_before_any_cluster_is_contacted(tmp_path, case, match):
    good = write_study(tmp_path / "a", "PSEUDO-A", 7400.0)
    manifests, options, workers = [good], OPTIONS, None
    if case == "missing":
        manifests = [good, tmp_path / "nowhere.yaml"]
    elif case == "twice":
        manifests = [good, tmp_path / "a" / ".." / "a" / "study.yaml"]
    elif case == "workers":
        workers = 2
    else:
        options = PipelineOptions(segmenter=f"masks:{tmp_path / 'no_labels.nii.gz'}")
    # Nothing listens on this address: reaching for it would fail differently and slowly.
    with pytest.raises(InputError, match=match):
        run_cohort(manifests, tmp_path / "out", options, scheduler="tcp://127.0.0.1:9",
                   n_workers=workers, study_fn=checked_study)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_pipeline_on_two_digital_patients_and_a_study_that_fails_midway(tmp_path):
    from dosimetry.nuclides import get_nuclide
    from dosimetry.study.manifest import ImageRef, load_study
    from phantoms import GridSpec, PatientConfig, make_patient

    small = {"grid": GridSpec(inplane_mm=6.0, slice_mm=6.0), "spect_spacing_mm": 9.5904,
             "spect_matrix": 64, "output_format": "nifti", "motion_scale": 0.0, "n_lesions": 1}
    manifests, truths = [], {}
    for seed in (5, 6):
        p = make_patient(tmp_path / f"patient{seed}", PatientConfig(seed=seed, **small))
        # Each study brings its own contours: the manifest's labels with --segmenter masks.
        study = p.study.model_copy(update={"labels": ImageRef(path="truth/labels.nii.gz")})
        manifests.append(study.save(p.manifest))
        truths[study.patient_id] = p.truth
    # A copy of the second study without contours fails in the segmentation stage, after
    # registration ran.
    lost = tmp_path / "patient6" / "no_contours.yaml"
    study = load_study(manifests[1])
    study.model_copy(update={"labels": None, "patient_id": "NO-CONTOURS"}).save(lost)

    res = run_cohort([*manifests, lost], tmp_path / "cohort",
                     PipelineOptions(dose_engine="led", segmenter="masks"), n_workers=2)

    assert [s.ok for s in res.studies] == [True, True, False], res.failed
    (failed,) = res.failed
    assert failed.name == "NO-CONTOURS" and failed.stage == "segmentation"
    assert failed.error_type == "MissingDataError" and "labels" in failed.error
    # LED: all electron energy is absorbed where emitted, so an organ's mean dose is its
    # TIA × electron energy per decay / mass. The liver is large against the SPECT resolution
    # and its fitted TIA is within 15 % of the truth (4 timepoints); with the spill of the
    # SPECT blur across its boundary into the dose, 20 % (as in test_stages).
    e_j = get_nuclide("Lu-177").electron_energy_mev_per_decay * 1.602176634e-13
    rows = _rows(res.summary_csv)
    for s in res.studies[:2]:
        liver = next(v for v in s.vois if v.name == "liver")
        truth = truths[s.name]["organs"]["liver"]
        expected_gy = truth["tia_mbq_h"] * 3.6e9 * e_j / (truth["mass_g"] / 1000.0)
        assert liver.mean_dose_gy == pytest.approx(expected_gy, rel=0.2)
        a_gbq = truths[s.name]["administered_activity_mbq"] / 1000.0
        assert liver.dose_gy_per_gbq == pytest.approx(liver.mean_dose_gy / a_gbq, rel=1e-9)
        reported = json.loads(s.results_json.read_text())
        assert {v["name"] for v in reported["vois"]} == {v.name for v in s.vois}
        assert float(rows[s.name]["liver_mean_dose_gy"]) == pytest.approx(liver.mean_dose_gy,
                                                                        rel=1e-5)
        assert (s.workdir / "report" / "report.pdf").is_file()
    assert rows["NO-CONTOURS"]["status"] == "failed"
    assert rows["NO-CONTOURS"]["stage"] == "segmentation"
