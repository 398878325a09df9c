"""Dose validation (reference vs candidates) on analytic dose maps with known answers.

The phantom: a 24³ grid of 3 mm voxels; a 20³ body at 2 Gy; an 8³ cube "organ" (label 1) at
exactly 8 Gy; a "lesion" (label 2, a sphere of radius 2 voxels) under a truncated Gaussian peak
of 8 Gy on the background, maximum 10 Gy at one voxel; zero dose outside the body.
"""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.dose.validation import (
    GAMMA_CRITERIA,
    SCHEMA_VERSION,
    bland_altman,
    body_mask_from_ct,
    compare_doses,
    dose_statistics,
)
from dosimetry.errors import GeometryError, InputError

SPACING = (3.0, 3.0, 3.0)
N = 24
BODY = (slice(2, 22),) * 3
CUBE = (slice(6, 14),) * 3
CUBE_INTERIOR = (slice(8, 12),) * 3  # ≥ 6 mm from the cube's edge voxels: flat within 2·DTA
PEAK = (17, 17, 17)
NAMES = {1: "organ", 2: "lesion"}


def _img(arr, dtype=np.float32):
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=dtype))
    img.SetSpacing(SPACING)
    img.SetOrigin((-36.0, -36.0, -36.0))
    return img


def _phantom():
    z, y, x = np.indices((N, N, N))
    r2 = sum((a - c) ** 2 for a, c in zip((z, y, x), PEAK, strict=True))
    dose = np.zeros((N, N, N))
    dose[BODY] = 2.0
    dose += np.where(r2 <= 16, 8.0 * np.exp(-r2 / (2 * 1.5**2)), 0.0)  # truncated at 4 voxels
    dose[CUBE] = 8.0
    labels = np.zeros((N, N, N), np.uint16)
    labels[CUBE] = 1
    labels[r2 <= 4] = 2
    body = np.zeros((N, N, N), np.uint8)
    body[BODY] = 1
    return dose.astype(np.float32), labels, body


@pytest.fixture(scope="module")
def phantom():
    dose, labels, body = _phantom()
    assert dose.max() == 10.0 and np.count_nonzero(dose == 10.0) == 1
    return _img(dose), _img(labels, np.uint16), _img(body, np.uint8), dose


def test_identical_maps_agree_exactly(phantom):
    ref, labels, body, _ = phantom
    res = compare_doses(ref, {"same": sitk.Image(ref)}, labels, NAMES, body_mask=body)
    for v in res.vois:
        assert all(d == 0.0 for d in v.difference_pct("same").values())
        assert v.dvh_volume_fraction["same"] == v.dvh_volume_fraction["reference"]
    assert res.gamma_pass_rates("same") == {"3%/3mm global": 1.0, "2%/2mm global": 1.0}
    # γ = 0 at every evaluated voxel: the zero displacement matches exactly.
    for g in res.gamma["same"]:
        assert np.nanmax(g.gamma) == 0.0 and g.n_evaluated == 20**3
    assert not sitk.GetArrayViewFromImage(res.difference_gy["same"]).any()
    assert res.voxel_differences["same"].max_abs_gy == 0.0
    ba = res.bland_altman["same"]
    assert ba.n == 2 and ba.mean_difference_pct == 0.0 and ba.sd_pct == 0.0
    assert res.normalisation_gy == 10.0 and res.body_voxels == 20**3


