"""IEC image-quality figures: recovery coefficients, NEMA contrast and background variability
on images whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.io.images import read_image
from phantoms.iec import (
    LUNG_INSERT_DIAMETER_MM,
    SPHERE_DIAMETERS_MM,
    IECConfig,
    _inside_body,
    make_iec,
    sphere_centers_mm,
)
from phantoms.iec_metrics import (
    N_ROIS_PER_SLICE,
    ROI_CLEARANCE_MM,
    background_roi_centers,
    iec_metrics,
)


@pytest.fixture(scope="module")
def iec(tmp_path_factory):
    out = tmp_path_factory.mktemp("iecm") / "iec"
    return make_iec(out, IECConfig(ratio=8.0, ct_spacing_mm=2.0, spect_spacing_mm=4.7952,
                                   seed=3))


def _uniform_like(img: sitk.Image, value: float) -> sitk.Image:
    out = sitk.Image(img.GetSize(), sitk.sitkFloat32) + float(value)
    out.CopyInformation(img)
    return out


def test_background_rois_keep_nema_clearances():
    centers = background_roi_centers()
    assert len(centers) == N_ROIS_PER_SLICE
    reach = max(SPHERE_DIAMETERS_MM) / 2 + ROI_CLEARANCE_MM
    for cx, cy in centers:
        # 37 mm ROI + 15 mm inside the body, 15 mm from every sphere wall and the lung insert
        for a in np.linspace(0, 2 * math.pi, 36, endpoint=False):
            assert _inside_body(cx + reach * math.cos(a), cy + reach * math.sin(a), 90.0)
        for (sx, sy, _), d in zip(sphere_centers_mm(), SPHERE_DIAMETERS_MM, strict=True):
            assert math.hypot(cx - sx, cy - sy) >= d / 2 + 1.0 + reach - 1e-9
        assert math.hypot(cx, cy) >= LUNG_INSERT_DIAMETER_MM / 2 + reach - 1e-9
    assert len(set(centers)) == len(centers)


def test_uniform_image_gives_zero_variability_and_contrast(iec):
    img = read_image(iec.out_dir / "nifti" / "spect.nii.gz")
    c_bg = iec.truth["background"]["concentration_bq_per_ml"]
    m = iec_metrics(_uniform_like(img, c_bg), iec.truth)
    assert m.n_background_rois == 60
    assert m.background_recovery == pytest.approx(1.0, rel=1e-9)
    for s in m.spheres:
        # a flat image holds the background in every sphere: RC = 1/ratio, Q_H = 0, N_j = 0
        assert s.rc_mean == pytest.approx(1 / 8.0, rel=1e-9)
        assert s.contrast_percent == pytest.approx(0.0, abs=1e-9)
        assert s.background_variability_percent == pytest.approx(0.0, abs=1e-9)
    assert m.lung_residual_percent == pytest.approx(100.0, rel=1e-9)


def test_true_activity_map_recovers_the_spheres(iec):
    """On the 2 mm truth map (Bq/voxel → Bq/mL) only the occupancy-weighted boundary voxels
    differ from the true concentration: Σw²/Σw of the weights; ≥ 0.9 for the 37 mm sphere,
    and RC rises with the diameter."""
    act = read_image(iec.out_dir / "truth" / "activity.nii.gz")
    v_ml = float(np.prod(act.GetSpacing())) / 1000.0
    conc = act / v_ml
    m = iec_metrics(conc, iec.truth)
    rcs = [s.rc_mean for s in m.spheres]
    assert rcs == sorted(rcs)
    assert 0.9 < rcs[-1] <= 1.0 + 1e-6
    assert all(s.rc_max == pytest.approx(1.0, rel=1e-5) for s in m.spheres)
    assert m.background_recovery == pytest.approx(1.0, rel=0.01)
    assert m.lung_residual_percent < 1.0


def test_simulated_spect_figures_are_plausible(iec):
    img = read_image(iec.out_dir / "nifti" / "spect.nii.gz")
    m = iec_metrics(img, iec.truth)
    rcs = [s.rc_mean for s in m.spheres]
    assert rcs[-1] > rcs[0]
    assert all(0 < r < 1.0 for r in rcs)
    bvs = [s.background_variability_percent for s in m.spheres]
    assert bvs[0] > bvs[-1] > 0  # larger ROIs average more noise away
    assert m.background_recovery == pytest.approx(1.0, abs=0.05)
    d = m.to_dict()
    assert len(d["spheres"]) == 6 and "rc_mean" in d["spheres"][0]
    assert "RC_mean" in m.table()


def test_bad_inputs_are_named(iec):
    img = read_image(iec.out_dir / "nifti" / "spect.nii.gz")
    with pytest.raises(InputError, match="lacks field"):
        iec_metrics(img, {"spheres": []})
    rot = sitk.Image(img)
    rot.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(InputError, match="identity direction"):
        iec_metrics(rot, iec.truth)
    short = img[:, :, :5]
    with pytest.raises(InputError, match="does not cover the background ROI slices"):
        iec_metrics(short, iec.truth)
