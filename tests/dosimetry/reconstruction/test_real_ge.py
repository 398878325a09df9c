"""The real GE Discovery 670 Lu-177 export (raw projections + CT, reference data).

``../shared/reference/real/ge_lu177_projections_ct.tar.xz``: 2 bed positions, 6 energy windows ×
60 views, 128², 4.4196 mm, MEGP, 25 s per view, CT of 303 slices in the same frame of
reference; no dates, weight or injected activity. See ``../shared/reference/README.md``.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from tests.realdata import extract_reference

pytestmark = pytest.mark.realdata

#: A nominal Lu-177 planar sensitivity for a medium-energy collimator, 208 keV ± 10 % window
#: [cps/MBq]. Published calibration factors of this kind are ≈ 9–11 cps/MBq (e.g. 10.6–10.8
#: cps/MBq for a Siemens MELP collimator from a Jaszczak phantom, indico.cern.ch/event/1525866,
#: contribution 6513996). Not a calibration of this camera: the activity below scales as 1/S.
NOMINAL_SENSITIVITY_CPS_PER_MBQ = 10.0


@pytest.fixture(scope="module")
def data():
    return extract_reference("ge_lu177_projections_ct")


def test_real_projections_read(data):
    from dosimetry.io.dicom import scan_dicom_folder
    from dosimetry.reconstruction import read_projections, resolve_collimator

    ps = read_projections(data / "NM")
    assert len(ps.beds) == 2
    assert ps.nuclide == "Lu-177"  # from the window names (the header's nuclide is blank)
    for bed in ps.beds:
        assert bed.counts.shape == (6, 60, 128, 128)
        assert bed.pixel_spacing_mm == (4.4196, 4.4196)
        assert bed.time_per_view_s == 25.0
        assert bed.collimator == "MEGP" and bed.manufacturer == "GE MEDICAL SYSTEMS"
        assert bed.frame_of_reference_uid == ps.frame_of_reference_uid
    sel = ps.selection
    assert (sel.photopeak_window.lower_kev, sel.photopeak_window.upper_kev) == (187.2, 228.8)
    assert (sel.lower_window.lower_kev, sel.lower_window.upper_kev) == (166.89, 186.31)
    assert (sel.upper_window.lower_kev, sel.upper_window.upper_kev) == (229.63, 251.16)
    assert resolve_collimator(ps.beds[0].collimator, ps.manufacturer).code == "G8-MEGP"
    # beds sorted by z: bed2 (detector z 103.6 mm at the top row) below bed1 (457.6 mm)
    assert [b.path.name for b in ps.beds] == ["bed2_projections.dcm", "bed1_projections.dcm"]
    np.testing.assert_allclose([b.radii_mm[0] for b in ps.beds], [254.8, 253.7])
    (ct,) = scan_dicom_folder(data / "CT").by_modality("CT")
    assert ct.n_images == 303 and ct.frame_of_reference_uid == ps.frame_of_reference_uid


def test_real_projections_match_pytomography_parse(data):
    """Our reader gives PyTomography's projections, angles, radii and object affine."""
    from dosimetry.reconstruction import read_projections
    from dosimetry.reconstruction.system import pytomography_session

    path = data / "NM" / "bed1_projections.dcm"
    bed = read_projections(path).beds[0]
    with pytomography_session("cpu"):
        from pytomography.io.SPECT import dicom

        _, proj_meta = dicom.get_metadata(str(path), index_peak=1)
        proj = dicom.get_projections(str(path)).cpu().numpy()  # (W, V, r, z)
        affine = dicom._get_affine_spect_projections(str(path))
    order = np.argsort(bed.detector_angles_deg)
    np.testing.assert_allclose(bed.detector_angles_deg[order], proj_meta.angles.cpu().numpy(),
                               atol=1e-4)
    np.testing.assert_allclose(bed.radii_mm[order] / 10.0, proj_meta.radii)
    np.testing.assert_array_equal(bed.counts[:, order].transpose(0, 1, 3, 2), proj)
    np.testing.assert_allclose(bed.geometry.origin_mm, affine[:3, 3], atol=1e-6)


def _kidneys(ct: sitk.Image) -> np.ndarray:
    """Kidney parenchyma on the CT: the built-in organ model's kidneys (which are too small on
    this real, non-contrast CT) as seeds, grown within 0–80 HU (after a 1.5 mm Gaussian) in a
    box of ±30 mm around each, opened in-plane (5×5 px) to cut thin links, the component that
    holds most of the seed, holes filled. Gives 111 and 106 mL here (adult kidneys ≈ 120–170)."""
    from dosimetry.segmentation.builtin import segment_organs

    labels = segment_organs(ct).labels
    lab = labels.array()
    hu = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(ct, 1.5))
    out = np.zeros(hu.shape, bool)
    for name in ("kidney_left", "kidney_right"):
        seed = lab == labels.table.by_name(name).label
        zz, yy, xx = np.nonzero(seed)
        pad = (12, 30, 30)
        box = tuple(slice(max(int(c.min()) - p, 0), int(c.max()) + p + 1)
                    for c, p in zip((zz, yy, xx), pad, strict=True))
        cand = np.zeros(hu.shape, bool)
        cand[box] = (hu[box] > 0) & (hu[box] < 80)
        cand = ndimage.binary_opening(cand, structure=np.ones((1, 5, 5)))
        comp, _ = ndimage.label(cand)
        ids, counts = np.unique(comp[seed & cand], return_counts=True)
        keep = ids[counts.argmax()] if ids.size else 0
        out |= ndimage.binary_fill_holes(comp == keep) if keep else seed
    return out


