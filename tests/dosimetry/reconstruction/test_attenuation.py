"""CT → μ map at the photopeak: values against NIST XCOM, geometry, extrapolation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import GeometryError
from dosimetry.reconstruction import ObjectGeometry, mu_map_from_ct, mu_per_mm_of_hu
from dosimetry.reconstruction.attenuation import AttenuationFallbackWarning


def test_mu_values_against_xcom():
    # NIST XCOM water, total with coherent: 0.1370 cm²/g at 200 keV, 0.1275 at 250 keV; at
    # 208.4 keV ≈ 0.1354 → 0.01354/mm for 1.00 g/cm³. Schneider's 0 HU is 1.0199 g/cm³ of
    # "adipose-5"/soft tissue composition: ≈ 0.0137–0.0139/mm.
    mu = mu_per_mm_of_hu(np.array([-1000.0, 0.0, 1000.0, 3000.0]), 208.366)
    assert mu[0] == pytest.approx(0.0, abs=2e-5)  # air, 1.2 mg/cm³
    assert 0.0135 < mu[1] < 0.0140
    assert mu[2] > 1.4 * mu[1]  # bone (≈ 1.6 g/cm³)
    assert mu[3] == pytest.approx(float(mu_per_mm_of_hu(np.array([1600.0]), 208.366)[0]))
    # lower energy, more attenuation: Lu-177 113 keV
    assert float(mu_per_mm_of_hu(np.array([0.0]), 112.95)[0]) > mu[1]


def _ct(z0: float, nz: int, spacing=(2.0, 2.0, 2.0)) -> sitk.Image:
    arr = np.full((nz, 40, 40), -1000.0, np.float32)
    arr[:, 10:30, 10:30] = 0.0  # a water box of 40 × 40 mm in x, y
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-39.0, -39.0, z0))
    return img


def test_mu_map_on_grid_and_extrapolation():
    grid = ObjectGeometry((16, 16, 10), (5.0, 5.0, 5.0), (-37.5, -37.5, 0.0))
    ct = _ct(-10.0, 60)  # covers z -10 … 108: the whole grid
    mm = mu_map_from_ct(ct, 208.366, grid)
    assert grid.matches(mm.image) and mm.notes == ()
    arr = sitk.GetArrayFromImage(mm.image)
    water = float(mu_per_mm_of_hu(np.array([0.0]), 208.366)[0])
    assert arr[:, 7:9, 7:9] == pytest.approx(water, rel=1e-3)  # box centre
    assert arr[:, 0, 0].max() < 1e-4  # air corner
    short = _ct(10.0, 11)  # covers z 10 … 30: slices 0, 1 (z 0, 5) and 7…9 lie beyond it
    with pytest.warns(AttenuationFallbackWarning, match=r"5 SPECT slice\(s\) beyond it"):
        mm = mu_map_from_ct(short, 208.366, grid)
    arr2 = sitk.GetArrayFromImage(mm.image)
    np.testing.assert_allclose(arr2[0], arr2[2])
    np.testing.assert_allclose(arr2[9], arr2[6])
    far = _ct(500.0, 10)
    with pytest.raises(GeometryError, match=r"does not overlap the SPECT field"):
        mu_map_from_ct(far, 208.366, grid)
