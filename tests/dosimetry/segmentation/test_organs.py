"""Organ table: mass = Σ voxel volume × density(HU), volumes, mean HU."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import GeometryError
from dosimetry.segmentation.labelmap import LabelEntry, LabelMap, LabelTable, label_image
from dosimetry.segmentation.organs import DEFAULT_DENSITY_G_PER_CM3, organ_table
from tests.dosimetry.segmentation.conftest import make_grid


def _case():
    ref = make_grid(size=(10, 8, 6), spacing=(2.0, 2.5, 4.0), origin=(0, 0, 0))
    lab = np.zeros((6, 8, 10), np.uint16)
    lab[1:3, 2:6, 2:7] = 1  # 40 voxels
    lab[4, 1:3, 1:4] = 2  # 6 voxels
    hu = np.full(lab.shape, -1000.0, np.float32)
    hu[lab == 1] = 40.0
    hu[lab == 2] = np.array([-500.0, -500.0, -500.0, 1000.0, 1000.0, 1000.0])
    ct = sitk.GetImageFromArray(hu)
    ct.CopyInformation(ref)
    lm = LabelMap(label_image(lab, ref), LabelTable((LabelEntry(1, "liver"),
                                                     LabelEntry(2, "mixed"))))
    return lm, ct


def test_mass_is_sum_of_voxel_volume_times_density():
    lm, ct = _case()
    t = organ_table(lm, ct)
    v_ml = 2.0 * 2.5 * 4.0 * 1e-3  # 20 mm³ = 0.02 mL = 0.02 cm³
    # Schneider calibration by hand (linear between its points):
    # 40 HU between (23, 1.031) and (100, 1.1199); −500 HU between (−1000, 0.00121) and
    # (−98, 0.93); 1000 HU between (101, 1.0762) and (1600, 1.9642)
    rho40 = 1.031 + (40 - 23) / (100 - 23) * (1.1199 - 1.031)
    rho_m500 = 0.00121 + (-500 + 1000) / (-98 + 1000) * (0.93 - 0.00121)
    rho1000 = 1.0762 + (1000 - 101) / (1600 - 101) * (1.9642 - 1.0762)
    assert t["liver"].voxels == 40
    assert t["liver"].volume_ml == pytest.approx(40 * v_ml)
    assert t["liver"].mass_g == pytest.approx(40 * v_ml * rho40, rel=1e-9)
    assert t["liver"].mean_hu == pytest.approx(40.0)
    assert t["mixed"].mass_g == pytest.approx(3 * v_ml * (rho_m500 + rho1000), rel=1e-9)
    assert t["mixed"].mean_density_g_per_cm3 == pytest.approx((rho_m500 + rho1000) / 2)
    assert "Schneider" in t.density_source


def test_without_ct_a_uniform_density_is_assumed_and_said():
    lm, _ = _case()
    t = organ_table(lm)
    assert t["liver"].mass_g == pytest.approx(40 * 0.02 * DEFAULT_DENSITY_G_PER_CM3)
    assert t["liver"].mean_hu is None and "no CT" in t.density_source


def test_ct_on_another_grid_is_refused():
    lm, ct = _case()
    other = sitk.Image(ct)
    other.SetSpacing((1.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="spacing"):
        organ_table(lm, other)
