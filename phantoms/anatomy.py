"""Digital-patient anatomy: an adult torso (optionally head and neck) as a label map and CT.

Everything here is an array kernel: numpy in, numpy out, no files. Geometry is in mm in the
DICOM patient frame (LPS: +x towards the patient's left, +y posterior, +z superior); arrays are
indexed (z, y, x).

How a shape is made
-------------------
Each structure is a superellipsoid in its own rotated frame whose radius is modulated by a low
order harmonic series in the direction of the point (real polynomial harmonics of degree 1–3
with seeded coefficients), so organs are lumpy, asymmetric and different for every seed. The
whole body is then pulled through one smooth random displacement field (Gaussian-smoothed noise
on a coarse grid, ≈ 120 mm correlation length, a few mm amplitude), which bends organs, bones
and the skin together. Body size (lateral, antero-posterior and cranio-caudal scale), organ
sizes, positions and subcutaneous-fat thickness vary with the seed as well.

Structures and the labels they get (names follow TotalSegmentator where it has the structure;
see :data:`TISSUES` for the table with densities and CT numbers):

* ``body`` — soft tissue inside the skin that no other label claims (TotalSegmentator's
  ``body`` task covers the whole trunk; here it is the remainder only).
* ``subcutaneous_fat``, ``torso_fat`` — as TotalSegmentator's *tissue_types* task.
* ``lung_left``/``lung_right`` (TotalSegmentator splits each lung into lobes
  ``lung_upper_lobe_left`` …; merge those to compare), ``trachea``, ``heart``, ``liver``,
  ``spleen``, ``stomach``, ``kidney_left``/``kidney_right``, ``urinary_bladder``.
* Bone: ``vertebrae`` (all vertebrae merged: TotalSegmentator's ``vertebrae_L5`` …
  ``vertebrae_C1``), ``ribs`` (merged ``rib_left_1`` … ``rib_right_12``), ``sacrum``,
  ``hip_left``/``hip_right``, ``femur_left``/``femur_right``, ``skull``. Vertebral bodies,
  sacrum, hips and femoral heads are a cortical shell (2–3 mm) around a cancellous core labelled
  ``red_marrow`` (no TotalSegmentator equivalent; it is the marrow-bearing spongiosa region).
* ``spinal_cord``; with ``head_neck``: ``brain``, ``skull``, ``parotid_gland_left/right``,
  ``submandibular_gland_left/right``; optionally a ``thyroid_gland`` (post-surgical remnant).
* ``lesion_1`` … ``lesion_K`` at label 101 …, sites liver, bone, lymph node, lung.

Label 0 is outside the patient: air and the scanner couch (which has CT numbers but no mass
and no activity in the truth).

Simplifications: no arms, clavicles, scapulae, bowel, pancreas, adrenals, vessels (the heart
stands for the blood pool), no kidney cortex/medulla split, no bowel gas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from scipy import ndimage

from dosimetry.errors import InputError


class Kind(StrEnum):
    """What a label stands for in the kinetics: organ with its own uptake, or tissue."""

    ORGAN = "organ"  # its own time-activity curve (specific uptake)
    TISSUE = "tissue"  # shares the whole-body pool concentration (per gram, with a factor)
    BLOOD = "blood"  # blood pool: blood concentration
    MARROW = "marrow"  # red-marrow region: red-marrow-to-blood ratio × blood concentration
    LESION = "lesion"  # specific uptake, concentration × volume
    AIR = "air"  # inside the body but holds no activity (airways)


@dataclass(frozen=True)
class Tissue:
    """One label of the map: name, mass density, mean CT number and role."""

    label: int
    name: str
    density_g_per_cm3: float
    hu: float
    kind: Kind
    #: Relative per-gram uptake of the whole-body pool (tissues only; 1 = average tissue).
    pool_factor: float = 1.0
    totalsegmentator: str = ""
    density_source: str = "ICRP-110"


#: Label table. Densities: ICRP Publication 110 adult reference computational phantoms
#: (doi:10.1016/j.icrp.2009.09.001), organ media of the male phantom, and ICRU Report 46
#: (1992) body tissues. Values are recalled to 2–3 digits and marked ``(unverified)`` in
#: ``density_source`` where not checked against the tables. CT numbers are typical values
#: for non-contrast CT at 120 kVp (soft tissue 30–60 HU, fat ≈ −100 HU, lung −850…−700 HU,
#: cortical bone 700–1200 HU); per-patient values are drawn around them.
TISSUES: tuple[Tissue, ...] = (
    Tissue(1, "body", 1.05, 45.0, Kind.TISSUE, 1.0, "body (remainder only)",
           "ICRU-46 skeletal muscle 1.05 (unverified)"),
    Tissue(2, "lung_left", 0.385, -820.0, Kind.TISSUE, 1.0, "lung_*_left (merged lobes)",
           "ICRP-110 lung 0.385 (unverified)"),
    Tissue(3, "lung_right", 0.385, -820.0, Kind.TISSUE, 1.0, "lung_*_right (merged lobes)",
           "ICRP-110 lung 0.385 (unverified)"),
    Tissue(4, "liver", 1.05, 55.0, Kind.ORGAN, 1.0, "liver", "ICRP-110 liver 1.05 (unverified)"),
    Tissue(5, "spleen", 1.04, 48.0, Kind.ORGAN, 1.0, "spleen",
           "ICRP-110 spleen 1.04 (unverified)"),
    Tissue(6, "kidney_left", 1.05, 35.0, Kind.ORGAN, 1.0, "kidney_left",
           "ICRP-110 kidneys 1.05 (unverified)"),
    Tissue(7, "kidney_right", 1.05, 35.0, Kind.ORGAN, 1.0, "kidney_right",
           "ICRP-110 kidneys 1.05 (unverified)"),
    Tissue(8, "urinary_bladder", 1.04, 8.0, Kind.ORGAN, 1.0, "urinary_bladder",
           "ICRP-110 urinary bladder content 1.04 (unverified)"),
    Tissue(9, "stomach", 1.04, 28.0, Kind.ORGAN, 1.0, "stomach",
           "ICRP-110 stomach wall/content 1.04 (unverified)"),
    Tissue(10, "heart", 1.06, 42.0, Kind.BLOOD, 1.0, "heart",
           "ICRU-46 blood 1.06 (unverified)"),
    Tissue(11, "vertebrae", 1.92, 1000.0, Kind.TISSUE, 0.3, "vertebrae_* (merged)",
           "ICRU-46 cortical bone 1.92 (unverified)"),
    Tissue(12, "ribs", 1.60, 750.0, Kind.TISSUE, 0.3, "rib_* (merged)",
           "cortical/cancellous mixture at CT resolution (assumed, unverified)"),
    Tissue(13, "sacrum", 1.92, 1000.0, Kind.TISSUE, 0.3, "sacrum",
           "ICRU-46 cortical bone 1.92 (unverified)"),
    Tissue(14, "hip_left", 1.92, 1000.0, Kind.TISSUE, 0.3, "hip_left",
           "ICRU-46 cortical bone 1.92 (unverified)"),
    Tissue(15, "hip_right", 1.92, 1000.0, Kind.TISSUE, 0.3, "hip_right",
           "ICRU-46 cortical bone 1.92 (unverified)"),
    Tissue(16, "femur_left", 1.92, 1000.0, Kind.TISSUE, 0.3, "femur_left",
           "ICRU-46 cortical bone 1.92 (unverified)"),
    Tissue(17, "femur_right", 1.92, 1000.0, Kind.TISSUE, 0.3, "femur_right",
           "ICRU-46 cortical bone 1.92 (unverified)"),
    Tissue(18, "red_marrow", 1.18, 250.0, Kind.MARROW, 1.0, "(none: spongiosa region)",
           "ICRP-110 spongiosa ~1.1–1.2 (unverified)"),
    Tissue(19, "spinal_cord", 1.04, 35.0, Kind.TISSUE, 1.0, "spinal_cord",
           "ICRU-46 brain/nerve 1.04 (unverified)"),
    Tissue(20, "trachea", 0.0012, -990.0, Kind.AIR, 0.0, "trachea", "dry air 0.0012"),
    Tissue(21, "subcutaneous_fat", 0.95, -105.0, Kind.TISSUE, 0.5, "subcutaneous_fat",
           "ICRU-46 adipose 0.95 (unverified)"),
    Tissue(22, "torso_fat", 0.95, -95.0, Kind.TISSUE, 0.5, "torso_fat",
           "ICRU-46 adipose 0.95 (unverified)"),
    Tissue(23, "brain", 1.04, 35.0, Kind.TISSUE, 1.0, "brain",
           "ICRP-110 brain 1.04 (unverified)"),
    Tissue(24, "skull", 1.92, 1100.0, Kind.TISSUE, 0.3, "skull",
           "ICRU-46 cortical bone 1.92 (unverified)"),
    Tissue(25, "parotid_gland_left", 1.03, 25.0, Kind.ORGAN, 1.0, "parotid_gland_left",
           "ICRP-110 salivary glands 1.03 (unverified)"),
    Tissue(26, "parotid_gland_right", 1.03, 25.0, Kind.ORGAN, 1.0, "parotid_gland_right",
           "ICRP-110 salivary glands 1.03 (unverified)"),
    Tissue(27, "submandibular_gland_left", 1.03, 40.0, Kind.ORGAN, 1.0,
           "submandibular_gland_left", "ICRP-110 salivary glands 1.03 (unverified)"),
    Tissue(28, "submandibular_gland_right", 1.03, 40.0, Kind.ORGAN, 1.0,
           "submandibular_gland_right", "ICRP-110 salivary glands 1.03 (unverified)"),
    Tissue(29, "thyroid_gland", 1.04, 70.0, Kind.ORGAN, 1.0, "thyroid_gland (remnant)",
           "ICRP-110 thyroid 1.04 (unverified)"),
)

#: First label value of the lesions (lesion_1 = 101, …).
LESION_LABEL_BASE = 100
#: Density of lesions [g/cm³]: soft tissue (ICRU-46 soft tissue 1.03–1.05, unverified);
#: bone lesions take the cortical-bone value of :data:`TISSUES`' bone.
LESION_DENSITY_SOFT = 1.04
LESION_DENSITY_BONE = 1.35  # sclerotic metastasis, between spongiosa and cortex (assumed)

_BY_NAME = {t.name: t for t in TISSUES}


def tissue(name: str) -> Tissue:
    """The :class:`Tissue` called ``name``."""
    return _BY_NAME[name]


class LesionSite(StrEnum):
    """Where lesions may be placed."""

    LIVER = "liver"
    BONE = "bone"
    LYMPH_NODE = "lymph_node"
    LUNG = "lung"


@dataclass(frozen=True)
class GridSpec:
    """CT voxel grid of the phantom.

    ``inplane_mm`` and ``slice_mm`` set the spacing; the in-plane field of view is fixed in mm
    (``fov_x_mm`` × ``fov_y_mm``, a rectangle like a scanner's reconstruction FOV cropped to the
    patient) and the axial range covers the anatomy (pelvis to lung apex, or to the vertex with
    head and neck). ``pad_mm`` extra slices at both ends are generated but not written, so that
    the patient's motion between timepoints brings real anatomy (not empty space) into view.
    """

    inplane_mm: float = 2.5
    slice_mm: float = 3.0
    fov_x_mm: float = 440.0
    fov_y_mm: float = 340.0
    pad_mm: float = 30.0

    def __post_init__(self) -> None:
        for name in ("inplane_mm", "slice_mm"):
            v = getattr(self, name)
            if not (0.5 <= v <= 12.0):
                raise InputError(f"grid {name}={v} mm is outside 0.5–12 mm")
        if self.fov_x_mm < 300 or self.fov_y_mm < 250:
            raise InputError(f"grid FOV {self.fov_x_mm}×{self.fov_y_mm} mm is too small for "
                             "an adult torso (at least 300×250 mm)")
        if self.pad_mm < 0:
            raise InputError(f"grid pad_mm={self.pad_mm} must be ≥ 0")


@dataclass(frozen=True)
class AnatomyOptions:
    """What the anatomy contains."""

    head_neck: bool = False
    n_lesions: int = 0
    lesion_sites: tuple[LesionSite, ...] = (LesionSite.LIVER, LesionSite.BONE,
                                            LesionSite.LYMPH_NODE)
    lesion_diameter_mm: tuple[float, float] = (10.0, 50.0)
    thyroid_remnant: bool = False
    #: Amplitude (standard deviation per component) of the smooth body deformation [mm].
    deformation_mm: float = 4.0

    def __post_init__(self) -> None:
        if not (0 <= self.n_lesions <= 30):
            raise InputError(f"number of lesions {self.n_lesions} is outside 0–30")
        lo, hi = self.lesion_diameter_mm
        if not (5.0 <= lo <= hi <= 60.0):
            raise InputError(f"lesion diameter range {lo}–{hi} mm is outside 5–60 mm")
        if self.n_lesions and not self.lesion_sites:
            raise InputError("lesions requested but no lesion site given")
        if self.thyroid_remnant and not self.head_neck:
            raise InputError("a thyroid remnant needs the head/neck region (head_neck=True)")


@dataclass(frozen=True)
class Lesion:
    """One lesion as placed: name, label, site, nominal diameter [mm] and centre [mm, LPS]."""

    name: str
    label: int
    site: LesionSite
    diameter_mm: float
    center_mm: tuple[float, float, float]
    density_g_per_cm3: float
    hu: float


@dataclass(frozen=True)
class Grid:
    """A regular axis-aligned grid (identity direction): size (x, y, z), spacing, origin."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """numpy shape (z, y, x)."""
        return (self.size[2], self.size[1], self.size[0])

    def axis(self, i: int) -> np.ndarray:
        """Physical coordinates [mm] of the voxel centres along axis ``i`` (0 = x)."""
        return self.origin[i] + self.spacing[i] * np.arange(self.size[i], dtype=np.float64)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel [mL]."""
        return float(np.prod(self.spacing)) * 1e-3


