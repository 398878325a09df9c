"""Validation of dose maps against a reference dose map on the same grid.

Pure comparison: dose images in, a :class:`DoseValidation` out; nothing here knows about work
folders or engines (the study workflow lives in :mod:`planning.workflow.validate`). For every
candidate dose map (one per engine) against the reference:

VOI statistics
    Mean dose and D2/D50/D98 (the dose received by at least 2 %, 50 %, 98 % of the VOI's voxels:
    the 98th, 50th and 2nd percentiles of its voxel doses, as the dose stage reports them) of the
    candidate and of the reference, and their differences in % of the reference. When the
    reference has a statistical σ map (Monte Carlo), the σ of the reference's VOI mean is
    √(Σσᵢ²)/N over the VOI's N voxels — the voxels' statistical errors taken as independent
    (true for the batch estimate of a voxel MC up to the few voxels an electron track or a
    photon crosses; a slight underestimate where photons dominate) — so that a difference can
    be judged against the reference's own noise: ``difference_in_reference_sigma`` is
    (D̄_engine − D̄_ref)/σ(D̄_ref). The label map may lie on a finer grid than the doses (the
    CT's): the doses are then resampled onto it (linear) for the VOI statistics, and σ(D̄_ref)
    = √(Σⱼ (nⱼσⱼ)²)/N with nⱼ of the VOI's N label voxels in dose voxel j (a nearest-voxel
    weighting: linear interpolation averages neighbours, so this slightly overestimates σ).

Voxel dose differences
    D_engine − D_ref in Gy and in % of the normalisation dose (the maximum reference dose in the
    body), with their mean, RMS, 95th percentile and maximum of |ΔD| over the body.

Gamma index
    :func:`dosimetry.dose.gamma.gamma_index` (Low et al. 1998, Med Phys 25:656,
    doi:10.1118/1.598248) at 3 %/3 mm and 2 %/2 mm, global normalisation to the maximum reference
    dose in the body, low-dose threshold 10 % of it, evaluated inside the body (AAPM TG-218,
    Miften et al. 2018, doi:10.1002/mp.12810). A noisy reference lowers the pass rates by itself
    (its maximum is noise-inflated and its voxels scatter): read the pass rates together with the
    reference's relative σ.

DVH
    Cumulative dose-volume histogram per VOI for the reference and every candidate on common dose
    levels (0 … the highest voxel dose of any of them in the VOI).

Bland–Altman
    Over the VOIs, per candidate: the differences of the VOI mean doses in % of the reference
    (the same numbers as the VOI table), their mean (the bias), sample standard deviation and
    95 % limits of agreement bias ± 1.96 SD (Bland & Altman 1986, Lancet 327:307,
    doi:10.1016/S0140-6736(86)90837-8). The plot's abscissa is the mean of the two methods'
    VOI doses, as Bland and Altman prescribe (never the reference alone).

Arrays from SimpleITK are (z, y, x); spacing is (x, y, z) in mm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from dosimetry.dose.gamma import GammaResult, gamma_index
from dosimetry.errors import GeometryError, InputError
from dosimetry.io.images import overlap_fraction, require_same_grid

__all__ = [
    "BODY_MIN_DENSITY_GCM3",
    "GAMMA_CRITERIA",
    "GAMMA_THRESHOLD",
    "SCHEMA_VERSION",
    "BlandAltman",
    "DoseStatistics",
    "DoseValidation",
    "VoiComparison",
    "VoxelDifference",
    "bland_altman",
    "body_mask_from_ct",
    "compare_doses",
    "dose_statistics",
]

#: Version of the :meth:`DoseValidation.to_dict` layout; bump on any incompatible change.
SCHEMA_VERSION = 1
#: Gamma criteria (dose difference as a fraction, distance to agreement in mm), global.
GAMMA_CRITERIA: tuple[tuple[float, float], ...] = ((0.03, 3.0), (0.02, 2.0))
#: Low-dose threshold of the gamma evaluation, fraction of the normalisation dose (TG-218).
GAMMA_THRESHOLD = 0.10
#: Voxels denser than this (g/cm³) are "body" in :func:`body_mask_from_ct`: everything but air
#: (0.0012 g/cm³) and the CT's partial-volume skin of air; lung (0.2–0.4 g/cm³) is inside.
BODY_MIN_DENSITY_GCM3 = 0.1
#: Name under which the reference's DVH is stored next to the candidates'.
REFERENCE_KEY = "reference"
#: Multiplier of the SD for the 95 % limits of agreement (normal quantile, Bland & Altman 1986).
LOA_Z = 1.96

_GRID_TOL_MM = 1e-3


# ----------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class DoseStatistics:
    """Dose statistics of one map in one VOI (Gy).

    Attributes
    ----------
    mean_gy : float
        Mean voxel dose.
    d2_gy, d50_gy, d98_gy : float
        Dose received by at least 2 %, 50 %, 98 % of the voxels (98th, 50th, 2nd percentile,
        linear interpolation between voxels).
    """

    mean_gy: float
    d2_gy: float
    d50_gy: float
    d98_gy: float

    def to_dict(self) -> dict[str, float]:
        """JSON form."""
        return {"mean_gy": self.mean_gy, "d2_gy": self.d2_gy, "d50_gy": self.d50_gy,
                "d98_gy": self.d98_gy}


#: The statistics compared, as (key in differences, attribute of DoseStatistics).
_STATS = (("mean", "mean_gy"), ("d2", "d2_gy"), ("d50", "d50_gy"), ("d98", "d98_gy"))


def dose_statistics(values: np.ndarray) -> DoseStatistics:
    """Mean and D2/D50/D98 of a VOI's voxel doses (1-D array, Gy); NaN for an empty VOI."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        nan = float("nan")
        return DoseStatistics(nan, nan, nan, nan)
    p98, p50, p2 = np.percentile(v, (98.0, 50.0, 2.0))
    return DoseStatistics(float(v.mean()), float(p98), float(p50), float(p2))


