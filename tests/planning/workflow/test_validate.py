"""``validate_workdir`` on a small digital-patient work folder, and the report that quotes it.

The work folder (``validation_workdir.py``) has run its real kinetics and dose (DVK) stages. The
reference is the fast MC at 20 000 decays (seeded): enough for organ means of the large organs
to a few %, far too few for a clinical reference — these tests check the plumbing, the record
and the report, with tolerances set from the reference's own σ.
"""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.dose.engines import compute_dose
from dosimetry.errors import DependencyError, GeometryError, InputError, MissingDataError
from dosimetry.io.images import read_image, write_image
from dosimetry.study.workdir import WorkDir
from planning.workflow.pipeline import validation_fingerprint
from planning.workflow.report import _validation_summary, build_report, validation_summary
from planning.workflow.report_render import render_html
from planning.workflow.validate import (
    SCHEMA_VERSION,
    read_validation,
    tia_digest,
    validate_workdir,
)
from tests.planning.workflow.validation_workdir import make_validation_workdir

MC_DECAYS = 20_000
SEED = 3


@pytest.fixture(scope="module")
def workfolder(tmp_path_factory):
    return make_validation_workdir(tmp_path_factory.mktemp("validate"), dose_engine="dvk")


@pytest.fixture(scope="module")
def validated(workfolder):
    calls = []
    result = validate_workdir(workfolder.root, "mc", "dvk,led", mc_decays=MC_DECAYS, seed=SEED,
                              progress=lambda step, done, total: calls.append((step, done, total)))
    return workfolder, result, calls


def test_files_record_and_progress(validated):
    wd, res, calls = validated
    folder = wd.root / "validation"
    assert res.folder == folder and res.json_path == folder / "validation.json"
    for name in ("validation.json", "validation.html", "reference_dose_gy.nii.gz",
                 "reference_sigma_gy.nii.gz", "diff_dvk_gy.nii.gz", "diff_led_gy.nii.gz",
                 "figures/voi_differences.png", "figures/dvh.png", "figures/bland_altman.png",
                 "figures/difference_slices.png"):
        assert (folder / name).is_file(), name
    assert (folder / "figures" / "dvh.png").read_bytes().startswith(b"\x89PNG")
    assert not [p for p in wd.root.iterdir() if p.name.startswith(".validation")]  # no leftovers

    data = json.loads(res.json_path.read_text())
    assert data == read_validation(wd)
    assert data["schema_version"] == SCHEMA_VERSION
    assert {"schema_version", "kind", "rptdose_version", "created", "study", "inputs",
            "reference", "engines", "comparison", "notes", "files"} <= set(data)
    assert data["study"]["dose_engine"] == "dvk" and data["study"]["nuclide"] == "Lu-177"
    tia = wd.root / "kinetics" / "tia_bq_s.nii.gz"
    assert data["inputs"]["tia"]["sha256_16"] == tia_digest(tia)
    ref = data["reference"]
    assert ref["kind"] == "mc" and ref["source"] == "computed"
    assert ref["n_decays"] == MC_DECAYS and ref["seed"] == SEED
    assert ref["metadata"]["n_decays"] == MC_DECAYS
    assert 0 < ref["voxel_relative_sigma_median_in_vois"] and 0 < ref[
        "voi_mean_relative_sigma_median"] < ref["voxel_relative_sigma_median_in_vois"]
    # 20 000 decays are far too few for voxels: the record says so.
    assert any("noisy at the voxel level" in n for n in data["notes"])
    assert set(data["engines"]) == {"dvk", "led"}
    assert data["engines"]["dvk"]["time_s"] >= 0 and "warnings" in data["engines"]["dvk"]
    comp = data["comparison"]
    assert comp["engines"] == ["dvk", "led"] and comp["reference"] == "mc"
    assert {"schema_version", "vois", "gamma", "bland_altman", "voxel_differences",
            "reference_noise", "normalisation_gy", "body", "grid"} <= set(comp)
    dose_vois = json.loads((wd.root / "dose" / "vois.json").read_text())["vois"]
    assert [v["name"] for v in comp["vois"]] == [v["name"] for v in
                                                 sorted(dose_vois, key=lambda v: v["label"])]
    liver = next(v for v in comp["vois"] if v["name"] == "liver")
    assert set(liver["engines"]["dvk"]["difference_pct"]) == {"mean", "d2", "d50", "d98"}
    assert set(liver["dvh"]["volume_fraction"]) == {"reference", "dvk", "led"}
    for engine in ("dvk", "led"):
        crit = [g["criterion"] for g in comp["gamma"][engine]]
        assert crit == ["3%/3mm global", "2%/2mm global"]
        assert all(0.0 <= g["pass_rate"] <= 1.0 and g["threshold"] == 0.1
                   for g in comp["gamma"][engine])
        ba = comp["bland_altman"][engine]
        assert ba["n"] == len(comp["vois"]) and ba["loa_lower_pct"] < ba["loa_upper_pct"]

    steps = [c[0] for c in calls]
    assert steps[0] == "reference" and steps[-1] == "write"
    assert {"reference", "dvk", "led", "compare", "write"} == set(steps)
    last_ref = [c for c in calls if c[0] == "reference"][-1]
    assert last_ref[1] == last_ref[2]


