"""Attenuation map for SPECT: CT (HU) → linear attenuation coefficient μ at the photopeak energy,
on the reconstruction's object grid.

HU → μ with our materials tables, not PyTomography's bilinear curves: HU → mass density and
elemental composition by the Schneider et al. 2000 calibration and composition bins
(:mod:`dosimetry.materials.hu`, Phys Med Biol 45:459, doi:10.1088/0031-9155/45/2/314), then
μ = ρ · (μ/ρ)(E) with the bin's mass attenuation coefficient from xraylib (total with coherent
scattering; :func:`dosimetry.materials.photon.mass_attenuation_cm2_g`). Why ours:

* it is the conversion our Monte Carlo and the GATE bridge use, so reconstruction and dose see
  one patient;
* it is evaluated at the photopeak energy itself, for any nuclide, from the composition;
* PyTomography's ``from_table`` bilinear coefficients depend on a scanner-model/kVp table
  lookup that falls back to "a scanner with similar parameters" without raising a warning
  (it builds ``Warning(...)`` but never issues it) and prints to stdout.

Limitation: the Schneider density calibration is that of one 120-kVp scanner; bone HU depend
on kVp and scanner, so μ in bone may be off by a few per cent (at 208 keV Compton scattering
dominates and μ follows the electron density). Narrow-beam μ (with coherent) is right when
scatter is corrected separately (TEW).

Resampling: the CT is first smoothed with a Gaussian of variance (t² − s²)/12 per axis (t the
SPECT voxel size, s the CT's: the variance a box average over the SPECT voxel adds), then
interpolated linearly at the SPECT voxel centres in patient coordinates (the CT's direction
cosines are honoured). Outside the CT's transaxial field the patient is air (μ = 0); SPECT
slices beyond the CT's axial extent take the μ of the nearest covered slice (the body
continues beyond a CT that stops short of the SPECT field), which is announced.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from dosimetry import units
from dosimetry.errors import GeometryError, InputError
from dosimetry.io.images import physical_bounds
from dosimetry.reconstruction.geometry import ObjectGeometry

__all__ = ["AttenuationFallbackWarning", "MuMap", "mu_map_from_ct", "mu_per_mm_of_hu"]


class AttenuationFallbackWarning(UserWarning):
    """The μ map had to be extrapolated beyond the CT (said in the message)."""


@dataclass(frozen=True, eq=False)
class MuMap:
    """An attenuation map on an object grid and what it took to make it.

    Attributes
    ----------
    image : SimpleITK.Image
        μ [1/mm], float32, on the object grid.
    energy_kev : float
    notes : tuple of str
        Extrapolation beyond the CT, clipped CT numbers.
    """

    image: sitk.Image
    energy_kev: float
    notes: tuple[str, ...] = ()


def mu_per_mm_of_hu(hu: np.ndarray, energy_kev: float) -> np.ndarray:
    """μ [1/mm] at ``energy_kev`` of CT numbers ``hu`` (any shape; clipped to −1000…1600 HU).

    μ = ρ(HU) · (μ/ρ)_bin(HU)(E): Schneider 2000 density and composition bin, xraylib mass
    attenuation with coherent scattering.
    """
    from dosimetry.materials.hu import HU_RANGE, ct_to_materials
    from dosimetry.materials.photon import mass_attenuation_cm2_g

    e = float(energy_kev)
    if not (math.isfinite(e) and 10.0 <= e <= 3000.0):
        raise InputError(f"photon energy {energy_kev!r} keV is outside 10–3000 keV")
    h = np.clip(np.asarray(hu, dtype=np.float32), *HU_RANGE)
    cm = ct_to_materials(h, what="CT for the μ map")
    mu_rho = np.array([float(mass_attenuation_cm2_g(m, units.kev_to_mev(e)))
                       for m in cm.materials])
    mu_cm = cm.density_gcm3.astype(np.float64) * mu_rho[cm.material_index]
    return (mu_cm / units.CM).astype(np.float32)


def smooth_ct_for(ct: sitk.Image, spacing_mm: tuple[float, float, float]) -> sitk.Image:
    """The CT smoothed by the Gaussian that stands for averaging over voxels of ``spacing_mm``
    (variance (t² − s²)/12 per axis); float32."""
    img = sitk.Cast(ct, sitk.sitkFloat32)
    s = np.asarray(ct.GetSpacing(), dtype=np.float64)
    t = np.asarray(spacing_mm, dtype=np.float64)
    sigma = np.sqrt(np.maximum(t ** 2 - s ** 2, 0.0) / 12.0)
    if np.any(sigma > 0.1 * s):
        img = sitk.SmoothingRecursiveGaussian(img, [float(v) for v in sigma])
    return img


def mu_map_from_ct(ct: sitk.Image, energy_kev: float, grid: ObjectGeometry, *,
                   smoothed: sitk.Image | None = None, what: str = "CT") -> MuMap:
    """μ map [1/mm] at ``energy_kev`` on ``grid`` from a CT in HU (see the module notes).

    Parameters
    ----------
    ct : SimpleITK.Image
        CT in HU, any geometry (direction cosines honoured).
    energy_kev : float
        Photopeak energy [keV].
    grid : ObjectGeometry
        The reconstruction grid.
    smoothed : SimpleITK.Image, optional
        ``smooth_ct_for(ct, grid.spacing_mm)`` when already computed (several beds).
    what : str
        Name of the CT for messages.

    Returns
    -------
    MuMap

    Raises
    ------
    GeometryError
        The CT does not overlap the grid.
    """
    if ct.GetDimension() != 3:
        raise InputError(f"{what}: expected a 3D CT, got {ct.GetDimension()}D")
    ref = grid.image(pixel_type=sitk.sitkUInt8)
    lo_ct, hi_ct = physical_bounds(ct)
    lo_g, hi_g = physical_bounds(ref)
    inter = np.clip(np.minimum(hi_ct, hi_g) - np.maximum(lo_ct, lo_g), 0, None)
    if np.prod(inter) <= 0:
        raise GeometryError(
            f"{what} (x {lo_ct[0]:.0f}…{hi_ct[0]:.0f}, y {lo_ct[1]:.0f}…{hi_ct[1]:.0f}, z "
            f"{lo_ct[2]:.0f}…{hi_ct[2]:.0f} mm) does not overlap the SPECT field (x "
            f"{lo_g[0]:.0f}…{hi_g[0]:.0f}, y {lo_g[1]:.0f}…{hi_g[1]:.0f}, z {lo_g[2]:.0f}…"
            f"{hi_g[2]:.0f} mm); are they of the same frame of reference?")
    sm = smoothed if smoothed is not None else smooth_ct_for(ct, grid.spacing_mm)
    hu_img = sitk.Resample(sm, ref, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear,
                           -1000.0, sitk.sitkFloat32)
    hu = sitk.GetArrayFromImage(hu_img)
    notes: list[str] = []
    # slices beyond the CT's axial extent: nearest covered slice (z of slice centres)
    nz = grid.size[2]
    z = np.array([grid.z_of_slice(k) for k in range(nz)])
    covered = (z >= lo_ct[2] - 1e-6) & (z <= hi_ct[2] + 1e-6)
    if not covered.any():
        raise GeometryError(f"{what}: z {lo_ct[2]:.0f}…{hi_ct[2]:.0f} mm covers no slice of the "
                            f"SPECT field z {z[0]:.0f}…{z[-1]:.0f} mm")
    if not covered.all():
        idx = np.nonzero(covered)[0]
        first, last = int(idx[0]), int(idx[-1])
        n_below, n_above = first, nz - 1 - last
        hu[:first] = hu[first]
        hu[last + 1:] = hu[last]
        msg = (f"μ map: the CT covers z {lo_ct[2]:.0f}…{hi_ct[2]:.0f} mm; {n_below + n_above} "
               f"SPECT slice(s) beyond it (z {z[0]:.0f}…{z[-1]:.0f} mm) took the μ of the nearest "
               "covered slice")
        warnings.warn(msg, AttenuationFallbackWarning, stacklevel=2)
        notes.append(msg)
    n_metal = int(np.count_nonzero(hu > 1600.0))
    if n_metal:
        notes.append(f"μ map: {n_metal} voxel(s) above 1600 HU (metal or contrast) were taken "
                     "as the densest bone of the Schneider table")
    mu = mu_per_mm_of_hu(hu, energy_kev)
    return MuMap(grid.image(mu), float(energy_kev), tuple(notes))
