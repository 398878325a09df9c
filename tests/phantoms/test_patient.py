"""Digital patient studies: exact truth, conservation, counts, determinism, atomicity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.io.images import read_image
from dosimetry.study.images import load_image, load_spect_bq_per_ml
from dosimetry.study.manifest import check_study_files, load_study
from phantoms import PatientConfig, make_patient
from tests.phantoms.conftest import small_config


def _truth(result) -> dict:
    return json.loads((result.out_dir / "truth" / "truth.json").read_text())


def _arr(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(read_image(path, pixel_type=None))


def test_manifest_is_valid_and_points_at_files(nifti_study):
    study = load_study(nifti_study.manifest)
    assert study == nifti_study.study
    assert [tp.label for tp in study.timepoints] == ["4h", "24h", "96h", "168h"]
    assert study.nuclide == "Lu-177" and study.radiopharmaceutical == "DOTATATE"
    assert check_study_files(study, nifti_study.out_dir) == []
    for tp in study.timepoints:
        assert not tp.spect.path.is_absolute()


def test_masses_are_exact_from_label_map_and_density(nifti_study):
    truth = _truth(nifti_study)
    table = json.loads((nifti_study.out_dir / "truth" / "labels.json").read_text())
    labels = read_image(nifti_study.out_dir / "truth" / "labels.nii.gz", pixel_type=None)
    lab = sitk.GetArrayFromImage(labels)
    vox_ml = math.prod(labels.GetSpacing()) / 1000.0
    for row in table:
        n = int((lab == row["label"]).sum())
        assert n == row["voxels"]
        mass = n * vox_ml * row["density_g_per_cm3"]
        organ = truth["organs"][row["name"]]
        # recomputed from the files: equal to double rounding (NIfTI spacing is float32)
        assert organ["mass_g"] == pytest.approx(mass, rel=1e-6)
        assert organ["volume_ml"] == pytest.approx(n * vox_ml, rel=1e-6)


def test_activity_is_conserved_per_timepoint(nifti_study):
    truth = _truth(nifti_study)
    for tp in truth["timepoints"]:
        a = _arr(nifti_study.out_dir / "truth" / tp["activity_map"]).astype(np.float64)
        organs = math.fsum(tp["label_activity_mbq"].values())
        # float32 voxels: relative rounding ≤ 6e-8 each, the sum no worse than that
        assert a.sum() / 1e6 == pytest.approx(organs, rel=1e-6)
        assert tp["total_in_fov_mbq"] == pytest.approx(organs, rel=1e-12)
        # in the field of view ≤ in the body ≤ administered, decayed
        decayed = truth["administered_activity_mbq"] * math.exp(
            -truth["nuclide"]["decay_constant_per_s"] * tp["hours_after_injection"] * 3600)
        assert organs <= tp["whole_body_mbq"] * (1 + 1e-12) <= decayed * (1 + 1e-12)
        # per label: the map's sum over the label equals the label's activity
        lab = _arr(nifti_study.out_dir / "truth" / "labels.nii.gz")
        liver = truth["organs"]["liver"]["label"]
        assert a[lab == liver].sum() / 1e6 == pytest.approx(tp["label_activity_mbq"]["liver"],
                                                           rel=1e-6)


def test_tia_is_the_analytic_integral_of_the_curves(nifti_study):
    truth = _truth(nifti_study)
    lam = truth["nuclide"]["decay_constant_per_s"]
    a0 = truth["administered_activity_mbq"]
    for name, o in truth["organs"].items():
        c = o["curve_fraction_of_a0"]
        integral_h = math.fsum(ci / (ki + lam * 3600) for ci, ki in
                               zip(c["coefficients"], c["rates_per_h"], strict=True))
        assert o["tia_mbq_h"] == pytest.approx(a0 * integral_h, rel=1e-9, abs=1e-9), name
    tia = _arr(nifti_study.out_dir / "truth" / "tia.nii.gz").astype(np.float64)
    in_fov = math.fsum(o["tia_mbq_h"] for o in truth["organs"].values() if o["in_fov"])
    assert tia.sum() / 3.6e9 == pytest.approx(in_fov, rel=1e-6)
    # trapezoid through the timepoints is far cruder; only check the curve matches them
    for tp in truth["timepoints"]:
        t = tp["hours_after_injection"]
        c = truth["organs"]["liver"]["curve_fraction_of_a0"]
        frac = sum(ci * math.exp(-ki * t) for ci, ki in zip(c["coefficients"],
                                                             c["rates_per_h"], strict=True))
        assert tp["label_activity_mbq"]["liver"] == pytest.approx(
            a0 * frac * math.exp(-lam * t * 3600), rel=1e-9)


def test_spect_counts_match_the_poisson_model(counts_study):
    truth = _truth(counts_study)
    study = counts_study.study
    assert study.timepoints[0].spect_units.value == "counts"
    for tp, tt in zip(study.timepoints, truth["timepoints"], strict=True):
        c = sitk.GetArrayFromImage(load_image(tp.spect, counts_study.out_dir))
        assert np.all(c >= 0) and np.all(c == np.rint(c))
        n = float(c.sum(dtype=np.float64))
        assert n == tt["spect"]["total_counts"]
        mu = tt["spect"]["expected_total_counts"]
        # total counts are Poisson(Σμ): within 5 √μ (two-sided p ≈ 6e-7)
        assert abs(n - mu) < 5 * math.sqrt(mu)
        # Σμ = S·T·(activity on the SPECT grid); that activity is the true activity in the
        # field of view up to what the blur moves across the axial ends of the FOV (the body
        # goes on beyond it): within 3 %
        s_t = tt["spect"]["sensitivity_cps_per_mbq"] * tt["spect"]["frame_duration_s"]
        assert mu == pytest.approx(s_t * tt["spect"]["activity_in_spect_grid_mbq"], rel=1e-9)
        assert tt["spect"]["activity_in_spect_grid_mbq"] == pytest.approx(
            tt["total_in_fov_mbq"], rel=0.03)
        # the manifest's calibration turns counts back into the activity (Bq/mL × mL)
        bq = load_spect_bq_per_ml(study, tp, counts_study.out_dir)
        v_ml = math.prod(bq.GetSpacing()) / 1000
        total_mbq = float(sitk.GetArrayFromImage(bq).sum(dtype=np.float64)) * v_ml / 1e6
        assert total_mbq == pytest.approx(n / s_t, rel=1e-5)


def test_timepoint_transforms_align_the_images(nifti_study):
    """Resampling a later CT with ref_to_tp onto the first CT restores the anatomy."""
    study = nifti_study.study
    ref = load_image(study.timepoints[0].ct, nifti_study.out_dir)
    tp = study.timepoints[2]
    moving = load_image(tp.ct, nifti_study.out_dir)
    tdir = nifti_study.out_dir / "truth" / "transforms"
    rigid = sitk.ReadTransform(str(tdir / f"{tp.label}_ref_to_tp_rigid.tfm"))
    field = read_image(tdir / f"{tp.label}_ref_to_tp_deformation.nii.gz", pixel_type=None)
    disp = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    ref_to_tp = sitk.CompositeTransform([disp, rigid])  # y = D⁻¹(R⁻¹(x))
    back = sitk.Resample(moving, ref, ref_to_tp, sitk.sitkLinear, -1000.0)
    a, b, m = (sitk.GetArrayFromImage(x).astype(float) for x in (ref, back, moving))
    before = np.corrcoef(a.ravel(), m.ravel())[0, 1]
    after = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert after > before
    assert after > 0.95  # 6 mm voxels, 10–20 HU noise: the residual is noise and interpolation


def test_first_timepoint_is_the_reference_pose(nifti_study):
    truth = _truth(nifti_study)
    t0 = truth["timepoints"][0]["transform"]
    assert t0["euler_angles_deg"] == [0.0, 0.0, 0.0] and t0["translation_mm"] == [0, 0, 0]
    ref = load_image(nifti_study.study.timepoints[0].ct, nifti_study.out_dir)
    lab = read_image(nifti_study.out_dir / "truth" / "labels.nii.gz", pixel_type=None)
    assert ref.GetSize() == lab.GetSize()
    np.testing.assert_allclose(ref.GetOrigin(), lab.GetOrigin(), atol=1e-3)
    grid = truth["reference"]["grid"]
    np.testing.assert_allclose(grid["origin_mm"], lab.GetOrigin(), atol=1e-3)


def test_truth_states_simplifications_and_sources(nifti_study):
    truth = _truth(nifti_study)
    assert truth["generator"]["seed"] == 11
    assert len(truth["simplifications"]) >= 5
    assert any("image-domain" in s for s in truth["simplifications"])
    assert "registration with fixed = reference" in truth["transforms"]["direction"]
    assert truth["blood"]["tau_h_per_ml"] > 0 and truth["whole_body"]["tau_h"] > 0
    assert truth["preset_references"]


def test_same_seed_gives_identical_files(tmp_path):
    cfg = small_config(seed=3, output_format="nifti", timepoints_h=(4.0, 24.0), n_lesions=1,
                       deformation_mm=1.0)
    a = make_patient(tmp_path / "a", cfg)
    b = make_patient(tmp_path / "b", cfg)
    assert a.files == b.files
    for rel in a.files:
        assert (a.out_dir / rel).read_bytes() == (b.out_dir / rel).read_bytes(), rel
    assert (a.out_dir / "study.yaml").read_bytes() == (b.out_dir / "study.yaml").read_bytes()
    c = make_patient(tmp_path / "c", small_config(seed=4, output_format="nifti",
                                                  timepoints_h=(4.0, 24.0), n_lesions=1,
                                                  deformation_mm=1.0))
    assert (c.out_dir / "truth" / "labels.nii.gz").read_bytes() != \
        (a.out_dir / "truth" / "labels.nii.gz").read_bytes()


def test_dicom_round_trip_through_ingest_and_determinism(tmp_path):
    """phantom make --format dicom → ingest_dicom → the phantom's own manifest (but source)."""
    from dosimetry.study.ingest import ingest_dicom

    cfg = small_config(seed=9, output_format="dicom", timepoints_h=(4.0, 24.0, 96.0),
                       n_lesions=2, preset="lu177-psma", head_neck=True)
    res = make_patient(tmp_path / "s", cfg)
    ingested = ingest_dicom(res.out_dir / "dicom", res.out_dir / "ingested.yaml",
                            spect_fwhm_mm=res.study.spect_fwhm_mm)
    assert ingested.missing == ()
    mine = load_study(res.manifest).model_dump(exclude={"source"})
    theirs = load_study(res.out_dir / "ingested.yaml").model_dump(exclude={"source"})
    assert theirs == mine
    # same seed, second run: byte-identical DICOM
    again = make_patient(tmp_path / "t", cfg)
    for rel in res.files:
        assert (res.out_dir / rel).read_bytes() == (again.out_dir / rel).read_bytes(), rel