def test_maps_are_engine_minus_reference(validated):
    wd, res, _ = validated
    folder = res.folder
    ref = read_image(folder / "reference_dose_gy.nii.gz")
    tia = read_image(wd.root / "kinetics" / "tia_bq_s.nii.gz")
    ct = read_image(wd.root / "registration" / "4h_ct.nii.gz")
    assert ref.GetSize() == tia.GetSize() and ref.GetSpacing() == tia.GetSpacing()
    with pytest.warns(UserWarning, match="clipped"):  # the CT's air below −1000 HU
        led = compute_dose("led", tia, "Lu-177", ct)
    diff = sitk.GetArrayFromImage(read_image(folder / "diff_led_gy.nii.gz"))
    expected = sitk.GetArrayFromImage(led.dose) - sitk.GetArrayFromImage(ref)
    # float32 maps: the difference is exact to float32 rounding of doses up to the maximum.
    peak = float(np.abs(expected).max())
    np.testing.assert_allclose(diff, expected, atol=1e-6 * peak)

    liver = res.comparison.voi("liver")
    rel = liver.reference_mean_relative_sigma
    assert rel is not None and rel < 0.05  # the liver gets ~10 % of 20 000 decays
    # DVK against MC for the liver: the DVK's stated dose-conversion error is 5 % (1σ) for
    # organs in soft tissue (dose_stage.py); a grid or unit error would be off by orders of
    # magnitude. 2 × 5 % plus 3σ of the reference's liver mean bounds a correct result.
    assert abs(liver.difference_pct("dvk")["mean"]) < 10.0 + 300.0 * rel


def test_report_methods_section_quotes_the_validation(validated):
    wd, res, _ = validated
    report = build_report(wd, protocol_name=None, engine="dvk")
    methods = next(s for s in report.sections if s.title == "Methods and validation")
    text = " ".join(methods.paragraphs)
    assert "Study-specific engine validation" in text
    assert "dvk, led against the fast voxel Monte Carlo with 2e+04 decays" in text
    g3 = res.comparison.gamma["dvk"][0].pass_rate
    assert "Gamma pass rates of dvk inside the body" in text
    assert f"3%/3mm {100 * g3:.1f} %" in text
    ba = res.comparison.bland_altman["dvk"]
    assert f"Bland–Altman bias {ba.mean_difference_pct:+.1f} %" in text
    (table,) = methods.tables
    assert table.title == "Validation of dvk against the mc reference"
    assert len(table.rows) == len(res.comparison.vois)
    html = render_html(report)
    assert "Validation of dvk against the mc reference" in html
    assert "No study-specific validation" not in html

    # An engine the validation did not cover: said, with how to add it.
    paras, tables = validation_summary(wd, "deep")
    assert any("did not include the deep engine" in p and "--engines deep" in p
               for p in paras) and tables == ()
    # A record made on another TIA map is flagged.
    stale, _ = _validation_summary(wd, "dvk", read_validation(wd), lambda path: "0" * 16)
    assert any("TIA map has changed" in p for p in stale)