def test_three_percent_scaling(phantom):
    ref, labels, body, dose = phantom
    scaled = _img(dose * np.float32(1.03))
    sigma = _img(0.01 * dose)  # 1 % statistical σ in every voxel
    res = compare_doses(ref, {"hot": scaled}, labels, NAMES, body_mask=body,
                        reference_sigma=sigma, reference_name="mc")
    # Every statistic of every VOI is 3 % higher; float32 storage of 1.03·D rounds at 6e-8
    # relative, i.e. 6e-6 %: 1e-4 % is far above that and far below any real difference.
    for v in res.vois:
        for key, d in v.difference_pct("hot").items():
            assert d == pytest.approx(3.0, abs=1e-4), (v.name, key)
    organ = res.voi("organ")
    assert organ.n_voxels == 512 and organ.volume_ml == pytest.approx(512 * 0.027)
    # σ of the organ mean with independent voxels of σ = 0.08 Gy: 0.08/√512.
    assert organ.reference_mean_sigma_gy == pytest.approx(0.08 / math.sqrt(512), rel=1e-6)
    assert organ.reference_voxel_relative_sigma_median == pytest.approx(0.01, rel=1e-6)
    assert organ.difference_in_reference_sigma("hot") == pytest.approx(
        0.24 / (0.08 / math.sqrt(512)), rel=1e-5)
    assert res.reference_voxel_relative_sigma_median() == pytest.approx(0.01, rel=1e-6)
    assert res.reference_relative_sigma_evaluated == pytest.approx(0.01, rel=1e-6)

    # Bland–Altman over the two VOIs: both +3 %, no spread.
    ba = res.bland_altman["hot"]
    assert ba.mean_difference_pct == pytest.approx(3.0, abs=1e-4)
    assert ba.sd_pct == pytest.approx(0.0, abs=1e-4)
    assert ba.loa_lower_pct == pytest.approx(3.0, abs=1e-3)
    assert ba.loa_upper_pct == pytest.approx(3.0, abs=1e-3)

    # Difference maps: 0.03·D in Gy, 3·D/D_max in % of the maximum.
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(res.difference_gy["hot"]),
                               0.03 * dose, atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(res.difference_pct["hot"]),
                               3.0 * dose / 10.0, atol=1e-4)

    g3, g2 = res.gamma["hot"]
    n_eval = g3.n_evaluated
    assert n_eval == 20**3  # the whole body is ≥ 10 % of the 10 Gy maximum (2 Gy floor)
    # 3 %/3 mm global: at zero displacement γ = 0.03·D/(0.03·D_max) = D/D_max ≤ 1 for every
    # voxel, so all pass; only the single voxel at the maximum sits at γ = 1, where rounding
    # may tip it either way.
    assert g3.pass_rate >= 1.0 - 1.0 / n_eval
    # Where the dose is flat over the search sphere (the cube's interior at 8 Gy) no
    # displacement helps: γ = 0.24/0.3 = 0.8 at 3 %/3 mm and 0.24/0.2 = 1.2 at 2 %/2 mm.
    np.testing.assert_allclose(g3.gamma[CUBE_INTERIOR], 0.8, rtol=1e-5)
    np.testing.assert_allclose(g2.gamma[CUBE_INTERIOR], 1.2, rtol=1e-5)
    # 2 %/2 mm: γ(0) = 0.15·D ≤ 1 for D ≤ 6.67 Gy, so those voxels pass; the flat interior
    # fails. The pass rate lies between those two counts.
    n_high = int(np.count_nonzero(dose[BODY] > 0.02 * 10.0 / 0.03))
    assert 1.0 - n_high / n_eval <= g2.pass_rate <= 1.0 - 4**3 / n_eval
    assert g2.pass_rate < 1.0

    d = res.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION and d["reference"] == "mc"
    assert [g["criterion"] for g in d["gamma"]["hot"]] == [
        f"{c * 100:g}%/{t:g}mm global" for c, t in GAMMA_CRITERIA]
    assert d["vois"][0]["engines"]["hot"]["difference_pct"]["mean"] == pytest.approx(3.0,
                                                                                     abs=1e-4)
    assert d["reference_noise"]["voxel_relative_sigma_median_in_vois"] == pytest.approx(0.01)