def _pct(value: float, ref: float) -> float | None:
    """100·(value − ref)/ref, None where the reference is 0 or either is not finite."""
    if not (math.isfinite(value) and math.isfinite(ref)) or ref == 0:
        return None
    return 100.0 * (value - ref) / ref


def _num(x: float | None) -> float | None:
    """A JSON number: None for None and non-finite values (JSON has no NaN)."""
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True)
class VoiComparison:
    """Reference and candidates in one VOI.

    Attributes
    ----------
    label : int
        Label value in the label map.
    name : str
    n_voxels : int
        VOI voxels (of the label map's grid) inside the dose grid: those compared.
    volume_ml : float
        Their volume.
    reference : DoseStatistics
    reference_mean_sigma_gy : float or None
        Statistical σ (1σ) of the reference's VOI mean dose, √(Σσᵢ²)/N; None without a σ map.
    reference_voxel_relative_sigma_median : float or None
        Median over the VOI's voxels of the reference's σᵢ/Dᵢ (voxels with Dᵢ > 0).
    engines : dict of str to DoseStatistics
        The candidates' statistics, by candidate name.
    dvh_dose_gy : tuple of float
        Common dose levels of the DVHs (Gy), increasing from 0.
    dvh_volume_fraction : dict of str to tuple of float
        Fraction (0–1) of the VOI receiving at least each level, for ``"reference"`` and every
        candidate.
    n_outside : int
        VOI voxels whose centre lies outside the dose grid (left out).
    """

    label: int
    name: str
    n_voxels: int
    volume_ml: float
    reference: DoseStatistics
    reference_mean_sigma_gy: float | None
    reference_voxel_relative_sigma_median: float | None
    engines: dict[str, DoseStatistics]
    dvh_dose_gy: tuple[float, ...] = ()
    dvh_volume_fraction: dict[str, tuple[float, ...]] = field(default_factory=dict)
    n_outside: int = 0

    @property
    def reference_mean_relative_sigma(self) -> float | None:
        """σ of the reference's VOI mean relative to that mean (None without σ or dose)."""
        s, m = self.reference_mean_sigma_gy, self.reference.mean_gy
        if s is None or not m > 0:
            return None
        return s / m

    def difference_pct(self, engine: str) -> dict[str, float | None]:
        """Differences of ``engine`` from the reference in % of the reference: mean, d2, d50,
        d98 (None where the reference statistic is 0)."""
        e = self.engines[engine]
        return {k: _pct(getattr(e, a), getattr(self.reference, a)) for k, a in _STATS}

    def difference_in_reference_sigma(self, engine: str) -> float | None:
        """(D̄_engine − D̄_ref)/σ(D̄_ref); None without a reference σ (or σ = 0)."""
        s = self.reference_mean_sigma_gy
        if s is None or not s > 0:
            return None
        return (self.engines[engine].mean_gy - self.reference.mean_gy) / s

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        ref = {k: _num(v) for k, v in self.reference.to_dict().items()}
        ref.update({
            "mean_sigma_gy": _num(self.reference_mean_sigma_gy),
            "mean_relative_sigma": _num(self.reference_mean_relative_sigma),
            "voxel_relative_sigma_median": _num(self.reference_voxel_relative_sigma_median),
        })
        engines = {}
        for name, st in self.engines.items():
            engines[name] = {
                **{k: _num(v) for k, v in st.to_dict().items()},
                "difference_pct": {k: _num(v) for k, v in self.difference_pct(name).items()},
                "difference_in_reference_sigma": _num(self.difference_in_reference_sigma(name)),
            }
        return {
            "label": int(self.label), "name": self.name, "n_voxels": int(self.n_voxels),
            "n_outside_dose_grid": int(self.n_outside),
            "volume_ml": float(self.volume_ml), "reference": ref, "engines": engines,
            # 6 significant digits (levels) and 1e-6 of the volume (fractions) are far finer
            # than a DVH is read, and keep the record small.
            "dvh": {"dose_gy": [float(f"{x:.6g}") for x in self.dvh_dose_gy],
                    "volume_fraction": {k: [round(x, 6) for x in v]
                                        for k, v in self.dvh_volume_fraction.items()}},
        }