def test_report_without_validation_says_how_to_run_one(tmp_path):
    paras, tables = validation_summary(WorkDir(tmp_path), "dvk")
    assert tables == ()
    assert "No study-specific validation of the dose engine was run" in paras[0]
    assert "rptdose mc validate WORKDIR" in paras[0]
    bad = tmp_path / "validation"
    bad.mkdir()
    (bad / "validation.json").write_text('{"schema_version": 99}')
    paras, _ = validation_summary(WorkDir(tmp_path), "dvk")
    assert "schema_version 99" in paras[0] and str(bad / "validation.json") in paras[0]


def test_report_fingerprint_follows_the_validation(validated, tmp_path):
    wd, res, _ = validated
    assert validation_fingerprint(WorkDir(tmp_path)) is None
    fp = validation_fingerprint(wd)
    assert fp is not None and fp["path"] == str(res.json_path)
    assert fp["size"] == res.json_path.stat().st_size


def test_reference_dose_file_reproduces_the_computed_reference(validated, tmp_path):
    wd, res, _ = validated
    # The reference written by the run, given back as a file (a dose from elsewhere): the
    # comparison of the same engine is the same, number for number.
    copy = tmp_path / "work"
    shutil.copytree(wd.root, copy)
    again = validate_workdir(copy, "gate", "led",
                             reference_dose=res.folder / "reference_dose_gy.nii.gz",
                             reference_sigma=res.folder / "reference_sigma_gy.nii.gz")
    assert again.reference_info["source"] == "file"
    assert again.reference_info["description"].startswith("a gate dose read from")
    for a, b in zip(res.comparison.vois, again.comparison.vois, strict=True):
        assert a.engines["led"] == b.engines["led"] and a.reference == b.reference
        assert a.reference_mean_sigma_gy == b.reference_mean_sigma_gy
    assert (again.comparison.gamma_pass_rates("led")
            == res.comparison.gamma_pass_rates("led"))


def test_reference_dose_on_another_grid_is_resampled_with_a_warning(validated, tmp_path):
    wd, res, _ = validated
    copy = tmp_path / "work"
    shutil.copytree(wd.root, copy, ignore=shutil.ignore_patterns("validation"))
    ref = read_image(res.folder / "reference_dose_gy.nii.gz")
    # Half-voxel shift of the origin: covers the TIA grid (all but a half-voxel rim).
    shifted = sitk.Image(ref)
    shifted.SetOrigin(tuple(o + 0.5 * s for o, s in zip(ref.GetOrigin(), ref.GetSpacing(),
                                                         strict=True)))
    path = write_image(shifted, tmp_path / "gate_dose.nii.gz")
    with pytest.warns(UserWarning, match=r"gate_dose\.nii\.gz.*resampled onto it"):
        out = validate_workdir(copy, "gate", "led", reference_dose=path)
    assert any("resampled" in n for n in out.notes)
    assert not out.comparison.has_reference_sigma
    assert json.loads(out.json_path.read_text())["reference"]["file"] == str(path)


def test_reference_dose_errors_name_the_file(validated, tmp_path):
    wd, res, _ = validated
    missing = tmp_path / "nowhere" / "gate_dose.nii.gz"
    with pytest.raises(InputError, match=r"nowhere/gate_dose\.nii\.gz: image file not found"):
        validate_workdir(wd.root, "gate", "led", reference_dose=missing)
    far = read_image(res.folder / "reference_dose_gy.nii.gz")
    far.SetOrigin((5000.0, 5000.0, 5000.0))
    path = write_image(far, tmp_path / "elsewhere.nii.gz")
    with pytest.raises(GeometryError, match=r"elsewhere\.nii\.gz: the reference dose covers "
                                            r"0 % of the TIA grid"):
        validate_workdir(wd.root, "gate", "led", reference_dose=path)
    neg = sitk.Image(far) * -1.0
    neg.CopyInformation(read_image(res.folder / "reference_dose_gy.nii.gz"))
    path = write_image(neg, tmp_path / "negative.nii.gz")
    with pytest.raises(InputError, match=r"negative\.nii\.gz: the reference dose has negative"):
        validate_workdir(wd.root, "gate", "led", reference_dose=path)


