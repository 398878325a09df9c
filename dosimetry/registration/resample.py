"""Bringing images onto the reference frame: CT, labels, and activity with its total conserved.

Conventions: ``transform`` maps a point of the target (reference) space to the source (moving)
space, as returned by registration (:mod:`dosimetry.registration.classical`). For a transform
``T(x) = A(B(x))`` with ``A`` linear and ``B`` deformable, the Jacobian determinant is
``det J_T(x) = det(A) · det(I + ∇u_B(x))``.

Activity conservation
---------------------
A concentration image ``c_m`` [Bq/mL] resampled through ``T`` becomes
``c_t(x) = c_m(T(x)) · det J_T(x)``: the target voxel at ``x`` covers the moving volume
``|det J_T| dV``, so multiplying by the Jacobian keeps the activity of every volume element
(mass-preserving resampling). Linear interpolation then changes the discrete total only by
interpolation error.

The total that must be kept is the activity *within the target field of view*:
``A_before = Σ_y c_m(y) · V_m · f(y)`` over the moving voxels, with ``f(y)`` the fraction of
voxel ``y`` that falls inside the target box once mapped back by ``A⁻¹`` (computed per axis
for the voxel's bounding box in target index units: exact for axis-aligned grids, a close
approximation for the few-degree rotations between sessions; the deformable part ``B`` is
ignored for this fraction, a few-mm shift of the field-of-view edge). The resampled image is
then scaled by ``A_before / A_after_raw`` so its total equals ``A_before``; both totals and the
raw relative change are reported (:class:`ActivityCheck`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.errors import GeometryError


@dataclass(frozen=True)
class ActivityCheck:
    """Activity totals of one resampling (Bq, within the target field of view).

    Attributes
    ----------
    grid : str
        ``"ct"`` (reference CT grid) or ``"spect"`` (reference SPECT grid).
    before_bq : float
        Σ c·V·f of the moving SPECT inside the target box.
    after_raw_bq : float
        Σ c·V of the resampled image before the correction.
    after_bq : float
        Σ c·V after the correction (equals ``before_bq`` to float32 rounding).
    scale : float
        Correction factor applied, ``before / after_raw``.
    """

    grid: str
    before_bq: float
    after_raw_bq: float
    after_bq: float
    scale: float

    @property
    def relative_change_raw(self) -> float:
        """(after_raw − before) / before, the interpolation/Jacobian error before correction."""
        return _rel(self.after_raw_bq, self.before_bq)

    @property
    def relative_change(self) -> float:
        """(after − before) / before after the correction."""
        return _rel(self.after_bq, self.before_bq)

    def to_dict(self) -> dict[str, object]:
        return {"grid": self.grid, "before_bq": self.before_bq,
                "after_raw_bq": self.after_raw_bq, "after_bq": self.after_bq,
                "scale": self.scale, "relative_change_raw": self.relative_change_raw,
                "relative_change": self.relative_change}

    @classmethod
    def from_dict(cls, d: dict) -> ActivityCheck:
        return cls(grid=d["grid"], before_bq=d["before_bq"], after_raw_bq=d["after_raw_bq"],
                   after_bq=d["after_bq"], scale=d["scale"])


def _rel(a: float, b: float) -> float:
    return (a - b) / b if b != 0 else (0.0 if a == 0 else math.inf)


def affine_of(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """``(M, t)`` with ``transform(p) = M p + t`` for a linear (rigid/affine/composite of
    linear) transform, read off by transforming the origin and the unit vectors."""
    t = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)), float)
    m = np.empty((3, 3))
    for i in range(3):
        e = [0.0, 0.0, 0.0]
        e[i] = 1.0
        m[:, i] = np.asarray(transform.TransformPoint(tuple(e)), float) - t
    return m, t


def identity_like(transform: sitk.Transform | None) -> bool:
    """True when ``transform`` is None or an identity within 1e-9."""
    if transform is None:
        return True
    if transform.IsLinear():
        m, t = affine_of(transform)
        return bool(np.allclose(m, np.eye(3), atol=1e-9) and np.allclose(t, 0.0, atol=1e-9))
    return False


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """Same size, spacing, origin and direction (lengths within ``tol`` mm)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def resample_image(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None,
                   default: float, interpolator: int = sitk.sitkLinear,
                   pixel: int = sitk.sitkFloat32) -> sitk.Image:
    """``image`` on ``grid`` through ``transform`` (target → source points); identity = None."""
    if identity_like(transform) and same_grid(image, grid):
        return sitk.Cast(image, pixel)
    tf = sitk.Transform() if transform is None else transform
    return sitk.Resample(image, grid, tf, interpolator, float(default), pixel)


