"""Energy windows: TEW formula (Ogawa et al. 1991) pinned with numbers, window roles."""

from __future__ import annotations

import numpy as np
import pytest

from dosimetry.errors import InputError
from dosimetry.reconstruction.windows import (
    EnergyWindow,
    principal_photopeak_kev,
    select_windows,
    tew_scatter,
)

# The six windows of the real GE Lu-177 export, in file order.
GE_SIX = tuple(EnergyWindow(i, n, lo, hi) for i, (n, lo, hi) in enumerate((
    ("Lu177_EM", 101.7, 124.3), ("Lu177_EM", 187.2, 228.8), ("sc4_SC", 229.63, 251.16),
    ("sc3_SC", 166.89, 186.31), ("sc2_SC", 124.32, 134.68), ("96.0_SC", 91.2, 100.8))))


def test_tew_formula_pinned():
    # S = (C_l/w_l + C_u/w_u) · w_p/2 with the GE Lu-177 widths:
    # lower 186.31-166.89 = 19.42 keV, upper 251.16-229.63 = 21.53 keV, peak 41.6 keV.
    # C_l = 97.1, C_u = 43.06: (5.0 + 2.0) · 20.8 = 145.6 counts
    s = tew_scatter(np.array([97.1]), np.array([43.06]), 19.42, 21.53, 41.6)
    assert s.dtype == np.float32
    assert s[0] == pytest.approx(145.6, rel=1e-6)
    # no upper window: the upper density is taken as zero, 5.0 · 20.8 = 104
    assert tew_scatter(np.array([97.1]), None, 19.42, None, 41.6)[0] == pytest.approx(104.0)
    # linear in the counts and elementwise over any shape
    lo = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(tew_scatter(2 * lo, 0 * lo, 10, 10, 20), 2 * lo, rtol=1e-6)


def test_tew_rejects_bad_widths_and_shapes():
    with pytest.raises(InputError, match=r"lower window width 0"):
        tew_scatter(np.ones(3), np.ones(3), 0.0, 5.0, 20.0)
    with pytest.raises(InputError, match=r"differ in shape"):
        tew_scatter(np.ones(3), np.ones(4), 5.0, 5.0, 20.0)


def test_principal_lines_icrp107():
    # ICRP-107: Lu-177 208.366 keV (10.4 %) beats 112.95 keV (6.2 %); I-131 364.49 keV (81.5 %)
    assert principal_photopeak_kev("Lu-177") == pytest.approx(208.366, abs=0.01)
    assert principal_photopeak_kev("I-131") == pytest.approx(364.49, abs=0.01)


def test_ge_windows_roles_from_window_names():
    sel = select_windows(GE_SIX)
    assert sel.nuclide == "Lu-177"
    assert sel.photopeak == 1 and sel.photopeak_window.lower_kev == 187.2
    assert sel.lower_window.describe() == "166.89–186.31 keV (sc3_SC)"
    assert sel.upper_window.describe() == "229.63–251.16 keV (sc4_SC)"
    assert sel.photopeak_window.width_kev == pytest.approx(41.6)


def test_windows_given_energy_and_errors():
    sel = select_windows(GE_SIX, photopeak_kev=112.9)
    assert sel.photopeak == 0
    assert sel.lower == 5 and sel.upper == 4  # 91.2-100.8 (0.9 keV gap), 124.32-134.68
    unnamed = tuple(EnergyWindow(w.index, "", w.lower_kev, w.upper_kev) for w in GE_SIX)
    with pytest.raises(InputError, match=r"cannot tell which energy window is the photopeak"):
        select_windows(unnamed, where="a.dcm")
    with pytest.raises(InputError, match=r"a.dcm: no energy window contains the photopeak "
                                         r"364.5 keV"):
        select_windows(unnamed, nuclide="I-131", where="a.dcm")
    with pytest.raises(InputError, match=r"limits 200–150 keV"):
        EnergyWindow(0, "x", 200.0, 150.0)
