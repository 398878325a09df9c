"""Image-quality figures of a reconstructed IEC body phantom: recovery and background variability.

The figures follow the NEMA NU 2-2018 image-quality test (section 7; National Electrical
Manufacturers Association, *Performance Measurements of Positron Emission Tomographs*, NEMA
NU 2-2018) on the IEC 61675-1 body phantom (:mod:`phantoms.iec`), adapted to quantitative
SPECT, where the true concentrations are known:

* **Recovery coefficient** per sphere, ``RC_mean = C̄_sphere / C_true`` with C̄ the mean over
  the sphere's true volume, each image voxel weighted by the fraction of it inside the
  sphere's inner surface (4×4×4 supersampling), so that even the 10 mm sphere on a 9.6 mm grid
  has a well-defined VOI; and ``RC_max = max / C_true`` over the voxels that touch the sphere.
* **Percent contrast** (NEMA hot spheres), ``Q_H = (C_H/C_B − 1)/(a_H/a_B − 1)·100 %`` with
  C_H the sphere's mean and C_B the mean of its size's background ROIs.
* **Background variability** (NEMA), ``N_j = SD_j / C_B,j · 100 %``: for each sphere size j,
  K = 60 circular ROIs of that diameter, 12 per slice on the slice through the sphere centres
  and the slices nearest ±10 mm and ±20 mm from it; C_B,j is their mean and SD_j the standard
  deviation of the 60 ROI means (K − 1 in the denominator). ROI means use in-plane area
  weights (4×4 supersampling). NEMA places the 12 ROIs by hand "throughout the background, no
  closer than 15 mm to the edge of the phantom" and not within 15 mm of a sphere; here they
  are chosen deterministically: points whose 37 mm ROI keeps 15 mm from the body wall, the
  spheres' outer walls and the lung insert, spread by farthest-point sampling from the most
  anterior one. The same 12 centres carry the ROIs of all six sizes (concentric, as in NEMA).
* **Lung-insert residual**, ``ΔC_lung = C_lung / C_B · 100 %`` (NEMA's "accuracy of
  corrections"), over a 30 mm ROI on the insert's axis in the same five slices.

Images must be in the phantom's frame as :func:`phantoms.iec.make_iec` writes it (axis at
x = y = 0, interior z 0–180 mm; any voxel grid with identity direction).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import InputError
from phantoms.iec import (
    LUNG_INSERT_DIAMETER_MM,
    SPHERE_DIAMETERS_MM,
    SPHERE_WALL_MM,
    _inside_body,
    sphere_centers_mm,
)

__all__ = ["IECMetrics", "SphereMetric", "background_roi_centers", "iec_metrics"]

#: Clearance of the background ROIs from the wall, the spheres and the lung insert [mm] (NEMA).
ROI_CLEARANCE_MM = 15.0
#: Offsets of the background-ROI slices from the sphere plane [mm] (NEMA: 0, ±1, ±2 cm).
ROI_SLICE_OFFSETS_MM: tuple[float, ...] = (-20.0, -10.0, 0.0, 10.0, 20.0)
N_ROIS_PER_SLICE = 12
LUNG_ROI_DIAMETER_MM = 30.0


@dataclass(frozen=True)
class SphereMetric:
    """Figures of one sphere (concentrations in Bq/mL, percentages in %)."""

    name: str
    diameter_mm: float
    true_bq_per_ml: float
    mean_bq_per_ml: float
    max_bq_per_ml: float
    rc_mean: float
    rc_max: float
    contrast_percent: float
    background_bq_per_ml: float
    background_variability_percent: float
    voi_voxels: float  # Σ of the occupancy weights (voxels' worth)


@dataclass(frozen=True)
class IECMetrics:
    """Figures of one reconstructed IEC phantom image."""

    spheres: tuple[SphereMetric, ...]
    background_true_bq_per_ml: float
    background_mean_bq_per_ml: float
    background_recovery: float
    lung_residual_percent: float
    n_background_rois: int
    sphere_plane_z_mm: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d = asdict(self)
        d["spheres"] = [asdict(s) for s in self.spheres]
        return d

    def table(self) -> str:
        """A plain-text table (one row per sphere)."""
        rows = ["sphere   RC_mean  RC_max  Q_H(%)  BV(%)"]
        for s in self.spheres:
            rows.append(f"{s.diameter_mm:4.0f} mm  {s.rc_mean:7.3f}  {s.rc_max:6.3f}  "
                        f"{s.contrast_percent:6.1f}  {s.background_variability_percent:5.2f}")
        rows.append(f"background mean / true {self.background_recovery:.3f}, lung residual "
                    f"{self.lung_residual_percent:.1f} %")
        return "\n".join(rows)


def background_roi_centers(n: int = N_ROIS_PER_SLICE, roi_diameter_mm: float =
                           max(SPHERE_DIAMETERS_MM), clearance_mm: float = ROI_CLEARANCE_MM
                           ) -> list[tuple[float, float]]:
    """In-plane centres (x, y) [mm] of the background ROIs (see the module notes)."""
    r_roi = roi_diameter_mm / 2.0
    step = 2.0
    xs = np.arange(-150.0, 150.0 + 1e-9, step)
    ys = np.arange(-150.0, 80.0 + 1e-9, step)
    gx, gy = np.meshgrid(xs, ys, indexing="xy")
    px, py = gx.ravel(), gy.ravel()
    ok = np.ones(px.shape, bool)
    reach = r_roi + clearance_mm
    for a in np.linspace(0.0, 2.0 * math.pi, 72, endpoint=False):
        ok &= _inside_body(px + reach * math.cos(a), py + reach * math.sin(a),
                           np.full(px.shape, 90.0))
    for (cx, cy, _), d in zip(sphere_centers_mm(), SPHERE_DIAMETERS_MM, strict=True):
        ok &= np.hypot(px - cx, py - cy) >= d / 2 + SPHERE_WALL_MM + reach
    ok &= np.hypot(px, py) >= LUNG_INSERT_DIAMETER_MM / 2 + reach
    cand = np.stack([px[ok], py[ok]], axis=1)
    if len(cand) < n:
        raise InputError(f"only {len(cand)} background ROI positions fit in the phantom for "
                         f"{roi_diameter_mm} mm ROIs; need {n}")
    chosen = [int(np.argmin(cand[:, 1] * 1e6 + np.abs(cand[:, 0])))]  # most anterior, central
    dist = np.hypot(*(cand - cand[chosen[0]]).T)
    while len(chosen) < n:
        k = int(np.argmax(dist))
        chosen.append(k)
        dist = np.minimum(dist, np.hypot(*(cand - cand[k]).T))
    return [(float(cand[k, 0]), float(cand[k, 1])) for k in chosen]


# ============================================================================== weights
def _axes(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o, s, n = image.GetOrigin(), image.GetSpacing(), image.GetSize()
    return tuple(o[i] + s[i] * np.arange(n[i], dtype=np.float64) for i in range(3))


def _sphere_weights(axes, spacing, center, radius, n_sub: int = 4
                    ) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Occupancy of image voxels by a sphere, in its bounding box: (z, y, x) slices, weights."""
    sl = []
    for ax, c, s in zip(axes, center, spacing, strict=True):
        lo = max(int(np.searchsorted(ax, c - radius - s)), 0)
        hi = int(np.searchsorted(ax, c + radius + s, side="right"))
        sl.append(slice(lo, hi))
    sub = [ax[s_] for ax, s_ in zip(axes, sl, strict=True)]
    off = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    z3, y3, x3 = np.meshgrid(sub[2], sub[1], sub[0], indexing="ij")
    acc = np.zeros(z3.shape)
    r2 = radius * radius
    for oz in off:
        for oy in off:
            for ox in off:
                acc += ((x3 + ox * spacing[0] - center[0]) ** 2
                        + (y3 + oy * spacing[1] - center[1]) ** 2
                        + (z3 + oz * spacing[2] - center[2]) ** 2) <= r2
    return (sl[2], sl[1], sl[0]), acc / n_sub ** 3


