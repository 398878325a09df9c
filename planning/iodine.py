"""I-131 prescriptions in the units the clinical formulas are written in.

* Benign thyroid disease — the Marinelli formula (EANM guideline, Stokkel et al., EJNMMI 2010;
  37:2218, doi:10.1007/s00259-010-1536-8; EANM Dosimetry Committee SOP, Hänscheid et al.,
  EJNMMI 2013;40:1126, doi:10.1007/s00259-013-2387-x (DOI unverified))::

      A [MBq] = k · D [Gy] · m [g] / (RAIU_max [%] · T_eff [d]),   k ≈ 24.7

  k folds together the energy absorbed in the thyroid per I-131 decay and the unit
  conversions. **The value 24.7 is taken as commonly quoted and was not checked against the
  SOP text for this release (unverified; 24.67 and 25 also circulate).** A first-principles
  check (:func:`marinelli_k_from_energy`): k = 100 % / (E · 86400 s/d / ln 2 · 10⁶ Bq/MBq ·
  1.602·10⁻¹³ J/MeV / 10⁻³ kg/g). With the ICRP-107 electron energy of I-131 alone
  (0.19184 MeV/decay, all absorbed, photons escaping) k = 26.1; 24.7 corresponds to
  0.2027 MeV/decay absorbed, i.e. electrons plus ≈ 0.011 MeV of self-absorbed photon energy,
  which is plausible for a thyroid of 10–50 g. Uptake is treated as instantaneous (the formula's
  own approximation).

* Differentiated thyroid cancer — blood (red-marrow surrogate) dose per activity after the
  EANM SOP (Lassmann et al., EJNMMI 2008;35:1405, PMID 18491092; pages unverified)::

      D_blood / A₀ [Gy/GBq] = 108 · τ_blood [h/mL] + 0.0188 / W[kg]^(2/3) · τ_WB [h]

  with τ the residence times (TIA / A₀) of 1 mL of blood and of the whole body. **Both constants
  are unverified here.** Check of the first (β self-dose of blood, :func:`blood_beta_coefficient`):
  1 GBq·h in 1 mL deposits 3.6·10¹² × 0.19184 MeV = 0.1106 J; in 1.0–1.05 g that is
  105–111 Gy, consistent with 108. The limit is 2 Gy to the blood per administration.

* Lung-retention rule (Benua et al., Am J Roentgenol 1962;87:171, citation unverified): with
  diffuse lung metastases the whole-body retention at 48 h must stay ≤ 80 mCi = 2.96 GBq.
  (Benua's 120 mCi rule without lung metastases is not applied by default: unverified.)
"""

from __future__ import annotations

import math

from dosimetry import units
from dosimetry.errors import InputError

__all__ = [
    "BLOOD_BETA_GY_ML_PER_GBQ_H",
    "BLOOD_LIMIT_GY",
    "BLOOD_WB_GAMMA_COEFF",
    "LUNG_RETENTION_LIMIT_GBQ",
    "MARINELLI_K",
    "blood_beta_coefficient",
    "blood_dose_gy_per_gbq",
    "lung_rule_max_activity_gbq",
    "marinelli_activity_mbq",
    "marinelli_dose_gy",
    "marinelli_k_from_energy",
    "max_tolerable_activity_gbq",
]

#: Marinelli constant k [MBq·%·d/(Gy·g)] (EANM SOP; value as commonly quoted, unverified).
MARINELLI_K = 24.7
#: β self-dose coefficient of blood [Gy·mL/(GBq·h)] (Lassmann et al. 2008 SOP; unverified).
BLOOD_BETA_GY_ML_PER_GBQ_H = 108.0
#: Whole-body γ coefficient [Gy·kg^(2/3)/(GBq·h)] (Lassmann et al. 2008 SOP; unverified).
BLOOD_WB_GAMMA_COEFF = 0.0188
#: Blood absorbed-dose limit per administration [Gy] (EANM SOP, Lassmann et al. 2008).
BLOOD_LIMIT_GY = 2.0
#: Whole-body retention at 48 h with diffuse lung metastases [GBq]: 80 mCi (Benua et al. 1962).
LUNG_RETENTION_LIMIT_GBQ = 80.0 * units.MCI / units.GBQ


def _positive(value: float, what: str) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InputError(f"{what} must be finite and > 0, got {value!r}")
    return float(value)