@pytest.mark.slow
def test_real_reconstruction_in_ct_frame(data, capsys):
    """Both beds, 4 iterations × 10 subsets, attenuation + TEW + MEGP response; figures printed.

    Checks: the image is in the CT's patient frame (identity direction, the detector's x/y
    position, z inside the CT's extent ± the last slices); ≥ 90 % of the activity lies inside
    the CT's body outline; the kidney uptake lies in the CT's kidneys: the fraction of the
    counts of the kidney region (kidneys + 7 voxels ≈ 31 mm) inside the kidney masks is
    ≥ 0.35 (0.49 measured; SPECT resolution ≈ 12–15 mm FWHM spreads the thin C-shaped
    parenchyma), is largest within ±1 voxel of zero shift, and drops to < 60 % of it when the
    image is mirrored left–right (kidneys are nearly symmetric; a swapped x would hide in a
    plain overlap number)."""
    import torch

    from dosimetry.io.dicom import read_ct_series
    from dosimetry.io.images import physical_bounds
    from dosimetry.reconstruction import read_projections, reconstruct

    torch.set_num_threads(2)
    ct = read_ct_series(data / "CT")
    ps = read_projections(data / "NM")
    res = reconstruct(ps, ct, iterations=4, subsets=10,
                      calibration_cps_per_mbq=NOMINAL_SENSITIVITY_CPS_PER_MBQ)
    img = res.image
    arr = sitk.GetArrayFromImage(img).astype(np.float64)

    # --- in the CT frame of reference
    assert img.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(img.GetOrigin()[:2], (-280.3446, -287.5446), atol=1e-3)
    lo, hi = physical_bounds(img)
    lo_ct, hi_ct = physical_bounds(ct)
    assert lo[2] > lo_ct[2] - 3 * 4.4196 and hi[2] < hi_ct[2] + 3 * 4.4196
    hu_on_spect = sitk.GetArrayFromImage(sitk.Resample(ct, img, sitk.Transform(),
                                                       sitk.sitkLinear, -1000.0))
    body = hu_on_spect > -300.0
    inside_body = arr[body].sum() / arr.sum()
    assert inside_body > 0.90

    # --- kidneys
    kid = sitk.GetImageFromArray(_kidneys(ct).astype(np.float32))
    kid.CopyInformation(ct)
    sigma = [float(np.sqrt(max(4.4196 ** 2 - s ** 2, 0.0) / 12.0)) for s in ct.GetSpacing()]
    frac_map = sitk.GetArrayFromImage(sitk.Resample(
        sitk.SmoothingRecursiveGaussian(kid, sigma), img, sitk.Transform(), sitk.sitkLinear,
        0.0))
    kmask = frac_map >= 0.5
    region = ndimage.binary_dilation(kmask, iterations=7)

    def fraction(a: np.ndarray) -> float:
        return float(a[kmask].sum() / a[region].sum())

    f0 = fraction(arr)
    shifts = {(dz, dy, dx): fraction(np.roll(arr, (dz, dy, dx), axis=(0, 1, 2)))
              for dz in range(-2, 3) for dy in range(-2, 3) for dx in range(-2, 3)}
    best = max(shifts, key=shifts.get)
    mirrored = fraction(arr[:, :, ::-1])
    assert f0 >= 0.35
    assert max(abs(v) for v in best) <= 1
    assert mirrored < 0.6 * f0

    total = res.total_activity_mbq()
    with capsys.disabled():
        print(f"\n[real GE Lu-177] per-bed reconstruction time (128², 60 views, 4 it × 10 "
              f"subsets, AC + TEW + PSF, torch threads {torch.get_num_threads()}): "
              + ", ".join(f"{b.file} {b.seconds:.1f} s ({b.rows_used[1] - b.rows_used[0] + 1}"
                          " slices)" for b in res.beds))
        print(f"[real GE Lu-177] kidney-region counts inside the CT kidneys: {f0:.3f} "
              f"(best shift {best} voxels: {shifts[best]:.3f}; mirrored L–R {mirrored:.3f}); "
              f"inside the body outline {inside_body:.3f}")
        print(f"[real GE Lu-177] activity in the field of view at a nominal "
              f"{NOMINAL_SENSITIVITY_CPS_PER_MBQ:g} cps/MBq: {total:.0f} MBq; kidneys "
              f"{arr[kmask].sum() * res.voxel_volume_ml / 1e6:.1f} MBq; {res.stitching}")
    assert 50.0 < total < 7400.0  # a therapy activity (≤ 7.4 GBq) after some hours: sanity
