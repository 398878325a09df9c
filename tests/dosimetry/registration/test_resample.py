"""Activity-conserving resampling and the QA kernels, on synthetic images with known answers."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.registration import qa as rq
from dosimetry.registration.config import QAThresholds
from dosimetry.registration.errors import RegistrationError
from dosimetry.registration.resample import (
    field_grid,
    fov_fraction_activity,
    image_activity_bq,
    resample_activity,
    transform_jacobian,
)


def _image(arr, spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(np.asarray(arr, np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _blob(shape=(40, 48, 56), spacing=(4.0, 4.0, 4.0)):
    """A smooth activity distribution [Bq/mL] well inside its field of view."""
    z, y, x = np.indices(shape, dtype=float)
    c = [(n - 1) / 2 for n in shape]
    r2 = ((z - c[0]) / 4) ** 2 + ((y - c[1]) / 5) ** 2 + ((x - c[2]) / 6) ** 2
    return _image(1e4 * np.exp(-r2), spacing)


def _rigid(angles_deg, shift_mm, centre):
    t = sitk.Euler3DTransform()
    t.SetCenter(centre)
    t.SetRotation(*(math.radians(a) for a in angles_deg))
    t.SetTranslation(shift_mm)
    return t


def _centre(img):
    return img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()])


def test_rigid_resampling_conserves_activity_onto_a_finer_grid():
    spect = _blob()
    # Target: a finer (CT-like) grid over the same box, anisotropic spacing.
    target = sitk.Image([112, 96, 64], sitk.sitkFloat32)
    target.SetSpacing((2.0, 2.0, 2.5))
    target.SetOrigin((-1.0, -1.0, -0.75))
    tf = _rigid((2.0, -1.5, 3.0), (6.0, -4.0, 8.0), _centre(spect))
    out, chk = resample_activity(spect, target, tf)
    total = image_activity_bq(spect)
    # The blob lies well inside both boxes, so the in-field total is the whole total (the
    # field-of-view fraction is exact to float rounding here).
    assert chk.before_bq == pytest.approx(total, rel=1e-6)
    # Rigid motion has det J = 1: only trilinear interpolation changes the raw total, by far
    # less than 1 % for a blob many voxels wide.
    assert abs(chk.relative_change_raw) < 0.01
    # After the correction the total is exact to float32 rounding of ~10⁵ voxels.
    assert image_activity_bq(out) == pytest.approx(total, rel=1e-5)
    assert sitk.GetArrayViewFromImage(out).min() >= 0
    assert out.GetSpacing() == target.GetSpacing() and out.GetSize() == target.GetSize()


def test_scaling_transform_needs_the_jacobian():
    """An affine scaling by 1.1 per axis: the target voxel covers 1.1³ of the moving volume,
    so without the Jacobian factor the total would change by 1/1.331 − 1 = −25 %."""
    spect = _blob()
    tf = sitk.AffineTransform(3)
    tf.SetCenter(_centre(spect))
    tf.SetMatrix((1.1, 0, 0, 0, 1.1, 0, 0, 0, 1.1))
    assert transform_jacobian(tf, None, spect) == pytest.approx(1.331)
    _, chk = resample_activity(spect, spect, tf)
    assert abs(chk.relative_change_raw) < 0.01
    naive = sitk.Resample(spect, spect, tf, sitk.sitkLinear, 0.0)
    assert image_activity_bq(naive) / image_activity_bq(spect) == pytest.approx(1 / 1.331,
                                                                                rel=0.01)


def test_deformable_resampling_conserves_activity():
    spect = _blob()
    # A smooth B-spline deformation with ~4 mm displacements (control points 40 mm apart).
    bs = sitk.BSplineTransformInitializer(spect, [4, 4, 4], order=3)
    rng = np.random.default_rng(3)
    bs.SetParameters(tuple(float(v) for v in rng.normal(0, 4.0, bs.GetNumberOfParameters())))
    lin = _rigid((1.0, 0.0, -2.0), (3.0, 2.0, -5.0), _centre(spect))
    det = transform_jacobian(lin, bs, spect)
    stats = rq.jacobian_stats(det, _image(np.ones(spect.GetSize()[::-1])))
    assert stats.fraction_nonpositive == 0 and 0.5 < stats.min < 1 < stats.max < 1.5
    out, chk = resample_activity(spect, spect, lin, bs, det)
    # Mass-preserving resampling: the Jacobian factor keeps the raw total within 1 % (the
    # remaining error is interpolation of the blob and of the Jacobian).
    assert abs(chk.relative_change_raw) < 0.01
    assert image_activity_bq(out) == pytest.approx(image_activity_bq(spect), rel=1e-5)


def test_field_of_view_fraction_counts_only_activity_inside_the_target():
    # Uniform 1 Bq/mL in a 40 × 40 × 40 mm box; the target box covers its upper half in x.
    src = _image(np.ones((10, 10, 10)), spacing=(4.0, 4.0, 4.0), origin=(2.0, 2.0, 2.0))
    target = _image(np.zeros((10, 10, 5)), spacing=(4.0, 4.0, 4.0), origin=(22.0, 2.0, 2.0))
    inside = fov_fraction_activity(src, target, sitk.Euler3DTransform())
    assert inside == pytest.approx(0.5 * 64.0, rel=1e-9)  # 64 mL × ½ × 1 Bq/mL
    # Shifted by half a voxel: the fraction is geometric (per voxel overlap), 18/40 of the box.
    shifted = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))
    assert fov_fraction_activity(src, target, shifted) == pytest.approx(64.0 * 18 / 40,
                                                                       rel=1e-9)


def test_field_grid_encloses_the_image():
    img = _image(np.zeros((10, 12, 14)), spacing=(3.0, 3.0, 5.0), origin=(10.0, -5.0, 7.0))
    g = field_grid(img, 8.0)
    lo_img = np.asarray(img.GetOrigin())
    hi_img = np.asarray(img.TransformIndexToPhysicalPoint([n - 1 for n in img.GetSize()]))
    lo = np.asarray(g.GetOrigin())
    hi = np.asarray(g.TransformIndexToPhysicalPoint([n - 1 for n in g.GetSize()]))
    assert np.all(lo < lo_img) and np.all(hi > hi_img)


def test_dice_and_label_volumes():
    a = np.zeros((10, 10, 10), np.uint16)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = 1  # 64 voxels
    b[3:7, 2:6, 2:6] = 1  # shifted by one slice: 48 in common
    a[8:, 8:, 8:] = 2
    b[8:, 8:, 8:] = 2
    d = rq.dice_per_label(_image(a), _image(b))
    assert d == {1: pytest.approx(2 * 48 / 128), 2: 1.0}
    assert rq.label_volumes_ml(_image(a, spacing=(2.0, 2.0, 2.0))) == {
        1: pytest.approx(64 * 8e-3), 2: pytest.approx(8 * 8e-3)}


def test_jacobian_detects_folding():
    """A displacement u_x = −1.5·x over part of the grid: ∂x'/∂x = 1 − 1.5 < 0 (folded)."""
    shape = (8, 8, 16)
    disp = np.zeros((*shape, 3))
    x = np.arange(shape[2]) * 2.0
    disp[..., 4:12, 0] = -1.5 * (x[4:12] - x[4])
    field = sitk.GetImageFromArray(disp, isVector=True)
    field.SetSpacing((2.0, 2.0, 2.0))
    det = sitk.DisplacementFieldJacobianDeterminant(field, True)
    stats = rq.jacobian_stats(det, _image(np.ones(shape)))
    assert stats.min < 0 and stats.fraction_nonpositive > 0.2
    with pytest.raises(RegistrationError, match=r"'24h'.*folds space"):
        rq.check_timepoint("24h", thresholds=QAThresholds(), metric_before=-0.5,
                           metric_after=-0.8, body_dice_after=0.98, max_disp_mm=5.0,
                           jacobian=stats, activity_changes_raw={"ct": 0.001})


