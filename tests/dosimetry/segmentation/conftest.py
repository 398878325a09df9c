"""Shared fixtures of the segmentation tests: small grids and a phantom study (kept small)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk


def make_grid(size=(64, 64, 20), spacing=(1.0, 1.0, 2.0), origin=(-32.0, -32.0, -20.0),
              direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    """An empty float32 image defining a grid."""
    img = sitk.Image(list(size), sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection([float(v) for v in direction])
    return img


def circle(center_xy, radius, z, n=720) -> np.ndarray:
    """(n, 3) points of a circle in the plane z (counter-clockwise)."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([center_xy[0] + radius * np.cos(t), center_xy[1] + radius * np.sin(t),
                     np.full(n, float(z))], axis=1)


@pytest.fixture(scope="session")
def lesion_study(tmp_path_factory):
    """A one-timepoint Lu-177 DOTATATE digital patient with six lesions (NIfTI, 4 mm CT,
    4.8 mm SPECT as the scanner default), written once per session."""
    from phantoms import GridSpec, PatientConfig, make_patient

    out = tmp_path_factory.mktemp("segphantom") / "study"
    cfg = PatientConfig(seed=3, output_format="nifti", n_lesions=6, timepoints_h=(24.0,),
                        grid=GridSpec(inplane_mm=4.0, slice_mm=4.0))
    return make_patient(out, cfg)


@pytest.fixture(scope="session")
def small_study(tmp_path_factory):
    """A 2-timepoint digital patient on the coarse test grid (6 mm CT, 9.6 mm SPECT), NIfTI."""
    from phantoms import GridSpec, PatientConfig, make_patient

    out = tmp_path_factory.mktemp("segsmall") / "study"
    cfg = PatientConfig(seed=11, output_format="nifti", n_lesions=3, timepoints_h=(24.0, 96.0),
                        grid=GridSpec(inplane_mm=6.0, slice_mm=6.0), spect_spacing_mm=9.5904,
                        spect_matrix=64)
    return make_patient(out, cfg)


def organ_only_labels(study_dir, out_path):
    """Write the truth organs (no lesions) of a phantom as a label image + labels.json."""
    import json

    from dosimetry.io.images import write_image

    rows = json.loads((study_dir / "truth" / "labels.json").read_text())
    lab = sitk.ReadImage(str(study_dir / "truth" / "labels.nii.gz"))
    arr = sitk.GetArrayFromImage(lab)
    keep = [r for r in rows if r["kind"] != "lesion"]
    arr = np.where(np.isin(arr, [r["label"] for r in keep]), arr, 0).astype(np.uint16)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(lab)
    write_image(img, out_path)
    (out_path.parent / "labels.json").write_text(json.dumps(
        [{"label": r["label"], "name": r["name"], "kind": "organ"} for r in keep]))
    return out_path
