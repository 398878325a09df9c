"""Study manifest: validation, YAML/JSON round trip, file checks."""

from datetime import datetime, timedelta

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from dosimetry.errors import GeometryError, InputError
from dosimetry.io.images import write_image
from dosimetry.study.images import load_spect_bq_per_ml
from dosimetry.study.manifest import SpectUnits, Study, check_study_files, load_study

INJ = datetime(2024, 3, 4, 9, 30)


def _img(origin=(0.0, 0.0, 0.0), spacing=(4.8, 4.8, 4.8), value=1.0, shape=(10, 12, 14)):
    img = sitk.GetImageFromArray(np.full(shape, value, dtype=np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _study_dict(tmp_path, hours=(4, 24, 96), units="Bq/mL", **extra_tp):
    tps = []
    for h in hours:
        spect = write_image(_img(), tmp_path / f"spect_{h}h.nii.gz")
        ct = write_image(
            _img(spacing=(2.0, 2.0, 2.0), value=-1000.0, shape=(20, 24, 28)),
            tmp_path / f"ct_{h}h.nii.gz",
        )
        tps.append(
            {
                "label": f"{h}h",
                "acquisition_datetime": (INJ + timedelta(hours=h)).isoformat(),
                "spect": spect.name,
                "spect_units": units,
                "ct": ct.name,
                **extra_tp,
            }
        )
    return {
        "patient_id": "P0001",
        "nuclide": "177Lu",
        "radiopharmaceutical": "DOTATATE",
        "administered_activity_mbq": 7400.0,
        "injection_datetime": INJ.isoformat(),
        "timepoints": tps,
    }


def test_round_trip_yaml_and_json(tmp_path):
    study = Study.from_dict(_study_dict(tmp_path))
    assert study.nuclide == "Lu-177"  # canonical spelling from ICRP-107 data
    assert study.administered_activity_bq == pytest.approx(7.4e9)
    assert study.times_after_injection_s() == [4 * 3600.0, 24 * 3600.0, 96 * 3600.0]
    for name in ("study.yaml", "study.json"):
        path = study.save(tmp_path / name)
        assert load_study(path) == study
    assert check_study_files(study, tmp_path) == []


def test_yaml_shorthand_and_safe_loading(tmp_path):
    d = _study_dict(tmp_path)
    text = yaml.safe_dump(d)
    (tmp_path / "s.yaml").write_text(text)
    assert load_study(tmp_path / "s.yaml").timepoints[0].spect.path.name == "spect_4h.nii.gz"
    # An object-constructing tag must not be executed: safe loading rejects it.
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(InputError, match="evil.yaml: not valid YAML"):
        load_study(tmp_path / "evil.yaml")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda d: d.update(administered_activity_mbq=-5.0),
            r"administered_activity_mbq.*greater than 0.*-5\.0",
        ),
        (lambda d: d.update(nuclide="Xx-999"), r"nuclide.*Xx-999"),
        (
            lambda d: d["timepoints"][1].update(
                acquisition_datetime=d["timepoints"][0]["acquisition_datetime"]
            ),
            r"'24h'.*strictly increasing",
        ),
        (
            lambda d: d["timepoints"][0].update(
                acquisition_datetime=(INJ - timedelta(hours=1)).isoformat()
            ),
            r"'4h'.*not after the injection",
        ),
        (
            lambda d: d["timepoints"][0].update(spect_units="MBq/voxel"),
            r"timepoints\.0\.spect_units.*'MBq/voxel'",
        ),
        (
            lambda d: d["timepoints"][0].update(spect_units="counts"),
            r"'4h' has SPECT in counts but no calibration_cps_per_mbq and no frame_duration_s",
        ),
        (lambda d: d.update(surprise=1), r"surprise: Extra inputs are not permitted"),
        (lambda d: d.pop("injection_datetime"), r"injection_datetime: Field required"),
    ],
)
def test_invalid_manifest_messages_name_field_and_value(tmp_path, change, match):
    d = _study_dict(tmp_path)
    change(d)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(InputError, match=match) as info:
        load_study(tmp_path / "bad.yaml")
    assert str(tmp_path / "bad.yaml") in str(info.value)


def test_missing_file_named(tmp_path):
    d = _study_dict(tmp_path)
    d["timepoints"][2]["ct"] = "nowhere/ct.nii.gz"
    study = Study.from_dict(d)
    with pytest.raises(InputError, match=r"timepoints\[96h\]\.ct: file not found: .*nowhere"):
        check_study_files(study, tmp_path)


def test_spect_ct_must_overlap(tmp_path):
    d = _study_dict(tmp_path)
    far = write_image(_img(origin=(0.0, 0.0, 900.0)), tmp_path / "far_spect.nii.gz")
    d["timepoints"][1]["spect"] = far.name
    study = Study.from_dict(d)
    with pytest.raises(GeometryError, match="'24h'.*do not overlap"):
        check_study_files(study, tmp_path)


def test_counts_converted_with_calibration(tmp_path):
    # 1000 counts per voxel over 600 s with 10 cps/MBq → 1000/(600·1e-5)/V Bq/mL.
    d = _study_dict(
        tmp_path, hours=(24,), units="counts", calibration_cps_per_mbq=10.0, frame_duration_s=600.0
    )
    write_image(_img(value=1000.0), tmp_path / "spect_24h.nii.gz")
    study = Study.from_dict(d)
    assert study.timepoints[0].spect_units is SpectUnits.COUNTS
    img = load_spect_bq_per_ml(study, "24h", tmp_path)
    voxel_ml = 4.8**3 / 1000.0
    expected = 1000.0 / (600.0 * 10.0e-6) / voxel_ml
    # float32 image: 1e-6 relative.
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(img), expected, rtol=1e-6)
    assert img.GetSpacing() == pytest.approx((4.8, 4.8, 4.8))


def test_duplicate_labels_and_unknown_reference(tmp_path):
    d = _study_dict(tmp_path)
    d["timepoints"][1]["label"] = "4h"
    with pytest.raises(InputError, match="repeated: 4h"):
        Study.from_dict(d)
    d = _study_dict(tmp_path)
    d["reference_timepoint"] = "999h"
    with pytest.raises(InputError, match="reference_timepoint '999h'"):
        Study.from_dict(d)