@dataclass(frozen=True)
class VoxelDifference:
    """Voxel dose differences (candidate − reference) over the body.

    Percentages are of the normalisation dose (the maximum reference dose in the body).
    """

    mean_gy: float
    mean_abs_gy: float
    max_abs_gy: float
    mean_pct: float
    rms_pct: float
    p95_abs_pct: float
    max_abs_pct: float

    def to_dict(self) -> dict[str, float]:
        """JSON form."""
        return {k: float(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class BlandAltman:
    """Bland–Altman agreement of VOI mean doses between a candidate and the reference.

    Attributes
    ----------
    vois : tuple of str
        VOIs included (those with a positive reference mean dose).
    differences_pct : tuple of float
        100·(D_engine − D_ref)/D_ref per VOI.
    means_gy : tuple of float
        (D_engine + D_ref)/2 per VOI: the plot's abscissa.
    n : int
    mean_difference_pct : float or None
        The bias: mean of the differences (None without VOIs).
    sd_pct : float or None
        Sample standard deviation of the differences (n − 1; None for n < 2).
    loa_lower_pct, loa_upper_pct : float or None
        95 % limits of agreement, bias ∓ 1.96 SD.
    mean_difference_se_pct : float or None
        Standard error of the bias, SD/√n.

    Notes
    -----
    Bland JM, Altman DG (1986) Statistical methods for assessing agreement between two methods
    of clinical measurement. Lancet 327:307–310, doi:10.1016/S0140-6736(86)90837-8.
    """

    vois: tuple[str, ...]
    differences_pct: tuple[float, ...]
    means_gy: tuple[float, ...]
    n: int
    mean_difference_pct: float | None
    sd_pct: float | None
    loa_lower_pct: float | None
    loa_upper_pct: float | None
    mean_difference_se_pct: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "n": self.n, "mean_difference_pct": _num(self.mean_difference_pct),
            "sd_pct": _num(self.sd_pct), "loa_lower_pct": _num(self.loa_lower_pct),
            "loa_upper_pct": _num(self.loa_upper_pct),
            "mean_difference_se_pct": _num(self.mean_difference_se_pct),
            "loa_z": LOA_Z, "vois": list(self.vois),
            "differences_pct": [float(d) for d in self.differences_pct],
            "means_gy": [float(m) for m in self.means_gy],
        }


def bland_altman(reference_gy: Sequence[float], evaluated_gy: Sequence[float],
                 names: Sequence[str] | None = None) -> BlandAltman:
    """Bland–Altman statistics of relative differences between paired measurements.

    Parameters
    ----------
    reference_gy, evaluated_gy : sequence of float
        Paired values (e.g. VOI mean doses in Gy) of the reference and the evaluated method.
        Pairs whose reference is not > 0, or with a non-finite value, are left out.
    names : sequence of str, optional
        A name per pair (default their indices).

    Returns
    -------
    BlandAltman
        Differences in % of the reference, their mean (bias), sample SD (ddof 1), limits of
        agreement bias ± 1.96 SD and the standard error of the bias (Bland & Altman 1986,
        doi:10.1016/S0140-6736(86)90837-8).

    Raises
    ------
    InputError
        When the sequences differ in length.
    """
    r = np.asarray(reference_gy, dtype=np.float64).ravel()
    e = np.asarray(evaluated_gy, dtype=np.float64).ravel()
    if r.shape != e.shape:
        raise InputError(f"Bland–Altman: {r.size} reference values but {e.size} evaluated ones")
    labels = [str(n) for n in names] if names is not None else [str(i) for i in range(r.size)]
    if len(labels) != r.size:
        raise InputError(f"Bland–Altman: {len(labels)} names for {r.size} pairs")
    keep = np.isfinite(r) & np.isfinite(e) & (r > 0)
    r, e = r[keep], e[keep]
    kept = tuple(n for n, k in zip(labels, keep, strict=True) if k)
    d = 100.0 * (e - r) / r
    n = int(d.size)
    bias = float(d.mean()) if n else None
    sd = float(d.std(ddof=1)) if n >= 2 else None
    return BlandAltman(
        vois=kept, differences_pct=tuple(float(x) for x in d),
        means_gy=tuple(float(x) for x in (e + r) / 2.0), n=n, mean_difference_pct=bias,
        sd_pct=sd,
        loa_lower_pct=None if sd is None or bias is None else bias - LOA_Z * sd,
        loa_upper_pct=None if sd is None or bias is None else bias + LOA_Z * sd,
        mean_difference_se_pct=None if sd is None else sd / math.sqrt(n))


@dataclass(frozen=True, eq=False)
class DoseValidation:
    """Candidates against a reference dose map (see the module docstring).

    Attributes
    ----------
    reference_name : str
        What the reference is (e.g. ``"mc"``, ``"gate"``).
    engines : tuple of str
        Candidate names, in the order given.
    vois : tuple of VoiComparison
    voxel_differences : dict of str to VoxelDifference
    gamma : dict of str to tuple of GammaResult
        Per candidate, one result per criterion of ``gamma_criteria`` (γ maps included).
    bland_altman : dict of str to BlandAltman
    difference_gy : dict of str to SimpleITK.Image
        Candidate − reference (Gy), float32, on the reference grid.
    difference_pct : dict of str to SimpleITK.Image
        The same in % of ``normalisation_gy``.
    normalisation_gy : float
        Maximum reference dose in the body: the gamma and % normalisation.
    body_voxels : int
    body_definition : str
    spacing_mm : tuple of float
        Voxel size (x, y, z).
    size : tuple of int
        Grid size (x, y, z).
    has_reference_sigma : bool
    reference_relative_sigma_evaluated : float or None
        Median σ/D of the reference over the voxels the gamma evaluates (body, dose ≥ the
        low-dose threshold): the noise the voxel comparison sees. None without σ.
    missing_vois : tuple of str
        VOIs named in ``voi_names`` without a voxel on the grid.
    gamma_threshold : float
        Low-dose threshold of the gamma evaluation (fraction of ``normalisation_gy``).
    """

    reference_name: str
    engines: tuple[str, ...]
    vois: tuple[VoiComparison, ...]
    voxel_differences: dict[str, VoxelDifference]
    gamma: dict[str, tuple[GammaResult, ...]]
    bland_altman: dict[str, BlandAltman]
    difference_gy: dict[str, sitk.Image]
    difference_pct: dict[str, sitk.Image]
    normalisation_gy: float
    body_voxels: int
    body_definition: str
    spacing_mm: tuple[float, float, float]
    size: tuple[int, int, int]
    has_reference_sigma: bool
    reference_relative_sigma_evaluated: float | None = None
    missing_vois: tuple[str, ...] = ()
    gamma_threshold: float = GAMMA_THRESHOLD

    def voi(self, name: str) -> VoiComparison:
        """The comparison of the VOI called ``name``; :class:`KeyError` when absent."""
        for v in self.vois:
            if v.name == name:
                return v
        raise KeyError(name)

    def gamma_pass_rates(self, engine: str) -> dict[str, float]:
        """``{"3%/3mm global": 0.98, …}`` for ``engine`` (fractions 0–1)."""
        return {g.criterion: float(g.pass_rate) for g in self.gamma[engine]}

    def reference_voxel_relative_sigma_median(self) -> float | None:
        """Median over the VOIs of their median voxel relative σ of the reference (None
        without σ)."""
        vals = [v.reference_voxel_relative_sigma_median for v in self.vois
                if v.reference_voxel_relative_sigma_median is not None]
        return float(np.median(vals)) if vals else None

    def reference_mean_relative_sigma_median(self) -> float | None:
        """Median over the VOIs of the relative σ of the reference's VOI mean (None without
        σ)."""
        vals = [v.reference_mean_relative_sigma for v in self.vois
                if v.reference_mean_relative_sigma is not None]
        return float(np.median(vals)) if vals else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no voxel data), with ``schema_version``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "reference": self.reference_name,
            "engines": list(self.engines),
            "grid": {"size": [int(s) for s in self.size],
                     "spacing_mm": [float(s) for s in self.spacing_mm]},
            "body": {"definition": self.body_definition, "n_voxels": int(self.body_voxels)},
            "normalisation_gy": float(self.normalisation_gy),
            "reference_noise": {
                "has_sigma": self.has_reference_sigma,
                "voxel_relative_sigma_median_evaluated":
                    _num(self.reference_relative_sigma_evaluated),
                "voxel_relative_sigma_median_in_vois":
                    _num(self.reference_voxel_relative_sigma_median()),
                "voi_mean_relative_sigma_median":
                    _num(self.reference_mean_relative_sigma_median()),
            },
            "methods": {
                "voi_statistics": "mean, D2/D50/D98 = 98th/50th/2nd percentile of voxel doses; "
                                  "differences in % of the reference",
                "reference_mean_sigma": "sqrt(sum sigma_i^2)/N over the VOI voxels "
                                        "(independent voxels)",
                "gamma": "Low et al. 1998, doi:10.1118/1.598248; global, normalised to the "
                         "maximum reference dose in the body; TG-218 doi:10.1002/mp.12810",
                "gamma_threshold": float(self.gamma_threshold),
                "bland_altman": "Bland & Altman 1986, doi:10.1016/S0140-6736(86)90837-8; "
                                "VOI mean-dose differences in % of the reference, limits of "
                                "agreement bias ± 1.96 SD (sample SD)",
            },
            "vois": [v.to_dict() for v in self.vois],
            "missing_vois": list(self.missing_vois),
            "voxel_differences": {k: v.to_dict() for k, v in self.voxel_differences.items()},
            "gamma": {k: [g.to_dict() for g in gs] for k, gs in self.gamma.items()},
            "bland_altman": {k: v.to_dict() for k, v in self.bland_altman.items()},
        }


