"""Object-space geometry of a SPECT reconstruction (the grid the activity is estimated on).

A parallel-hole SPECT acquisition with an ``R × C`` projection matrix (R rows along the
patient axis, C columns across it) is reconstructed on a ``C × C × R`` voxel grid whose voxels
are the projection pixels: ``dx = dy`` = column spacing, ``dz`` = row spacing. The grid is
aligned with the patient axes (DICOM LPS: x to the patient's left, y posterior, z superior),
so its direction cosines are the identity, and the axis of rotation runs through the centre
of the x–y plane. numpy arrays of the grid are indexed (z, y, x), as SimpleITK's are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import GeometryError, InputError

__all__ = ["ObjectGeometry"]

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class ObjectGeometry:
    """A reconstruction grid in patient coordinates (identity direction cosines).

    Attributes
    ----------
    size : tuple of int
        (nx, ny, nz) voxels; ``nx == ny`` (the rotation plane is square).
    spacing_mm : tuple of float
        (dx, dy, dz) [mm]; ``dx == dy``.
    origin_mm : tuple of float
        Patient (LPS) coordinates [mm] of the centre of voxel (0, 0, 0), the voxel with the
        lowest x, y and z.
    """

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        spacing = tuple(float(s) for s in self.spacing_mm)
        origin = tuple(float(o) for o in self.origin_mm)
        if len(size) != 3 or len(spacing) != 3 or len(origin) != 3:
            raise InputError(f"object geometry needs 3 values each for size, spacing and origin, "
                             f"got {self.size}, {self.spacing_mm}, {self.origin_mm}")
        if min(size) < 2:
            raise InputError(f"object grid size {size}: every axis needs at least 2 voxels")
        if size[0] != size[1]:
            raise InputError(f"object grid size {size}: the x–y plane must be square")
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise InputError(f"object grid spacing {spacing} mm must be finite and > 0")
        if not math.isclose(spacing[0], spacing[1], rel_tol=1e-6):
            raise InputError(f"object grid spacing {spacing} mm: dx and dy must be equal")
        if not all(math.isfinite(o) for o in origin):
            raise InputError(f"object grid origin {origin} mm must be finite")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", origin)

    # ------------------------------------------------------------------ construction
    @classmethod
    def centred(cls, matrix: tuple[int, int], pixel_spacing_mm: float | tuple[float, float],
                z0_mm: float = 0.0) -> ObjectGeometry:
        """The grid of an ``(rows, cols)`` projection matrix with the rotation axis at x = y = 0.

        Parameters
        ----------
        matrix : (int, int)
            Projection rows (axial) and columns (transaxial).
        pixel_spacing_mm : float or (float, float)
            Projection pixel spacing [mm], as DICOM PixelSpacing: (between rows, between
            columns) = (axial, transaxial); a single number for square pixels.
        z0_mm : float
            z [mm] of the lowest slice (projection row 0 of our layout).
        """
        rows, cols = (int(m) for m in matrix)
        dz, dx = _pair(pixel_spacing_mm)
        x0 = -(cols - 1) / 2.0 * dx
        return cls((cols, cols, rows), (dx, dx, dz), (x0, x0, float(z0_mm)))

    @classmethod
    def from_image(cls, image: sitk.Image, what: str = "image") -> ObjectGeometry:
        """The geometry of ``image``; :class:`GeometryError` unless its direction is identity."""
        if image.GetDimension() != 3:
            raise GeometryError(f"{what}: expected a 3D image, got {image.GetDimension()}D")
        if not np.allclose(image.GetDirection(), _IDENTITY, atol=1e-6):
            raise GeometryError(
                f"{what}: direction cosines {tuple(round(d, 4) for d in image.GetDirection())} "
                "are not the identity; a SPECT reconstruction grid is aligned with the patient "
                "axes (resample the image onto such a grid first)")
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()))

    # ------------------------------------------------------------------ properties
    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """numpy shape (nz, ny, nx) of arrays on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel [mL]."""
        from dosimetry import units

        return units.voxel_volume_ml(self.spacing_mm)

    @property
    def rotation_axis_mm(self) -> tuple[float, float]:
        """(x, y) [mm] of the axis of rotation: the centre of the x–y plane."""
        n = self.size[0]
        return (self.origin_mm[0] + (n - 1) / 2.0 * self.spacing_mm[0],
                self.origin_mm[1] + (n - 1) / 2.0 * self.spacing_mm[1])

    def z_of_slice(self, k: float) -> float:
        """z [mm] of slice ``k`` (may be fractional)."""
        return self.origin_mm[2] + float(k) * self.spacing_mm[2]

    def with_slices(self, first: int, last: int) -> ObjectGeometry:
        """The sub-grid of slices ``first … last`` (inclusive)."""
        if not (0 <= first <= last < self.size[2]) or last - first < 1:
            raise InputError(f"slice range {first}…{last} is not a range of ≥ 2 slices within "
                             f"0…{self.size[2] - 1}")
        return ObjectGeometry((self.size[0], self.size[1], last - first + 1), self.spacing_mm,
                              (self.origin_mm[0], self.origin_mm[1], self.z_of_slice(first)))

    # ------------------------------------------------------------------ images
    def image(self, array_zyx: np.ndarray | None = None,
              pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        """An image on this grid: ``array_zyx`` (shape :attr:`shape_zyx`) or zeros."""
        if array_zyx is None:
            img = sitk.Image(list(self.size), pixel_type)
        else:
            arr = np.asarray(array_zyx)
            if arr.shape != self.shape_zyx:
                raise GeometryError(f"array of shape {arr.shape} does not fit the object grid "
                                    f"(z, y, x) = {self.shape_zyx}")
            img = sitk.GetImageFromArray(arr)
        img.SetSpacing(self.spacing_mm)
        img.SetOrigin(self.origin_mm)
        img.SetDirection(_IDENTITY)
        return img

    def matches(self, image: sitk.Image, tol_mm: float = 1e-3) -> bool:
        """True when ``image`` lies exactly on this grid (size, spacing, origin, direction)."""
        return (tuple(image.GetSize()) == self.size
                and np.allclose(image.GetSpacing(), self.spacing_mm, atol=tol_mm)
                and np.allclose(image.GetOrigin(), self.origin_mm, atol=tol_mm)
                and np.allclose(image.GetDirection(), _IDENTITY, atol=1e-6))

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """JSON form."""
        return {"size": list(self.size), "spacing_mm": list(self.spacing_mm),
                "origin_mm": list(self.origin_mm)}


def _pair(pixel_spacing_mm: float | tuple[float, float]) -> tuple[float, float]:
    """(axial, transaxial) spacing [mm] from a number or a DICOM-ordered pair."""
    if np.ndim(pixel_spacing_mm) == 0:
        d = float(pixel_spacing_mm)  # type: ignore[arg-type]
        out = (d, d)
    else:
        vals = [float(v) for v in pixel_spacing_mm]  # type: ignore[union-attr]
        if len(vals) != 2:
            raise InputError(f"pixel spacing {pixel_spacing_mm!r}: give one number or (between "
                             "rows, between columns) in mm")
        out = (vals[0], vals[1])
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise InputError(f"pixel spacing {pixel_spacing_mm!r} mm must be finite and > 0")
    return out
