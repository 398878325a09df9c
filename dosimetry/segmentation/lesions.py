"""Lesions on SPECT: a threshold / region-growing detector that knows the organs.

Method of :func:`detect_lesions` (all on an isotropic working grid, ``spacing_mm``):

1. **Background.** The SPECT (Bq/mL) is smoothed (Gaussian, ``smoothing_mm``) to tame the voxel
   noise. The body background is the median concentration of the soft tissue
   (:data:`SOFT_TISSUE_HU`; the whole body, CT > −400 HU or SPECT > 0, without a CT) outside
   the organs with physiological uptake, recomputed once without the voxels above three times
   the first estimate (so hot spots do not raise it). Inside an organ with physiological uptake
   (liver, spleen, stomach, heart and marrow blood, salivary glands, thyroid, kidneys,
   bladder; see :data:`~dosimetry.segmentation.names.PHYSIOLOGICAL_UPTAKE`) and around it the
   background is the level the organ is expected to show there, ``c·g(x)``: ``g`` is the organ
   mask blurred by a Gaussian of FWHM ``resolution_mm`` (the SPECT's reconstructed resolution;
   the default 14 mm is the I-131 HEGP value, conservative for Lu-177 at ≈ 11 mm) and ``c``
   the organ's concentration, the median of ``s/g`` where ``g`` is at least half its maximum.
   This models the organ's partial-volume spill-out, and for small organs (salivary glands, a
   thyroid remnant) the loss of their own peak, so neither is taken for a lesion.
2. **Candidates.** Connected regions (26-neighbourhood) where the smoothed concentration exceeds
   ``contrast`` × the body background and ``organ_contrast`` × the expected organ level.
3. **Rejection.** A candidate whose peak lies in, or within ``exclusion_margin_mm`` of, a
   kidney, the urinary bladder or a small organ with uptake (under :data:`SMALL_ORGAN_ML`:
   salivary glands, a thyroid remnant) is physiological and dropped: there a lesion cannot be
   told from the organ on SPECT (the reason is recorded). Around a small organ the margin is
   at least the distance at which the Gaussian tail of its fitted concentration ``c`` falls to
   the candidate threshold, ``σ·√(2 ln(c / (contrast·B)))``.
4. **Region growing.** From each remaining peak (local maximum of the candidates, so that one
   candidate region may hold several lesions), in decreasing order of peak value, the lesion
   is the connected region where the smoothed concentration is at least
   ``B + isocontour·(peak − B)`` with B the local background: a fixed fraction of the peak
   above background, the source-to-background adaptive form of the 40 % isocontour used to
   delineate PET/SPECT lesions larger than about twice the reconstructed resolution (Erdi et al.
   1997, Cancer 80:2505 (unverified)). The region never enters another lesion, another organ
   than the one the peak lies in, or the excretory exclusion zone.
5. **Minimum volume.** Regions smaller than ``min_volume_ml`` are dropped (noise spikes).

The lesion masks are brought onto the target grid by resampling ``concentration / peak``
linearly and thresholding at ``isocontour`` inside the (one voxel dilated) working-grid region,
so the boundary follows the activity at the target resolution rather than working voxels.

Limits: organs with physiological uptake that are not in the organ label map (the built-in CT
model does not segment salivary glands or a thyroid remnant) are indistinguishable from
lesions and will be reported as lesions; lesions in or next to the kidneys and the bladder are
not found; lesions below about twice the SPECT resolution lose contrast by partial volume and
may fall under the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.io.images import require_same_grid
from dosimetry.segmentation.grid import resample_to, target_box, working_grid
from dosimetry.segmentation.labelmap import LabelMap
from dosimetry.segmentation.names import EXCRETORY, PHYSIOLOGICAL_UPTAKE

#: Organs with physiological uptake smaller than this [mL] (salivary glands, a thyroid remnant)
#: are treated like the kidneys and bladder: near them a lesion cannot be told from the organ,
#: because their partial-volume spill-out is not modelled well enough at SPECT resolution.
SMALL_ORGAN_ML = 30.0

#: Rejections of small candidates listed one by one in :attr:`LesionResult.rejected` (the rest
#: are counted).
MAX_REJECTION_NOTES = 20

#: CT numbers [HU] of the soft tissue whose median uptake is the body background (muscle and
#: parenchyma, not fat, lung or bone): water-equivalent soft tissue lies at about 0–80 HU.
SOFT_TISSUE_HU = (-30.0, 150.0)


class LesionMethod(StrEnum):
    """How the segmentation stage finds lesions on the SPECT.

    ``threshold`` (the default): :func:`detect_lesions`. ``model``: the trained lesion U-Net
    (:mod:`~dosimetry.segmentation.lesion_model`), falling back, with a warning, to
    ``threshold`` when its weights are not installed. The threshold detector is the default
    because it uses the organ map to reject physiological uptake: on the benchmark digital
    patients (``bench/bench_segmentation.py``) both find every lesion ≥ 2 cm, but the model
    alone also marks salivary glands, kidneys and spots of marrow (about 5 false positives per
    study, see ``weights/README.md``).
    """

    MODEL = "model"
    THRESHOLD = "threshold"


@dataclass(frozen=True)
class LesionOptions:
    """Parameters of :func:`detect_lesions` (see the module docstring) and the method the
    segmentation stage uses (``method``; ``min_volume_ml`` applies to both methods)."""

    min_volume_ml: float = 1.0
    contrast: float = 4.0
    organ_contrast: float = 3.0
    isocontour: float = 0.4
    exclusion_margin_mm: float = 12.0
    resolution_mm: float = 14.0
    smoothing_mm: float = 3.0
    spacing_mm: float = 4.0
    method: LesionMethod = LesionMethod.THRESHOLD

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", LesionMethod(self.method))
        except ValueError:
            raise InputError(f"lesion method {self.method!r} is not one of "
                             f"{[m.value for m in LesionMethod]}") from None
        checks = {"min_volume_ml": self.min_volume_ml >= 0,
                  "contrast": self.contrast > 1, "organ_contrast": self.organ_contrast > 1,
                  "isocontour": 0 < self.isocontour < 1,
                  "exclusion_margin_mm": self.exclusion_margin_mm >= 0,
                  "resolution_mm": self.resolution_mm > 0,
                  "smoothing_mm": self.smoothing_mm >= 0, "spacing_mm": self.spacing_mm > 0}
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"lesion option {name}={getattr(self, name)!r} is out of range "
                                 "(min volume ≥ 0 mL, contrasts > 1, 0 < isocontour < 1, "
                                 "margins/smoothing ≥ 0 mm, spacing > 0 mm)")


@dataclass(frozen=True)
class Lesion:
    """A detected lesion: label on the result grid, volume [mL], activity figures [Bq/mL]."""

    label: int
    name: str
    volume_ml: float
    peak_bq_per_ml: float
    mean_bq_per_ml: float
    background_bq_per_ml: float
    centre_mm: tuple[float, float, float]
    host: str

    @property
    def contrast(self) -> float:
        """Peak over background."""
        return self.peak_bq_per_ml / self.background_bq_per_ml \
            if self.background_bq_per_ml > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"label": self.label, "name": self.name, "volume_ml": self.volume_ml,
                "peak_bq_per_ml": self.peak_bq_per_ml, "mean_bq_per_ml": self.mean_bq_per_ml,
                "background_bq_per_ml": self.background_bq_per_ml,
                "contrast": self.contrast, "centre_mm": list(self.centre_mm),
                "host": self.host}


@dataclass(frozen=True)
class LesionResult:
    """Lesion labels (uint16, 1…n, on the SPECT's grid), the lesions, and what was dropped."""

    labels: sitk.Image
    lesions: tuple[Lesion, ...]
    method: str
    body_background_bq_per_ml: float
    rejected: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def _organ_masks(organs: LabelMap | None, work: sitk.Image) -> dict[str, np.ndarray]:
    """Organ masks on the working grid (nearest neighbour)."""
    if organs is None:
        return {}
    lab = sitk.Resample(organs.image, work, sitk.Transform(3, sitk.sitkIdentity),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    arr = sitk.GetArrayViewFromImage(lab)
    return {e.name: np.asarray(arr == e.label) for e in organs.table.of_kind("organ")}


def detect_lesions(spect: sitk.Image, organs: LabelMap | None = None,
                   ct: sitk.Image | None = None,
                   options: LesionOptions | None = None) -> LesionResult:
    """Find lesions on a quantitative SPECT (see the module docstring for the method).

    Parameters
    ----------
    spect : SimpleITK.Image
        Activity concentration [Bq/mL]; the result is on its grid.
    organs : LabelMap, optional
        Organs on the same physical space (any grid); used for backgrounds and exclusions.
    ct : SimpleITK.Image, optional
        CT [HU] on ``spect``'s grid, for the body mask.
    options : LesionOptions

    Returns
    -------
    LesionResult
    """
    options = options if options is not None else LesionOptions()
    if ct is not None:
        require_same_grid(spect, ct, "SPECT", "CT")
    notes: list[str] = []
    work = working_grid(spect, options.spacing_mm)
    s_img = resample_to(spect, work)
    if options.smoothing_mm > 0:
        s_img = sitk.SmoothingRecursiveGaussian(s_img, options.smoothing_mm)
    s = sitk.GetArrayFromImage(s_img).astype(np.float64)
    s[~np.isfinite(s)] = 0.0
    if ct is not None:
        hu = sitk.GetArrayFromImage(resample_to(ct, work, default=-1000.0))
        body = hu > -400.0
        soft = (hu > SOFT_TISSUE_HU[0]) & (hu < SOFT_TISSUE_HU[1])
    else:
        body = s > 0
        soft = body
        notes.append("no CT: body taken as the voxels with SPECT > 0")
    masks = _organ_masks(organs, work)
    if organs is None:
        notes.append("no organ label map: no organ backgrounds and no exclusion of kidneys and "
                     "bladder; physiological uptake will be reported as lesions")
    phys = {n: m for n, m in masks.items() if n in PHYSIOLOGICAL_UPTAKE and m.any()}
    excr = {n: m for n, m in masks.items() if n in EXCRETORY and m.any()}
    if organs is not None and not excr:
        notes.append("the organ map has no kidneys or bladder: excretory uptake cannot be "
                     "excluded and may be reported as lesions")
    in_phys = np.zeros(s.shape, dtype=bool)
    for m in phys.values():
        in_phys |= m
    tissue = body & ~in_phys
    for m in excr.values():
        tissue &= ~m
    if np.count_nonzero(tissue & soft) >= 1000:
        tissue &= soft
    else:
        notes.append("fewer than 1000 soft-tissue voxels outside the organs: the background is "
                     "taken over the whole body outside the organs")
    vals = s[tissue]
    if vals.size == 0:
        raise InputError("lesion detection: no body voxel outside the organs on the SPECT grid")
    bg = float(np.median(vals))
    if bg > 0:
        bg = float(np.median(vals[vals < 3.0 * bg]))
    if not bg > 0:
        bg = float(np.mean(vals)) if np.mean(vals) > 0 else 1.0
        notes.append("body background median is zero; the mean was used")
    # expected level of each organ with its spill-out at SPECT resolution: organ median × the
    # organ mask blurred by the point-spread function; the largest over the organs
    # (the smoothing and the working voxel add their variance to the reconstructed resolution)
    sigma_mm = np.sqrt((options.resolution_mm / (2.0 * np.sqrt(2.0 * np.log(2.0)))) ** 2
                       + options.smoothing_mm ** 2 + options.spacing_mm ** 2 / 12.0)
    sigma_vox = sigma_mm / options.spacing_mm
    expected = np.zeros(s.shape)
    organ_bg: dict[str, float] = {}
    for n, m in phys.items():
        g = ndimage.gaussian_filter(m.astype(np.float64), sigma_vox)
        # organ concentration c from s ≈ c·g where the organ dominates (robust: median of s/g);
        # for a small organ, partial volume makes g < 1 even at its centre and c > median(s)
        core = g >= 0.5 * float(g.max())
        c = float(np.median(s[core] / g[core]))
        c = max(c, bg)
        organ_bg[n] = c
        expected = np.maximum(expected, c * g)
    background = np.maximum(bg, expected)
    threshold = np.maximum(options.contrast * bg, options.organ_contrast * expected)
    r_spill = options.exclusion_margin_mm / options.spacing_mm
    exclusion = np.zeros(s.shape, dtype=bool)
    small = {n: m for n, m in phys.items()
             if float(m.sum()) * units.voxel_volume_ml(work.GetSpacing()) < SMALL_ORGAN_ML}
    for m in excr.values():
        exclusion |= _dilate(m, r_spill)
    for n, m in small.items():
        # where the Gaussian tail of the organ's (fitted) concentration stays above the
        # candidate threshold: c·exp(−r²/2σ²) = contrast·bg
        ratio = organ_bg[n] / (options.contrast * bg)
        r_tail = sigma_mm * np.sqrt(2.0 * np.log(ratio)) if ratio > 1 else 0.0
        exclusion |= _dilate(m, max(r_spill, r_tail / options.spacing_mm))
    cand = (s > threshold) & body
    cc, _ = ndimage.label(cand, structure=np.ones((3, 3, 3)))
    v_ml = units.voxel_volume_ml(work.GetSpacing())
    lesion_lab = np.zeros(s.shape, dtype=np.int32)
    visited = np.zeros(s.shape, dtype=bool)
    organ_idx = np.zeros(s.shape, dtype=np.int16)
    phys_names = list(phys)
    for i, n in enumerate(phys_names, start=1):
        organ_idx[phys[n] & (organ_idx == 0)] = i
    rejected: list[str] = []
    n_small = 0
    found: list[tuple[int, float, np.ndarray, tuple[slice, ...]]] = []
    # seeds: local maxima of the candidates, brightest first (a candidate region may hold
    # several lesions; each gets its own seed)
    seeds = np.argwhere(cand & (s >= ndimage.maximum_filter(s, size=3)))
    seeds = seeds[np.argsort(-s[tuple(seeds.T)], kind="stable")]
    boxes = ndimage.find_objects(cc)
    for seed in seeds:
        pk = tuple(int(v) for v in seed)
        if lesion_lab[pk] > 0 or visited[pk]:
            continue  # inside a brighter lesion's region, or already judged
        pv = float(s[pk])
        centre = work.TransformIndexToPhysicalPoint([pk[2], pk[1], pk[0]])
        at = f"peak {pv:.3g} Bq/mL at ({centre[0]:.0f}, {centre[1]:.0f}, {centre[2]:.0f}) mm"
        comp_box = boxes[cc[pk] - 1]
        if exclusion[pk]:
            rejected.append(f"{at}: physiological uptake of "
                            f"{_host(pk, {**excr, **small}) or 'a nearby organ'}")
            visited[comp_box] |= (cc[comp_box] == cc[pk]) & exclusion[comp_box]
            continue
        # source-to-background adaptive threshold: bg + f·(peak − bg)
        level = background[pk] + options.isocontour * (pv - background[pk])
        host = int(organ_idx[pk])

        def allowed(box, host=host):
            # not another lesion, not the exclusion zone, not another organ than the host
            o = organ_idx[box]
            return (~exclusion[box] & (lesion_lab[box] == 0) & body[box]
                    & ((o == 0) | (o == host)))

        region, box = _grow(s, pk, level, allowed, comp_box)
        vol = float(region.sum()) * v_ml
        if vol < options.min_volume_ml:
            n_small += 1
            if n_small <= MAX_REJECTION_NOTES:
                rejected.append(f"{at}: {vol:.2f} mL below the minimum "
                                f"{options.min_volume_ml} mL")
            visited[box] |= region
            continue
        k = len(found) + 1
        lesion_lab[box][region] = k
        found.append((k, level / pv, region, box))
    if n_small > MAX_REJECTION_NOTES:
        rejected.append(f"… and {n_small - MAX_REJECTION_NOTES} more candidates below the "
                        f"minimum {options.min_volume_ml} mL")
    out = np.zeros(tuple(reversed(spect.GetSize())), dtype=np.uint16)
    lesions: list[Lesion] = []
    spect_arr = sitk.GetArrayViewFromImage(spect)
    target_v_ml = units.voxel_volume_ml(spect.GetSpacing())
    for _k, rel_level, region, box in found:
        # work on the region's box plus two voxels
        lo = np.array([b.start for b in box]) - 2
        hi = np.array([b.stop for b in box]) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, np.array(s.shape) - 1)
        big = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
        reg_big = np.zeros(tuple(int(b) - int(a) + 1 for a, b in zip(lo, hi, strict=True)),
                           dtype=bool)
        reg_big[tuple(slice(b.start - int(a), b.stop - int(a)) for b, a in
                      zip(box, lo, strict=True))] = region
        dil = ndimage.binary_dilation(reg_big, np.ones((3, 3, 3)))
        pv = float(s[box][region].max())
        ratio = np.where(dil, s[big] / pv, 0.0).astype(np.float32)
        sub_work = sitk.GetImageFromArray(ratio)
        sub_work.SetSpacing(work.GetSpacing())
        sub_work.SetDirection(work.GetDirection())
        sub_work.SetOrigin(work.TransformIndexToPhysicalPoint([int(lo[2]), int(lo[1]),
                                                               int(lo[0])]))
        tb = target_box(sub_work, np.zeros(3, int), np.array(ratio.shape) - 1, spect)
        if tb is None:
            continue
        sub_t, sl = tb
        r_t = sitk.GetArrayFromImage(sitk.Resample(  # a copy: the image is a temporary
            sub_work, sub_t, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0,
            sitk.sitkFloat32))
        m_sub = (r_t >= rel_level) & (out[sl] == 0)
        if not m_sub.any():
            continue
        label = len(lesions) + 1
        out[sl][m_sub] = label
        idx = np.argwhere(m_sub) + np.array([sl[0].start, sl[1].start, sl[2].start])
        c_idx = idx.mean(axis=0)
        centre = spect.TransformContinuousIndexToPhysicalPoint(
            [float(c_idx[2]), float(c_idx[1]), float(c_idx[0])])
        rel_peak = np.unravel_index(int(np.argmax(np.where(region, s[box], -np.inf))),
                                    region.shape)
        pk = tuple(int(a.start) + int(b) for a, b in zip(box, rel_peak, strict=True))
        host = _host(pk, masks)
        vals = spect_arr[sl][m_sub]
        lesions.append(Lesion(
            label=label, name=f"lesion_{label}", volume_ml=float(m_sub.sum()) * target_v_ml,
            peak_bq_per_ml=pv, mean_bq_per_ml=float(np.mean(vals)),
            background_bq_per_ml=float(background[pk]),
            centre_mm=tuple(float(v) for v in centre), host=host))
    labels = sitk.GetImageFromArray(out)
    labels.CopyInformation(spect)
    return LesionResult(labels=labels, lesions=tuple(lesions), method="threshold",
                        body_background_bq_per_ml=bg, rejected=tuple(rejected),
                        warnings=tuple(notes))


def _dilate(mask: np.ndarray, radius_vox: float) -> np.ndarray:
    """Dilation by a ball of ``radius_vox`` voxels (distance transform of the complement)."""
    if radius_vox <= 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= radius_vox


def _grow(s: np.ndarray, peak: tuple[int, ...], level: float, allowed,
          seed_box: tuple[slice, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Connected region around ``peak`` with ``s ≥ level`` where ``allowed(box)`` holds; the
    search box starts at the candidate's box plus 8 voxels and grows until the region does not
    touch it."""
    margin = 8
    while True:
        box = tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n))
                    for b, n in zip(seed_box, s.shape, strict=True))
        rel = tuple(p - b.start for p, b in zip(peak, box, strict=True))
        grow = (s[box] >= level) & allowed(box)
        grow[rel] = True
        cc, _ = ndimage.label(grow, structure=np.ones((3, 3, 3)))
        region = cc == cc[rel]
        touches = any(
            (region.take(0, axis=a).any() and box[a].start > 0)
            or (region.take(-1, axis=a).any() and box[a].stop < s.shape[a]) for a in range(3))
        whole = all(b.start == 0 and b.stop == n for b, n in zip(box, s.shape, strict=True))
        if not touches or whole:
            return region, box
        margin *= 2


def _host(index, masks: Mapping[str, np.ndarray]) -> str:
    for name, m in masks.items():
        if m[tuple(int(i) for i in index)]:
            return name
    return ""


@dataclass(frozen=True)
class DetectionScore:
    """Detection figures against known lesions.

    A true lesion is found when a detected lesion overlaps it by at least one voxel; a
    detected lesion that overlaps no true lesion is a false positive.
    """

    n_true: int
    n_found: int
    false_positives: int
    missed: tuple[str, ...]

    @property
    def sensitivity(self) -> float:
        """Found / true (1.0 when there is no true lesion)."""
        return self.n_found / self.n_true if self.n_true else 1.0


def score_detection(detected: sitk.Image, truth: np.ndarray,
                    true_lesions: Mapping[int, str], *,
                    counted: set[int] | None = None) -> DetectionScore:
    """Compare detected lesion labels with the true lesion labels (same grid).

    Parameters
    ----------
    detected : SimpleITK.Image
        Detected lesion labels (0 = none).
    truth : (Z, Y, X) int ndarray
        True label map.
    true_lesions : mapping label → name
        The true lesions' labels in ``truth``.
    counted : set of int, optional
        True lesion labels that count for sensitivity (e.g. those ≥ 2 cm); the others may be
        found without counting, and a detection on them is not a false positive.
    """
    det = sitk.GetArrayViewFromImage(detected)
    is_true = np.isin(truth, list(true_lesions))
    counted = set(true_lesions) if counted is None else counted
    found, missed = 0, []
    for lab, name in true_lesions.items():
        if lab not in counted:
            continue
        if np.any(det[truth == lab] > 0):
            found += 1
        else:
            missed.append(name)
    fp = 0
    for d in np.unique(det):
        if d == 0:
            continue
        if not np.any(is_true[det == d]):
            fp += 1
    return DetectionScore(len(counted), found, fp, tuple(missed))
