"""Kinetics of the digital patients: presets with literature-based parameters, per-patient
variability, and closed-form time-activity curves.

Model
-----
Every curve is a sum of exponentials of the *biological* fraction of the administered activity
A₀, ``R(t) = Σ cⱼ·exp(−kⱼ t)``; the activity is ``A(t) = A₀·R(t)·exp(−λ t)`` with λ the
physical decay constant, so the time-integrated activity is exactly
``Ã = A₀·Σ cⱼ / (kⱼ + λ)`` (:class:`ExpSum`).

* An organ *k* with specific uptake takes a fraction ``a_k`` from a whole-body pool with rate
  ``ku_k`` and clears it with one or two biological components:
  ``R_k(t) = a_k·[Σᵢ wᵢ e^(−kbᵢ t) − e^(−ku t)]`` (``Σ wᵢ = 1``, every ``kbᵢ < ku``, so
  ``R_k ≥ 0`` and ``R_k(0) = 0``).
* The pool (blood, extracellular fluid, non-specific tissue) holds what is not yet in an organ
  and what is not yet excreted: ``P(t) = (1 − Σ a_k)·g(t) + Σ a_k e^(−ku_k t)`` with
  ``g(t) = Σⱼ Wⱼ e^(−κⱼ t)``, ``Σ Wⱼ = 1``.
* Whole body ``WB = Σ R_k + P = Σ a_k Σ wᵢ e^(−kbᵢ t) + (1 − Σ a)·g(t) ≤ 1`` for every t:
  activity is conserved by construction (what leaves the body is excreted), provided
  ``Σ a_k ≤ 1`` — enforced (organ fractions are scaled down together, and the scale recorded,
  when the drawn fractions would exceed :data:`MAX_SPECIFIC_FRACTION`).
* Blood holds a fixed share φⱼ of each pool component:
  ``B(t) = (1 − Σ a)·Σⱼ φⱼ Wⱼ e^(−κⱼ t) ≤ P(t)``. The heart (blood pool) and the red-marrow
  region take ``B × m/M_blood`` and ``RMBLR × B × m/M_blood``; every other tissue voxel shares
  what remains of the pool per gram, weighted by the tissue's ``pool_factor``. See
  :func:`label_curves`.

Inter-patient variability (:class:`Variability`): uptake fractions log-normal σ = 0.25,
uptake and washout half-lives log-normal σ = 0.20, pool half-lives σ = 0.15, the pool's fast
weight ± 0.05 (normal, clipped), lesion concentrations σ = 0.5, administered activity
± 2 % (normal; rounded to whole MBq). Log-normal rather than normal spread follows the
observation that effective half-lives across patients are log-normally distributed
(Hou et al., J Nucl Med 2022;63:1222, PMC8882881 — page read, DOI not checked).

Sources and how the numbers were obtained
-----------------------------------------
The organ fractions were chosen so that the electron-only absorbed dose per activity
(``S = E_e/m``, see ``shared/reference/physics.md``) with the listed half-lives falls inside
the published ranges quoted in each preset's ``references``; they are *plausible synthetic
values*, not fits to a cohort. Everything not checked against the original paper is marked
"(unverified)".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from dosimetry import units
from dosimetry.errors import InputError
from phantoms.anatomy import LesionSite

_LN2 = math.log(2.0)

#: Largest total fraction of A₀ that specific-uptake compartments may take (the rest stays in
#: the pool at least initially); drawn fractions above it are scaled down together.
MAX_SPECIFIC_FRACTION = 0.9


def _rate(half_life_h: float) -> float:
    """Rate constant [1/s] of a half-life in hours."""
    return _LN2 / units.hours_to_s(half_life_h)


# ============================================================================== sums of exps
@dataclass(frozen=True)
class ExpSum:
    """``R(t) = Σ cⱼ exp(−kⱼ t)``: a biological fraction of A₀ (t in s, rates in 1/s).

    Coefficients may be negative (uptake terms); callers check positivity where it matters.
    """

    coefficients: tuple[float, ...] = ()
    rates_per_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.coefficients) != len(self.rates_per_s):
            raise ValueError("ExpSum: coefficients and rates differ in length")
        if any(k < 0 or not math.isfinite(k) for k in self.rates_per_s):
            raise ValueError(f"ExpSum: rates must be finite and ≥ 0, got {self.rates_per_s}")

    @staticmethod
    def of(terms: Mapping[float, float] | list[tuple[float, float]]) -> ExpSum:
        """From (coefficient, rate) pairs, merging equal rates and dropping zero terms."""
        acc: dict[float, float] = {}
        items = terms.items() if isinstance(terms, Mapping) else terms
        for c, k in items:
            acc[float(k)] = acc.get(float(k), 0.0) + float(c)
        keys = sorted(k for k, c in acc.items() if c != 0.0)
        return ExpSum(tuple(acc[k] for k in keys), tuple(keys))

    def terms(self) -> list[tuple[float, float]]:
        """(coefficient, rate) pairs."""
        return list(zip(self.coefficients, self.rates_per_s, strict=True))

    def __add__(self, other: ExpSum) -> ExpSum:
        return ExpSum.of(self.terms() + other.terms())

    def __sub__(self, other: ExpSum) -> ExpSum:
        return self + other.scaled(-1.0)

    def scaled(self, factor: float) -> ExpSum:
        """``factor × R``."""
        return ExpSum(tuple(c * factor for c in self.coefficients), self.rates_per_s)

    def biological(self, t_s) -> np.ndarray | float:
        """``R(t)`` (no physical decay)."""
        t = np.asarray(t_s, dtype=float)
        out = np.zeros_like(t)
        for c, k in self.terms():
            out = out + c * np.exp(-k * t)
        return out if out.ndim else float(out)

    def fraction(self, t_s, decay_constant_per_s: float) -> np.ndarray | float:
        """``R(t)·exp(−λt)``: fraction of A₀ present at ``t_s`` [s]."""
        t = np.asarray(t_s, dtype=float)
        out = np.asarray(self.biological(t)) * np.exp(-decay_constant_per_s * t)
        return out if out.ndim else float(out)

    def integral_s(self, decay_constant_per_s: float) -> float:
        """``∫₀^∞ R(t)·exp(−λt) dt = Σ cⱼ/(kⱼ + λ)`` [s] (time-integrated fraction of A₀)."""
        return math.fsum(c / (k + decay_constant_per_s) for c, k in self.terms())

    def to_dict(self) -> dict:
        """JSON form: coefficients, rates [1/h] and half-lives [h] (None for rate 0)."""
        return {
            "coefficients": list(self.coefficients),
            "rates_per_h": [k * units.HOUR for k in self.rates_per_s],
            "half_lives_h": [(_LN2 / k / units.HOUR) if k > 0 else None
                             for k in self.rates_per_s],
        }


# ============================================================================== parameters
@dataclass(frozen=True)
class OrganModel:
    """Specific uptake of one organ (or lesions, with ``fraction`` per mL of lesion).

    ``fraction``: fraction of A₀ taken up (per mL for lesions); ``uptake_half_life_h``;
    ``washout``: ((weight, biological half-life [h]), …) with weights summing to 1.
    """

    fraction: float
    uptake_half_life_h: float
    washout: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.fraction >= 0:
            raise InputError(f"organ uptake fraction {self.fraction} must be ≥ 0")
        w = sum(x for x, _ in self.washout)
        if not self.washout or abs(w - 1.0) > 1e-9:
            raise InputError(f"washout weights {self.washout} must sum to 1")

    def curve(self) -> ExpSum:
        """``R(t) = a·[Σ wᵢ e^(−kbᵢ t) − e^(−ku t)]``."""
        terms = [(self.fraction * w, _rate(t)) for w, t in self.washout]
        terms.append((-self.fraction, _rate(self.uptake_half_life_h)))
        return ExpSum.of(terms)

    def pool_share(self) -> ExpSum:
        """What is still in the pool on its way to this organ: ``a·e^(−ku t)``."""
        return ExpSum.of([(self.fraction, _rate(self.uptake_half_life_h))])

    def to_dict(self) -> dict:
        return {"fraction": self.fraction, "uptake_half_life_h": self.uptake_half_life_h,
                "washout": [{"weight": w, "biological_half_life_h": t} for w, t in self.washout]}


@dataclass(frozen=True)
class PoolComponent:
    """One component of the whole-body pool: weight, biological half-life [h], blood share."""

    weight: float
    half_life_h: float
    blood_share: float


@dataclass(frozen=True)
class Variability:
    """Log-normal σ of the inter-patient spread (see module docstring)."""

    fraction_sd: float = 0.25
    half_life_sd: float = 0.20
    pool_half_life_sd: float = 0.15
    pool_weight_sd: float = 0.05
    lesion_sd: float = 0.5
    activity_sd: float = 0.02


class Preset(StrEnum):
    """Kinetics presets (the CLI's ``--preset``)."""

    LU177_DOTATATE = "lu177-dotatate"
    LU177_PSMA = "lu177-psma"
    I131_DTC = "i131-dtc"


@dataclass(frozen=True)
class KineticsPreset:
    """A radiopharmaceutical's population kinetics and what the phantom needs for it."""

    preset: Preset
    nuclide: str
    radiopharmaceutical: str
    administered_activity_mbq: float
    organs: tuple[tuple[str, OrganModel], ...]
    lesion: OrganModel  # fraction = fraction of A₀ per mL of lesion
    pool: tuple[PoolComponent, ...]
    rmblr: float  # red-marrow-to-blood concentration ratio
    lesion_sites: tuple[LesionSite, ...]
    requires_head_neck: bool = False
    thyroid_remnant: bool = False
    references: tuple[str, ...] = ()
    notes: str = ""
    variability: Variability = field(default_factory=Variability)


# ------------------------------------------------------------------------------- presets
def _om(a: float, tu: float, *washout: tuple[float, float]) -> OrganModel:
    return OrganModel(a, tu, tuple(washout))


LU177_DOTATATE = KineticsPreset(
    preset=Preset.LU177_DOTATATE, nuclide="Lu-177", radiopharmaceutical="DOTATATE",
    administered_activity_mbq=7400.0,
    organs=(
        ("kidney_left", _om(0.014, 0.8, (0.3, 8.0), (0.7, 85.0))),
        ("kidney_right", _om(0.014, 0.8, (0.3, 8.0), (0.7, 85.0))),
        ("liver", _om(0.045, 1.5, (1.0, 130.0))),
        ("spleen", _om(0.015, 2.0, (1.0, 140.0))),
        ("urinary_bladder", _om(0.08, 0.7, (1.0, 3.0))),
    ),
    lesion=_om(4e-4, 3.0, (1.0, 150.0)),
    pool=(PoolComponent(0.55, 3.0, 0.5), PoolComponent(0.45, 60.0, 0.05)),
    rmblr=1.0,
    lesion_sites=(LesionSite.LIVER, LesionSite.LYMPH_NODE, LesionSite.BONE),
    references=(
        "Kidney 0.38 ± 0.19 Gy/GBq from 4/24/96–120 h SPECT/CT: EJNMMI Phys 2018;5:35, "
        "doi:10.1186/s40658-018-0232-9 (abstract read)",
        "Kidney 0.43 ± 0.13 Gy/GBq, liver, spleen, red marrow; SPECT sensitivity 5.67 cps/MBq: "
        "EJNMMI Res 2018, doi:10.1186/s13550-018-0459-4 (abstract read)",
        "Kidney median 0.47 Gy/GBq, SPECT/CT at 1, 4, 7 d: Staanum et al., EJNMMI Phys "
        "2021;8:78, doi:10.1186/s40658-021-00422-2 (abstract read)",
        "Effective half-lives kidney ≈ 50 h, liver/spleen ≈ 67 h, NET ≈ 77 h: "
        "shared/reference/physics.md (used for single-time-point work)",
        "Red-marrow-to-blood ratio 1 for 177Lu-DOTATATE: Forrer et al., EJNMMI 2009;36:1138 "
        "(unverified)",
        "Pool (blood/ECF) components and bladder kinetics: synthetic (unverified)",
    ),
)

LU177_PSMA = KineticsPreset(
    preset=Preset.LU177_PSMA, nuclide="Lu-177", radiopharmaceutical="PSMA-617",
    administered_activity_mbq=7400.0,
    organs=(
        ("kidney_left", _om(0.025, 0.5, (0.4, 6.0), (0.6, 60.0))),
        ("kidney_right", _om(0.025, 0.5, (0.4, 6.0), (0.6, 60.0))),
        ("parotid_gland_left", _om(0.004, 2.0, (1.0, 45.0))),
        ("parotid_gland_right", _om(0.004, 2.0, (1.0, 45.0))),
        ("submandibular_gland_left", _om(0.0018, 2.0, (1.0, 45.0))),
        ("submandibular_gland_right", _om(0.0018, 2.0, (1.0, 45.0))),
        ("liver", _om(0.025, 1.0, (1.0, 100.0))),
        ("spleen", _om(0.004, 1.0, (1.0, 80.0))),
        ("urinary_bladder", _om(0.12, 0.7, (1.0, 2.5))),
    ),
    lesion=_om(6e-4, 4.0, (1.0, 200.0)),
    pool=(PoolComponent(0.50, 1.0, 0.6), PoolComponent(0.20, 10.8, 0.4),
          PoolComponent(0.30, 80.0, 0.02)),
    rmblr=1.0,
    lesion_sites=(LesionSite.BONE, LesionSite.LYMPH_NODE, LesionSite.LIVER),
    references=(
        "Parotid 1.90 ± 1.19, kidney 0.82 ± 0.25, marrow 0.030 Gy/GBq; blood half-lives "
        "0.16 h (distribution) and 10.8 h (elimination); 56.5 % excreted at 24 h: "
        "Mol Imaging Radionucl Ther, PMC5472088 (abstract read; DOI not checked)",
        "Salivary 0.72, kidney 0.53 mGy/MBq: Hohberg et al., Mol Imaging Biol 2016;18:437, "
        "doi:10.1007/s11307-016-0942-0 (abstract read)",
        "Kidney 0.81 ± 0.32 Gy/GBq: J Nucl Med 2019;60:1579 (abstract read)",
        "Delker et al., EJNMMI 2016;43:42, doi:10.1007/s00259-015-3174-7 (unverified)",
        "Lesion uptake and retention, bladder kinetics, RMBLR = 1: synthetic (unverified)",
    ),
)

I131_DTC = KineticsPreset(
    preset=Preset.I131_DTC, nuclide="I-131", radiopharmaceutical="Sodium iodide",
    administered_activity_mbq=3700.0,
    organs=(
        ("thyroid_gland", _om(0.02, 8.0, (1.0, 80.0))),
        ("stomach", _om(0.02, 1.0, (1.0, 12.0))),
        ("parotid_gland_left", _om(0.002, 1.0, (1.0, 14.0))),
        ("parotid_gland_right", _om(0.002, 1.0, (1.0, 14.0))),
        ("submandibular_gland_left", _om(0.001, 1.0, (1.0, 14.0))),
        ("submandibular_gland_right", _om(0.001, 1.0, (1.0, 14.0))),
        ("urinary_bladder", _om(0.12, 1.0, (1.0, 3.0))),
    ),
    lesion=_om(1e-4, 10.0, (1.0, 120.0)),
    pool=(PoolComponent(0.85, 11.0, 0.3), PoolComponent(0.15, 40.0, 0.2)),
    rmblr=1.0,
    lesion_sites=(LesionSite.LYMPH_NODE, LesionSite.LUNG, LesionSite.BONE),
    requires_head_neck=True,
    thyroid_remnant=True,
    references=(
        "EANM blood-dose SOP (blood and whole-body curves, 2 Gy blood limit): Lassmann et al., "
        "EJNMMI 2008;35:1405, doi:10.1007/s00259-008-0761-x (unverified)",
        "Remnant uptake and blood/whole-body half-lives after rhTSH or withdrawal: Hänscheid "
        "et al., J Nucl Med 2006;47:648 (unverified)",
        "Stomach and salivary uptake of iodide, remnant and metastasis uptake: synthetic "
        "(unverified)",
    ),
    notes="Thyroid remnant after thyroidectomy (label thyroid_gland); metastases as lesions.",
)

PRESETS: dict[Preset, KineticsPreset] = {
    p.preset: p for p in (LU177_DOTATATE, LU177_PSMA, I131_DTC)
}


def get_preset(name: str | Preset) -> KineticsPreset:
    """The preset called ``name`` (``lu177-dotatate``, ``lu177-psma``, ``i131-dtc``)."""
    try:
        return PRESETS[Preset(name)]
    except ValueError:
        raise InputError(f"unknown kinetics preset {name!r}; choose one of "
                         f"{', '.join(p.value for p in Preset)}") from None


# ============================================================================== drawing
@dataclass(frozen=True)
class DrawnKinetics:
    """One patient's kinetics (fractions of A₀, half-lives in h)."""

    preset: Preset
    nuclide: str
    radiopharmaceutical: str
    administered_activity_mbq: float
    organs: tuple[tuple[str, OrganModel], ...]  # organs and lesions (lesion fraction = total)
    pool: tuple[PoolComponent, ...]
    rmblr: float
    specific_scale: float  # factor applied to all specific fractions (1 = none)
    notes: tuple[str, ...] = ()

    @property
    def specific_total(self) -> float:
        """Σ a_k over organs and lesions."""
        return math.fsum(m.fraction for _, m in self.organs)

    def organ(self, name: str) -> OrganModel:
        for n, m in self.organs:
            if n == name:
                return m
        raise KeyError(name)

    def pool_curve(self) -> ExpSum:
        """``P(t)``: whole-body pool (fraction of A₀)."""
        rest = 1.0 - self.specific_total
        terms = [(rest * c.weight, _rate(c.half_life_h)) for c in self.pool]
        out = ExpSum.of(terms)
        for _, m in self.organs:
            out = out + m.pool_share()
        return out

    def blood_curve(self) -> ExpSum:
        """``B(t)``: total blood (fraction of A₀)."""
        rest = 1.0 - self.specific_total
        return ExpSum.of([(rest * c.weight * c.blood_share, _rate(c.half_life_h))
                          for c in self.pool])

    def whole_body_curve(self) -> ExpSum:
        """``WB(t) = Σ R_k + P``."""
        out = self.pool_curve()
        for _, m in self.organs:
            out = out + m.curve()
        return out


def draw_kinetics(preset: KineticsPreset, rng: np.random.Generator,
                  lesion_volumes_ml: Mapping[str, float],
                  administered_activity_mbq: float | None = None) -> DrawnKinetics:
    """Draw one patient's parameters around the preset's population values.

    Parameters
    ----------
    preset : KineticsPreset
    rng : numpy.random.Generator
    lesion_volumes_ml : mapping name → volume [mL]
        Lesions of the anatomy; each gets the preset's concentration × volume (× log-normal).
    administered_activity_mbq : float, optional
        Fixed administered activity; default the preset's value with a ± 2 % spread, rounded
        to whole MBq (as a dose calibrator reading would be recorded).
    """
    v = preset.variability

    def ln(sd: float) -> float:
        return float(np.exp(sd * rng.standard_normal()))

    def draw_model(m: OrganModel, fraction: float) -> OrganModel:
        washout = tuple((w, t * ln(v.half_life_sd)) for w, t in m.washout)
        tu = m.uptake_half_life_h * ln(v.half_life_sd)
        # uptake must be faster than every washout component (R_k ≥ 0)
        tu = min(tu, 0.5 * min(t for _, t in washout))
        return OrganModel(fraction, tu, washout)

    organs = [(name, draw_model(m, m.fraction * ln(v.fraction_sd))) for name, m in preset.organs]
    for name in sorted(lesion_volumes_ml, key=_lesion_order):
        vol = float(lesion_volumes_ml[name])
        frac = preset.lesion.fraction * vol * ln(v.lesion_sd)
        organs.append((name, draw_model(preset.lesion, frac)))
    notes: list[str] = []
    total = math.fsum(m.fraction for _, m in organs)
    scale = 1.0
    if total > MAX_SPECIFIC_FRACTION:
        scale = MAX_SPECIFIC_FRACTION / total
        organs = [(n, replace(m, fraction=m.fraction * scale)) for n, m in organs]
        notes.append(f"specific uptake fractions summed to {total:.3f} > "
                     f"{MAX_SPECIFIC_FRACTION}; all scaled by {scale:.4f} to conserve activity")
    w0 = float(np.clip(preset.pool[0].weight + v.pool_weight_sd * rng.standard_normal(),
                       0.05, 0.95))
    rest_w = [c.weight for c in preset.pool[1:]]
    rest_sum = sum(rest_w) or 1.0
    weights = [w0] + [(1.0 - w0) * w / rest_sum for w in rest_w]
    pool = tuple(PoolComponent(w, c.half_life_h * ln(v.pool_half_life_sd), c.blood_share)
                 for w, c in zip(weights, preset.pool, strict=True))
    if administered_activity_mbq is None:
        a0 = float(round(preset.administered_activity_mbq * (1 + v.activity_sd
                                                              * rng.standard_normal())))
    else:
        a0 = float(administered_activity_mbq)
    return DrawnKinetics(preset.preset, preset.nuclide, preset.radiopharmaceutical, a0,
                         tuple(organs), pool, preset.rmblr, scale, tuple(notes))


def _lesion_order(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail) if tail.isdigit() else 0, name)


