"""Single-timepoint (STP) estimates of the time-integrated activity, with their method error.

Two published approximations for a single activity measurement A(t) at time t after injection:

* Hänscheid et al., J Nucl Med 2018;59:75–81 (doi:10.2967/jnumed.117.193706, DOI unverified):
  TIA ≈ 2·A(t)·t/ln 2, independent of the effective half-life. For mono-exponential kinetics
  with effective half-life T (x = ln2·t/T) the ratio approximation/exact is 2x/(ln 2·eˣ): at
  most +6.15 % (x = 1, t = T/ln 2), within ±10 % for t/T ∈ [0.76, 2.44].
* Madsen et al., Med Phys 2018;45:2318–2324 (doi:10.1002/mp.12886, DOI unverified):
  TIA = A(t)·e^(λt)/λ with λ = ln2/T and T a population effective half-life; exact when the
  patient's kinetics is mono-exponential with that T.

Both errors depend on the patient's true T, unknown in STP work; it is modelled as a lognormal
population (mean ± SD as published; lognormal because effective half-lives are skewed,
Hou et al., J Nucl Med, PMC8882881). The method's relative standard uncertainty is
the root-mean-square relative error over that population (bias included), computed with
Gauss–Hermite quadrature, and combined in quadrature with the activity's own relative σ.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from dosimetry import units
from dosimetry.errors import InputError
from dosimetry.kinetics.fit import clean_json

LN2 = math.log(2.0)


class StpMethod(StrEnum):
    """Single-timepoint method."""

    HANSCHEID = "hanscheid"
    MADSEN = "madsen"


@dataclass(frozen=True)
class PopulationHalfLife:
    """A published population effective half-life of one radiopharmaceutical in one organ.

    Attributes
    ----------
    radiopharmaceutical : str
        e.g. ``"Lu-177 DOTATATE"``.
    organ : str
        e.g. ``"kidney"``.
    t_eff_h : float
        Central value [h] (mean or median, see ``note``).
    sigma_h : float
        Population standard deviation [h].
    source : str
        Citation (with DOI where there is one).
    verified : bool
        True when ``t_eff_h`` was checked against the source text.
    sigma_verified : bool
        True when ``sigma_h`` was checked against the source; False marks an assumed spread.
    note : str
        What the numbers are (mean/median, cohort, caveats).
    """

    radiopharmaceutical: str
    organ: str
    t_eff_h: float
    sigma_h: float
    source: str
    verified: bool
    sigma_verified: bool
    note: str = ""

    @property
    def t_eff_s(self) -> float:
        """Central effective half-life [s]."""
        return units.hours_to_s(self.t_eff_h)

    @property
    def sigma_s(self) -> float:
        """Population SD [s]."""
        return units.hours_to_s(self.sigma_h)


_PHYSICS_MD = ("rptdose reference/physics.md, 'Kinetics in practice (Lu-177 DOTATATE)': typical "
               "effective half-lives used for single-time-point work")
_ASSUMED_20 = "spread not published with the value: 20 % of it assumed (unverified)"
_AAPM_PSMA = ("AAPM 2026 annual meeting abstract 'Normal-Organ Effective Half-Lives for "
              "177Lu-PSMA' (20 patients, SPECT/CT at 4, 24, 48, 72 h, mono-exponential fits)")
_ASSUMED_35 = ("median of a skewed distribution; only median and range published, a 35 % "
               "spread assumed (unverified)")

#: Population effective half-lives (Lu-177). Extend with local data where available.
POPULATION_HALF_LIVES: tuple[PopulationHalfLife, ...] = (
    PopulationHalfLife("Lu-177 DOTATATE", "kidney", 50.0, 10.0, _PHYSICS_MD, True, False,
                       _ASSUMED_20),
    PopulationHalfLife("Lu-177 DOTATATE", "liver", 67.0, 13.4, _PHYSICS_MD, True, False,
                       _ASSUMED_20),
    PopulationHalfLife("Lu-177 DOTATATE", "spleen", 67.0, 13.4, _PHYSICS_MD, True, False,
                       _ASSUMED_20),
    PopulationHalfLife("Lu-177 DOTATATE", "tumour", 77.0, 15.4, _PHYSICS_MD, True, False,
                       "NET tumours; " + _ASSUMED_20),
    PopulationHalfLife("Lu-177 PSMA-617", "kidney", 35.5, 12.4, _AAPM_PSMA, True, False,
                       "range 8.5–152 h over 37 kidneys; " + _ASSUMED_35),
    PopulationHalfLife("Lu-177 PSMA-617", "liver", 22.9, 8.0, _AAPM_PSMA, True, False,
                       "range 12.9–63.4 h; " + _ASSUMED_35),
    PopulationHalfLife("Lu-177 PSMA-617", "spleen", 16.8, 5.9, _AAPM_PSMA, True, False,
                       "range 9.3–149.7 h; " + _ASSUMED_35),
    PopulationHalfLife("Lu-177 PSMA-617", "parotid", 42.2, 14.8, _AAPM_PSMA, True, False,
                       "range 18.9–160.8 h; " + _ASSUMED_35),
    PopulationHalfLife("Lu-177 PSMA-617", "bone marrow", 32.0, 11.2, _AAPM_PSMA, True, False,
                       "lumbar vertebrae, range 5.9–160.8 h; " + _ASSUMED_35),
    PopulationHalfLife("Lu-177 PSMA-617", "whole body", 40.5, 9.6,
                       "Kurth et al., EJNMMI Res 2018;8:32, doi:10.1186/s13550-018-0386-4 "
                       "(whole-body dose-rate measurements, 50 patients)", True, True,
                       "mean ± SD, range 21.7–85.7 h"),
)

_ORGAN_ALIASES = {"kidneys": "kidney", "tumor": "tumour", "tumors": "tumour",
                  "tumours": "tumour", "net": "tumour", "nettumour": "tumour",
                  "parotids": "parotid", "parotidgland": "parotid", "redmarrow": "bonemarrow",
                  "marrow": "bonemarrow", "wholebody": "wholebody", "wb": "wholebody"}


def _norm(text: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    return key.replace("177lu", "lu177")


def population_half_life(radiopharmaceutical: str, organ: str) -> PopulationHalfLife:
    """Look up a population effective half-life (case, spaces and hyphens ignored).

    Raises
    ------
    InputError
        Naming the radiopharmaceutical/organ and listing the known ones.
    """
    rp, org = _norm(radiopharmaceutical), _norm(organ)
    org = _ORGAN_ALIASES.get(org, org)
    for entry in POPULATION_HALF_LIVES:
        if _norm(entry.radiopharmaceutical) in (rp, "lu177" + rp) and _norm(entry.organ) == org:
            return entry
    known = ", ".join(f"{e.radiopharmaceutical}/{e.organ}" for e in POPULATION_HALF_LIVES)
    raise InputError(f"no population effective half-life for {radiopharmaceutical!r} in "
                     f"{organ!r}; known: {known}; pass t_eff explicitly")


@dataclass(frozen=True)
class SingleTimepointTia:
    """A single-timepoint TIA with its uncertainty (Bq·s).

    Attributes
    ----------
    method : StpMethod
    tia_bq_s : float
        Estimate.
    sigma_bq_s : float
        Combined standard uncertainty (method and activity terms in quadrature).
    method_relative_sigma : float
        RMS relative error of the method over the T_eff population (bias included).
    method_relative_bias : float
        Mean relative error of the method over the population (estimate/true − 1).
    activity_relative_sigma : float
        Relative σ of the measured activity.
    time_s, activity_bq : float
        The measurement.
    t_eff_s, sigma_t_eff_s : float
        Population effective half-life and its SD [s].
    source : str
        Method reference (and the population's, when one was used).
    warnings : tuple of str
    """

    method: StpMethod
    tia_bq_s: float
    sigma_bq_s: float
    method_relative_sigma: float
    method_relative_bias: float
    activity_relative_sigma: float
    time_s: float
    activity_bq: float
    t_eff_s: float
    sigma_t_eff_s: float
    source: str
    warnings: tuple[str, ...] = ()

    @property
    def relative_sigma(self) -> float:
        """Combined relative standard uncertainty."""
        return self.sigma_bq_s / self.tia_bq_s if self.tia_bq_s else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return clean_json({
            "method": str(self.method), "tia_bq_s": self.tia_bq_s,
            "sigma_bq_s": self.sigma_bq_s, "relative_sigma": self.relative_sigma,
            "method_relative_sigma": self.method_relative_sigma,
            "method_relative_bias": self.method_relative_bias,
            "activity_relative_sigma": self.activity_relative_sigma, "time_s": self.time_s,
            "activity_bq": self.activity_bq, "t_eff_s": self.t_eff_s,
            "sigma_t_eff_s": self.sigma_t_eff_s, "source": self.source,
            "warnings": list(self.warnings),
        })


def hanscheid_ratio(time_s: float | np.ndarray, t_eff_s: float | np.ndarray):
    """Hänscheid approximation / exact TIA for mono-exponential kinetics: 2x/(ln2·eˣ),
    x = ln2·t/T_eff (Hänscheid et al. 2018, doi:10.2967/jnumed.117.193706)."""
    x = LN2 * np.asarray(time_s, dtype=float) / np.asarray(t_eff_s, dtype=float)
    return 2.0 * x / (LN2 * np.exp(x))


def _lognormal_nodes(mean: float, sd: float, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for E[g(T)] with T lognormal of the given mean and SD."""
    if sd <= 0:
        return np.array([mean]), np.array([1.0])
    s2 = math.log1p((sd / mean) ** 2)
    mu = math.log(mean) - 0.5 * s2
    z, w = np.polynomial.hermite_e.hermegauss(n)  # probabilists' Hermite: weight e^(−z²/2)
    return np.exp(mu + math.sqrt(s2) * z), w / w.sum()


def _exact_tia(a: float, t: float, t_eff: np.ndarray) -> np.ndarray:
    lam = LN2 / t_eff
    return a * np.exp(lam * t) / lam


def _check(activity_bq: float, time_s: float, t_eff_s: float, sigma_t_eff_s: float,
           activity_sigma_bq: float) -> None:
    if not (np.isfinite(activity_bq) and activity_bq >= 0):
        raise InputError(f"activity must be ≥ 0 Bq, got {activity_bq}")
    if not (np.isfinite(time_s) and time_s > 0):
        raise InputError(f"measurement time must be > 0 s after injection, got {time_s}")
    if not (np.isfinite(t_eff_s) and t_eff_s > 0):
        raise InputError(f"effective half-life must be > 0 s, got {t_eff_s}")
    if not (np.isfinite(sigma_t_eff_s) and sigma_t_eff_s >= 0):
        raise InputError(f"σ of the effective half-life must be ≥ 0 s, got {sigma_t_eff_s}")
    if not (np.isfinite(activity_sigma_bq) and activity_sigma_bq >= 0):
        raise InputError(f"activity σ must be ≥ 0 Bq, got {activity_sigma_bq}")


def _resolve(t_eff_s: float | None, sigma_t_eff_s: float | None,
             population: PopulationHalfLife | None) -> tuple[float, float, str]:
    if population is not None:
        note = (f"; population T_eff {population.t_eff_h:g} ± {population.sigma_h:g} h "
                f"({population.radiopharmaceutical}, {population.organ}; {population.source}"
                f"{'' if population.sigma_verified else '; SD unverified'})")
        t = population.t_eff_s if t_eff_s is None else t_eff_s
        s = population.sigma_s if sigma_t_eff_s is None else sigma_t_eff_s
        return float(t), float(s), note
    if t_eff_s is None:
        raise InputError("an effective half-life (t_eff_s or population) is needed to state "
                         "the method's error")
    return float(t_eff_s), float(sigma_t_eff_s or 0.0), ""


def hanscheid_tia(activity_bq: float, time_s: float, *, t_eff_s: float | None = None,
                  sigma_t_eff_s: float | None = None,
                  population: PopulationHalfLife | None = None,
                  activity_sigma_bq: float = 0.0) -> SingleTimepointTia:
    """Hänscheid single-timepoint TIA: 2·A(t)·t/ln 2.

    Parameters
    ----------
    activity_bq : float
        Activity at the measurement [Bq].
    time_s : float
        Time of the measurement after injection [s].
    t_eff_s, sigma_t_eff_s : float, optional
        Expected effective half-life and population SD [s]; the estimate does not use them,
        its error does. Either these or ``population``.
    population : PopulationHalfLife, optional
        Published population values (:func:`population_half_life`).
    activity_sigma_bq : float
        σ of the activity [Bq].

    Returns
    -------
    SingleTimepointTia
        With the method's RMS relative error over the population: the ratio
        estimate/exact = 2x/(ln2·eˣ) (see :func:`hanscheid_ratio`) averaged over T_eff.
    """
    t_eff, s_eff, note = _resolve(t_eff_s, sigma_t_eff_s, population)
    _check(activity_bq, time_s, t_eff, s_eff, activity_sigma_bq)
    est = 2.0 * activity_bq * time_s / LN2
    nodes, w = _lognormal_nodes(t_eff, s_eff)
    rel_err = hanscheid_ratio(time_s, nodes) - 1.0
    bias = float(w @ rel_err)
    method_rel = float(math.sqrt(w @ rel_err**2))
    warns = []
    ratio_t = time_s / t_eff
    if not 0.76 <= ratio_t <= 2.44:
        warns.append(f"t/T_eff = {ratio_t:.2f} is outside [0.76, 2.44], where Hänscheid's "
                     "approximation stays within ±10 % (mono-exponential kinetics)")
    return _result(StpMethod.HANSCHEID, est, method_rel, bias, activity_bq, activity_sigma_bq,
                   time_s, t_eff, s_eff,
                   "Hänscheid et al., J Nucl Med 2018;59:75, doi:10.2967/jnumed.117.193706" + note,
                   warns)


def madsen_tia(activity_bq: float, time_s: float, *, t_eff_s: float | None = None,
               sigma_t_eff_s: float | None = None, population: PopulationHalfLife | None = None,
               activity_sigma_bq: float = 0.0) -> SingleTimepointTia:
    """Madsen single-timepoint TIA: A(t)·e^(λt)/λ, λ = ln2/T_eff (population T_eff).

    Parameters
    ----------
    activity_bq, time_s : float
        Measurement [Bq] at [s] after injection.
    t_eff_s, sigma_t_eff_s : float, optional
        Population effective half-life and SD [s] (or ``population``).
    population : PopulationHalfLife, optional
    activity_sigma_bq : float
        σ of the activity [Bq].

    Returns
    -------
    SingleTimepointTia
        Exact for mono-exponential kinetics with T = T_eff; the method error is the RMS of
        TIA(T_eff)/TIA(T) − 1 over the lognormal population of T. Its first-order sensitivity
        d ln TIA/d ln T = 1 − ln2·t/T vanishes at t = T/ln 2 (Madsen's optimal time).
    """
    t_eff, s_eff, note = _resolve(t_eff_s, sigma_t_eff_s, population)
    _check(activity_bq, time_s, t_eff, s_eff, activity_sigma_bq)
    est = float(_exact_tia(activity_bq, time_s, np.array([t_eff]))[0])
    nodes, w = _lognormal_nodes(t_eff, s_eff)
    with np.errstate(over="ignore"):
        truth = _exact_tia(1.0, time_s, nodes)
    rel_err = _exact_tia(1.0, time_s, np.array([t_eff]))[0] / truth - 1.0
    bias = float(w @ rel_err)
    method_rel = float(math.sqrt(w @ rel_err**2))
    warns = []
    if LN2 * time_s / t_eff > 3.0:
        warns.append(f"measurement at {time_s / t_eff:.1f} × T_eff: the back-extrapolation "
                     f"factor e^(λt) = {math.exp(LN2 * time_s / t_eff):.0f} amplifies any error")
    return _result(StpMethod.MADSEN, est, method_rel, bias, activity_bq, activity_sigma_bq,
                   time_s, t_eff, s_eff,
                   "Madsen et al., Med Phys 2018;45:2318, doi:10.1002/mp.12886" + note, warns)


def _result(method, est, method_rel, bias, a, a_sigma, t, t_eff, s_eff, source, warns):
    a_rel = a_sigma / a if a > 0 else 0.0
    rel = math.sqrt(method_rel**2 + a_rel**2)
    return SingleTimepointTia(method, float(est), float(rel * est), method_rel, bias, a_rel,
                              float(t), float(a), t_eff, s_eff, source, tuple(warns))


def single_timepoint_tia(method: StpMethod | str, activity_bq: float, time_s: float,
                         **kwargs: Any) -> SingleTimepointTia:
    """Dispatch to :func:`hanscheid_tia` or :func:`madsen_tia` by ``method``."""
    m = StpMethod(method)
    fn = hanscheid_tia if m is StpMethod.HANSCHEID else madsen_tia
    return fn(activity_bq, time_s, **kwargs)
