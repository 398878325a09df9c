"""Far-field photon dose beyond the DVK cube (dosimetry.dose.far_field)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.dose.emissions import Emission
from dosimetry.dose.engines import dose_dvk
from dosimetry.dose.far_field import (
    far_field_dose,
    far_field_kernel,
    load_profiles,
    profile_path,
    write_profiles,
)
from dosimetry.dose.kernels import make_kernel
from dosimetry.errors import InputError
from dosimetry.units import JOULE_PER_MEV


def _image(arr, spacing=(8.0, 8.0, 8.0)):
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))
    img.SetSpacing(spacing)
    return img


@pytest.mark.parametrize("nuclide", ["Lu-177", "I-131"])
def test_shipped_tables_hold_the_photon_energy(nuclide):
    """Energy conservation of the shipped tables: ∫4πr²ρD(r)dr over the table plus the energy
    absorbed within its first radius must not exceed the photon energy emitted per decay, and
    the table (r ≥ 24 mm … 484 mm) must hold most of it: in water the photons of both nuclides
    have mean free paths of 6–9 cm (μ/ρ 0.11–0.16 cm²/g at 113–364 keV, Hubbell & Seltzer,
    NIST IR 5632), so roughly 10–30 % is absorbed within 24 mm and a few per cent beyond
    484 mm."""
    for p in load_profiles(nuclide):
        emitted = p.metadata["photon_energy_per_decay_mev"]
        r = p.r_mm
        dr = np.gradient(r)
        # mGy/(MBq·s) = 1e-9 Gy per decay; soft tissue 1.0 g/cm³ = 1e-6 kg/mm³
        e_mev = float(np.sum(4 * math.pi * r ** 2 * dr * 1e-6 * p.dose * 1e-9)) / JOULE_PER_MEV
        assert 0.55 * emitted < e_mev < emitted, (p.emission, e_mev, emitted)
        # falls monotonically where the table is precise: the γ tables have ≤ 5 % MC noise per
        # shell within 300 mm; the X-ray tables (≤ 1 % of the photon energy of either
        # nuclide, absorbed close by) within 150 mm
        near = r < (300.0 if p.emission is Emission.GAMMA else 150.0)
        rel = p.sigma / p.dose
        assert np.all(p.dose > 0) and rel[near].max() < 0.05
        assert np.all(np.diff(p.dose[near]) < 0)


def test_far_field_kernel_is_zero_in_the_cube_and_the_profile_outside():
    (p,) = load_profiles("Lu-177", "gamma")
    k = far_field_kernel([p], (4.0, 4.0, 5.0), inner_half=(5, 6, 6), extent=(30, 40, 40))
    assert k.shape == (61, 81, 81)  # extent-bound (the table reaches 484 mm)
    c = (30, 40, 40)
    assert np.all(k[c[0] - 5:c[0] + 6, c[1] - 6:c[1] + 7, c[2] - 6:c[2] + 7] == 0)
    assert k[c[0] - 6, c[1], c[2]] > 0 and k[c[0], c[1], c[2] + 7] > 0
    # value at a voxel centre = D(r) there (z spacing 5 mm, x 4 mm)
    r = math.hypot(10 * 5.0, 20 * 4.0)
    assert k[c[0] + 10, c[1], c[2] + 20] == pytest.approx(float(p(np.array([r]))[0]), rel=1e-6)
    np.testing.assert_array_equal(k, k[::-1, ::-1, ::-1])  # point symmetric
    # small maps need only small kernels
    assert far_field_kernel([p], (4.0,) * 3, (2, 2, 2), (3, 4, 5)).shape == (7, 9, 11)


@pytest.mark.mc
def test_small_kernel_plus_far_field_equals_a_large_kernel():
    """DVK with an 11³ photon kernel plus the far field against DVK with a 41³ photon kernel
    made by the same MC: the far-field term must fill exactly what the small cube leaves out
    (no double counting, right units and placement). Both kernels come from 4·10⁵ decays; the
    large kernel's shells beyond the small cube have ≈ 2–4 % noise per voxel, so the comparison
    is on the mean over a 5³ region at 60–100 mm from the source (< 1 % noise), tolerance
    5 %."""
    tia = np.zeros((41, 41, 41))
    tia[20, 20, 20] = 1e9
    img = _image(tia, (6.0, 6.0, 6.0))
    small = make_kernel("Lu-177", 6.0, "soft-tissue-icru", 11, "photons", 400_000, seed=3)
    large = make_kernel("Lu-177", 6.0, "soft-tissue-icru", 41, "photons", 400_000, seed=4)
    d_small = sitk.GetArrayFromImage(dose_dvk(img, "Lu-177", kernel=small).dose)
    d_near = sitk.GetArrayFromImage(dose_dvk(img, "Lu-177", kernel=small,
                                             far_field=False).dose)
    d_large = sitk.GetArrayFromImage(dose_dvk(img, "Lu-177", kernel=large,
                                              far_field=False).dose)
    # inside the small cube the far field adds nothing (up to the FFT's float32 round-off)
    np.testing.assert_allclose(d_small[15:26, 15:26, 15:26], d_near[15:26, 15:26, 15:26],
                               rtol=0, atol=1e-6 * float(d_near.max()))
    for sl in [(slice(18, 23), slice(18, 23), slice(31, 36)),   # 66–90 mm along x
               (slice(30, 35), slice(30, 35), slice(18, 23))]:  # ≈ 85–120 mm diagonal
        a, b = float(d_small[sl].mean()), float(d_large[sl].mean())
        assert d_near[sl].max() < 1e-6 * float(d_near.max()) and b > 0  # beyond the cube
        assert a == pytest.approx(b, rel=0.05)


def test_dvk_records_the_far_field_and_skips_it_without_kernel_metadata():
    tia = np.zeros((9, 9, 9))
    tia[4, 4, 4] = 1e9
    arr = np.zeros((3, 3, 3), dtype=np.float32)
    arr[1, 1, 1] = 1.0
    k = _image(arr)
    plain = dose_dvk(_image(tia), "Lu-177", kernel=k)  # a bare image: nuclide not stated
    assert "not added" in plain.metadata["far_field"]["note"]
    from dosimetry.dose.kernels import Kernel

    with_meta = dose_dvk(_image(tia), "Lu-177",
                         kernel=Kernel(k, None, {"nuclide": "Lu-177",
                                                 "emissions": ["gamma", "x"]}))
    d0 = sitk.GetArrayFromImage(plain.dose)
    d1 = sitk.GetArrayFromImage(with_meta.dose)
    assert with_meta.metadata["far_field"]["emissions"] == ["gamma", "x"]
    assert np.all(d1 >= d0) and d1[4, 4, 0] > 0 == d0[4, 4, 0]
    electrons = dose_dvk(_image(tia), "Lu-177",
                         kernel=Kernel(k, None, {"nuclide": "Lu-177", "emissions": ["beta"]}))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(electrons.dose), d0)


def test_far_field_dose_scales_with_the_tia_and_names_bad_tables(tmp_path):
    tia = np.zeros((5, 5, 5), dtype=np.float32)
    tia[2, 2, 2] = 1e9
    d1, meta = far_field_dose(tia, (8.0, 8.0, 8.0), "I-131", (0, 0, 0))
    d2, _ = far_field_dose(2 * tia, (8.0, 8.0, 8.0), "I-131", (0, 0, 0))
    np.testing.assert_allclose(d2, 2 * d1, rtol=1e-6)
    assert d1[2, 2, 2] == 0 and d1[2, 2, 3] > 0 and meta["emissions"] == ["gamma", "x"]
    none, meta0 = far_field_dose(tia, (8.0,) * 3, "Lu-177", (0, 0, 0), "electrons")
    assert not none.any() and "no photon" in meta0["note"]
    # a damaged table is refused by file and field
    (gamma,) = load_profiles("Lu-177", "gamma")
    path = write_profiles("Lu-177", [gamma], tmp_path)
    doc = json.loads(path.read_text())
    doc["profiles"]["gamma"]["r_mm"] = doc["profiles"]["gamma"]["r_mm"][::-1]
    path.write_text(json.dumps(doc))
    from dosimetry.dose import far_field

    far_field._read.cache_clear()
    with pytest.raises(InputError, match="ascending radii"):
        load_profiles("Lu-177", "gamma", tmp_path)
    with pytest.raises(InputError, match="no 'x' profile"):
        load_profiles("Lu-177", [Emission.X], tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_profiles("I-131", None, tmp_path)
    assert profile_path("Lu-177").name == "far_field_lu177.json"
