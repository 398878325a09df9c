"""VOI TACs from label maps and images; recovery-coefficient correction."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import GeometryError, InputError
from dosimetry.kinetics import (
    IEC_SPHERE_VOLUMES_ML,
    FallbackWarning,
    ImageUnit,
    RecoveryCurve,
    fit_tac,
    voi_tacs,
)
from dosimetry.nuclides import get_nuclide

H = 3600.0
TIMES = np.array([4, 24, 72]) * H
SPACING = (4.0, 4.0, 5.0)  # 80 mm³ = 0.08 mL per voxel
VOXEL_ML = 0.08


def _image(arr):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    return img


def _setup():
    labels = np.zeros((10, 10, 10), np.int16)
    labels[:5] = 1  # 500 voxels = 40 mL
    labels[6:8, 6:8, 6:8] = 7  # 8 voxels = 0.64 mL
    conc = [np.full((10, 10, 10), 100.0 * (k + 1)) for k in range(3)]  # Bq/mL
    for k, c in enumerate(conc):
        c[labels == 7] = 1000.0 / (k + 1)
    return labels, conc


def test_totals_means_and_volumes():
    labels, conc = _setup()
    res = voi_tacs(_image(labels), [_image(c) for c in conc], TIMES, names={1: "liver"})
    liver, small = res["liver"], res[7]
    assert small.name == "label_7"
    assert liver.n_voxels == 500 and liver.volume_ml == pytest.approx(500 * VOXEL_ML)
    np.testing.assert_allclose(liver.mean_bq_per_ml, [100.0, 200.0, 300.0], rtol=1e-12)
    np.testing.assert_allclose(liver.total_bq, np.array([100, 200, 300]) * 500 * VOXEL_ML,
                               rtol=1e-12)
    np.testing.assert_allclose(small.mean_bq_per_ml, [1000.0, 500.0, 1000.0 / 3], rtol=1e-12)
    assert liver.recovery_coefficient == 1.0
    curve = small.curve()
    assert curve.voi == "label_7" and curve.activity_bq == small.total_bq


def test_bq_per_voxel_unit():
    labels, conc = _setup()
    res = voi_tacs(_image(labels), [_image(c) for c in conc], TIMES,
                   image_unit=ImageUnit.BQ_PER_VOXEL)
    np.testing.assert_allclose(res[1].total_bq, [100.0 * 500, 200.0 * 500, 300.0 * 500])
    np.testing.assert_allclose(res[1].mean_bq_per_ml, np.array(res[1].total_bq) / 40.0)


def test_recovery_correction_only_for_small_vois():
    labels, conc = _setup()
    rc = RecoveryCurve.from_iec_spheres([0.30, 0.42, 0.55, 0.66, 0.74, 0.80])
    res = voi_tacs(_image(labels), [_image(c) for c in conc], TIMES, recovery=rc)
    small, liver = res[7], res[1]
    expect_rc = float(np.interp(math.log(0.64), np.log(IEC_SPHERE_VOLUMES_ML),
                                [0.30, 0.42, 0.55, 0.66, 0.74, 0.80]))
    assert small.recovery_coefficient == pytest.approx(expect_rc, rel=1e-12)
    np.testing.assert_allclose(small.mean_bq_per_ml, np.array([1000.0, 500.0, 1000 / 3])
                               / expect_rc, rtol=1e-12)
    assert liver.recovery_coefficient == 1.0  # 40 mL > largest sphere (26.5 mL): untouched


def test_recovery_curve_interpolation_slope_and_validation():
    rc = RecoveryCurve((1.0, 10.0), (0.5, 0.9))
    assert rc.rc(1.0) == pytest.approx(0.5) and rc.rc(10.0) == pytest.approx(0.9)
    assert rc.rc(math.sqrt(10.0)) == pytest.approx(0.7)  # midpoint in log(volume)
    assert rc.rc(0.1) == pytest.approx(0.5) and not rc.in_range(0.1)  # held, flagged
    # dRC/dV = (0.4 / ln 10) / V; σ_RC/RC = slope·σ_V/RC.
    v = 3.0
    slope = 0.4 / math.log(10.0) / v
    assert rc.slope(v) == pytest.approx(slope, rel=1e-12)
    assert rc.relative_sigma(v, 0.3) == pytest.approx(slope * 0.3 / rc.rc(v), rel=1e-12)
    assert IEC_SPHERE_VOLUMES_ML[0] == pytest.approx(0.5236, abs=1e-4)  # π·1³/6 mL
    assert IEC_SPHERE_VOLUMES_ML[-1] == pytest.approx(26.52, abs=0.01)
    with pytest.raises(InputError, match="increase strictly"):
        RecoveryCurve((2.0, 1.0), (0.5, 0.9))
    with pytest.raises(InputError, match=r"recovery coefficients must lie in \(0, 1.5\]"):
        RecoveryCurve((1.0, 2.0), (0.0, 0.9))


def test_geometry_mismatch_and_bad_labels():
    labels, conc = _setup()
    other = _image(conc[1])
    other.SetSpacing((4.0, 4.0, 4.0))
    with pytest.raises(GeometryError, match="image 1 .* spacing"):
        voi_tacs(_image(labels), [_image(conc[0]), other, _image(conc[2])], TIMES)
    shifted = _image(labels)
    shifted.SetOrigin((1.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="label map"):
        voi_tacs(shifted, [_image(c) for c in conc], TIMES)
    with pytest.raises(InputError, match="integer labels, found 0.5"):
        voi_tacs(_image(labels * 0.5), [_image(c) for c in conc], TIMES)
    with pytest.raises(InputError, match="no voxel with a label > 0"):
        voi_tacs(_image(labels * 0), [_image(c) for c in conc], TIMES)


def test_nan_voxels_are_announced_and_counted_as_zero():
    labels, conc = _setup()
    conc[0][0, 0, 0] = np.nan
    with pytest.warns(FallbackWarning, match="non-finite voxel"):
        res = voi_tacs(_image(labels), [_image(c) for c in conc], TIMES)
    assert res[1].total_bq[0] == pytest.approx(100.0 * 499 * VOXEL_ML)
    assert res.warnings


def test_tacs_feed_the_fit():
    labels, _ = _setup()
    lam = math.log(2) / (50 * H)
    times = np.array([4, 24, 48, 96, 168]) * H
    conc = [np.where(labels > 0, 1e4 * math.exp(-lam * t), 0.0) for t in times]
    res = voi_tacs(_image(labels), [_image(c) for c in conc], times)
    fit = fit_tac(res[1].curve(), get_nuclide("Lu-177").decay_constant_per_s, "mono")
    assert fit.tia_bq_s == pytest.approx(1e4 * 40.0 / lam, rel=1e-6)  # exact data