# ============================================================================== per label
@dataclass(frozen=True)
class LabelCurves:
    """Time-activity curves (fractions of A₀) of every label in the field of view.

    ``in_fov`` maps label name → ExpSum of the activity of that label inside the field of view;
    ``outside`` names organs of the preset that the anatomy does not contain (outside the
    field of view: they hold activity but appear in no image). ``per_gram_pool`` is the pool
    concentration per weighted gram (fraction of A₀ per g), ``blood_per_ml`` the blood
    concentration (fraction of A₀ per mL).
    """

    in_fov: dict[str, ExpSum]
    outside: dict[str, ExpSum]
    whole_body: ExpSum
    pool: ExpSum
    blood: ExpSum
    blood_per_ml: ExpSum
    per_gram_pool: ExpSum
    masses: dict[str, float]


#: Blood volume per body mass [mL/kg]: ICRP 89 reference adults, 5.3 L / 73 kg (male) and
#: 3.9 L / 60 kg (female) → ≈ 70 mL/kg (ICRP Publication 89, doi:10.1016/S0146-6453(03)00002-2;
#: unverified).
BLOOD_ML_PER_KG = 70.0
BLOOD_DENSITY = 1.06  # g/mL, ICRU-46 (unverified)
#: Share of the skeleton's marrow-bearing spongiosa inside a chest-to-pelvis field of view
#: (spine, pelvis, ribs, proximal femora); the rest is in skull, limbs and sternum (assumed,
#: from the ICRP 89 red-marrow distribution, unverified).
MARROW_IN_TORSO_FOV = 0.75


