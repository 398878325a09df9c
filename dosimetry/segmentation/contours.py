"""Label map → closed planar contours per slice, for RT Structure Set export.

Each label's mask is contoured slice by slice at the 0.5 iso-level of the binary mask
(marching squares, :mod:`contourpy`, which matplotlib already requires), so a contour runs
half a voxel outside the centres of the boundary voxels — the convention that makes the
rasterised contour (voxel centres inside the polygon) reproduce the mask. Points are mapped to
patient coordinates (mm, LPS) through the image's origin, spacing and direction.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk


def label_contours(labels: sitk.Image, label: int) -> list[np.ndarray]:
    """Closed contours of one label, each an (N, 3) array of points [mm, LPS] on one slice."""
    import contourpy

    arr = sitk.GetArrayFromImage(labels)  # z, y, x
    out: list[np.ndarray] = []
    origin = np.array(labels.GetOrigin())
    spacing = np.array(labels.GetSpacing())
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    for k in np.flatnonzero((arr == label).any(axis=(1, 2))):
        # Pad by one voxel so contours of masks touching the edge close.
        mask = np.pad((arr[k] == label).astype(np.float64), 1)
        gen = contourpy.contour_generator(z=mask, line_type=contourpy.LineType.Separate)
        for line in gen.lines(0.5):
            if len(line) < 4:
                continue
            xy = line[:-1] - 1.0 if np.allclose(line[0], line[-1]) else line - 1.0
            idx = np.column_stack([xy[:, 0], xy[:, 1], np.full(len(xy), float(k))])
            out.append(origin + (idx * spacing) @ direction.T)
    return out


def labelmap_rois(labels: sitk.Image, names: Mapping[int, str]
                  ) -> list[tuple[str, list[np.ndarray]]]:
    """(name, contours) for every label in ``names`` that has voxels."""
    present = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
    rois = []
    for label, name in sorted(names.items()):
        if label in present and label != 0:
            rois.append((name, label_contours(labels, label)))
    return rois