def resample_labels(labels: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None
                    ) -> sitk.Image:
    """A label map on ``grid`` (nearest neighbour, background 0, uint16)."""
    return resample_image(labels, grid, transform, 0, sitk.sitkNearestNeighbor, sitk.sitkUInt16)


def jacobian_determinant(deformable: sitk.Transform, grid: sitk.Image) -> sitk.Image:
    """``det(I + ∇u)`` of a deformable transform's displacement on ``grid`` (float32).

    Derivatives are central differences in physical units (ITK
    ``DisplacementFieldJacobianDeterminantFilter``).
    """
    field = sitk.TransformToDisplacementField(deformable, sitk.sitkVectorFloat64, grid.GetSize(),
                                              grid.GetOrigin(), grid.GetSpacing(),
                                              grid.GetDirection())
    det = sitk.DisplacementFieldJacobianDeterminant(field, True)
    return sitk.Cast(det, sitk.sitkFloat32)


def dense_deformable(deformable: sitk.Transform, grid: sitk.Image
                     ) -> sitk.DisplacementFieldTransform:
    """The deformable transform sampled as a displacement field on ``grid`` (linear
    interpolation between nodes; zero displacement outside ``grid``).

    Evaluating a cubic B-spline costs 64 control points × 3 per point; the sampled field 8 × 3.
    For a smooth deformation (control points ≥ 10 working voxels apart) the interpolation error
    is far below a millimetre; used for QA and resampling, while the exact transform is what is
    written to disk.
    """
    if deformable.GetName() == "DisplacementFieldTransform":
        return sitk.DisplacementFieldTransform(deformable)
    field = sitk.TransformToDisplacementField(deformable, sitk.sitkVectorFloat64, grid.GetSize(),
                                              grid.GetOrigin(), grid.GetSpacing(),
                                              grid.GetDirection())
    return sitk.DisplacementFieldTransform(field)


def field_grid(image: sitk.Image, spacing_mm: float, pad_voxels: int = 1) -> sitk.Image:
    """A grid over ``image``'s box with spacing ``spacing_mm`` (a coarser native axis keeps its
    own), extended by ``pad_voxels`` nodes beyond every face.

    For sampling a smooth deformation as a displacement field: a displacement field transform
    is zero outside its nodes, so the nodes must enclose every point that will be mapped.
    """
    from dosimetry.registration.classical import working_grid

    g = working_grid(image, spacing_mm)
    d = np.asarray(g.GetDirection(), float).reshape(3, 3)
    sp = np.asarray(g.GetSpacing(), float)
    out = sitk.Image([int(n) + 2 * pad_voxels for n in g.GetSize()], sitk.sitkFloat32)
    out.SetSpacing(g.GetSpacing())
    out.SetDirection(g.GetDirection())
    out.SetOrigin(tuple(float(v) for v in np.asarray(g.GetOrigin()) - d @ (pad_voxels * sp)))
    return out


def transform_jacobian(linear: sitk.Transform, deformable: sitk.Transform | None,
                       grid: sitk.Image, via: sitk.Image | None = None) -> sitk.Image | float:
    """``det J_T`` of ``T = linear ∘ deformable`` on ``grid`` (an image), or a number when the
    transform is linear (constant determinant).

    ``via``: compute the deformable part's determinant on this (coarser) grid and interpolate it
    linearly onto ``grid`` (1 outside): a smooth deformation's Jacobian varies over centimetres,
    and the CT grid can have 10⁷ voxels.
    """
    m, _ = affine_of(linear)
    det_a = float(np.linalg.det(m))
    if deformable is None:
        return det_a
    if via is None or same_grid(via, grid):
        det_b = jacobian_determinant(deformable, grid)
    else:
        det_b = resample_image(jacobian_determinant(deformable, via), grid, None, 1.0)
    return det_b * det_a