def test_dvh_endpoints(phantom):
    ref, labels, body, dose = phantom
    res = compare_doses(ref, {"hot": _img(dose * np.float32(1.03))}, labels, NAMES,
                        body_mask=body, dvh_levels=50)
    organ = res.voi("organ")
    levels = np.asarray(organ.dvh_dose_gy)
    # Common levels from 0 to the highest dose of any map in the VOI: the scaled 8.24 Gy.
    assert levels[0] == 0.0 and levels[-1] == pytest.approx(8.24, rel=1e-6) and levels.size == 50
    ref_v = np.asarray(organ.dvh_volume_fraction["reference"])
    hot_v = np.asarray(organ.dvh_volume_fraction["hot"])
    # The uniform 8 Gy cube: the whole VOI gets every level up to 8 Gy and none above.
    np.testing.assert_array_equal(ref_v, np.where(levels <= 8.0, 1.0, 0.0))
    np.testing.assert_array_equal(hot_v, np.ones(50))
    lesion = res.voi("lesion")
    lv = np.asarray(lesion.dvh_volume_fraction["hot"])
    # V(0) = 1, V(max) = the one voxel at the peak, and a cumulative DVH never rises.
    assert lv[0] == 1.0 and lv[-1] == pytest.approx(1 / lesion.n_voxels)
    assert lesion.dvh_volume_fraction["reference"][-1] == 0.0
    assert np.all(np.diff(lv) <= 0)
    st = lesion.reference
    assert st.d98_gy <= st.d50_gy <= st.d2_gy <= 10.0


def test_dose_statistics_percentiles():
    st = dose_statistics(np.arange(101, dtype=float))  # 0 … 100 Gy: percentiles are exact
    assert (st.mean_gy, st.d2_gy, st.d50_gy, st.d98_gy) == (50.0, 98.0, 50.0, 2.0)
    assert math.isnan(dose_statistics(np.array([])).mean_gy)


def test_bland_altman_known_numbers():
    ref = np.array([10.0, 20.0, 40.0, 50.0])
    diffs = np.array([1.0, 2.0, 3.0, 4.0])
    ba = bland_altman(ref, ref * (1 + diffs / 100), names=["a", "b", "c", "d"])
    # mean 2.5; sample SD √(Σ(d − 2.5)²/3) = √(5/3); LoA 2.5 ± 1.96·SD; SE SD/√4.
    sd = math.sqrt(5.0 / 3.0)
    assert ba.n == 4 and ba.vois == ("a", "b", "c", "d")
    assert ba.mean_difference_pct == pytest.approx(2.5, rel=1e-12)
    assert ba.sd_pct == pytest.approx(sd, rel=1e-12)
    assert ba.loa_lower_pct == pytest.approx(2.5 - 1.96 * sd, rel=1e-12)
    assert ba.loa_upper_pct == pytest.approx(2.5 + 1.96 * sd, rel=1e-12)
    assert ba.mean_difference_se_pct == pytest.approx(sd / 2, rel=1e-12)
    np.testing.assert_allclose(ba.means_gy, ref * (1 + diffs / 200), rtol=1e-12)
    # A pair with no reference dose has no relative difference: left out; one pair has no SD.
    one = bland_altman([0.0, 5.0], [1.0, 5.5], names=["empty", "x"])
    assert one.vois == ("x",) and one.mean_difference_pct == pytest.approx(10.0)
    assert one.sd_pct is None and one.loa_upper_pct is None
    assert one.to_dict()["sd_pct"] is None
    with pytest.raises(InputError, match="3 reference values but 2"):
        bland_altman([1, 2, 3], [1, 2])


def test_bland_altman_through_compare_doses(phantom):
    ref, labels, body, dose = phantom
    lab = sitk.GetArrayFromImage(labels)
    factor = np.where(lab == 1, 1.01, np.where(lab == 2, 1.05, 1.0))
    res = compare_doses(ref, {"mixed": _img(dose * factor)}, labels, NAMES, body_mask=body)
    ba = res.bland_altman["mixed"]
    # Differences +1 % (organ) and +5 % (lesion): bias 3 %, SD √8 (n − 1 = 1).
    assert ba.mean_difference_pct == pytest.approx(3.0, abs=1e-4)
    assert ba.sd_pct == pytest.approx(math.sqrt(8.0), abs=1e-4)


def test_missing_voi_and_whole_grid_body(phantom):
    ref, labels, _, _ = phantom
    res = compare_doses(ref, {"same": ref}, labels, {**NAMES, 7: "absent"},
                        gamma_criteria=((0.03, 3.0),))
    assert res.missing_vois == ("absent",) and len(res.vois) == 2
    assert res.body_definition == "the whole grid" and res.body_voxels == N**3
    assert len(res.gamma["same"]) == 1