def test_missing_stage_outputs_are_named(workfolder, tmp_path):
    with pytest.raises(InputError, match="not a work folder"):
        validate_workdir(tmp_path)
    # Registration and segmentation done, kinetics and dose not.
    early = tmp_path / "early"
    shutil.copytree(workfolder.root, early,
                    ignore=shutil.ignore_patterns("kinetics", "dose", "validation"))
    with pytest.raises(MissingDataError, match=r"kinetics/tia_bq_s\.nii\.gz: missing") as exc:
        validate_workdir(early)
    assert "rptdose run STUDY.yaml -o WORKDIR" in str(exc.value)
    # Kinetics done, dose stage not.
    nodose = tmp_path / "nodose"
    shutil.copytree(workfolder.root, nodose, ignore=shutil.ignore_patterns("dose", "validation"))
    with pytest.raises(MissingDataError, match=r"dose/vois\.json: missing \(the dose stage has "
                                               r"not run\)"):
        validate_workdir(nodose)


def test_bad_options(workfolder):
    with pytest.raises(InputError, match="engines 'dvk,foo'"):
        validate_workdir(workfolder.root, "mc", "dvk,foo")
    with pytest.raises(InputError, match="engines 'gate'"):
        validate_workdir(workfolder.root, "mc", "gate")
    with pytest.raises(InputError, match="reference 'geant'"):
        validate_workdir(workfolder.root, "geant")
    with pytest.raises(InputError, match="mc_decays must be a positive integer"):
        validate_workdir(workfolder.root, mc_decays=0)


def _gate_runs_here() -> bool:
    """Whether the GATE bridge, opengate and the Geant4 data are all present."""
    if importlib.util.find_spec("opengate") is None:
        return False
    try:
        from dosimetry.dose.gate.engine import dose_gate  # noqa: F401
        from dosimetry.dose.gate.g4data import find_g4_data
    except ImportError:
        return False
    try:
        find_g4_data()
    except InputError:
        return False
    return True


def test_gate_reference_without_gate_is_a_clean_input_error(workfolder):
    if _gate_runs_here():
        pytest.skip("GATE and its Geant4 data are installed here: the GATE reference would run "
                    "for real (minutes); its missing-install error cannot be shown")
    # The bridge absent (InputError from validate_workdir), opengate absent (the bridge's
    # DependencyError) or the Geant4 data absent (its G4DataMissingError, an InputError): one
    # of our errors that says what to do, raised before any engine runs.
    before = validation_fingerprint(workfolder)
    with pytest.raises((InputError, DependencyError), match=r"(?i)gate|geant4"):
        validate_workdir(workfolder.root, "gate", "led", mc_decays=1000)
    assert validation_fingerprint(workfolder) == before  # nothing written


@pytest.mark.slow
@pytest.mark.mc
def test_default_engines_with_the_deep_engine(tmp_path):
    # The command's default engines (deep, dvk, led) on a fresh work folder; the deep engine
    # extrapolates to the 9.6 mm voxels (it says so: recorded as a warning, not raised).
    wd = make_validation_workdir(tmp_path, dose_engine="deep")
    res = validate_workdir(wd.root, mc_decays=MC_DECAYS, seed=SEED)
    assert res.comparison.engines == ("deep", "dvk", "led")
    assert any("outside the trained" in w for w in res.engine_info["deep"]["warnings"])
    paras, (table,) = validation_summary(wd, "deep")
    assert table.title == "Validation of deep against the mc reference"
    assert any("Gamma pass rates of deep" in p for p in paras)
    liver = res.comparison.voi("liver")
    rel = liver.reference_mean_relative_sigma
    # Deep (DVK corrected towards MC) for the liver: within its 5 % DVK-like error ×2 plus 3σ of
    # the reference, as DVK in test_maps_are_engine_minus_reference.
    assert abs(liver.difference_pct("deep")["mean"]) < 10.0 + 300.0 * rel
