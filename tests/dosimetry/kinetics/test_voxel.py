"""Voxel TIA maps: exactness on noiseless data, robustness, masks, units, hybrid, real data."""

import math
import time
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dosimetry.errors import GeometryError, InputError
from dosimetry.kinetics import (
    FallbackWarning,
    ImageUnit,
    TimeActivityCurve,
    VoxelMethod,
    VoxelStatus,
    fit_tac,
    hybrid_tia_map,
    mono_exponential_tia,
    voxel_tia_map,
)
from dosimetry.kinetics import models as km
from dosimetry.nuclides import get_nuclide
from tests.realdata import extract_reference

H = 3600.0
LAM_P = get_nuclide("Lu-177").decay_constant_per_s
TIMES = np.array([4, 24, 48, 168]) * H
SHAPE = (6, 7, 8)  # (z, y, x)
SPACING = (2.0, 3.0, 4.0)  # (x, y, z) mm → 24 mm³ = 0.024 mL
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _image(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin((-10.0, 5.0, 30.0))
    img.SetDirection(DIRECTION)
    return img


def _mono_series(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    a0 = rng.uniform(1e3, 1e6, shape)
    lam = LAM_P + rng.uniform(0, math.log(2) / (10 * H), shape)
    arrs = [a0 * np.exp(-lam * t) for t in TIMES]
    return a0, lam, arrs


def test_noiseless_mono_is_exact_and_geometry_kept():
    a0, lam, arrs = _mono_series()
    res = voxel_tia_map([_image(a) for a in arrs], TIMES, LAM_P, image_unit=ImageUnit.BQ_PER_VOXEL)
    out = sitk.GetArrayFromImage(res.image)
    # Exact data lie on the log-linear model: the closed-form fit returns them to rounding
    # (float64, sums of 4 terms, exp of ~10): 1e-10 relative.
    np.testing.assert_allclose(out, a0 / lam, rtol=1e-10)
    assert res.n_fitted == out.size and res.n_fallback == 0 and res.fallback_fraction == 0
    assert res.image.GetSpacing() == SPACING and res.image.GetDirection() == DIRECTION
    assert res.image.GetOrigin() == (-10.0, 5.0, 30.0)
    assert res.method is VoxelMethod.MONO


def test_bq_per_ml_is_converted_with_voxel_volume():
    a0, lam, arrs = _mono_series(1)
    res = voxel_tia_map([_image(a) for a in arrs], TIMES, LAM_P, image_unit="Bq/mL")
    voxel_ml = 2.0 * 3.0 * 4.0 / 1000.0
    np.testing.assert_allclose(sitk.GetArrayFromImage(res.image), a0 / lam * voxel_ml,
                               rtol=1e-10)


def test_kernel_matches_per_voxel_weighted_log_fit():
    rng = np.random.default_rng(5)
    n = 300
    a0 = rng.uniform(1e3, 1e5, n)
    lam = LAM_P + rng.uniform(0, math.log(2) / (20 * H), n)
    act = a0 * np.exp(-np.outer(TIMES, lam)) * (1 + 0.05 * rng.standard_normal((4, n)))
    tia, status = mono_exponential_tia(torch.from_numpy(act), TIMES, LAM_P)
    for j in range(n):
        y = act[:, j]
        # Reference: numpy's weighted polyfit of ln A (polyfit weights multiply residuals,
        # so √A gives the kernel's weights A on squared residuals).
        slope, icpt = np.polyfit(TIMES, np.log(y), 1, w=np.sqrt(y))
        if -slope >= LAM_P:
            ref = math.exp(icpt) / -slope
            assert status[j] == VoxelStatus.FITTED
            # Two float64 implementations of the same least squares: 1e-9 relative.
            assert float(tia[j]) == pytest.approx(ref, rel=1e-9)
        elif -slope > 0:
            assert status[j] == VoxelStatus.CLAMPED
            b = np.sum(y * (np.log(y) + LAM_P * TIMES)) / np.sum(y)  # ln A0 with λ = λp
            assert float(tia[j]) == pytest.approx(math.exp(b) / LAM_P, rel=1e-9)


def test_robust_to_zeros_negatives_nan_and_inf():
    *_, arrs = _mono_series(2)
    arrs = [a.copy() for a in arrs]
    rng = np.random.default_rng(3)
    noisy = [a * (1 + 0.3 * rng.standard_normal(a.shape)) for a in arrs]  # some go negative
    noisy[0][0, 0, :3] = np.nan
    noisy[1][0, 1, :] = 0.0
    noisy[2][1, 1, 1] = np.inf
    noisy[3][1, 2, :] = -5.0
    for a in noisy:
        a[2, :, :] = 0.0  # an empty slab
    noisy[3][3, 3, 3] = 50 * noisy[0][3, 3, 3]  # rising voxel → fallback
    with pytest.warns(FallbackWarning, match="fell back to the trapezoid"):
        res = voxel_tia_map([_image(a) for a in noisy], TIMES, LAM_P, image_unit="Bq")
    out = sitk.GetArrayFromImage(res.image)
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    assert np.all(out[2] == 0)
    assert res.n_empty == SHAPE[1] * SHAPE[2]
    assert res.n_fallback >= 1 and 0 < res.fallback_fraction < 1
    assert res.n_fitted + res.n_clamped + res.n_fallback + res.n_empty == out.size
    assert res.warnings and "fell back" in res.warnings[0]


def test_mask_limits_processing_and_chunking_is_invisible():
    a0, lam, arrs = _mono_series(4)
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:4, 2:5, 3:7] = 1
    images = [_image(a) for a in arrs]
    res = voxel_tia_map(images, TIMES, LAM_P, mask=_image(mask), image_unit="Bq")
    small = voxel_tia_map(images, TIMES, LAM_P, mask=_image(mask), image_unit="Bq",
                          chunk_voxels=7)
    out = sitk.GetArrayFromImage(res.image)
    assert res.n_voxels == int(mask.sum())
    assert np.all(out[mask == 0] == 0)
    np.testing.assert_allclose(out[mask == 1], (a0 / lam)[mask == 1], rtol=1e-10)
    assert np.array_equal(out, sitk.GetArrayFromImage(small.image))


def test_float32_and_device_parameter():
    a0, lam, arrs = _mono_series(6)
    images = [_image(a.astype(np.float32)) for a in arrs]
    res = voxel_tia_map(images, TIMES, LAM_P, image_unit="Bq", dtype=torch.float32,
                        device=torch.device("cpu"))
    # float32 inputs and kernel: ~1e-7 per operation, amplified by exp(b + λt̄) ≈ 10 → 1e-5.
    np.testing.assert_allclose(sitk.GetArrayFromImage(res.image), a0 / lam, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu():
    *_, arrs = _mono_series(7)
    images = [_image(a) for a in arrs]
    cpu = voxel_tia_map(images, TIMES, LAM_P, image_unit="Bq")
    gpu = voxel_tia_map(images, TIMES, LAM_P, image_unit="Bq", device="cuda")
    np.testing.assert_allclose(sitk.GetArrayFromImage(gpu.image),
                               sitk.GetArrayFromImage(cpu.image), rtol=1e-12)


def test_geometry_and_input_errors():
    *_, arrs = _mono_series(8)
    images = [_image(a) for a in arrs]
    moved = _image(arrs[2])
    moved.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match=r"image 2 \(t = 48 h\) origin"):
        voxel_tia_map([*images[:2], moved, images[3]], TIMES, LAM_P)
    with pytest.raises(GeometryError, match="mask"):
        voxel_tia_map(images, TIMES, LAM_P, mask=sitk.Image(3, 3, 3, sitk.sitkUInt8))
    with pytest.raises(InputError, match="4 images but 3 times"):
        voxel_tia_map(images, TIMES[:3], LAM_P)
    with pytest.raises(InputError, match="duplicate image times"):
        voxel_tia_map(images, [TIMES[0]] * 4, LAM_P)
    with pytest.raises(InputError, match="chunk_voxels must be ≥ 1, got 0"):
        voxel_tia_map(images, TIMES, LAM_P, chunk_voxels=0)


def test_hybrid_rescales_each_voi_to_its_fit():
    *_, arrs = _mono_series(9)
    rng = np.random.default_rng(10)
    noisy = [a * (1 + 0.1 * rng.standard_normal(a.shape)) for a in arrs]
    labels = np.zeros(SHAPE, np.uint8)
    labels[:3, :, :4] = 1
    labels[3:, 2:, 4:] = 2
    images = [_image(a) for a in noisy]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # noisy voxels may fall back
        plain = voxel_tia_map(images, TIMES, LAM_P, image_unit="Bq")
        res = hybrid_tia_map(images, TIMES, LAM_P, _image(labels), image_unit="Bq")
    out = sitk.GetArrayFromImage(res.image)
    base = sitk.GetArrayFromImage(plain.image)
    assert res.method is VoxelMethod.HYBRID
    for lb in (1, 2):
        fit = res.voi_fits[lb]
        assert fit.success
        # The VOI's voxels now sum to the VOI fit (a rescaling: exact to rounding).
        assert out[labels == lb].sum() == pytest.approx(fit.tia_bq_s, rel=1e-12)
        # Shape inside the VOI is the voxel map's.
        np.testing.assert_allclose(out[labels == lb] / out[labels == lb].sum(),
                                   base[labels == lb] / base[labels == lb].sum(), rtol=1e-12)
    np.testing.assert_array_equal(out[labels == 0], base[labels == 0])

    # Given VOI fits are used as they are.
    tot = np.array([a[labels == 1].sum() for a in noisy])
    given = fit_tac(TimeActivityCurve(TIMES, tot, 0.05 * tot), LAM_P, "trapezoid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        res2 = hybrid_tia_map(images, TIMES, LAM_P, _image(labels), image_unit="Bq",
                              voi_fits={1: given})
    assert sitk.GetArrayFromImage(res2.image)[labels == 1].sum() == pytest.approx(
        given.tia_bq_s, rel=1e-12)


def test_trapezoid_fallback_value():
    act = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
    tia, st = mono_exponential_tia(act, TIMES, LAM_P)
    assert st.tolist() == [VoxelStatus.FALLBACK, VoxelStatus.EMPTY]
    w = km.trapezoid_weights(TIMES, LAM_P)
    assert float(tia[0]) == pytest.approx(float(w @ np.array([1.0, 2.0, 3.0, 4.0])), rel=1e-14)
    assert float(tia[1]) == 0.0


@pytest.mark.realdata
def test_real_fap_series_is_finite_and_fast():
    root = extract_reference("pytia_lu177_fap_4tp")
    images = [sitk.ReadImage(str(root / f"SPECT-{h:03d}H_reg.nii.gz")) for h in (4, 24, 48, 168)]
    times = np.array([4, 24, 48, 168]) * H
    body = sitk.GetArrayViewFromImage(images[0]) > 0.02 * float(
        np.max(sitk.GetArrayViewFromImage(images[0])))
    mask = sitk.GetImageFromArray(body.astype(np.uint8))
    mask.CopyInformation(images[0])
    t0 = time.perf_counter()
    with pytest.warns(FallbackWarning) as record:
        res = voxel_tia_map(images, times, LAM_P, mask=mask, image_unit="Bq")
    elapsed = time.perf_counter() - t0
    out = sitk.GetArrayFromImage(res.image)
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    assert res.n_voxels == int(body.sum()) and 0 <= res.fallback_fraction <= 1
    assert any("fell back" in str(r.message) for r in record)
    assert out[body].max() > 0
    print(f"FAP: {res.n_voxels} voxels in {elapsed:.3f} s, {res.summary()}")


@pytest.mark.realdata
def test_real_fap_hybrid_and_voi_tacs_are_finite():
    from dosimetry.kinetics import voi_tacs

    root = extract_reference("pytia_lu177_fap_4tp")
    images = [sitk.ReadImage(str(root / f"SPECT-{h:03d}H_reg.nii.gz")) for h in (4, 24, 48, 168)]
    times = np.array([4, 24, 48, 168]) * H
    first = sitk.GetArrayViewFromImage(images[0]).astype(float)
    labels = np.zeros(first.shape, np.uint8)
    labels[first > 0.02 * first.max()] = 1  # body
    labels[first > 0.3 * first.max()] = 2  # hot spots
    lab = sitk.GetImageFromArray(labels)
    lab.CopyInformation(images[0])
    tacs = voi_tacs(lab, images, times, image_unit="Bq")
    assert all(np.all(np.isfinite(t.total_bq)) for t in tacs.tacs)
    with warnings.catch_warnings():
        # Not quantitative across time (see the archive's README): fallbacks are expected.
        warnings.simplefilter("ignore", FallbackWarning)
        res = hybrid_tia_map(images, times, LAM_P, lab, image_unit="Bq")
    out = sitk.GetArrayFromImage(res.image)
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    for lb in (1, 2):
        if res.voi_fits[lb].success:
            assert out[labels == lb].sum() == pytest.approx(res.voi_fits[lb].tia_bq_s, rel=1e-9)
