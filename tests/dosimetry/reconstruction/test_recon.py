"""End-to-end reconstruction of synthetic GE/Siemens DICOM: geometry in the CT frame, activity
recovery with a calibration, the counts → Bq/mL formula, the axial field, and the errors."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dosimetry.errors import InputError
from dosimetry.io.images import physical_bounds
from dosimetry.reconstruction import (
    ObjectGeometry,
    ReconUnits,
    axial_field_rows,
    counts_to_bq_per_ml,
    forward_project,
    mu_map_from_ct,
    psf_model,
    read_projections,
    reconstruct,
)
from tests.dosimetry.reconstruction.conftest import (
    GE_WINDOWS,
    SIEMENS_WINDOWS,
    Acquisition,
    ball,
    cylinder_ct,
    detector_angles,
    grid,
    view_radii,
    write_projections,
)

SPACING = 4.4196
AXIS = (6.0, -20.0)
SENS_CPS_PER_MBQ = 10.0
T_VIEW_S = 20.0
HOT = (31.0, -10.0, 40.0)  # hot sphere centre [mm], in bed 2 only
N_XY, N_Z, STEP, N_VIEWS = 32, 16, 10, 36  # per-bed grid, bed step [slices], views
R_BODY = 50.0  # water cylinder radius [mm]


def test_counts_to_bq_per_ml_pinned():
    # f = 1000 counts per view, S = 10 cps/MBq, t = 25 s per view, V = 4.4196³ mm³
    # = 0.08632745 mL: A = 1000 / (10e-6 cps/Bq · 25 s) = 4.0e6 Bq; c = 4.0e6 / 0.08632745
    # = 4.633521e7 Bq/mL
    v_ml = SPACING ** 3 / 1000.0
    assert v_ml == pytest.approx(0.08632745, rel=1e-6)
    c = counts_to_bq_per_ml(1000.0, 10.0, 25.0, v_ml)
    assert float(c) == pytest.approx(4.633521e7, rel=1e-6)
    with pytest.raises(InputError, match=r"time per view \[s\] must be finite and > 0"):
        counts_to_bq_per_ml(1.0, 10.0, 0.0, v_ml)


def test_axial_field_rows():
    counts = np.zeros((2, 3, 40, 8))
    counts[:, :, 10:31] = 100.0
    counts[:, :, 9] = 5.0  # partly covered edge row (5 %): inside, then trimmed
    counts[:, :, 20] = 4.0  # a cold row inside the field stays inside
    counts[:, :, 0:3] = 0.05  # stray counts beyond the detector edge
    assert axial_field_rows(counts) == (10, 29)
    assert axial_field_rows(np.ones((3, 12, 4))) == (0, 11)  # whole matrix: nothing trimmed
    assert axial_field_rows(np.zeros((3, 12, 4))) == (0, 11)


def _scatter(primary: np.ndarray) -> np.ndarray:
    """A smooth scatter component (30 % of a 2-D blurred primary, per view)."""
    return 0.3 * ndimage.gaussian_filter(primary, (0, 2.0, 2.0), mode="constant")


def _windows(acq: Acquisition, primary: np.ndarray, rng: np.random.Generator) -> list:
    """Counts in the acquisition's windows, with Poisson noise. Scatter in each side window is
    the photopeak scatter density × its width, so TEW recovers the scatter on average."""
    s = _scatter(primary)
    (_, plo, phi), *_ = acq.windows
    wp = phi - plo
    out = []
    for i, (_, lo, hi) in enumerate(acq.windows):
        expected = primary + s if i == 0 else s * (hi - lo) / wp
        out.append(rng.poisson(expected).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def ge_two_beds(tmp_path_factory):
    """Two GE beds (32 × 32 × 16 voxels, 10-slice step: 6 overlapping slices, 36 views), a
    water cylinder of 50 kBq/mL with a 10× hot sphere, the CT of the cylinder, noisy counts."""
    tmp = tmp_path_factory.mktemp("ge2")
    full = grid(size_xy=N_XY, slices=N_Z + STEP, axis_xy=AXIS, z0=-60.0)
    nz, ny, nx = full.shape_zyx
    x = full.origin_mm[0] + SPACING * np.arange(nx)
    y = full.origin_mm[1] + SPACING * np.arange(ny)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    body = ((xx - AXIS[0]) ** 2 + (yy - AXIS[1]) ** 2 <= R_BODY ** 2)
    conc = np.repeat(body[None], nz, 0).astype(np.float32) * 50e3  # Bq/mL
    conc += ball(full, HOT, 12.0, 450e3)
    activity_bq = conc * full.voxel_volume_ml
    ct = cylinder_ct(full, AXIS, R_BODY, (-90.0, 110.0))
    psf = psf_model("G8-MEGP", 208.366)
    rng = np.random.default_rng(7)
    paths = []
    for k, (z_first, uid) in enumerate(((0, "1.2.826.0.1.3680043.8.498.77101"),
                                         (STEP, "1.2.826.0.1.3680043.8.498.77102"))):
        bed = full.with_slices(z_first, z_first + N_Z - 1)
        acq = Acquisition("GE", bed, n_views=N_VIEWS, time_per_view_s=T_VIEW_S,
                          radius_mm=150.0, series_uid=uid)
        mu = mu_map_from_ct(ct, 208.366, bed).image
        obj = activity_bq[z_first:z_first + N_Z] * (SENS_CPS_PER_MBQ * 1e-6 * T_VIEW_S)
        primary = forward_project(obj, detector_angles(acq), view_radii(acq), SPACING,
                                  mu_map=sitk.GetArrayFromImage(mu), psf=psf)
        paths.append(write_projections(tmp / "NM" / f"bed{k + 1}.dcm", acq,
                                       _windows(acq, primary, rng)))
    return {"full": full, "ct": ct, "paths": paths, "activity_bq": activity_bq, "body": body}


def test_ge_two_beds_end_to_end(ge_two_beds):
    d = ge_two_beds
    ps = read_projections(d["paths"])
    steps = []
    res = reconstruct(ps, d["ct"], iterations=4, calibration_cps_per_mbq=SENS_CPS_PER_MBQ,
                      progress=lambda s, f: steps.append((s, f)))
    img = res.image
    # --- geometry: the stitched grid is the union of the beds, in the CT's patient frame
    full: ObjectGeometry = d["full"]
    assert res.units is ReconUnits.BQ_PER_ML
    assert img.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(img.GetSpacing(), (SPACING,) * 3)
    np.testing.assert_allclose(img.GetOrigin(), full.origin_mm, atol=1e-3)
    assert img.GetSize() == full.size
    lo_ct, hi_ct = physical_bounds(d["ct"])
    lo, hi = physical_bounds(img)
    assert np.all(lo >= lo_ct) and np.all(hi <= hi_ct)
    # --- the hot sphere is where it was put (centroid of voxels above half its maximum)
    arr = sitk.GetArrayFromImage(img)
    hot = arr > 0.5 * arr.max()
    zz, yy, xx = np.nonzero(hot)
    w = arr[hot]
    centroid = img.TransformContinuousIndexToPhysicalPoint(
        [float(np.average(c, weights=w)) for c in (xx, yy, zz)])
    np.testing.assert_allclose(centroid, HOT, atol=0.5 * SPACING)
    # --- activity lies inside the patient outline of the CT
    outline = np.repeat(d["body"][None], arr.shape[0], 0)
    outline = ndimage.binary_dilation(outline, iterations=2)  # resolution spill-out
    assert arr[outline].sum() / arr.sum() > 0.98
    # --- quantification: total activity and the background concentration
    true_mbq = d["activity_bq"].sum() / 1e6
    # noise-free would give the model's conservation (±1.5 %, test_system); Poisson noise on
    # ≈ 1e7 counts adds 0.03 %; the TEW estimate is unbiased by construction here. 4 %
    # covers the OSEM non-convergence around the hot sphere at 4 × 6.
    assert res.total_activity_mbq() == pytest.approx(true_mbq, rel=0.04)
    idx = np.arange(N_XY) - (N_XY - 1) / 2.0  # voxel offsets from the cylinder axis
    core = idx[:, None] ** 2 + idx[None, :] ** 2 <= 5.0 ** 2  # 22 mm around the axis
    bg = arr[3:8][:, core]  # bed 1 only, far from the sphere and from the axial ends
    assert bg.mean() == pytest.approx(50e3, rel=0.06)
    # --- metadata
    assert [b.file for b in res.beds] == ["bed1.dcm", "bed2.dcm"]
    assert res.beds[0].rows_used == (0, N_Z - 1)
    assert "2 beds stitched (midpoint); overlaps of 6 slices" in res.stitching
    assert res.psf.collimator.code == "G8-MEGP" and res.subsets == 6
    assert res.lower_window.name == "sc3_SC" and res.upper_window.name == "sc4_SC"
    assert res.time_per_view_s == T_VIEW_S
    assert any("decay during the acquisition not corrected" in n for n in res.notes)
    assert steps[-1] == ("done", 1.0)
    d_ = res.to_dict()
    assert d_["units"] == "Bq/mL" and d_["collimator"] == "G8-MEGP"


def test_siemens_single_bed_geometry_no_ct(tmp_path):
    """Siemens layout (two heads, clockwise, non-circular orbit, y = 0 in the detector
    position): a hot sphere in air reconstructs where it was, without CT (no attenuation)."""
    g = grid(size_xy=40, slices=16, axis_xy=(0.0, -35.0), z0=100.0)
    centre = (-30.0, -10.0, 135.0)
    acq = Acquisition("SIEMENS", g, collimator="ME", windows=SIEMENS_WINDOWS,
                      time_per_view_s=15.0, radius_mm=150.0)
    obj = ball(g, centre, 12.0, 40.0)
    psf = psf_model("SY-ME", 208.366)
    primary = forward_project(obj, detector_angles(acq), view_radii(acq), SPACING, psf=psf)
    path = write_projections(tmp_path / "siemens.dcm", acq,
                             _windows(acq, primary, np.random.default_rng(3)))
    res = reconstruct(path, None, attenuation=False, iterations=3, subsets=6)
    assert res.units is ReconUnits.COUNTS and res.psf.collimator.code == "SY-ME"
    arr = sitk.GetArrayFromImage(res.image)
    hot = arr > 0.5 * arr.max()
    zz, yy, xx = np.nonzero(hot)
    c = res.image.TransformContinuousIndexToPhysicalPoint(
        [float(np.average(v, weights=arr[hot])) for v in (xx, yy, zz)])
    np.testing.assert_allclose(c, centre, atol=0.5 * SPACING)
    # counts per view: the sphere's total is recovered (no attenuation, no scatter model error)
    assert arr.sum() == pytest.approx(obj.sum(), rel=0.05)


def test_errors_collimator_ct_scatter(tmp_path):
    g = grid(size_xy=12, slices=6)
    acq = Acquisition("GE", g, n_views=12, collimator="WEIRD")
    counts = [np.full((12, 6, 12), 10.0, np.float32) for _ in GE_WINDOWS]
    path = write_projections(tmp_path / "a.dcm", acq, counts)
    with pytest.raises(InputError, match=r"a.dcm: CollimatorGridName \(0018,1180\) 'WEIRD'"):
        reconstruct(path, None, attenuation=False)
    res = reconstruct(path, None, attenuation=False, psf=False, iterations=1, subsets=2)
    assert res.psf is None and res.units is ReconUnits.COUNTS
    res = reconstruct(path, None, attenuation=False, collimator="G8-MEGP", iterations=1,
                      subsets=2)
    assert res.psf.collimator.header_name == "G8-MEGP"
    with pytest.raises(InputError, match=r"attenuation correction needs the CT"):
        reconstruct(path, None)
    only_peak = replace(acq, windows=GE_WINDOWS[:2], series_uid="1.2.826.0.1.3680043.8.498.77201")
    p2 = write_projections(tmp_path / "b.dcm", only_peak, counts[:2])
    with pytest.raises(InputError, match=r"TEW scatter correction needs a scatter window just "
                                         r"below the photopeak"):
        reconstruct(p2, None, attenuation=False, psf=False)
    with pytest.raises(InputError, match=r"scatter 'dew': use 'tew' or 'none'"):
        reconstruct(path, None, scatter="dew")
    with pytest.raises(InputError, match=r"calibration_cps_per_mbq must be > 0"):
        reconstruct(path, None, attenuation=False, calibration_cps_per_mbq=-1.0)
    assert math.isfinite(res.seconds)