@dataclass(frozen=True)
class Anatomy:
    """The generated patient on the padded grid.

    Attributes
    ----------
    labels : (Z, Y, X) uint16 ndarray
        Label map on the padded grid (see :data:`TISSUES`, lesions from 101).
    hu : (Z, Y, X) float32 ndarray
        Noise-free CT numbers [HU] with a mild partial-volume blur.
    heterogeneity : (Z, Y, X) float32 ndarray
        Smooth, positive multiplicative field (mean ≈ 1) for within-organ uptake texture.
    grid : Grid
        Padded grid (patient frame, mm).
    core : slice
        z-slice of the padded arrays that is the written field of view.
    tissues : tuple of Tissue
        Label table of the labels present (plus lesions as Tissue rows).
    lesions : tuple of Lesion
    """

    labels: np.ndarray
    hu: np.ndarray
    heterogeneity: np.ndarray
    grid: Grid
    core: slice
    tissues: tuple[Tissue, ...]
    lesions: tuple[Lesion, ...]
    body_scale: tuple[float, float, float]
    notes: tuple[str, ...] = field(default=())

    @property
    def core_grid(self) -> Grid:
        """The field-of-view grid (the padded grid without the extra end slices)."""
        z0 = self.core.start
        return Grid(size=(self.grid.size[0], self.grid.size[1], self.core.stop - z0),
                    spacing=self.grid.spacing,
                    origin=(self.grid.origin[0], self.grid.origin[1],
                            self.grid.origin[2] + z0 * self.grid.spacing[2]))