# ----------------------------------------------------------------------------------- inputs
def body_mask_from_ct(ct: sitk.Image, reference: sitk.Image | None = None,
                      min_density_gcm3: float = BODY_MIN_DENSITY_GCM3) -> sitk.Image:
    """The body as the voxels denser than ``min_density_gcm3``, on ``reference``'s grid.

    Parameters
    ----------
    ct : SimpleITK.Image
        CT (HU); resampled (linear, −1000 HU outside) onto ``reference`` when given.
    reference : SimpleITK.Image, optional
        Grid of the mask (default the CT's).
    min_density_gcm3 : float
        Density threshold (HU → density by the Schneider et al. 2000 calibration of
        :func:`dosimetry.materials.hu.hu_to_density`); default 0.1 g/cm³, which keeps lung.

    Returns
    -------
    SimpleITK.Image
        uint8 mask (1 = body) with ``reference``'s (or the CT's) geometry.
    """
    from dosimetry.materials.hu import hu_to_density

    if not isinstance(ct, sitk.Image) or ct.GetDimension() != 3:
        raise InputError("the CT must be a 3-D SimpleITK image (HU)")
    grid = reference if reference is not None else ct
    on = sitk.Resample(sitk.Cast(ct, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear,
                       -1000.0, sitk.sitkFloat32)
    rho = hu_to_density(sitk.GetArrayViewFromImage(on))
    mask = sitk.GetImageFromArray((np.asarray(rho) > min_density_gcm3).astype(np.uint8))
    mask.CopyInformation(grid)
    return mask


def _check_image(img: Any, what: str) -> np.ndarray:
    if not isinstance(img, sitk.Image) or img.GetDimension() != 3:
        raise InputError(f"the {what} must be a 3-D SimpleITK image")
    arr = sitk.GetArrayViewFromImage(img)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"the {what} must be a scalar image, it has "
                         f"{img.GetNumberOfComponentsPerPixel()} components per voxel")
    return arr


