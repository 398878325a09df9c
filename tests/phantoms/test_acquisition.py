"""SPECT/CT acquisition kernels: blur, partial volume, Poisson statistics, motion direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import InputError
from phantoms.acquisition import (
    FWHM_TO_SIGMA,
    AcquisitionSpec,
    RigidPose,
    blur_sigma_mm,
    default_acquisition,
    draw_pose,
    make_image,
    simulate_ct,
    simulate_spect,
    spect_grid,
)

SPEC = AcquisitionSpec(collimator="MEGP", fwhm_mm=11.0, sensitivity_cps_per_mbq=5.67,
                       spect_spacing_mm=4.0, matrix_xy=None)


def _point_source(activity_bq=1e8, shape=(80, 80, 80), spacing=2.0, at=(40, 40, 40)):
    arr = np.zeros(shape, np.float32)
    arr[at] = activity_bq
    origin = (-(shape[2] - 1) * spacing / 2,) * 3
    return make_image(arr, (spacing,) * 3, origin)


def test_blur_conserves_activity_and_has_the_stated_width():
    src = _point_source()
    grid = spect_grid(src, SPEC)
    res = simulate_spect(src, grid, sitk.Transform(3, sitk.sitkIdentity), SPEC,
                         np.random.default_rng(0))
    # far from the edges the blurred activity sums to the source (interpolation and the
    # 3.5 σ kernel truncation lose < 0.1 %)
    assert res.activity_in_grid_bq == pytest.approx(1e8, rel=2e-3)
    mu = sitk.GetArrayFromImage(res.expected).astype(np.float64)
    # second moment along x of the expected image = σ² of blur + the linear-interpolation
    # smoothing (a tent of one SPECT voxel: s²/6) … compare with the analytic σ within 5 %
    prof = mu.sum(axis=(0, 1))
    x = np.arange(prof.size) * SPEC.spect_spacing_mm
    m = (prof * x).sum() / prof.sum()
    var = (prof * (x - m) ** 2).sum() / prof.sum()
    sig = blur_sigma_mm(SPEC, src.GetSpacing())[0]
    expected_var = sig ** 2 + SPEC.spect_spacing_mm ** 2 / 6.0
    assert math.sqrt(var) == pytest.approx(math.sqrt(expected_var), rel=0.05)
    assert sig > SPEC.fwhm_mm * FWHM_TO_SIGMA  # voxel averaging adds to the system blur


def test_counts_follow_poisson_statistics():
    # uniform cube of activity: total counts ~ Poisson(Σμ); the test allows 5 σ = 5 √N
    arr = np.zeros((60, 60, 60), np.float32)
    arr[15:45, 15:45, 15:45] = 2e5
    src = make_image(arr, (2.0,) * 3, (-59.0,) * 3)
    grid = spect_grid(src, SPEC)
    res = simulate_spect(src, grid, sitk.Transform(3, sitk.sitkIdentity), SPEC,
                         np.random.default_rng(1))
    n = res.counts_total
    assert abs(n - res.expected_total) < 5 * math.sqrt(res.expected_total)
    # expected counts = S·T·A (S in cps/Bq): the model, to float rounding
    s_t = SPEC.sensitivity_cps_per_mbq * 1e-6 * SPEC.frame_duration_s
    assert res.expected_total == pytest.approx(s_t * res.activity_in_grid_bq, rel=1e-9)
    # Bq/mL image = counts / (S·T·V): the same numbers
    v_ml = SPEC.spect_spacing_mm ** 3 * 1e-3
    c = sitk.GetArrayFromImage(res.counts)
    b = sitk.GetArrayFromImage(res.bq_per_ml)
    np.testing.assert_allclose(b, c / (s_t * v_ml), rtol=1e-6)
    assert np.all(c == np.rint(c))
    # voxel-wise: variance ≈ mean in the flat centre (Poisson), within 10 % (≈ 1000 voxels)
    mu = sitk.GetArrayFromImage(res.expected)
    centre = (slice(12, 18),) * 3
    z = (c[centre] - mu[centre]) / np.sqrt(mu[centre])
    assert abs(float(z.var()) - 1.0) < 0.15


def test_motion_direction_tp_to_ref():
    # tp→ref translation of +10 mm in x: the timepoint image shows the reference content
    # that lies 10 mm further in +x, i.e. the source moves by −10 mm
    src = _point_source(at=(40, 40, 50))  # x index 50 → x = −79 + 100 = 21 mm
    pose = RigidPose((0.0, 0.0, 0.0), (10.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    spec = AcquisitionSpec(collimator="x", fwhm_mm=4.0, sensitivity_cps_per_mbq=5.0,
                           spect_spacing_mm=2.0, matrix_xy=80)
    grid = spect_grid(src, spec)
    res = simulate_spect(src, grid, pose.transform(), spec, np.random.default_rng(0))
    mu = sitk.GetArrayFromImage(res.expected).astype(float)
    prof = mu.sum(axis=(0, 1))
    xs = np.array([grid.TransformIndexToPhysicalPoint((i, 0, 0))[0] for i in range(prof.size)])
    centroid = float((prof * xs).sum() / prof.sum())
    assert centroid == pytest.approx(21.0 - 10.0, abs=0.2)
    # and ref_to_tp (the inverse) maps the reference position onto the timepoint position
    inv = pose.transform().GetInverse()
    assert inv.TransformPoint((21.0, 0.0, 0.0))[0] == pytest.approx(11.0, abs=1e-9)


def test_ct_noise_level_and_integer_values():
    arr = np.zeros((20, 30, 30), np.float32) + 40.0
    ref = make_image(arr, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    ct = simulate_ct(ref, ref, sitk.Transform(3, sitk.sitkIdentity), 15.0,
                     np.random.default_rng(2))
    a = sitk.GetArrayFromImage(ct)
    assert np.all(a == np.rint(a))
    # 18000 voxels: sample SD within 3 % of 15 HU (rounding adds 1/12 HU²)
    assert float(a.std()) == pytest.approx(15.0, rel=0.03)
    assert float(a.mean()) == pytest.approx(40.0, abs=0.5)


def test_poses_are_small_and_seeded():
    p = [draw_pose(np.random.default_rng(s), (0.0, 0.0, 0.0)) for s in range(200)]
    assert draw_pose(np.random.default_rng(3), (0, 0, 0)) == p[3]
    ang = np.array([q.angles_deg for q in p])
    tr = np.array([q.translation_mm for q in p])
    assert np.abs(ang).max() <= 4.0 and np.abs(tr).max() <= 12.0
    assert np.abs(ang).max() > 0.5 and np.abs(tr).max() > 3.0
    assert draw_pose(np.random.default_rng(1), (0, 0, 0), scale=0.0).is_identity


def test_defaults_and_bad_values():
    assert default_acquisition("Lu-177").fwhm_mm < default_acquisition("I-131").fwhm_mm
    with pytest.raises(InputError, match="Tc-99m"):
        default_acquisition("Tc-99m")
    with pytest.raises(InputError, match="FWHM 0.5 mm"):
        AcquisitionSpec(collimator="x", fwhm_mm=0.5, sensitivity_cps_per_mbq=1.0)
