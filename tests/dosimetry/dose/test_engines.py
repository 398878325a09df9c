"""Dose engines on images: LED analytic values, DVK, MC, and their mutual consistency."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.dose.emissions import source_spectrum
from dosimetry.dose.engines import (
    DoseEngine,
    compute_dose,
    dose_dvk,
    dose_led,
    dose_mc,
    resample_ct_to,
)
from dosimetry.dose.kernels import Kernel, make_kernel
from dosimetry.errors import GeometryError, InputError
from dosimetry.materials import hu_to_density

MEV_TO_J = 1.602176634e-13


def _image(arr, spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def test_led_analytic_value():
    tia = np.zeros((3, 3, 3))
    tia[1, 1, 1] = 1e9  # Bq·s = decays
    res = dose_led(_image(tia, spacing=(10.0, 10.0, 10.0)), "Lu-177")  # 1 cm³, ρ = 1.00
    e_e = 0.14792  # MeV per decay, physics.md (ICRP-107)
    expected = 1e9 * e_e * MEV_TO_J / 1e-3  # J/kg for 1 g
    d = sitk.GetArrayFromImage(res.dose)
    assert d[1, 1, 1] == pytest.approx(expected, rel=1e-4)  # physics.md quotes 5 digits
    assert d.sum() == pytest.approx(d[1, 1, 1], rel=1e-6)
    assert res.engine is DoseEngine.LED and res.uncertainty is None
    with_photons = dose_led(_image(tia, spacing=(10.0, 10.0, 10.0)), "Lu-177",
                            include_photons=True)
    ratio = sitk.GetArrayFromImage(with_photons.dose)[1, 1, 1] / d[1, 1, 1]
    assert ratio == pytest.approx((0.14792 + 0.03509) / 0.14792, rel=1e-4)


def test_led_uses_ct_density_and_keeps_geometry():
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    tia = _image(np.full((4, 5, 6), 1e6), spacing=(2.0, 3.0, 4.0), origin=(-5, 7, 9),
                 direction=direction)
    ct = _image(np.full((4, 5, 6), 500.0), spacing=(2.0, 3.0, 4.0), origin=(-5, 7, 9),
                direction=direction)
    res = dose_led(tia, "I-131", ct, emissions="beta")
    assert res.dose.GetSpacing() == tia.GetSpacing()
    assert res.dose.GetOrigin() == tia.GetOrigin()
    assert res.dose.GetDirection() == tia.GetDirection()
    mass_kg = float(hu_to_density(500.0)) * 24e-3 * 1e-3
    e_beta = source_spectrum("I-131", "beta").electron_energy_per_decay_mev
    np.testing.assert_allclose(sitk.GetArrayFromImage(res.dose),
                               1e6 * e_beta * MEV_TO_J / mass_kg, rtol=1e-6)
    assert res.metadata["ct_resampled"] is False


def test_ct_on_another_grid_is_resampled():
    tia = _image(np.ones((5, 5, 5)), spacing=(4.0, 4.0, 4.0))
    ct = _image(np.full((10, 10, 10), 40.0), spacing=(2.0, 2.0, 2.0), origin=(-1.0, -1.0, -1.0))
    on, resampled = resample_ct_to(ct, tia)
    assert resampled and on.GetSize() == tia.GetSize()
    res = dose_led(tia, "Lu-177", ct)
    assert res.metadata["ct_resampled"] is True
    far = _image(np.zeros((3, 3, 3)), origin=(1000.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="does not overlap"):
        dose_led(tia, "Lu-177", far)


def test_tia_checks():
    bad = np.ones((3, 3, 3))
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="1 voxels are not finite"):
        dose_led(_image(bad), "Lu-177")
    neg = np.ones((3, 3, 3))
    neg[0, 0, 0] = -5
    with pytest.warns(UserWarning, match="1 negative voxels"):
        res = dose_led(_image(neg), "Lu-177")
    assert sitk.GetArrayFromImage(res.dose)[0, 0, 0] == 0.0
    with pytest.raises(InputError, match="unknown dose engine 'geant'"):
        compute_dose("geant", _image(np.ones((3, 3, 3))), "Lu-177")


def _unit_kernel():
    arr = np.zeros((3, 3, 3), dtype=np.float32)
    arr[1, 1, 1] = 0.5
    arr[1, 1, 0] = arr[1, 1, 2] = 0.1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((4.0, 4.0, 4.0))
    return Kernel(img, None, {"nuclide": "Lu-177", "emissions": ["beta"],
                              "material": {"density_gcm3": 1.0}})


def test_dvk_point_source_reproduces_kernel():
    tia = np.zeros((7, 7, 7))
    tia[3, 3, 3] = 2e6
    k = _unit_kernel()
    res = dose_dvk(_image(tia), "Lu-177", kernel=k)
    d = sitk.GetArrayFromImage(res.dose).astype(np.float64)
    # K [mGy/(MBq·s)] × TIA [Bq·s] × 1e-9 = Gy; float32 FFT rounding ~1e-7 of the maximum
    np.testing.assert_allclose(d[2:5, 2:5, 2:5], k.array * 2e6 * 1e-9, atol=1e-7 * d.max())
    with pytest.raises(GeometryError, match="kernel voxel size"):
        dose_dvk(_image(tia, spacing=(5.0, 5.0, 5.0)), "Lu-177", kernel=k)


def test_dvk_density_correction():
    tia = np.zeros((5, 5, 5))
    tia[2, 2, 2] = 1e6
    hu = np.zeros((5, 5, 5))
    hu[2, 2, 3] = -700.0  # a lung-like voxel beside the source
    res = dose_dvk(_image(tia), "Lu-177", _image(hu), kernel=_unit_kernel())
    plain = dose_dvk(_image(tia), "Lu-177", kernel=_unit_kernel())
    d, p = (sitk.GetArrayFromImage(r.dose).astype(np.float64) for r in (res, plain))
    rho = hu_to_density(hu)
    np.testing.assert_allclose(d[2, 2, 3], p[2, 2, 3] * 1.0 / rho[2, 2, 3], rtol=1e-5)
    np.testing.assert_allclose(d[2, 2, 1], p[2, 2, 1] / rho[2, 2, 1], rtol=1e-5)
    assert "Dieudonné" in res.metadata["density_correction"]


@pytest.mark.mc
def test_led_equals_dvk_in_uniform_region_up_to_the_photon_term():
    # Far from edges of a uniform TIA region, the electron kernel returns all its energy to
    # the voxel's neighbourhood (charged-particle equilibrium): DVK(electrons) = LED.
    tia = _image(np.full((15, 15, 15), 1e8))
    k_e = make_kernel("Lu-177", 4.0, "soft-tissue-icru", 5, "electrons", 200_000, seed=4)
    led = sitk.GetArrayFromImage(dose_led(tia, "Lu-177", emissions="electrons").dose)
    dvk = sitk.GetArrayFromImage(dose_dvk(tia, "Lu-177", kernel=k_e).dose)
    centre = (slice(5, 10),) * 3
    ratio = dvk[centre].mean() / led[centre].mean()
    # Σ K·m equals the electron energy of the simulated decays, whose mean has a relative
    # standard error ≈ 0.7/√N (β energy spread): 5σ = 0.8 % for 200 000 decays
    assert ratio == pytest.approx(1.0, abs=5 * 0.7 / math.sqrt(200_000))
    # with photons, the kernel adds the photon energy absorbed within its ±10 mm: more than
    # the electrons alone, less than all photon energy deposited locally
    k_all = make_kernel("Lu-177", 4.0, "soft-tissue-icru", 5, "all", 50_000, seed=5,
                        world_margin_mm=20.0)
    dvk_all = sitk.GetArrayFromImage(dose_dvk(tia, "Lu-177", kernel=k_all).dose)[centre].mean()
    led_all = sitk.GetArrayFromImage(
        dose_led(tia, "Lu-177", include_photons=True).dose)[centre].mean()
    assert led[centre].mean() < dvk_all < led_all


@pytest.mark.mc
def test_mc_engine_result_and_agreement_with_led():
    shape = (16, 16, 16)
    tia = np.zeros(shape)
    tia[3:13, 3:13, 3:13] = 5e8
    ct = _image(np.full(shape, 0.0), spacing=(2.0, 2.0, 2.0))
    img = _image(tia, spacing=(2.0, 2.0, 2.0), origin=(1.0, 2.0, 3.0))
    ct.SetOrigin(img.GetOrigin())
    res = dose_mc(img, "Lu-177", ct, emissions="electrons", n_decays=100_000, seed=1,
                  n_batches=10)
    assert res.uncertainty is not None and res.engine is DoseEngine.MC
    assert res.dose.GetOrigin() == img.GetOrigin()
    d = sitk.GetArrayFromImage(res.dose).astype(np.float64)
    s = sitk.GetArrayFromImage(res.uncertainty).astype(np.float64)
    led = sitk.GetArrayFromImage(dose_led(img, "Lu-177", ct, emissions="electrons").dose)
    inner = (slice(5, 11),) * 3  # ≥ 2 mm inside the active cube: equilibrium
    # the mean over 216 voxels: its standard error from the voxel σ (batches independent,
    # voxel correlations are positive and small at 2 mm for Lu-177 β) — allow 5σ
    se = math.sqrt((s[inner] ** 2).sum()) / s[inner].size
    assert abs(d[inner].mean() - led[inner].mean()) < 5 * se + 2e-3 * led[inner].mean()
    assert res.metadata["n_decays"] == 100_000
    bal = res.metadata["energy_balance_mev_per_decay"]
    assert bal["deposited"] + bal["escaped"] == pytest.approx(bal["emitted"], rel=1e-9)