@pytest.mark.parametrize(("kw", "match"), [
    ({"metric_after": -0.4}, r"metric got worse \(-0.5000 → -0.4000"),
    ({"metric_after": math.nan}, "not finite"),
    ({"max_disp_mm": 400.0}, "implausible displacement of 400 mm"),
    ({"body_dice_after": 0.5}, r"body outlines do not match .*Dice 0.500"),
    ({"activity_changes_raw": {"spect": 0.3}}, r"reference spect grid changed .* \+30.0%"),
])
def test_check_timepoint_refuses_with_the_value(kw, match):
    args = {"thresholds": QAThresholds(), "metric_before": -0.5, "metric_after": -0.8,
            "body_dice_after": 0.98, "max_disp_mm": 5.0, "jacobian": None,
            "activity_changes_raw": {"ct": 0.001}}
    with pytest.raises(RegistrationError, match=match) as info:
        rq.check_timepoint("96h", **{**args, **kw})
    assert info.value.timepoint == "96h"


def test_check_timepoint_accepts_a_good_registration():
    rq.check_timepoint("96h", thresholds=QAThresholds(), metric_before=-0.5, metric_after=-0.8,
                       body_dice_after=0.98, max_disp_mm=5.0, jacobian=None,
                       activity_changes_raw={"ct": 0.001, "spect": -0.002})
