"""Deep-dose training patches from digital patients, and their MC targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.dose.deep.data import load_patches, simulate_targets
from dosimetry.errors import InputError
from phantoms.dose_data import DosePatchConfig, make_dose_patches, patient_dose_inputs


def test_patient_inputs_conserve_the_tia_on_the_new_grid():
    fine = patient_dose_inputs(3, "Lu-177", 3.0)
    coarse = patient_dose_inputs(3, "Lu-177", 4.8, with_labels=True)
    assert coarse["ct"].GetSpacing() == pytest.approx((4.8,) * 3)
    assert coarse["tia"].GetSize() == coarse["labels"].GetSize() == coarse["ct"].GetSize()
    s_fine = float(sitk.GetArrayViewFromImage(fine["tia"]).sum())
    s_coarse = float(sitk.GetArrayViewFromImage(coarse["tia"]).sum())
    # amount = concentration × voxel volume, resampled linearly: conserved to the edge voxels
    # of the box (< 1 %), the box being the same physical field of view
    assert s_coarse == pytest.approx(s_fine, rel=0.01)
    assert "liver" in coarse["names"].values()


def test_patches_are_reproducible_and_complete(tmp_path):
    cfg = DosePatchConfig(nuclide="177Lu", patient_seeds=(4,), patches_per_patient=2,
                          patch_size=16, spacings_mm=(4.8,), kernel_decays=100_000,
                          air_probability=1.0)
    a = make_dose_patches(tmp_path / "a", cfg, cache_dir=str(tmp_path / "k"))
    b = make_dose_patches(tmp_path / "b", cfg, cache_dir=str(tmp_path / "k"))
    index = json.loads((a / "index.json").read_text())
    assert index["nuclide"] == "Lu-177" and len(index["patches"]) == 2
    assert all(r["air_pockets"] >= 1 for r in index["patches"])
    for row in index["patches"]:
        with np.load(a / row["file"]) as za, np.load(b / row["file"]) as zb:
            for key in ("material", "density", "hu", "tia", "dvk", "spacing", "dvk_scale"):
                np.testing.assert_array_equal(za[key], zb[key])
            assert za["tia"].shape == (16, 16, 16)
            assert float(za["tia"].max()) == 1.0
            assert float(za["dvk"].max()) == pytest.approx(1.0, abs=1e-3)
            # gas pockets are air and hold no activity
            air = za["hu"] <= -990
            assert air.any() and float(za["tia"][air & (za["density"] < 0.01)].sum()) == 0.0

    # MC targets: the same source, dose in the patch's DVK units
    assert simulate_targets(a, 40_000, seed=3) == 2
    assert simulate_targets(a, 40_000, seed=3) == 0  # nothing left to do
    patches = load_patches(a)
    for p in patches:
        soft = (p["density"] > 0.95) & (p["density"] < 1.1) & (p["dvk"] > 0.5)
        if soft.sum() < 10:
            continue
        # in uniform soft tissue, DVK and MC agree (same physics); 15 %: 4·10⁴ decays leave
        # a few % noise on this region's mean, and the kernel is truncated at the patch edge
        assert p["mc"][soft].mean() / p["dvk"][soft].mean() == pytest.approx(1.0, abs=0.15)
        assert (p["mc_sigma"] >= 0).all()


def test_bad_configurations_are_refused(tmp_path):
    with pytest.raises(InputError, match="Tc-99m|not supported"):
        DosePatchConfig(nuclide="Tc-99m")
    with pytest.raises(InputError, match="patch_size"):
        DosePatchConfig(patch_size=8)
    with pytest.raises(InputError, match="index.json"):
        load_patches(tmp_path)
