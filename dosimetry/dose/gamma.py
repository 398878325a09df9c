"""3-D gamma index: compare an evaluated dose map with a reference one.

The gamma index of Low et al. (1998, Med Phys 25:656, doi:10.1118/1.598248) combines a dose
difference criterion ΔD and a distance-to-agreement criterion δ (``dta_mm``). For a reference
voxel at r,

    γ(r) = min over d of sqrt(|d|²/δ² + (D_e(r + d) − D_r(r))²/ΔD²),

and the voxel passes when γ(r) ≤ 1. With global normalisation, as recommended by AAPM TG-218
(Miften et al. 2018, Med Phys 45:e53, doi:10.1002/mp.12810), ΔD = ``dose_criterion`` × the
normalisation dose (by default the maximum of the reference dose in the mask); with local
normalisation ΔD = ``dose_criterion`` × D_r(r). Voxels where the reference dose is below
``threshold`` × the normalisation dose (the low-dose cut) are not evaluated.

Method
    The displacements d lie on a cubic grid of step ``step_fraction`` × δ (in mm, the same along
    every axis) inside the sphere |d| ≤ ``max_gamma`` × δ. The evaluated dose at r + d is
    interpolated trilinearly between voxel centres, with the edge voxels' values continued
    outside the image (as ``scipy.ndimage.map_coordinates(..., order=1, mode='nearest')``).
    Each displacement is one whole-array interpolation (separable: one linear shift per axis)
    over the bounding box of the evaluated voxels plus a margin of ceil(``max_gamma`` × δ /
    spacing) voxels, and a running minimum of γ² is kept. A voxel whose γ² is at most |d|²/δ²
    cannot improve at distance |d| or farther: the loops run from small to large displacements,
    shrink the box to the voxels still undecided, switch to gathering just those voxels when
    they are few, and stop on that bound. The result is the exact minimum over the displacement
    grid (the same as evaluating every displacement at every voxel), not an approximation of it.

Capping
    Displacements beyond ``max_gamma`` × δ alone give γ > ``max_gamma``, so the search stops
    there and every γ above ``max_gamma`` is reported as ``max_gamma``: the result is
    min(γ, ``max_gamma``). This changes no pass/fail decision for ``max_gamma`` ≥ 1.

Discretisation
    The grid search overestimates γ: for a locally linear dose of gradient g, with the
    continuous optimum d* and the nearest grid point d_k, γ² exceeds its true value by
    (1/δ² + g²/ΔD²)·(d_k − d*)² ≤ (1/δ² + g²/ΔD²)·(h/2)², h the step. The error is largest
    where d* falls half-way between grid points (a few % of γ in steep gradients, e.g. +5 % for
    a 0.1 Gy/mm ramp moved 2 mm at 2 %/2 mm of 10 Gy) and only matters for voxels with γ close
    to 1. The default step of about δ/3 follows the common rule that the evaluated dose be
    resolved to δ/3 or finer (Low and Dempsey 2003, Med Phys 30:2455); a smaller
    ``step_fraction`` reduces the error at the cost of (1/``step_fraction``)³ more
    displacements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dosimetry.errors import InputError

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = ["GammaResult", "gamma_images", "gamma_index"]

#: Grids of the two images must agree within this (mm) for :func:`gamma_images`.
GRID_TOLERANCE_MM = 1e-4

_Box = tuple[slice, slice, slice]


@dataclass(frozen=True, eq=False)
class GammaResult:
    """Gamma index of an evaluated dose map against a reference.

    Attributes
    ----------
    gamma : numpy.ndarray
        γ per voxel, (z, y, x) float32; NaN outside the evaluated voxels. Values above
        ``max_gamma`` are reported as ``max_gamma``.
    pass_rate : float
        Fraction (0–1) of the evaluated voxels with γ ≤ 1.
    n_evaluated : int
        Number of evaluated voxels (in the mask and at or above the low-dose threshold).
    dose_criterion : float
        Dose difference criterion as a fraction (0.03 for 3 %).
    dta_mm : float
        Distance-to-agreement criterion (mm).
    normalisation_gy : float
        The dose (Gy) the threshold, and with global normalisation the dose criterion, refer to.
    threshold : float
        Low-dose cut as a fraction of ``normalisation_gy``.
    local : bool
        Whether the dose criterion is local (relative to each reference voxel's dose).
    max_gamma : float
        The cap on γ (and the search radius in units of ``dta_mm``).
    """

    gamma: np.ndarray
    pass_rate: float
    n_evaluated: int
    dose_criterion: float
    dta_mm: float
    normalisation_gy: float
    threshold: float
    local: bool = False
    max_gamma: float = 2.0

    @property
    def criterion(self) -> str:
        """The criteria in words, e.g. ``"3%/3mm global"``."""
        kind = "local" if self.local else "global"
        return f"{self.dose_criterion * 100:g}%/{self.dta_mm:g}mm {kind}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no voxel data)."""
        values = self.gamma[np.isfinite(self.gamma)].astype(np.float64)
        stats: dict[str, float | None] = {
            "gamma_mean": None, "gamma_median": None, "gamma_p95": None, "gamma_max": None,
        }
        if values.size:
            stats = {
                "gamma_mean": float(values.mean()),
                "gamma_median": float(np.median(values)),
                "gamma_p95": float(np.percentile(values, 95.0)),
                "gamma_max": float(values.max()),
            }
        return {
            "criterion": self.criterion,
            "pass_rate": float(self.pass_rate),
            "n_evaluated": int(self.n_evaluated),
            "dose_criterion": float(self.dose_criterion),
            "dta_mm": float(self.dta_mm),
            "normalisation_gy": float(self.normalisation_gy),
            "threshold": float(self.threshold),
            "local": bool(self.local),
            "max_gamma": float(self.max_gamma),
            **stats,
        }


def _positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{name} must be a positive number, got {value!r}")
    return v


def _check_dose(name: str, arr: Any) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 3:
        raise InputError(f"the {name} dose must be a 3-D (z, y, x) array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"the {name} dose must be numeric, got dtype {a.dtype}")
    if a.size == 0:
        raise InputError(f"the {name} dose is empty (shape {a.shape})")
    finite = np.isfinite(a)
    if not finite.all():
        n_bad = int(a.size - np.count_nonzero(finite))
        raise InputError(f"the {name} dose has {n_bad} voxels that are not finite (NaN or inf)")
    return a


def _check_spacing(spacing_xyz_mm: Sequence[float]) -> tuple[float, float, float]:
    """The spacing as (z, y, x) mm, from the (x, y, z) order of SimpleITK."""
    try:
        sp = [float(s) for s in spacing_xyz_mm]
    except (TypeError, ValueError):
        raise InputError(
            f"spacing_xyz_mm must be three positive numbers (x, y, z) in mm, "
            f"got {spacing_xyz_mm!r}"
        ) from None
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputError(
            f"spacing_xyz_mm must be three positive numbers (x, y, z) in mm, got {spacing_xyz_mm!r}"
        )
    return sp[2], sp[1], sp[0]


def _bbox(active: np.ndarray) -> _Box | None:
    """The bounding box of the True voxels of a 3-D mask, or None when there are none."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(active.any(axis=other))
        if idx.size == 0:
            return None
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return box[0], box[1], box[2]


def _sub(outer: _Box, inner: _Box) -> _Box:
    """``inner`` (relative to ``outer``) as a box in ``outer``'s coordinates."""
    return (
        slice(outer[0].start + inner[0].start, outer[0].start + inner[0].stop),
        slice(outer[1].start + inner[1].start, outer[1].start + inner[1].stop),
        slice(outer[2].start + inner[2].start, outer[2].start + inner[2].stop),
    )


def _padded(arr: np.ndarray, box: _Box, pad: Sequence[int], axes: Sequence[int]) -> np.ndarray:
    """``arr`` over ``box``, widened by ``pad`` voxels on both sides along ``axes``.

    ``arr`` must already hold that padding along ``axes`` (its index i + pad is box index i);
    along the other axes it is indexed by the box directly.
    """
    sl = []
    for axis in range(3):
        s = box[axis]
        if axis in axes:
            sl.append(slice(s.start, s.stop + 2 * pad[axis]))
        else:
            sl.append(s)
    return arr[tuple(sl)]


def _lerp(arr: np.ndarray, axis: int, pad: int, v: float) -> np.ndarray:
    """Linear interpolation of ``arr`` at index i + v along ``axis`` (|v| ≤ pad − 1).

    ``arr`` carries ``pad`` voxels of padding on both sides of ``axis``; the result has them
    removed. With no fractional part the result is a view.
    """
    n = arr.shape[axis] - 2 * pad
    k = math.floor(v)
    f = v - k
    start = pad + k
    idx: list[slice] = [slice(None)] * 3
    idx[axis] = slice(start, start + n)
    lo = arr[tuple(idx)]
    if f == 0.0:
        return lo
    idx[axis] = slice(start + 1, start + 1 + n)
    out = arr[tuple(idx)] - lo
    out *= out.dtype.type(f)
    out += lo
    return out


def _ordered_steps(n: int) -> list[int]:
    """0, −1, 1, −2, 2, … ±n: step indices by increasing distance."""
    out = [0]
    for k in range(1, n + 1):
        out += [-k, k]
    return out


#: Above this fraction of undecided voxels in their bounding box, the search along x updates the
#: whole box; below it, only those voxels (gathered, two reads per voxel and displacement).
_DENSE_FRACTION = 0.25


def _x_pass_dense(
    g2: np.ndarray,
    r: np.ndarray,
    w: np.ndarray | Any,
    e_zy: np.ndarray,
    pad: int,
    x_steps: Sequence[tuple[float, float]],
) -> None:
    """Update γ² over the whole box (in place) for x-displacements (voxels, γ² of distance)."""
    for j, (vx, c) in enumerate(x_steps):
        c_g = g2.dtype.type(c)
        if j > 0 and g2.max() <= c_g:
            break  # steps are by increasing distance: no voxel can improve any more
        t = _lerp(e_zy, 2, pad, vx) - r
        t *= t
        t *= w
        t += c_g
        np.minimum(g2, t, out=g2)


def _x_pass_sparse(
    g2: np.ndarray,
    active: np.ndarray,
    r: np.ndarray,
    w: np.ndarray | Any,
    e_zy: np.ndarray,
    pad: int,
    x_steps: Sequence[tuple[float, float]],
) -> None:
    """As :func:`_x_pass_dense`, on the ``active`` voxels only (gathered, then scattered back)."""
    iz, iy, ix = np.nonzero(active)
    e_flat = np.ascontiguousarray(e_zy).ravel()
    nx_p = e_zy.shape[2]
    idx = (iz * e_zy.shape[1] + iy) * nx_p + ix  # of (z, y, x − pad) in e_zy
    g2_a = g2[active]
    r_a = r[active]
    w_a = w if np.ndim(w) == 0 else w[active]
    for j, (vx, c) in enumerate(x_steps):
        c_g = g2.dtype.type(c)
        if j > 0:
            keep = g2_a > c_g
            n_keep = int(np.count_nonzero(keep))
            if n_keep == 0:
                break
            if n_keep < 0.5 * keep.size:  # drop the decided voxels, after saving them
                g2[iz, iy, ix] = g2_a
                iz, iy, ix, idx = iz[keep], iy[keep], ix[keep], idx[keep]
                g2_a, r_a = g2_a[keep], r_a[keep]
                if np.ndim(w_a):
                    w_a = w_a[keep]
        k = math.floor(vx)
        f = vx - k
        lo = e_flat[pad + k:].take(idx)
        if f != 0.0:
            t = e_flat[pad + k + 1:].take(idx)
            t -= lo
            t *= t.dtype.type(f)
            t += lo
        else:
            t = lo
        t -= r_a
        t *= t
        t *= w_a
        t += c_g
        np.minimum(g2_a, t, out=g2_a)
    g2[iz, iy, ix] = g2_a


def _min_gamma2(
    ref: np.ndarray,
    ev: np.ndarray,
    sel: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    *,
    inv_dd2: float | None,
    dose_criterion: float,
    dta_mm: float,
    max_gamma: float,
    step_fraction: float,
    dtype: np.dtype,
) -> np.ndarray:
    """min(γ², max_gamma²) at the selected voxels (1-D, in ``sel``'s C order).

    ``inv_dd2`` is 1/ΔD² for global normalisation, None for local (ΔD = criterion × D_r).
    """
    radius = max_gamma * dta_mm
    step = step_fraction * dta_mm
    n_steps = math.floor(radius / step * (1.0 + 1e-12))
    r2_steps = (radius / step) ** 2 * (1.0 + 1e-12)  # the sphere, in steps²
    margin = [math.ceil(radius / s - 1e-9) for s in spacing_zyx]  # ≥ any |d|/s
    pad = [m + 1 for m in margin]  # one more for the upper neighbour of the interpolation

    box = _bbox(sel)
    assert box is not None  # the caller checked that something is selected
    shape = ref.shape
    # The evaluated dose over the box widened by ``pad``, edge values continued outside.
    src, pad_width = [], []
    for axis in range(3):
        lo, hi = box[axis].start - pad[axis], box[axis].stop + pad[axis]
        src.append(slice(max(lo, 0), min(hi, shape[axis])))
        pad_width.append((max(0, -lo), max(0, hi - shape[axis])))
    ev_p = np.pad(np.asarray(ev[tuple(src)], dtype=dtype), pad_width, mode="edge")

    r = np.asarray(ref[box], dtype=dtype)
    sel_b = sel[box]
    cap2 = dtype.type(max_gamma**2)
    g2 = np.where(sel_b, cap2, dtype.type(0))  # 0 outside the selection: never active
    if inv_dd2 is None:
        with np.errstate(divide="ignore"):
            w = np.where(sel_b, 1.0 / (dose_criterion * r.astype(np.float64)) ** 2, 0.0)
        weight: np.ndarray | Any = w.astype(dtype)
    else:
        weight = dtype.type(inv_dd2)
    inv_dta2 = 1.0 / dta_mm**2
    h2 = step * step * inv_dta2  # (step/δ)²: γ² of one step of displacement

    for kz in _ordered_steps(n_steps):
        c_z = kz * kz
        active = g2 > c_z * h2
        bz = _bbox(active)
        if bz is None:
            break  # no voxel can improve at this distance or farther
        e_z = _lerp(_padded(ev_p, bz, pad, (0, 1, 2)), 0, pad[0], kz * step / spacing_zyx[0])
        # e_z: unpadded along z, padded along y and x, over bz.
        for ky in _ordered_steps(n_steps):
            c_zy = c_z + ky * ky
            if c_zy > r2_steps:
                break
            active_zy = g2[bz] > c_zy * h2
            bzy = _bbox(active_zy)
            if bzy is None:
                break
            e_zy = _lerp(_padded(e_z, bzy, pad, (1, 2)), 1, pad[1], ky * step / spacing_zyx[1])
            # e_zy: unpadded along z and y, padded along x, over bz then bzy.
            box_zy = _sub(bz, bzy)
            g2_v = g2[box_zy]  # a view: updated in place
            w_v = weight if np.ndim(weight) == 0 else weight[box_zy]
            a = active_zy[bzy]
            x_steps = [(kx, c_zy + kx * kx) for kx in _ordered_steps(n_steps)
                       if c_zy + kx * kx <= r2_steps]
            x_steps = [(kx * step / spacing_zyx[2], c * h2) for kx, c in x_steps]
            if np.count_nonzero(a) > _DENSE_FRACTION * a.size:
                _x_pass_dense(g2_v, r[box_zy], w_v, e_zy, pad[2], x_steps)
            else:
                _x_pass_sparse(g2_v, a, r[box_zy], w_v, e_zy, pad[2], x_steps)
    return g2[sel_b]


def gamma_index(
    reference: np.ndarray,
    evaluated: np.ndarray,
    spacing_xyz_mm: Sequence[float],
    *,
    dose_criterion: float = 0.03,
    dta_mm: float = 3.0,
    mask: np.ndarray | None = None,
    threshold: float = 0.10,
    normalisation_gy: float | None = None,
    local: bool = False,
    max_gamma: float = 2.0,
    step_fraction: float = 0.334,
) -> GammaResult:
    """3-D gamma index of ``evaluated`` against ``reference`` (Low et al. 1998).

    Parameters
    ----------
    reference, evaluated : numpy.ndarray
        Dose maps (Gy), (z, y, x), same shape, finite. Computed in float64 when either is
        float64 (or integer), else in float32.
    spacing_xyz_mm : sequence of 3 float
        Voxel size (x, y, z) in mm, in SimpleITK's order (the arrays are (z, y, x)).
    dose_criterion : float
        Dose difference criterion as a fraction (0.03 for 3 %).
    dta_mm : float
        Distance-to-agreement criterion (mm).
    mask : numpy.ndarray of bool, optional
        Voxels to evaluate (same shape); the rest of the evaluated dose is still searched.
    threshold : float
        Low-dose cut, fraction of the normalisation dose: voxels with a reference dose below
        it are not evaluated. 0 ≤ ``threshold`` ≤ 1.
    normalisation_gy : float, optional
        The dose the percentages refer to; default the maximum reference dose in the mask
        (the whole image without one).
    local : bool
        Local normalisation: ΔD = ``dose_criterion`` × the reference voxel's dose (voxels of
        zero reference dose are then not evaluated). Default global (TG-218).
    max_gamma : float
        Search radius in units of ``dta_mm`` and cap on γ: larger values are reported as
        ``max_gamma``.
    step_fraction : float
        Search grid step as a fraction of ``dta_mm`` (0 < ``step_fraction`` ≤ 1).

    Returns
    -------
    GammaResult

    Raises
    ------
    InputError
        On arrays of different shapes or not 3-D, non-finite doses, a bad spacing, non-positive
        criteria, a threshold outside [0, 1], a mask of another shape, a non-positive
        normalisation dose or reference maximum, or no voxel to evaluate.
    """
    ref = _check_dose("reference", reference)
    ev = _check_dose("evaluated", evaluated)
    if ref.shape != ev.shape:
        raise InputError(
            f"the reference and evaluated doses differ in shape: {ref.shape} vs {ev.shape}"
        )
    spacing_zyx = _check_spacing(spacing_xyz_mm)
    crit = _positive("dose_criterion", dose_criterion)
    dta = _positive("dta_mm", dta_mm)
    gmax = _positive("max_gamma", max_gamma)
    step_f = _positive("step_fraction", step_fraction)
    if step_f > 1.0:
        raise InputError(f"step_fraction must be in (0, 1], got {step_fraction!r}")
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"threshold must be a fraction in [0, 1], got {threshold!r}") from None
    if not 0.0 <= thr <= 1.0:
        raise InputError(f"threshold must be a fraction in [0, 1], got {threshold!r}")

    m: np.ndarray | None = None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != ref.shape:
            raise InputError(f"the mask has shape {m.shape}, the doses {ref.shape}")
        if m.dtype != np.bool_:
            if not (np.issubdtype(m.dtype, np.integer) and np.isin(m, (0, 1)).all()):
                raise InputError(f"the mask must be boolean (or 0/1), got dtype {m.dtype}")
            m = m.astype(bool)
        if not m.any():
            raise InputError("the mask is empty: no voxel to evaluate")

    if normalisation_gy is None:
        ref_max = float(ref[m].max() if m is not None else ref.max())
        if not ref_max > 0:
            where = " in the mask" if m is not None else ""
            raise InputError(
                f"the reference dose maximum{where} is {ref_max:g} Gy: nothing to evaluate "
                "(the normalisation dose must be > 0)"
            )
        norm = ref_max
    else:
        norm = _positive("normalisation_gy", normalisation_gy)

    sel = ref >= thr * norm
    if m is not None:
        sel &= m
    if local:
        sel &= ref > 0
    n_eval = int(np.count_nonzero(sel))
    if n_eval == 0:
        raise InputError(
            f"no voxel to evaluate: none has a reference dose ≥ {thr:g} × {norm:g} Gy "
            f"(threshold){' in the mask' if m is not None else ''}"
        )

    dtype = np.dtype(np.result_type(ref.dtype, ev.dtype, np.float32))
    if dtype.itemsize > 8 or not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    g2 = _min_gamma2(
        ref, ev, sel, spacing_zyx,
        inv_dd2=None if local else 1.0 / (crit * norm) ** 2,
        dose_criterion=crit, dta_mm=dta, max_gamma=gmax, step_fraction=step_f, dtype=dtype,
    )
    gamma_sel = np.sqrt(g2.astype(np.float64))
    gamma = np.full(ref.shape, np.nan, dtype=np.float32)
    gamma[sel] = gamma_sel.astype(np.float32)
    pass_rate = float(np.count_nonzero(gamma_sel <= 1.0) / n_eval)
    return GammaResult(
        gamma=gamma,
        pass_rate=pass_rate,
        n_evaluated=n_eval,
        dose_criterion=crit,
        dta_mm=dta,
        normalisation_gy=norm,
        threshold=thr,
        local=bool(local),
        max_gamma=gmax,
    )


def gamma_images(reference: sitk.Image, evaluated: sitk.Image, **kw: Any) -> GammaResult:
    """:func:`gamma_index` on two dose images of the same grid; spacing from the images.

    Parameters
    ----------
    reference, evaluated : SimpleITK.Image
        3-D dose images (Gy) on the same grid (size, spacing, origin, direction).
    **kw
        Passed to :func:`gamma_index`; ``mask`` may also be a SimpleITK image on that grid.

    Raises
    ------
    GeometryError
        When the grids differ (sizes, or spacing, origin or direction by more than 1e-4 mm).
    InputError
        When an argument is not a 3-D image, or as :func:`gamma_index`.
    """
    import SimpleITK as sitk

    from dosimetry.io.images import require_same_grid

    def _require_same_grid(a: sitk.Image, b: sitk.Image, what_a: str, what_b: str) -> None:
        require_same_grid(a, b, f"the {what_a}", f"the {what_b}", tol_mm=GRID_TOLERANCE_MM)

    for name, img in (("reference", reference), ("evaluated", evaluated)):
        if not isinstance(img, sitk.Image) or img.GetDimension() != 3:
            raise InputError(f"the {name} dose must be a 3-D SimpleITK image")
    if "spacing_xyz_mm" in kw:
        raise InputError("gamma_images takes the spacing from the images; do not pass it")
    _require_same_grid(reference, evaluated, "reference dose", "evaluated dose")
    mask = kw.pop("mask", None)
    if isinstance(mask, sitk.Image):
        _require_same_grid(mask, reference, "mask", "reference dose")
        mask = sitk.GetArrayViewFromImage(mask) != 0
    return gamma_index(
        sitk.GetArrayViewFromImage(reference),
        sitk.GetArrayViewFromImage(evaluated),
        reference.GetSpacing(),
        mask=mask,
        **kw,
    )

