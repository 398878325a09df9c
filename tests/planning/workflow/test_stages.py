"""Kinetics → dose → plan → report stages on a digital patient.

The registration and segmentation outputs are prepared from a patient made without motion
(so the identity is its exact registration) and from its true label map, which isolates these
stages from the registration and segmentation models: what is tested is the kinetics, dose,
planning and report code on a real multi-timepoint study.
"""

import json
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dosimetry.io.images import read_image, write_image
from dosimetry.io.rtdose import read_rtdose
from dosimetry.study.images import load_image, load_spect_bq_per_ml
from dosimetry.study.manifest import load_study
from dosimetry.study.workdir import Stage, WorkDir
from phantoms import GridSpec, PatientConfig, make_patient
from planning.results import load_results
from planning.workflow.dose_stage import run_dose
from planning.workflow.kinetics_stage import load_kinetics, run_kinetics
from planning.workflow.pipeline import PipelineOptions, _run_planning, _run_report


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    cfg = PatientConfig(grid=GridSpec(inplane_mm=6.0, slice_mm=6.0), spect_spacing_mm=9.5904,
                        spect_matrix=64, output_format="nifti", motion_scale=0.0, seed=5,
                        n_lesions=1)
    make_patient(root / "patient", cfg)
    study = load_study(root / "patient" / "study.yaml")
    wd = WorkDir.create(root / "work", study, root / "patient")
    study = wd.study()
    reg, seg = wd.stage_dir(Stage.REGISTRATION), wd.stage_dir(Stage.SEGMENTATION)
    ct_ref = load_image(study.timepoints[0].ct, "/")
    for tp in study.timepoints:
        spect = load_spect_bq_per_ml(study, tp, "/")
        write_image(load_image(tp.ct, "/"), reg / f"{tp.label}_ct.nii.gz")
        write_image(sitk.Resample(spect, ct_ref, sitk.Transform(), sitk.sitkLinear, 0.0),
                    reg / f"{tp.label}_spect_bq_per_ml.nii.gz")
        write_image(spect, reg / f"{tp.label}_spect_bq_per_ml_spectgrid.nii.gz")
    write_image(read_image(root / "patient/truth/labels.nii.gz", pixel_type=None),
                seg / "labels.nii.gz")
    shutil.copy(root / "patient/truth/labels.json", seg / "labels.json")
    return root, wd


def test_kinetics_dose_plan_report(prepared):
    root, wd = prepared
    study = wd.study()
    vois = run_kinetics(wd)
    again = load_kinetics(wd)  # what later stages read back from fits.json
    assert [v.name for v in again] == [v.name for v in vois]
    np.testing.assert_array_equal([v.tia_bq_s for v in again], [v.tia_bq_s for v in vois])
    truth = json.loads((root / "patient/truth/truth.json").read_text())["organs"]
    by = {v.name: v for v in vois}
    # Liver is large against the SPECT resolution, so partial-volume loss is small there: its
    # TIA must be within 15 % of the truth (resolution 11 mm FWHM on ~10 mm voxels, Poisson
    # noise, 4 timepoints). Smaller organs lose more (reported in the truth check, not here).
    liver = by["liver"]
    assert liver.success
    assert liver.tia_bq_s / 3.6e9 == pytest.approx(truth["liver"]["tia_mbq_h"], rel=0.15)
    tia = read_image(wd.root / "kinetics" / "tia_bq_s.nii.gz")
    assert np.isfinite(sitk.GetArrayViewFromImage(tia)).all()

    doses = run_dose(wd, vois, engine="led")
    liver_dose = next(d for d in doses if d.name == "liver")
    # LED: every electron's energy stays where it was emitted, so the liver's mean dose is its
    # TIA × electron energy per decay / mass, within the spill of the SPECT blur across the
    # boundary (the voxel TIA map is scaled to the VOI fit on the coarser SPECT grid): 20 %.
    e_j = 0.14792 * 1.602176634e-13
    expected = liver.tia_bq_s * e_j / (liver_dose.mass_g / 1000.0)
    assert liver_dose.mean_dose_gy == pytest.approx(expected, rel=0.2)
    assert liver_dose.d98_gy <= liver_dose.d50_gy <= liver_dose.d2_gy
    assert liver_dose.mean_dose_sigma_gy > 0 and liver_dose.bed_gy >= liver_dose.mean_dose_gy

    _run_planning(wd, PipelineOptions(dose_engine="led", protocol="lu177-dotatate"))
    results = load_results(wd.root / "planning" / "results.json")
    assert results.plan is not None and results.plan["status"]
    names = {v.name for v in results.vois}
    assert {"liver", "kidney_left", "lesion_1"} <= names

    _run_report(wd, PipelineOptions(dose_engine="led", protocol="lu177-dotatate",
                                    truth_dir=root / "patient" / "truth"))
    out = wd.root / "report"
    html = (out / "report.html").read_text()
    for heading in ("Time-activity curves", "Dosimetry per VOI", "Treatment plan",
                    "Truth check", "Provenance"):
        assert heading in html
    assert study.patient_id in html
    check = json.loads((out / "truth_check.json").read_text())["organs"]
    # The true TIA carried onto the dose grid keeps its total per organ to the smoothing's
    # spill across the organ border; the liver's is within 2 % of the truth table's.
    assert check["liver"]["tia_mbq_h"] == pytest.approx(truth["liver"]["tia_mbq_h"], rel=0.02)
    # Same engine on the true TIA: the pipeline's liver dose (no partial-volume correction in
    # this call, 15 % TIA tolerance above) is within 20 % of it.
    assert liver_dose.mean_dose_gy == pytest.approx(check["liver"]["mean_dose_gy"], rel=0.2)
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    rt = read_rtdose(out / "dose_rtdose.dcm")
    dose = read_image(out / "dose.nii.gz")
    peak = float(sitk.GetArrayViewFromImage(dose).max())
    # RT Dose stores uint32 × DoseGridScaling: one quantisation step is peak / (2³² − 1).
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(rt), sitk.GetArrayViewFromImage(dose),
                               rtol=1e-6, atol=peak / (2**32 - 1))
    assert pydicom.dcmread(out / "dose_rtdose.dcm").PatientID == study.patient_id
    rows = (out / "vois.csv").read_text().splitlines()
    assert rows[0].startswith("name,kind,mass_g") and len(rows) == len(results.vois) + 1