def _disc_weights(axes, spacing, cx, cy, radius, n_sub: int = 4) -> np.ndarray:
    """In-plane area fractions (y, x) of pixels inside a disc."""
    xs, ys = axes[0], axes[1]
    off = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    y2, x2 = np.meshgrid(ys, xs, indexing="ij")
    acc = np.zeros(y2.shape)
    for oy in off:
        for ox in off:
            acc += (x2 + ox * spacing[0] - cx) ** 2 + (y2 + oy * spacing[1] - cy) ** 2 \
                <= radius * radius
    return acc / n_sub ** 2


def _truth_fields(truth: dict[str, Any] | str | Path) -> dict[str, Any]:
    if not isinstance(truth, dict):
        import json

        p = Path(truth)
        try:
            truth = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{p}: cannot read the IEC truth ({exc})") from None
    try:
        spheres = [(str(s["name"]), float(s["inner_diameter_mm"]),
                    tuple(float(v) for v in s["center_mm"]),
                    float(s["concentration_bq_per_ml"])) for s in truth["spheres"]]
        c_bg = float(truth["background"]["concentration_bq_per_ml"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"IEC truth lacks field {exc} (spheres[].inner_diameter_mm, "
                         "center_mm, concentration_bq_per_ml; background."
                         "concentration_bq_per_ml)") from None
    return {"spheres": spheres, "c_bg": c_bg}


def iec_metrics(image: sitk.Image, truth: dict[str, Any] | str | Path) -> IECMetrics:
    """Recovery coefficients, percent contrast and background variability of an IEC image.

    Parameters
    ----------
    image : SimpleITK.Image
        Reconstructed IEC phantom [Bq/mL] in the phantom frame (identity direction).
    truth : dict or path
        The IEC truth (``IECResult.truth`` or ``truth/truth.json`` of :func:`make_iec`).

    Returns
    -------
    IECMetrics

    Raises
    ------
    InputError
        A rotated image, an image that does not cover the ROI slices, or incomplete truth.
    """
    if not np.allclose(image.GetDirection(), np.eye(3).ravel()):
        raise InputError("IEC metrics need an image with identity direction (the phantom "
                         "frame of make_iec)")
    t = _truth_fields(truth)
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    axes = _axes(image)
    sp = image.GetSpacing()
    z_plane = float(np.mean([c[2] for _, _, c, _ in t["spheres"]]))
    zs = axes[2]
    slice_idx = [int(np.argmin(np.abs(zs - (z_plane + dz)))) for dz in ROI_SLICE_OFFSETS_MM]
    if any(abs(zs[k] - (z_plane + dz)) > sp[2] for k, dz in
           zip(slice_idx, ROI_SLICE_OFFSETS_MM, strict=True)):
        raise InputError(f"image z range {zs[0]:.1f}–{zs[-1]:.1f} mm does not cover the "
                         f"background ROI slices around z = {z_plane:.1f} mm")
    centers = background_roi_centers()
    c_bg_true = t["c_bg"]
    spheres = []
    all_bg = []
    for name, d, c, c_true in t["spheres"]:
        sl, w = _sphere_weights(axes, sp, c, d / 2.0)
        sub = arr[sl]
        wsum = float(w.sum())
        mean = float((w * sub).sum() / wsum) if wsum > 0 else float("nan")
        vmax = float(sub[w > 0].max()) if wsum > 0 else float("nan")
        rois = []
        for cx, cy in centers:
            wd = _disc_weights(axes, sp, cx, cy, d / 2.0)
            a = float(wd.sum())
            for k in slice_idx:
                rois.append(float((wd * arr[k]).sum() / a))
        rois_a = np.asarray(rois)
        c_b = float(rois_a.mean())
        sd = float(rois_a.std(ddof=1))
        all_bg.extend(rois)
        ratio = c_true / c_bg_true
        q_h = ((mean / c_b - 1.0) / (ratio - 1.0) * 100.0) if ratio > 1 else float("nan")
        spheres.append(SphereMetric(
            name=name, diameter_mm=d, true_bq_per_ml=c_true, mean_bq_per_ml=mean,
            max_bq_per_ml=vmax, rc_mean=mean / c_true, rc_max=vmax / c_true,
            contrast_percent=q_h, background_bq_per_ml=c_b,
            background_variability_percent=100.0 * sd / c_b, voi_voxels=wsum))
    wl = _disc_weights(axes, sp, 0.0, 0.0, LUNG_ROI_DIAMETER_MM / 2.0)
    lung = float(np.mean([(wl * arr[k]).sum() / wl.sum() for k in slice_idx]))
    bg_mean = float(np.mean(all_bg))
    return IECMetrics(spheres=tuple(spheres), background_true_bq_per_ml=c_bg_true,
                      background_mean_bq_per_ml=bg_mean,
                      background_recovery=bg_mean / c_bg_true,
                      lung_residual_percent=100.0 * lung / bg_mean,
                      n_background_rois=len(centers) * len(slice_idx),
                      sphere_plane_z_mm=z_plane)