def fov_fraction_activity(image: sitk.Image, target: sitk.Image, linear: sitk.Transform,
                          slab: int = 16) -> float:
    """Activity [Bq] of a concentration image [Bq/mL] inside the target box mapped back by the
    linear transform ``linear`` (target → image points); see the module docstring.

    Parameters
    ----------
    image : SimpleITK.Image
        Concentration [Bq/mL] on its own grid.
    target : SimpleITK.Image
        Target grid.
    linear : SimpleITK.Transform
        Linear part of the target → image transform.
    slab : int
        z-slices processed at once (bounds the memory use).
    """
    m_tf, t_tf = affine_of(linear)
    try:
        m_inv = np.linalg.inv(m_tf)
    except np.linalg.LinAlgError:
        raise GeometryError(f"the linear transform is singular (matrix {m_tf.tolist()})") from None
    # moving index → moving physical → target physical → target continuous index
    d_m = np.asarray(image.GetDirection(), float).reshape(3, 3)
    s_m = np.asarray(image.GetSpacing(), float)
    o_m = np.asarray(image.GetOrigin(), float)
    d_t = np.asarray(target.GetDirection(), float).reshape(3, 3)
    s_t = np.asarray(target.GetSpacing(), float)
    o_t = np.asarray(target.GetOrigin(), float)
    to_t = np.diag(1.0 / s_t) @ d_t.T
    a = to_t @ m_inv @ d_m @ np.diag(s_m)  # index → target index (linear)
    b = to_t @ (m_inv @ (o_m - t_tf) - o_t)
    half = 0.5 * np.abs(a).sum(axis=1)  # half-extent of a moving voxel in target index units
    lo = -0.5
    hi = np.asarray(target.GetSize(), float) - 0.5
    arr = sitk.GetArrayViewFromImage(image)  # (z, y, x)
    nz, ny, nx = arr.shape
    v_ml = units.voxel_volume_ml(image.GetSpacing())
    ix = np.arange(nx, dtype=float)
    iy = np.arange(ny, dtype=float)
    total = 0.0
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        iz = np.arange(z0, z1, dtype=float)
        zz, yy, xx = np.meshgrid(iz, iy, ix, indexing="ij")
        frac = np.ones(zz.shape)
        for k in range(3):
            c = a[k, 0] * xx + a[k, 1] * yy + a[k, 2] * zz + b[k]
            h = half[k]
            inside = np.clip(c + h, lo, hi[k]) - np.clip(c - h, lo, hi[k])
            frac *= inside / (2 * h)
        total += float(np.sum(arr[z0:z1].astype(np.float64) * frac))
    return total * v_ml


def image_activity_bq(image: sitk.Image) -> float:
    """Σ concentration [Bq/mL] × voxel volume [mL] (float64 sum)."""
    arr = sitk.GetArrayViewFromImage(image)
    return float(np.sum(arr, dtype=np.float64)) * units.voxel_volume_ml(image.GetSpacing())


def resample_activity(spect_bq_per_ml: sitk.Image, grid: sitk.Image, linear: sitk.Transform,
                      deformable: sitk.Transform | None = None,
                      jacobian: sitk.Image | float | None = None, grid_name: str = "ct"
                      ) -> tuple[sitk.Image, ActivityCheck]:
    """Activity concentration on ``grid`` through ``T = linear ∘ deformable``, total conserved.

    Parameters
    ----------
    spect_bq_per_ml : SimpleITK.Image
        Concentration [Bq/mL] on the moving SPECT grid.
    grid : SimpleITK.Image
        Target grid (reference CT or reference SPECT).
    linear, deformable : SimpleITK.Transform
        The registration (target → moving points); ``deformable`` may be None.
    jacobian : SimpleITK.Image or float, optional
        ``det J_T`` on ``grid`` (see :func:`transform_jacobian`); computed when omitted.
    grid_name : str
        Recorded in the :class:`ActivityCheck`.

    Returns
    -------
    image : SimpleITK.Image
        float32 concentration [Bq/mL] on ``grid``, negative values impossible (linear
        interpolation of non-negative data).
    check : ActivityCheck
    """
    transform = linear if deformable is None else sitk.CompositeTransform([linear, deformable])
    if jacobian is None:
        jacobian = transform_jacobian(linear, deformable, grid)
    out = resample_image(spect_bq_per_ml, grid, transform, 0.0)
    if isinstance(jacobian, sitk.Image):
        out = out * jacobian
    elif abs(jacobian - 1.0) > 1e-9:
        out = out * float(jacobian)
    if identity_like(transform) and same_grid(spect_bq_per_ml, grid):
        before = image_activity_bq(spect_bq_per_ml)
    else:
        before = fov_fraction_activity(spect_bq_per_ml, grid, linear)
    after_raw = image_activity_bq(out)
    scale = before / after_raw if after_raw > 0 else 1.0
    if after_raw > 0 and scale != 1.0:
        out = out * scale
    out = sitk.Cast(out, sitk.sitkFloat32)
    out.CopyInformation(grid)
    check = ActivityCheck(grid=grid_name, before_bq=before, after_raw_bq=after_raw,
                          after_bq=image_activity_bq(out), scale=scale)
    return out, check
