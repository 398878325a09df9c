"""BED and EQD2 for radiopharmaceutical therapy: the Lea–Catcheside factor for sums of exponentials.

The absorbed-dose rate in a VOI (or voxel) after one administration is written as a sum of
exponentials, t ≥ 0,

.. math:: \\dot D(t) = \\sum_i a_i e^{-λ_i t},\\qquad D = \\sum_i a_i / λ_i ,

with λ_i > 0 and amplitudes of either sign (an uptake phase is a negative-amplitude term, e.g.
a·(e^{−λt} − e^{−(λ+ν)t})). With the linear-quadratic model and mono-exponential repair of
sublethal damage at rate μ = ln 2 / T_rep (Dale 1985, Br J Radiol 58:515,
doi:10.1259/0007-1285-58-690-515; MIRD Pamphlet 20, Wessels et al., J Nucl Med 2008;49:1884),

.. math:: \\mathrm{BED} = D\\left(1 + \\frac{G\\,D}{α/β}\\right),\\qquad
          G = \\frac{2}{D^2}\\int_0^\\infty \\dot D(t)\\int_0^t \\dot D(w)\\,
              e^{-μ(t-w)}\\,dw\\,dt ,

the generalised Lea–Catcheside factor. For a sum of exponentials the double integral is, in
closed form (derived here; checked against numerical double integration in the tests),

.. math:: \\int_0^\\infty \\dot D(t)\\int_0^t \\dot D(w)e^{-μ(t-w)}dw\\,dt
          = \\sum_{i,j} \\frac{a_i a_j}{(λ_i+λ_j)(λ_i+μ)} .

For a mono-exponential dose rate with instantaneous uptake this gives G = λ/(λ+μ) =
T_rep/(T_rep + T_eff) and the familiar BED = D[1 + D/(α/β) · T_rep/(T_rep + T_eff)].
0 < G ≤ 1 for any non-negative dose rate. EQD2 = BED / (1 + 2 Gy/(α/β)).

Cycles. BED adds across cycles: BED_total = Σ_c BED_c. This assumes complete repair between
cycles (intervals of weeks against repair half-times of hours, so the LQ cross-term between
cycles is negligible), no repopulation, and that each cycle's dose is essentially delivered
before the next starts (:func:`dose_fraction_after` checks the last one; with Lu-177 and
T_eff = 50–80 h, < 10⁻⁵ of a cycle's dose remains after 8 weeks).

Kernels here are numpy functions that broadcast over voxel arrays (dose, T_eff, rates). Times
are in s, doses in Gy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dosimetry import units
from dosimetry.errors import InputError
from planning.tissues import TissueParameters

__all__ = [
    "BedResult",
    "DoseRateShape",
    "bed",
    "bed_from_dose_rate",
    "bed_over_cycles",
    "bed_voxelwise",
    "dose_for_bed",
    "dose_fraction_after",
    "eqd2",
    "eqd2_factor",
    "g_factor_exponentials",
    "g_factor_mono",
    "g_factor_mono_uptake",
]

LN2 = math.log(2.0)
FloatArray = NDArray[np.float64]


# ------------------------------------------------------------------------------------ kernels
def _repair_rate(repair_half_time_s: ArrayLike) -> FloatArray:
    t = np.asarray(repair_half_time_s, dtype=float)
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise InputError(f"repair half-time must be finite and > 0 s, got {repair_half_time_s}")
    return LN2 / t


def g_factor_mono(t_eff_s: ArrayLike, repair_half_time_s: ArrayLike) -> FloatArray:
    """G = T_rep / (T_rep + T_eff) for a mono-exponential dose rate with instantaneous uptake.

    Parameters
    ----------
    t_eff_s : array_like
        Effective half-life [s], > 0; any shape (e.g. a voxel array (z, y, x)).
    repair_half_time_s : array_like
        Repair half-time T_rep [s], > 0; broadcast against ``t_eff_s``.

    Returns
    -------
    ndarray
        G, broadcast shape, in (0, 1).

    Notes
    -----
    Dale 1985 (doi:10.1259/0007-1285-58-690-515); MIRD Pamphlet 20 (J Nucl Med 2008;49:1884).
    """
    t_eff = np.asarray(t_eff_s, dtype=float)
    if np.any(~np.isfinite(t_eff)) or np.any(t_eff <= 0):
        raise InputError(f"effective half-life must be finite and > 0 s, got {t_eff_s}")
    t_rep = LN2 / _repair_rate(repair_half_time_s)
    return t_rep / (t_rep + t_eff)


def g_factor_exponentials(amplitudes: ArrayLike, rates_per_s: ArrayLike,
                          repair_half_time_s: ArrayLike) -> FloatArray:
    """G for dose rates that are sums of exponentials, vectorised over leading axes.

    Parameters
    ----------
    amplitudes : array_like, shape (..., m)
        a_i of Ḋ(t) = Σ a_i e^{−λ_i t} (any dose-rate unit; G is scale-free). Negative
        amplitudes describe uptake; the dose rate itself must stay ≥ 0 (not checked here:
        :class:`DoseRateShape` checks it).
    rates_per_s : array_like, shape (..., m)
        λ_i [1/s], > 0.
    repair_half_time_s : array_like
        T_rep [s], broadcast against the leading axes ``...``.

    Returns
    -------
    ndarray, shape (...)
        G; 0 where the total dose Σ a_i/λ_i is 0 (no dose, so BED = 0 whatever G).

    Notes
    -----
    G = 2 Σ_ij a_i a_j / ((λ_i+λ_j)(λ_i+μ)) / (Σ_i a_i/λ_i)², μ = ln 2 / T_rep (module
    docstring; Dale 1985, doi:10.1259/0007-1285-58-690-515).
    """
    a = np.asarray(amplitudes, dtype=float)
    lam = np.asarray(rates_per_s, dtype=float)
    if a.shape != lam.shape or a.ndim == 0 or a.shape[-1] == 0:
        raise InputError(f"amplitudes {a.shape} and rates {lam.shape} must have the same "
                         "non-empty shape (..., m)")
    if np.any(~np.isfinite(lam)) or np.any(lam <= 0):
        raise InputError(f"rates must be finite and > 0 1/s, got {rates_per_s}")
    if np.any(~np.isfinite(a)):
        raise InputError(f"amplitudes must be finite, got {amplitudes}")
    mu = _repair_rate(repair_half_time_s)[..., None, None]
    num = a[..., :, None] * a[..., None, :]
    den = (lam[..., :, None] + lam[..., None, :]) * (lam[..., :, None] + mu)
    double = np.sum(num / den, axis=(-2, -1))
    dose = np.sum(a / lam, axis=-1)
    out = np.zeros(np.broadcast_shapes(double.shape, dose.shape))
    np.divide(2.0 * double, dose * dose, out=out, where=(dose != 0))
    return out


def g_factor_mono_uptake(t_eff_s: ArrayLike, uptake_half_time_s: ArrayLike,
                         repair_half_time_s: ArrayLike) -> FloatArray:
    """G for Ḋ(t) ∝ e^{−λt} − e^{−(λ+ν)t}: clearance λ = ln2/T_eff, uptake rate ν = ln2/T_up.

    Parameters
    ----------
    t_eff_s, uptake_half_time_s, repair_half_time_s : array_like
        Effective (clearance) half-life, uptake half-time and repair half-time [s], > 0;
        broadcast together.

    Returns
    -------
    ndarray
        G (smaller than :func:`g_factor_mono` at the same T_eff: uptake spreads the dose).
    """
    t_eff = np.asarray(t_eff_s, dtype=float)
    t_up = np.asarray(uptake_half_time_s, dtype=float)
    if np.any(~np.isfinite(t_eff)) or np.any(t_eff <= 0):
        raise InputError(f"effective half-life must be finite and > 0 s, got {t_eff_s}")
    if np.any(~np.isfinite(t_up)) or np.any(t_up <= 0):
        raise InputError(f"uptake half-time must be finite and > 0 s, got {uptake_half_time_s}")
    t_eff, t_up = np.broadcast_arrays(t_eff, t_up)
    lam = LN2 / t_eff
    rates = np.stack([lam, lam + LN2 / t_up], axis=-1)
    amps = np.stack([np.ones_like(lam), -np.ones_like(lam)], axis=-1)
    return g_factor_exponentials(amps, rates, np.asarray(repair_half_time_s, dtype=float))


def bed(dose_gy: ArrayLike, g: ArrayLike, alpha_beta_gy: ArrayLike) -> FloatArray:
    """BED = D (1 + G D / (α/β)) [Gy], broadcast over arrays.

    Parameters
    ----------
    dose_gy : array_like
        Absorbed dose of one administration [Gy], ≥ 0.
    g : array_like
        Lea–Catcheside factor of its dose-rate shape (:func:`g_factor_mono`, ...).
    alpha_beta_gy : array_like
        α/β [Gy], > 0.
    """
    d = np.asarray(dose_gy, dtype=float)
    ab = np.asarray(alpha_beta_gy, dtype=float)
    if np.any(ab <= 0) or np.any(~np.isfinite(ab)):
        raise InputError(f"alpha/beta must be finite and > 0 Gy, got {alpha_beta_gy}")
    return d * (1.0 + np.asarray(g, dtype=float) * d / ab)


def dose_for_bed(bed_gy: ArrayLike, g: ArrayLike, alpha_beta_gy: ArrayLike) -> FloatArray:
    """Inverse of :func:`bed`: the dose D ≥ 0 whose BED is ``bed_gy`` (positive quadratic root).

    D = 2·BED / (1 + √(1 + 4 G BED/(α/β))), the cancellation-free form of the root.
    """
    b = np.asarray(bed_gy, dtype=float)
    k = np.asarray(g, dtype=float) / np.asarray(alpha_beta_gy, dtype=float)
    return 2.0 * b / (1.0 + np.sqrt(1.0 + 4.0 * k * b))


def eqd2_factor(alpha_beta_gy: ArrayLike) -> FloatArray:
    """1 + 2 Gy / (α/β): BED = EQD2 × this factor."""
    return 1.0 + 2.0 / np.asarray(alpha_beta_gy, dtype=float)


def eqd2(bed_gy: ArrayLike, alpha_beta_gy: ArrayLike) -> FloatArray:
    """EQD2 = BED / (1 + 2 Gy/(α/β)) [Gy]: the dose in 2-Gy fractions with the same BED."""
    return np.asarray(bed_gy, dtype=float) / eqd2_factor(alpha_beta_gy)


def bed_voxelwise(dose_gy: ArrayLike, tissue: TissueParameters, *,
                  t_eff_s: ArrayLike | None = None,
                  uptake_half_time_s: ArrayLike | None = None,
                  amplitudes: ArrayLike | None = None,
                  rates_per_s: ArrayLike | None = None) -> FloatArray:
    """BED map from a dose map and a voxel-wise dose-rate description.

    Give either ``t_eff_s`` (mono-exponential, optional ``uptake_half_time_s``), or
    ``amplitudes`` and ``rates_per_s`` with a trailing axis of exponential terms.

    Parameters
    ----------
    dose_gy : array_like, shape S
        Absorbed dose per voxel [Gy] (e.g. (z, y, x) from SimpleITK).
    tissue : TissueParameters
        α/β and T_rep applied to every voxel.
    t_eff_s, uptake_half_time_s : array_like, broadcastable to S
        Effective half-life and uptake half-time per voxel [s].
    amplitudes, rates_per_s : array_like, shape S + (m,)
        Per-voxel exponential terms of the dose rate (see :func:`g_factor_exponentials`).

    Returns
    -------
    ndarray, shape S
        BED [Gy].
    """
    t_rep = tissue.repair_half_time_s
    if amplitudes is not None or rates_per_s is not None:
        if amplitudes is None or rates_per_s is None or t_eff_s is not None:
            raise InputError("give amplitudes and rates_per_s together, without t_eff_s")
        g = g_factor_exponentials(amplitudes, rates_per_s, t_rep)
    elif t_eff_s is None:
        raise InputError("give t_eff_s or amplitudes and rates_per_s")
    elif uptake_half_time_s is None:
        g = g_factor_mono(t_eff_s, t_rep)
    else:
        g = g_factor_mono_uptake(t_eff_s, uptake_half_time_s, t_rep)
    return bed(dose_gy, g, tissue.alpha_beta_gy)


def bed_over_cycles(doses_gy: ArrayLike, g_factors: ArrayLike,
                    alpha_beta_gy: float) -> float:
    """Total BED of several cycles [Gy]: Σ_c D_c (1 + G_c D_c/(α/β)).

    Assumes complete repair between cycles and no repopulation (module docstring).
    """
    return float(np.sum(bed(doses_gy, g_factors, alpha_beta_gy)))


# ------------------------------------------------------------------------------------- shape
@dataclass(frozen=True)
class DoseRateShape:
    """Time course of the absorbed-dose rate after one administration: Ḋ(t) = Σ a_i e^{−λ_i t}.

    Only the shape matters for G (amplitudes may be in any unit: Gy/s, Bq, fraction of the
    administered activity). This is planning's own small type so that it does not depend on the
    kinetics module's internals; build it with :meth:`mono`, :meth:`mono_uptake` or
    :meth:`from_exponentials` (the glue point for fitted kinetic models).

    Attributes
    ----------
    amplitudes : tuple of float
        a_i; negative terms describe uptake.
    rates_per_s : tuple of float
        λ_i [1/s], > 0.
    """

    amplitudes: tuple[float, ...]
    rates_per_s: tuple[float, ...]

    def __post_init__(self) -> None:
        a = tuple(float(x) for x in self.amplitudes)
        lam = tuple(float(x) for x in self.rates_per_s)
        object.__setattr__(self, "amplitudes", a)
        object.__setattr__(self, "rates_per_s", lam)
        if len(a) == 0 or len(a) != len(lam):
            raise InputError(f"dose-rate shape needs as many amplitudes as rates (≥ 1), got "
                             f"{len(a)} amplitudes and {len(lam)} rates")
        if not all(math.isfinite(x) for x in a):
            raise InputError(f"dose-rate amplitudes must be finite, got {list(a)}")
        if not all(math.isfinite(x) and x > 0 for x in lam):
            raise InputError(f"dose-rate rates must be finite and > 0 1/s, got {list(lam)}")
        total = sum(x / r for x, r in zip(a, lam, strict=True))
        if not total > 0:
            raise InputError(f"dose-rate shape integrates to {total:.4g} (≤ 0): amplitudes "
                             f"{list(a)}, rates {list(lam)} 1/s")
        # Non-negative dose rate: check on a grid that resolves every term (a sum of m
        # exponentials has at most m − 1 sign changes, so a fine log grid catches them).
        t = np.concatenate([[0.0], np.geomspace(1e-3 / max(lam), 60.0 / min(lam), 400)])
        rate = self.dose_rate(t)
        scale = max(abs(x) for x in a)
        if np.min(rate) < -1e-9 * scale:
            t_bad = float(t[int(np.argmin(rate))])
            raise InputError(f"dose rate Σ a_i e^(−λ_i t) is negative at t = "
                             f"{units.s_to_hours(t_bad):.4g} h (amplitudes {list(a)}, rates "
                             f"{list(lam)} 1/s): not a physical dose-rate shape")

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def mono(cls, t_eff_s: float) -> DoseRateShape:
        """Instantaneous uptake, mono-exponential clearance with effective half-life [s]."""
        if not (math.isfinite(t_eff_s) and t_eff_s > 0):
            raise InputError(f"effective half-life must be finite and > 0 s, got {t_eff_s}")
        return cls((1.0,), (LN2 / t_eff_s,))

    @classmethod
    def mono_uptake(cls, t_eff_s: float, uptake_half_time_s: float) -> DoseRateShape:
        """Ḋ ∝ e^{−λt} − e^{−(λ+ν)t}: clearance half-life T_eff [s], uptake half-time [s]."""
        if not (math.isfinite(uptake_half_time_s) and uptake_half_time_s > 0):
            raise InputError(f"uptake half-time must be finite and > 0 s, "
                             f"got {uptake_half_time_s}")
        lam = cls.mono(t_eff_s).rates_per_s[0]
        return cls((1.0, -1.0), (lam, lam + LN2 / uptake_half_time_s))

    @classmethod
    def from_exponentials(cls, amplitudes: Sequence[float],
                          rates_per_s: Sequence[float]) -> DoseRateShape:
        """From the exponential terms of a fitted time-activity (or dose-rate) model.

        This is the glue point for the kinetics results: a fitted model f(t) = Σ c_i e^{−k_i t}
        (time in s, any activity unit) gives ``DoseRateShape.from_exponentials(c, k)``. With
        local energy deposition (and, for cross-dose, a dose rate proportional to the
        activity), the dose-rate shape equals the activity shape.

        Parameters
        ----------
        amplitudes : sequence of float
            c_i (any unit; negative for uptake terms).
        rates_per_s : sequence of float
            k_i [1/s], > 0 (physical decay included).
        """
        return cls(tuple(amplitudes), tuple(rates_per_s))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DoseRateShape:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls.from_exponentials(data["amplitudes"], data["rates_per_s"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"dose-rate shape needs 'amplitudes' and 'rates_per_s': {exc}") \
                from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (round-trips through :meth:`from_dict`)."""
        return {"amplitudes": list(self.amplitudes), "rates_per_s": list(self.rates_per_s)}

    # -- values ------------------------------------------------------------------------------
    def dose_rate(self, t_s: ArrayLike) -> FloatArray:
        """Ḋ(t) in the amplitudes' unit, t [s]."""
        t = np.asarray(t_s, dtype=float)[..., None]
        return np.sum(np.asarray(self.amplitudes) * np.exp(-np.asarray(self.rates_per_s) * t),
                      axis=-1)

    @property
    def integral(self) -> float:
        """∫₀^∞ Ḋ dt = Σ a_i/λ_i (amplitude unit × s)."""
        return float(sum(a / r for a, r in zip(self.amplitudes, self.rates_per_s, strict=True)))

    def g_factor(self, repair_half_time_s: float) -> float:
        """Lea–Catcheside factor G for mono-exponential repair with half-time T_rep [s]."""
        return float(g_factor_exponentials(self.amplitudes, self.rates_per_s,
                                           repair_half_time_s))

    def fraction_after(self, t_s: float) -> float:
        """Fraction of the total dose delivered after time t [s]."""
        rest = sum(a / r * math.exp(-r * t_s)
                   for a, r in zip(self.amplitudes, self.rates_per_s, strict=True))
        return float(rest / self.integral)