def label_curves(drawn: DrawnKinetics, kinds: Mapping[str, str],
                 masses_g: Mapping[str, float], pool_factors: Mapping[str, float],
                 weight_kg: float, head_in_fov: bool) -> LabelCurves:
    """Curves of every label in the field of view from the drawn kinetics and the masses.

    Parameters
    ----------
    drawn : DrawnKinetics
    kinds : mapping label name → Kind value (``organ``, ``lesion``, ``blood``, ``marrow``,
        ``tissue``, ``air``)
    masses_g : mapping label name → mass in the field of view [g]
    pool_factors : mapping label name → relative per-gram pool uptake (tissues)
    weight_kg : patient mass [kg]; must exceed the field-of-view mass.
    head_in_fov : bool
        Whether the skull is in the field of view (more of the marrow then is).

    Notes
    -----
    The pool left after heart and red marrow, ``P − B·(m_heart + RMBLR·M_rm)/M_blood``, is
    shared per gram by all tissue of the body, weighted by ``pool_factor`` inside the field of
    view and with factor 1 outside it (the composition outside is not modelled).
    """
    w_g = weight_kg * units.G_PER_KG
    fov_mass = math.fsum(masses_g.values())
    if fov_mass >= w_g:
        raise InputError(f"patient mass {weight_kg} kg is not above the field-of-view mass "
                         f"{fov_mass / 1000:.1f} kg")
    blood_ml = BLOOD_ML_PER_KG * weight_kg
    blood_g = blood_ml * BLOOD_DENSITY
    pool = drawn.pool_curve()
    blood = drawn.blood_curve()
    in_fov: dict[str, ExpSum] = {}
    outside: dict[str, ExpSum] = {}
    for name, model in drawn.organs:
        if name in masses_g:
            in_fov[name] = model.curve()
        else:
            outside[name] = model.curve()
    m_heart = math.fsum(masses_g[n] for n, k in kinds.items() if k == "blood")
    m_rm_fov = math.fsum(masses_g[n] for n, k in kinds.items() if k == "marrow")
    share_fov = 0.85 if head_in_fov else MARROW_IN_TORSO_FOV
    m_rm_total = m_rm_fov / share_fov
    if m_heart > blood_g:
        raise InputError(f"heart mass {m_heart:.0f} g exceeds the blood mass {blood_g:.0f} g")
    per_g_blood = blood.scaled(1.0 / blood_g)
    for n, k in kinds.items():
        if k == "blood":
            in_fov[n] = per_g_blood.scaled(masses_g[n])
        elif k == "marrow":
            in_fov[n] = per_g_blood.scaled(drawn.rmblr * masses_g[n])
    # the rest of the pool, shared per weighted gram by all other tissue of the body
    rest = pool - per_g_blood.scaled(m_heart + drawn.rmblr * m_rm_total)
    tissue_names = [n for n, k in kinds.items() if k == "tissue"]
    fov_weighted = math.fsum(pool_factors[n] * masses_g[n] for n in tissue_names)
    specific_fov = math.fsum(masses_g[n] for n, k in kinds.items() if k in ("organ", "lesion"))
    other_fov = fov_mass - specific_fov - m_heart - m_rm_fov
    outside_mass = w_g - fov_mass - (m_rm_total - m_rm_fov)
    if outside_mass <= 0:
        raise InputError(f"patient mass {weight_kg} kg leaves no tissue outside the field of "
                         "view for the marrow outside it")
    weighted_total = fov_weighted + outside_mass
    per_g = rest.scaled(1.0 / weighted_total)
    for n in tissue_names:
        in_fov[n] = per_g.scaled(pool_factors[n] * masses_g[n])
    for n, k in kinds.items():
        if k == "air":
            in_fov[n] = ExpSum()
    _ = other_fov  # documented quantity; the per-gram weighting uses the label masses
    return LabelCurves(
        in_fov=in_fov, outside=outside, whole_body=drawn.whole_body_curve(), pool=pool,
        blood=blood, blood_per_ml=blood.scaled(1.0 / blood_ml), per_gram_pool=per_g,
        masses=dict(masses_g),
    )


def check_conservation(curves: LabelCurves, decay_constant_per_s: float,
                       t_max_s: float) -> float:
    """Largest violation of ``0 ≤ A_label(t)`` and ``Σ_FOV A(t) ≤ WB(t) ≤ 1`` on a dense
    time grid (0 … ``t_max_s``); returns the worst margin (≥ −1e-12 when conserved)."""
    t = np.concatenate([np.linspace(0, 48 * 3600.0, 400), np.geomspace(3600.0, t_max_s, 400)])
    wb = np.asarray(curves.whole_body.biological(t))
    total = np.zeros_like(t)
    worst = float(np.min(1.0 - wb))
    for c in list(curves.in_fov.values()):
        r = np.asarray(c.biological(t))
        worst = min(worst, float(r.min()))
        total += r
    worst = min(worst, float(np.min(wb - total)))
    _ = decay_constant_per_s  # decay multiplies every term alike: the margins scale with it
    return worst