def marinelli_activity_mbq(target_dose_gy: float, mass_g: float, raiu_max_percent: float,
                           t_eff_d: float, k: float = MARINELLI_K) -> float:
    """Activity [MBq] for a target thyroid dose by the Marinelli formula.

    Parameters
    ----------
    target_dose_gy : float
        Intended absorbed dose to the thyroid (or nodule) [Gy].
    mass_g : float
        Target mass [g] (volume in mL with density 1 g/mL in practice).
    raiu_max_percent : float
        Maximum radioiodine uptake [%], in (0, 100].
    t_eff_d : float
        Effective half-life in the target [d].
    k : float
        Marinelli constant [MBq·%·d/(Gy·g)] (:data:`MARINELLI_K`, unverified).

    Returns
    -------
    float
        A = k · D · m / (RAIU · T_eff) [MBq].
    """
    d = _positive(target_dose_gy, "target dose [Gy]")
    m = _positive(mass_g, "thyroid mass [g]")
    u = _positive(raiu_max_percent, "maximum uptake RAIU [%]")
    if u > 100:
        raise InputError(f"maximum uptake RAIU [%] must be ≤ 100, got {raiu_max_percent}")
    t = _positive(t_eff_d, "effective half-life [d]")
    return _positive(k, "Marinelli constant k") * d * m / (u * t)


def marinelli_dose_gy(activity_mbq: float, mass_g: float, raiu_max_percent: float,
                      t_eff_d: float, k: float = MARINELLI_K) -> float:
    """Inverse of :func:`marinelli_activity_mbq`: thyroid dose [Gy] from activity [MBq]."""
    a = _positive(activity_mbq, "activity [MBq]")
    return a / marinelli_activity_mbq(1.0, mass_g, raiu_max_percent, t_eff_d, k)


def marinelli_k_from_energy(absorbed_energy_mev_per_decay: float) -> float:
    """The Marinelli constant implied by an absorbed energy per decay [MeV] (see module notes).

    k = 100 / (E · 86400/ln 2 · 10⁶ · J/MeV / 10⁻³) in MBq·%·d/(Gy·g).
    """
    e = _positive(absorbed_energy_mev_per_decay, "absorbed energy per decay [MeV]")
    # Dose [Gy] per (MBq · fraction · d) in 1 g: decays = 1e6 · (d·86400/ln 2).
    gy = (units.MBQ * units.DAY / math.log(2.0)) * units.mev_to_joule(e) / (1.0 / units.G_PER_KG)
    return 100.0 / gy


def blood_beta_coefficient(electron_energy_mev_per_decay: float,
                           blood_density_g_per_ml: float) -> float:
    """β self-dose of blood per residence time per mL [Gy·mL/(GBq·h)] from first principles."""
    e = _positive(electron_energy_mev_per_decay, "electron energy per decay [MeV]")
    rho = _positive(blood_density_g_per_ml, "blood density [g/mL]")
    decays = units.GBQ * units.HOUR
    return decays * units.mev_to_joule(e) / (rho / units.G_PER_KG)


def blood_dose_gy_per_gbq(tau_blood_h_per_ml: float, tau_wb_h: float,
                          weight_kg: float) -> float:
    """Blood absorbed dose per administered activity [Gy/GBq], EANM SOP (Lassmann et al. 2008).

    Parameters
    ----------
    tau_blood_h_per_ml : float
        Residence time of 1 mL of blood, TIA(1 mL)/A₀ [h] (≥ 0).
    tau_wb_h : float
        Whole-body residence time TIA/A₀ [h] (≥ 0).
    weight_kg : float
        Patient weight [kg].

    Returns
    -------
    float
        108 · τ_blood + 0.0188 / W^(2/3) · τ_WB (constants unverified, module notes).
    """
    for v, what in ((tau_blood_h_per_ml, "blood residence time per mL [h]"),
                    (tau_wb_h, "whole-body residence time [h]")):
        if not (math.isfinite(v) and v >= 0):
            raise InputError(f"{what} must be finite and ≥ 0, got {v!r}")
    w = _positive(weight_kg, "patient weight [kg]")
    return (BLOOD_BETA_GY_ML_PER_GBQ_H * tau_blood_h_per_ml
            + BLOOD_WB_GAMMA_COEFF / w ** (2.0 / 3.0) * tau_wb_h)


def max_tolerable_activity_gbq(blood_gy_per_gbq: float,
                               limit_gy: float = BLOOD_LIMIT_GY) -> float:
    """Maximum tolerable activity [GBq] that keeps the blood dose ≤ ``limit_gy`` (2 Gy)."""
    return _positive(limit_gy, "blood dose limit [Gy]") / _positive(
        blood_gy_per_gbq, "blood dose per activity [Gy/GBq]")


def lung_rule_max_activity_gbq(retention_fraction_48h: float,
                               limit_gbq: float = LUNG_RETENTION_LIMIT_GBQ) -> float:
    """Largest activity [GBq] whose whole-body retention at 48 h stays ≤ ``limit_gbq`` (2.96 GBq).

    Parameters
    ----------
    retention_fraction_48h : float
        Whole-body activity at 48 h / administered activity, in (0, 1].
    """
    r = _positive(retention_fraction_48h, "whole-body retention fraction at 48 h")
    if r > 1:
        raise InputError(f"whole-body retention fraction at 48 h must be ≤ 1, got {r}")
    return _positive(limit_gbq, "retention limit [GBq]") / r