def dose_fraction_after(shape: DoseRateShape, interval_s: float) -> float:
    """Fraction of a cycle's dose still to come when the next cycle starts ``interval_s`` later.

    BED adds across cycles only when this is small (module docstring); planning announces a
    value above 1 %.
    """
    return shape.fraction_after(interval_s)


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class BedResult:
    """BED and EQD2 of one absorbed dose with its dose-rate shape and tissue parameters.

    Attributes
    ----------
    dose_gy, bed_gy, eqd2_gy : float
        Absorbed dose, BED and EQD2 [Gy].
    g_factor : float
        Lea–Catcheside factor used.
    tissue : TissueParameters
        α/β, T_rep and their source.
    shape : DoseRateShape
        Dose-rate shape used.
    """

    dose_gy: float
    bed_gy: float
    eqd2_gy: float
    g_factor: float
    tissue: TissueParameters
    shape: DoseRateShape

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return {"dose_gy": self.dose_gy, "bed_gy": self.bed_gy, "eqd2_gy": self.eqd2_gy,
                "g_factor": self.g_factor,
                "tissue": self.tissue.model_dump(mode="json"),
                "dose_rate_shape": self.shape.to_dict()}


def bed_from_dose_rate(dose_gy: float, shape: DoseRateShape,
                       tissue: TissueParameters) -> BedResult:
    """BED and EQD2 of a dose ``dose_gy`` [Gy] delivered with ``shape`` to ``tissue``.

    Raises
    ------
    InputError
        Negative or non-finite dose.
    """
    if not (math.isfinite(dose_gy) and dose_gy >= 0):
        raise InputError(f"absorbed dose must be finite and ≥ 0 Gy, got {dose_gy}")
    g = shape.g_factor(tissue.repair_half_time_s)
    b = float(bed(dose_gy, g, tissue.alpha_beta_gy))
    return BedResult(dose_gy=float(dose_gy), bed_gy=b,
                     eqd2_gy=float(eqd2(b, tissue.alpha_beta_gy)), g_factor=g,
                     tissue=tissue, shape=shape)