def test_body_mask_from_ct_keeps_lung_drops_air():
    ct = np.full((10, 10, 10), -1000.0)
    ct[2:8, 2:8, 2:8] = 0.0
    ct[4:6, 4:6, 4:6] = -800.0  # lung, 0.2 g/cm³
    mask = sitk.GetArrayFromImage(body_mask_from_ct(_img(ct)))
    assert mask.sum() == 6**3 and mask[5, 5, 5] == 1 and mask[0, 0, 0] == 0


def test_errors_name_the_problem(phantom):
    ref, labels, _, dose = phantom
    other = _img(dose)
    other.SetSpacing((4.0, 4.0, 4.0))
    with pytest.raises(GeometryError, match="the shifted dose spacing"):
        compare_doses(ref, {"shifted": other}, labels, NAMES)
    with pytest.raises(InputError, match="may not be called 'reference'"):
        compare_doses(ref, {"reference": ref}, labels, NAMES)
    with pytest.raises(InputError, match="no candidate"):
        compare_doses(ref, {}, labels, NAMES)
    bad = dose.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="the nan dose: 1 voxels are not finite"):
        compare_doses(ref, {"nan": _img(bad)}, labels, NAMES)
    with pytest.raises(InputError, match="maximum in the body is 0 Gy"):
        compare_doses(_img(np.zeros_like(dose)), {"x": ref}, labels, NAMES)
    with pytest.raises(InputError, match="body mask is empty"):
        compare_doses(ref, {"x": ref}, labels, NAMES, body_mask=_img(np.zeros_like(dose),
                                                                      np.uint8))
    with pytest.raises(InputError, match="negative values"):
        compare_doses(ref, {"x": ref}, labels, NAMES, reference_sigma=_img(-dose))


def test_labels_on_a_finer_grid(phantom):
    """VOIs on a grid twice as fine as the doses (as the CT's label map is to the SPECT's)."""
    ref, labels, body, dose = phantom
    lab = sitk.GetArrayFromImage(labels)
    fine = np.repeat(np.repeat(np.repeat(lab, 2, 0), 2, 1), 2, 2)
    fine = np.pad(fine, ((0, 0), (0, 0), (0, 4)))  # 4 fine voxels beyond the dose grid in x
    fine[20:28, 20:28, 44:52] = 3  # half inside the dose grid, half beyond it
    fine_img = sitk.GetImageFromArray(fine.astype(np.uint16))
    fine_img.SetSpacing((1.5, 1.5, 1.5))
    # Fine voxel centres 0.75 mm either side of each dose voxel centre.
    fine_img.SetOrigin(tuple(o - 0.75 for o in ref.GetOrigin()))
    res = compare_doses(ref, {"hot": _img(dose * np.float32(1.03))}, fine_img,
                        {**NAMES, 3: "edge"}, body_mask=body, reference_sigma=_img(0.01 * dose))
    organ = res.voi("organ")
    assert organ.n_voxels == 16**3 and organ.n_outside == 0
    assert organ.volume_ml == pytest.approx(16**3 * 1.5**3 / 1000)
    # Trilinear interpolation of the separable step 2 + 6·1[cube]: the outermost fine layer
    # sits a quarter voxel outside the cube's edge centres, weight 0.75 per axis, so the
    # mean is 2 + 6·(15.5/16)³ (exact up to float32 storage).
    assert organ.reference.mean_gy == pytest.approx(2 + 6 * (15.5 / 16) ** 3, rel=1e-6)
    assert organ.difference_pct("hot")["mean"] == pytest.approx(3.0, abs=1e-4)
    # Each dose voxel of the cube holds 8 of the 4096 fine voxels: √(512·(8σ)²)/4096 = σ/√512.
    assert organ.reference_mean_sigma_gy == pytest.approx(0.08 / math.sqrt(512), rel=1e-6)
    lesion = res.voi("lesion")
    assert lesion.n_voxels == 8 * int(np.count_nonzero(lab == 2))
    edge = res.voi("edge")
    assert edge.n_voxels == 8 * 8 * 4 and edge.n_outside == 8 * 8 * 4
    assert res.to_dict()["vois"][2]["n_outside_dose_grid"] == 256
    away = sitk.Image(fine_img)
    away.SetOrigin((1000.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="label map does not overlap"):
        compare_doses(ref, {"hot": ref}, away, NAMES)
