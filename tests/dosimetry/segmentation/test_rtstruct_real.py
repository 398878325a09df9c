"""RTSTRUCT import on a real scanner export (``mgh_tc99m_maa_spectct``; skipped when absent).

Siemens Symbia T6 SPECT/CT with an RTSTRUCT of 9 ROIs drawn on the CT (512², 0.977 mm, 5 mm
slices). The rasterised Lung and Tumor volumes are compared with the volumes the contours
describe (shoelace areas, holes subtracted, × the 5 mm contour spacing).

Tolerance: a voxel is counted by its centre, so each voxel the boundary crosses adds an error
uniform in ±½ voxel; with N ≈ S/a boundary voxels (S the surface, a the voxel face area across
it) the count has a standard deviation ≈ 0.29·√N voxels. The test allows 4 standard deviations
(plus 0.5 % for the slab model of the end contours on the non-aligned SPECT grid).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from dosimetry.io.dicom import read_ct_series, read_nm_image, scan_dicom_folder
from dosimetry.segmentation.rtstruct import contour_volume_ml, rasterise_roi, read_rtstruct
from tests.realdata import extract_reference

pytestmark = pytest.mark.realdata

ROIS = ("Esophagus", "Aorta", "Spinal Cord", "SVC", "Proximal bronchial tree",
        "Pulmonary Arteries", "Lung", "Tumor", "Brachial Plexus")


@pytest.fixture(scope="module")
def export():
    root = extract_reference("mgh_tc99m_maa_spectct")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanner files with out-of-spec values: not our concern
        ct = read_ct_series(list(scan_dicom_folder(root / "CT").series[0].files))
        nm = read_nm_image(scan_dicom_folder(root / "NM").series[0]).image
    return read_rtstruct(root / "RTSTRUCT"), ct, nm


#: Surface relative to a sphere of the same volume: the lungs (two lobed, concave organs) ≈ 3,
#: the compact but irregular tumour ≈ 1.2.
SURFACE_FACTOR = {"Lung": 3.0, "Tumor": 1.2}


def _tolerance_ml(volume_ml: float, spacing, surface_factor: float) -> float:
    """4σ of the centre-sampling count for a structure of this volume and surface."""
    r = (3 * volume_ml * 1e3 / (4 * math.pi)) ** (1 / 3)
    surface = surface_factor * 4 * math.pi * r * r
    face = min(spacing[0] * spacing[1], spacing[0] * spacing[2], spacing[1] * spacing[2])
    n = surface / face
    v_vox = math.prod(spacing) * 1e-3
    return 4 * 0.29 * math.sqrt(n) * v_vox


def test_roi_list_and_kinds(export):
    ss, _, _ = export
    assert ss.roi_names == ROIS
    assert ss.roi("Tumor").kind.value == "lesion" and ss.roi("Lung").kind.value == "organ"
    assert ss.frame_of_reference_uid is not None


@pytest.mark.parametrize("name", ["Lung", "Tumor"])
def test_rasterised_volume_matches_contour_volume_on_ct(export, name):
    ss, ct, _ = export
    roi = ss.roi(name)
    want = contour_volume_ml(roi)
    got = float(rasterise_roi(roi, ct).sum()) * math.prod(ct.GetSpacing()) * 1e-3
    assert abs(got - want) <= _tolerance_ml(want, ct.GetSpacing(), SURFACE_FACTOR[name]), \
        (got, want)


@pytest.mark.parametrize("name", ["Lung", "Tumor"])
def test_rasterised_volume_matches_contour_volume_on_spect(export, name):
    # the SPECT grid is 4.8 mm isotropic and tilted by 0.4°: contours go through the
    # auxiliary grid and shape-based interpolation
    ss, _, nm = export
    roi = ss.roi(name)
    want = contour_volume_ml(roi)
    got = float(rasterise_roi(roi, nm).sum()) * math.prod(nm.GetSpacing()) * 1e-3
    tol = _tolerance_ml(want, nm.GetSpacing(), SURFACE_FACTOR[name]) + 0.005 * want
    assert abs(got - want) <= tol, (got, want)


def test_lung_has_two_lungs_per_slice(export):
    ss, ct, _ = export
    m = rasterise_roi(ss.roi("Lung"), ct)
    from scipy import ndimage

    k = int(np.argmax(m.sum(axis=(1, 2))))  # the slice with most lung
    _, n = ndimage.label(m[k])
    assert n >= 2