def test_dicom_counts_round_trip_with_calibration(tmp_path):
    from dosimetry.study.ingest import ingest_dicom

    cfg = small_config(seed=2, output_format="dicom", timepoints_h=(24.0, 120.0), counts=True,
                       n_lesions=0)
    res = make_patient(tmp_path / "s", cfg)
    cal = res.study.timepoints[0].calibration_cps_per_mbq
    ingest_dicom(res.out_dir / "dicom", res.out_dir / "ingested.yaml",
                 calibration_cps_per_mbq=cal, spect_fwhm_mm=res.study.spect_fwhm_mm)
    mine = load_study(res.manifest).model_dump(exclude={"source"})
    theirs = load_study(res.out_dir / "ingested.yaml").model_dump(exclude={"source"})
    assert theirs == mine


def test_a_failure_leaves_no_study_behind(tmp_path, monkeypatch):
    import phantoms.patient as patient

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(patient, "simulate_spect", boom)
    out = tmp_path / "s"
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_patient(out, small_config(timepoints_h=(4.0,), output_format="nifti"))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    cfg = small_config(timepoints_h=(4.0,), output_format="nifti", n_lesions=0)
    with pytest.raises(InputError, match="not empty"):
        make_patient(out, cfg)
    make_patient(out, cfg, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "study.yaml").is_file()


@pytest.mark.parametrize(("kw", "match"), [
    ({"timepoints_h": (24.0, 4.0)}, "timepoints 24.0 h and 4.0 h"),
    ({"timepoints_h": (4.0, 4.5)}, "at least 1 h"),
    ({"timepoints_h": ()}, "1 to 12"),
    ({"preset": "tc99m-mdp"}, "'tc99m-mdp'"),
    ({"n_lesions": -1}, "lesions -1"),
    ({"preset": "i131-dtc", "head_neck": False}, "needs the head and neck"),
    ({"output_format": "png"}, "'png'"),
    ({"administered_activity_mbq": 0.0}, "activity 0.0 MBq"),
])
def test_bad_configuration_names_the_value(kw, match):
    with pytest.raises(InputError, match=match):
        PatientConfig(**kw)