def _dose_array(img: Any, what: str) -> np.ndarray:
    arr = np.asarray(_check_image(img, what), dtype=np.float64)
    if not np.isfinite(arr).all():
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"the {what}: {n_bad} voxels are not finite (NaN or inf)")
    return arr


def _dvh(values: Mapping[str, np.ndarray], n_levels: int
         ) -> tuple[tuple[float, ...], dict[str, tuple[float, ...]]]:
    """Cumulative DVHs of several maps in one VOI on common levels 0 … their highest dose."""
    top = max((float(v.max()) for v in values.values() if v.size), default=0.0)
    levels = np.linspace(0.0, top, n_levels) if top > 0 else np.zeros(1)
    out = {}
    for name, v in values.items():
        s = np.sort(v)
        frac = 1.0 - np.searchsorted(s, levels, side="left") / max(s.size, 1)
        out[name] = tuple(float(x) for x in frac)
    return tuple(float(x) for x in levels), out


# ----------------------------------------------------------------------------------- compare
def compare_doses(
    reference: sitk.Image,
    candidates: Mapping[str, sitk.Image],
    labels: sitk.Image,
    voi_names: Mapping[int, str],
    *,
    reference_sigma: sitk.Image | None = None,
    body_mask: sitk.Image | None = None,
    reference_name: str = "reference",
    gamma_criteria: Sequence[tuple[float, float]] = GAMMA_CRITERIA,
    gamma_threshold: float = GAMMA_THRESHOLD,
    dvh_levels: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> DoseValidation:
    """Compare candidate dose maps with a reference dose map on the same grid.

    Parameters
    ----------
    reference : SimpleITK.Image
        Reference dose (Gy), 3-D.
    candidates : mapping of str to SimpleITK.Image
        Dose maps (Gy) to validate, by name (e.g. engine), each on the reference's grid.
    labels : SimpleITK.Image
        Integer label map (≥ 0), on the doses' grid or on its own grid (e.g. the CT's, finer):
        then the VOI statistics are taken over its voxels with the doses resampled onto them
        (linear), as the dose stage does, so that VOIs smaller than a dose voxel keep their
        shape; VOI voxels whose centre lies outside the dose grid are left out (counted in
        ``n_outside``).
    voi_names : mapping of int to str
        The VOIs to compare: label value → name. A VOI without a voxel is listed in
        ``missing_vois``.
    reference_sigma : SimpleITK.Image, optional
        The reference's statistical standard uncertainty (1σ, Gy) per voxel.
    body_mask : SimpleITK.Image, optional
        Body voxels (non-zero) on the same grid, where voxel differences and gamma are
        evaluated (e.g. :func:`body_mask_from_ct`); default the whole grid.
    reference_name : str
        What the reference is, for the record (``"mc"``, ``"gate"``, …).
    gamma_criteria : sequence of (float, float)
        (dose criterion as a fraction, DTA in mm), global; default 3 %/3 mm and 2 %/2 mm.
    gamma_threshold : float
        Low-dose threshold, fraction of the normalisation dose (default 10 %).
    dvh_levels : int
        Dose levels of each DVH (≥ 2).
    progress : callable, optional
        ``progress(done, total)`` after each gamma evaluation (the slow part).

    Returns
    -------
    DoseValidation

    Raises
    ------
    InputError
        On a non-image or non-finite dose, no candidate, a candidate named ``"reference"``,
        an empty body mask, a reference dose that is not positive in the body, bad criteria.
    GeometryError
        When a candidate, the σ map or the body mask is on another grid than the reference,
        or the label map does not overlap it.
    """
    ref = _dose_array(reference, "reference dose")
    if not candidates:
        raise InputError("no candidate dose map to compare with the reference")
    if REFERENCE_KEY in candidates:
        raise InputError(f"a candidate may not be called {REFERENCE_KEY!r} (that name is the "
                         "reference's)")
    if not isinstance(dvh_levels, int) or dvh_levels < 2:
        raise InputError(f"dvh_levels must be an integer ≥ 2, got {dvh_levels!r}")

    def same_grid(img: sitk.Image, what: str) -> None:
        require_same_grid(img, reference, f"the {what}", "the reference dose",
                          tol_mm=_GRID_TOL_MM)

    cand: dict[str, np.ndarray] = {}
    cand_imgs: dict[str, sitk.Image] = {}
    for name, img in candidates.items():
        arr = _dose_array(img, f"{name} dose")
        same_grid(img, f"{name} dose")
        cand[str(name)] = arr
        cand_imgs[str(name)] = img
    lab = np.asarray(_check_image(labels, "label map"))
    if not (np.issubdtype(lab.dtype, np.integer)
            or (np.isfinite(lab).all() and np.array_equal(lab, np.round(lab)))):
        raise InputError(f"the label map must hold integer labels, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise InputError(f"the label map has negative labels (min {lab.min()})")
    labels_on_dose_grid = _on_same_grid(labels, reference)
    if not labels_on_dose_grid and overlap_fraction(labels, reference) <= 0.0:
        raise GeometryError("the label map does not overlap the reference dose; check both "
                            "images' origins")
    sigma = None
    if reference_sigma is not None:
        sigma = _dose_array(reference_sigma, "reference σ map")
        same_grid(reference_sigma, "reference σ map")
        if sigma.min() < 0:
            raise InputError(f"the reference σ map has negative values (min {sigma.min():.4g} "
                             "Gy); a standard uncertainty is ≥ 0")
    if body_mask is not None:
        body = np.asarray(_check_image(body_mask, "body mask")) != 0
        same_grid(body_mask, "body mask")
        body_definition = "the given body mask"
    else:
        body = np.ones(ref.shape, dtype=bool)
        body_definition = "the whole grid"
    n_body = int(np.count_nonzero(body))
    if n_body == 0:
        raise InputError("the body mask is empty: no voxel to evaluate")
    norm = float(ref[body].max())
    if not norm > 0:
        raise InputError(f"the reference dose maximum in the body is {norm:g} Gy: nothing to "
                         "compare (it must be > 0)")
    criteria = []
    for crit in gamma_criteria:
        try:
            dd, dta = (float(c) for c in crit)
        except (TypeError, ValueError):
            raise InputError(f"gamma criterion {crit!r}: give (dose fraction, DTA mm)") from None
        criteria.append((dd, dta))

    spacing = tuple(float(s) for s in reference.GetSpacing())
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0

    # --- VOIs -----------------------------------------------------------------------------
    from scipy import ndimage

    lab_int = lab if np.issubdtype(lab.dtype, np.integer) else lab.astype(np.int64)
    boxes = ndimage.find_objects(lab_int)
    ref_flat, sigma_flat = ref.ravel(), (None if sigma is None else sigma.ravel())
    maps = {REFERENCE_KEY: (reference, ref)}
    maps.update({k: (cand_imgs[k], v) for k, v in cand.items()})
    vois: list[VoiComparison] = []
    missing: list[str] = []
    for label, name in sorted(voi_names.items()):
        box = boxes[int(label) - 1] if 0 < int(label) <= len(boxes) else None
        if box is None:
            missing.append(str(name))
            continue
        mask = lab_int[box] == int(label)
        # The dose voxel each VOI voxel's centre falls in (−1 outside the dose grid).
        nearest = _nearest_dose_voxel(labels, box, mask, reference)
        inside = nearest >= 0
        n = int(np.count_nonzero(inside))
        n_outside = int(inside.size - n)
        if n == 0:
            missing.append(str(name))
            continue
        if labels_on_dose_grid:
            values = {k: arr.ravel()[nearest] for k, (_, arr) in maps.items()}
        else:
            crop = labels[box[2].start:box[2].stop, box[1].start:box[1].stop,
                          box[0].start:box[0].stop]
            values = {k: sitk.GetArrayFromImage(sitk.Resample(
                img, crop, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat64))[mask][inside]
                for k, (img, _) in maps.items()}
        r_vals = values.pop(REFERENCE_KEY)
        mean_sigma = rel_med = None
        if sigma_flat is not None:
            j = nearest[inside]
            # σ of the VOI mean = √(Σ_j (n_j σ_j)²)/N: dose voxel j holds n_j of the N VOI
            # voxels (1 each on the dose grid); the dose voxels' errors are independent.
            idx, n_j = np.unique(j, return_counts=True)
            mean_sigma = float(np.sqrt(np.sum((n_j * sigma_flat[idx]) ** 2)) / n)
            d_j = ref_flat[j]
            pos = d_j > 0
            if pos.any():
                rel_med = float(np.median(sigma_flat[j][pos] / d_j[pos]))
        levels, fractions = _dvh({REFERENCE_KEY: r_vals, **values}, dvh_levels)
        vois.append(VoiComparison(
            label=int(label), name=str(name), n_voxels=n, volume_ml=n * voxel_ml,
            reference=dose_statistics(r_vals), reference_mean_sigma_gy=mean_sigma,
            reference_voxel_relative_sigma_median=rel_med,
            engines={k: dose_statistics(v) for k, v in values.items()},
            dvh_dose_gy=levels, dvh_volume_fraction=fractions, n_outside=n_outside))

    # --- voxels, gamma, Bland–Altman ------------------------------------------------------------
    voxel: dict[str, VoxelDifference] = {}
    diff_gy: dict[str, sitk.Image] = {}
    diff_pct: dict[str, sitk.Image] = {}
    gammas: dict[str, tuple[GammaResult, ...]] = {}
    ba: dict[str, BlandAltman] = {}
    total = len(cand) * len(criteria)
    done = 0
    for name, ev in cand.items():
        d = ev - ref
        d_body = d[body]
        p_body = 100.0 * d_body / norm
        voxel[name] = VoxelDifference(
            mean_gy=float(d_body.mean()), mean_abs_gy=float(np.abs(d_body).mean()),
            max_abs_gy=float(np.abs(d_body).max()), mean_pct=float(p_body.mean()),
            rms_pct=float(np.sqrt(np.mean(p_body**2))),
            p95_abs_pct=float(np.percentile(np.abs(p_body), 95.0)),
            max_abs_pct=float(np.abs(p_body).max()))
        diff_gy[name] = _image(d, reference)
        diff_pct[name] = _image(100.0 * d / norm, reference)
        results = []
        for dd, dta in criteria:
            results.append(gamma_index(ref, ev, spacing, dose_criterion=dd, dta_mm=dta,
                                       mask=body, threshold=gamma_threshold,
                                       normalisation_gy=norm))
            done += 1
            if progress is not None:
                progress(done, total)
        gammas[name] = tuple(results)
        ba[name] = bland_altman([v.reference.mean_gy for v in vois],
                                [v.engines[name].mean_gy for v in vois],
                                [v.name for v in vois])

    rel_eval = None
    if sigma is not None:
        evaluated = body & (ref >= gamma_threshold * norm) & (ref > 0)
        if evaluated.any():
            rel_eval = float(np.median(sigma[evaluated] / ref[evaluated]))
    size = tuple(int(s) for s in reference.GetSize())
    return DoseValidation(
        reference_name=str(reference_name), engines=tuple(cand), vois=tuple(vois),
        voxel_differences=voxel, gamma=gammas, bland_altman=ba, difference_gy=diff_gy,
        difference_pct=diff_pct, normalisation_gy=norm, body_voxels=n_body,
        body_definition=body_definition, spacing_mm=spacing,  # type: ignore[arg-type]
        size=size, has_reference_sigma=sigma is not None,  # type: ignore[arg-type]
        reference_relative_sigma_evaluated=rel_eval, missing_vois=tuple(missing),
        gamma_threshold=float(gamma_threshold))


def _on_same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    try:
        require_same_grid(a, b, "a", "b", tol_mm=_GRID_TOL_MM)
    except GeometryError:
        return False
    return True


def _nearest_dose_voxel(labels: sitk.Image, box: tuple[slice, ...], mask: np.ndarray,
                        dose: sitk.Image) -> np.ndarray:
    """Flat (z, y, x) index into ``dose`` of the voxel holding each masked label voxel's centre.

    ``mask`` is the VOI inside ``box`` (array slices of the label map); the result follows
    ``mask``'s C order, −1 where the centre lies outside the dose grid.
    """
    kz, ky, kx = np.nonzero(mask)
    ijk = np.stack([kx + box[2].start, ky + box[1].start, kz + box[0].start], axis=1)

    def affine(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
        d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
        return np.asarray(img.GetOrigin(), dtype=np.float64), d @ np.diag(img.GetSpacing())

    o_l, a_l = affine(labels)
    o_d, a_d = affine(dose)
    points = o_l + ijk @ a_l.T
    cont = (points - o_d) @ np.linalg.inv(a_d).T
    idx = np.rint(cont).astype(np.int64)
    nx, ny, nz = dose.GetSize()
    ok = np.all((idx >= 0) & (idx < np.array([nx, ny, nz])), axis=1)
    flat = (idx[:, 2] * ny + idx[:, 1]) * nx + idx[:, 0]
    return np.where(ok, flat, -1)


def _image(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))
    img.CopyInformation(like)
    return img