def test_partial_volume_correction_brings_organs_to_truth(prepared):
    root, wd = prepared
    study = wd.study()
    assert study.spect_fwhm_mm is not None  # the digital patient states its resolution
    truth = json.loads((root / "patient/truth/truth.json").read_text())["organs"]
    plain = {v.name: v for v in run_kinetics(wd)}
    pvc = {v.name: v for v in run_kinetics(wd, pvc_fwhm_mm=study.spect_fwhm_mm)}
    record = json.loads((wd.root / "kinetics" / "fits.json").read_text())
    assert record["partial_volume_correction"]["fwhm_mm"] == study.spect_fwhm_mm
    for name in ("liver", "spleen", "kidney_left", "kidney_right"):
        t = truth[name]["tia_mbq_h"] * 3.6e9
        before = abs(plain[name].tia_bq_s / t - 1)
        after = abs(pvc[name].tia_bq_s / t - 1)
        # On this coarse test grid (6 mm CT, 9.6 mm SPECT voxels, 11 mm FWHM) the GTM's
        # Gaussian model of voxel averaging and label rasterisation leave a few per cent;
        # 8 % is well inside the 11–30 % losses the kidneys and spleen show uncorrected.
        assert after < 0.08, (name, after)
        if name != "liver":
            assert after < before, (name, before, after)
        # The correction's sensitivity to the FWHM enlarges the uncertainty.
        assert pvc[name].tia_sigma_bq_s >= plain[name].tia_sigma_bq_s * 0.999


def test_far_field_term_of_the_dose_uncertainty():
    """The dose stage recomputes the far-field photon dose an engine added (from its metadata)
    on the label grid, for its 10 % uncertainty term; engines that added none give None."""
    from dosimetry.dose.engines import dose_dvk, dose_led
    from dosimetry.dose.kernels import Kernel
    from planning.workflow.dose_stage import far_field_on

    tia = np.zeros((12, 12, 12), dtype=np.float32)
    tia[6, 6, 6] = 1e9
    img = sitk.GetImageFromArray(tia)
    img.SetSpacing((6.0, 6.0, 6.0))
    k = np.zeros((3, 3, 3), dtype=np.float32)
    k[1, 1, 1] = 1.0
    kimg = sitk.GetImageFromArray(k)
    kimg.SetSpacing((6.0, 6.0, 6.0))
    dvk = dose_dvk(img, "Lu-177", kernel=Kernel(kimg, None, {"nuclide": "Lu-177",
                                                              "emissions": ["gamma", "x"]}))
    near = dose_dvk(img, "Lu-177", kernel=Kernel(kimg, None, {"nuclide": "Lu-177",
                                                               "emissions": ["gamma", "x"]}),
                    far_field=False)
    tail = far_field_on(dvk, img, img)
    added = sitk.GetArrayFromImage(dvk.dose) - sitk.GetArrayFromImage(near.dose)
    np.testing.assert_allclose(tail, added, rtol=1e-4, atol=1e-6 * float(added.max()))
    assert far_field_on(near, img, img) is None
    assert far_field_on(dose_led(img, "Lu-177"), img, img) is None