# =============================================================================== smooth fields
def _interp_matrix(n_out: int, coarse_step: float, n_in: int) -> np.ndarray:
    """Linear interpolation weights (n_out × n_in) from a coarse axis onto a fine one."""
    pos = np.arange(n_out) / coarse_step
    i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    f = pos - i0
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), i0] = 1.0 - f
    m[np.arange(n_out), i0 + 1] = f
    return m


def smooth_field(shape: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
                 corr_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field, zero mean, unit standard deviation (approximately).

    White noise on a coarse grid (step ``corr_mm / 2``) is Gaussian-smoothed (σ = 1 coarse
    voxel) and interpolated linearly onto the fine grid, separably along each axis.

    Parameters
    ----------
    shape : (Z, Y, X)
    spacing_zyx : spacing [mm] in the same order
    corr_mm : approximate correlation length [mm]

    Returns
    -------
    (Z, Y, X) float32 ndarray
    """
    step = corr_mm / 2.0
    steps = [step / s for s in spacing_zyx]  # fine voxels per coarse voxel
    coarse_shape = [math.ceil(n / st) + 2 for n, st in zip(shape, steps, strict=True)]
    c = rng.standard_normal(coarse_shape).astype(np.float32)
    c = ndimage.gaussian_filter(c, 1.0, mode="wrap")
    c /= max(float(c.std()), 1e-6)
    mz, my, mx = (_interp_matrix(n, st, nc) for n, st, nc in zip(shape, steps, coarse_shape,
                                                                  strict=True))
    out = np.einsum("zyx,Xx->zyX", c, mx, optimize=True)
    out = np.einsum("zyX,Yy->zYX", out, my, optimize=True)
    out = np.einsum("zYX,Zz->ZYX", out, mz, optimize=True)
    return np.ascontiguousarray(out, dtype=np.float32)


# =============================================================================== shapes
def rotation_matrix(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Rotation R = Rz · Ry · Rx (angles in degrees, right-handed about the LPS axes)."""
    ax, ay, az = np.radians([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


_N_HARMONICS = 10
#: Relative amplitude of each harmonic (degree 1: 3 terms, degree 2: 5 terms, degree 3: 2).
_HARMONIC_WEIGHT = np.array([1, 1, 1, 0.8, 0.8, 0.8, 0.8, 0.8, 0.6, 0.6])


def _harmonics(ux, uy, uz) -> list[np.ndarray]:
    """Real polynomial harmonics of degree 1–3 of a unit vector (unnormalised)."""
    return [ux, uy, uz, ux * uy, ux * uz, uy * uz, ux * ux - uy * uy, 3 * uz * uz - 1,
            ux * (ux * ux - 3 * uy * uy), uz * (5 * uz * uz - 3)]


@dataclass(frozen=True)
class Shape:
    """A harmonically perturbed superellipsoid.

    ``center`` [mm], ``semi`` semi-axes [mm] in the local frame, ``rotation`` 3×3 (local →
    patient), ``exponent`` (2 = ellipsoid, larger = boxier), ``coeffs`` harmonic coefficients
    (radius scale factor 1 + Σ cᵢ·Yᵢ(u)).
    """

    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    rotation: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    exponent: float = 2.0
    coeffs: tuple[float, ...] = (0.0,) * _N_HARMONICS

    def shrunk(self, by_mm: float) -> Shape:
        """Same shape with every semi-axis reduced by ``by_mm`` (for cortical shells)."""
        return Shape(self.center, tuple(max(s - by_mm, 0.5) for s in self.semi), self.rotation,
                     self.exponent, self.coeffs)

    def reach_mm(self) -> float:
        """A radius [mm] around the centre that contains the whole shape."""
        return max(self.semi) * (1.0 + float(np.sum(np.abs(self.coeffs)) * 1.8)) + 1.0


def random_shape(rng: np.random.Generator, center, semi, rot_deg=(0.0, 0.0, 0.0),
                 exponent: float = 2.0, harmonic_amp: float = 0.06, size_sd: float = 0.08,
                 pos_sd_mm: float = 5.0, angle_sd_deg: float = 4.0) -> Shape:
    """Draw a :class:`Shape` around nominal parameters.

    Semi-axes are scaled log-normally (σ = ``size_sd``), the centre moved by N(0, ``pos_sd_mm``)
    per axis, the angles by N(0, ``angle_sd_deg``) and the harmonic coefficients drawn as
    N(0, ``harmonic_amp`` × weight).
    """
    s = np.asarray(semi, float) * np.exp(size_sd * rng.standard_normal(3))
    c = np.asarray(center, float) + pos_sd_mm * rng.standard_normal(3)
    ang = np.asarray(rot_deg, float) + angle_sd_deg * rng.standard_normal(3)
    coeffs = harmonic_amp * _HARMONIC_WEIGHT * rng.standard_normal(_N_HARMONICS)
    r = rotation_matrix(*ang)
    return Shape(tuple(c), tuple(s), tuple(map(tuple, r)), float(exponent), tuple(coeffs))


class _Canvas:
    """Warped coordinates of the padded grid and painting helpers (internal)."""

    def __init__(self, grid: Grid, disp: tuple[np.ndarray, np.ndarray, np.ndarray] | None):
        self.grid = grid
        x, y, z = (grid.axis(i).astype(np.float32) for i in range(3))
        self.x1, self.y1, self.z1 = x, y, z
        shape = grid.shape
        if disp is None:
            self.wx = np.broadcast_to(x[None, None, :], shape)
            self.wy = np.broadcast_to(y[None, :, None], shape)
            self.wz = np.broadcast_to(z[:, None, None], shape)
            self.umax = 0.0
        else:
            self.wx = x[None, None, :] + disp[0]
            self.wy = y[None, :, None] + disp[1]
            self.wz = z[:, None, None] + disp[2]
            self.umax = float(max(np.abs(d).max() for d in disp))
        self.labels = np.zeros(shape, dtype=np.uint16)

    def box(self, center, reach) -> tuple[slice, slice, slice] | None:
        """Index box (z, y, x) whose warped coordinates may fall within ``reach`` of centre."""
        r = reach + self.umax + 1e-3
        out = []
        for ax, c in zip((self.z1, self.y1, self.x1), (center[2], center[1], center[0]),
                         strict=True):
            lo = int(np.searchsorted(ax, c - r, side="left"))
            hi = int(np.searchsorted(ax, c + r, side="right"))
            if hi <= lo:
                return None
            out.append(slice(lo, hi))
        return tuple(out)

    def mask(self, shape: Shape, box=None) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """Boolean mask of ``shape`` within its box; returns (box, mask) or None."""
        if box is None:
            box = self.box(shape.center, shape.reach_mm())
        if box is None:
            return None
        px = self.wx[box] - np.float32(shape.center[0])
        py = self.wy[box] - np.float32(shape.center[1])
        pz = self.wz[box] - np.float32(shape.center[2])
        r = np.asarray(shape.rotation, dtype=np.float32)
        # local = Rᵀ p
        lx = (r[0, 0] * px + r[1, 0] * py + r[2, 0] * pz) / np.float32(shape.semi[0])
        ly = (r[0, 1] * px + r[1, 1] * py + r[2, 1] * pz) / np.float32(shape.semi[1])
        lz = (r[0, 2] * px + r[1, 2] * py + r[2, 2] * pz) / np.float32(shape.semi[2])
        norm = np.sqrt(lx * lx + ly * ly + lz * lz) + np.float32(1e-6)
        e = shape.exponent
        if e == 2.0:
            rho = norm
        else:
            rho = (np.abs(lx) ** e + np.abs(ly) ** e + np.abs(lz) ** e) ** (1.0 / e)
        ux, uy, uz = lx / norm, ly / norm, lz / norm
        delta = np.zeros_like(rho)
        for c, h in zip(shape.coeffs, _harmonics(ux, uy, uz), strict=True):
            if c != 0.0:
                delta += np.float32(c) * h
        return box, rho <= (1.0 + delta)

    def paint(self, box, mask, label: int, only: np.ndarray | None = None,
              never: np.ndarray | None = None) -> int:
        """Set ``label`` where ``mask``; optionally only over labels in ``only`` or never over
        labels in ``never``. Returns the number of voxels painted."""
        view = self.labels[box]
        m = mask
        if only is not None:
            m = m & np.isin(view, only)
        if never is not None:
            m = m & ~np.isin(view, never)
        view[m] = label
        return int(m.sum())

    def paint_shape(self, shape: Shape, label: int, **kw) -> int:
        res = self.mask(shape)
        if res is None:
            return 0
        return self.paint(*res, label, **kw)


# =============================================================================== body
#: Body cross-section profile along z (nominal, mm): z, semi-axis x, semi-axis y, centre y.
#: z = 0 is near the ischial tuberosities; the lung apices are near z ≈ 615, the vertex
#: near z ≈ 905.
_PROFILE = np.array([
    (-200.0, 170.0, 108.0, 0.0),
    (0.0, 176.0, 110.0, 0.0),
    (100.0, 172.0, 112.0, 0.0),
    (200.0, 160.0, 114.0, -4.0),
    (280.0, 152.0, 114.0, -6.0),
    (360.0, 156.0, 110.0, -3.0),
    (460.0, 165.0, 106.0, 0.0),
    (560.0, 176.0, 102.0, 2.0),
    (630.0, 182.0, 96.0, 4.0),
    (655.0, 120.0, 80.0, 5.0),
    (680.0, 64.0, 64.0, 6.0),
    (715.0, 62.0, 66.0, 4.0),
    (745.0, 74.0, 88.0, 0.0),
    (790.0, 78.0, 98.0, 0.0),
    (850.0, 76.0, 96.0, 2.0),
    (885.0, 60.0, 78.0, 4.0),
    (905.0, 18.0, 22.0, 4.0),
])
_Z_VERTEX = 906.0


def _body_masks(cv: _Canvas, scale: np.ndarray, fat_mm: float, coeffs: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """Skin contour and the inner (sub-fat) contour on the whole padded grid.

    Returns (inside_body, inside_inner, couch_y).
    """
    zc = _PROFILE[:, 0] * scale[2]
    ax = np.interp(cv.wz, zc, _PROFILE[:, 1] * scale[0]).astype(np.float32)
    ay = np.interp(cv.wz, zc, _PROFILE[:, 2] * scale[1]).astype(np.float32)
    yc = np.interp(cv.wz, zc, _PROFILE[:, 3]).astype(np.float32)
    dx = cv.wx / ax
    dy = (cv.wy - yc) / ay
    theta = np.arctan2(dy, dx)
    # harmonic modulation of the contour in angle (n = 2…4), constant along z
    mod = np.ones_like(dx)
    for n, (a, b) in enumerate(coeffs.reshape(-1, 2), start=2):
        mod += np.float32(a) * np.cos(n * theta) + np.float32(b) * np.sin(n * theta)
    e = 2.4
    rho = (np.abs(dx) ** e + np.abs(dy) ** e) ** (1.0 / e)
    body = (rho <= mod) & (cv.wz < _Z_VERTEX * scale[2])
    # inner contour: fat thickness relative to the local radius (thinner in the neck and head)
    local_r = np.minimum(ax, ay)
    fat = np.where(cv.wz > 640.0 * scale[2], np.float32(fat_mm * 0.35), np.float32(fat_mm))
    inner = rho <= mod * (1.0 - fat / local_r)
    # flat back on the couch: the most posterior skin point of the abdomen/chest, minus 4 mm
    ys = cv.y1
    post = np.where(body.any(axis=(0, 2)))[0]
    couch_y = float(ys[post.max()]) - 4.0 if post.size else float(ys[-1])
    flat = (cv.wy <= couch_y)
    return body & flat, inner & flat, couch_y


def _spine_y(z: np.ndarray | float, s: np.ndarray) -> np.ndarray:
    """Antero-posterior position [mm] of the vertebral-body centre as a function of z."""
    pts = np.array([(-200, 85), (100, 78), (180, 55), (280, 42), (360, 55), (460, 72),
                    (580, 66), (650, 48), (720, 40), (900, 40)], dtype=float)
    return np.interp(z, pts[:, 0] * s[2], pts[:, 1] * s[1])


# =============================================================================== generator
def _organ_shapes(rng: np.random.Generator, s: np.ndarray, head_neck: bool,
                  thyroid: bool) -> list[tuple[str, list[Shape]]]:
    """Nominal organ shapes scaled by the body scale ``s`` (x, y, z) and drawn around nominal
    positions. Order matters: later structures override earlier ones."""

    def sh(center, semi, rot=(0, 0, 0), e=2.0, amp=0.06, size_sd=0.08, pos_sd=5.0):
        c = np.asarray(center, float) * s
        a = np.asarray(semi, float) * s
        return random_shape(rng, c, a, rot, e, amp, size_sd, pos_sd)

    out: list[tuple[str, list[Shape]]] = [
        ("lung_right", [sh((-86, 12, 492), (64, 80, 125), (0, 0, 4), 2.3, 0.07)]),
        ("lung_left", [sh((88, 12, 496), (58, 78, 120), (0, 0, -4), 2.3, 0.07)]),
        ("liver", [sh((-64, -2, 362), (88, 78, 56), (0, 12, -18), 2.2, 0.10, 0.07),
                   sh((5, -42, 374), (40, 28, 30), (0, 0, 10), 2.0, 0.08, 0.1)]),
        ("stomach", [sh((64, -28, 352), (40, 30, 52), (20, 0, 30), 2.0, 0.08)]),
        ("spleen", [sh((98, 50, 370), (36, 26, 54), (-15, 0, 25), 2.0, 0.08, 0.12)]),
        ("heart", [sh((22, -26, 452), (56, 46, 58), (10, -20, 30), 2.0, 0.05)]),
        ("kidney_right", [sh((-72, 56, 288), (27, 24, 55), (-8, 12, 25), 2.0, 0.05, 0.07, 4)]),
        ("kidney_left", [sh((72, 56, 302), (27, 24, 55), (-8, -12, -25), 2.0, 0.05, 0.07, 4)]),
        ("urinary_bladder", [sh((0, -36, 88), (44, 36, 34), (0, 0, 0), 2.2, 0.05, 0.2, 4)]),
        ("trachea", [sh((0, -8, 640), (9, 9, 125), (0, 0, 0), 2.0, 0.0, 0.05, 1.5)]),
    ]
    if head_neck:
        out += [
            ("brain", [sh((0, 4, 818), (60, 78, 62), (0, 0, 0), 2.1, 0.03, 0.05, 2)]),
            ("parotid_gland_right", [sh((-56, 6, 746), (13, 20, 23), (0, 0, 0), 2.0, 0.07,
                                        0.1, 2)]),
            ("parotid_gland_left", [sh((56, 6, 746), (13, 20, 23), (0, 0, 0), 2.0, 0.07,
                                       0.1, 2)]),
            ("submandibular_gland_right", [sh((-38, -34, 712), (13, 11, 11), (0, 0, 0), 2.0,
                                              0.07, 0.1, 2)]),
            ("submandibular_gland_left", [sh((38, -34, 712), (13, 11, 11), (0, 0, 0), 2.0,
                                             0.07, 0.1, 2)]),
        ]
        if thyroid:
            pieces = [sh((-16 * rng.choice([-1, 1]), -36, 668), (7, 6, 10), (0, 0, 0), 2.0,
                         0.1, 0.2, 2)]
            if rng.random() < 0.6:
                pieces.append(sh((16, -36, 662), (5, 5, 7), (0, 0, 0), 2.0, 0.1, 0.2, 2))
            out.append(("thyroid_gland", pieces))
    return out


def make_anatomy(rng: np.random.Generator, options: AnatomyOptions = AnatomyOptions(),
                 grid: GridSpec = GridSpec()) -> Anatomy:
    """Generate the label map and noise-free CT of one digital patient.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all randomness (shape, size, position, deformation, lesions, CT numbers).
    options : AnatomyOptions
    grid : GridSpec

    Returns
    -------
    Anatomy
        On a padded grid whose core covers from below the pelvis to above the lung apices (or
        the vertex with ``head_neck``). The CT frame has the patient centred at x = y = 0 and a
        table position (z origin) drawn from the seed.
    """
    # ---------------------------------------------------------------- body size and FOV
    s = np.array([np.exp(0.06 * rng.standard_normal()), np.exp(0.08 * rng.standard_normal()),
                  np.exp(0.03 * rng.standard_normal())])
    s = np.clip(s, [0.88, 0.85, 0.94], [1.12, 1.16, 1.06])
    fat_mm = float(np.clip(18.0 * s[1] ** 3 * np.exp(0.25 * rng.standard_normal()), 6, 40))
    body_coeffs = 0.025 * rng.standard_normal(6)
    organ_shapes = _organ_shapes(rng, s, options.head_neck, options.thyroid_remnant)
    # the axial field of view covers every organ with a margin for the deformation
    margin = 15.0 + 3.0 * options.deformation_mm
    tops = [shp.center[2] + shp.reach_mm() for name, shapes in organ_shapes
            for shp in shapes if tissue(name).kind in (Kind.ORGAN, Kind.BLOOD)
            or name.startswith("lung")]
    bottoms = [shp.center[2] - shp.reach_mm() for name, shapes in organ_shapes
               for shp in shapes if tissue(name).kind in (Kind.ORGAN, Kind.BLOOD)]
    z_lo = min(-20.0 * s[2], min(bottoms) - margin)
    z_hi = (_Z_VERTEX + 12.0) * s[2] if options.head_neck else 0.0
    z_hi = max(z_hi, max(tops) + margin)
    table_z = -float(rng.integers(550, 900))  # scanner z of the pelvis reference (mm)
    dz, dxy = grid.slice_mm, grid.inplane_mm
    nz_core = math.ceil((z_hi - z_lo) / dz)
    npad = math.ceil(grid.pad_mm / dz)
    nx = round(grid.fov_x_mm / dxy)
    ny = round(grid.fov_y_mm / dxy)
    y_center = 12.0  # the patient's centre lies a little anterior of the FOV centre
    origin = (-(nx - 1) * dxy / 2.0, -(ny - 1) * dxy / 2.0 + y_center, z_lo - npad * dz)
    g = Grid((nx, ny, nz_core + 2 * npad), (dxy, dxy, dz), origin)
    core = slice(npad, npad + nz_core)

    # ---------------------------------------------------------------- deformation field
    disp = None
    if options.deformation_mm > 0:
        sp = (dz, dxy, dxy)
        disp = tuple(np.float32(options.deformation_mm) * smooth_field(g.shape, sp, 120.0, rng)
                     for _ in range(3))
    cv = _Canvas(g, disp)

    # ---------------------------------------------------------------- body, fat
    body, inner, couch_y = _body_masks(cv, s, fat_mm, body_coeffs)
    lab = cv.labels
    lab[body] = tissue("subcutaneous_fat").label
    lab[inner] = tissue("body").label
    sp_zyx = (dz, dxy, dxy)
    visceral = smooth_field(g.shape, sp_zyx, 40.0, rng)
    abdomen = (cv.wz > 60 * s[2]) & (cv.wz < 390 * s[2])
    lab[inner & abdomen & (visceral > 0.55)] = tissue("torso_fat").label
    del visceral, abdomen, body, inner

    # ---------------------------------------------------------------- organs
    for name, shapes in organ_shapes:
        for shp in shapes:
            cv.paint_shape(shp, tissue(name).label, never=np.array([0], np.uint16))

    # ---------------------------------------------------------------- skeleton
    _paint_skeleton(cv, rng, s, options.head_neck, z_hi)

    # ---------------------------------------------------------------- lesions
    lesions = _place_lesions(cv, rng, options, s, core)

    # keep organs out of the padding: they must be wholly inside the field of view
    _check_organs_in_core(lab, core)

    # ---------------------------------------------------------------- CT numbers
    hu = _ct_numbers(cv, rng, lesions, couch_y, s)
    het = np.exp(0.18 * smooth_field(g.shape, sp_zyx, 30.0, rng)).astype(np.float32)

    # shift to the scanner frame: table position along z
    g_scan = Grid(g.size, g.spacing, (g.origin[0], g.origin[1], g.origin[2] + table_z))
    present = set(np.unique(lab).tolist())
    tissues = [t for t in TISSUES if t.label in present]
    for les in lesions:
        tissues.append(Tissue(les.label, les.name, les.density_g_per_cm3, les.hu, Kind.LESION,
                              1.0, "(lesion)", "soft tissue / sclerotic bone (assumed)"))
    lesions = tuple(Lesion(le.name, le.label, le.site, le.diameter_mm,
                           (le.center_mm[0], le.center_mm[1], le.center_mm[2] + table_z),
                           le.density_g_per_cm3, le.hu) for le in lesions)
    return Anatomy(labels=lab, hu=hu, heterogeneity=het, grid=g_scan, core=core,
                   tissues=tuple(tissues), lesions=lesions, body_scale=tuple(map(float, s)),
                   notes=(f"subcutaneous fat thickness {fat_mm:.1f} mm",))


def _check_organs_in_core(lab: np.ndarray, core: slice) -> None:
    organs = np.array([t.label for t in TISSUES if t.kind in (Kind.ORGAN, Kind.BLOOD)],
                      dtype=np.uint16)
    for sl in (slice(0, core.start + 1), slice(core.stop - 1, lab.shape[0])):
        part = lab[sl]
        bad = np.isin(part, organs) | (part > LESION_LABEL_BASE)
        if bad.any():  # pragma: no cover - guarded by the geometry; a bug if it happens
            names = sorted({int(v) for v in np.unique(part[bad])})
            raise RuntimeError(f"anatomy: labels {names} reach the end of the field of view")


def _paint_skeleton(cv: _Canvas, rng: np.random.Generator, s: np.ndarray, head_neck: bool,
                    z_hi: float) -> None:
    """Vertebrae (with marrow cores, arches, processes), spinal cord, sacrum, hips, femora,
    ribs and, with the head, the skull."""
    lab = cv.labels
    L = {t.name: np.uint16(t.label) for t in TISSUES}
    not_air = np.array([0], np.uint16)
    marrow = L["red_marrow"]
    # --- vertebral column: a stack of vertebral bodies from the sacrum upwards ----------------
    z = 165.0 * s[2]
    z_top = (z_hi + 40.0) if not head_neck else 735.0 * s[2]
    while z < z_top:
        if z < 350 * s[2]:
            h, disc, rx, ry, canal = 30.0, 8.0, 25.0, 19.0, 10.0
        elif z < 640 * s[2]:
            h, disc, rx, ry, canal = 23.0, 5.5, 18.0, 15.0, 8.0
        else:
            h, disc, rx, ry, canal = 15.0, 4.0, 12.0, 9.0, 7.0
        h *= s[2]
        zc = z + h / 2
        yc = float(_spine_y(zc, s))
        body = random_shape(rng, (0.0, yc, zc), (rx * s[0], ry * s[1], h / 2), (0, 0, 0), 3.0,
                            0.02, 0.04, 0.5, 1.5)
        res = cv.mask(body)
        if res is not None:
            box, m = res
            cv.paint(box, m, L["vertebrae"], never=not_air)
            inner = cv.mask(body.shrunk(2.5), box)
            if inner is not None:
                cv.paint(box, inner[1], marrow, only=np.array([L["vertebrae"]]))
        # arch: ring around the canal, spinous and transverse processes
        cy = yc + ry * s[1] + canal + 2.0
        ring = Shape((0.0, cy, zc), (canal + 5.0, canal + 5.0, h / 2))
        res = cv.mask(ring)
        if res is not None:
            box, m = res
            cv.paint(box, m, L["vertebrae"], never=not_air)
        spin = Shape((0.0, cy + canal + 18.0, zc + h * 0.1), (3.5, 18.0, h * 0.35),
                     exponent=4.0)
        cv.paint_shape(spin, L["vertebrae"], never=not_air)
        for side in (-1.0, 1.0):
            tp = Shape((side * (rx * s[0] + 14.0), cy - 4.0, zc), (18.0, 5.0, h * 0.25),
                       exponent=4.0)
            cv.paint_shape(tp, L["vertebrae"], never=not_air)
        z += h + disc
    # spinal cord: a tube through the canals (drawn after the arches; rings carved inside)
    zs = np.arange(100.0 * s[2], z_top, 6.0)
    for zc in zs:
        yc = float(_spine_y(zc, s))
        canal = 9.0 if zc < 350 * s[2] else (7.0 if zc < 640 * s[2] else 6.0)
        cy = yc + (19.0 if zc < 350 * s[2] else (15.0 if zc < 640 * s[2] else 9.0)) * s[1]
        cy += canal + 2.0
        tube = Shape((0.0, cy, zc), (canal * 0.7, canal * 0.7, 3.5))
        cv.paint_shape(tube, L["spinal_cord"], never=not_air)

    # --- sacrum, hips, femora: cortical shell around a marrow core ---------------------------
    def bone(name, center, semi, rot, e=2.2, shell=2.5, amp=0.04):
        shp = random_shape(rng, np.asarray(center) * s, np.asarray(semi) * s, rot, e, amp,
                           0.05, 2.0, 3.0)
        res = cv.mask(shp)
        if res is None:
            return
        box, m = res
        cv.paint(box, m, L[name], never=not_air)
        inner = cv.mask(shp.shrunk(shell), box)
        if inner is not None:
            cv.paint(box, inner[1], marrow, only=np.array([L[name]]))

    bone("sacrum", (0, 88, 118), (46, 20, 58), (-28, 0, 0), 2.4)
    for side, name in ((1.0, "hip_left"), (-1.0, "hip_right")):
        bone(name, (side * 104, 28, 168), (11, 58, 60), (0, 0, -side * 32), 2.6, 2.0)
        bone(name, (side * 86, 2, 72), (28, 30, 46), (0, side * 8, 0), 2.2)
        bone(name, (side * 34, -52, 52), (30, 11, 14), (0, 0, side * 15), 2.4, 2.0)
        femur = "femur_left" if side > 0 else "femur_right"
        bone(femur, (side * 92, 2, 58), (23, 23, 23), (0, 0, 0), 2.0)
        bone(femur, (side * 108, 6, -90), (15, 15, 110), (0, side * 8, 0), 2.0, 4.0)

    # --- ribs: 12 pairs, each a curved tube inside the chest wall ----------------------------
    _paint_ribs(cv, rng, s)

    # --- skull --------------------------------------------------------------------------------
    if head_neck:
        brain = np.argwhere(lab == L["brain"])
        if brain.size:
            zc = float(cv.z1[int(np.median(brain[:, 0]))])
            skull = random_shape(rng, (0.0, 4.0 * s[1], zc), (70 * s[0], 88 * s[1], 74 * s[2]),
                                 (0, 0, 0), 2.1, 0.02, 0.02, 1.0, 1.0)
            res = cv.mask(skull)
            if res is not None:
                box, m = res
                inner = cv.mask(skull.shrunk(7.0), box)[1]
                cv.paint(box, m & ~inner, L["skull"], never=np.array([0, L["brain"]], np.uint16))


def _paint_ribs(cv: _Canvas, rng: np.random.Generator, s: np.ndarray) -> None:
    rib = np.uint16(tissue("ribs").label)
    protect = np.array([0, tissue("vertebrae").label, tissue("red_marrow").label,
                        tissue("spinal_cord").label], np.uint16)
    z0 = 600.0 * s[2]
    for k in range(12):
        zp = z0 - k * 22.0 * s[2] + rng.normal(0, 1.5)  # posterior height of rib k+1
        # ellipse of the rib ring (just inside the chest wall at that height)
        ax = np.interp(zp, _PROFILE[:, 0] * s[2], _PROFILE[:, 1] * s[0]) - 24.0
        ay = np.interp(zp, _PROFILE[:, 0] * s[2], _PROFILE[:, 2] * s[1]) - 22.0
        if k == 0:
            ax, ay = ax * 0.65, ay * 0.8
        drop = 0.55 + 0.05 * rng.standard_normal()  # anterior descent per mm forward
        zlo, zhi = zp - drop * ay - 8.0 - cv.umax, zp + 8.0 + cv.umax
        zsl = slice(int(np.searchsorted(cv.z1, zlo)), int(np.searchsorted(cv.z1, zhi)))
        if zsl.stop <= zsl.start:
            continue
        box = (zsl, slice(None), slice(None))
        wx, wy, wz = cv.wx[box], cv.wy[box], cv.wz[box]
        r = np.sqrt((wx / ax) ** 2 + (wy / ay) ** 2)
        ring = np.abs(r - 1.0) * min(ax, ay) < 4.5
        zr = zp - drop * (ay - wy) * 0.5  # rib descends towards the front
        tube = ring & (np.abs(wz - zr) < 4.0)
        # ribs 1–10 reach the front (minus the costal cartilage); 11–12 are short
        front = -ay * (0.55 if k < 10 else -0.1)
        tube &= (wy > front) & (np.abs(wx) > 12.0)
        cv.paint(box, tube, rib, never=protect)


def _place_lesions(cv: _Canvas, rng: np.random.Generator, options: AnatomyOptions,
                   s: np.ndarray, core: slice) -> list[Lesion]:
    """Place ``options.n_lesions`` lesions at the requested sites, not overlapping and
    wholly inside the field of view (``core``, a z-slice of the padded grid)."""
    lab = cv.labels
    L = {t.name: t.label for t in TISSUES}
    bones = [L[n] for n in ("vertebrae", "sacrum", "hip_left", "hip_right", "red_marrow")]
    soft = np.array([L["body"], L["torso_fat"], L["subcutaneous_fat"]], np.uint16)
    lesions: list[Lesion] = []
    sites = list(options.lesion_sites)
    lo, hi = options.lesion_diameter_mm
    # lymph-node stations (x, y, z) in the nominal frame; neck nodes only with the neck
    nodes = [(-30, 30, 260), (30, 30, 250), (-52, 25, 160), (52, 25, 160), (-20, -5, 520),
             (22, -10, 505), (-35, 20, 300), (35, 20, 290)]
    if options.head_neck:
        nodes += [(-40, 0, 680), (40, 0, 690)]
    for i in range(options.n_lesions):
        site = sites[i % len(sites)]
        d = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        if site is LesionSite.LIVER:
            cand = [L["liver"]]
        elif site is LesionSite.BONE:
            cand = bones
        elif site is LesionSite.LUNG:
            cand = [L["lung_left"], L["lung_right"]]
        else:
            cand = None
        placed = None
        idx = None
        if cand is not None:
            idx = np.flatnonzero(np.isin(lab[core], cand)) + core.start * lab[0].size
            if idx.size == 0:
                continue
        for attempt in range(60):
            dd = d * (0.97 ** attempt)  # shrink a lesion that does not fit anywhere
            if idx is None:
                base = np.asarray(nodes[int(rng.integers(len(nodes)))], float) * s
                c = base + rng.normal(0, 8.0, 3)
            else:
                k = np.unravel_index(idx[int(rng.integers(idx.size))], lab.shape)
                c = np.array([cv.wx[k], cv.wy[k], cv.wz[k]], dtype=float)
            shp = random_shape(rng, c, (dd / 2, dd / 2, dd / 2), (0, 0, 0), 2.0, 0.07, 0.08,
                               0.0, 30.0)
            res = cv.mask(shp)
            if res is None:
                continue
            box, m = res
            zs = np.nonzero(m.any(axis=(1, 2)))[0]
            if zs.size == 0 or box[0].start + zs[0] <= core.start \
                    or box[0].start + zs[-1] >= core.stop - 1:
                continue  # not wholly inside the field of view
            view = lab[box]
            if m.sum() < 2 or (view[m] > LESION_LABEL_BASE).any():
                continue
            inside = np.isin(view[m], cand).mean() if cand is not None else \
                np.isin(view[m], soft).mean()
            if inside < 0.7:
                continue
            placed = (shp, box, m, dd, c)
            break
        if placed is None:
            continue  # no room left for this one (reported by the count of lesions made)
        shp, box, m, dd, c = placed
        label = LESION_LABEL_BASE + len(lesions) + 1
        if site is LesionSite.LYMPH_NODE:
            cv.paint(box, m, label, only=soft)
        else:
            cv.paint(box, m, label, never=np.array([0], np.uint16))
        is_bone = site is LesionSite.BONE
        sclerotic = is_bone and rng.random() < 0.6
        hu = 450.0 if sclerotic else (32.0 if site is LesionSite.LIVER else 42.0)
        dens = LESION_DENSITY_BONE if sclerotic else LESION_DENSITY_SOFT
        lesions.append(Lesion(f"lesion_{len(lesions) + 1}", label, site, round(dd, 2),
                              tuple(float(v) for v in c), dens, hu))
    return lesions


def _ct_numbers(cv: _Canvas, rng: np.random.Generator, lesions: list[Lesion], couch_y: float,
                s: np.ndarray) -> np.ndarray:
    """CT numbers [HU] from the labels, per-patient means, texture, couch and a mild blur."""
    lab = cv.labels
    lut = np.full(int(lab.max()) + 1, -1000.0, dtype=np.float32)
    for t in TISSUES:
        if t.label < lut.size:
            lut[t.label] = t.hu + rng.normal(0.0, 4.0)
    lung_hu = float(rng.uniform(-850.0, -720.0))
    cort = float(rng.uniform(900.0, 1150.0))
    mar = float(rng.uniform(200.0, 300.0))
    for name, v in (("lung_left", lung_hu), ("lung_right", lung_hu + rng.normal(0, 10)),
                    ("vertebrae", cort), ("sacrum", cort), ("hip_left", cort),
                    ("hip_right", cort), ("femur_left", cort), ("femur_right", cort),
                    ("skull", cort + 60.0), ("red_marrow", mar)):
        lab_v = tissue(name).label
        if lab_v < lut.size:
            lut[lab_v] = v
    for les in lesions:
        lut[les.label] = les.hu + rng.normal(0.0, 4.0)
    hu = lut[lab]
    tex = smooth_field(lab.shape, (cv.grid.spacing[2], cv.grid.spacing[1], cv.grid.spacing[0]),
                       15.0, rng)
    lungs = np.isin(lab, [tissue("lung_left").label, tissue("lung_right").label])
    inside = lab > 0
    hu += np.where(lungs, np.float32(35.0), np.float32(6.0)) * tex * inside
    # couch: a 12 mm carbon-fibre/foam slab below the patient's back (label 0: not patient)
    y = cv.y1
    couch = (y > couch_y + 2.0) & (y < couch_y + 14.0)
    shell = couch & ((y < couch_y + 4.0) | (y > couch_y + 12.0))
    x_ok = np.abs(cv.x1) < 230.0
    slab = np.where(shell, -150.0, -600.0).astype(np.float32)
    sel = couch[None, :, None] & x_ok[None, None, :] & ~inside
    hu = np.where(sel, slab[None, :, None], hu)
    # the reconstruction kernel's partial-volume blur (≈ 1 mm FWHM)
    sig = [0.45 / max(sp / 2.5, 0.5) for sp in (cv.grid.spacing[2], cv.grid.spacing[1],
                                                cv.grid.spacing[0])]
    return ndimage.gaussian_filter(hu.astype(np.float32), sig).astype(np.float32)
